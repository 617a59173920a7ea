"""The service's log lines: text or one JSON object each (DS_LOG_FORMAT), uvicorn's included, and the API key
redacted from the URLs uvicorn logs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the access fields when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's own loggers: "uvicorn.error" logs each websocket handshake with its query string
# ("WebSocket /stream?api_key=..." [accepted]), "uvicorn.access" each HTTP request line.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)


class RedactApiKey(logging.Filter):
    """Replace `api_key=<key>` in a record's message with `api_key=***` (the key never reaches a log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message.lower():
            record.msg, record.args = _API_KEY_IN_URL.sub(r"\1***", message), None
        return True


def redact_api_keys() -> None:
    """Install RedactApiKey on uvicorn's loggers (idempotent). Filters on a logger see only its own records."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKey) for f in logger.filters):
            logger.addFilter(RedactApiKey())


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """The service's log format: `text` (as before) or `json` (DS_LOG_FORMAT=json), uvicorn's lines included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":  # uvicorn set its own text handlers (propagate=False) before importing the app
        for name in ("uvicorn", "uvicorn.access"):
            logger = logging.getLogger(name)
            if logger.handlers:  # none: switched off (uvicorn --no-access-log); keep it off
                logger.handlers = [handler]
    redact_api_keys()
