"""Resources: the nodes of a protection graph.

A resource's identity is (type, id): two resources with the same type and id are the same
node, whatever their names or extra info (Karbor keyed by id alone, or by name too, and got
both collisions and duplicates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class Resource:
    """An immutable, hashable reference to something that can be protected.

    `type` is a string such as `Tutela::Directory`; `id` is unique within its type; `name` is
    for display; `extra_info` is a JSON-serialisable mapping (e.g. the host holding the data).
    """

    __slots__ = ("_extra", "_hash", "id", "name", "type")

    type: str
    id: str
    name: str | None

    def __init__(
        self,
        type: str,
        id: str,
        name: str | None = None,
        extra_info: Mapping[str, Any] | None = None,
    ):
        if not isinstance(type, str) or not type:
            raise ValueError("resource type must be a non-empty string")
        if not isinstance(id, str) or not id:
            raise ValueError(f"resource id of {type} must be a non-empty string")
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_extra", dict(extra_info) if extra_info else {})
        object.__setattr__(self, "_hash", hash((type, id)))

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return _ReadOnly(self._extra)

    @property
    def key(self) -> str:
        """`TYPE#ID`: the form used in parameter files and messages."""
        return f"{self.type}#{self.id}"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Resource is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Resource is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return self.type == other.type and self.id == other.id

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: Resource) -> bool:
        return (self.type, self.id) < (other.type, other.id)

    def __repr__(self) -> str:
        return f"Resource({self.type!r}, {self.id!r})"

    def __str__(self) -> str:
        return self.key

    def __reduce__(self):
        return (Resource, (self.type, self.id, self.name, self._extra))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "id": self.id}
        if self.name is not None:
            data["name"] = self.name
        if self._extra:
            data["extra_info"] = self._extra
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resource:
        return cls(data["type"], data["id"], data.get("name"), data.get("extra_info"))

    @classmethod
    def parse(cls, text: str) -> Resource:
        """`TYPE=ID` (the CLI form) or `TYPE#ID`."""
        for sep in ("=", "#"):
            type_, found, id_ = text.partition(sep)
            if found and type_ and id_:
                return cls(type_.strip(), id_.strip())
        raise ValueError(f"resource must be given as TYPE=ID, not {text!r}")

    def check_json(self) -> None:
        json.dumps(self._extra)


class _ReadOnly(Mapping):
    """A read-only view of a resource's extra info."""

    __slots__ = ("_data",)

    def __init__(self, data: dict):
        self._data = data

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)
