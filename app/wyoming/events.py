"""Reading Wyoming events with bounds: a JSON header line, optional extra data, optional binary payload.

The `wyoming` package's own `async_read_event` reads whatever lengths the header claims (a header saying
`payload_length: 10**10` makes it buffer until memory runs out) and turns every malformed line into None, the
same as a clean end of stream. A server facing a network needs both told apart and bounded, so the framing is
read here (after the protocol's README: header line, `data_length` bytes of JSON, `payload_length` bytes), and
the events are the package's own `Event`s; writing uses the package's `async_write_event` unchanged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event

MAX_LINE_BYTES = 64 * 1024  # a header line is ~100 bytes; the StreamReader's limit (asyncio's default too)
MAX_DATA_BYTES = 64 * 1024  # an event's JSON data (describe's info is the largest, a few KB)
MAX_PAYLOAD_BYTES = 1024 * 1024  # an audio chunk: 32 s of 16 kHz 16-bit mono; Home Assistant sends ~64 ms


class NotWyoming(ValueError):
    """The bytes are not a Wyoming event stream (an HTTP request, a port scanner, garbage)."""


class EventTooLarge(ValueError):
    """An event claims more data or payload than the server takes."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event; None at a clean end of the stream. Raises NotWyoming, EventTooLarge."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError, wrapped: no newline within MAX_LINE_BYTES
        raise NotWyoming(f"a line longer than {MAX_LINE_BYTES} bytes") from None
    if not line:
        return None
    header = _header(line)
    data: dict[str, Any] = dict(header.get("data") or {})
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    if data_length:
        extra = await reader.readexactly(data_length)
        try:
            more = json.loads(extra)
        except ValueError:
            raise NotWyoming("the event's data is not JSON") from None
        if not isinstance(more, dict):
            raise NotWyoming("the event's data is not a JSON object")
        data.update(more)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


def _header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise NotWyoming(f"not a JSON event header: {line[:40]!r}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise NotWyoming(f"an event header needs a string `type`: {line[:40]!r}")
    if header.get("data") is not None and not isinstance(header["data"], dict):
        raise NotWyoming("an event's `data` must be a JSON object")
    return header


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise NotWyoming(f"`{key}` must be a byte count, not {value!r}")
    if value > limit:
        raise EventTooLarge(f"a {header['type']} event with {key} {value}; the limit is {limit} bytes")
    return value
