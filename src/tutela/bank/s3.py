"""A bank in an S3 bucket (boto3): AWS, or any S3 API such as Swift's s3api, MinIO, Ceph RGW.

Section `[s3_bank]`:
- `bucket` (default `tutela`), created if missing; `prefix` (default empty): objects live under
  `<prefix>objects/`, leases under `<prefix>leases/`.
- `endpoint_url` (default: AWS), `region` (default `us-east-1`), `addressing_style` (`path`
  when an endpoint is given, else `auto`).
- `access_key`, `secret_key` (and optional `session_token`); when absent, boto3's standard
  credential chain (environment, shared files, instance roles) is used.
- `part_size` (bytes, K/M/G allowed, default 64M, at least 5M as S3 demands): larger values go
  up as a multipart upload, one part spooled at a time (memory up to `spool_memory`, default
  4M, then `spool_dir`), so memory stays bounded and a failed part can be resent.
- `lease_expire_window` (120 s), `lease_renew_window` (30 s), `lease_validity_window` (100 s),
  `lease_settle_time` (1.0 s); `conditional_writes` (`auto`, `true`, `false`).
- `timeout` (60 s), `retry_attempts` (5), `retry_initial_wait` (0.5 s), `retry_max_wait` (8 s),
  `retry_deadline` (120 s).

Atomicity: S3 makes a PUT or a completed multipart upload visible whole; a failed multipart
upload is aborted, so nothing appears under the key.

Leases are small JSON objects (owner, nonce, expiry).  S3 has no per-object expiry, so expiry is
checked on read.  The algorithm is `tutela.bank.retry.LeaseProtocol`: read; give up if another
owner's record is live; write ours (with `If-None-Match: *` when there was no record and the
endpoint supports conditional writes; Swift's s3api answers NotImplemented, then we stop asking);
then, unless we renewed our own live record, wait `lease_settle_time` and read back: we won only
if the stored record carries our nonce.  With S3's read-after-write consistency two racing owners
read back the same surviving record, so at most one wins; an owner whose write took longer than
the settle time counts itself as the loser.

Swift's s3api (2.30) wants `Content-MD5` on DeleteObjects, which boto3 >= 1.36 no longer sends:
a `before-call.s3.DeleteObjects` handler adds it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import logging
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
from tutela.bank.swift import BlockReader, Options, Spool, is_broken_read
from tutela.config import ProviderConfig
from tutela.errors import BankError, InvalidKeyError, ObjectNotFound

SECTION = "s3_bank"
#: Every key of `[s3_bank]`; `Options` reads no other, the provider accepts no other.
S3_KEYS = (
    frozenset(
        {
            "bucket",
            "prefix",
            "endpoint_url",
            "region",
            "addressing_style",
            "access_key",
            "secret_key",
            "session_token",
            "part_size",
            "spool_memory",
            "spool_dir",
            "timeout",
            "conditional_writes",
            "lease_settle_time",
        }
    )
    | LEASE_KEYS
    | RETRY_KEYS
)
LOG = logging.getLogger(__name__)
MIN_PART = 5 << 20
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
}


def _add_content_md5(params: dict[str, Any], **_: Any) -> None:
    """Swift's s3api requires Content-MD5 on DeleteObjects; modern botocore omits it."""
    body = params.get("body")
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode()


def _md5_b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


class S3Bank(LeasedStore, BankPlugin):
    config_section = SECTION
    config_keys = {SECTION: S3_KEYS}

    def __init__(self, config: ProviderConfig | None = None, **options: Any):
        self.check_options(options)
        import boto3
        from botocore.config import Config

        config = config or ProviderConfig.from_dict({})
        opt = Options(config, SECTION, options, S3_KEYS)
        self.bucket = opt.get("bucket", "tutela") or "tutela"
        prefix = (opt.get("prefix", "") or "").strip("/")
        if prefix:
            validate_key(prefix)
            prefix += "/"
        self.prefix = prefix
        self.objects_prefix = prefix + "objects/"
        self.leases_prefix = prefix + "leases/"
        self.endpoint_url = opt.get("endpoint_url") or None
        self.region = opt.get("region", "us-east-1") or "us-east-1"
        self.part_size = opt.size("part_size", 64 << 20)
        if self.part_size < MIN_PART:
            raise config.error(
                "must be at least 5M (the S3 minimum part size)", f"{SECTION}.part_size"
            )
        self.spool_memory = opt.size("spool_memory", 4 << 20)
        self.spool_dir = opt.get("spool_dir")
        self.timeout = opt.float("timeout", 60)
        self.expire_window, self.renew_window, self.validity_window = opt.lease_windows()
        self.retry = RetryPolicy.from_config(config, SECTION, options)
        mode = (opt.get("conditional_writes", "auto") or "auto").lower()
        if mode not in ("auto", "true", "false"):
            raise config.error("must be auto, true or false", f"{SECTION}.conditional_writes")
        self._conditional = mode != "false"
        self._conditional_required = mode == "true"
        style = opt.get("addressing_style") or ("path" if self.endpoint_url else "auto")
        access_key = opt.get("access_key")
        session = boto3.session.Session(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=opt.get("secret_key") or None,
            aws_session_token=opt.get("session_token") or None,
            region_name=self.region,
        )
        self._uses_chain = not access_key
        self._client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                s3={"addressing_style": style},
                retries={"max_attempts": 1, "mode": "standard"},  # ours replace botocore's
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._client.meta.events.register("before-call.s3.DeleteObjects", _add_content_md5)
        self._owner_id = make_owner_id()
        self.leases = LeaseProtocol(
            self,
            self._owner_id,
            self.expire_window,
            self.validity_window,
            opt.float("lease_settle_time", 1.0),
        )
        self._ensure_bucket()

    def __repr__(self) -> str:
        return f"<S3Bank {self.describe()}>"

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3 bank: bucket {self.bucket!r} prefix {self.prefix!r} at {where} ({self.region})"

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def _status(exc: BaseException) -> tuple[int | None, str]:
        response = getattr(exc, "response", None) or {}
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, str(error.get("Code", ""))

    @classmethod
    def _classify(cls, exc: BaseException) -> Transient | BaseException | None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
        )

        if isinstance(exc, ClientError):
            status, code = cls._status(exc)
            if code == "NotImplemented" or status == 501:
                return None
            if (status or 0) >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
                return Transient(f"HTTP {status} {code}".strip(), exc)
            return None
        if isinstance(exc, ConnectionError | HTTPClientError):
            text = str(exc).lower()
            why = "connection refused" if "refused" in text else "connection failed"
            if "timeout" in text or "timed out" in text:
                why = "timed out"
            return Transient(f"{why} ({type(exc).__name__})", exc)
        if isinstance(exc, NoCredentialsError):
            return BankError("s3 bank: no credentials (set access_key/secret_key or AWS_* vars)")
        if isinstance(exc, BotoCoreError):
            return BankError(f"s3 bank: {type(exc).__name__}")
        return None

    def _call(self, op: str, key: str, fn, reset=None, passthrough: tuple[str, ...] = ()):
        """Run `fn(client)` with retries; errors whose code is in `passthrough` propagate."""
        from botocore.exceptions import ClientError

        what = f"s3 bank: {op} of {key!r} in bucket {self.bucket!r}"
        try:
            return call_with_retry(
                self.retry, what, lambda: fn(self._client), self._classify, reset
            )
        except ClientError as exc:
            status, code = self._status(exc)
            if code in passthrough or str(status) in passthrough:
                raise
            raise BankError(f"{what} failed: HTTP {status} {code}".strip()) from None

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call(
                "head bucket",
                self.bucket,
                lambda c: c.head_bucket(Bucket=self.bucket),
                passthrough=("404", "NoSuchBucket"),
            )
            return
        except ClientError:
            pass
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with contextlib.suppress(ClientError):
            self._call(
                "create bucket",
                self.bucket,
                lambda c: c.create_bucket(**args),
                passthrough=("BucketAlreadyOwnedByYou",),
            )

    def _full(self, key: str) -> str:
        validate_key(key)
        if key.endswith("/"):
            raise InvalidKeyError(f"bank key must not end with '/': {key!r}")
        return self.objects_prefix + key

    # -- objects ---------------------------------------------------------------------------
    def update_object(self, key: str, value: bytes | str) -> None:
        data = ensure_bytes(value)
        if len(data) > self.part_size:
            self.update_object_stream(key, [data])
        else:  # already in memory: sent (and replayed) from there, never spooled to disk
            self._put_whole(key, self._full(key), Spool.of(data))

    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        full = self._full(key)
        blocks = BlockReader(iter_stream(stream))
        first = Spool(blocks, self.part_size, self.spool_memory, self.spool_dir)
        if first.at_end:
            return self._put_whole(key, full, first)
        return self._put_multipart(key, full, first, blocks)

    def _put_whole(self, key: str, full: str, spool: Spool) -> int:
        try:
            self._call(
                "put",
                key,
                lambda c: c.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=spool.file,
                    ContentLength=spool.size,
                    ContentMD5=_md5_b64(spool.etag),
                ),
                reset=spool.rewind,
            )
        finally:
            spool.close()
        return spool.size

    def _put_multipart(self, key: str, full: str, first: Spool, blocks: BlockReader) -> int:
        upload = self._call(
            "multipart start",
            key,
            lambda c: c.create_multipart_upload(Bucket=self.bucket, Key=full),
        )["UploadId"]
        parts: list[dict[str, Any]] = []
        spool: Spool | None = first
        total = 0
        try:
            while spool is not None and spool.size:
                number = len(parts) + 1
                if number > 10000:
                    raise BankError(
                        f"s3 bank: put of {key!r}: more than 10000 parts of {self.part_size} "
                        "bytes; raise part_size"
                    )
                try:
                    part = spool  # bind for the lambda
                    answer = self._call(
                        f"part {number} put",
                        key,
                        lambda c, p=part, n=number: c.upload_part(
                            Bucket=self.bucket,
                            Key=full,
                            UploadId=upload,
                            PartNumber=n,
                            Body=p.file,
                            ContentLength=p.size,
                            ContentMD5=_md5_b64(p.etag),
                        ),
                        reset=part.rewind,
                    )
                finally:
                    spool.close()
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                total += spool.size
                done = spool.at_end
                spool = None
                if not done:
                    spool = Spool(blocks, self.part_size, self.spool_memory, self.spool_dir)
            self._call(
                "multipart complete",
                key,
                lambda c: c.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            if spool is not None:
                spool.close()
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload)
            except Exception as exc:
                LOG.warning(
                    "s3 bank: could not abort the multipart upload of %r (%s); its parts stay "
                    "until a bucket lifecycle rule removes them",
                    key,
                    type(exc).__name__,
                )
            raise
        return total

    def get_object(self, key: str) -> bytes:
        return b"".join(self.get_object_stream(key))

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        full = self._full(key)

        def open_at(offset: int, etag: str | None):
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
            if offset:
                args["Range"] = f"bytes={offset}-"
            if etag:
                args["IfMatch"] = etag
            return self._call(
                "get", key, lambda c: c.get_object(**args), passthrough=("404", "NoSuchKey")
            )

        try:
            answer = open_at(0, None)
        except ClientError:
            raise ObjectNotFound(f"no object {key!r} in bank") from None
        etag = answer.get("ETag")
        size = int(answer.get("ContentLength", -1))

        def blocks() -> Iterator[bytes]:
            body = answer["Body"]
            offset = 0
            resumes = 0
            failed_at = -1
            while True:
                try:
                    for block in body.iter_chunks(chunk_size):
                        offset += len(block)
                        yield block
                    if size >= 0 and offset != size:
                        raise OSError("short read")
                    return
                except Exception as exc:
                    # Count breaks without progress in between; progress starts afresh.
                    resumes = resumes + 1 if offset == failed_at else 1
                    failed_at = offset
                    if resumes >= self.retry.attempts or not (
                        is_broken_read(exc) or self._classify(exc) is not None
                    ):
                        raise BankError(
                            f"s3 bank: get of {key!r} broke off after {offset} bytes"
                        ) from None
                    with contextlib.suppress(Exception):
                        body.close()
                    try:
                        body = open_at(offset, etag)["Body"]
                    except ClientError:
                        raise BankError(
                            f"s3 bank: get of {key!r} could not resume at {offset}"
                        ) from None

        return blocks()

    def get_object_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the object): one ranged GET, so a
        lone chunk of an old pack costs its own bytes, not the pack up to it."""
        from botocore.exceptions import ClientError

        full = self._full(key)
        if length <= 0 or offset < 0:
            self.object_size(key)  # the same ObjectNotFound as a real read
            return b""
        wanted = f"bytes={offset}-{offset + length - 1}"

        def fetch(c) -> bytes:
            try:
                answer = c.get_object(Bucket=self.bucket, Key=full, Range=wanted)
            except ClientError as exc:
                status, code = self._status(exc)
                if status == 416 or code == "InvalidRange":  # at or past the end: nothing
                    return b""
                raise
            body = answer["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            expected = int(answer.get("ContentLength", len(data)))
            return checked_range(data, expected, length, f"s3 bank: ranged get of {key!r}")

        try:
            return self._call("get range", key, fetch, passthrough=("404", "NoSuchKey"))
        except ClientError:
            raise ObjectNotFound(f"no object {key!r} in bank") from None

    def object_size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        full = self._full(key)
        try:
            answer = self._call(
                "head",
                key,
                lambda c: c.head_object(Bucket=self.bucket, Key=full),
                passthrough=("404", "NoSuchKey"),
            )
        except ClientError:
            raise ObjectNotFound(f"no object {key!r} in bank") from None
        return int(answer["ContentLength"])

    def delete_object(self, key: str) -> None:
        from botocore.exceptions import ClientError

        full = self._full(key)
        with contextlib.suppress(ClientError):
            self._call(
                "delete",
                key,
                lambda c: c.delete_object(Bucket=self.bucket, Key=full),
                passthrough=("404", "NoSuchKey"),
            )

    def _iter_keys(self, full_prefix: str, start_after: str | None, page: int) -> Iterator[str]:
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix, "MaxKeys": page}
            if token:
                args["ContinuationToken"] = token
            elif start_after:
                args["StartAfter"] = start_after
            answer = self._call("list", full_prefix, lambda c, a=args: c.list_objects_v2(**a))
            for item in answer.get("Contents", []):
                yield item["Key"]
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return

    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]:
        """S3 only lists ascending: descending order walks the keys below the marker keeping
        the last `limit` of them (O(keys) requests, O(limit) memory)."""
        if prefix:
            validate_key(prefix)
        full_prefix = self.objects_prefix + (prefix or "")
        n = len(self.objects_prefix)
        if sort_dir != "desc":
            page = min(1000, limit) if limit else 1000
            start = self.objects_prefix + marker if marker is not None else None
            keys: list[str] = []
            for full in self._iter_keys(full_prefix, start, page):
                if limit is not None and len(keys) >= limit:
                    break
                keys.append(full[n:])
            return keys
        tail: collections.deque[str] = collections.deque(maxlen=limit)
        if limit == 0:
            return []
        for full in self._iter_keys(full_prefix, None, 1000):
            key = full[n:]
            if marker is not None and key >= marker:
                break
            tail.append(key)
        return list(reversed(tail))

    def purge(self) -> int:
        """Delete every object and lease under this bank's prefix (tests, decommissioning),
        in batches of 1000 with DeleteObjects; returns how many."""
        count = 0
        batch: list[dict[str, str]] = []

        def flush() -> None:
            nonlocal count
            if not batch:
                return
            answer = self._call(
                "bulk delete",
                self.prefix,
                lambda c: c.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": list(batch), "Quiet": True}
                ),
            )
            if answer.get("Errors"):
                raise BankError(f"s3 bank: bulk delete under {self.prefix!r} left objects behind")
            count += len(batch)
            batch.clear()

        for full in list(self._iter_keys(self.prefix, None, 1000)):
            batch.append({"Key": full})
            if len(batch) == 1000:
                flush()
        flush()
        return count

    # -- leases ----------------------------------------------------------------------------
    def lease_read(self, name: str) -> LeaseRecord | None:
        from botocore.exceptions import ClientError

        try:
            answer = self._call(
                "lease read",
                name,
                lambda c: c.get_object(Bucket=self.bucket, Key=self.leases_prefix + name),
                passthrough=("404", "NoSuchKey"),
            )
        except ClientError:
            return None
        return LeaseRecord.loads(answer["Body"].read())

    def lease_write(self, name: str, record: LeaseRecord, create_only: bool) -> bool:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.leases_prefix + name,
            "Body": record.dumps(),
        }
        if create_only and self._conditional:
            try:
                self._call(
                    "lease write",
                    name,
                    lambda c: c.put_object(IfNoneMatch="*", **args),
                    passthrough=("412", "PreconditionFailed", "NotImplemented", "501"),
                )
                return True
            except ClientError as exc:
                _, code = self._status(exc)
                if code != "NotImplemented" or self._conditional_required:
                    if code == "NotImplemented":
                        raise BankError(
                            "s3 bank: the endpoint does not support conditional writes "
                            "(set conditional_writes = auto)"
                        ) from None
                    return False
                LOG.info("s3 bank: endpoint has no conditional writes; settle-time leases only")
                self._conditional = False
        self._call("lease write", name, lambda c: c.put_object(**args))
        return True

    def lease_delete(self, name: str) -> None:
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):
            self._call(
                "lease delete",
                name,
                lambda c: c.delete_object(Bucket=self.bucket, Key=self.leases_prefix + name),
                passthrough=("404", "NoSuchKey"),
            )
