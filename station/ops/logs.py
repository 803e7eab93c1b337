"""Logging for ``station run``: human-readable lines (the default) or one JSON object per line.

A line about a series carries its Study and Series Instance UID and the calling AE as
record attributes (``extra=series_fields(...)`` at the call site), which the JSON format
writes as ``study_uid``, ``series_uid`` and ``calling_ae``. Patient names and other patient
data are never logged at INFO or above; UIDs and AE titles are.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum

SERIES_FIELDS = ("study_uid", "series_uid", "calling_ae")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(StrEnum):
    human = "human"
    json = "json"


def series_fields(study_uid: str, series_uid: str, calling_ae: str) -> dict[str, str]:
    """The ``extra=`` of a log call about one series."""
    return {"study_uid": study_uid, "series_uid": series_uid, "calling_ae": calling_ae}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}`` plus the series fields a record carries,
    and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in SERIES_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: LogFormat) -> None:
    """Log to standard error (journald takes it from there under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format is LogFormat.json else logging.Formatter(HUMAN_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def logging_in_force() -> tuple[str, LogFormat]:
    """The level and format ``setup_logging`` was given (for processes started from here)."""
    root = logging.getLogger()
    formats = [h.formatter for h in root.handlers]
    json_format = any(isinstance(f, JsonFormatter) for f in formats)
    return logging.getLevelName(root.level), LogFormat.json if json_format else LogFormat.human
