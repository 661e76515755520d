"""open_blob_store: local under data_dir/blobs by default, S3 when s3_bucket is set; the s3_* keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.blobs import s3server
from vox import config
from vox.blobs import LocalBlobStore, open_blob_store
from vox.errors import BlobError, ConfigError


async def test_local_by_default(tmp_path: Path) -> None:
    cfg = config.load(env={}).replace(data_dir=tmp_path / "data")
    async with open_blob_store(cfg) as store:
        assert isinstance(store, LocalBlobStore)
        assert store.describe() == "local"
        await store.put("a/b", b"c", "text/plain")
    assert (tmp_path / "data/blobs/a/b").read_bytes() == b"c"


async def test_s3_when_a_bucket_is_set(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    cfg = config.load(
        env={
            "VOX_S3_BUCKET": s3_bucket,
            "VOX_S3_ENDPOINT_URL": s3_endpoint,
            "VOX_S3_REGION": s3server.REGION,
            "VOX_S3_ACCESS_KEY_ID": s3server.ACCESS_KEY,
            "VOX_S3_SECRET_ACCESS_KEY": "not-" + s3server.SECRET_KEY,  # moto takes any secret
            "VOX_S3_PATH_STYLE": "true",
            "VOX_S3_PREFIX": "vox/",
        }
    ).replace(data_dir=tmp_path)
    assert "not-testing" not in repr(cfg)
    async with open_blob_store(cfg) as store:
        assert store.describe() == f"s3 bucket={s3_bucket} endpoint={s3_endpoint} prefix=vox/"
        await store.put("a/b", b"c", "text/plain")
        assert await store.get("a/b") == b"c"
        await store.ping()
    assert not (tmp_path / "blobs").exists()


async def test_s3_missing_bucket_fails_start(s3_endpoint: str) -> None:
    cfg = config.load(
        env={
            "VOX_S3_BUCKET": "vox-no-such-bucket",
            "VOX_S3_ENDPOINT_URL": s3_endpoint,
            "VOX_S3_PATH_STYLE": "1",
        }
    ).replace(s3_access_key_id="k", s3_secret_access_key="s", s3_region="us-east-1")
    with pytest.raises(BlobError, match="s3_create_bucket"):
        async with open_blob_store(cfg):
            pass


def test_s3_keys_parse(tmp_path: Path) -> None:
    path = tmp_path / "vox.toml"
    path.write_text('s3_bucket = "media"\ns3_path_style = true\ns3_create_bucket = false\n')
    cfg = config.load(path, env={"VOX_S3_CREATE_BUCKET": "yes"})
    assert (cfg.s3_bucket, cfg.s3_path_style, cfg.s3_create_bucket) == ("media", True, True)
    assert config.load(env={}).s3_path_style is False
    for raw, expected in [("on", True), ("0", False), ("False", False), ("TRUE", True)]:
        assert config.load(env={"VOX_S3_PATH_STYLE": raw}).s3_path_style is expected


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ('s3_path_style = "maybe"\n', {}, "s3_path_style"),
        ("s3_path_style = 1\n", {}, "s3_path_style"),
        ("", {"VOX_S3_CREATE_BUCKET": "perhaps"}, "s3_create_bucket"),
        ('s3_endpoint_url = "ftp://x"\n', {}, "s3_endpoint_url"),
        ('s3_bucket = "bad bucket"\n', {}, "s3_bucket"),
        ('s3_prefix = "/abs"\n', {}, "s3_prefix"),
        ('s3_prefix = "../up"\n', {}, "s3_prefix"),
    ],
)
def test_bad_s3_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "vox.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path, env=env)
    assert err.value.key == key


def test_example_lists_s3_keys_without_secrets() -> None:
    example = config.example()
    assert 's3_bucket = ""' in example
    assert "s3_path_style = false" in example
    assert 's3_secret_access_key = ""' in example
