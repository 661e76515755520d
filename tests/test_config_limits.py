"""The abuse-limit and timeout keys: defaults, environment names and validation."""

from __future__ import annotations

import pytest

from vox import config
from vox.errors import ConfigError


def test_defaults() -> None:
    c = config.load(env={})
    assert (c.max_connections, c.max_connections_per_ip) == (10_000, 256)
    assert (c.http_header_timeout_s, c.http_body_timeout_s, c.http_keepalive_timeout_s) == (10.0, 30.0, 75.0)
    assert c.ws_handshake_timeout_s == 10.0 and c.gateway_identify_timeout_s == 0.0
    assert (c.gateway_queue_frames, c.gateway_queue_bytes) == (512, 4 * 1024 * 1024)


def test_environment_and_zero_identify_timeout() -> None:
    c = config.load(
        env={
            "VOX_MAX_CONNECTIONS_PER_IP": "3",
            "VOX_HTTP_BODY_TIMEOUT_S": "2.5",
            "VOX_GATEWAY_IDENTIFY_TIMEOUT_S": "0",
        }
    )
    assert (
        c.max_connections_per_ip == 3 and c.http_body_timeout_s == 2.5 and c.gateway_identify_timeout_s == 0
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_connections", 0),
        ("max_connections_per_ip", -1),
        ("http_header_timeout_s", 0),
        ("http_body_timeout_s", -1.0),
        ("http_keepalive_timeout_s", 0),
        ("ws_handshake_timeout_s", 0),
        ("gateway_identify_timeout_s", -0.5),
        ("gateway_queue_frames", 0),
        ("gateway_queue_bytes", 0),
    ],
)
def test_bad_values_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env={}, overrides={key: value})
    assert caught.value.key == key
