"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...), for several daemons.

boto3 is synchronous, so every call runs in a worker thread, at most ``max_connections`` at once
(a trio.CapacityLimiter per store, matched to botocore's connection pool so a thread never waits
for a connection). Large blobs are streamed with a multipart upload, ``part_size`` bytes in memory
at a time; any failure, cancellation or ``PayloadTooLarge`` aborts the multipart upload so the
bucket keeps no parts. Blobs that fit in one part go up with a single ``PutObject``.

Cancellation and threads: calls that change the bucket are never abandoned mid-flight (trio waits
for the thread), because S3 documents that an abort racing an in-flight part upload may leave that
part stored. Only the clean-up abort itself is abandoned after a deadline, so a dead endpoint cannot
hold shutdown hostage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

# boto3 ships no type information; the few names used here are typed as Any.
import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
import trio
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped, import-not-found, unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    BotoCoreError,
    ClientError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from vox.blobs.base import DEFAULT_CHUNK_SIZE, BlobReader, validate_key
from vox.errors import BlobError, BlobNotFound, ConfigError, PayloadTooLarge

if TYPE_CHECKING:
    from vox.config import Config

log = logging.getLogger("vox.blobs.s3")

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum number of parts in one upload
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_CLEANUP_TIMEOUT_S = 30.0
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET = frozenset({"NoSuchBucket", "NotFound", "404"})


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str = ""  # empty: AWS, from the region
    region: str = ""  # empty: boto3's default chain (AWS_REGION, ~/.aws/config)
    access_key_id: str = ""  # empty (with the secret): boto3's default chain (env, profile, IAM role)
    secret_access_key: str = dataclasses.field(default="", repr=False)
    prefix: str = ""
    path_style: bool = False
    create_bucket: bool = False
    max_connections: int = 10
    part_size: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigError("s3_bucket", "must not be empty")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("s3_access_key_id", "s3_access_key_id and s3_secret_access_key go together")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    @classmethod
    def from_config(cls, config: Config) -> S3Settings:
        return cls(
            bucket=config.s3_bucket,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
            access_key_id=config.s3_access_key_id,
            secret_access_key=config.s3_secret_access_key,
            prefix=config.s3_prefix,
            path_style=config.s3_path_style,
            create_bucket=config.s3_create_bucket,
        )


def _make_client(settings: S3Settings) -> Any:
    boto_config = BotoConfig(
        region_name=settings.region or None,
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        max_pool_connections=settings.max_connections,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        # Newer botocore adds CRC checksums to every upload by default; several S3-compatible
        # servers reject them, and TLS already protects the bytes in transit.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of our own: boto3's default session is process-wide state, and creating clients
    # from it in several threads at once is not safe.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url or None,
        region_name=settings.region or None,
        aws_access_key_id=settings.access_key_id or None,
        aws_secret_access_key=settings.secret_access_key or None,
        config=boto_config,
    )


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


class S3BlobStore:
    def __init__(self, client: Any, settings: S3Settings) -> None:
        self._client = client
        self._settings = settings
        self._bucket = settings.bucket
        self._limiter = trio.CapacityLimiter(settings.max_connections)

    def _full_key(self, key: str) -> str:
        return self._settings.prefix + validate_key(key)

    async def _call(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run one boto3 call in a worker thread, turning its errors into BlobError/BlobNotFound."""
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, **kwargs), limiter=self._limiter)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND and "Key" in kwargs:
                raise BlobNotFound(kwargs["Key"]) from None
            raise BlobError(f"S3 {what} failed: {code or exc}") from exc
        except (BotoCoreError, Urllib3Error, OSError) as exc:
            raise BlobError(f"S3 {what} failed: {exc}") from exc

    async def prepare(self) -> None:
        """Check the bucket is reachable; create it only when the settings say so."""
        try:
            await self._call("HeadBucket", self._client.head_bucket, Bucket=self._bucket)
            return
        except BlobError as exc:
            if _error_code(exc.__cause__) not in _NO_BUCKET:
                raise
            if not self._settings.create_bucket:
                raise BlobError(
                    f"S3 bucket {self._bucket!r} does not exist (create it, or set s3_create_bucket)"
                ) from None
        kwargs: dict[str, Any] = {"Bucket": self._bucket}
        region = self._settings.region
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._call("CreateBucket", self._client.create_bucket, **kwargs)
        except BlobError as exc:
            # Another daemon starting at the same moment may have won the race.
            if _error_code(exc.__cause__) != "BucketAlreadyOwnedByYou":
                raise
        log.info("created S3 bucket", extra={"fields": {"bucket": self._bucket}})

    # -- writing ---------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        full = self._full_key(key)
        await self._call(
            "PutObject",
            self._client.put_object,
            Bucket=self._bucket,
            Key=full,
            Body=data,
            ContentType=content_type,
        )

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str,
        *,
        max_bytes: int,
    ) -> int:
        full = self._full_key(key)
        # Grow the part when needed to stay within S3's 10,000 parts for the largest allowed blob.
        part_size = max(self._settings.part_size, math.ceil(max_bytes / MAX_PARTS))
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        done = False
        try:
            written = 0
            pending = bytearray()
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise PayloadTooLarge(f"larger than {max_bytes} bytes", max_bytes=max_bytes)
                pending += chunk
                while len(pending) >= part_size:
                    if upload_id is None:
                        created = await self._call(
                            "CreateMultipartUpload",
                            self._client.create_multipart_upload,
                            Bucket=self._bucket,
                            Key=full,
                            ContentType=content_type,
                        )
                        upload_id = str(created["UploadId"])
                    body = bytes(pending[:part_size])
                    del pending[:part_size]
                    parts.append(await self._upload_part(full, upload_id, len(parts) + 1, body))
            if upload_id is None:
                # It all fit in one part: one request, and nothing to abort if it fails.
                await self.put(key, bytes(pending), content_type)
            else:
                if pending:
                    parts.append(await self._upload_part(full, upload_id, len(parts) + 1, bytes(pending)))
                await self._call(
                    "CompleteMultipartUpload",
                    self._client.complete_multipart_upload,
                    Bucket=self._bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            done = True
            return written
        finally:
            if upload_id is not None and not done:
                await self._abort(full, upload_id)

    async def _upload_part(self, full: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        response = await self._call(
            "UploadPart",
            self._client.upload_part,
            Bucket=self._bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"ETag": response["ETag"], "PartNumber": number}

    async def _abort(self, full: str, upload_id: str) -> None:
        call = functools.partial(
            self._client.abort_multipart_upload, Bucket=self._bucket, Key=full, UploadId=upload_id
        )
        # Shielded so a cancelled upload still aborts; bounded so a dead endpoint cannot stall us.
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT_S) as scope:
            try:
                await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)
                return
            except (ClientError, BotoCoreError, Urllib3Error, OSError) as exc:
                problem = str(exc)
        if scope.cancelled_caught:
            problem = f"no answer within {_CLEANUP_TIMEOUT_S} s"
        # The bucket's lifecycle rule (AbortIncompleteMultipartUpload, see docs/operations.md) is
        # the safety net for this.
        log.warning(
            "could not abort S3 multipart upload",
            extra={"fields": {"key": full, "upload_id": upload_id, "error": problem}},
        )

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        reader = await self.open_stream(key)
        async with reader:
            return await reader.read_all()

    async def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobReader:
        full = self._full_key(key)
        response = await self._call("GetObject", self._client.get_object, Bucket=self._bucket, Key=full)
        body = response["Body"]

        def read(n: int) -> bytes:
            try:
                return bytes(body.read(n))
            except (ClientError, BotoCoreError, Urllib3Error, OSError) as exc:
                raise BlobError(f"S3 GetObject failed while reading {key!r}: {exc}") from exc

        return BlobReader(
            read,
            body.close,
            size=int(response["ContentLength"]),
            chunk_size=chunk_size,
            limiter=self._limiter,
        )

    async def exists(self, key: str) -> bool:
        full = self._full_key(key)
        try:
            await self._call("HeadObject", self._client.head_object, Bucket=self._bucket, Key=full)
        except BlobNotFound:
            return False
        return True

    # -- deleting --------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        full = self._full_key(key)
        await self._call("DeleteObject", self._client.delete_object, Bucket=self._bucket, Key=full)

    async def delete_many(self, keys: Iterable[str]) -> None:
        full_keys = [self._full_key(key) for key in keys]
        failures: list[str] = []
        for start in range(0, len(full_keys), _DELETE_BATCH):
            batch = full_keys[start : start + _DELETE_BATCH]
            response = await self._call(
                "DeleteObjects",
                self._client.delete_objects,
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            failures.extend(
                f"{error.get('Key')}: {error.get('Code')}"
                for error in response.get("Errors", [])
                if error.get("Code") not in _NOT_FOUND
            )
        if failures:
            raise BlobError("S3 DeleteObjects left blobs behind: " + "; ".join(failures[:10]))

    # -- housekeeping ----------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("HeadBucket", self._client.head_bucket, Bucket=self._bucket)

    def describe(self) -> str:
        where = f" endpoint={self._settings.endpoint_url}" if self._settings.endpoint_url else ""
        prefix = f" prefix={self._settings.prefix}" if self._settings.prefix else ""
        return f"s3 bucket={self._bucket}{where}{prefix}"


@contextlib.asynccontextmanager
async def open_s3_blob_store(settings: S3Settings) -> AsyncIterator[S3BlobStore]:
    """A ready S3BlobStore (bucket checked, or created if allowed); its client closed on exit."""
    try:
        # Building a client loads botocore's service models from disk: a thread, not the loop.
        client = await trio.to_thread.run_sync(_make_client, settings)
    except (BotoCoreError, ValueError) as exc:
        raise BlobError(f"cannot set up the S3 client: {exc}") from exc
    try:
        store = S3BlobStore(client, settings)
        await store.prepare()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(client.close)
