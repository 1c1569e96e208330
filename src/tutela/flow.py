"""The task flow: up to four hook tasks per resource, linked by the six rules.

For a resource r with parents P (resources that depend on r) and children C (resources r
depends on), with PB/PF/M/C its prepare_begin, prepare_finish, main and complete hooks:

1. PB(c) after PB(r)               for c in C  (child prepare_begin after parent's)
2. PF(r) after PB(r)
3. PF(r) after PF(c)               for c in C  (parent prepare_finish after children's)
4. M(r)  after PF(r)
5. C(r)  after M(r)
6. C(r)  after C(c)                for c in C  (parent complete after children's)

The flow is implicit: node `4*r + h` is hook h of resource r, and its successors and
predecessor counts follow from the graph's child and parent lists, so building a flow costs one
pass over the resources and no edge objects.  A hook the plugin does not implement is a
*pass-through* node: never a task, never sent to an executor, but ordering flows through it
exactly as if it were there (so a parent's complete still waits for a child's main).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from typing import Any

from tutela.graph import ResourceGraph
from tutela.plugin import HOOKS, implemented_hooks
from tutela.resource import Resource

PB, PF, MAIN, COMPLETE = range(4)
SHORT = ("prepare_begin", "prepare_finish", "main", "complete")


class Flow:
    """Hook tasks of one operation over one resource graph."""

    def __init__(
        self,
        kind: str,
        graph: ResourceGraph,
        operations: list[Any],
        parameters: list[dict[str, Any]],
    ):
        self.kind = kind
        self.graph = graph
        self.operations = operations
        self.parameters = parameters
        mask = bytearray(len(graph))
        for r, op in enumerate(operations):
            if op is not None:
                flags = implemented_hooks(op)
                mask[r] = flags[0] | flags[1] << 1 | flags[2] << 2 | flags[3] << 3
        self.mask = mask
        self.task_count = sum(bin(m).count("1") for m in mask)

    @property
    def node_count(self) -> int:
        return 4 * len(self.graph)

    def is_task(self, node: int) -> bool:
        return bool(self.mask[node >> 2] >> (node & 3) & 1)

    def resource(self, node: int) -> Resource:
        return self.graph.nodes[node >> 2]

    def hook_name(self, node: int) -> str:
        return HOOKS[node & 3]

    def label(self, node: int) -> str:
        return f"{self.resource(node).key} {SHORT[node & 3]}"

    def resource_task_counts(self) -> bytearray:
        return bytearray(bin(m).count("1") for m in self.mask)

    def successors(self, node: int) -> list[int]:
        r, h = node >> 2, node & 3
        base = r << 2
        if h == PB:
            return [base | PF, *[(c << 2) | PB for c in self.graph.children[r]]]
        if h == PF:
            return [base | MAIN, *[(p << 2) | PF for p in self.graph.parents[r]]]
        if h == MAIN:
            return [base | COMPLETE]
        return [(p << 2) | COMPLETE for p in self.graph.parents[r]]

    def predecessors(self, node: int) -> list[int]:
        r, h = node >> 2, node & 3
        base = r << 2
        if h == PB:
            return [(p << 2) | PB for p in self.graph.parents[r]]
        if h == PF:
            return [base | PB, *[(c << 2) | PF for c in self.graph.children[r]]]
        if h == MAIN:
            return [base | PF]
        return [base | MAIN, *[(c << 2) | COMPLETE for c in self.graph.children[r]]]

    def indegrees(self) -> array:
        """Initial count of unfinished predecessors of every node."""
        parents = self.graph.parents
        children = self.graph.children
        counts = array("i", bytes(4 * 4 * len(self.graph)))
        for r in range(len(self.graph)):
            n_kids = len(children[r])
            base = r << 2
            counts[base] = len(parents[r])
            counts[base | PF] = 1 + n_kids
            counts[base | MAIN] = 1
            counts[base | COMPLETE] = 1 + n_kids
        return counts

    def tasks(self) -> Iterator[int]:
        """Task nodes, in a valid execution order (a topological order)."""
        counts = self.indegrees()
        ready = [n for n in range(self.node_count) if counts[n] == 0]
        ready.reverse()
        while ready:
            node = ready.pop()
            if self.is_task(node):
                yield node
            for s in reversed(self.successors(node)):
                counts[s] -= 1
                if counts[s] == 0:
                    ready.append(s)

    def task_edges(self) -> list[tuple[int, int]]:
        """Edges between tasks, with pass-through nodes bridged (for display and export)."""
        edges: list[tuple[int, int]] = []
        for task in self.tasks():
            found: set[int] = set()
            seen: set[int] = set()
            stack = list(self.successors(task))
            while stack:
                node = stack.pop()
                if node in seen:
                    continue
                seen.add(node)
                if self.is_task(node):
                    found.add(node)
                else:
                    stack.extend(self.successors(node))
            edges.extend((task, s) for s in sorted(found))
        return edges

    # -- export ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        order = list(self.tasks())
        ids = {node: i for i, node in enumerate(order)}
        return {
            "operation": self.kind,
            "resources": len(self.graph),
            "tasks": [
                {"id": ids[n], "resource": self.resource(n).to_dict(), "hook": self.hook_name(n)}
                for n in order
            ],
            "edges": [[ids[a], ids[b]] for a, b in self.task_edges()],
        }

    def to_dot(self) -> str:
        lines = [
            f'digraph "tutela {self.kind}" {{',
            "  rankdir=TB;",
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        ]
        colors = ("#d4e6f1", "#d5f5e3", "#fcf3cf", "#f5cba7")
        for node in self.tasks():
            label = json.dumps(f"{self.resource(node).key}\n{SHORT[node & 3]}")
            lines.append(f'  t{node} [label={label}, fillcolor="{colors[node & 3]}"];')
        for a, b in self.task_edges():
            lines.append(f"  t{a} -> t{b};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        edges = self.task_edges()
        after: dict[int, list[int]] = {}
        for a, b in edges:
            after.setdefault(b, []).append(a)
        lines = [
            f"{self.kind} flow: {len(self.graph)} resources, {self.task_count} tasks "
            f"({self.node_count - self.task_count} hooks not implemented)"
        ]
        for i, node in enumerate(self.tasks(), 1):
            deps = ", ".join(self.label(p) for p in after.get(node, []))
            lines.append(f"{i:>5}. {self.label(node)}" + (f"   after: {deps}" if deps else ""))
        return "\n".join(lines)
