"""``vox restore PATH``: put a backup's files in place of a stopped deployment's.

Nothing is touched until the backup has proved sound: every file matches the manifest, and the
SQLite copy passes the integrity check and has the manifest's schema version, one this Vox knows.
The data directory is then locked exclusively (vox.dirlock), which fails while any daemon runs on
it and keeps one from starting meanwhile. Existing files are never deleted: with ``force`` they are
renamed aside (``NAME.replaced-TIMESTAMP``), otherwise the restore refuses to run. Each part is
copied under a temporary name and renamed into place once fsynced.

A PostgreSQL backup restores the keys (and blobs) here; the database itself is loaded with
pg_restore, whose exact command is returned (the operator runs it against the server they choose).
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from vox import dirlock
from vox.backup.make import PG_FILE, SQLITE_FILE
from vox.backup.manifest import Manifest, copy_private, copy_tree, fsync_dir, hash_file
from vox.backup.pg_dump import restore_command
from vox.backup.sqlite_copy import check_copy
from vox.config import Config
from vox.errors import BackupError
from vox.storage import sqlite_path

__all__ = ["RestoreSummary", "restore_backup"]


@dataclass(frozen=True)
class RestoreSummary:
    manifest: Manifest
    data_dir: Path
    database_path: Path | None  # the SQLite file written; None for PostgreSQL
    replaced: list[Path] = field(default_factory=list)  # what was renamed aside
    pg_restore: str | None = None  # the command still to run for a PostgreSQL backup


def _check_backup(config: Config, source: Path) -> tuple[Manifest, Path | None]:
    manifest = Manifest.read(source)
    manifest.verify_files(source)
    db_path = sqlite_path(config.resolved_database_url)
    if manifest.database == "sqlite":
        if db_path is None:
            raise BackupError("this backup holds a SQLite database, but database_url names PostgreSQL")
        version, _ = check_copy(source / SQLITE_FILE)
        if version != manifest.schema_version:
            raise BackupError(
                f"{source / SQLITE_FILE} has schema version {version}, the manifest says otherwise"
            )
        return manifest, db_path.expanduser().absolute()
    if manifest.database == "postgres":
        if db_path is not None:
            raise BackupError(
                "this backup holds a PostgreSQL dump, but database_url is SQLite; set database_url to "
                "the PostgreSQL database to restore into"
            )
        return manifest, None
    raise BackupError(f"unknown database kind {manifest.database!r} in the manifest")


def _in_use(path: Path) -> bool:
    """Whether restoring over ``path`` would replace something (an empty directory does not count)."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def _targets(data_dir: Path, db_path: Path | None, manifest: Manifest) -> list[Path]:
    paths = [data_dir / "keys"]
    if manifest.blobs == "included":
        paths.append(data_dir / "blobs")
    if db_path is not None:
        # A -wal or -shm left beside a replaced database would be replayed into the restored one.
        paths += [db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")]
    return paths


def restore_backup(config: Config, source: Path, *, force: bool = False) -> RestoreSummary:
    """Restore the backup directory ``source`` into the configured data_dir (and SQLite file).

    Blocking file I/O. Raises BackupError (bad backup, files in the way without ``force``) or
    ConfigError (a daemon is running on data_dir).
    """
    source = source.expanduser().absolute()
    manifest, db_path = _check_backup(config, source)
    data_dir = config.data_dir.expanduser().absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if db_path is not None:
        db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    with dirlock.exclusive(data_dir):
        targets = _targets(data_dir, db_path, manifest)
        in_the_way = [p for p in targets if _in_use(p)]
        if in_the_way and not force:
            shown = ", ".join(str(p) for p in in_the_way)
            raise BackupError(f"would replace {shown}; stop and check, or pass --force to move them aside")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        replaced: list[Path] = []
        for path in targets:
            if path in in_the_way:
                aside = path.with_name(f"{path.name}.replaced-{stamp}")
                path.rename(aside)
                replaced.append(aside)
            elif path.is_dir():
                path.rmdir()  # empty: a fresh data dir's layout
        if db_path is not None:
            temp = db_path.with_name(f".{db_path.name}.restore-{token}")
            try:
                copy_private(source / SQLITE_FILE, temp)
                if hash_file(temp) != manifest.files[SQLITE_FILE].sha256:
                    raise BackupError(f"the copy of {SQLITE_FILE} differs from the backup (disk error?)")
                temp.rename(db_path)
            finally:
                temp.unlink(missing_ok=True)
            fsync_dir(db_path.parent)
        for part in ("keys", "blobs") if manifest.blobs == "included" else ("keys",):
            temp = data_dir / f".{part}.restore-{token}"
            try:
                copy_tree(source / part, temp)
                temp.rename(data_dir / part)
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        fsync_dir(data_dir)
    pg = (
        restore_command(config.resolved_database_url, source / PG_FILE)
        if manifest.database == "postgres"
        else None
    )
    return RestoreSummary(manifest, data_dir, db_path, replaced, pg)
