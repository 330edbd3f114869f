"""S3 access for the agent: clients, a concurrent multipart uploader with backpressure,
a prefetching streaming reader, manifests, copies and listing.

The client configuration (`new_client`), the error type (`StorageError`, with a CamelCase
`reason`) and the classification of S3's answers (`reason_of`, `describe_error`) are also the
operator's (`aegis.cloud.s3` imports them): one home, below both in the import layers."""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aegis.agent.config import StoreConfig, aws_credentials, default_endpoint
from aegis.agent.log import log

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client as S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef
else:
    S3Client = Any

MiB = 1 << 20
MAX_PARTS = 10_000
MAX_PART = 5 * 1024 * MiB
COPY_PART = 512 * MiB
SINGLE_COPY_LIMIT = 5 * 1024 * MiB
# How long an abort keeps retrying: an unreachable store may come back, and an abandoned
# multipart upload costs money until a lifecycle rule removes it.
ABORT_PATIENCE_SECONDS = 120.0


class StorageError(RuntimeError):
    """An S3 operation failed; the message names the operation and the object, never a
    credential. `reason` is CamelCase (the operator's conditions and events show it)."""

    def __init__(self, message: str, reason: str = "S3Error") -> None:
        super().__init__(message)
        self.reason = reason


REASONS = {
    "NoSuchBucket": "BucketNotFound",
    "AccessDenied": "S3AccessDenied",
    "InvalidAccessKeyId": "S3CredentialsInvalid",
    "SignatureDoesNotMatch": "S3CredentialsInvalid",
    "NoSuchKey": "ObjectNotFound",
    "404": "ObjectNotFound",
}
"""S3 error codes that say what to fix, as reasons."""


def error_code(error: BaseException) -> str | None:
    """S3's error code of a ClientError (None for a connection or client-side error)."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return None


def reason_of(error: BaseException) -> str:
    """The CamelCase reason of a failed S3 call: S3Unreachable when S3 did not answer."""
    code = error_code(error)
    if code is None:
        return "S3Unreachable"
    return REASONS.get(code, "S3Error")


def describe_error(error: BaseException) -> str:
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", "")
        return f"{code}: {message}" if message else str(code)
    return f"{type(error).__name__}: {error}"


def endpoint_of(store: StoreConfig, env: dict[str, str]) -> str | None:
    return store.endpoint or default_endpoint(env)


def new_client(
    endpoint: str | None,
    region: str | None,
    credentials: Mapping[str, str | None],
    *,
    addressing_style: Literal["auto", "path", "virtual"] | None = None,
    pool: int = 10,
    max_attempts: int = 6,
    connect_timeout: float = 10,
    read_timeout: float = 120,
) -> S3Client:
    """An S3 client, configured one way for the agent and the operator: standard retries,
    path-style addressing for a named endpoint (S3-compatible stores), the default region
    us-east-1. `credentials` holds aws_access_key_id / aws_secret_access_key /
    aws_session_token (None: the default credential chain)."""
    style: Literal["auto", "path", "virtual"] = addressing_style or (
        "path" if endpoint else "auto"
    )
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=pool,
        s3={"addressing_style": style},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )
    # botocore directly: boto3 would also import s3transfer, which neither side uses.
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        config=config,
        aws_access_key_id=credentials.get("aws_access_key_id"),
        aws_secret_access_key=credentials.get("aws_secret_access_key"),
        aws_session_token=credentials.get("aws_session_token"),
    )
    return cast("S3Client", client)


def make_client(
    store: StoreConfig, env: dict[str, str], pool: int = 10, max_attempts: int = 6
) -> S3Client:
    """The agent's client of a store, credentials from the environment."""
    creds = aws_credentials(env, store.credentials_env_prefix)
    return new_client(
        endpoint_of(store, env),
        store.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        dict(creds),
        addressing_style=store.addressing_style,
        pool=pool,
        max_attempts=max_attempts,
    )


def write_args(store: StoreConfig, now: dt.datetime) -> dict[str, Any]:
    """Storage class, SSE and Object Lock arguments of every object written to `store`."""
    args: dict[str, Any] = {}
    if store.storage_class:
        args["StorageClass"] = store.storage_class
    sse = store.server_side_encryption
    if sse is not None:
        args["ServerSideEncryption"] = sse.type
        if sse.type == "aws:kms" and sse.kms_key_id:
            args["SSEKMSKeyId"] = sse.kms_key_id
    lock_until = locked_until(store, now)
    if store.object_lock is not None and lock_until is not None:
        args["ObjectLockMode"] = store.object_lock.mode
        args["ObjectLockRetainUntilDate"] = lock_until
    return args


def locked_until(store: StoreConfig, now: dt.datetime) -> dt.datetime | None:
    if store.object_lock is None:
        return None
    return (now + dt.timedelta(days=store.object_lock.days)).replace(microsecond=0)


def part_size_for(part_number: int, base: int) -> int:
    """Parts grow 2x every 1000 parts, so 10 000 parts reach S3's 5 TiB object limit while
    small backups keep small parts (and little memory)."""
    return min(base << ((part_number - 1) // 1000), MAX_PART)


class MultipartUpload:
    """Uploads parts on a few worker threads while the producer keeps producing.

    `write` blocks while `concurrency` parts are in flight and one more waits (bounded memory:
    about (concurrency + 2) x part size). Any failure is re-raised on the next call; `abort`
    removes the upload. Workers are daemon threads, so a request hung on a dead connection can
    never keep a failed agent from exiting."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        extra: dict[str, Any],
        part_size: int = 8 * MiB,
        concurrency: int = 3,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.extra = extra
        self.part_size = part_size
        self.concurrency = concurrency
        self.upload_id: str | None = None
        self.parts: dict[int, str] = {}
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._next_part = 1
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._tasks: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=1)
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        try:
            reply = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.extra
            )
        except (ClientError, BotoCoreError) as error:
            raise StorageError(
                f"cannot start the upload of s3://{self.bucket}/{self.key}: {describe_error(error)}"
            ) from None
        self.upload_id = reply["UploadId"]
        self._workers = [
            threading.Thread(target=self._work, name=f"s3-part-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def write(self, data: bytes) -> None:
        self._raise_if_failed()
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= part_size_for(self._next_part, self.part_size):
            self._submit()

    def _submit(self) -> None:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(
                f"s3://{self.bucket}/{self.key}: more than {MAX_PARTS} parts; raise tuning.partSize"
            )
        self._next_part += 1
        while True:
            self._raise_if_failed()
            try:
                self._tasks.put((number, body), timeout=0.5)
                return
            except queue.Full:
                continue  # backpressure; re-check for a failed worker meanwhile

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None or self._error is not None:
                return
            number, body = task
            try:
                reply = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id or "",
                    PartNumber=number,
                    Body=body,
                )
            except BaseException as error:  # handed to the producer thread
                with self._lock:
                    if self._error is None:
                        self._error = error
                return
            with self._lock:
                self.parts[number] = reply["ETag"]

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise StorageError(
                f"upload of a part of s3://{self.bucket}/{self.key} failed: "
                f"{describe_error(self._error)}"
            )

    def _stop_workers(self, timeout: float | None) -> None:
        """Queue an end marker per worker until every worker has exited. Queued parts are
        dropped only after a failure or an abort (workers then stop taking them): while the
        upload is healthy, busy workers are waited for, since dropping a queued part (or an
        end marker meant for another worker) would complete the upload without that part
        (or never finish)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(worker.is_alive() for worker in self._workers):
            if self._error is not None:
                self._drain()
            try:
                self._tasks.put(None, timeout=0.5)
            except queue.Full:
                pass  # every worker busy with a part: wait for one (re-checking for failures)
            if deadline is not None and time.monotonic() > deadline:
                return

    def _drain(self) -> None:
        try:
            while True:
                self._tasks.get_nowait()
        except queue.Empty:
            pass

    def complete(self) -> dict[str, Any]:
        if self._pending or self._next_part == 1:
            self._submit()
        self._stop_workers(None)
        self._raise_if_failed()
        ordered: list[CompletedPartTypeDef] = [
            {"PartNumber": n, "ETag": self.parts[n]} for n in sorted(self.parts)
        ]
        try:
            reply = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id or "",
                MultipartUpload={"Parts": ordered},
            )
        except (ClientError, BotoCoreError) as error:
            raise StorageError(
                f"cannot complete the upload of s3://{self.bucket}/{self.key}: "
                f"{describe_error(error)}"
            ) from None
        ensure_retention(self.client, self.bucket, self.key, self.extra)
        return dict(reply)

    def abort(self) -> bool:
        """Abort the upload, retrying with backoff for a while. True when it is gone.

        Parts still in flight may land after an abort (S3 documents this), so the upload is
        aborted at once, in-flight parts get a moment to settle, and it is aborted once more."""
        with self._lock:
            if self._error is None:
                self._error = StorageError("aborted")
        self._drain()
        if self.upload_id is None:
            return True
        gone = self._abort_with_retries()
        self._stop_workers(timeout=10)
        return self._abort_with_retries() if gone else False

    def _abort_with_retries(self) -> bool:
        deadline = time.monotonic() + ABORT_PATIENCE_SECONDS
        delay = 0.5
        while True:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id or ""
                )
                log(f"aborted the multipart upload of s3://{self.bucket}/{self.key}")
                return True
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return True
                reason = describe_error(error)
            except BotoCoreError as error:
                reason = describe_error(error)
            if time.monotonic() + delay > deadline:
                log(
                    f"could not abort the multipart upload {self.upload_id} of "
                    f"s3://{self.bucket}/{self.key}: {reason}; a bucket lifecycle rule "
                    "(AbortIncompleteMultipartUpload) will remove it"
                )
                return False
            log(
                f"abort of s3://{self.bucket}/{self.key} failed ({reason}); retrying in "
                f"{delay:.1f}s"
            )
            time.sleep(delay)  # backoff between real retries of a failed request
            delay = min(delay * 2, 10.0)


def ensure_retention(client: S3Client, bucket: str, key: str, extra: dict[str, Any]) -> None:
    """Make sure the Object Lock retention requested at write time is on the object: some
    S3-compatible stores (and moto) ignore the lock headers of multipart uploads and copies."""
    mode = extra.get("ObjectLockMode")
    until = extra.get("ObjectLockRetainUntilDate")
    if mode is None or until is None:
        return
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        current = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockMode") == mode and current is not None and current >= until:
            return
        client.put_object_retention(
            Bucket=bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until}
        )
    except (ClientError, BotoCoreError) as error:
        raise StorageError(
            f"cannot set Object Lock retention on s3://{bucket}/{key}: "
            f"{describe_error(error)}; is Object Lock enabled on the bucket?"
        ) from None


def read_stream(
    client: S3Client, bucket: str, key: str, piece: int = MiB, prefetch: int = 8
) -> Iterator[bytes]:
    """The object's bytes in pieces, read ahead by a thread so the network overlaps the work
    of the consumer. At most `prefetch` pieces wait in memory."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except (ClientError, BotoCoreError) as error:
        raise StorageError(f"cannot read s3://{bucket}/{key}: {describe_error(error)}") from None
    pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(prefetch)
    stop = threading.Event()

    def pump() -> None:
        try:
            for data in body.iter_chunks(piece):
                if stop.is_set():
                    return
                pieces.put(data)
            pieces.put(None)
        except BaseException as error:  # handed to the consumer
            pieces.put(error)

    thread = threading.Thread(target=pump, name="s3-read", daemon=True)
    thread.start()
    try:
        while True:
            item = pieces.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise StorageError(f"reading s3://{bucket}/{key} failed: {describe_error(item)}")
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                pieces.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        body.close()


def get_bytes(client: S3Client, bucket: str, key: str) -> bytes:
    try:
        data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            raise StorageError(f"s3://{bucket}/{key} does not exist") from None
        raise StorageError(f"cannot read s3://{bucket}/{key}: {describe_error(error)}") from None
    except BotoCoreError as error:
        raise StorageError(f"cannot read s3://{bucket}/{key}: {describe_error(error)}") from None
    return data


def put_bytes(
    client: S3Client,
    bucket: str,
    key: str,
    data: bytes,
    extra: dict[str, Any],
    content_type: str = "application/json",
) -> None:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, **extra)
    except (ClientError, BotoCoreError) as error:
        raise StorageError(f"cannot write s3://{bucket}/{key}: {describe_error(error)}") from None


def list_keys(
    client: S3Client, bucket: str, prefix: str, accept: Callable[[str], bool]
) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if accept(obj["Key"]):
                    yield obj["Key"]
    except (ClientError, BotoCoreError) as error:
        raise StorageError(f"cannot list s3://{bucket}/{prefix}: {describe_error(error)}") from None


def abort_stale_uploads(
    client: S3Client,
    bucket: str,
    prefix: str,
    *,
    missing_ok: bool = False,
    told: Callable[[str], None] | None = log,
) -> int:
    """Abort every unfinished multipart upload under `prefix` (a point's directory): what a
    killed earlier attempt left (a kill runs no abort). Only this point's attempts write
    there, and only one runs at a time (a Job's pods run one after another), so none of these
    uploads is live. With `missing_ok`, a bucket or upload already gone is no error. Returns
    how many were aborted."""
    aborted = 0
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                if told is not None:
                    told(f"aborted a stale multipart upload of s3://{bucket}/{upload['Key']}")
                aborted += 1
    except (ClientError, BotoCoreError) as error:
        if missing_ok and error_code(error) in ("NoSuchBucket", "NoSuchUpload"):
            return aborted
        raise StorageError(
            f"cannot clean up the uploads under s3://{bucket}/{prefix}: {describe_error(error)}",
            reason_of(error),
        ) from None
    return aborted


def head_size(client: S3Client, bucket: str, key: str) -> int:
    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except (ClientError, BotoCoreError) as error:
        raise StorageError(f"cannot read s3://{bucket}/{key}: {describe_error(error)}") from None


def server_side_copy(
    client: S3Client,
    source_bucket: str,
    source_key: str,
    bucket: str,
    key: str,
    size: int,
    extra: dict[str, Any],
) -> None:
    """Copy inside one endpoint without moving the bytes through the Job; objects above 5 GiB
    go part by part (UploadPartCopy)."""
    source: CopySourceTypeDef = {"Bucket": source_bucket, "Key": source_key}
    if "ObjectLockMode" in extra:
        # S3 wants a checksum on writes that carry retention.
        extra = {**extra, "ChecksumAlgorithm": "CRC32"}
    if size <= SINGLE_COPY_LIMIT:
        client.copy_object(
            CopySource=source,
            Bucket=bucket,
            Key=key,
            MetadataDirective="COPY",
            **extra,
        )
        ensure_retention(client, bucket, key, extra)
        return
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts: list[CompletedPartTypeDef] = []
        for number, start in enumerate(range(0, size, COPY_PART), start=1):
            end = min(start + COPY_PART, size) - 1
            reply = client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    ensure_retention(client, bucket, key, extra)


def streamed_copy(
    source: S3Client,
    source_bucket: str,
    source_key: str,
    target: S3Client,
    bucket: str,
    key: str,
    extra: dict[str, Any],
    part_size: int,
    concurrency: int,
) -> None:
    """Copy across endpoints or accounts: read and upload concurrently, bounded memory."""
    upload = MultipartUpload(target, bucket, key, extra, part_size, concurrency)
    upload.start()
    try:
        for piece in read_stream(source, source_bucket, source_key):
            upload.write(piece)
        upload.complete()
    except BaseException:
        upload.abort()
        raise
    ensure_retention(target, bucket, key, extra)
