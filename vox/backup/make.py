"""``vox backup PATH``: write a complete, verified backup directory while the daemon runs."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from vox.backup.manifest import (
    MANIFEST,
    FileEntry,
    Manifest,
    copy_tree,
    fsync_dir,
    hash_file,
    walk_files,
)
from vox.backup.pg_dump import dump_database
from vox.backup.sqlite_copy import check_copy, copy_database
from vox.config import Config
from vox.errors import BackupError
from vox.storage import sqlite_path

__all__ = ["BackupOptions", "BackupSummary", "make_backup"]

SQLITE_FILE = "vox.db"
PG_FILE = "database.dump"


@dataclass(frozen=True)
class BackupOptions:
    include_blobs: bool = True
    # 1024 pages of 4 KiB: about 4 MiB a step.
    pages_per_step: int = 1024
    pause_s: float = 0.005
    pg_dump: str | None = None  # default: pg_dump from PATH


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    manifest: Manifest
    total_bytes: int
    duration_s: float


def _vox_version() -> str:
    try:
        return metadata.version("vox")
    except metadata.PackageNotFoundError:
        return "unknown"


def _staging(dest: Path) -> Path:
    if dest.exists() or dest.is_symlink():
        raise BackupError(f"{dest} already exists; give a new path (a backup never overwrites one)")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a directory")
    staging = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    return staging


def make_backup(config: Config, dest: Path, options: BackupOptions = BackupOptions()) -> BackupSummary:
    """Back up the configured database, keys and (local) blobs into the new directory ``dest``.

    Blocking (file I/O, pg_dump): run it in a thread from async code. Raises BackupError, leaving
    nothing at ``dest`` and no temporary directory behind.
    """
    started = time.monotonic()
    dest = dest.expanduser().absolute()
    keys = config.data_dir / "keys"
    if not keys.is_dir() or not any(keys.iterdir()):
        raise BackupError(f"{keys} holds no keys: is data_dir right? (a backup without them cannot be used)")
    staging = _staging(dest)
    try:
        url = config.resolved_database_url
        source = sqlite_path(url)
        if source is not None:
            copy_database(
                source.expanduser().absolute(),
                staging / SQLITE_FILE,
                pages_per_step=options.pages_per_step,
                pause_s=options.pause_s,
            )
            version, counts = check_copy(staging / SQLITE_FILE)
            database = "sqlite"
        else:
            version, counts = dump_database(url, staging / PG_FILE, pg_dump=options.pg_dump)
            database = "postgres"
        # After the database: a blob uploaded meanwhile is merely unreferenced in the copy.
        copy_tree(keys, staging / "keys")
        if config.s3_bucket:
            blobs = "s3"
        elif options.include_blobs and (config.data_dir / "blobs").is_dir():
            copy_tree(config.data_dir / "blobs", staging / "blobs", skip_temp=True)
            blobs = "included"
        else:
            blobs = "excluded"
        files = {
            p.relative_to(staging).as_posix(): FileEntry(p.stat().st_size, hash_file(p))
            for p in walk_files(staging)
        }
        manifest = Manifest(
            database=database,
            schema_version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            vox_version=_vox_version(),
            blobs=blobs,
            counts=counts,
            files=files,
        )
        fd = os.open(staging / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(manifest.to_json())
            out.flush()
            os.fsync(out.fileno())
        for directory in sorted({p.parent for p in walk_files(staging)}, reverse=True):
            fsync_dir(directory)
        if dest.exists():
            raise BackupError(f"{dest} appeared while the backup ran")
        staging.rename(dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(entry.size for entry in manifest.files.values())
    return BackupSummary(
        path=dest, manifest=manifest, total_bytes=total, duration_s=time.monotonic() - started
    )
