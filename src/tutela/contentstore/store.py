"""The content store: deduplicated, compressed, optionally encrypted file contents in a bank.

See docs/content-store.md for the key layout and the write-ordering rules.  In short: chunks
are packed into packs, packs are uploaded, then an index segment naming them is written; a
`FileRef` may be recorded anywhere only after `flush()` returned.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import blake3
import platformdirs

from tutela.bank import BankSection
from tutela.config import CONTENT_STORE_SECTION, ProviderConfig
from tutela.contentstore import native
from tutela.contentstore.chunker import Chunker, ChunkerParams, MiB, parse_size, read_upto
from tutela.contentstore.crypto import ALGORITHMS, DecryptError, Keys
from tutela.contentstore.errors import (
    ContentStoreError,
    CorruptDataError,
    MissingChunkError,
    MissingPasswordError,
    StoreLockedError,
    UnsupportedFormatError,
    WrongPasswordError,
)
from tutela.contentstore.index import (
    INDEX_PREFIX,
    INDEX_VERSION,
    Index,
    PackEntries,
    SegmentCache,
    decode_segment,
    encode_segment,
    new_segment_name,
)
from tutela.contentstore.pack import (
    DEFAULT_LEVEL,
    BlobEntry,
    Codec,
    PackBuilder,
    blobs_fill,
    header_start,
    naming,
    pack_key,
    parse_header,
    window_log_for,
)
from tutela.errors import ConfigError, ObjectNotFound

log = logging.getLogger(__name__)

#: 2: a multi-chunk FileRef's digest may cover its chunk list (`digest_of`), which a version
#: 1 reader would misread.  3: index segments are binary (index.INDEX_VERSION 2), which a
#: version 2 reader would call damaged.  4: a pack is named by the BLAKE3 of its header (as
#: stored) instead of all its bytes, which a version 3 reader's verify would call damaged.  The
#: first writer of a version upgrades an older store.
FORMAT_VERSION = 4
SECTION = CONTENT_STORE_SECTION
CONFIG_KEY = "config"
PACK_PREFIX = "packs/"
LOCK_PREFIX = "locks/"
#: Records of chunk copies found damaged (by verify --read-data or a restore): a damaged copy
#: no longer counts for deduplication, so the next protect of that data stores it again.
DAMAGED_PREFIX = "damaged/"
DAMAGED_AAD = b"tutela-damaged"
PASSWORD_ENV = "TUTELA_PASSWORD"
#: A lock not refreshed for this long is stale (its writer died) and is ignored.  A lock of a
#: process on this machine that is provably gone is stale at once (see `_process_gone`).
LOCK_STALE_SECONDS = 30 * 60
LOCK_REFRESH_SECONDS = 5 * 60
#: A writer writes an index segment at least every this many packs, even without flush().
SEGMENT_PACKS = 64
#: Pack uploads at once.  Two: one seals a pack (its join and hash, about 14 ms for 16 MiB)
#: while the other writes one, so a bank that writes at disk speed (about 400 MB/s here)
#: is kept busy; one left the disk idle while it sealed (a first protect of the 1 GiB set:
#: 2.77-2.88 s against 2.97-3.22 s).
UPLOADERS = 2
#: Chunks smaller than this are handed to the thread pool in batches (many small files).
BATCH_BYTES = 512 * 1024
BATCH_CHUNKS = 64
#: Reads keep this many whole packs in memory: restoring many small files stored side by
#: side then costs one pack fetch, not one ranged read per file.
PACK_CACHE = 2


# -- locks -------------------------------------------------------------------------------
def _start_time(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot (field 22 of its stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[19].decode()


@functools.cache
def _process_mark() -> dict[str, str] | None:
    """Where this process runs: the boot and the pid namespace.  With the process's start
    time (a reused pid has another), a later look on this machine can tell that it is gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        ns = os.stat("/proc/self/ns/pid")
        return {"boot": boot, "pidns": f"{ns.st_dev}:{ns.st_ino}"}
    except OSError:
        return None


def _process_gone(doc: dict[str, Any]) -> bool:
    """True only when the lock's writer ran in this boot and pid namespace and its process
    no longer exists (a SIGKILLed protect): its lock need not wait 30 minutes.  Anything
    unsure (another machine or container, no /proc) is False: the lock stands."""
    here, there = _process_mark(), doc.get("process")
    if here is None or not isinstance(there, dict):
        return False
    if there.get("boot") != here["boot"] or there.get("pidns") != here["pidns"]:
        return False
    if not there.get("start"):
        return False
    try:
        return _start_time(int(doc["pid"])) != there.get("start")
    except FileNotFoundError:
        return True
    except (OSError, KeyError, ValueError, IndexError):
        return False


# -- settings ----------------------------------------------------------------------------
#: The keys of `[content_store]`; any other is refused (see ProviderConfig.check_keys).
SETTINGS_KEYS = frozenset(
    {
        "chunk_min",
        "chunk_avg",
        "chunk_max",
        "compression",
        "compression_level",
        "pack_size",
        "encryption",
        "password_file",
        "key_file",
        "cache_dir",
    }
)


@dataclass(frozen=True)
class StoreSettings:
    """The `[content_store]` section of a provider file, checked."""

    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression: str = "zstd"
    compression_level: int = DEFAULT_LEVEL
    pack_size: int = 16 * MiB
    encryption: str = "none"
    password_file: Path | None = None
    key_file: Path | None = None
    cache_dir: Path | None = None
    config_path: str = "<memory>"

    @classmethod
    def from_config(cls, config: ProviderConfig | None) -> StoreSettings:
        if config is None:
            return cls()
        config.check_keys(SECTION, SETTINGS_KEYS)
        defaults = cls()

        def size(key: str, default: int) -> int:
            raw = config.get(SECTION, key)
            if raw is None or raw == "":
                return default
            try:
                return parse_size(raw)
            except ValueError as exc:
                raise config.error(str(exc), f"{SECTION}.{key}") from None

        params = ChunkerParams(
            size("chunk_min", defaults.chunker.min_size),
            size("chunk_avg", defaults.chunker.avg_size),
            size("chunk_max", defaults.chunker.max_size),
        )
        problem = params.problem()
        if problem:
            # Name the key at fault: the one the message starts with, else (sizes out of
            # order) the first one the file sets.
            sizes = ("chunk_min", "chunk_avg", "chunk_max")
            first = problem.split()[0]
            key = (
                first
                if first in sizes
                else next((k for k in sizes if config.get(SECTION, k)), "chunk_avg")
            )
            raise config.error(problem, f"{SECTION}.{key}")
        compression = (config.get(SECTION, "compression") or "zstd").lower()
        if compression not in ("zstd", "none"):
            raise config.error(
                f"must be 'zstd' or 'none', not {compression!r}", f"{SECTION}.compression"
            )
        level = config.get_int(SECTION, "compression_level", DEFAULT_LEVEL)
        assert level is not None
        if not -7 <= level <= 22:
            raise config.error("must be between -7 and 22", f"{SECTION}.compression_level")
        pack_size = size("pack_size", defaults.pack_size)
        if not 1 * MiB <= pack_size <= 1024 * MiB:
            raise config.error("must be between 1M and 1G", f"{SECTION}.pack_size")
        encryption = (config.get(SECTION, "encryption") or "none").lower()
        if encryption not in ALGORITHMS:
            raise config.error(
                f"must be one of {', '.join(ALGORITHMS)}, not {encryption!r}",
                f"{SECTION}.encryption",
            )
        return cls(
            chunker=params,
            compression=compression,
            compression_level=level,
            pack_size=pack_size,
            encryption=encryption,
            password_file=config.get_path(SECTION, "password_file"),
            key_file=config.get_path(SECTION, "key_file"),
            cache_dir=config.get_path(SECTION, "cache_dir"),
            config_path=config.path,
        )


def _password_file(path: Path, where: str) -> bytes:
    """The passphrase in a password file: its first line, as bytes (any encoding works,
    the same bytes every time); empty when the file holds none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MissingPasswordError(
            f"{where}: cannot read password file {str(path)!r}: {exc.strerror}"
        ) from None
    return data.split(b"\n", 1)[0].rstrip(b"\r")


# -- public records ----------------------------------------------------------------------
@dataclass(frozen=True)
class FileRef:
    """What a checkpoint records for one file: its chunks in order and a digest.

    `chunks` are (chunk id hex, raw size).  `digest` identifies the content: for a file of
    at most one chunk it is the BLAKE3 of the content (the chunk's id: keyed in an encrypted
    store, so it reveals nothing); for a longer file (`digest_of == "chunks"`) it is the same
    hash over the chunk list (ids and sizes), which costs nothing to compute while every
    chunk is checked against its id.  References written before store format 2 carry a
    digest of the whole content (`digest_of == "content"`), still checked as such on read.
    `to_json()` / `from_json()` round-trip.
    """

    size: int
    digest: str
    chunks: tuple[tuple[str, int], ...]
    digest_of: str = "content"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "size": self.size,
            "digest": self.digest,
            "chunks": [list(c) for c in self.chunks],
        }
        if self.digest_of != "content":
            out["digest_of"] = self.digest_of
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRef:
        digest_of = str(data.get("digest_of", "content"))
        if digest_of not in ("content", "chunks"):
            raise ValueError(f"unknown digest_of {digest_of!r} in a file reference")
        return cls(
            int(data["size"]),
            str(data["digest"]),
            tuple((str(c), int(n)) for c, n in data["chunks"]),
            digest_of,
        )

    def chunk_ids(self) -> set[str]:
        return {c for c, _ in self.chunks}


def chunk_list_digest(keys: Keys, chunks: Iterable[tuple[str, int]]) -> str:
    """The digest of a multi-chunk file: (keyed) BLAKE3 over its chunk ids and sizes."""
    hasher = keys.hasher()
    hasher.update(b"tutela-chunk-list\0")
    for cid, size in chunks:
        hasher.update(bytes.fromhex(cid) + size.to_bytes(8, "little"))
    return str(hasher.hexdigest())


@dataclass
class StoreStats:
    """Counters since open (thread-safe enough: updated under the store's locks)."""

    bytes_read: int = 0  # raw bytes given to write()
    bytes_new: int = 0  # raw bytes of chunks not seen before
    bytes_stored: int = 0  # those chunks as stored (compressed, encrypted)
    bytes_restored: int = 0  # raw bytes yielded by read()
    chunks: int = 0
    chunks_new: int = 0
    chunks_deduplicated: int = 0
    packs_written: int = 0
    index_segments_written: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class VerifyReport:
    """`errors` say what is wrong, naming pack and chunk; `damaged_chunks` (hex ids) are the
    chunks they make unreadable or untrustworthy, so callers can name the files affected."""

    packs_checked: int = 0
    chunks_checked: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unindexed_packs: list[str] = field(default_factory=list)
    damaged_chunks: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class SweepReport:
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0
    segments_replaced: int = 0


K = TypeVar("K")
_Prepared = tuple[bytes, bytes, bytes | None]  # chunk id, raw bytes, stored form or None


class LocalFile:
    """A regular file given by path and the size its caller saw (a `write_many` source).

    A small one (one chunk: at most the chunker's minimum size) is read on the store's worker
    threads, several per task, with one open, read, fstat and close each: reading then
    overlaps hashing and compressing instead of queueing behind them on the caller's thread.
    `stat` is set to the fstat taken right after the read (for the caller's changed-while-read
    check); it stays None for a file read on the caller's thread.
    """

    __slots__ = ("path", "size", "stat")

    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size
        self.stat: os.stat_result | None = None

    def __fspath__(self) -> str:
        return self.path


Source = str | os.PathLike[str] | LocalFile | BinaryIO | Iterable[bytes]


class _TooBig:
    """A small file that grew past one chunk before it was read: written on the caller's
    thread instead."""


class _Pending:
    """A file being written by write_many: its chunk list fills in as chunks commit."""

    __slots__ = ("chunks", "key", "size", "skipped")

    def __init__(self, key: Any):
        self.key = key
        self.chunks: list[tuple[str, int]] = []
        self.size = 0
        self.skipped = False  # could not be read and on_error said to leave it out

    def ref(self, keys: Keys) -> FileRef:
        if len(self.chunks) > 1:
            return FileRef(
                self.size, chunk_list_digest(keys, self.chunks), tuple(self.chunks), "chunks"
            )
        if self.chunks:  # the id of the only chunk is the BLAKE3 of the content
            return FileRef(self.size, self.chunks[0][0], tuple(self.chunks))
        return FileRef(0, keys.hasher().hexdigest(), ())


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[BinaryIO | Iterable[bytes]]:
    if isinstance(source, str | os.PathLike):  # a LocalFile is one too
        with open(source, "rb") as fh:
            yield fh
    else:
        yield source


class _Batch:
    """Chunks (`datas`) or small files (`files`) handed to the thread pool as one task."""

    __slots__ = ("datas", "files", "future", "outcomes", "result", "size")

    def __init__(self) -> None:
        self.datas: list[bytes] = []
        self.files: list[LocalFile] = []
        self.size = 0
        self.future: Future[list[Any]] | None = None
        self.result: list[Any] | None = None
        self.outcomes: list[Any] = []  # small files: per file its FileRef, or result[i]


# -- the store ---------------------------------------------------------------------------
class ContentStore:
    """A deduplicating chunk store in a bank section.  One object is shared by many threads.

    Open with `ContentStore.open`.  `write()` returns a `FileRef`; it becomes durable when
    `flush()` returns (record a FileRef in a checkpoint only after that).  `read()` streams
    a file back, checking every chunk.  Close with `close()` (or use it as a context manager).
    """

    def __init__(
        self,
        section: BankSection,
        doc: dict[str, Any],
        keys: Keys,
        settings: StoreSettings,
        *,
        workers: int | None = None,
        uploaders: int = UPLOADERS,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.section = section
        self.id: str = doc["id"]
        self._doc = doc
        self.name = f"content store {section.prefix.rstrip('/') or '/'!r} ({self.id[:12]})"
        self.keys = keys
        self.settings = settings
        self.params = ChunkerParams.from_json(doc["chunker"], seed=keys.gear_seed)
        self.compression = settings.compression
        self.chunker = Chunker(self.params)
        window_log = window_log_for(self.params.max_size)
        self.codec = Codec(
            keys.cipher, settings.compression, settings.compression_level, window_log
        )
        self.pack_size = settings.pack_size
        self.on_bytes = on_bytes
        self.stats = StoreStats()
        cache_root = settings.cache_dir or Path(platformdirs.user_cache_dir("tutela"))
        self._cache = SegmentCache(cache_root / "contentstore" / self.id / "index")
        self._index = Index()
        self._segments: set[str] = set()
        self._damage_records: set[str] = set()
        self._found_damaged: set[tuple[bytes, str]] = set()  # by reads, not recorded yet
        self._load_lock = threading.Lock()
        self._packs: OrderedDict[str, bytes | memoryview] = OrderedDict()
        self._last_pack = ""
        self._packs_lock = threading.Lock()
        self._workers = workers or max(2, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tutela-cs")
        self._native = (
            native.Worker(
                keys,
                settings.compression,
                settings.compression_level,
                window_log,
                self.params.min_size,
                _TooBig,
                self._prepare_file,
            )
            if native.wanted()
            else None
        )
        self._inflight = 256  # chunks in flight (small files)
        self._inflight_bytes = 4 * self.params.max_size  # ... and their bytes (large ones)
        self._lock = threading.RLock()  # the open pack, pending set, stats
        self._pending: set[bytes] = set()
        self._builder = PackBuilder()
        self._empty_ref = FileRef(0, keys.hasher().hexdigest(), ())
        self._outstanding = 0  # packs sealed and not yet uploaded
        self._uploaded = threading.Condition(self._lock)
        self._queue: queue.Queue[PackBuilder | None] = queue.Queue(maxsize=2)
        self._unindexed: list[tuple[str, PackEntries]] = []
        self._unindexed_lock = threading.Lock()
        self._segment_lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self._lock_id = uuid.uuid4().hex
        self._lock_written = 0.0
        self._uploaders = [
            threading.Thread(target=self._upload_loop, name=f"tutela-cs-up{i}", daemon=True)
            for i in range(max(1, uploaders))
        ]
        for t in self._uploaders:
            t.start()

    def __repr__(self) -> str:
        return f"ContentStore({self.name}, encryption={self.keys.algorithm!r})"

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        section: BankSection,
        config: ProviderConfig | None = None,
        *,
        password: str | None = None,
        create: bool = True,
        workers: int | None = None,
        uploaders: int = UPLOADERS,
        on_bytes: Callable[[int], None] | None = None,
    ) -> ContentStore:
        """Open the store in `section`, creating it on first use when `create`.

        Settings come from the `[content_store]` section of `config`.  The chunker parameters
        and the encryption of an existing store win over the config file (so dedup keeps
        working); only asking for encryption of an unencrypted store is refused.  The
        passphrase is `password`, else $TUTELA_PASSWORD, else `password_file`, else a prompt
        when stdin is a terminal; a store made with `key_file` needs that file.
        """
        settings = StoreSettings.from_config(config)
        where = f"content store {section.prefix.rstrip('/') or '/'!r}"
        doc = cls._read_config(section, where)
        if doc is None:
            if not create:
                raise ContentStoreError(f"{where}: no content store here (not created yet)")
            doc, keys = cls._create(section, settings, password, where)
        else:
            keys = cls._unlock(doc, settings, password, where)
        stored = ChunkerParams.from_json(doc["chunker"])
        wanted = settings.chunker
        if (stored.min_size, stored.avg_size, stored.max_size) != (
            wanted.min_size,
            wanted.avg_size,
            wanted.max_size,
        ) and config is not None:
            log.info("%s: using the store's chunker parameters %s", where, doc["chunker"])
        store = cls(
            section, doc, keys, settings, workers=workers, uploaders=uploaders, on_bytes=on_bytes
        )
        try:
            store._load_index()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _read_config(section: BankSection, where: str) -> dict[str, Any] | None:
        try:
            doc = section.get_json(CONFIG_KEY)
        except ObjectNotFound:
            return None
        except ValueError:
            raise CorruptDataError(f"{where}: its config object is not valid JSON") from None
        version = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(version, int):
            raise CorruptDataError(f"{where}: its config object has no format version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{where}: format version {version} is newer than this Tutela reads "
                f"(up to {FORMAT_VERSION}); upgrade Tutela"
            )
        return doc

    @classmethod
    def _create(
        cls, section: BankSection, settings: StoreSettings, password: str | None, where: str
    ) -> tuple[dict[str, Any], Keys]:
        plugin = section.bank.plugin
        lease = "contentstore-create-" + blake3.blake3(section.prefix.encode()).hexdigest()[:16]
        deadline = time.monotonic() + 60
        while not plugin.acquire_lease(lease):  # another process is creating it right now
            if time.monotonic() > deadline:
                raise StoreLockedError(f"{where}: another process is creating the store")
            time.sleep(0.2)
        try:
            doc = cls._read_config(section, where)
            if doc is not None:  # lost the race: use theirs
                return doc, cls._unlock(doc, settings, password, where)
            store_id = uuid.uuid4().hex
            keys = Keys.generate(settings.encryption)
            doc = {
                "version": FORMAT_VERSION,
                "id": store_id,
                "created": int(time.time()),
                "chunker": settings.chunker.to_json(),
                "encryption": {"algorithm": settings.encryption},
            }
            if settings.encryption != "none":
                use_keyfile = settings.key_file is not None
                secret = cls._secret(settings, password, where, keyfile=use_keyfile, confirm=True)
                doc["encryption"]["key"] = keys.wrap(
                    secret, keyfile=use_keyfile, aad=store_id.encode()
                )
            section.put_json(CONFIG_KEY, doc)
            log.info("%s: created (id %s, encryption %s)", where, store_id, settings.encryption)
            return doc, keys
        finally:
            plugin.release_lease(lease)

    @classmethod
    def _unlock(
        cls, doc: dict[str, Any], settings: StoreSettings, password: str | None, where: str
    ) -> Keys:
        enc = doc.get("encryption") or {}
        algorithm = enc.get("algorithm", "none")
        where = f"{where} ({doc['id'][:12]})"
        if algorithm == "none":
            if settings.encryption != "none":
                raise ConfigError(
                    settings.config_path,
                    f"asks for {settings.encryption} but {where} is not encrypted; "
                    "use a new bank section for an encrypted store",
                    f"{SECTION}.encryption",
                )
            return Keys()
        if algorithm not in ALGORITHMS:
            raise UnsupportedFormatError(f"{where}: unknown encryption {algorithm!r}")
        record = enc["key"]
        keyfile = record.get("kdf") == "hkdf-sha256"
        secret = cls._secret(settings, password, where, keyfile=keyfile, confirm=False)
        try:
            return Keys.unwrap(algorithm, record, secret, doc["id"].encode())
        except DecryptError:
            # Before 2026-12-05 a password file counted whole, not its first line: a store
            # made then with a file of several lines still opens.
            whole = None
            if not keyfile and settings.password_file is not None:
                with contextlib.suppress(OSError):
                    whole = settings.password_file.read_bytes().rstrip(b"\r\n")
            if whole and whole != secret and not (password or os.environ.get(PASSWORD_ENV)):
                with contextlib.suppress(DecryptError):
                    return Keys.unwrap(algorithm, record, whole, doc["id"].encode())
            what = "key file" if keyfile else "passphrase"
            raise WrongPasswordError(f"{where}: wrong {what}") from None

    @staticmethod
    def _secret(
        settings: StoreSettings, password: str | None, where: str, *, keyfile: bool, confirm: bool
    ) -> bytes:
        """The passphrase or key-file bytes; never logged, never in a message."""
        if keyfile:
            if settings.key_file is None:
                raise MissingPasswordError(
                    f"{where} is encrypted with a key file: set [{SECTION}] key_file"
                )
            try:
                data = settings.key_file.read_bytes()
            except OSError as exc:
                raise MissingPasswordError(
                    f"{where}: cannot read key file {str(settings.key_file)!r}: {exc.strerror}"
                ) from None
            if len(data) < 16:
                raise MissingPasswordError(f"{where}: key file is shorter than 16 bytes")
            return data
        if password is None:
            password = os.environ.get(PASSWORD_ENV) or None
        if password is None and settings.password_file is not None:
            data = _password_file(settings.password_file, where)
            if not data:
                raise MissingPasswordError(
                    f"{where}: password file {str(settings.password_file)!r} holds no passphrase "
                    "(its first line is empty)"
                )
            return data
        if password is None and sys.stdin is not None and sys.stdin.isatty():
            password = getpass.getpass(f"Passphrase for {where}: ")
            if confirm and getpass.getpass("Repeat passphrase: ") != password:
                raise MissingPasswordError(f"{where}: the passphrases do not match")
        if not password:
            raise MissingPasswordError(
                f"{where} is encrypted: give a passphrase in ${PASSWORD_ENV}, "
                f"[{SECTION}] password_file, or at the prompt"
            )
        return password.encode("utf-8")

    # -- index -----------------------------------------------------------------------------
    def _fetch_segment(self, name: str) -> list[tuple[str, PackEntries]]:
        key = INDEX_PREFIX + name
        for source in ("cache", "bank"):
            data = self._cache.get(name) if source == "cache" else None
            if source == "bank":
                try:
                    data = self.section.get_object(key)
                except ObjectNotFound:
                    return []  # swept since it was listed
            if data is None:
                continue
            try:
                version, packs = decode_segment(data, self.keys.cipher)
            except (DecryptError, ValueError, KeyError, TypeError) as exc:
                if source == "cache":
                    self._cache.drop(name)
                    continue
                raise CorruptDataError(
                    f"{self.name}: index segment {key!r} is damaged ({exc})"
                ) from None
            if version > INDEX_VERSION:
                raise UnsupportedFormatError(
                    f"{self.name}: index segment {key!r} has format {version}, newer than "
                    f"this Tutela reads ({INDEX_VERSION})"
                )
            if source == "bank":
                self._cache.put(name, data)
            return packs
        return []

    def _load_index(self) -> None:
        """Read the segments not loaded yet (other writers' new ones), and the damage records
        first, so that a damaged copy never wins over an intact one."""
        with self._load_lock:
            self._load_damage_records()
            names = {k[len(INDEX_PREFIX) :] for k in self.section.iter_objects(INDEX_PREFIX)}
            for name in sorted(names - self._segments):
                for pack, entries in self._fetch_segment(name):
                    self._index.add_pack(pack, entries)
                self._segments.add(name)
            self._cache.prune(names | self._segments)

    def _load_damage_records(self) -> None:
        names = {k[len(DAMAGED_PREFIX) :] for k in self.section.iter_objects(DAMAGED_PREFIX)}
        for name in sorted(names - self._damage_records):
            self._index.mark_damaged(self._read_damage_record(name))
            self._damage_records.add(name)

    def _read_damage_record(self, name: str) -> list[tuple[bytes, str]]:
        """The copies a record names; [] when it is gone or unreadable (a record only makes
        protects store data again: losing one loses no data)."""
        try:
            data = self.section.get_object(DAMAGED_PREFIX + name)
            doc = json.loads(self.keys.cipher.decrypt(data, DAMAGED_AAD))
            return [(bytes.fromhex(c), str(p)) for c, p in doc["copies"]]
        except ObjectNotFound:
            return []
        except (DecryptError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: damage record %s is unreadable (%s); ignored", self.name, name, exc)
            return []

    def mark_damaged(self, copies: Iterable[tuple[str | bytes, str]], found_by: str) -> int:
        """Record chunk copies (id, pack) as damaged, in the bank, for every later writer.

        A chunk whose only copy is damaged then no longer deduplicates: the next protect that
        meets its data stores it again, and reads (of older checkpoints too) use the new
        copy.  Returns how many copies were newly recorded.
        """
        wanted = {(bytes.fromhex(c) if isinstance(c, str) else c, str(p)) for c, p in copies}
        new = wanted - self._index.damaged_copies()
        if not new:
            return 0
        self._index.mark_damaged(new)
        self._write_damage_record(new, found_by)
        log.warning(
            "%s: %d damaged chunk(s) recorded; the next protect of their data stores them again",
            self.name,
            len(new),
        )
        return len(new)

    def _write_damage_record(self, copies: set[tuple[bytes, str]], found_by: str) -> None:
        doc = {
            "version": 1,
            "found_at": int(time.time()),
            "found_by": found_by,
            "copies": sorted([cid.hex(), pack] for cid, pack in copies),
        }
        name = new_segment_name()
        data = self.keys.cipher.encrypt(json.dumps(doc).encode(), DAMAGED_AAD)
        self.section.update_object(DAMAGED_PREFIX + name, data)
        self._damage_records.add(name)

    def damaged_chunks(self) -> set[str]:
        """Chunk ids (hex) whose every known copy is damaged: a writer must not take over a
        file reference that needs one of them."""
        return {cid.hex() for cid in self._index.damaged()}

    def _record_found_damage(self, found_by: str) -> None:
        """Record the damage that reads met (best effort: a read-only bank only logs)."""
        with self._lock:
            found, self._found_damaged = self._found_damaged, set()
        if found and self.section.is_writable:
            try:
                self.mark_damaged(found, found_by)
            except Exception as exc:
                log.warning("%s: could not record damaged chunks: %s", self.name, exc)

    def refresh(self) -> None:
        """Pick up chunks that other processes wrote since open (reads do this on a miss)."""
        self._load_index()

    def has(self, chunk_id: str | bytes) -> bool:
        """Whether the chunk is stored (or on its way: written but not flushed yet)."""
        cid = bytes.fromhex(chunk_id) if isinstance(chunk_id, str) else chunk_id
        return cid in self._index or cid in self._pending

    # -- writing ---------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise ContentStoreError(f"{self.name}: store is closed")
        if self._error is not None:
            raise ContentStoreError(
                f"{self.name}: an earlier upload failed ({self._error}); unflushed data is lost"
            ) from self._error

    def write(self, stream: Iterable[bytes] | BinaryIO) -> FileRef:
        """Chunk, dedupe, compress, encrypt and pack `stream`; returns its FileRef.

        Memory stays bounded whatever the stream's size.  The data is durable once `flush()`
        returns, not before.
        """
        for _, ref in self.write_many([(None, stream)]):
            return ref
        raise AssertionError("write_many yielded nothing")  # pragma: no cover

    def write_file(self, path: str | os.PathLike[str]) -> FileRef:
        return self.write(Path(path))  # type: ignore[arg-type]

    def write_many(
        self,
        items: Iterable[tuple[K, Source]],
        on_error: Callable[[K, OSError], bool] | None = None,
        check: Callable[[], None] | None = None,
    ) -> Iterator[tuple[K, FileRef]]:
        """Write many files through one pipeline; yields (key, FileRef) in input order.

        A source is a path (opened and closed here), a `LocalFile`, a binary file object or
        an iterable of bytes.  Chunks of the next files are hashed and compressed while
        earlier ones are finished, and small `LocalFile`s are read on the worker threads too,
        so many small files keep both cores busy.  Memory is bounded by the in-flight window.

        When a path or `LocalFile` cannot be opened (or a small one read), `on_error(key,
        error)` decides: True leaves the file out (nothing is yielded for it), False (or no
        `on_error`) raises the error.

        `check` is called on the caller's thread before each file and each chunk: what it
        raises (a cancellation) stops the writing there.  What was committed stays in the
        store unreferenced until a sweep; nothing in flight is waited for.
        """
        self._check_usable()
        self._ensure_lock()
        # (file, batch, index in batch); batch None marks the end of a chunked file (a small
        # file's one entry is its end too).
        window: deque[tuple[_Pending, _Batch | None, int]] = deque()
        chunks: _Batch | None = None  # small chunks go to the pool together: fewer hops
        files: _Batch | None = None  # ... and so do small files, read there
        small = self.params.min_size  # a file this small is one chunk, never cut
        inflight = 0
        inflight_bytes = 0

        def submit(owner: _Batch | None) -> None:
            nonlocal chunks, files
            if owner is None or owner.future is not None:
                return
            if owner.files:
                owner.future = self._pool.submit(self._prepare_files, owner.files)
                files = None if owner is files else files
            else:
                owner.future = self._pool.submit(self._prepare_many, owner.datas)
                chunks = None if owner is chunks else chunks

        def skip(state: _Pending, error: BaseException) -> None:
            if not (isinstance(error, OSError) and on_error and on_error(state.key, error)):
                raise error
            state.skipped = True

        def pop() -> tuple[K, FileRef] | None:
            nonlocal inflight, inflight_bytes
            state, owner, i = window.popleft()
            if owner is None:  # end of a file
                return None if state.skipped else (state.key, state.ref(self.keys))
            submit(owner)
            assert owner.future is not None
            if owner.result is None:
                # Small files still queued are read here rather than waited for: the caller
                # has nothing else to do then (it would take ~8% longer over many files).
                # Chunks are not: the caller has the next file to read meanwhile.
                if owner.files and owner.future.cancel():
                    owner.result = self._prepare_files(owner.files)
                else:
                    owner.result = owner.future.result()
                if owner.files:  # committed together, in order: yielded one by one
                    owner.outcomes = self._commit_files(owner.result)
            inflight -= 1
            if not owner.files:
                prepared = owner.result[i]
                inflight_bytes -= len(prepared[1])
                self._commit(*prepared, state.chunks)
                return None
            inflight_bytes -= owner.files[i].size
            prepared = owner.outcomes[i]
            if type(prepared) is FileRef:
                return state.key, prepared
            if isinstance(prepared, BaseException):
                skip(state, prepared)
            elif prepared is _TooBig:
                try:
                    fh = open(owner.files[i].path, "rb")  # noqa: SIM115 - closed just below
                except OSError as exc:
                    skip(state, exc)
                else:
                    with fh:
                        self._write_inline(state, fh)
            # A small file has this one entry: it ends here (no end-of-file entry to pop).
            return None if state.skipped else (state.key, state.ref(self.keys))

        try:
            for key, source in items:
                if check is not None:
                    check()
                state = _Pending(key)
                if isinstance(source, LocalFile) and source.size <= small:
                    if files is None:
                        files = _Batch()
                    window.append((state, files, len(files.files)))
                    files.files.append(source)
                    files.size += source.size
                    if files.size >= BATCH_BYTES or len(files.files) >= BATCH_CHUNKS:
                        submit(files)
                    inflight += 1
                    inflight_bytes += source.size
                else:
                    with contextlib.ExitStack() as opened:
                        try:
                            stream = opened.enter_context(_opened(source))
                        except OSError as exc:
                            skip(state, exc)
                            stream = ()
                        for data in self.chunker.chunks(stream):
                            if check is not None:
                                check()
                            state.size += len(data)
                            if chunks is None:
                                chunks = _Batch()
                            window.append((state, chunks, len(chunks.datas)))
                            chunks.datas.append(data)
                            chunks.size += len(data)
                            if chunks.size >= BATCH_BYTES or len(chunks.datas) >= BATCH_CHUNKS:
                                submit(chunks)
                            inflight += 1
                            inflight_bytes += len(data)
                            while (
                                inflight >= self._inflight or inflight_bytes > self._inflight_bytes
                            ):
                                done = pop()
                                if done is not None:
                                    yield done
                    window.append((state, None, 0))  # the end of a chunked file
                while window and (
                    window[0][1] is None
                    or inflight >= self._inflight
                    or inflight_bytes > self._inflight_bytes
                ):
                    done = pop()
                    if done is not None:
                        yield done
            submit(chunks)
            submit(files)
            while window:
                done = pop()
                if done is not None:
                    yield done
        finally:
            for _, owner, _ in window:
                if owner is not None and owner.future is not None:
                    owner.future.cancel()

    def _write_inline(self, state: _Pending, stream: BinaryIO) -> None:
        """Write one file on the caller's thread, chunk by chunk (the rare small file that
        grew past one chunk before a worker read it)."""
        for data in self.chunker.chunks(stream):
            state.size += len(data)
            self._commit(*self._prepare(data), state.chunks)

    def _prepare_files(self, files: list[LocalFile]) -> list[Any]:
        """Worker-thread part for small files: read each (open, read, fstat, close) and
        prepare its one chunk.  Per file: a `_Prepared`, None (empty), `_TooBig`, or the
        exception to raise on the caller's thread, in order.  In C when it is built
        (`native.py`): a batch per call, without the interpreter lock."""
        if self._native is not None:
            return self._native.prepare(files, self.has)
        return [self._prepare_file(f) for f in files]

    def _prepare_file(self, f: LocalFile) -> Any:
        """`_prepare_files` for one file, in Python."""
        limit = self.params.min_size
        try:
            # O_NONBLOCK: a FIFO put in a file's place fails instead of hanging.
            fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                data = os.read(fd, f.size + 1)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "no longer a regular file", f.path)
                if len(data) != st.st_size:  # it changed since the walk: read to its end
                    rest = limit + 1 - len(data)  # (one byte past a chunk tells "too big")
                    data += read_upto(functools.partial(os.read, fd), rest, rest)
                    st = os.fstat(fd)
            finally:
                os.close(fd)
            f.stat = st
            if len(data) > limit:
                return _TooBig
            if data:
                return self._prepare(data)
            return None
        except Exception as exc:
            return exc

    def write_bytes(self, data: bytes) -> FileRef:
        return self.write([data])

    def _prepare_many(self, datas: list[bytes]) -> list[_Prepared]:
        """Worker-thread part for a batch of chunks (in C when it is built)."""
        if self._native is not None:
            return self._native.prepare_chunks(datas, self.has)
        return [self._prepare(d) for d in datas]

    def _prepare(self, data: bytes) -> tuple[bytes, bytes, bytes | None]:
        """Worker-thread part: hash, and compress+encrypt unless already stored."""
        cid = self.keys.chunk_id(data)
        if self.has(cid):
            return cid, data, None
        return cid, data, self.codec.encode(cid, data)

    def _commit(
        self, cid: bytes, data: bytes, stored: bytes | None, chunks: list[tuple[str, int]]
    ) -> None:
        """Caller-thread part, in stream order: record the chunk, add it to the open pack."""
        chunks.append((cid.hex(), len(data)))
        upload = None
        with self._lock:
            self.stats.bytes_read += len(data)
            self.stats.chunks += 1
            if self.has(cid):
                self.stats.chunks_deduplicated += 1
            else:
                if stored is None:  # known when hashed, gone since (a sweep): store it again
                    stored = self.codec.encode(cid, data)
                self._pending.add(cid)
                self._builder.add(cid, stored, len(data))
                self.stats.chunks_new += 1
                self.stats.bytes_new += len(data)
                self.stats.bytes_stored += len(stored)
                if self._builder.size >= self.pack_size:
                    upload = self._seal_locked()
        if upload is not None:
            self._queue.put(upload)  # outside the lock; blocks while 2 packs wait: bounded
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    def _commit_files(self, prepared: list[Any]) -> list[Any]:
        """`_commit` for a batch of small files at once, in order, under one hold of the
        lock: per file, its FileRef (an empty file's too), or what its turn in `write_many`
        handles (an error to raise or skip, `_TooBig`).  A loop without a call per file: the
        caller's thread is the one that paces 20,000 small files."""
        out: list[Any] = []
        uploads = []
        index, pending, stats, codec = self._index, self._pending, self.stats, self.codec
        read = new = stored = chunks = chunks_new = 0
        with self._lock:
            builder = self._builder
            for p in prepared:
                if type(p) is not tuple:
                    out.append(self._empty_ref if p is None else p)
                    continue
                cid, data, blob = p
                size = len(data)
                chunks += 1
                read += size
                if cid not in index and cid not in pending:
                    if blob is None:  # known when hashed, gone since (a sweep): store it again
                        blob = codec.encode(cid, data)
                    pending.add(cid)
                    builder.add(cid, blob, size)
                    chunks_new += 1
                    new += size
                    stored += len(blob)
                    if builder.size >= self.pack_size:
                        uploads.append(self._seal_locked())
                        builder = self._builder
                digest = cid.hex()
                out.append(FileRef(size, digest, ((digest, size),)))
            stats.bytes_read += read
            stats.chunks += chunks
            stats.chunks_deduplicated += chunks - chunks_new
            stats.chunks_new += chunks_new
            stats.bytes_new += new
            stats.bytes_stored += stored
        for upload in uploads:
            self._queue.put(upload)  # outside the lock, as in _commit
        if self.on_bytes is not None and read:
            self.on_bytes(read)
        return out

    def _seal_locked(self) -> PackBuilder | None:
        """Close the open pack; the caller queues it after releasing the lock (the uploader
        needs the lock too) and the uploader seals it: naming 16 MiB is work the
        writing thread need not wait for."""
        if not len(self._builder):
            return None
        self._check_usable()
        builder, self._builder = self._builder, PackBuilder()
        self._outstanding += 1
        return builder

    def _wait_uploaded_locked(self) -> None:
        while self._outstanding:
            self._uploaded.wait()

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self._error is None:
                    self._upload(item)
            except BaseException as exc:
                log.error("%s: pack upload failed: %s", self.name, exc)
                self._error = exc
            finally:
                with self._lock:
                    self._outstanding -= 1
                    self._uploaded.notify_all()

    def _upload(self, builder: PackBuilder) -> None:
        # Its parts in memory (a pack is bounded by pack_size): object-store banks send it
        # from memory instead of spooling it to a temporary file first.
        name, parts, entries = builder.seal(self.keys.cipher)
        self.section.update_object_parts(pack_key(name), parts)
        del parts
        self._index.add_pack(name, entries)
        with self._lock:
            self._pending.difference_update(cid for cid, *_ in entries)
            self.stats.packs_written += 1
        with self._unindexed_lock:
            self._unindexed.append((name, entries))
            due = len(self._unindexed) >= SEGMENT_PACKS
        if due:
            self._write_segment()

    def _write_segment(self) -> None:
        """Write one index segment for the packs uploaded since the last one."""
        with self._segment_lock:
            with self._unindexed_lock:
                packs, self._unindexed = self._unindexed, []
            if not packs:
                return
            name = new_segment_name()
            data = encode_segment(packs, self.keys.cipher)
            try:
                self.section.update_object(INDEX_PREFIX + name, data)
            except BaseException:
                with self._unindexed_lock:
                    self._unindexed[:0] = packs
                raise
            self._segments.add(name)
            self._cache.put(name, data)
            with self._lock:
                self.stats.index_segments_written += 1

    def flush(self) -> None:
        """Seal and upload the open pack, then write the index segment naming it.

        Everything `write()` returned before this call is durable when it returns.
        """
        self._check_usable()
        with self._lock:
            upload = self._seal_locked()
        if upload is not None:
            self._queue.put(upload)
        with self._lock:
            self._wait_uploaded_locked()
        self._check_usable()
        self._write_segment()
        self._refresh_lock()

    # -- reading ---------------------------------------------------------------------------
    def _locate(self, cid: bytes) -> BlobEntry:
        entry = self._index.get(cid)
        if entry is None and cid in self._pending:
            self.flush()
            entry = self._index.get(cid)
        if entry is None or self._index.is_damaged(cid):  # another writer may have stored it
            self._load_index()
            entry = self._index.get(cid)
        if entry is None:
            raise MissingChunkError(f"{self.name}: chunk {cid.hex()} is in no index segment")
        return entry

    @contextlib.contextmanager
    def _reading_pack(self, pack: str) -> Iterator[None]:
        """A pack the index names but the bank lacks is damage, reported as such."""
        try:
            yield
        except ObjectNotFound:
            raise CorruptDataError(
                f"{self.name}: pack {pack} is missing from the bank", pack=pack
            ) from None

    def _read_ranges(self, pack: str, ranges: list[tuple[int, int]]) -> dict[int, bytes]:
        """The bytes at (offset, length) of a pack, streaming it once, stopping early."""
        wanted = sorted(set(ranges))
        out: dict[int, bytes] = {}
        with self._reading_pack(pack):
            stream = self.section.get_object_stream(pack_key(pack))
        pos = 0
        parts: dict[int, list[bytes]] = {}
        i = 0
        for block in stream:
            end = pos + len(block)
            j = i
            while j < len(wanted) and wanted[j][0] < end:
                off, length = wanted[j]
                lo, hi = max(off, pos), min(off + length, end)
                if hi > lo:
                    parts.setdefault(off, []).append(block[lo - pos : hi - pos])
                if off + length <= end:
                    out[off] = b"".join(parts.pop(off, []))
                    if j == i:
                        i += 1
                j += 1
            pos = end
            if i >= len(wanted):
                break
        if hasattr(stream, "close"):
            stream.close()
        return out

    def _pack_bytes(self, pack: str) -> bytes | memoryview:
        """A whole pack, from the small read cache or the bank."""
        with self._packs_lock:
            data = self._packs.get(pack)
            if data is not None:
                self._packs.move_to_end(pack)
                return data
        mapped = self.section.get_object_view
        with self._reading_pack(pack):
            if mapped is not None:
                data = mapped(pack_key(pack))
            else:
                data = self.section.get_object(pack_key(pack))
        with self._packs_lock:
            self._packs[pack] = data
            while len(self._packs) > PACK_CACHE:
                self._packs.popitem(last=False)
        return data

    def _fetch(self, pack: str, ranges: list[tuple[int, int]]) -> dict[int, bytes | memoryview]:
        """The stored bytes at (offset, length) of a pack.

        A pack read from twice in a row is fetched whole and cached (restoring files stored
        side by side); a lone read (a chunk deduplicated against an old pack) fetches only
        what it needs, with the bank's range read (filesystem, Swift, S3), else by streaming the
        pack up to the last byte needed (a bank plugin without range reads), and does not
        evict the pack being restored from.
        """
        with self._packs_lock:
            data = self._packs.get(pack)
            again = pack == self._last_pack
            self._last_pack = pack
        needed = sum(ln for _, ln in ranges)
        if data is None and (again or needed >= self.pack_size // 4):
            data = self._pack_bytes(pack)
        if data is not None:
            view = memoryview(data)  # no copies: the decoders read the cached pack in place
            return {off: view[off : off + ln] for off, ln in ranges}
        read_range = getattr(self.section, "get_object_range", None)
        if read_range is not None:
            with self._reading_pack(pack):
                return {off: read_range(pack_key(pack), off, ln) for off, ln in ranges}
        return self._read_ranges(pack, ranges)

    def _decode(self, cid: bytes, entry: BlobEntry, stored: bytes | memoryview | None) -> bytes:
        try:
            return self._decode_checked(cid, entry, stored)
        except CorruptDataError:
            with self._lock:
                self._found_damaged.add((cid, entry.pack))
            raise

    def _decode_checked(
        self, cid: bytes, entry: BlobEntry, stored: bytes | memoryview | None
    ) -> bytes:
        where = f"{self.name}: chunk {cid.hex()} in pack {entry.pack} at offset {entry.offset}"
        if stored is None or len(stored) != entry.length:
            raise CorruptDataError(f"{where}: pack is truncated", entry.pack, cid.hex())
        try:
            raw = self.codec.decode(cid, stored, entry.raw_length)
        except DecryptError:
            raise CorruptDataError(
                f"{where}: does not authenticate (damaged or altered)", entry.pack, cid.hex()
            ) from None
        except Exception as exc:
            raise CorruptDataError(
                f"{where}: cannot be decoded ({exc})", entry.pack, cid.hex()
            ) from None
        if len(raw) != entry.raw_length or self.keys.chunk_id(raw) != cid:
            raise CorruptDataError(
                f"{where}: content does not match its id (damaged)", entry.pack, cid.hex()
            )
        return raw

    def read(self, ref: FileRef, parallel: bool = True) -> Iterator[bytes]:
        """Yield the file's bytes chunk by chunk, each checked against its id.

        `parallel` decodes a file's chunks on the store's pool; callers that already read
        several files at once on their own threads pass False (a hand-off per chunk then
        costs more in thread wake-ups than it gains).

        Raises CorruptDataError naming the pack and chunk on any damage, MissingChunkError
        when a chunk is not in the store.  A damaged chunk is recorded as such in the store
        (`mark_damaged`), so that the next protect of its data stores it again.
        """
        try:
            yield from self._read(ref, parallel)
        except CorruptDataError:
            self._record_found_damage("restore")
            raise

    def _read(self, ref: FileRef, parallel: bool) -> Iterator[bytes]:
        self._check_usable()
        # Every chunk is checked against its id (in _decode), so the content is right when
        # the chunk list is: a digest of the list is checked up front, one of the content
        # (references from before digest_of) as it streams.  One chunk's id is the digest.
        located = [(bytes.fromhex(c), n, self._locate(bytes.fromhex(c))) for c, n in ref.chunks]
        if (len(ref.chunks) == 1 and ref.chunks[0][0] != ref.digest) or (
            ref.digest_of == "chunks" and chunk_list_digest(self.keys, ref.chunks) != ref.digest
        ):
            raise CorruptDataError(f"{self.name}: file digest does not match its reference")
        hasher = self.keys.hasher() if ref.digest_of == "content" and len(ref.chunks) != 1 else None
        # Runs of consecutive chunks in one pack are fetched with one request.
        runs: list[list[tuple[bytes, int, BlobEntry]]] = []
        for item in located:
            run = runs[-1] if runs else None
            if run and run[-1][2].pack == item[2].pack:
                run.append(item)
            else:
                runs.append([item])
        for run in runs:
            pack = run[0][2].pack
            data = self._fetch(pack, [(e.offset, e.length) for _, _, e in run])
            if len(run) == 1 or not parallel:  # a thread hop would cost more than it saves
                raws: Iterable[Any] = (self._decode(c, e, data.get(e.offset)) for c, _, e in run)
            else:
                raws = [
                    self._pool.submit(self._decode, cid, e, data.get(e.offset)) for cid, _, e in run
                ]
            for (cid, size, _), fut in zip(run, raws, strict=True):
                raw = fut if isinstance(fut, bytes) else fut.result()
                if len(raw) != size:
                    raise CorruptDataError(
                        f"{self.name}: chunk {cid.hex()} has {len(raw)} bytes, the file "
                        f"reference says {size}",
                        pack,
                        cid.hex(),
                    )
                if hasher is not None:
                    hasher.update(raw)
                with self._lock:
                    self.stats.bytes_restored += len(raw)
                if self.on_bytes is not None:
                    self.on_bytes(len(raw))
                yield raw
        if hasher is not None and hasher.hexdigest() != ref.digest:
            raise CorruptDataError(f"{self.name}: file digest does not match its reference")

    def read_bytes(self, ref: FileRef) -> bytes:
        return b"".join(self.read(ref))

    def read_to(self, ref: FileRef, out: BinaryIO) -> int:
        n = 0
        for block in self.read(ref):
            out.write(block)
            n += len(block)
        return n

    # -- checking --------------------------------------------------------------------------
    def _reload_full(self) -> tuple[set[str], dict[str, PackEntries]]:
        """Every segment name and the pack -> entries map, fresh from the bank."""
        names = {k[len(INDEX_PREFIX) :] for k in self.section.iter_objects(INDEX_PREFIX)}
        packs: dict[str, dict[bytes, tuple[bytes, int, int, int]]] = {}
        for name in sorted(names):
            for pack, entries in self._fetch_segment(name):
                slot = packs.setdefault(pack, {})
                for e in entries:
                    slot[e[0]] = e
        return names, {p: list(v.values()) for p, v in packs.items()}

    def _bank_packs(self) -> set[str]:
        return {k.rsplit("/", 1)[-1] for k in self.section.iter_objects(PACK_PREFIX)}

    def verify(
        self, read_data: bool = False, referenced: Iterable[str] | None = None
    ) -> VerifyReport:
        """Check the store: every indexed pack exists and is long enough; with `read_data`,
        every pack hashes to its name (`pack.naming`) and every chunk decrypts, decompresses
        and hashes to its id.  Problems are listed, naming the pack and chunk; nothing raises
        for damage.

        With `referenced` (chunk ids, hex) only those chunks are checked, and only the packs
        holding them are read: each must be indexed, present and intact.  Damage elsewhere in
        a pack that holds one of them is a `warning` (the pack is damaged, these chunks are
        not).  A chunk stored twice is intact when one copy is: damage to the other copy is a
        warning too (the next sweep drops it).  Damaged copies found are recorded
        (`mark_damaged`), so that the next protect of their data stores it again; without
        `read_data`, copies recorded so are reported as damaged.
        """
        self.flush()
        report = VerifyReport()
        self._load_index()  # the damage records of other processes, too
        known_bad = self._index.damaged_copies()
        _, packs = self._reload_full()
        in_bank = self._bank_packs()
        wanted = None if referenced is None else {bytes.fromhex(c) for c in referenced}
        if wanted is None:
            report.unindexed_packs = sorted(in_bank - set(packs))
        indexed: set[bytes] = set()
        intact: set[bytes] = set()
        # (message, chunks it is about, "pack" or "chunk"): resolved once every copy of every
        # chunk has been seen.
        faults: list[tuple[str, set[bytes], str]] = []
        missing: set[tuple[bytes, str]] = set()
        for pack, entries in sorted(packs.items()):
            indexed.update(e[0] for e in entries)
            if wanted is not None:
                entries = [e for e in entries if e[0] in wanted]
                if not entries:
                    continue
            report.packs_checked += 1
            cids = {e[0] for e in entries}
            if pack not in in_bank:
                if not self._pack_exists(pack):
                    missing.update((cid, pack) for cid in cids)
                faults.append(
                    (f"pack {pack}: missing ({len(entries)} chunks indexed)", cids, "chunk")
                )
                continue
            if not read_data:
                size = self.section.object_size(pack_key(pack))
                end = max((off + ln for _, off, ln, _ in entries), default=0)
                if size < end:
                    faults.append((f"pack {pack}: {size} bytes, index needs {end}", cids, "chunk"))
                    continue
                bad = {cid for cid in cids if (cid, pack) in known_bad}
                if bad:
                    faults.append(
                        (
                            f"pack {pack}: {len(bad)} chunk(s) found damaged by an earlier "
                            "check or restore",
                            bad,
                            "chunk",
                        )
                    )
                intact.update(cids - bad)
                continue
            intact.update(self._verify_pack(pack, entries, report, faults))
        for message, cids, kind in faults:
            lost = cids - intact
            if lost or (kind == "pack" and wanted is None):
                report.errors.append(message)
                report.damaged_chunks.update(cid.hex() for cid in lost)
            elif kind == "pack":
                report.warnings.append(
                    f"{message}; the {len(cids)} chunk(s) asked about are intact"
                )
            else:
                report.warnings.append(
                    f"{message}; an intact copy is stored in another pack and used instead "
                    "(the next delete or prune drops this one)"
                )
        for cid in sorted(wanted or ()):
            if cid not in indexed:
                report.errors.append(f"chunk {cid.hex()}: referenced but in no index segment")
                report.damaged_chunks.add(cid.hex())
        with self._lock:
            self._found_damaged.update(missing)
        self._record_found_damage("verify")
        return report

    def _pack_exists(self, pack: str) -> bool:
        """Asked directly: a listing may lag behind a write on an object store."""
        try:
            self.section.object_size(pack_key(pack))
        except ObjectNotFound:
            return False
        return True

    def _verify_pack(
        self,
        pack: str,
        entries: PackEntries,
        report: VerifyReport,
        faults: list[tuple[str, set[bytes], str]],
    ) -> set[bytes]:
        """Read one pack whole and check `entries` in it; returns the chunks found intact.

        Each chunk is judged by its own check (it authenticates, or hashes to its id): a pack
        that does not hash to its name or whose header is unreadable is damaged, but the
        chunks that pass are intact.  Faults go to `faults` for `verify` to weigh."""
        cids = {e[0] for e in entries}
        try:
            data = self.section.get_object(pack_key(pack))
        except ObjectNotFound:
            with self._lock:
                self._found_damaged.update((cid, pack) for cid in cids)
            faults.append((f"pack {pack}: missing", cids, "chunk"))
            return set()
        pack_faults = []
        named = naming(data, pack)
        if named is None:
            pack_faults.append(f"pack {pack}: content does not hash to its name (damaged)")
        try:
            listed = parse_header(data, self.keys.cipher)
        except (DecryptError, ValueError) as exc:
            pack_faults.append(f"pack {pack}: header unreadable ({exc})")
            listed = []
        header = {e[0]: e for e in listed}
        others: list[tuple[bytes, int, int, int]] = []
        if named == "tail" and listed:
            # Named by its header alone: the bytes of the pack are covered by each blob's own
            # check, so those not asked about are checked too (a warning when they fail).
            if not blobs_fill(header_start(data), listed):
                pack_faults.append(f"pack {pack}: bytes outside its blobs (damaged)")
            others = [e for e in listed if e[0] not in cids]
        intact: set[bytes] = set()
        chunk_faults: list[tuple[str, set[bytes], str]] = []
        for cid, off, ln, raw in entries:
            if header and header.get(cid) != (cid, off, ln, raw):
                chunk_faults.append(
                    (
                        f"pack {pack}: chunk {cid.hex()} not in the pack header as indexed",
                        {cid},
                        "chunk",
                    )
                )

        def decode(e: tuple[bytes, int, int, int]) -> tuple[bytes, Future[bytes]]:
            cid, off, ln, raw = e
            blob = data[off : off + ln]
            return cid, self._pool.submit(self._decode, cid, BlobEntry(pack, off, ln, raw), blob)

        jobs = [decode(e) for e in entries]  # all submitted before any is waited for
        checks = [decode(e) for e in others]
        for cid, fut in jobs:
            report.chunks_checked += 1
            try:
                fut.result()
            except CorruptDataError as exc:
                chunk_faults.append((str(exc), {cid}, "chunk"))
            else:
                intact.add(cid)
        for cid, fut in checks:
            try:
                fut.result()
            except CorruptDataError:
                pack_faults.append(
                    f"pack {pack}: damaged (its chunk {cid.hex()} does not read back)"
                )
        faults.extend((fault, cids, "pack") for fault in pack_faults)
        faults.extend(chunk_faults)
        return intact

    # -- garbage collection ----------------------------------------------------------------
    def sweep(self, referenced: Iterable[str], repack_threshold: float = 0.3) -> SweepReport:
        """Delete packs holding no referenced chunk; repack packs whose unreferenced share of
        bytes is at least `repack_threshold`; rewrite the index.

        `referenced` must hold every chunk id (hex) that any checkpoint refers to.  Needs the
        store to itself: refuses (StoreLockedError) while another writer holds a fresh lock.
        Order: new packs, then new index segments, then delete old segments, then old packs,
        so a crash at any point loses no referenced chunk.
        """
        if not 0.0 < repack_threshold <= 1.0:
            raise ValueError("repack_threshold must be in (0, 1]")
        live = {bytes.fromhex(c) for c in referenced}
        self.flush()
        report = SweepReport()
        with self._lock:  # no writes through this object meanwhile
            self._wait_uploaded_locked()  # packs sealed by other threads since flush()
            self._write_segment()
            was_writer = bool(self._lock_written)
            self._write_lock(exclusive=True)
            try:
                self._check_no_other_locks(exclusive=True)
                with self._load_lock:
                    self._load_damage_records()
                    old_records = set(self._damage_records)
                bad = self._index.damaged_copies()
                old_segments, packs = self._reload_full()
                in_bank = self._bank_packs()
                keep: dict[str, PackEntries] = {}
                delete: set[str] = set(in_bank - set(packs))  # orphans of crashed writers
                repack: dict[str, PackEntries] = {}
                placed: set[bytes] = set()  # live chunks already given a home
                # A damaged copy is kept only while no intact copy of its chunk exists (it
                # still names the chunk as damaged rather than missing), and never repacked:
                # its damage record names its pack.
                good = {
                    e[0]
                    for pack, entries in packs.items()
                    if pack in in_bank
                    for e in entries
                    if e[0] in live and (e[0], pack) not in bad
                }
                for pack, entries in sorted(packs.items()):
                    if pack not in in_bank:
                        continue  # missing pack: verify reports it; nothing to keep
                    total = sum(ln for _, _, ln, _ in entries)
                    used = [
                        e
                        for e in entries
                        if e[0] in live
                        and e[0] not in placed
                        and ((e[0], pack) not in bad or e[0] not in good)
                    ]
                    used_bytes = sum(e[2] for e in used)
                    if not used:
                        delete.add(pack)
                    elif any((e[0], pack) in bad for e in used):
                        keep[pack] = entries
                    elif (total and 1 - used_bytes / total >= repack_threshold) or any(
                        (e[0], pack) in bad for e in entries
                    ):  # (a damaged copy with an intact one elsewhere is dropped)
                        repack[pack] = used
                        delete.add(pack)
                    else:
                        keep[pack] = entries
                    placed.update(e[0] for e in used)
                new_packs = self._repack(repack, report)
                # A pack's name is its header's hash, and a plain store's repack is
                # deterministic (the same blobs at the same offsets): a crashed sweep's
                # orphan may be the very pack just written.
                delete.difference_update(name for name, _ in new_packs)
                index_packs = list(keep.items()) + new_packs
                new_segments: list[str] = []
                for i in range(0, len(index_packs), 256):
                    name = new_segment_name()
                    data = encode_segment(index_packs[i : i + 256], self.keys.cipher)
                    self.section.update_object(INDEX_PREFIX + name, data)
                    self._cache.put(name, data)
                    new_segments.append(name)
                for name in old_segments:
                    self.section.delete_object(INDEX_PREFIX + name)
                report.segments_replaced = len(old_segments)
                bad = self._rewrite_damage_records(old_records, bad, set(keep))
                for pack in sorted(delete):
                    with contextlib.suppress(ObjectNotFound):
                        report.bytes_freed += self.section.object_size(pack_key(pack))
                    self.section.delete_object(pack_key(pack))
                    report.packs_deleted += 1
                with self._packs_lock:
                    self._packs.clear()
                self._index = Index()
                self._index.mark_damaged(bad)
                for pack, entries in index_packs:
                    self._index.add_pack(pack, entries)
                self._segments = set(new_segments)
                self._cache.prune(self._segments)
            finally:
                if was_writer:  # back to the shared lock this store held before
                    self._write_lock(exclusive=False)
                else:  # a store opened to sweep holds no lock after it
                    with contextlib.suppress(Exception):
                        self.section.delete_object(LOCK_PREFIX + self._lock_id)
                    self._lock_written = 0.0
        return report

    def _rewrite_damage_records(
        self, old: set[str], bad: set[tuple[bytes, str]], kept: set[str]
    ) -> set[tuple[bytes, str]]:
        """Keep the records of damaged copies in packs that stay, drop the rest; returns the
        copies still recorded.  The new record is written first: a crash in between leaves a
        copy recorded twice, which is harmless."""
        still = {(cid, pack) for cid, pack in bad if pack in kept}
        if still == bad and len(old) <= 1:
            return still
        if still:
            self._write_damage_record(still, "sweep")
        for name in old:
            with contextlib.suppress(ObjectNotFound):
                self.section.delete_object(DAMAGED_PREFIX + name)
            self._damage_records.discard(name)
        return still

    def _repack(
        self, repack: dict[str, PackEntries], report: SweepReport
    ) -> list[tuple[str, PackEntries]]:
        """Copy live blobs verbatim (a blob is bound to its chunk id, not its pack)."""
        written: list[tuple[str, PackEntries]] = []
        builder = PackBuilder()

        def seal() -> None:
            nonlocal builder
            if len(builder):
                name, parts, entries = builder.seal(self.keys.cipher)
                self.section.update_object_parts(pack_key(name), parts)
                written.append((name, entries))
                report.packs_written += 1
                builder = PackBuilder()

        for pack, entries in sorted(repack.items()):
            data = self._read_ranges(pack, [(off, ln) for _, off, ln, _ in entries])
            for cid, off, ln, raw in entries:
                blob = data.get(off)
                if blob is None or len(blob) != ln:
                    raise CorruptDataError(
                        f"{self.name}: pack {pack} is truncated; sweep stopped, nothing deleted",
                        pack,
                        cid.hex(),
                    )
                builder.add(cid, blob, raw)
                if builder.size >= self.pack_size:
                    seal()
            report.packs_repacked += 1
        seal()
        return written

    # -- locks -----------------------------------------------------------------------------
    def _write_lock(self, exclusive: bool) -> None:
        plugin = self.section.bank.plugin
        doc: dict[str, Any] = {
            "owner": plugin.get_owner_id(),
            "pid": os.getpid(),
            "time": time.time(),
            "exclusive": exclusive,
        }
        mark = _process_mark()
        if mark is not None:
            with contextlib.suppress(OSError, IndexError):
                doc["process"] = {**mark, "start": _start_time(os.getpid())}
        self.section.put_json(LOCK_PREFIX + self._lock_id, doc)
        self._lock_written = time.monotonic()

    def _other_locks(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The other writers' live locks.  A lock whose process is provably gone is removed
        (a killed protect must not hold up the space a delete frees for 30 minutes)."""
        now = time.time()
        for key in list(self.section.iter_objects(LOCK_PREFIX)):
            if key == LOCK_PREFIX + self._lock_id:
                continue
            try:
                doc = self.section.get_json(key)
            except (ObjectNotFound, ValueError):
                continue
            if now - float(doc.get("time", 0)) >= LOCK_STALE_SECONDS:
                continue
            if _process_gone(doc):
                log.info("%s: lock %s of pid %s: the process is gone", self.name, key, doc["pid"])
                if self.section.is_writable:
                    with contextlib.suppress(ObjectNotFound):
                        self.section.delete_object(key)
                continue
            yield key, doc

    def _check_no_other_locks(self, exclusive: bool) -> None:
        for key, doc in self._other_locks():
            if exclusive or doc.get("exclusive"):
                kind = "a sweep" if doc.get("exclusive") else "a writer"
                raise StoreLockedError(
                    f"{self.name}: {kind} holds it ({doc.get('owner')}, pid {doc.get('pid')}, "
                    f"lock {key!r}); try again later"
                )

    def _ensure_lock(self) -> None:
        """Writers announce themselves so a sweep in another process waits for them."""
        if self._lock_written:
            return
        with self._lock:
            if self._lock_written:
                return
            self._upgrade_format()
            self._write_lock(exclusive=False)
            try:
                self._check_no_other_locks(exclusive=False)
            except StoreLockedError:
                self.section.delete_object(LOCK_PREFIX + self._lock_id)
                self._lock_written = 0.0
                raise

    def _upgrade_format(self) -> None:
        """Before the first write: raise an older store's format version to this code's, so
        that older readers refuse what this version writes instead of misreading it."""
        if self._doc["version"] >= FORMAT_VERSION:
            return
        doc = self._read_config(self.section, self.name) or self._doc
        if doc["version"] < FORMAT_VERSION:
            doc = {**doc, "version": FORMAT_VERSION}
            self.section.put_json(CONFIG_KEY, doc)
            log.info("%s: format upgraded to version %d", self.name, FORMAT_VERSION)
        self._doc = doc

    def hold(self) -> None:
        """Announce this store as a writer before referring to chunks that already exist
        (an incremental protect that reuses an earlier checkpoint's chunks writes nothing
        new), so that a sweep elsewhere waits instead of deleting them."""
        self._check_usable()
        self._ensure_lock()

    def _refresh_lock(self) -> None:
        if self._lock_written and time.monotonic() - self._lock_written > LOCK_REFRESH_SECONDS:
            self._write_lock(exclusive=False)

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, stop the threads and drop this writer's lock."""
        if self._closed:
            return
        try:
            if self._error is None:
                self.flush()
        finally:
            self._closed = True
            for _ in self._uploaders:
                self._queue.put(None)
            for t in self._uploaders:
                t.join()
            self._pool.shutdown(wait=True)
            if self._lock_written and self.section.is_writable:
                with contextlib.suppress(Exception):
                    self.section.delete_object(LOCK_PREFIX + self._lock_id)
