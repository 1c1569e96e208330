"""Checkpoints and restore records, as they lie in the bank (see docs/design.md).

Key tree:
    catalog/<checkpoint id>                   {"provider_id", "created_at"}  (listing)
    checkpoints/<id>/index.json               id, provider, status, graph, parameters, warnings
    checkpoints/<id>/records/<seq>.json       per-resource status, saved info, error, warnings,
                                              hook times
    checkpoints/<id>/data/<rkey>/...          the plugin's own section for one resource
    restores/<restore id>/index.json          a restore: status, parameters, errors
    restores/<restore id>/records/<seq>.json  per-resource restore status

Write order: the catalog entry, then index.json (`protecting`), then data and records, and the
status `available` last, only while this process still holds its bank lease.  So an
`available` checkpoint never points at missing data, and a crashed protect stays `protecting`
with an owner whose lease has lapsed (shown as stale).  Every status lives in exactly one
object, written atomically, and only this module writes statuses (plugins never do).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tutela.bank import Bank, BankSection
from tutela.errors import BankError, CheckpointNotFound, ObjectNotFound, TutelaError
from tutela.graph import ResourceGraph
from tutela.resource import Resource

FORMAT_VERSION = 1

# Checkpoint statuses.
PROTECTING, AVAILABLE, ERROR = "protecting", "available", "error"
DELETING, DELETED, ERROR_DELETING = "deleting", "deleted", "error-deleting"
# Restore statuses.
RESTORING, SUCCESS = "restoring", "success"

RECORD_BATCH = 1000
RECORD_INTERVAL = 2.0


def new_id() -> str:
    """A time-ordered UUID (version 7 layout): ids sort by creation time."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def resource_key(resource: Resource) -> str:
    """A bank-safe key for (type, id): readable type, hashed identity (ids may be paths)."""
    digest = hashlib.sha256(f"{resource.type}\0{resource.id}".encode()).hexdigest()[:32]
    return f"{_SAFE.sub('-', resource.type).strip('-') or 'type'}/{digest}"


def check_id(record_id: str) -> str:
    if not _ID_RE.match(record_id or ""):
        raise CheckpointNotFound(f"{record_id!r} is not a checkpoint or restore id")
    return record_id


class RecordWriter:
    """Batches per-resource records into numbered segment objects: one write per
    RECORD_BATCH resources or RECORD_INTERVAL seconds, not one per resource."""

    def __init__(self, section: BankSection):
        self.section = section
        self.pending: list[dict[str, Any]] = []
        self.seq = len(section.list_objects("records/"))
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        """Queue a record; written in a batch.  A bank failure here is not raised (the
        records stay queued): the final flush, before any status, reports it."""
        with self.lock:
            self.pending.append(record)
            due = len(self.pending) >= RECORD_BATCH
            due = due or time.monotonic() - self.last > RECORD_INTERVAL
        if due:
            try:
                self.flush()
            except BankError:
                self.last = time.monotonic()

    def flush(self) -> None:
        with self.lock:
            if not self.pending:
                return
            self.section.put_json(f"records/{self.seq:08d}.json", self.pending)
            self.pending = []
            self.seq += 1
            self.last = time.monotonic()


def read_records(section: BankSection) -> dict[str, dict[str, Any]]:
    """Per-resource records keyed by `TYPE#ID`; a later record of a resource wins."""
    records: dict[str, dict[str, Any]] = {}
    for key in section.iter_objects("records/"):
        for record in section.get_json(key):
            res = record["resource"]
            records[f"{res['type']}#{res['id']}"] = record
    return records


class _Record:
    """What checkpoints and restores share: an index object with a status, and records."""

    kind = "record"

    def __init__(self, bank: Bank, prefix: str, index: dict[str, Any]):
        self.bank = bank
        self.section = bank.get_section(prefix)
        self.index = index
        self._lock = threading.Lock()
        self.records = RecordWriter(self.section)

    @property
    def id(self) -> str:
        return self.index["id"]

    @property
    def status(self) -> str:
        return self.index["status"]

    @property
    def provider_id(self) -> str:
        return self.index["provider_id"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """What the plugins reported as left out (`context.warn`): an `available` checkpoint
        with warnings is incomplete."""
        return self.index.get("warnings") or []

    def _write_index(self) -> None:
        self.section.put_json("index.json", self.index)

    def set_status(self, status: str, **fields: Any) -> None:
        with self._lock:
            self.index["status"] = status
            self.index["updated_at"] = now_iso()
            self.index.update(fields)
            self._write_index()

    def reload(self) -> None:
        self.index = self.section.get_json("index.json")

    def resource_records(self) -> dict[str, dict[str, Any]]:
        return read_records(self.section)


class Checkpoint(_Record):
    kind = "checkpoint"

    def __init__(self, bank: Bank, index: dict[str, Any]):
        super().__init__(bank, f"checkpoints/{index['id']}", index)

    @property
    def created_at(self) -> str:
        return self.index["created_at"]

    def graph(self) -> ResourceGraph:
        """The saved resource graph (parsed once per Checkpoint object)."""
        cached = self.__dict__.get("_graph")
        if cached is not None:
            return cached
        try:
            self._graph = ResourceGraph.from_json(self.index["graph"])
            return self._graph
        except (KeyError, ValueError, TypeError) as exc:
            raise TutelaError(
                f"checkpoint {self.id}: its saved resource graph is unreadable: {exc}"
            ) from None

    def resource_section(self, resource: Resource, writable: bool = True) -> BankSection:
        return self.bank.get_section(
            f"checkpoints/{self.id}/data/{resource_key(resource)}", writable
        )

    def data_section(self) -> BankSection:
        return self.bank.get_section(f"checkpoints/{self.id}/data")

    def summary(self) -> dict[str, Any]:
        keys = (
            "id",
            "provider_id",
            "status",
            "created_at",
            "updated_at",
            "owner_id",
            "error",
            "warnings",
        )
        out = {k: self.index.get(k) for k in keys if k in self.index}
        out["resources"] = len(self.index.get("graph", {}).get("nodes", []))
        out["roots"] = [
            self.index["graph"]["nodes"][i] for i in self.index.get("graph", {}).get("roots", [])
        ]
        return out


class RestoreRecord(_Record):
    kind = "restore"

    def __init__(self, bank: Bank, index: dict[str, Any]):
        super().__init__(bank, f"restores/{index['id']}", index)


class CheckpointStore:
    """Creates, finds and lists the checkpoints and restores kept in one bank."""

    def __init__(self, bank: Bank):
        self.bank = bank

    def create(
        self,
        provider_id: str,
        graph: ResourceGraph,
        parameters: dict[str, Any],
        owner_id: str,
        extra: dict[str, Any] | None = None,
    ) -> Checkpoint:
        cid = new_id()
        created = now_iso()
        self.bank.put_json(f"catalog/{cid}", {"provider_id": provider_id, "created_at": created})
        index = {
            "version": FORMAT_VERSION,
            "id": cid,
            "provider_id": provider_id,
            "status": PROTECTING,
            "created_at": created,
            "updated_at": created,
            "owner_id": owner_id,
            "graph": graph.to_json(),
            "parameters": parameters,
            **(extra or {}),
        }
        checkpoint = Checkpoint(self.bank, index)
        checkpoint._graph = graph
        checkpoint._write_index()
        return checkpoint

    def get(self, checkpoint_id: str) -> Checkpoint:
        check_id(checkpoint_id)
        try:
            index = self.bank.get_json(f"checkpoints/{checkpoint_id}/index.json")
        except ObjectNotFound:
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id}") from None
        if index.get("version", 1) > FORMAT_VERSION:
            raise TutelaError(
                f"checkpoint {checkpoint_id} was written by a newer Tutela (format {index['version']})"
            )
        return Checkpoint(self.bank, index)

    def exists(self, checkpoint_id: str) -> bool:
        try:
            self.bank.object_size(f"checkpoints/{check_id(checkpoint_id)}/index.json")
        except (ObjectNotFound, CheckpointNotFound):
            return False
        return True

    def iter_ids(self, newest_first: bool = True) -> Iterator[str]:
        marker = None
        order = "desc" if newest_first else "asc"
        while True:
            keys = self.bank.list_objects("catalog/", limit=500, marker=marker, sort_dir=order)
            for key in keys:
                yield key.rpartition("/")[2]
            if len(keys) < 500:
                return
            marker = keys[-1]

    def list(
        self,
        provider_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        include_deleted: bool = False,
    ) -> list[Checkpoint]:
        """Newest first, filtered by provider and status."""
        found: list[Checkpoint] = []
        for cid in self.iter_ids():
            if provider_id is not None:
                try:
                    entry = self.bank.get_json(f"catalog/{cid}")
                except ObjectNotFound:
                    continue
                if entry.get("provider_id") != provider_id:
                    continue
            try:
                checkpoint = self.get(cid)
            except (CheckpointNotFound, TutelaError):
                continue
            if status is not None and checkpoint.status != status:
                continue
            if status is None and not include_deleted and checkpoint.status == DELETED:
                continue
            found.append(checkpoint)
            if limit is not None and len(found) >= limit:
                break
        return found

    # -- restores --------------------------------------------------------------------------
    def create_restore(
        self, checkpoint: Checkpoint, provider_id: str, parameters: dict[str, Any], owner_id: str
    ) -> RestoreRecord:
        rid = new_id()
        created = now_iso()
        index = {
            "version": FORMAT_VERSION,
            "id": rid,
            "checkpoint_id": checkpoint.id,
            "provider_id": provider_id,
            "status": RESTORING,
            "created_at": created,
            "updated_at": created,
            "owner_id": owner_id,
            "parameters": parameters,
        }
        record = RestoreRecord(self.bank, index)
        record._write_index()
        return record

    def get_restore(self, restore_id: str) -> RestoreRecord:
        check_id(restore_id)
        try:
            index = self.bank.get_json(f"restores/{restore_id}/index.json")
        except ObjectNotFound:
            raise CheckpointNotFound(f"no restore {restore_id}") from None
        return RestoreRecord(self.bank, index)

    def list_restores(self, limit: int | None = None) -> list[RestoreRecord]:
        out = []
        keys = self.bank.list_objects("restores/", sort_dir="desc")
        for key in keys:
            if key.endswith("/index.json"):
                out.append(RestoreRecord(self.bank, self.bank.get_json(key)))
                if limit is not None and len(out) >= limit:
                    break
        return out
