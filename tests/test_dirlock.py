"""The data directory lock: daemons share it, a restore needs it alone, and neither outlives its holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from vox import dirlock
from vox.errors import ConfigError


async def test_shared_holders_coexist_and_exclude_a_restore(tmp_path: Path) -> None:
    async with dirlock.shared(tmp_path), dirlock.shared(tmp_path):
        with pytest.raises(ConfigError, match="running daemon"), dirlock.exclusive(tmp_path):
            pass
    # Released with its holders: a restore can take it now, and a daemon cannot meanwhile.
    with dirlock.exclusive(tmp_path):
        with pytest.raises(ConfigError, match="vox restore"):
            async with dirlock.shared(tmp_path):
                pass
        with pytest.raises(ConfigError, match="running daemon"), dirlock.exclusive(tmp_path):
            pass
    async with dirlock.shared(tmp_path):
        pass


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"), dirlock.exclusive(tmp_path / "absent"):
        pass
