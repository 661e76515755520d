"""``vox serve``, ``vox config example``, ``vox admin ...`` (vox.admin_cli) and ``vox backup`` /
``vox restore`` (vox.backup_cli), ``vox federation records`` (vox.federation_cli)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from vox import admin_cli, backup_cli, federation_cli, logs
from vox import config as config_mod
from vox.errors import ConfigError, VoxError

log = logging.getLogger("vox.cli")

# Generation-0 collections at CPython's default threshold (700) fire every few hundred allocations;
# fanning one event out to many connections allocates a few objects per delivery, so under load
# the collector ran most of the time (an A/B run halved CPU per delivery with this raised).
GC_THRESHOLDS = (50_000, 20, 100)

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vox", description="Vox: self-hosted voice and text chat server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--data-dir", dest="data_dir")
    serve.add_argument("--host")
    serve.add_argument("--rest-port", dest="rest_port")
    serve.add_argument("--gateway-port", dest="gateway_port")
    serve.add_argument("--media-port", dest="media_port")
    serve.add_argument("--database-url", dest="database_url")
    serve.add_argument("--redis-url", dest="redis_url")
    serve.add_argument(
        "--tls-self-signed",
        dest="tls_self_signed",
        action="store_true",
        default=None,
        help="serve TLS with a self-signed certificate generated in the data directory (testing)",
    )
    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("example", help="print a commented example vox.toml")
    admin_cli.add_parser(sub)
    backup_cli.add_parsers(sub)
    federation_cli.add_parser(sub)
    return parser


async def _serve(config: config_mod.Config) -> None:
    from vox.nurseries.root import run_daemon

    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    log.info("signal received", extra={"fields": {"signal": signal.Signals(signum).name}})
                    stop.set()

        await nursery.start(on_signals)
        async with trio.open_nursery() as daemon:
            addresses = await daemon.start(run_daemon, config, stop)
            _tune_gc()
            print(addresses.ready_line(), flush=True)
        # The daemon drained and returned; only the signal watcher is left.
        nursery.cancel_scope.cancel()


def _tune_gc() -> None:
    """Once started: freeze what startup built (modules, routes, config live for the whole run,
    so no collection needs to scan them again) and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    # Nurseries nest: an error from inside the daemon arrives as a group within a group.
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        print(config_mod.example())
        return 0
    if args.command == "admin":
        return admin_cli.run(args)
    if args.command in backup_cli.COMMANDS:
        return backup_cli.run(args)
    if args.command in federation_cli.COMMANDS:
        return federation_cli.run(args)
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "data_dir",
            "host",
            "rest_port",
            "gateway_port",
            "media_port",
            "database_url",
            "redis_url",
            "tls_self_signed",
        )
    }
    try:
        config = config_mod.load(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"vox: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    writer = logs.configure(config.log_level, config.log_format)
    status = 0
    try:
        trio.run(_serve, config)
    except* ConfigError as group:
        print(f"vox: invalid configuration: {_first(group)}", file=sys.stderr)
        status = EXIT_CONFIG
    except* VoxError as group:
        log.error("fatal: %s", _first(group))
        status = 1
    finally:
        writer.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
