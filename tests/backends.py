"""Which real backends this machine has, and how tests reach them.

PostgreSQL and Redis are used for real. Where one is absent the tests that need it are skipped
with a reason naming the address that was tried. Override with VOX_TEST_POSTGRES_URL and
VOX_TEST_REDIS_URL (set either to "off" to skip those cases on purpose).
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
import uuid

POSTGRES_URL = os.environ.get("VOX_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> str | None:
    """None when a TCP connection to the URL's host works, else the reason it does not."""
    if url == "off":
        return "disabled by environment"
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc})"


@functools.cache
def postgres_skip_reason() -> str | None:
    reason = _reachable(POSTGRES_URL, 5432)
    if reason is not None:
        return f"PostgreSQL not available: {reason}"
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL not available: {exc}"
    return None


@functools.cache
def redis_skip_reason() -> str | None:
    reason = _reachable(REDIS_URL, 6379)
    if reason is not None:
        return f"Redis not available: {reason}"
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        return f"Redis not available: {exc}"
    return None


def make_pg_schema() -> tuple[str, str]:
    """Create a fresh schema; return (schema, database_url whose search_path is that schema)."""
    import psycopg

    schema = f"vox_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    return schema, f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
