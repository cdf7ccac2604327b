"""The service's logs: one line per record, JSON or text, with secrets and personal data scrubbed.

Request bodies, arguments and keys are never logged on purpose; the redaction
filter is the safety net for what could slip into a message or a traceback: API keys,
bearer tokens, e-mail addresses, and the bound parameters that database errors quote.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Final

__all__ = ["JsonFormatter", "Redact", "log_config", "redact"]

_PATTERNS: Final = (
    (re.compile(r"cra_[0-9a-f]{16}_[A-Za-z0-9_-]+"), "cra_[REDACTED]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED JWT]"),
    (
        re.compile(
            r"(?i)(authorization|x-api-key|x-cra-approval-ticket)(['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+)?[^\s'\",}]+"
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[REDACTED EMAIL]"),
    # A database error quotes the statement's bound values on a line of their own, to its end.
    (re.compile(r"\[parameters: .*$", re.M), "[parameters: REDACTED]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redact(logging.Filter):
    """Scrubs the formatted message (and any traceback) of a record before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for ``cra serve`` and uvicorn."""
    formatter: dict[str, str] = (
        {"()": f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s", "datefmt": "%Y-%m-%dT%H:%M:%S"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "main",
        "filters": ["redact"],
    }
    level_name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": f"{Redact.__module__}.{Redact.__qualname__}"}},
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "loggers": {
            "cra": {"handlers": ["main"], "level": level_name, "propagate": False},
            "uvicorn": {"handlers": ["main"], "level": level_name, "propagate": False},
            "uvicorn.error": {"handlers": ["main"], "level": level_name, "propagate": False},
            "uvicorn.access": {"handlers": ["main"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["main"], "level": "WARNING"},
    }
