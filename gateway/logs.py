"""Structured logs: `key=value` text for people, one JSON object a line for machines.

Always to stderr (the journal, under systemd); with a log file also there, rotated by size
so that a long outage that logs every retry cannot fill the disk.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _formatter(as_json: bool) -> logging.Formatter:
    if as_json:
        return _JsonFormatter()
    fmt = logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    fmt.converter = time.gmtime
    return fmt


class LogFileError(OSError):
    """The log file cannot be opened; the message names it and why."""


def setup_logging(
    level: str = "INFO",
    as_json: bool = False,
    log_file: str | None = None,
    max_mb: int = 100,
    backups: int = 5,
) -> None:
    """Logs to stderr, and to `log_file` (rotated at `max_mb`, `backups` kept) when given."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        path = Path(log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                logging.handlers.RotatingFileHandler(
                    path, maxBytes=max_mb * 2**20, backupCount=backups, encoding="utf-8"
                )
            )
        except OSError as err:
            raise LogFileError(f"log_file {path}: cannot open it: {err.strerror}") from None
    for handler in handlers:
        handler.setFormatter(_formatter(as_json))
    root = logging.getLogger()
    for old in root.handlers:
        if old not in handlers:
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level)
