from __future__ import annotations

from pathlib import Path

import pytest

from vox import config
from vox.errors import ConfigError


def test_defaults() -> None:
    cfg = config.load(env={})
    assert cfg.rest_port == 8080
    assert cfg.gateway_port == 8081
    assert cfg.media_port == 4443
    assert cfg.host == "127.0.0.1"
    assert cfg.data_dir == Path("vox-data")
    assert cfg.resolved_database_url.startswith("sqlite:///")
    assert cfg.shutdown_grace_s == 10.0


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    path = tmp_path / "vox.toml"
    path.write_text('rest_port = 9000\ngateway_port = 9001\nhost = "0.0.0.0"\n')
    from_file = config.load(path, env={})
    assert (from_file.rest_port, from_file.gateway_port, from_file.host) == (9000, 9001, "0.0.0.0")
    with_env = config.load(path, env={"VOX_REST_PORT": "9100", "VOX_LOG_LEVEL": "debug"})
    assert (with_env.rest_port, with_env.gateway_port, with_env.log_level) == (9100, 9001, "debug")
    with_flag = config.load(
        path, env={"VOX_REST_PORT": "9100"}, overrides={"rest_port": "9200", "host": None}
    )
    assert (with_flag.rest_port, with_flag.host) == (9200, "0.0.0.0")


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("rest_port = 70000\n", {}, "rest_port"),
        ('rest_port = "eighty"\n', {}, "rest_port"),
        ("rest_port = true\n", {}, "rest_port"),
        ("", {"VOX_GATEWAY_PORT": "x"}, "gateway_port"),
        ('log_level = "loud"\n', {}, "log_level"),
        ('database_url = "mysql://x"\n', {}, "database_url"),
        ('redis_url = "http://x"\n', {}, "redis_url"),
        ("shutdown_grace_s = -1\n", {}, "shutdown_grace_s"),
        ("bogus_key = 1\n", {}, "bogus_key"),
        ('ice_servers = "http://stun.example.org"\n', {}, "ice_servers"),
        ('voice_public_ip = "example.org"\n', {}, "voice_public_ip"),
        ('voice_udp_ports = "5000-4000"\n', {}, "voice_udp_ports"),
        ("", {"VOX_VOICE_HOST_ADDRESSES": "127.0.0.1,nope"}, "voice_host_addresses"),
        ("voice_room_limit = 0\n", {}, "voice_room_limit"),
        ('media_host = "example.org"\n', {}, "media_host"),
        ("media_token_ttl_s = 0\n", {}, "media_token_ttl_s"),
        ("", {"VOX_MEDIA_IDLE_TIMEOUT_S": "-1"}, "media_idle_timeout_s"),
        ("media_rate_pps = 0\n", {}, "media_rate_pps"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "vox.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path, env=env)
    assert err.value.key == key
    assert key in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("rest_port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad, env={})
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml", env={})


def test_example_parses_back_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(config.example())
    assert config.load(path, env={}) == config.Config()
    for field in config.FIELDS:
        assert f"\n{field.name} = " in config.example()
