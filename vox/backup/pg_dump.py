"""PostgreSQL: ``pg_dump --format=custom`` from an exported snapshot, never showing the password.

The password is taken out of the URL and handed to pg_dump in ``PGPASSWORD`` (the environment of
the child only), so it appears neither in the process list nor in any message. When the URL sets
``search_path`` through ``options`` (one schema per deployment), only that schema is dumped.
The dump reads the snapshot exported by a transaction of ours, in which the manifest's schema
version and row counts are read too, so they describe exactly what the dump holds.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from vox.backup.sqlite_copy import COUNTED_TABLES
from vox.errors import BackupError
from vox.storage.postgres import describe_url

__all__ = ["dump_database", "instructions", "restore_command", "split_password"]

_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")
DUMP_TIMEOUT_S = 3600


def split_password(url: str) -> tuple[str, str | None, str | None]:
    """(conninfo without the password, the password or None, the schema of search_path or None)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise BackupError(f"database_url is not a valid PostgreSQL URL ({describe_url(url)})") from exc
    password = params.pop("password", None)
    found = _SEARCH_PATH.search(str(params.get("options") or ""))
    schema = found.group(1).strip("\"'") if found else None
    return (
        make_conninfo("", **{k: v for k, v in params.items() if v is not None}),
        (None if password is None else str(password)),
        schema,
    )


def _command(binary: str, conninfo: str, schema: str | None, target: str, snapshot: str | None) -> list[str]:
    cmd = [binary, "--format=custom", "--no-password", f"--file={target}", f"--dbname={conninfo}"]
    if schema:
        cmd.append(f"--schema={schema}")
    if snapshot:
        cmd.append(f"--snapshot={snapshot}")
    return cmd


def instructions(url: str, target: Path) -> str:
    """What to run by hand when pg_dump is not installed here (the password left out)."""
    conninfo, password, schema = split_password(url)
    cmd = shlex.join(_command("pg_dump", conninfo, schema, str(target / "database.dump"), None))
    lines = [
        "pg_dump is not on PATH; install the PostgreSQL client tools (same major version as the",
        "server or newer) and run `vox backup` again, or dump by hand:",
        "",
        f"  {cmd}",
    ]
    if password is not None:
        lines.append("  (with the password in PGPASSWORD or ~/.pgpass)")
    lines += ["", "and copy the data directory's keys/ (and blobs/) beside the dump."]
    return "\n".join(lines)


def restore_command(url: str, dump: Path) -> str:
    """The pg_restore command that loads ``dump`` into the configured database (no password)."""
    conninfo, _, _ = split_password(url)
    return shlex.join(
        [
            "pg_restore",
            "--no-owner",
            "--clean",
            "--if-exists",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={conninfo}",
            str(dump),
        ]
    )


def dump_database(url: str, target: Path, *, pg_dump: str | None = None) -> tuple[int, dict[str, int]]:
    """Dump into the new file ``target``; return (schema version, row counts) of the same snapshot."""
    binary = pg_dump or shutil.which("pg_dump")
    if binary is None:
        raise BackupError(instructions(url, target.parent))
    conninfo, password, schema = split_password(url)
    env = {**os.environ}
    if password is not None:
        env["PGPASSWORD"] = password
    try:
        with psycopg.connect(url, autocommit=False) as db:
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = db.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else None
            version_row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            version = int(version_row[0]) if version_row else 0
            counts: dict[str, int] = {}
            for table in COUNTED_TABLES:
                counted = db.execute(f"SELECT count(*) FROM {table}").fetchone()
                counts[table] = int(counted[0]) if counted else 0
            # The snapshot lives as long as this transaction: pg_dump runs inside it.
            done = subprocess.run(  # noqa: S603 - argv list from our config, no shell
                _command(binary, conninfo, schema, str(target), snapshot),
                env=env,
                capture_output=True,
                text=True,
                timeout=DUMP_TIMEOUT_S,
                check=False,
            )
            db.rollback()
    except psycopg.Error as exc:
        raise BackupError(f"cannot read {describe_url(url)}: {exc}") from exc
    except subprocess.TimeoutExpired:
        raise BackupError(f"pg_dump did not finish within {DUMP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = done.stderr.strip().replace(password, "***") if password else done.stderr.strip()
        raise BackupError(f"pg_dump failed (exit {done.returncode}): {message}")
    _check_dump(target)
    return version, counts


def _check_dump(target: Path) -> None:
    """pg_restore must be able to read the archive's table of contents."""
    lister = shutil.which("pg_restore")
    if lister is None:
        return  # nothing to check with; the dump's exit status is all we have
    listed = subprocess.run(  # noqa: S603 - argv list, no shell
        [lister, "--list", str(target)], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0 or "TABLE DATA" not in listed.stdout:
        raise BackupError(f"pg_restore cannot read the dump {target}: {listed.stderr.strip()}")
