"""``vox backup PATH`` and ``vox restore PATH`` (logic in vox.backup).

Configuration is loaded as for ``vox serve`` (``--config``, ``VOX_*`` variables, ``--data-dir``,
``--database-url``), so the commands find the same database, keys and blobs the daemon uses.
The summary goes to stdout, errors to stderr; exit code 0 on success, 2 on any failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vox import config as config_mod
from vox.backup import BackupOptions, BackupSummary, RestoreSummary, make_backup, restore_backup
from vox.errors import VoxError

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("backup", "restore")
EXIT_OK = 0
EXIT_FAILED = 2


def _config_flags(cmd: Any) -> None:
    cmd.add_argument("--config", type=Path, help="TOML config file")
    cmd.add_argument("--data-dir", dest="data_dir")
    cmd.add_argument("--database-url", dest="database_url")


def add_parsers(sub: Any) -> None:
    backup = sub.add_parser(
        "backup", help="write a consistent backup (database, keys, blobs) to a new directory, online"
    )
    backup.add_argument("path", type=Path, help="the backup directory to create (must not exist)")
    backup.add_argument("--no-blobs", action="store_true", help="leave local attachments and emoji out")
    _config_flags(backup)
    restore = sub.add_parser("restore", help="restore a backup into the data directory (daemon stopped)")
    restore.add_argument("path", type=Path, help="a directory written by `vox backup`")
    restore.add_argument(
        "--force",
        action="store_true",
        help="rename existing database, keys and blobs aside instead of refusing",
    )
    _config_flags(restore)


def _mib(size: int) -> str:
    return f"{size / 1_048_576:.1f} MiB"


def _print_backup(summary: BackupSummary) -> None:
    m = summary.manifest
    keys = sum(1 for name in m.files if name.startswith("keys/"))
    blobs = sum(1 for name in m.files if name.startswith("blobs/"))
    rows = " ".join(f"{table}={count}" for table, count in m.counts.items())
    check = "integrity ok" if m.database == "sqlite" else "pg_restore --list ok"
    print(f"vox: backup written to {summary.path} in {summary.duration_s:.2f} s")
    print(f"  database: {m.database}, schema version {m.schema_version}, {check}")
    print(f"  rows: {rows}")
    blob_text = {
        "included": f"included ({blobs} files)",
        "excluded": "not included",
        "s3": "in S3, not included",
    }
    print(f"  keys: {keys} files; blobs: {blob_text.get(m.blobs, m.blobs)}")
    print(f"  size: {_mib(summary.total_bytes)} in {len(m.files) + 1} files")


def _print_restore(summary: RestoreSummary) -> None:
    m = summary.manifest
    print(f"vox: restored the backup of {m.created_at} into {summary.data_dir}")
    print(f"  schema version {m.schema_version}; rows: {' '.join(f'{t}={n}' for t, n in m.counts.items())}")
    if summary.database_path is not None:
        print(f"  database: {summary.database_path}")
    for path in summary.replaced:
        print(f"  moved aside: {path}")
    if summary.pg_restore is not None:
        print("  keys restored; now load the database (into an empty database or schema):")
        print(f"  {summary.pg_restore}")


def run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, key) for key in ("data_dir", "database_url")}
    try:
        config = config_mod.load(args.config, overrides=overrides)
        if args.command == "backup":
            _print_backup(make_backup(config, args.path, BackupOptions(include_blobs=not args.no_blobs)))
        else:
            _print_restore(restore_backup(config, args.path, force=args.force))
    except VoxError as exc:
        print(f"vox: {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"vox: {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
