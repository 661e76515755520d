from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.blobs import s3server
from vox.blobs import BlobStore, LocalBlobStore


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a running S3-compatible server (moto), shared by the whole session."""
    server, reason = s3server.start()
    if server is None:
        pytest.skip(reason or "S3 server not available")
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def s3_client(endpoint_url: str) -> Any:
    """A plain boto3 client beside the store under test, to look at the bucket from outside."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=s3server.REGION,
        aws_access_key_id=s3server.ACCESS_KEY,
        aws_secret_access_key=s3server.SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


def empty_bucket(client: Any, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh, empty bucket (removed afterwards)."""
    client = s3_client(s3_endpoint)
    bucket = f"vox-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        empty_bucket(client, bucket)
        client.delete_bucket(Bucket=bucket)
        client.close()


def s3_settings(endpoint_url: str, bucket: str, **changes: Any) -> Any:
    from vox.blobs.s3 import S3Settings

    values: dict[str, Any] = {
        "bucket": bucket,
        "endpoint_url": endpoint_url,
        "region": s3server.REGION,
        "access_key_id": s3server.ACCESS_KEY,
        "secret_access_key": s3server.SECRET_KEY,
        "path_style": True,
    }
    values.update(changes)
    return S3Settings(**values)


@dataclass
class Backend:
    """A store under test plus a way to see everything it left in its backend."""

    name: str
    store: BlobStore
    # Every file or directory (local) or object and unfinished multipart upload (S3) there is.
    leftovers: Callable[[], Awaitable[list[str]]]


@pytest.fixture(params=["local", "s3"])
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Every contract test runs on both blob stores (S3 skipped, with the reason, without a server)."""
    if request.param == "local":
        return "local", tmp_path / "blobs"
    return "s3", (request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))


@pytest.fixture
async def backend(backend_spec: tuple[str, Any]) -> AsyncIterator[Backend]:
    kind, where = backend_spec
    if kind == "local":
        root: Path = where
        root.mkdir()

        async def local_leftovers() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

        yield Backend("local", LocalBlobStore(root), local_leftovers)
        return

    from vox.blobs.s3 import open_s3_blob_store

    endpoint, bucket = where
    client = s3_client(endpoint)

    async def s3_leftovers() -> list[str]:
        objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted([o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads])

    try:
        async with open_s3_blob_store(s3_settings(endpoint, bucket, prefix="p/")) as store:
            yield Backend("s3", store, s3_leftovers)
    finally:
        client.close()
