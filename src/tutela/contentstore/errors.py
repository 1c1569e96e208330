"""Errors of the content store.  Each names the store (its section and id) and, where it
applies, the pack and chunk, so an operator knows what to look at.  None carries a secret."""

from __future__ import annotations

from tutela.errors import TutelaError


class ContentStoreError(TutelaError):
    """Base of every content-store error."""


class CorruptDataError(ContentStoreError):
    """Stored bytes do not decrypt, decompress or hash to what the index says."""

    def __init__(self, message: str, pack: str | None = None, chunk: str | None = None):
        self.pack = pack
        self.chunk = chunk
        super().__init__(message)


class MissingChunkError(ContentStoreError):
    """A chunk id is in no index segment (never written, flushed, or swept)."""


class WrongPasswordError(ContentStoreError):
    """The passphrase or key file does not unwrap the store's data key."""


class MissingPasswordError(ContentStoreError):
    """The store is encrypted and no passphrase or key file was given."""


class UnsupportedFormatError(ContentStoreError):
    """The store (or one of its objects) was written by a newer format than this code reads."""


class StoreLockedError(ContentStoreError):
    """Another writer or a sweep holds the store; the message names the holder."""
