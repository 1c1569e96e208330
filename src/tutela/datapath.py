"""The data path plugins use from their hooks to move bytes into and out of a checkpoint.

`save_stream` stores a stream of bytes under a name in the resource's bank section and
returns a small JSON-serialisable reference; `open_stream` yields the bytes back, verified.
Plugins keep the reference in their metadata.  Bytes moved are reported to the progress
display.  (The content store, when configured, plugs in here, so plugins need not change.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from tutela.bank import iter_stream
from tutela.errors import TutelaError

CHUNK = 1 << 20


def save_stream(
    checkpoint, context, name: str, stream: Iterable[bytes] | BinaryIO
) -> dict[str, Any]:
    """Store `stream` as `name` in the resource's section; returns {name, size, sha256}."""
    digest = hashlib.sha256()
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for block in iter_stream(stream, CHUNK):
            digest.update(block)
            size += len(block)
            context.report_bytes(len(block))
            yield block

    checkpoint.bank_section.update_object_stream(f"streams/{name}", counted())
    return {"name": name, "size": size, "sha256": digest.hexdigest()}


def open_stream(checkpoint, context, ref: dict[str, Any]) -> Iterator[bytes]:
    """Yield the bytes of a stored stream; raises TutelaError if they do not match the ref."""
    digest = hashlib.sha256()
    size = 0
    for block in checkpoint.bank_section.get_object_stream(f"streams/{ref['name']}", CHUNK):
        digest.update(block)
        size += len(block)
        context.report_bytes(len(block))
        yield block
    if size != ref["size"] or digest.hexdigest() != ref["sha256"]:
        raise TutelaError(
            f"stored stream {ref['name']!r} is damaged (size or checksum differs from the record)"
        )


def delete_streams(checkpoint) -> int:
    """Remove every stored stream of the resource (used by delete operations)."""
    return checkpoint.bank_section.delete_all()
