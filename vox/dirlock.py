"""Who is using a data directory: daemons hold a shared lock on it, ``vox restore`` an exclusive one.

The lock is ``flock(2)`` on the directory itself, so there is no lock file to go stale: the kernel
drops it when the holder exits, ``kill -9`` included. Several daemons may share one data directory
(their shared locks coexist); a restore needs it to itself, and a daemon refuses to start while a
restore runs. flock is per open file description, so it also tells apart two users in one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from vox.errors import ConfigError

__all__ = ["exclusive", "shared"]


def _open_dir(data_dir: Path) -> int:
    try:
        return os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot open {str(data_dir)!r}: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def shared(data_dir: Path) -> AsyncIterator[None]:
    """Held by a running daemon for its whole life; fails at once while a restore holds the dir."""
    fd = _open_dir(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "data_dir", f"{str(data_dir)!r} is locked by `vox restore`; start the daemon once it finished"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Held while files are replaced under ``data_dir``; ConfigError when a daemon uses it."""
    fd = _open_dir(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "data_dir", f"{str(data_dir)!r} is in use by a running daemon; stop it first"
            ) from None
        yield
    finally:
        os.close(fd)
