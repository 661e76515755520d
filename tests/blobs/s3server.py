"""A real S3-compatible server for the tests: moto's server mode, on a free loopback port.

The S3 cases run against it whenever ``moto[server]`` is installed (it is in the ``test`` extra);
where it is missing or cannot start they are skipped with the reason. Set VOX_TEST_S3=off to skip
them on purpose, or VOX_TEST_S3=http://host:port to use an S3-compatible server of your own
(with VOX_TEST_S3_KEY / VOX_TEST_S3_SECRET; every test makes and removes its own bucket).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SETTING = os.environ.get("VOX_TEST_S3", "")
ACCESS_KEY = os.environ.get("VOX_TEST_S3_KEY", "testing")
SECRET_KEY = os.environ.get("VOX_TEST_S3_SECRET", "testing")
REGION = "us-east-1"
_START_TIMEOUT_S = 30.0
_ATTEMPTS = 3


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # loopback only
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def start() -> tuple[S3Server | None, str | None]:
    """(server, None) once it answers, or (None, reason to skip)."""
    if SETTING == "off":
        return None, "S3 server disabled by environment (VOX_TEST_S3=off)"
    if SETTING:
        if not _answers(SETTING):
            return None, f"S3 server not available: {SETTING} does not answer"
        return S3Server(SETTING), None
    missing = [m for m in ("moto", "flask", "flask_cors", "boto3") if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"S3 server not available: moto[server] is not installed (missing {', '.join(missing)})"
    reason = "moto_server did not start"
    for _ in range(_ATTEMPTS):
        port = _free_port()
        fd, name = tempfile.mkstemp(prefix="vox-moto-", suffix=".log")
        log_path = Path(name)
        # The server logs every request; a file (not a pipe nobody reads) can never fill up and stall it.
        with os.fdopen(fd, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        server = S3Server(url, process, log_path)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(f"{url}/moto-api/"):
                return server, None
            time.sleep(0.1)
        reason = f"moto_server on port {port} did not start: {_tail(log_path) or 'no output'}"
        server.stop()
    return None, f"S3 server not available: {reason}"
