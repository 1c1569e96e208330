"""The data path plugins use from their hooks to move bytes into and out of a checkpoint.

`save_stream` stores a stream of bytes through the bank's content store (deduplicated,
compressed, optionally encrypted; memory stays bounded whatever the size) and returns a small
JSON-serialisable reference that the plugin keeps in its metadata; `open_stream` yields the
bytes back, each chunk verified.  The chunks a resource refers to are listed under
`content-chunks/` of its section, so that deleting other checkpoints never frees them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from tutela.bank import iter_stream
from tutela.errors import TutelaError

CHUNK = 1 << 20


def save_stream(
    checkpoint, context, name: str, stream: Iterable[bytes] | BinaryIO
) -> dict[str, Any]:
    """Store `stream` under `name` for this resource; returns {"name", "size", "ref"}."""
    if "/" in name or not name:
        raise TutelaError(f"stream name must be a plain name, not {name!r}")
    store = context.content_store

    def counted() -> Iterator[bytes]:
        for block in iter_stream(stream, CHUNK):
            context.report_bytes(len(block))
            yield block

    ref = store.write(counted())
    store.flush()  # durable before anything refers to it
    checkpoint.bank_section.update_object(
        f"content-chunks/{name}", "\n".join(sorted(ref.chunk_ids()))
    )
    return {"name": name, "size": ref.size, "ref": ref.to_json()}


def open_stream(checkpoint, context, ref: dict[str, Any]) -> Iterator[bytes]:
    """Yield the bytes of a stored stream; a damaged chunk raises a clear error."""
    from tutela.contentstore import FileRef

    size = 0
    for block in context.content_store.read(FileRef.from_json(ref["ref"])):
        size += len(block)
        context.report_bytes(len(block))
        yield block
    if size != ref["size"]:
        raise TutelaError(f"stored stream {ref['name']!r} has {size} bytes, expected {ref['size']}")


def delete_streams(checkpoint) -> int:
    """Remove the resource's data from the checkpoint (its chunks are freed by the provider
    once no other checkpoint refers to them)."""
    return checkpoint.bank_section.delete_all()
