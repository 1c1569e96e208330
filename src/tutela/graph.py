"""The resource graph: resources as nodes, "parent depends on child" as edges.

Built depth first and iteratively (no recursion: a chain a million deep works), each resource
visited once (a diamond's shared child is one node), a cycle reported with its path.  The graph
serialises to plain JSON inside a checkpoint; restore and delete walk that saved form.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tutela.errors import CycleError
from tutela.resource import Resource

_WHITE, _GRAY, _BLACK = 0, 1, 2
FORMAT_VERSION = 1


class ResourceGraph:
    """Nodes are indexed 0..n-1; `children[i]` lists the indexes node i depends on."""

    __slots__ = ("_index", "_parents", "children", "nodes", "roots")

    def __init__(self) -> None:
        self.nodes: list[Resource] = []
        self.children: list[list[int]] = []
        self.roots: list[int] = []
        self._index: dict[Resource, int] = {}
        self._parents: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.nodes)

    def __contains__(self, resource: object) -> bool:
        return resource in self._index

    def index(self, resource: Resource) -> int:
        return self._index[resource]

    def add(self, resource: Resource) -> int:
        i = self._index.get(resource)
        if i is None:
            i = len(self.nodes)
            self._index[resource] = i
            self.nodes.append(resource)
            self.children.append([])
            self._parents = None
        return i

    def add_edge(self, parent: int, child: int) -> None:
        if child not in self.children[parent]:
            self.children[parent].append(child)
            self._parents = None

    @property
    def parents(self) -> list[list[int]]:
        if self._parents is None:
            parents: list[list[int]] = [[] for _ in self.nodes]
            for p, kids in enumerate(self.children):
                for c in kids:
                    parents[c].append(p)
            self._parents = parents
        return self._parents

    def edge_count(self) -> int:
        return sum(len(k) for k in self.children)

    def dependents(self, resource: Resource) -> list[Resource]:
        return [self.nodes[c] for c in self.children[self._index[resource]]]

    def resource_types(self) -> set[str]:
        return {r.type for r in self.nodes}

    def check_acyclic(self) -> None:
        """Raise CycleError if the edges form a cycle (used on graphs read from a bank)."""
        color = bytearray(len(self.nodes))
        for start in range(len(self.nodes)):
            if color[start]:
                continue
            color[start] = _GRAY
            stack = [(start, 0)]
            while stack:
                node, pos = stack[-1]
                kids = self.children[node]
                if pos < len(kids):
                    stack[-1] = (node, pos + 1)
                    child = kids[pos]
                    if color[child] == _GRAY:
                        raise CycleError(self._cycle_path(stack, child))
                    if color[child] == _WHITE:
                        color[child] = _GRAY
                        stack.append((child, 0))
                else:
                    color[node] = _BLACK
                    stack.pop()

    def _cycle_path(self, stack: list[tuple[int, int]], child: int) -> list[Resource]:
        on_stack = [n for n, _ in stack]
        start = on_stack.index(child)
        return [self.nodes[n] for n in on_stack[start:]] + [self.nodes[child]]

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "nodes": [r.to_dict() for r in self.nodes],
            "children": self.children,
            "roots": self.roots,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResourceGraph:
        if data.get("version", 1) > FORMAT_VERSION:
            raise ValueError(
                f"resource graph format {data.get('version')} is newer than this Tutela"
            )
        graph = cls()
        for node in data["nodes"]:
            graph.add(Resource.from_dict(node))
        n = len(graph.nodes)
        for i, kids in enumerate(data["children"]):
            if any(not (0 <= c < n) for c in kids):
                raise ValueError(f"resource graph: node {i} has a child index out of range")
            graph.children[i] = list(kids)
        graph.roots = list(data.get("roots", []))
        graph.check_acyclic()
        return graph

    def to_text(self) -> str:
        """An indented tree, each shared node printed once in full and then by reference."""
        lines: list[str] = []
        seen: set[int] = set()
        roots = self.roots or [i for i, p in enumerate(self.parents) if not p]
        stack: list[tuple[int, int]] = [(r, 0) for r in reversed(roots)]
        while stack:
            node, depth = stack.pop()
            resource = self.nodes[node]
            label = f"{resource.type} {resource.id}"
            if resource.name and resource.name != resource.id:
                label += f" ({resource.name})"
            if node in seen:
                lines.append("  " * depth + label + "  [shown above]")
                continue
            seen.add(node)
            lines.append("  " * depth + label)
            stack.extend((c, depth + 1) for c in reversed(self.children[node]))
        return "\n".join(lines)


def build_graph(
    sources: Iterable[Resource],
    get_dependents: Callable[[Resource], Iterable[Resource]],
) -> ResourceGraph:
    """Walk from `sources` through `get_dependents`, depth first, without recursion.

    `get_dependents` is called once per resource.  A cycle raises CycleError with its path.
    """
    graph = ResourceGraph()
    color = bytearray()
    # Millions of new objects would trigger Python's full collections again and again
    # (quadratic time); the graph holds no cycles of garbage, so pause the collector.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _walk(graph, color, sources, get_dependents)
    finally:
        if was_enabled:
            gc.enable()
    graph._parents = None
    return graph


def _walk(graph: ResourceGraph, color: bytearray, sources, get_dependents) -> None:

    def add(resource: Resource) -> int:
        i = graph.add(resource)
        if i == len(color):
            color.append(_WHITE)
        return i

    def expand(i: int) -> None:
        color[i] = _GRAY
        seen: set[int] = set()
        kids = graph.children[i]
        for dep in get_dependents(graph.nodes[i]):
            c = add(dep)
            if c not in seen:
                seen.add(c)
                kids.append(c)

    listed: set[int] = set()
    for source in sources:
        root = add(source)
        if root not in listed:
            listed.add(root)
            graph.roots.append(root)
        if color[root] != _WHITE:
            continue
        expand(root)
        stack = [(root, 0)]
        while stack:
            node, pos = stack[-1]
            kids = graph.children[node]
            if pos < len(kids):
                stack[-1] = (node, pos + 1)
                child = kids[pos]
                state = color[child]
                if state == _GRAY:
                    raise CycleError(graph._cycle_path(stack, child))
                if state == _WHITE:
                    expand(child)
                    stack.append((child, 0))
            else:
                color[node] = _BLACK
                stack.pop()
