"""Log handlers of a node or the aggregator: human text on stderr, a rotated JSON-lines file.

``configure(stderr_level, config, role=..., name=...)`` replaces the handlers it installed
before (so it can run once before the config is read and again after). The file is created
with mode 0640 (like the audit log: readable by a log shipper's group, never by others).

A JSON line carries ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
``message``, the server's name under its role (``"node": "org-a"`` or ``"aggregator":
"operator"``), and whatever structured fields the code passes with ``extra=`` (``request_id``,
``analyst``, ``operation``, ``dataset``, ``decision``, ``duration_ms``, ...). Privacy: the code
logs names, operations and status, never data values, aggregates or key material; the
messages of errors leaving a node carry no data values either (``trustspace.errors``).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import logging.handlers
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from trustspace._config import LoggingConfig
from trustspace.errors import ConfigError

__all__ = [
    "LOG_FILE_MODE",
    "MAX_FIELD",
    "MAX_MESSAGE",
    "JsonLineFormatter",
    "TextFormatter",
    "configure",
    "cut",
]

#: Group-readable (a log shipper in the server's group may read it), never world-readable.
LOG_FILE_MODE = 0o640
_OURS = "_trustspace_handler"  # marks the handlers ``configure`` installed
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Characters of a message, and of a structured field, a line keeps: a signed query may be
#: megabytes, and the names in it (request id, dataset) must not flood the log.
MAX_MESSAGE = 2000
MAX_FIELD = 128
#: Control characters are escaped in text lines: an analyst-chosen name cannot forge a line.
_ESCAPES = {c: f"\\x{c:02x}" for c in range(32) if c != 9} | {10: "\\n", 13: "\\r"}


def cut(value: object, limit: int = MAX_FIELD) -> str:
    """``value`` as text of at most ``limit`` characters (what is cut is counted).

    >>> cut("x" * 300, 10)
    'xxxxxxxxxx...(290 more)'
    """
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


def _utc(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE`` with the time in ISO 8601 UTC."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = cut(record.message, MAX_MESSAGE).translate(_ESCAPES)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, the server, the extras."""

    def __init__(self, static: dict[str, str] | None = None) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields=dict(static or {}),
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Cut the message and every long text field (tracebacks are kept whole)."""
        for key, value in log_data.items():
            if isinstance(value, str) and key not in ("exc_info", "stack_info"):
                log_data[key] = cut(value, MAX_MESSAGE if key == "message" else MAX_FIELD)
        return log_data

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record)


class _ModeMixin:
    """Open the log file with ``LOG_FILE_MODE`` when it is created (also after a rotation)."""

    baseFilename: str
    encoding: str | None
    errors: str | None

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


class _RotatingFile(_ModeMixin, logging.handlers.RotatingFileHandler):
    pass


class _WatchedFile(_ModeMixin, logging.handlers.WatchedFileHandler):
    pass


def _file_handler(config: LoggingConfig, where: str) -> logging.Handler:
    assert config.file is not None
    path = config.file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if config.rotate == "external":
            return _WatchedFile(path, encoding="utf-8")
        return _RotatingFile(
            path, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(
            f"{where}: key logging.file = {str(path)!r}: cannot open the log file "
            f"({exc.strerror}); check that its folder exists and is writable by this user"
        ) from None


def _level(name: str) -> int:
    value = logging.getLevelName(name.upper())
    return value if isinstance(value, int) else logging.INFO


def configure(
    stderr_level: str,
    config: LoggingConfig | None = None,
    *,
    role: str = "",
    name: str = "",
    where: str = "<config>",
    stream: Any = None,
) -> logging.Handler | None:
    """Install the stderr handler (text, ``stderr_level``) and, with ``config.file``, the log
    file's handler (``config.format``, ``config.level``); returns the file handler.

    ``role``/``name`` (``"node"``, ``"org-a"``) become a field of every JSON line. Handlers
    installed by an earlier call are closed and replaced; others are left alone.

    Raises:
        ConfigError: the log file cannot be opened (names ``where`` and the key).
    """
    root = logging.getLogger()
    file_handler = None
    if config is not None and config.file is not None:
        file_handler = _file_handler(config, where)  # before removing anything: may raise
        file_handler.setLevel(_level(config.level))
        if config.format == "json":
            file_handler.setFormatter(JsonLineFormatter({role: name} if role else None))
        else:
            file_handler.setFormatter(TextFormatter())
        setattr(file_handler, _OURS, True)
    for h in list(root.handlers):
        if getattr(h, _OURS, False):
            root.removeHandler(h)
            h.close()
    err = logging.StreamHandler(stream if stream is not None else sys.stderr)
    err.setLevel(_level(stderr_level))
    err.setFormatter(TextFormatter())
    setattr(err, _OURS, True)
    root.addHandler(err)
    levels = [err.level]
    if file_handler is not None:
        root.addHandler(file_handler)
        levels.append(file_handler.level)
    root.setLevel(min(levels))
    return file_handler
