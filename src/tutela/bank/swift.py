"""A bank in an OpenStack Swift container (python-swiftclient).

Section `[swift_bank]`:
- `auth_url` (required), `user`, `key`: TempAuth / v1 credentials (`auth_version = 1`, default).
- Keystone v3: `auth_version = 3`, `project_name` (or `tenant_name`) or `project_id` (or
  `tenant_id`), `user_domain_name`, `project_domain_name` (both default `Default`) or
  `user_domain_id`, `project_domain_id`, `region_name` (or `region`), `interface` (or
  `endpoint_type`, default `public`); needs python-keystoneclient installed.  `cacert`,
  `insecure` for TLS.
- `container` (default `tutela`), created if missing, with `<container>_segments` (large-object
  segments) and `<container>_leases` beside it.
- `segment_size` (bytes, K/M/G suffixes allowed, default 256M): values larger than this are
  uploaded as a Static Large Object, so Swift's 5 GiB single-object limit is never reached.
  `max_segments` (default 1000, Swift's `max_manifest_segments`) bounds the object size.
- `lease_expire_window` (s, 120), `lease_renew_window` (s, 30), `lease_validity_window` (s, 100),
  `lease_settle_time` (s, 1.0): see `tutela.bank.retry` for the lease algorithm.
- `timeout` (s, 60) per request; `retry_attempts` (5), `retry_initial_wait` (0.5 s),
  `retry_max_wait` (8 s), `retry_deadline` (120 s) for transient failures.
- `spool_dir` (default: the system temp dir), `spool_memory` (default 4M): each segment is
  spooled (memory up to `spool_memory`, then disk) so a failed request can be replayed and the
  data is MD5-checked by Swift; memory stays bounded whatever the object size.

Atomicity: a value is one object PUT (Swift commits it whole or not at all) or segments under a
unique upload id followed by one manifest PUT; a failed write deletes its segments and leaves
the key untouched.  Leases are objects in `<container>_leases` written with `X-Delete-After`,
so a crashed owner's lease disappears by itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from tutela.bank import (
    LEASE_KEYS,
    STREAM_CHUNK,
    BankPlugin,
    ensure_bytes,
    iter_stream,
    make_owner_id,
    validate_key,
)
from tutela.bank.retry import (
    RETRY_KEYS,
    LeasedStore,
    LeaseProtocol,
    LeaseRecord,
    RetryPolicy,
    Transient,
    call_with_retry,
    checked_range,
)
from tutela.config import ProviderConfig
from tutela.errors import BankError, InvalidKeyError, ObjectNotFound, PluginError

SECTION = "swift_bank"
#: Keystone options of the section (name, alias), passed on to swiftclient's `os_options`.
KEYSTONE_OPTIONS = (
    ("project_name", "tenant_name"),
    ("project_id", "tenant_id"),
    ("user_domain_name", None),
    ("project_domain_name", None),
    ("user_domain_id", None),
    ("project_domain_id", None),
    ("region_name", "region"),
    ("interface", "endpoint_type"),
)
#: Every key of `[swift_bank]`; `Options` reads no other, the provider accepts no other.
SWIFT_KEYS = (
    frozenset(
        {
            "auth_url",
            "user",
            "key",
            "auth_version",
            "cacert",
            "insecure",
            "container",
            "segment_size",
            "max_segments",
            "spool_memory",
            "spool_dir",
            "timeout",
            "lease_settle_time",
        }
    )
    | {name for pair in KEYSTONE_OPTIONS for name in pair if name}
    | LEASE_KEYS
    | RETRY_KEYS
)
LOG = logging.getLogger(__name__)
_IO_CHUNK = 1 << 20


def parse_size(value: str | int | None, default: int) -> int:
    """Bytes from `123`, `64K`, `256M`, `5G` (binary units)."""
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    return int(float(number) * scale)


class Options:
    """Reads a bank's options: keyword arguments first, then the config section.  Only the
    `known` keys (what the bank declares in `config_keys`) may be read: the provider refuses
    every other key of the section, so reading one would be a bank bug."""

    def __init__(
        self,
        config: ProviderConfig,
        section: str,
        options: dict[str, Any],
        known: frozenset[str],
    ):
        self.config = config
        self.section = section
        self.options = options
        self.known = known

    def _known(self, name: str) -> None:
        if name not in self.known:
            raise PluginError(f"the bank reads [{self.section}] {name}, which it does not declare")

    def get(self, name: str, default: str | None = None) -> str | None:
        self._known(name)
        if self.options.get(name) is not None:
            return str(self.options[name])
        return self.config.get(self.section, name, default)

    def float(self, name: str, default: float) -> float:
        self._known(name)
        if self.options.get(name) is not None:
            return float(self.options[name])
        return float(self.config.get_float(self.section, name, default))

    def int(self, name: str, default: int) -> int:
        self._known(name)
        if self.options.get(name) is not None:
            return int(self.options[name])
        return int(self.config.get_int(self.section, name, default))

    def bool(self, name: str, default: bool) -> bool:
        self._known(name)
        if self.options.get(name) is not None:
            return bool(self.options[name])
        return self.config.get_bool(self.section, name, default)

    def size(self, name: str, default: int) -> int:
        raw = self.get(name)
        try:
            return parse_size(raw, default)
        except ValueError:
            raise self.config.error(
                f"must be a size in bytes (K/M/G allowed), not {raw!r}", f"{self.section}.{name}"
            ) from None

    def lease_windows(self) -> tuple[float, float, float]:
        expire = self.float("lease_expire_window", 120)
        renew = self.float("lease_renew_window", 30)
        validity = self.float("lease_validity_window", 100)
        if validity >= expire:
            raise self.config.error(
                "lease_validity_window must be shorter than lease_expire_window",
                f"{self.section}.lease_validity_window",
            )
        return expire, renew, validity


class Spool:
    """Up to `limit` bytes of a stream, kept (memory, then disk) so a request can be replayed."""

    def __init__(self, blocks: BlockReader, limit: int, memory: int, directory: str | None):
        self.file = tempfile.SpooledTemporaryFile(max_size=memory, dir=directory)  # noqa: SIM115
        md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        while self.size < limit:
            block = blocks.take(min(limit - self.size, STREAM_CHUNK))
            if not block:
                break
            md5.update(block)
            self.file.write(block)
            self.size += len(block)
        self.etag = md5.hexdigest()
        self.at_end = blocks.at_end()
        self.file.seek(0)

    @classmethod
    def of(cls, data: bytes) -> Spool:
        """A value already in memory, kept there (a BytesIO shares the bytes, no copy)."""
        spool = cls.__new__(cls)
        spool.file = io.BytesIO(data)
        spool.size = len(data)
        spool.etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        spool.at_end = True
        return spool

    def rewind(self) -> None:
        self.file.seek(0)

    def close(self) -> None:
        self.file.close()


class BlockReader:
    """Hands out a byte stream in pieces of at most n bytes, splitting blocks as needed."""

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks = blocks
        self.pending = b""

    def take(self, n: int) -> bytes:
        if not self.pending:
            self.pending = next(self.blocks, b"")
        piece, self.pending = self.pending[:n], self.pending[n:]
        return piece

    def at_end(self) -> bool:
        if not self.pending:
            self.pending = next(self.blocks, b"")
        return not self.pending


def is_broken_read(exc: BaseException) -> bool:
    """Did a response body break off (worth resuming with a ranged GET)?"""
    import http.client

    from requests.exceptions import RequestException
    from urllib3.exceptions import HTTPError as Urllib3Error

    return isinstance(exc, OSError | http.client.HTTPException | Urllib3Error | RequestException)


class SwiftBank(LeasedStore, BankPlugin):
    config_section = SECTION
    config_keys = {SECTION: SWIFT_KEYS}

    def __init__(self, config: ProviderConfig | None = None, **options: Any):
        self.check_options(options)
        config = config or ProviderConfig.from_dict({})
        opt = Options(config, SECTION, options, SWIFT_KEYS)
        self.auth_url = opt.get("auth_url") or config.require(SECTION, "auth_url")
        self.user = opt.get("user")
        self._key = opt.get("key")
        self.auth_version = opt.get("auth_version", "1") or "1"
        self.container = opt.get("container", "tutela") or "tutela"
        self.segment_container = f"{self.container}_segments"
        self.lease_container = f"{self.container}_leases"
        self.segment_size = opt.size("segment_size", 256 << 20)
        if self.segment_size < 1:
            raise config.error("must be at least 1 byte", f"{SECTION}.segment_size")
        self.max_segments = opt.int("max_segments", 1000)
        self.spool_memory = opt.size("spool_memory", 4 << 20)
        self.spool_dir = opt.get("spool_dir")
        self.timeout = opt.float("timeout", 60)
        self.expire_window, self.renew_window, self.validity_window = opt.lease_windows()
        self.retry = RetryPolicy.from_config(config, SECTION, options)
        os_options: dict[str, str] = {}
        for name, alias in KEYSTONE_OPTIONS:
            value = opt.get(name) or (opt.get(alias) if alias else None)
            if value:
                os_options[name] = value
        if not self.auth_version.startswith("1"):
            try:
                import keystoneauth1  # noqa: F401
                import keystoneclient  # noqa: F401
            except ImportError:
                raise config.error(
                    f"Keystone auth (auth_version = {self.auth_version}) needs "
                    "python-keystoneclient and keystoneauth1 installed",
                    f"{SECTION}.auth_version",
                ) from None
        if self.auth_version.startswith("3"):
            os_options.setdefault("user_domain_name", "Default")
            os_options.setdefault("project_domain_name", "Default")
        if "project_name" in os_options:
            os_options["tenant_name"] = os_options["project_name"]
        if "interface" in os_options:
            os_options["endpoint_type"] = os_options["interface"]
        self._conn_args = {
            "authurl": self.auth_url,
            "user": self.user,
            "key": self._key,
            "auth_version": self.auth_version,
            "os_options": os_options,
            "tenant_name": os_options.get("project_name"),
            "cacert": opt.get("cacert"),
            "insecure": opt.bool("insecure", False),
            "timeout": self.timeout,
            "retries": 0,  # ours (tenacity) replace swiftclient's; it still re-auths on 401
            "starting_backoff": 0.1,
        }
        self.region = os_options.get("region_name")
        self._local = threading.local()
        self._shared_auth: tuple[str | None, str | None] = (None, None)
        self._owner_id = make_owner_id()
        self.leases = LeaseProtocol(
            self,
            self._owner_id,
            self.expire_window,
            self.validity_window,
            opt.float("lease_settle_time", 1.0),
        )
        for name in (self.container, self.segment_container, self.lease_container):
            self._call(
                "create",
                name,
                lambda c, n=name: c.put_container(n),
                what=f"swift bank: creating container {name!r} via {self.auth_url}",
            )

    def __repr__(self) -> str:
        return f"<SwiftBank {self.describe()}>"

    def describe(self) -> str:
        who = f" as {self.user}" if self.user else ""
        return f"swift bank: container {self.container!r} via {self.auth_url}{who}"

    # -- plumbing --------------------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._new_conn()
            self._local.conn = conn
        return conn

    def _new_conn(self):
        """A swiftclient connection sharing the bank's token.  One per thread (they are not
        thread-safe) plus one per open download: a swiftclient connection reads a streamed
        body from its *latest* response, so a second request on it would corrupt the first."""
        import swiftclient

        url, token = self._shared_auth  # on a 401, swiftclient authenticates again
        return swiftclient.Connection(**self._conn_args, preauthurl=url, preauthtoken=token)

    def _run(self, fn, conn=None):
        conn = conn or self._conn()
        result = fn(conn)
        if conn.token and conn.url and conn.token != self._shared_auth[1]:
            self._shared_auth = (conn.url, conn.token)
        return result

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            conn.http_conn = None

    def close(self) -> None:
        self._drop_conn()
        self._local = threading.local()

    @staticmethod
    def _classify(exc: BaseException) -> Transient | BaseException | None:
        from requests.exceptions import RequestException
        from swiftclient.exceptions import ClientException

        if isinstance(exc, ClientException):
            status = exc.http_status
            if status is None:
                # Keystone's answer to bad credentials (or a missing endpoint) comes without an
                # HTTP status: permanent, not worth retrying.
                if exc.msg.startswith("Unauthorized") or exc.msg.startswith("Endpoint for"):
                    return None
                return Transient(f"request failed ({exc.msg.split(':')[0]})", exc)
            if status >= 500 or status in (408, 429, 498, 499):
                return Transient(f"HTTP {status} {exc.http_reason or ''}".strip(), exc)
            return None
        if isinstance(exc, RequestException | OSError):
            text = str(exc).lower()
            why = (
                "connection refused"
                if "refused" in text
                else "timed out"
                if "timed out" in text or "timeout" in text
                else "connection failed"
            )
            return Transient(f"{why} ({type(exc).__name__})", exc)
        return None

    def _call(self, op: str, key: str, fn, reset=None, what: str | None = None, conn=None):
        """Run `fn(connection)` with retries; 404 and 412 propagate as ClientException."""

        def before_retry() -> None:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                conn.http_conn = None
            else:
                self._drop_conn()
            if reset is not None:
                reset()

        from swiftclient.exceptions import ClientException

        what = what or f"swift bank: {op} of {key!r} in container {self.container!r}"
        try:
            return call_with_retry(
                self.retry, what, lambda: self._run(fn, conn), self._classify, before_retry
            )
        except ClientException as exc:
            if exc.http_status in (404, 412):
                raise  # the caller's business
            if exc.http_status is None:
                first = exc.msg.split(".")[0].split(":")[0]
                hint = (
                    "authentication failed (check user, key, project and domains)"
                    if first.startswith("Unauthorized")
                    else first
                )
                raise BankError(f"{what} failed: {hint}") from None
            reason = "authentication failed" if exc.http_status == 401 else exc.http_reason
            raise BankError(
                f"{what} failed: HTTP {exc.http_status} {reason or ''}".strip()
            ) from None

    @staticmethod
    def _is_404(exc: BaseException) -> bool:
        return getattr(exc, "http_status", None) == 404

    def _check(self, key: str) -> str:
        validate_key(key)
        if key.endswith("/"):
            raise InvalidKeyError(f"bank key must not end with '/': {key!r}")
        return key

    # -- objects ---------------------------------------------------------------------------
    def update_object(self, key: str, value: bytes | str) -> None:
        data = ensure_bytes(value)
        if len(data) > self.segment_size:
            self.update_object_stream(key, [data])
        else:  # already in memory: sent (and replayed) from there, never spooled to disk
            self._check(key)
            self._put_whole(key, Spool.of(data))

    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        self._check(key)
        blocks = BlockReader(iter_stream(stream))
        first = Spool(blocks, self.segment_size, self.spool_memory, self.spool_dir)
        if first.at_end:
            return self._put_whole(key, first)
        old_segments = self._manifest_segments(key, op="put")
        total = self._put_segmented(key, first, blocks)
        self._delete_segments(old_segments, key)
        return total

    def _put_whole(self, key: str, spool: Spool) -> int:
        old_segments = self._manifest_segments(key, op="put")
        try:
            self._put_spool(self.container, key, spool, "put")
        finally:
            spool.close()
        self._delete_segments(old_segments, key)
        return spool.size

    def _put_spool(self, container: str, name: str, spool: Spool, op: str, key: str = "") -> None:
        self._call(
            op,
            key or name,
            lambda c: c.put_object(
                container,
                name,
                contents=spool.file,
                content_length=spool.size,
                etag=spool.etag,
                chunk_size=_IO_CHUNK,
            ),
            reset=spool.rewind,
        )

    def _put_segmented(self, key: str, first: Spool, blocks: BlockReader) -> int:
        upload = f"{hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]}/"
        upload += uuid.uuid4().hex
        manifest: list[dict[str, Any]] = []
        spool: Spool | None = first
        total = 0
        try:
            while spool is not None and spool.size:
                if len(manifest) >= self.max_segments:
                    raise BankError(
                        f"swift bank: put of {key!r}: more than {self.max_segments} segments of "
                        f"{self.segment_size} bytes; raise segment_size"
                    )
                name = f"{upload}/{len(manifest):08d}"
                try:
                    self._put_spool(self.segment_container, name, spool, "segment put", key)
                finally:
                    spool.close()
                manifest.append(
                    {
                        "path": f"/{self.segment_container}/{name}",
                        "etag": spool.etag,
                        "size_bytes": spool.size,
                    }
                )
                total += spool.size
                done = spool.at_end
                spool = None
                if not done:
                    spool = Spool(blocks, self.segment_size, self.spool_memory, self.spool_dir)
            body = json.dumps(manifest).encode()
            self._call(
                "manifest put",
                key,
                lambda c: c.put_object(
                    self.container, key, contents=body, query_string="multipart-manifest=put"
                ),
            )
        except BaseException:
            if spool is not None:
                spool.close()
            self._delete_segments([m["path"] for m in manifest], key, quick=True)
            raise
        return total

    def _manifest_segments(self, key: str, op: str = "head") -> list[str]:
        """The segment paths of the SLO manifest at `key` ([] if none or not a manifest)."""
        from swiftclient.exceptions import ClientException

        try:
            headers = self._call(op, key, lambda c: c.head_object(self.container, key))
        except ClientException as exc:
            if self._is_404(exc):
                return []
            raise BankError(f"swift bank: head of {key!r} failed: HTTP {exc.http_status}") from None
        if str(headers.get("x-static-large-object", "")).lower() != "true":
            return []
        try:
            _, body = self._call(
                op,
                key,
                lambda c: c.get_object(
                    self.container, key, query_string="multipart-manifest=get&format=raw"
                ),
            )
        except ClientException as exc:
            if self._is_404(exc):
                return []
            raise BankError(
                f"swift bank: manifest get of {key!r} failed: HTTP {exc.http_status}"
            ) from None
        return [seg["path"] for seg in json.loads(body)]

    def _delete_segments(self, paths: list[str], key: str, quick: bool = False) -> None:
        """Best effort: a segment left behind wastes space but is never visible as a key."""
        for path in paths:
            container, _, name = path.lstrip("/").partition("/")
            try:
                if quick:  # cleaning up after a failure: one try, the store may be down
                    self._conn().delete_object(container, name)
                else:
                    self._call(
                        "segment delete",
                        key,
                        lambda c, ct=container, n=name: c.delete_object(ct, n),
                    )
            except Exception as exc:
                if not self._is_404(exc):
                    LOG.warning(
                        "swift bank: could not delete segment %s of %r (%s); it is orphaned",
                        path,
                        key,
                        type(exc).__name__,
                    )
                    if quick:
                        self._drop_conn()

    def get_object(self, key: str) -> bytes:
        from swiftclient.exceptions import ClientException

        self._check(key)
        try:
            _, body = self._call("get", key, lambda c: c.get_object(self.container, key))
        except ClientException as exc:
            if self._is_404(exc):
                raise ObjectNotFound(f"no object {key!r} in bank") from None
            raise BankError(f"swift bank: get of {key!r} failed: HTTP {exc.http_status}") from None
        return body

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        from swiftclient.exceptions import ClientException

        self._check(key)
        conn = self._new_conn()

        def open_at(offset: int, etag: str | None):
            headers = {}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            if etag:
                headers["If-Match"] = etag
            return self._call(
                "get",
                key,
                lambda c: c.get_object(
                    self.container, key, resp_chunk_size=chunk_size, headers=headers
                ),
                conn=conn,
            )

        try:
            headers, body = open_at(0, None)
        except ClientException as exc:
            conn.close()
            if self._is_404(exc):
                raise ObjectNotFound(f"no object {key!r} in bank") from None
            raise BankError(f"swift bank: get of {key!r} failed: HTTP {exc.http_status}") from None
        etag = headers.get("etag")
        size = int(headers.get("content-length", -1))

        def blocks() -> Iterator[bytes]:
            try:
                yield from read_all()
            finally:
                conn.close()

        def read_all() -> Iterator[bytes]:
            nonlocal body
            offset = 0
            resumes = 0
            failed_at = -1
            while True:
                try:
                    for block in body:
                        offset += len(block)
                        yield block
                    if size >= 0 and offset != size:
                        raise OSError("short read")
                    return
                except Exception as exc:
                    # Count breaks without progress in between; progress starts afresh.
                    resumes = resumes + 1 if offset == failed_at else 1
                    failed_at = offset
                    if resumes >= self.retry.attempts or not is_broken_read(exc):
                        raise BankError(
                            f"swift bank: get of {key!r} broke off after {offset} bytes"
                        ) from None
                    with contextlib.suppress(Exception):
                        body.close()
                    conn.close()
                    conn.http_conn = None
                    try:
                        _, body = open_at(offset, etag)
                    except ClientException as exc2:
                        raise BankError(
                            f"swift bank: get of {key!r} could not resume at {offset}: "
                            f"HTTP {exc2.http_status}"
                        ) from None

        return blocks()

    def get_object_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the object): one ranged GET, so a
        lone chunk of an old pack costs its own bytes, not the pack up to it."""
        from swiftclient.exceptions import ClientException

        self._check(key)
        if length <= 0 or offset < 0:
            self.object_size(key)  # the same ObjectNotFound as a real read
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}

        def fetch(c) -> bytes:
            try:
                answer, body = c.get_object(self.container, key, headers=headers)
            except ClientException as exc:
                if exc.http_status == 416:  # starts at or past the end: nothing there
                    return b""
                raise
            expected = int(answer.get("content-length", len(body)))
            return checked_range(body, expected, length, f"swift bank: ranged get of {key!r}")

        try:
            return self._call("get range", key, fetch)
        except ClientException as exc:
            if self._is_404(exc):
                raise ObjectNotFound(f"no object {key!r} in bank") from None
            raise BankError(
                f"swift bank: ranged get of {key!r} failed: HTTP {exc.http_status}"
            ) from None

    def object_size(self, key: str) -> int:
        from swiftclient.exceptions import ClientException

        self._check(key)
        try:
            headers = self._call("head", key, lambda c: c.head_object(self.container, key))
        except ClientException as exc:
            if self._is_404(exc):
                raise ObjectNotFound(f"no object {key!r} in bank") from None
            raise BankError(f"swift bank: head of {key!r} failed: HTTP {exc.http_status}") from None
        return int(headers["content-length"])

    def delete_object(self, key: str) -> None:
        from swiftclient.exceptions import ClientException

        self._check(key)
        segments = self._manifest_segments(key, op="delete")
        try:
            # Without multipart-manifest=delete this removes only the manifest: the key is gone
            # at once, then the segments follow.
            self._call("delete", key, lambda c: c.delete_object(self.container, key))
        except ClientException as exc:
            if not self._is_404(exc):
                raise BankError(
                    f"swift bank: delete of {key!r} failed: HTTP {exc.http_status}"
                ) from None
        self._delete_segments(segments, key)

    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]:
        """Swift lists in order, 10000 at most per request; `reverse=on` gives descending
        order with the marker as the upper bound, which is exactly the contract."""
        from swiftclient.exceptions import ClientException

        if prefix:
            validate_key(prefix)
        query = "reverse=on" if sort_dir == "desc" else None
        keys: list[str] = []
        page_marker = marker
        while limit is None or len(keys) < limit:
            want = 10000 if limit is None else min(10000, limit - len(keys))
            try:
                _, listing = self._call(
                    "list",
                    prefix or "",
                    lambda c, m=page_marker, w=want: c.get_container(
                        self.container, prefix=prefix, marker=m, limit=w, query_string=query
                    ),
                )
            except ClientException as exc:
                raise BankError(
                    f"swift bank: list of {prefix or ''!r} failed: HTTP {exc.http_status}"
                ) from None
            names = [item["name"] for item in listing if "name" in item]
            keys.extend(names)
            if len(names) < want:
                break
            page_marker = names[-1]
        return keys

    # -- leases ----------------------------------------------------------------------------
    def lease_read(self, name: str) -> LeaseRecord | None:
        from swiftclient.exceptions import ClientException

        try:
            _, body = self._call(
                "lease read", name, lambda c: c.get_object(self.lease_container, name)
            )
        except ClientException as exc:
            if self._is_404(exc):
                return None
            raise BankError(
                f"swift bank: lease read of {name!r} failed: HTTP {exc.http_status}"
            ) from None
        return LeaseRecord.loads(body)

    def lease_write(self, name: str, record: LeaseRecord, create_only: bool) -> bool:
        from swiftclient.exceptions import ClientException

        # X-Delete-At has whole seconds: keep the object a little past the record's expiry.
        headers = {"X-Delete-After": str(math.ceil(self.expire_window) + 1)}
        if create_only:
            headers["If-None-Match"] = "*"
        body = record.dumps()
        try:
            self._call(
                "lease write",
                name,
                lambda c: c.put_object(self.lease_container, name, contents=body, headers=headers),
            )
        except ClientException as exc:
            if exc.http_status == 412:
                return False
            raise BankError(
                f"swift bank: lease write of {name!r} failed: HTTP {exc.http_status}"
            ) from None
        return True

    def lease_delete(self, name: str) -> None:
        from swiftclient.exceptions import ClientException

        try:
            self._call("lease delete", name, lambda c: c.delete_object(self.lease_container, name))
        except ClientException as exc:
            if not self._is_404(exc):
                raise BankError(
                    f"swift bank: lease delete of {name!r} failed: HTTP {exc.http_status}"
                ) from None

    def purge(self, drop_containers: bool = True) -> int:
        """Delete every object, segment and lease of this bank, then (by default) its three
        containers (tests, decommissioning); returns how many objects went."""
        from swiftclient.exceptions import ClientException

        count = 0
        for container in (self.container, self.segment_container, self.lease_container):
            marker = None
            while True:  # one pass by marker: expired objects linger in listings
                try:
                    _, listing = self._call(
                        "purge list",
                        container,
                        lambda c, ct=container, m=marker: c.get_container(ct, marker=m),
                    )
                except ClientException:
                    break
                if not listing:
                    break
                for item in listing:
                    with contextlib.suppress(ClientException):
                        self._call(
                            "purge delete",
                            item["name"],
                            lambda c, ct=container, n=item["name"]: c.delete_object(ct, n),
                        )
                    count += 1
                marker = listing[-1]["name"]
            if drop_containers:
                with contextlib.suppress(ClientException, BankError):
                    self._call("purge", container, lambda c, ct=container: c.delete_container(ct))
        return count
