"""The service's log lines: text or one JSON object each (DS_LOG_FORMAT), uvicorn's included, and the API key
redacted from the URLs uvicorn logs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import unquote_plus


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
# A URL's query string in a log line: what follows `?` up to white space or a quote.
_QUERY = re.compile(r"\?([^\s\"']+)")
KEY_PARAMETER = "api_key"
# Libraries that log message payloads (frames, so transcripts) or handshakes at DEBUG: kept at INFO whatever
# DS_LOG_LEVEL says, so the README's "never audio or transcripts" holds at every level.
PAYLOAD_LOGGERS = ("websockets", "uvicorn.protocols", "wsproto", "httpcore", "h11", "python_multipart")


def _redact_query(match: re.Match[str]) -> str:
    # The key's parameter is found by its decoded name, as the auth middleware's parse_qsl reads it: `api%5Fkey`
    # and `%61pi_key` authenticate too, so they must be redacted too.
    pairs = []
    for pair in match[1].split("&"):
        name, equals, _value = pair.partition("=")
        secret = equals and unquote_plus(name) == KEY_PARAMETER
        pairs.append(f"{name}=***" if secret else pair)
    return "?" + "&".join(pairs)


def redact(text: str) -> str:
    """`text` with the value of every query parameter named api_key (in any spelling) replaced by ***."""
    return _QUERY.sub(_redact_query, text) if "?" in text else text


class RedactApiKey(logging.Filter):
    """Redact API keys in a record's message and in its arguments (kept as arguments: uvicorn's access formatter
    unpacks them, and emptying them made every such line a logging error's traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


class DropFrameLogs(logging.Filter):
    """Drop the websockets library's DEBUG lines: uvicorn hands it the "uvicorn.error" logger, and it logs every
    frame there (`> TEXT '{"type":"final","text":...}'`), so at DS_LOG_LEVEL=debug transcripts reached the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        source = record.pathname.replace("\\", "/")
        return not (record.levelno <= logging.DEBUG and ("/websockets/" in source or "/wsproto/" in source))


def keep_payloads_out() -> None:
    """No logger writes message payloads, whatever the level (idempotent)."""
    for name in PAYLOAD_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropFrameLogs) for f in logger.filters):
            logger.addFilter(DropFrameLogs())


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
    keep_payloads_out()
    redact_api_keys()
