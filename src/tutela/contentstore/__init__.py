"""The content store: deduplicated, compressed, optionally encrypted file contents in a bank.

Files are cut into content-defined chunks (FastCDC), each chunk is named by its BLAKE3 (keyed
when encrypted), compressed with zstd, encrypted (AES-256-GCM or ChaCha20-Poly1305) and packed
into large pack objects; a bank-wide index of immutable segments maps chunk ids to packs.
The bytes on the bank are described in docs/content-store.md.
"""

from tutela.contentstore.chunker import ChunkerParams, parse_size
from tutela.contentstore.errors import (
    ContentStoreError,
    CorruptDataError,
    MissingChunkError,
    MissingPasswordError,
    StoreLockedError,
    UnsupportedFormatError,
    WrongPasswordError,
)
from tutela.contentstore.store import (
    FORMAT_VERSION,
    PASSWORD_ENV,
    ContentStore,
    FileRef,
    LocalFile,
    StoreSettings,
    StoreStats,
    SweepReport,
    VerifyReport,
)

__all__ = [
    "FORMAT_VERSION",
    "PASSWORD_ENV",
    "ChunkerParams",
    "ContentStore",
    "ContentStoreError",
    "CorruptDataError",
    "FileRef",
    "LocalFile",
    "MissingChunkError",
    "MissingPasswordError",
    "StoreLockedError",
    "StoreSettings",
    "StoreStats",
    "SweepReport",
    "UnsupportedFormatError",
    "VerifyReport",
    "WrongPasswordError",
    "parse_size",
]
