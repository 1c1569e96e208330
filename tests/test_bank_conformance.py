"""One conformance suite for every bank: the `BankPlugin` contract, against the real thing.

Filesystem banks live under tmp_path; Swift and S3 banks talk to the Swift all-in-one
(`scripts/swift-aio`, fixture `swift_service`), each test in its own container or prefix.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator

import pytest

from tutela.bank import Bank
from tutela.bank.filesystem import FilesystemBank
from tutela.errors import BankError, InvalidKeyError, LeaseError, ObjectNotFound, ReadOnlyError

EXPIRE = 3.0
VALIDITY = 2.0
SETTLE = 0.5
RACE_SETTLE = 1.5
#: Swift's X-Delete-At has whole seconds, so its leases may outlive the record by up to ~2 s.
EXPIRE_SLACK = 2.5

KINDS = [
    pytest.param("filesystem", id="filesystem"),
    pytest.param("swift", id="swift", marks=pytest.mark.swift),
    pytest.param("s3", id="s3", marks=[pytest.mark.swift, pytest.mark.s3]),
]
LEASE_OPTIONS = {
    "lease_expire_window": EXPIRE,
    "lease_renew_window": 1.0,
    "lease_validity_window": VALIDITY,
    "lease_settle_time": SETTLE,
}
FAST_RETRY = {"retry_attempts": 3, "retry_initial_wait": 0.05, "retry_max_wait": 0.3}

Factory = Callable[..., Bank]


@pytest.fixture(params=KINDS)
def bank_kind(request) -> str:
    return request.param


@pytest.fixture
def bank_factory(request, bank_kind, tmp_path) -> Iterator[Factory]:
    """Makes banks (bank instances, hence owners) that share this test's own store."""
    made: list = []
    tag = f"t{uuid.uuid4().hex[:12]}"
    service = request.getfixturevalue("swift_service") if bank_kind != "filesystem" else None

    def make(**overrides) -> Bank:
        options = {**LEASE_OPTIONS, **overrides}
        if bank_kind == "filesystem":
            options.pop("lease_settle_time")
            plugin = FilesystemBank(root=tmp_path / "bank", fsync=False, **options)
        elif bank_kind == "swift":
            from tutela.bank.swift import SwiftBank

            plugin = SwiftBank(**service.swift_options(container=tag, **FAST_RETRY, **options))
        else:
            from tutela.bank.s3 import S3Bank

            plugin = S3Bank(
                **service.s3_options(bucket="tutela-tests", prefix=tag, **FAST_RETRY, **options)
            )
        made.append(plugin)
        return Bank(plugin)

    yield make
    if made and hasattr(made[0], "purge"):
        made[0].purge()
    for plugin in made:
        plugin.close()


@pytest.fixture
def any_bank(bank_factory) -> Bank:
    return bank_factory()


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        block = os.urandom(min(size, total - sent))
        sent += len(block)
        yield block


# -- objects ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [b"", b"x", bytes(range(256)) * 17], ids=["empty", "1B", "4KB"])
def test_round_trip(any_bank: Bank, value: bytes) -> None:
    any_bank.update_object("data/obj", value)
    assert any_bank.get_object("data/obj") == value
    assert b"".join(any_bank.get_object_stream("data/obj")) == value
    assert any_bank.object_size("data/obj") == len(value)


def test_an_object_given_as_parts_is_their_join(any_bank: Bank) -> None:
    """`update_object_parts` (how the content store writes a pack): the object is the parts
    joined, whatever their sizes (empty ones too), read back whole and by range, and a later
    write replaces it whole."""
    rng = random.Random(11)
    parts = [rng.randbytes(n) for n in (0, 1, 4095, 70_000, 0, 1 << 20, 13)]
    whole = b"".join(parts)
    section = any_bank.get_section("data")  # as the store writes: through its section
    section.update_object_parts("parts", parts)
    assert section.get_object("parts") == whole
    assert section.object_size("parts") == len(whole)
    assert section.get_object_range("parts", 4000, 80_000) == whole[4000:84_000]
    section.update_object_parts("parts", [b"short"])
    assert section.get_object("parts") == b"short"
    section.update_object_parts("parts", [])
    assert section.get_object("parts") == b""
    with pytest.raises(ReadOnlyError):
        any_bank.get_section("data", writable=False).update_object_parts("parts", [b"x"])
    assert section.get_object("parts") == b""


def test_str_is_stored_as_utf8(any_bank: Bank) -> None:
    any_bank.update_object("s", "grüße")
    assert any_bank.get_object("s") == "grüße".encode()
    any_bank.put_json("j", {"b": [1, 2], "a": None})
    assert any_bank.get_json("j") == {"a": None, "b": [1, 2]}


@pytest.mark.slow
def test_64mib_stream_with_bounded_memory(any_bank: Bank) -> None:
    size = 64 << 20
    written = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for block in _chunks(size):
            written.update(block)
            yield block

    tracemalloc.start()
    try:
        assert any_bank.update_object_stream("big/one", source()) == size
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = hashlib.sha256()
        count = 0
        for block in any_bank.get_object_stream("big/one"):
            read.update(block)
            count += len(block)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == size
    assert read.hexdigest() == written.hexdigest()
    assert any_bank.object_size("big/one") == size
    # Well below the object size: a few 1 MiB blocks and a bounded spool, never the object.
    assert upload_peak < 16 << 20, f"upload peak {upload_peak / 2**20:.1f} MiB"
    assert download_peak < 16 << 20, f"download peak {download_peak / 2**20:.1f} MiB"


def test_overwrite_replaces(any_bank: Bank) -> None:
    any_bank.update_object("k", b"first value, long")
    any_bank.update_object("k", b"second")
    assert any_bank.get_object("k") == b"second"
    any_bank.update_object_stream("k", iter([b"th", b"ird"]))
    assert any_bank.get_object("k") == b"third"
    assert any_bank.list_objects() == ["k"]


def test_missing_key(any_bank: Bank) -> None:
    with pytest.raises(ObjectNotFound):
        any_bank.get_object("no/such")
    with pytest.raises(ObjectNotFound):
        any_bank.get_object_stream("no/such")
    with pytest.raises(ObjectNotFound):
        any_bank.object_size("no/such")
    any_bank.delete_object("no/such")  # not an error
    any_bank.update_object("there", b"1")
    any_bank.delete_object("there")
    any_bank.delete_object("there")
    with pytest.raises(ObjectNotFound):
        any_bank.get_object("there")


def test_range_reads(any_bank: Bank) -> None:
    """Every shipped bank reads a slice natively (the content store's lone-chunk reads)."""
    data = os.urandom(10_000)
    section = any_bank.get_section("r")
    section.update_object("obj", data)
    read = section.get_object_range
    assert read is not None
    assert read("obj", 0, 10) == data[:10]
    assert read("obj", 5_000, 300) == data[5_000:5_300]
    assert read("obj", 9_996, 100) == data[-4:]  # fewer at the end
    assert read("obj", 10_000, 10) == b""  # at the end: nothing
    assert read("obj", 20_000, 10) == b""  # past the end: nothing
    assert read("obj", 3, 0) == b""
    with pytest.raises(ObjectNotFound):
        read("missing", 0, 1)
    with pytest.raises(ObjectNotFound):
        read("missing", 0, 0)
    with pytest.raises(InvalidKeyError):
        read("../obj", 0, 1)


def test_failed_stream_write_leaves_old_value(any_bank: Bank) -> None:
    any_bank.update_object("keep", b"old")

    def broken() -> Iterator[bytes]:
        yield b"new-" * 1000
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        any_bank.update_object_stream("keep", broken())
    with pytest.raises(RuntimeError, match="source died"):
        any_bank.update_object_stream("fresh", broken())
    assert any_bank.get_object("keep") == b"old"
    with pytest.raises(ObjectNotFound):
        any_bank.get_object("fresh")
    assert any_bank.list_objects() == ["keep"]


def test_interleaved_streams_and_writes(any_bank: Bank) -> None:
    """Two downloads open at once, with other requests in between, each get their own bytes
    (swiftclient reads a streamed body from a connection's latest response: easy to corrupt)."""
    one, two = os.urandom(3 << 20), os.urandom(2 << 20)
    any_bank.update_object("one", one)
    any_bank.update_object("two", two)
    s1 = any_bank.get_object_stream("one", chunk_size=1 << 20)
    s2 = any_bank.get_object_stream("two", chunk_size=1 << 20)
    got1, got2 = [next(s1)], [next(s2)]
    any_bank.update_object("three", b"3")
    assert any_bank.get_object("three") == b"3"
    assert any_bank.list_objects() == ["one", "three", "two"]
    got2.append(next(s2))
    got1.extend(s1)
    got2.extend(s2)
    assert b"".join(got1) == one
    assert b"".join(got2) == two


def test_concurrent_threads_share_one_bank(any_bank: Bank) -> None:
    values = {f"t/{i}": os.urandom(100_000 + i) for i in range(16)}
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            any_bank.update_object_stream(key, iter([values[key]]))
            assert b"".join(any_bank.get_object_stream(key)) == values[key]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert any_bank.list_objects("t/") == sorted(values)
    assert all(any_bank.get_object(k) == v for k, v in values.items())


# -- listing ----------------------------------------------------------------------------------
KEYS = [f"cp/{i:02d}" for i in range(11)] + ["cq/a", "n/x/1", "n/x/2", "z"]


def _fill(bank: Bank) -> None:
    for key in KEYS:
        bank.update_object(key, key)


def test_listing_order_and_prefix(any_bank: Bank) -> None:
    _fill(any_bank)
    assert any_bank.list_objects() == sorted(KEYS)
    assert any_bank.list_objects(sort_dir="desc") == sorted(KEYS, reverse=True)
    assert any_bank.list_objects("cp/") == sorted(k for k in KEYS if k.startswith("cp/"))
    assert any_bank.list_objects("c") == sorted(k for k in KEYS if k.startswith("c"))
    assert any_bank.list_objects("n/x/", sort_dir="desc") == ["n/x/2", "n/x/1"]
    assert any_bank.list_objects("nothing/") == []


@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_pagination(any_bank: Bank, sort_dir: str) -> None:
    _fill(any_bank)
    expected = sorted(KEYS, reverse=sort_dir == "desc")
    seen: list[str] = []
    marker = None
    while True:
        page = any_bank.list_objects(limit=4, marker=marker, sort_dir=sort_dir)
        assert len(page) <= 4
        seen.extend(page)
        if len(page) < 4:
            break
        marker = page[-1]
    assert seen == expected
    # Marker plus limit in the middle, and a marker that is not a key.
    assert any_bank.list_objects(limit=2, marker="cp/05", sort_dir=sort_dir) == (
        ["cp/06", "cp/07"] if sort_dir == "asc" else ["cp/04", "cp/03"]
    )
    assert any_bank.list_objects("cp/", limit=3, marker="cp/055", sort_dir=sort_dir) == (
        ["cp/06", "cp/07", "cp/08"] if sort_dir == "asc" else ["cp/05", "cp/04", "cp/03"]
    )
    assert any_bank.list_objects("cp/", marker="cp/00", sort_dir=sort_dir) == (
        [f"cp/{i:02d}" for i in range(1, 11)] if sort_dir == "asc" else []
    )


def test_sections_are_isolated(any_bank: Bank) -> None:
    one = any_bank.get_section("s1")
    ten = any_bank.get_section("s10")
    one.update_object("a", b"1")
    one.update_object("sub/b", b"2")
    ten.update_object("a", b"10")
    assert one.list_objects() == ["a", "sub/b"]
    assert ten.list_objects() == ["a"]
    assert one.get_object("a") == b"1"
    assert ten.get_object("a") == b"10"
    with pytest.raises(ObjectNotFound):
        ten.get_object("sub/b")
    sub = one.get_sub_section("sub")
    assert sub.list_objects() == ["b"]
    assert one.list_objects(sort_dir="desc", limit=1) == ["sub/b"]
    assert one.delete_all() == 2
    assert ten.list_objects() == ["a"]


def test_read_only_section_refuses_writes(any_bank: Bank) -> None:
    any_bank.update_object("ro/x", b"x")
    ro = any_bank.get_section("ro", writable=False)
    assert ro.get_object("x") == b"x"
    assert ro.exists("x")
    for write in (
        lambda: ro.update_object("x", b"y"),
        lambda: ro.update_object_stream("y", [b"y"]),
        lambda: ro.delete_object("x"),
        lambda: ro.put_json("j", 1),
        ro.delete_all,
        lambda: ro.get_sub_section("deeper", writable=True).update_object("z", b"z"),
    ):
        with pytest.raises(ReadOnlyError):
            write()
    assert any_bank.list_objects() == ["ro/x"]
    assert any_bank.get_object("ro/x") == b"x"


HOSTILE = ["../x", "a/../../b", "/abs", "a//b", "a\\b", "a\x00b", "a\x01b", "a\nb", "x" * 1025]


@pytest.mark.parametrize("key", HOSTILE, ids=lambda k: repr(k)[:20])
def test_hostile_keys_refused(any_bank: Bank, key: str) -> None:
    section = any_bank.get_section("sec")
    calls = [
        lambda: any_bank.update_object(key, b"x"),
        lambda: any_bank.update_object_stream(key, [b"x"]),
        lambda: any_bank.get_object(key),
        lambda: any_bank.get_object_stream(key),
        lambda: any_bank.object_size(key),
        lambda: any_bank.delete_object(key),
        lambda: any_bank.list_objects(prefix=key),
        lambda: section.update_object(key, b"x"),
        lambda: section.update_object_stream(key, [b"x"]),
        lambda: section.get_object(key),
        lambda: section.delete_object(key),
        lambda: section.list_objects(prefix=key),
    ]
    if key.strip("/") == key:  # sections strip outer slashes by design
        calls += [lambda: any_bank.get_section(key), lambda: section.get_sub_section(key)]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    assert any_bank.list_objects() == []


# -- leases -----------------------------------------------------------------------------------
def test_owner_ids_and_owner_lease(bank_factory: Factory) -> None:
    one, two = bank_factory().plugin, bank_factory().plugin
    assert one.get_owner_id() != two.get_owner_id()
    assert one.acquire_lease()  # None: this owner's liveness lease
    assert one.get_lease_owner() == one.get_owner_id()
    assert two.get_lease_owner(f"owner-{one.get_owner_id()}") == one.get_owner_id()
    assert not two.acquire_lease(f"owner-{one.get_owner_id()}")
    assert one.check_lease_validity()
    assert two.acquire_lease()  # its own liveness lease is a different one
    assert one.get_lease_owner("nobody-has-this") is None


def test_lease_acquire_renew_expire_steal(bank_factory: Factory) -> None:
    one, two = bank_factory().plugin, bank_factory().plugin
    assert one.acquire_lease("job")
    assert one.acquire_lease("job")  # re-acquiring our own lease is fine
    assert not two.acquire_lease("job")
    assert two.get_lease_owner("job") == one.get_owner_id()
    with pytest.raises(LeaseError):
        two.renew_lease("job")
    # Renewing keeps the lease alive past its first expiry.
    for _ in range(3):
        time.sleep(EXPIRE / 3)
        one.renew_lease("job")
        assert one.check_lease_validity("job")
    assert not two.acquire_lease("job")
    # Stop renewing: the lease lapses and another owner may steal it.
    time.sleep(EXPIRE + 0.2)
    assert not one.check_lease_validity("job")
    deadline = time.monotonic() + EXPIRE_SLACK + 2
    while not two.acquire_lease("job"):
        assert time.monotonic() < deadline, "expired lease could not be stolen"
        time.sleep(0.3)
    assert two.get_lease_owner("job") == two.get_owner_id()
    assert two.check_lease_validity("job")
    assert not one.check_lease_validity("job")
    with pytest.raises(LeaseError):
        one.renew_lease("job")


def test_lease_validity_window(bank_factory: Factory) -> None:
    # A longer expiry than elsewhere: the record must outlive the validity window by a margin
    # that covers slow requests on a busy machine.
    one = bank_factory(lease_expire_window=EXPIRE + 3).plugin
    assert one.acquire_lease("v")
    assert one.check_lease_validity("v")
    time.sleep(VALIDITY + 0.3)
    # Still stored under our name (not expired yet), but we may no longer trust it.
    assert one.get_lease_owner("v") == one.get_owner_id()
    assert not one.check_lease_validity("v")
    one.renew_lease("v")
    assert one.check_lease_validity("v")


def test_lease_release(bank_factory: Factory) -> None:
    one, two = bank_factory().plugin, bank_factory().plugin
    assert one.acquire_lease("r")
    two.release_lease("r")  # not ours: nothing happens
    assert one.get_lease_owner("r") == one.get_owner_id()
    one.release_lease("r")
    assert one.get_lease_owner("r") is None
    assert not one.check_lease_validity("r")
    assert two.acquire_lease("r")
    assert two.get_lease_owner("r") == two.get_owner_id()


def test_never_renewed_lease_raises(bank_factory: Factory) -> None:
    one = bank_factory().plugin
    with pytest.raises(LeaseError):
        one.renew_lease("never-acquired")
    with pytest.raises(InvalidKeyError):
        one.acquire_lease("bad/name")


@pytest.mark.slow
def test_racing_owners_exactly_one_wins(bank_factory: Factory) -> None:
    # A contender whose read-and-write takes longer than the settle time counts itself out (and
    # may leave a round without a winner): give busy CI machines a generous settle time.
    owners = [bank_factory(lease_settle_time=RACE_SETTLE).plugin for _ in range(2)]
    for round_no in range(10):
        name = f"race-{round_no}"
        barrier = threading.Barrier(len(owners))
        results: dict[int, bool | BaseException] = {}

        def contend(
            i: int,
            name: str = name,
            barrier: threading.Barrier = barrier,
            results: dict = results,
        ) -> None:
            barrier.wait()
            try:
                results[i] = owners[i].acquire_lease(name)
            except BaseException as exc:  # surfaced by the assertion below
                results[i] = exc

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(owners))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(isinstance(r, bool) for r in results.values()), results
        winners = [i for i, won in results.items() if won]
        assert len(winners) == 1, f"round {round_no}: winners {winners}"
        holder = owners[winners[0]].get_owner_id()
        assert owners[1 - winners[0]].get_lease_owner(name) == holder
        assert owners[winners[0]].check_lease_validity(name)
        assert not owners[1 - winners[0]].check_lease_validity(name)


# -- the content store on every bank -----------------------------------------------------------
def test_content_store_on_every_bank(bank_factory: Factory, tmp_path) -> None:
    """Encrypted multi-pack round trip, dedup across store objects, a lone chunk read by
    range, damage caught naming the pack and healed by writing the data again, and a sweep
    that frees what nothing refers to."""
    from tutela.config import ProviderConfig
    from tutela.contentstore import ContentStore, CorruptDataError, MissingChunkError

    config = ProviderConfig.from_dict(
        {
            "content_store": {
                "cache_dir": str(tmp_path / "cache"),
                "encryption": "chacha20-poly1305",
                "chunk_min": "16K",
                "chunk_avg": "64K",
                "chunk_max": "256K",
                "pack_size": "1M",
            }
        }
    )
    bank = bank_factory()
    section = bank.get_section("content")
    keep, drop = os.urandom(3_000_000), os.urandom(1_500_000)
    with ContentStore.open(section, config, password="pw") as store:
        kept, dropped = store.write_bytes(keep), store.write_bytes(drop)
    packs = list(section.iter_objects("packs/"))
    assert len(packs) >= 4
    with ContentStore.open(section, config, password="pw") as store:
        assert store.read_bytes(kept) == keep
        again = store.write_bytes(keep + drop)  # only chunks around the seam are new
        store.flush()
        assert store.stats.bytes_new < 4 * 256 * 1024  # a few chunks of at most 256K
        assert store.read_bytes(again) == keep + drop
    # One chunk out of an old pack: a ranged read on every bank.
    lone = type(kept)(size=kept.chunks[1][1], digest=kept.chunks[1][0], chunks=(kept.chunks[1],))
    with ContentStore.open(section, config, password="pw") as store:
        start = kept.chunks[0][1]
        assert store.read_bytes(lone) == keep[start : start + kept.chunks[1][1]]
        report = store.sweep(kept.chunk_ids())
        assert report.packs_deleted >= 1 and report.bytes_freed > 0
        assert store.read_bytes(kept) == keep
        with pytest.raises(MissingChunkError):  # freed: nothing referred to it
            store.read_bytes(dropped)
        assert store.verify(read_data=True, referenced=kept.chunk_ids()).ok
    victim = max(section.iter_objects("packs/"), key=section.object_size)
    damaged = bytearray(section.get_object(victim))
    damaged[len(damaged) // 3] ^= 0x01
    section.update_object(victim, bytes(damaged))
    with ContentStore.open(section, config, password="pw") as store:
        with pytest.raises(CorruptDataError) as info:
            store.read_bytes(kept)
        assert info.value.pack == victim.rsplit("/", 1)[-1]
        assert not store.verify(read_data=True).ok
    # The damage is recorded in the bank: the same data written again is stored again, the
    # old reference reads the new copy, and a sweep drops the damaged one.
    assert list(section.iter_objects("damaged/"))
    with ContentStore.open(section, config, password="pw") as store:
        assert store.damaged_chunks()
        healed = store.write_bytes(keep)
        assert healed.chunks == kept.chunks and store.stats.chunks_new >= 1
        store.flush()
        assert store.read_bytes(kept) == keep
        store.sweep(kept.chunk_ids())
        assert victim not in set(section.iter_objects("packs/"))
        full = store.verify(read_data=True)
        assert full.ok and not full.warnings, (full.errors, full.warnings)
    assert not list(section.iter_objects("damaged/"))


# -- bank-specific: large objects -------------------------------------------------------------
def _resident_bytes(path) -> int:
    """Bytes of a file in the page cache (util-linux `fincore`)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.parametrize("refused", ["", "at_open", "at_write"])
def test_filesystem_large_objects_bypass_the_page_cache(tmp_path, monkeypatch, refused) -> None:
    """With fsync on, an object of DIRECT_FROM bytes or more is written with O_DIRECT from an
    aligned buffer (odd sizes padded, then cut back), leaving nothing in the page cache; a
    filesystem that refuses O_DIRECT (at the open, or at a write: another alignment) gets
    ordinary writes, and is asked once."""
    from tutela.bank import filesystem

    real_open, real_pwrite, real_close = os.open, os.pwrite, os.close
    direct_opens = []
    direct_fds: set[int] = set()  # open O_DIRECT descriptors

    def counting_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            direct_opens.append(path)
            if refused == "at_open":
                raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def refusing_pwrite(fd, data, offset):
        if refused == "at_write" and fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    def tracking_close(fd):
        direct_fds.discard(fd)
        return real_close(fd)

    monkeypatch.setattr(filesystem.os, "open", counting_open)
    monkeypatch.setattr(filesystem.os, "pwrite", refusing_pwrite)
    monkeypatch.setattr(filesystem.os, "close", tracking_close)
    bank = Bank(FilesystemBank(root=tmp_path / "bank"))  # fsync on, as configured by default
    piece, block = filesystem.DIRECT_PIECE, filesystem.DIRECT_BLOCK
    sizes = [filesystem.DIRECT_FROM, filesystem.DIRECT_FROM + 1, piece, piece + block + 7]
    sizes.append(2 * piece + 3)
    for n in sizes:
        data = os.urandom(n)
        bank.update_object(f"o/{n}", data)
        bank.update_object(f"o/{n}", data[::-1])  # an overwrite replaces it whole
        path = tmp_path / "bank" / "objects" / "o" / str(n)
        assert path.stat().st_size == n
        if not refused:
            assert _resident_bytes(path) < block  # it went to the disk, not the page cache
        assert bank.get_object(f"o/{n}") == data[::-1]
    # As parts (a pack): small and large parts across the buffer's pieces, an empty one.
    parts = [os.urandom(n) for n in (block - 1, 0, piece - block, piece + 5, 3, 70_000)]
    bank.update_object_parts("o/parts", parts)
    path = tmp_path / "bank" / "objects" / "o" / "parts"
    if not refused:
        assert _resident_bytes(path) < block
    assert path.read_bytes() == b"".join(parts)
    bank.update_object("o/small", b"x" * 1000)  # small objects: ordinary writes
    assert len(direct_opens) == (1 if refused else 2 * len(sizes) + 1)
    assert direct_fds == set()  # every direct descriptor was closed
    leftovers = [p for p in (tmp_path / "bank").rglob("*") if filesystem._TMP_MARK in p.name]
    assert leftovers == []


@pytest.mark.swift
def test_swift_segmented_upload_and_delete(swift_service) -> None:
    from tutela.bank.swift import SwiftBank

    container = f"seg{uuid.uuid4().hex[:10]}"
    plugin = SwiftBank(
        **swift_service.swift_options(container=container, segment_size="64K", **FAST_RETRY)
    )
    bank = Bank(plugin)
    try:
        data = os.urandom(300 * 1024)
        assert bank.update_object_stream("big", _split(data, 50_000)) == len(data)
        conn = plugin._conn()
        segments = conn.get_container(plugin.segment_container)[1]
        assert len(segments) == 5  # 4 x 64 KiB + the rest
        assert bank.get_object("big") == data
        assert bank.object_size("big") == len(data)
        # Ranged resume and streaming reads see the same bytes.
        assert b"".join(bank.get_object_stream("big", chunk_size=10_000)) == data
        # A range read across a segment boundary, and one within the last segment.
        read = bank.get_section("").get_object_range
        assert read("big", 60_000, 10_000) == data[60_000:70_000]
        assert read("big", 290_000, 50_000) == data[290_000:]
        # Overwriting drops the old segments; deleting drops the new ones.
        bank.update_object_stream("big", iter([data[:200_000]]))
        assert len(conn.get_container(plugin.segment_container)[1]) == 4
        assert bank.get_object("big") == data[:200_000]
        bank.delete_object("big")
        assert conn.get_container(plugin.segment_container)[1] == []
        with pytest.raises(ObjectNotFound):
            bank.get_object("big")
        # Exactly one segment's worth: a one-segment manifest, still fine.
        bank.update_object("exact", data[: 64 * 1024])
        assert bank.get_object("exact") == data[: 64 * 1024]
    finally:
        plugin.purge()


@pytest.mark.swift
@pytest.mark.s3
def test_s3_multipart_upload(swift_service) -> None:
    from tutela.bank.s3 import S3Bank

    plugin = S3Bank(
        **swift_service.s3_options(
            bucket="tutela-tests", prefix=f"mp{uuid.uuid4().hex[:10]}", part_size="5M"
        )
    )
    bank = Bank(plugin)
    try:
        data = os.urandom(12 * 1024 * 1024 + 12345)
        assert bank.update_object_stream("mp", _split(data, 1 << 20)) == len(data)
        head = plugin._client.head_object(Bucket=plugin.bucket, Key=plugin.objects_prefix + "mp")
        assert head["ETag"].strip('"').endswith("-3")  # three parts
        assert bank.get_object("mp") == data
        assert b"".join(bank.get_object_stream("mp", chunk_size=777_777)) == data
        read = bank.get_section("").get_object_range  # across the first part boundary
        assert read("mp", (5 << 20) - 100, 300) == data[(5 << 20) - 100 : (5 << 20) + 200]
        ups = plugin._client.list_multipart_uploads(Bucket=plugin.bucket, Prefix=plugin.prefix)
        assert not ups.get("Uploads")
        bank.delete_object("mp")
        with pytest.raises(ObjectNotFound):
            bank.get_object("mp")
    finally:
        plugin.purge()


def _split(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- secrets ----------------------------------------------------------------------------------
@pytest.mark.swift
def test_swift_secrets_stay_out(swift_service) -> None:
    from tutela.bank.swift import SwiftBank

    secret = "s3cr3t-" + uuid.uuid4().hex
    with pytest.raises(BankError) as info:
        SwiftBank(**swift_service.swift_options(key=secret, container="nope", **FAST_RETRY))
    assert secret not in str(info.value)
    assert "401" in str(info.value)
    plugin = SwiftBank(**swift_service.swift_options(container=f"d{uuid.uuid4().hex[:8]}"))
    try:
        for text in (plugin.describe(), repr(plugin), repr(Bank(plugin).get_section("x"))):
            assert swift_service.key not in text.replace(swift_service.user, "")
    finally:
        plugin.purge()


@pytest.mark.swift
@pytest.mark.s3
def test_s3_secrets_stay_out(swift_service) -> None:
    from tutela.bank.s3 import S3Bank

    secret = "s3cr3t-" + uuid.uuid4().hex
    with pytest.raises(BankError) as info:
        S3Bank(**swift_service.s3_options(secret_key=secret, bucket="tutela-tests", **FAST_RETRY))
    assert secret not in str(info.value)
    plugin = S3Bank(**swift_service.s3_options(bucket="tutela-tests", prefix="desc"))
    for text in (plugin.describe(), repr(plugin)):
        assert swift_service.s3_secret_key not in text.replace(swift_service.s3_access_key, "")


# -- configuration ----------------------------------------------------------------------------
def _entry_point(name: str):
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="tutela.banks") if ep.name == name]
    return ep.load()


@pytest.mark.swift
def test_swift_bank_from_provider_config(swift_service) -> None:
    from tutela.config import ProviderConfig

    container = f"cfg{uuid.uuid4().hex[:8]}"
    config = ProviderConfig.from_dict(
        {
            "swift_bank": {
                "auth_url": swift_service.auth_url,
                "user": swift_service.user,
                "key": swift_service.key,
                "container": container,
                "segment_size": "2M",
                "lease_expire_window": "60",
                "lease_validity_window": "50",
            }
        },
        path="/etc/tutela/providers.d/t.conf",
    )
    plugin = _entry_point("swift")(config)
    try:
        assert plugin.segment_size == 2 << 20
        assert plugin.container == container
        assert container in plugin.describe()
        Bank(plugin).update_object("a", b"b")
        assert Bank(plugin).get_object("a") == b"b"
    finally:
        plugin.purge()


@pytest.mark.s3
@pytest.mark.swift
def test_s3_bank_from_provider_config(swift_service) -> None:
    from tutela.config import ProviderConfig

    prefix = f"cfg{uuid.uuid4().hex[:8]}"
    config = ProviderConfig.from_dict(
        {
            "s3_bank": {
                "endpoint_url": swift_service.s3_endpoint,
                "access_key": swift_service.s3_access_key,
                "secret_key": swift_service.s3_secret_key,
                "bucket": "tutela-tests",
                "prefix": prefix,
                "part_size": "8M",
            }
        }
    )
    plugin = _entry_point("s3")(config)
    try:
        assert plugin.part_size == 8 << 20
        Bank(plugin).update_object("a", b"b")
        assert Bank(plugin).list_objects() == ["a"]
    finally:
        plugin.purge()


@pytest.mark.parametrize(
    ("module", "section", "values", "key"),
    [
        ("swift", "swift_bank", {"user": "u"}, "auth_url"),
        ("swift", "swift_bank", {"auth_url": "http://x", "segment_size": "big"}, "segment_size"),
        (
            "swift",
            "swift_bank",
            {"auth_url": "http://x", "lease_expire_window": "5", "lease_validity_window": "9"},
            "lease_validity_window",
        ),
        ("swift", "swift_bank", {"auth_url": "http://x", "timeout": "soon"}, "timeout"),
        ("s3", "s3_bank", {"part_size": "1M"}, "part_size"),
        ("s3", "s3_bank", {"conditional_writes": "maybe"}, "conditional_writes"),
    ],
)
def test_config_errors_name_file_and_key(module, section, values, key) -> None:
    from tutela.config import ProviderConfig
    from tutela.errors import ConfigError

    config = ProviderConfig.from_dict({section: values}, path="/etc/tutela/providers.d/p.conf")
    with pytest.raises(ConfigError) as info:
        _entry_point(module)(config)
    assert info.value.path == "/etc/tutela/providers.d/p.conf"
    assert info.value.key == f"{section}.{key}"


@pytest.mark.swift
@pytest.mark.s3
def test_secrets_stay_out_of_debug_logs(swift_service, caplog) -> None:
    """The all-in-one's second TempAuth user (test:tester, key `testing`) has a key that no
    other text contains, so any leak into the DEBUG logs of swiftclient or botocore shows."""
    import logging

    from tutela.bank.s3 import S3Bank
    from tutela.bank.swift import SwiftBank

    caplog.set_level(logging.DEBUG)
    tag = f"log{uuid.uuid4().hex[:8]}"
    swift = SwiftBank(
        auth_url=swift_service.auth_url, user="test:tester", key="testing", container=tag
    )
    s3 = S3Bank(
        **swift_service.s3_options(
            access_key="test:tester", secret_key="testing", bucket=f"{tag}-b", prefix="p"
        )
    )
    try:
        for plugin in (swift, s3):
            bank = Bank(plugin)
            bank.update_object("a", b"x")
            assert bank.get_object("a") == b"x"
            with pytest.raises(ObjectNotFound):
                bank.get_object("missing")
            assert plugin.acquire_lease("l")
        with pytest.raises(BankError):
            SwiftBank(
                auth_url=swift_service.auth_url, user="test:tester", key="testingX", **FAST_RETRY
            )
        assert caplog.records, "expected DEBUG records from the clients"
        assert "testing" not in caplog.text.replace("test:tester", "")
    finally:
        swift.purge()
        s3.purge()
