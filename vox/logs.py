"""Structured logging: one line per record, ``key=value`` text or JSON objects.

Callers pass facts as ``extra={"fields": {...}}``; values are rendered, never the request body,
and no caller puts a token, password or key into a log record.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _render(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [ts, record.levelname.lower(), record.name, _render(record.getMessage())]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{k}={_render(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread with only the message rendered here: formatting a
    line and writing it to stderr (a syscall per line) stay off the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Arguments may be mutated after the call returns; the message is fixed now.
        record.msg = record.getMessage()
        record.args = None
        return record


class LogWriter:
    """The thread that formats and writes log lines; ``stop`` flushes what is queued."""

    def __init__(self, handler: logging.Handler) -> None:
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self.queue, handler, respect_handler_level=True)
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()


def configure(level: str, fmt: str) -> LogWriter:
    """Send Vox's logs to stderr (stdout carries only the ready line), written by a thread."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    writer = LogWriter(handler)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(writer.queue)]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # hypercorn logs its own "Running on" lines; Vox reports binds itself.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    return writer
