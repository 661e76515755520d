"""``vox admin create-admin USERNAME`` and ``vox admin reset-password USERNAME``.

They open the configured store directly (the same config file, ``VOX_*`` variables and flags as
``vox serve``), so they work with no daemon running: the way into a fresh server, or back into
one whose admins lost their passwords. The password is generated and printed once on stdout
(alone on its line, so ``PW=$(vox admin reset-password bob)`` captures it), or read from stdin
with ``--password-stdin``. Messages go to stderr. Exit code 0 on success, 2 on any failure
(bad configuration, bad username or password, unknown account, unreachable database).
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from vox import config as config_mod
from vox import datadir
from vox.errors import VoxError
from vox.protocol.gateway import encode_event, envelope
from vox.pubsub import open_broker
from vox.services.passwords import HashParams, Passwords
from vox.storage import Store, open_engine

__all__ = ["add_parser", "run"]

EXIT_OK = 0
EXIT_FAILED = 2
USERNAME = re.compile(r"^[A-Za-z0-9_.\-]{2,32}$")
GENERATED_PASSWORD_BYTES = 18  # 24 URL-safe characters


class _Failed(Exception):
    pass


@dataclass(frozen=True)
class _Outcome:
    message: str
    password: str | None


def add_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="server administration from the command line")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    for name, text in (
        ("create-admin", "create a system admin account (or make an existing account one)"),
        ("reset-password", "set a new password for an account and sign it out everywhere"),
    ):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("username")
        cmd.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from stdin instead of generating one",
        )
        cmd.add_argument("--config", type=Path, help="TOML config file")
        cmd.add_argument("--data-dir", dest="data_dir")
        cmd.add_argument("--database-url", dest="database_url")
        cmd.add_argument("--redis-url", dest="redis_url")


def _password(from_stdin: bool) -> tuple[str, bool]:
    """(password, whether it was generated)."""
    if not from_stdin:
        return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES), True
    line = sys.stdin.readline(1024).rstrip("\r\n")
    if not 8 <= len(line) <= 128:
        raise _Failed("the password must be 8 to 128 characters")
    return line, False


async def _run(config: config_mod.Config, command: str, username: str, password: str) -> list[str] | str:
    keys = await trio.to_thread.run_sync(datadir.prepare, config.data_dir, config.jwt_algorithm)
    del keys  # only the layout matters here: a fresh data dir gets what `vox serve` would make
    passwords = Passwords(
        HashParams(config.argon2_time_cost, config.argon2_memory_kib, config.argon2_parallelism)
    )
    try:
        password_hash = await passwords.hash(password)
    finally:
        passwords.close()
    async with open_engine(config.resolved_database_url, pool_size=1) as engine:
        await engine.migrate()
        store = Store(engine)
        if command == "create-admin":
            user_id, created = await store.admin.create_admin(username, password_hash)
            return "created" if created else "promoted"
        reset = await store.admin.reset_password(username, password_hash)
        if reset is None:
            raise _Failed(f"no account named {username!r}")
        user_id, revoked = reset
    if revoked and config.redis_url:
        # Daemons sharing this Redis close the account's live gateway connections now; with the
        # in-process broker they notice at the next request (REST) or reconnect (gateway).
        async with open_broker(config.redis_url, prefix=config.redis_prefix) as broker:
            for session_id in revoked:
                event = envelope(encode_event("_session_revoked", {"session_id": session_id}))
                await broker.publish(f"user:{user_id}", event)
    return revoked


def run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, key) for key in ("data_dir", "database_url", "redis_url")}
    try:
        config = config_mod.load(args.config, overrides=overrides)
        if not USERNAME.match(args.username):
            raise _Failed("a username is 2-32 ASCII letters, digits, '_', '.' or '-'")
        password, generated = _password(args.password_stdin)
        result = trio.run(_run, config, args.admin_command, args.username, password)
    except (_Failed, VoxError) as exc:
        print(f"vox: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"vox: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.admin_command == "create-admin":
        if result == "created":
            print(f"vox: created system admin {args.username!r}", file=sys.stderr)
        else:
            print(
                f"vox: {args.username!r} already existed and is now a system admin (password unchanged)",
                file=sys.stderr,
            )
            generated = False  # its password was not changed: nothing to show
    else:
        print(
            f"vox: password of {args.username!r} reset; {len(result)} session(s) signed out", file=sys.stderr
        )
    if generated:
        print(password, flush=True)
    return EXIT_OK
