"""The bank: where checkpoints live.

A bank plugin (`BankPlugin`) stores immutable-by-convention byte objects under string keys and
keeps named, expiring leases.  `Bank` wraps a plugin and validates every key once, on the
final key; `BankSection` confines a user (a plugin, a checkpoint) to a key prefix, read-only
where appropriate.  Keys are "/"-separated relative paths: no empty, "." or ".." segment, no
leading "/", no backslash or control character.  Because ".." is refused outright (not
normalised away), a section can never be escaped.
"""

from __future__ import annotations

import difflib
import json
import re
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, ClassVar

from tutela.errors import InvalidKeyError, LeaseError, ObjectNotFound, ReadOnlyError

__all__ = [
    "LEASE_KEYS",
    "OWNER_LEASE",
    "Bank",
    "BankPlugin",
    "BankSection",
    "LeaseError",
    "ObjectNotFound",
    "checked_lease_name",
    "ensure_bytes",
    "iter_stream",
    "lease_name",
    "make_owner_id",
    "validate_key",
]

#: Passing no lease name (None) means this owner's own liveness lease, named
#: `owner-<owner id>`: every running operation holds it to say "my owner is alive".
OWNER_LEASE = None


def lease_name(plugin: BankPlugin, name: str | None) -> str:
    """The concrete lease name: `name`, or this owner's liveness lease when None."""
    return name if name is not None else f"owner-{plugin.get_owner_id()}"


#: The lease timing keys every shipped bank reads from its section (see `BankPlugin`).
LEASE_KEYS = frozenset({"lease_expire_window", "lease_renew_window", "lease_validity_window"})

MAX_KEY_LENGTH = 1024
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
STREAM_CHUNK = 1 << 20


def validate_key(key: str, *, allow_empty: bool = False) -> str:
    """Return `key` if it is a safe bank key, else raise InvalidKeyError naming it."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"bank key must be a string, not {type(key).__name__}")
    if key == "" and allow_empty:
        return key
    shown = key if len(key) <= 120 else key[:117] + "..."
    if not key:
        raise InvalidKeyError("bank key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"bank key longer than {MAX_KEY_LENGTH} characters: {shown!r}")
    if _BAD_CHARS.search(key):
        raise InvalidKeyError(f"bank key has a backslash or control character: {shown!r}")
    if key.startswith("/"):
        raise InvalidKeyError(f"bank key must be relative: {shown!r}")
    parts = key.split("/")
    if key.endswith("/"):
        parts = parts[:-1]  # a prefix ("dir/") is allowed where prefixes are
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"bank key has an empty, '.' or '..' segment: {shown!r}")
    return key


def checked_lease_name(plugin: BankPlugin, name: str | None) -> str:
    """The concrete lease name (see `lease_name`), refused unless it is one safe key segment."""
    name = lease_name(plugin, name)
    validate_key(name)
    if "/" in name:
        raise InvalidKeyError(f"lease name must not contain '/': {name!r}")
    return name


def make_owner_id() -> str:
    """A lease owner id: unique per bank instance, readable enough to find the process."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:16]}"


def iter_stream(
    stream: Iterable[bytes] | BinaryIO, chunk_size: int = STREAM_CHUNK
) -> Iterator[bytes]:
    """Yield the bytes of a file-like object or of an iterable of byte chunks."""
    read = getattr(stream, "read", None)
    if read is not None:
        while True:
            block = read(chunk_size)
            if not block:
                return
            yield block
    else:
        for block in stream:  # type: ignore[union-attr]
            if block:
                yield bytes(block) if not isinstance(block, bytes) else block


class BankPlugin(ABC):
    """The storage contract every bank implements.

    Rules callers rely on:
    - `update_object` / `update_object_stream` replace the whole object atomically: a reader
      sees the old value or the new one, never a mix, and a failed write leaves the old value.
    - `get_object` raises `ObjectNotFound` for a missing key; `delete_object` of a missing key
      is not an error.
    - `list_objects` returns full keys starting with `prefix`, ascending (or descending with
      sort_dir="desc"), strictly after `marker` in that order, at most `limit` of them.
    - Leases are named (None: this owner's liveness lease, see `lease_name`); at most one
      owner holds a given unexpired lease.  A lease not renewed
      within `lease_expire_window` seconds lapses and may be taken by another owner; its holder
      stops trusting it after `lease_validity_window` seconds without a renewal.
    """

    #: Config section this bank reads (documented by each bank).
    config_section: str = ""
    #: The sections this bank reads and their keys (`{config_section: frozenset({...})}`), as
    #: for `tutela.ProtectionPlugin.config_keys`: the provider refuses any other key there.
    config_keys: ClassVar[dict[str, frozenset[str]]] = {}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse a keyword option that is not a key of the bank's section: in code, as in a
        provider file, a misspelt option must not fall back to its default without a word.
        (The message names the option, never its value: it may be a secret.)"""
        known = sorted(cls.config_keys.get(cls.config_section, ()))
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
                raise TypeError(f"{cls.__name__}: unknown option {key!r}{hint}")

    @abstractmethod
    def update_object(self, key: str, value: bytes | str) -> None: ...

    @abstractmethod
    def get_object(self, key: str) -> bytes: ...

    @abstractmethod
    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]: ...

    @abstractmethod
    def delete_object(self, key: str) -> None: ...

    # Streaming: banks override these to keep memory bounded; the defaults buffer.
    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        data = b"".join(iter_stream(stream))
        self.update_object(key, data)
        return len(data)

    def update_object_parts(self, key: str, parts: Sequence[bytes]) -> None:
        """Write the object that is `parts` joined, as `update_object` (atomically, whole).
        A bank that can send the parts as they are overrides this: joining a content-store
        pack costs a copy of it into fresh memory, which the filesystem bank's aligned copy
        makes anyway."""
        self.update_object(key, b"".join(parts))

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        data = self.get_object(key)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def object_size(self, key: str) -> int:
        return len(self.get_object(key))

    # Optional: `get_object_range(key, offset, length) -> bytes`, for banks that can read a
    # slice of an object without reading what comes before it (the filesystem bank does).
    # Optional: `get_object_view(key) -> memoryview`, a read-only view of a whole object that
    # costs no copy (the filesystem bank maps the file), for readers that slice it up.

    # Leases.
    @abstractmethod
    def acquire_lease(self, name: str | None = OWNER_LEASE) -> bool: ...

    @abstractmethod
    def renew_lease(self, name: str | None = OWNER_LEASE) -> None: ...

    @abstractmethod
    def check_lease_validity(self, name: str | None = OWNER_LEASE) -> bool: ...

    @abstractmethod
    def get_owner_id(self) -> str: ...

    def release_lease(self, name: str | None = OWNER_LEASE) -> None:
        """Give a lease up before it expires (default: let it expire)."""

    def get_lease_owner(self, name: str | None = OWNER_LEASE) -> str | None:
        """The owner of an unexpired lease, or None (default: unknown)."""
        return None

    def close(self) -> None:
        """Release connections and stop background work."""

    def describe(self) -> str:
        """A short, secret-free description for `tutela provider show`."""
        return type(self).__name__


class Bank:
    """A bank plugin plus key validation and JSON helpers; hands out sections."""

    def __init__(self, plugin: BankPlugin):
        self.plugin = plugin

    def get_section(self, prefix: str = "", writable: bool = True) -> BankSection:
        return BankSection(self, prefix, writable)

    # The raw calls, validated.
    def update_object(self, key: str, value: bytes | str) -> None:
        self.plugin.update_object(validate_key(key), value)

    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        return self.plugin.update_object_stream(validate_key(key), stream)

    def update_object_parts(self, key: str, parts: Sequence[bytes]) -> None:
        self.plugin.update_object_parts(validate_key(key), parts)

    def get_object(self, key: str) -> bytes:
        return self.plugin.get_object(validate_key(key))

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        return self.plugin.get_object_stream(validate_key(key), chunk_size)

    def object_size(self, key: str) -> int:
        return self.plugin.object_size(validate_key(key))

    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]:
        if prefix:
            validate_key(prefix)
        if sort_dir not in (None, "asc", "desc"):
            raise ValueError(f"sort_dir must be 'asc' or 'desc', not {sort_dir!r}")
        return self.plugin.list_objects(prefix or None, limit, marker, sort_dir)

    def iter_objects(self, prefix: str | None = None, page: int = 1000) -> Iterator[str]:
        """All keys under `prefix`, ascending, fetched a page at a time."""
        marker = None
        while True:
            keys = self.list_objects(prefix, limit=page, marker=marker)
            yield from keys
            if len(keys) < page:
                return
            marker = keys[-1]

    def delete_object(self, key: str) -> None:
        self.plugin.delete_object(validate_key(key))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_object(key))

    def put_json(self, key: str, value: Any) -> None:
        self.update_object(key, json.dumps(value, sort_keys=True, separators=(",", ":")))


class BankSection:
    """A prefix of a bank.  Keys given to it are relative to the prefix; a read-only section
    refuses every write.  Sub-sections can only narrow, never widen, the rights."""

    def __init__(self, bank: Bank, prefix: str, writable: bool = True):
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
            prefix += "/"
        self.bank = bank
        self.prefix = prefix
        self.is_writable = writable

    def __repr__(self) -> str:
        mode = "rw" if self.is_writable else "ro"
        return f"BankSection({self.prefix!r}, {mode})"

    def _key(self, key: str) -> str:
        validate_key(key)
        return self.prefix + key

    def _check_writable(self, key: str) -> None:
        if not self.is_writable:
            raise ReadOnlyError(f"bank section {self.prefix!r} is read-only (writing {key!r})")

    @property
    def get_object_range(self):
        """`read(key, offset, length) -> bytes` when the bank reads ranges natively (see
        `BankPlugin`), else None, so callers can pick a better plan than a partial stream."""
        native = getattr(self.bank.plugin, "get_object_range", None)
        if native is None:
            return None

        def read(key: str, offset: int, length: int) -> bytes:
            return native(validate_key(self.prefix + validate_key(key)), offset, length)

        return read

    @property
    def get_object_view(self):
        """`view(key) -> memoryview` when the bank can map an object without copying it (see
        `BankPlugin`), else None."""
        native = getattr(self.bank.plugin, "get_object_view", None)
        if native is None:
            return None

        def view(key: str) -> memoryview:
            return native(validate_key(self.prefix + validate_key(key)))

        return view

    def get_sub_section(self, prefix: str, writable: bool | None = None) -> BankSection:
        validate_key(prefix.strip("/"))
        can_write = self.is_writable if writable is None else (writable and self.is_writable)
        return BankSection(self.bank, self.prefix + prefix.strip("/"), can_write)

    def update_object(self, key: str, value: bytes | str) -> None:
        self._check_writable(key)
        self.bank.update_object(self._key(key), value)

    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        self._check_writable(key)
        return self.bank.update_object_stream(self._key(key), stream)

    def update_object_parts(self, key: str, parts: Sequence[bytes]) -> None:
        self._check_writable(key)
        self.bank.update_object_parts(self._key(key), parts)

    def get_object(self, key: str) -> bytes:
        return self.bank.get_object(self._key(key))

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        return self.bank.get_object_stream(self._key(key), chunk_size)

    def object_size(self, key: str) -> int:
        return self.bank.object_size(self._key(key))

    def delete_object(self, key: str) -> None:
        self._check_writable(key)
        self.bank.delete_object(self._key(key))

    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]:
        """Keys relative to this section."""
        if prefix:
            validate_key(prefix)
        full_prefix = self.prefix + (prefix or "")
        full_marker = self.prefix + marker if marker is not None else None
        n = len(self.prefix)
        return [
            k[n:] for k in self.bank.list_objects(full_prefix or None, limit, full_marker, sort_dir)
        ]

    def iter_objects(self, prefix: str | None = None, page: int = 1000) -> Iterator[str]:
        n = len(self.prefix)
        for key in self.bank.iter_objects(self.prefix + (prefix or ""), page):
            yield key[n:]

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_object(key))

    def put_json(self, key: str, value: Any) -> None:
        self.update_object(key, json.dumps(value, sort_keys=True, separators=(",", ":")))

    def delete_all(self) -> int:
        """Delete every object under this section; returns how many."""
        self._check_writable("*")
        count = 0
        for key in list(self.iter_objects()):
            self.delete_object(key)
            count += 1
        return count

    def exists(self, key: str) -> bool:
        try:
            self.object_size(key)
        except ObjectNotFound:
            return False
        return True


def ensure_bytes(value: bytes | str | bytearray | memoryview) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"bank values are bytes or str, not {type(value).__name__}")
