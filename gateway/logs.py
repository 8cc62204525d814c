"""Structured logs: one line per event, `key=value` pairs, the call ID on every call line.

    2026-05-29T12:10:00.123Z INFO call.answered call_id=call_abc from=+1555 room=r1
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call, renaming keys that LogRecord reserves (message, name, ...)."""
    return {(k + "_" if k in _STANDARD else k): v for k, v in values.items()}


def _fmt(value: Any) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "=\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head = f"{t}.{int(record.msecs):03d}Z {record.levelname} {record.getMessage()}"
        extras = [f"{k}={_fmt(v)}" for k, v in record.__dict__.items() if k not in _STANDARD]
        line = " ".join([head, *extras])
        if record.name == "pjsip":
            line += " src=pjsip"
        if record.exc_info:
            line += " exc=" + _fmt(self.formatException(record.exc_info))
        return line


class QuietBadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line over 8190 bytes, a malformed
    header), and a client that hangs up in the middle of its body, at ERROR with a
    traceback. Hostile input is normal input for a server on a network: one line is the
    event (`http.bad_request` with the reason, `http.client_gone`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args, record.exc_info = "http.bad_request", (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.reason = (exc.message or type(exc).__name__)[:200]
        elif isinstance(exc, ConnectionResetError):
            # The client hung up while a handler read its body (a Content-Length larger than
            # what it sent, then gone): its business, not a fault of ours.
            record.msg, record.args, record.exc_info = "http.client_gone", (), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
