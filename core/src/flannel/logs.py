"""Structured logging for the daemon: logfmt text (default) or JSON lines, to stderr.

Text: ``time=2026-12-03T17:52:21.123Z level=info logger=flannel.daemon msg="lease acquired"
subnet=10.244.1.0/24``. JSON: the same keys in one object per line. Fields come from
``extra={...}`` on the logging call.

``-v N`` (flanneld's klog verbosity, 0..10): 0 shows INFO and above; N >= 1 also shows
messages logged at :func:`v_level` ``(1..N)`` (``log.log(v_level(2), ...)``; ``V(1)`` is
DEBUG).

:class:`RedactFilter` sits on the handler, so every record that reaches the output (from any
logger, with args, fields, tracebacks) has each registered secret replaced by ``***``.
Upstream logs the etcd password at start-up; we never do.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Iterable
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "KeyValueFormatter",
    "LibraryFilter",
    "RedactFilter",
    "register_secret",
    "setup_logging",
    "v_level",
    "verbosity_level",
]

MASK = "***"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def v_level(n: int) -> int:
    """The logging level of klog's ``V(n)`` (V(1) = DEBUG = 10, V(10) = 1)."""
    return max(1, logging.DEBUG + 1 - max(1, n))


def verbosity_level(verbosity: int) -> int:
    """The handler threshold for ``-v verbosity``."""
    if not 0 <= verbosity <= 10:
        raise ValueError(f"-v {verbosity} is out of range: use 0 (info) to 10 (everything)")
    return logging.INFO if verbosity == 0 else v_level(verbosity)


def _level_name(levelno: int) -> str:
    if levelno < logging.DEBUG:
        return f"v{logging.DEBUG + 1 - levelno}"
    return logging.getLevelName(levelno).lower()


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (anything not a standard LogRecord attribute)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class RedactFilter(logging.Filter):
    """Replaces every registered secret in a record: message, args, fields, traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret (empty strings are ignored; longest replaced first)."""
        if secret and secret not in self.secrets:
            self.secrets.append(secret)
            self.secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw parts, still redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        for key, value in fields_of(record).items():
            text = value if isinstance(value, str) else repr(value)
            if self.redact(text) != text:
                setattr(record, key, self.redact(text))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


NOISY_LIBRARIES = ("asyncio", "grpc", "aetcd", "pyroute2")


class LibraryFilter(logging.Filter):
    """Drops records below ``level`` from the named libraries' loggers.

    A handler filter, not a logger level: pyroute2 resets its logger's level when imported
    (and the daemon imports it late), which would undo ``setLevel``.
    """

    def __init__(self, names: Iterable[str], level: int) -> None:
        super().__init__()
        self.prefixes = tuple(names)
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        name = record.name
        return not any(name == p or name.startswith(p + ".") for p in self.prefixes)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """``time=... level=... logger=... msg="..." k=v ...`` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "time": _timestamp(record),
            "level": _level_name(record.levelno),
            "logger": record.name,
            "msg": record.getMessage(),
            **fields_of(record),
        }
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in parts.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += " exc=" + _logfmt_value(record.exc_text)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": _timestamp(record),
            "level": _level_name(record.levelno),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            obj[key] = value if isinstance(value, bool | int | float | str | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, ensure_ascii=False)


def register_secret(secret: str, logger: logging.Logger | None = None) -> None:
    """Redact ``secret`` from every handler of ``logger`` (default: root) from now on.

    Works whoever configured logging: a handler without a :class:`RedactFilter` gets one.
    """
    if not secret:
        return
    for handler in (logger or logging.getLogger()).handlers:
        redact = next((f for f in handler.filters if isinstance(f, RedactFilter)), None)
        if redact is None:
            redact = RedactFilter()
            handler.addFilter(redact)
        redact.add(secret)


def setup_logging(
    verbosity: int = 0,
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> RedactFilter:
    """Configure the root logger once for the daemon; returns the filter to add secrets later.

    Replaces handlers set before (so calling it twice does not double lines).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"--log-format {fmt!r} is unknown: use text or json")
    level = verbosity_level(verbosity)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    redact = RedactFilter(secrets)
    handler.addFilter(redact)
    handler.setLevel(level)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if verbosity < 6:  # chatty libraries show only warnings unless -v asks for a lot
        handler.addFilter(LibraryFilter(NOISY_LIBRARIES, logging.WARNING))
    return redact
