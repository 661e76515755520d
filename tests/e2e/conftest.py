from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from vox.config import Config
from vox.context import Addresses
from vox.nurseries.root import run_daemon


@dataclass
class Daemon:
    addresses: Addresses
    stop: trio.Event
    done: trio.Event
    config: Config

    @property
    def rest(self) -> str:
        return self.addresses.rest_url

    @property
    def gateway(self) -> str:
        return self.addresses.gateway_url

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.rest, timeout=10)


async def start_daemon(nursery: trio.Nursery, tmp_path: Path, **overrides: Any) -> Daemon:
    """Start the whole daemon in-process on port 0 and learn its real ports."""
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "rest_port": 0,
        "gateway_port": 0,
        "media_port": 0,
        "shutdown_grace_s": 5.0,
    }
    settings.update(overrides)
    config = Config(**settings)
    stop, done = trio.Event(), trio.Event()

    async def runner(task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_daemon(config, stop, task_status=task_status)
        finally:
            done.set()

    addresses = await nursery.start(runner)
    return Daemon(addresses=addresses, stop=stop, done=done, config=config)


@pytest.fixture
async def daemon(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(nursery, tmp_path)
    yield d
    d.stop.set()
    with trio.fail_after(15):
        await d.done.wait()
