"""``vox serve`` as a subprocess: the ready line, SIGTERM exit code, config errors, data dir modes."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.process import spawn_vox

READY_PREFIX = "vox: ready rest=http://127.0.0.1:"


def _spawn(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return spawn_vox("--data-dir", str(tmp_path / "data"), *extra, env=env)


def test_serve_prints_ready_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    proc = _spawn(tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith(READY_PREFIX), (line, proc.stderr.read() if proc.poll() is not None else "")
        parts = dict(p.split("=", 1) for p in line.split()[2:])
        assert parts["gateway"].startswith("ws://127.0.0.1:") and parts["gateway"].endswith("/gateway")
        with urllib.request.urlopen(parts["rest"] + "/healthz", timeout=5) as response:
            assert response.status == 200
        secret = "hunter2-very-secret"
        login = urllib.request.Request(
            parts["rest"] + "/api/v1/auth/login?token=" + secret,
            data=json.dumps({"username": "nobody", "password": secret}).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(login, timeout=5)
        assert refused.value.code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        # exactly one line on stdout
        assert proc.stdout.read() == ""
        assert proc.stderr is not None
        logs = proc.stderr.read()
        assert "method=GET path=/healthz status=200 duration_ms=" in logs
        assert "method=POST path=/api/v1/auth/login status=401" in logs
        assert secret not in logs  # neither the password nor the query string is logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for key in ("keys/jwt_ed25519.pem", "keys/server_secret"):
        assert stat.S_IMODE((data / key).stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "vox.db").stat().st_mode) == 0o600
    assert (data / "keys" / "server_secret").stat().st_size == 32


def test_keys_survive_restart(tmp_path: Path) -> None:
    secrets = []
    for _ in range(2):
        proc = _spawn(tmp_path)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(READY_PREFIX)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        secrets.append((tmp_path / "data" / "keys" / "server_secret").read_bytes())
    assert secrets[0] == secrets[1]


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--rest-port", "http"], {}, "rest_port"),
        (["--database-url", "mysql://x"], {}, "database_url"),
        ([], {"VOX_LOG_LEVEL": "chatty"}, "log_level"),
    ],
)
def test_bad_config_exits_2_naming_key(
    tmp_path: Path, args: list[str], env: dict[str, str], key: str
) -> None:
    proc = _spawn(tmp_path, *args, env=env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert key in err
    assert out == ""


def test_config_example_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vox", "config", "example"], capture_output=True, text=True, check=True
    ).stdout
    assert "rest_port = 8080" in out


def test_sigterm_during_open_gateway_connection(tmp_path: Path) -> None:
    import socket

    proc = _spawn(tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        parts = dict(p.split("=", 1) for p in line.split()[2:])
        host_port = parts["gateway"].removeprefix("ws://").removesuffix("/gateway")
        host, port = host_port.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(
            b"GET /gateway HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        # a WebSocket close frame (opcode 0x8) was sent before the socket closed
        assert b"\x88" in data
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
