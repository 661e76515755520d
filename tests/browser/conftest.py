"""Browser tests: the web client in headless Chromium, driven by Playwright's sync API.

Playwright's sync API runs its own event loop, so it cannot run inside a trio test: the daemon
runs as a ``vox serve`` subprocess and these tests are plain (non-trio) pytest functions. They use
the system's Chromium (Debian's ``chromium`` package), never a browser Playwright downloads.
Without Chromium or Playwright they skip, except under CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.process import ready_urls, spawn_vox

CHROMIUM = os.environ.get("VOX_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Chromium's fake devices: a synthetic microphone (a beep) and screen, granted without a prompt.
FAKE_MEDIA = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--auto-select-desktop-capture-source=Entire screen",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    return None


def require_browser(*, module_level: bool = False) -> None:
    """Skip (or, under CI, fail) when Playwright or Chromium is missing; test modules call this
    before importing Playwright, so its absence is a skip with a reason, not an import error."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        if module_level:
            return  # each test then fails in its fixture, without stopping the rest of the run
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


@dataclass
class Server:
    rest: str
    gateway: str
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_browser()
    data = tmp_path_factory.mktemp("vox-web") / "data"
    env = {
        "VOX_LOG_LEVEL": "warning",
        # Browser and SFU meet on loopback: no interface scan, no STUN.
        "VOX_VOICE_HOST_ADDRESSES": "127.0.0.1",
        # Short heartbeats, so a test can cut the network and see the client notice within seconds.
        "VOX_HEARTBEAT_INTERVAL_MS": "2000",
    }
    proc = spawn_vox("--data-dir", str(data), "--host", "127.0.0.1", env=env, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        parts = ready_urls(line)
        assert parts is not None, f"daemon did not start: {line}"
        yield Server(rest=parts["rest"], gateway=parts["gateway"], proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Importing trio_asyncio (the daemon's modules do, when other tests ran in this process)
    # installs its event loop policy; Playwright's sync API needs a plain asyncio loop.
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FAKE_MEDIA)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop_policy(policy)
