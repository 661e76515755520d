"""Running `vox serve` as a real subprocess in tests: the command and its ready line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import IO, Any

# Every listener on a free port: the ready line says which.
FREE_PORTS = ("--rest-port", "0", "--gateway-port", "0", "--media-port", "0")


def spawn_vox(
    *args: str, env: Mapping[str, str] | None = None, stderr: int | IO[Any] | None = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``python -m vox serve`` on free ports with ``args``; stdout is a pipe (the ready line)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vox", "serve", *FREE_PORTS, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )


def ready_urls(line: str) -> dict[str, str] | None:
    """The URLs of a ``vox: ready rest=... gateway=...`` line; None for any other line."""
    words = line.split()
    if words[:2] != ["vox:", "ready"]:
        return None
    return dict(word.split("=", 1) for word in words[2:])
