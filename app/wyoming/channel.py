"""A Wyoming connection as the stream controller's Channel.

In: `audio-chunk` payloads become s16le mono bytes at the rate `audio-start` declared (any sample width and
channel count is converted here; the rate is the stream input's to resample, with soxr, as on the websockets);
every other event becomes a JSON text `{"type", "data"}` for the dialect. Out: the dialect's `{"type", "data"}`
messages as events. Wyoming has no close codes: a close that is not a normal end sends an `error` event first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import numpy as np
from wyoming.event import Event, async_write_event

from app.service.stream_protocol import BadMessage, ChannelClosed, StreamClose
from app.wyoming.events import EventTooLarge, NotWyoming, read_event

log = logging.getLogger(__name__)

ERROR_CODES: dict[int, str] = {
    StreamClose.TRY_AGAIN_LATER: "too_many_streams",
    StreamClose.GOING_AWAY: "server_shutdown",
}


def to_mono16(audio: bytes, width: int, channels: int) -> bytes:
    """Interleaved PCM of 1-4 byte samples (8-bit unsigned, wider signed, as WAV) as 16-bit mono."""
    frame = width * channels
    if len(audio) % frame:
        raise BadMessage(
            f"an audio chunk of {len(audio)} bytes is not whole frames of {channels} x {width} bytes"
        )
    if width == 2 and channels == 1:
        return audio
    raw = np.frombuffer(audio, np.uint8).reshape(-1, channels, width).astype(np.int32)
    if width == 1:
        samples = (raw[..., 0] - 128) << 24
    else:  # little-endian signed: the top byte carries the sign
        shifted = [raw[..., i] << (8 * (4 - width + i)) for i in range(width)]
        samples = np.bitwise_or.reduce(np.stack(shifted), axis=0).astype(np.uint32).view(np.int32)
    mono = samples.astype(np.float64).mean(axis=1)
    return (mono / 65536).astype("<i2").tobytes()


class WyomingChannel:
    """One Wyoming client connection (TCP or Unix socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = str(writer.get_extra_info("peername") or "a local client")
        self._format: tuple[int, int, int] | None = None  # audio-start's (rate, width, channels)

    async def accept(self) -> None:
        return None  # a TCP connection is open once accepted

    async def receive(self) -> bytes | str:
        event = await self._next_event()
        if event.type == "audio-chunk":
            return self._audio(event)
        if event.type == "audio-start":
            self._format = _audio_format(event.data)
        return json.dumps({"type": event.type, "data": event.data})

    async def _next_event(self) -> Event:
        try:
            event = await read_event(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ChannelClosed("the client closed the connection mid-event") from None
        except NotWyoming as exc:
            log.warning(
                "wyoming: %s sent something that is not a Wyoming event stream (%s); closed", self.peer, exc
            )
            raise ChannelClosed(str(exc)) from None
        except EventTooLarge as exc:
            log.warning("wyoming: %s: %s; closed", self.peer, exc)
            await self._say({"type": "error", "data": {"text": str(exc), "code": "event_too_large"}})
            raise ChannelClosed(str(exc)) from None
        if event is None:
            raise ChannelClosed("the client closed the connection")
        return event

    def _audio(self, event: Event) -> bytes:
        if self._format is None:
            raise BadMessage(
                "an audio-chunk before audio-start; send audio-start with rate, width and channels"
            )
        chunk = _audio_format(event.data)
        if chunk[0] != self._format[0]:
            raise BadMessage(
                f"an audio-chunk at {chunk[0]} Hz in a stream that audio-start declared at "
                f"{self._format[0]} Hz"
            )
        return to_mono16(event.payload or b"", chunk[1], chunk[2])

    async def send(self, message: dict[str, Any]) -> None:
        await self._say(message)

    async def _say(self, message: dict[str, Any]) -> None:
        try:
            await async_write_event(Event(type=message["type"], data=message.get("data") or {}), self._writer)
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def close(self, code: int, reason: str = "") -> None:
        if code != StreamClose.NORMAL and reason:
            with contextlib.suppress(ChannelClosed):
                await self._say(
                    {"type": "error", "data": {"text": reason, "code": ERROR_CODES.get(code, "error")}}
                )
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    def presented_key(self) -> bytes | None:
        return None  # Wyoming has no authentication


def _audio_format(data: dict[str, Any]) -> tuple[int, int, int]:
    """(rate, width, channels) of an audio-start or audio-chunk event, checked (BadMessage otherwise)."""
    values = [data.get(key) for key in ("rate", "width", "channels")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise BadMessage(f"audio events need integer rate, width and channels; got {values}")
    rate, width, channels = (int(v) for v in values)  # type: ignore[arg-type]  # checked just above
    if not 1 <= width <= 4 or not 1 <= channels <= 8 or rate <= 0:
        raise BadMessage(f"unsupported audio format: rate {rate}, width {width} bytes, {channels} channels")
    return rate, width, channels
