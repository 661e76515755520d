"""What only the S3 store does: multipart uploads, aborts, bucket checks, credentials kept out of sight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.blobs.conftest import empty_bucket, s3_client, s3_settings
from tests.blobs.test_contract import MiB, chunked, pattern
from vox.errors import BlobError, ConfigError, PayloadTooLarge

pytest.importorskip("boto3", reason="S3 store needs boto3 (installed with moto[server])")

from vox.blobs.s3 import S3BlobStore, S3Settings, open_s3_blob_store


class Spy:
    """Counts the boto3 calls the store makes, passing them through."""

    def __init__(self, store: S3BlobStore) -> None:
        self.calls: list[str] = []
        client = store._client
        for name in (
            "put_object",
            "create_multipart_upload",
            "upload_part",
            "complete_multipart_upload",
            "abort_multipart_upload",
        ):
            setattr(client, name, self._wrap(name, getattr(client, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            return fn(**kwargs)

        return call


async def test_large_stream_uses_multipart_and_small_a_single_put(s3_endpoint: str, s3_bucket: str) -> None:
    async with open_s3_blob_store(s3_settings(s3_endpoint, s3_bucket, part_size=5 * MiB)) as store:
        spy = Spy(store)
        data = pattern(12 * MiB)
        assert await store.put_stream("a/big", chunked(data), "video/mp4", max_bytes=25 * MiB) == len(data)
        assert spy.calls == [
            "create_multipart_upload",
            "upload_part",
            "upload_part",
            "upload_part",
            "complete_multipart_upload",
        ]
        spy.calls.clear()
        await store.put_stream("a/small", chunked(b"x" * 1000), "text/plain", max_bytes=25 * MiB)
        assert spy.calls == ["put_object"]
    client = s3_client(s3_endpoint)
    head = client.head_object(Bucket=s3_bucket, Key="a/big")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == len(data)
    client.close()


async def test_too_large_after_parts_aborts_the_upload(s3_endpoint: str, s3_bucket: str) -> None:
    async with open_s3_blob_store(s3_settings(s3_endpoint, s3_bucket, part_size=5 * MiB)) as store:
        spy = Spy(store)
        with pytest.raises(PayloadTooLarge):
            await store.put_stream("a/big", chunked(pattern(12 * MiB)), "x/y", max_bytes=11 * MiB)
        assert spy.calls[0] == "create_multipart_upload"
        assert spy.calls[-1] == "abort_multipart_upload"
    client = s3_client(s3_endpoint)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    client.close()


async def test_cancel_during_a_part_upload_aborts(s3_endpoint: str, s3_bucket: str) -> None:
    async with open_s3_blob_store(s3_settings(s3_endpoint, s3_bucket, part_size=5 * MiB)) as store:
        spy = Spy(store)

        async def endless() -> AsyncIterator[bytes]:
            while True:
                yield pattern(MiB)

        with trio.move_on_after(1.0):
            await store.put_stream("a/endless", endless(), "x/y", max_bytes=10**12)
        assert "abort_multipart_upload" in spy.calls
    client = s3_client(s3_endpoint)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    client.close()


async def test_prefix_is_applied(s3_endpoint: str, s3_bucket: str) -> None:
    async with open_s3_blob_store(s3_settings(s3_endpoint, s3_bucket, prefix="vox/")) as store:
        await store.put("emoji/g/e.png", b"png", "image/png")
        assert await store.get("emoji/g/e.png") == b"png"
    client = s3_client(s3_endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["vox/emoji/g/e.png"]
    client.close()


async def test_missing_bucket_is_not_created_without_the_flag(s3_endpoint: str) -> None:
    bucket = "vox-test-absent-bucket"
    with pytest.raises(BlobError, match="does not exist"):
        async with open_s3_blob_store(s3_settings(s3_endpoint, bucket)):
            pass
    client = s3_client(s3_endpoint)
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert bucket not in names
    client.close()


async def test_bucket_created_when_the_flag_says_so(s3_endpoint: str) -> None:
    bucket = "vox-test-created-bucket"
    client = s3_client(s3_endpoint)
    try:
        async with open_s3_blob_store(s3_settings(s3_endpoint, bucket, create_bucket=True)) as store:
            await store.put("a/b", b"c", "text/plain")
        # A second start finds it there.
        async with open_s3_blob_store(s3_settings(s3_endpoint, bucket, create_bucket=True)) as store:
            assert await store.get("a/b") == b"c"
    finally:
        empty_bucket(client, bucket)
        client.delete_bucket(Bucket=bucket)
        client.close()


async def test_wrong_credentials_or_dead_endpoint_are_blob_errors() -> None:
    # Nothing listens on port 9 of loopback (discard): the connection is refused at once.
    settings = S3Settings(
        bucket="b",
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
        path_style=True,
    )
    with pytest.raises(BlobError, match="HeadBucket"):
        async with open_s3_blob_store(settings):
            pass


def test_secret_is_never_shown() -> None:
    settings = S3Settings(bucket="b", access_key_id="AKIAEXAMPLE", secret_access_key="very-secret")
    assert "very-secret" not in repr(settings)
    store = S3BlobStore(client=None, settings=settings)
    assert "very-secret" not in store.describe()
    assert "AKIAEXAMPLE" not in store.describe()


def test_settings_checks() -> None:
    with pytest.raises(ConfigError):
        S3Settings(bucket="")
    with pytest.raises(ConfigError):
        S3Settings(bucket="b", access_key_id="only-the-id")
    with pytest.raises(ValueError):
        S3Settings(bucket="b", part_size=MiB)
