"""``vox federation records``: the DNS records that publish this server to its peers.

The TXT record carries the public half of ``data_dir/keys/federation_ed25519.pem`` (generated
here if the server never started, as the daemon would); the SRV record, printed when ``--target``
is given, names the host and port where peers reach this server's REST listener. The output is
zone-file lines an operator pastes into their DNS (docs/federation.md, "Discovery").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vox import config as config_mod
from vox import datadir
from vox.errors import ConfigError, VoxError
from vox.protocol.federation import is_valid_domain, public_key_b64

__all__ = ["COMMANDS", "add_parser", "records", "run"]

COMMANDS = ("federation",)
EXIT_OK = 0
EXIT_FAILED = 2


def add_parser(sub: Any) -> None:
    federation = sub.add_parser("federation", help="federation helpers")
    commands = federation.add_subparsers(dest="federation_command", required=True)
    rec = commands.add_parser("records", help="print the DNS records (TXT key, SRV target) to publish")
    rec.add_argument(
        "--target",
        help="host:port where peers reach this server's REST listener (prints the SRV record; "
        "without it peers use https://<server_name> on port 443)",
    )
    rec.add_argument("--ttl", type=int, default=3600, help="TTL of the records in seconds (default 3600)")
    rec.add_argument("--config", type=Path, help="TOML config file")
    rec.add_argument("--data-dir", dest="data_dir")


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.rstrip(".").lower()
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535 or not is_valid_domain(host):
        raise ConfigError("--target", 'must be "host.name:port", e.g. "vox1.chat.example.org:8443"')
    return host, int(port)


def records(server_name: str, public_key: str, *, target: str | None, ttl: int) -> list[str]:
    """Zone-file lines: the SRV record (when ``target`` is given) and the TXT key record."""
    if ttl <= 0:
        raise ConfigError("--ttl", "must be greater than 0")
    lines = []
    if target is not None:
        host, port = _target(target)
        lines.append(f"_vox._tcp.{server_name}. {ttl} IN SRV 10 5 {port} {host}.")
    lines.append(f'_vox-key.{server_name}. {ttl} IN TXT "v=vox1; k=ed25519; p={public_key}"')
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args.config, overrides={"data_dir": args.data_dir})
        if not config.server_name:
            raise ConfigError("server_name", "is empty: federation is off, so there is nothing to publish")
        keys = datadir.prepare(config.data_dir, config.jwt_algorithm)
        lines = records(
            config.server_name, public_key_b64(keys.federation_key), target=args.target, ttl=args.ttl
        )
    except VoxError as exc:
        print(f"vox: federation records: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK
