"""A Starlette websocket as the stream controller's Channel (app/service/streams.py).

Why a reader task: uvicorn reads a websocket only as fast as the app takes its messages (its protocol
implementations pause the socket while a message waits for the app; the legacy one once `ws_max_queue` wait), and
a client's ping is answered, and its close seen, only when uvicorn has read that far. A stream whose audio arrives
faster than the model decodes it would leave the pings behind the unread audio, so the client's keepalive would
drop it, and the server would go on decoding for a client already gone. The reader takes every message off the
connection as it arrives, into this channel's own queue, bounded by DS_STREAM_BACKLOG_SECONDS of audio: pongs go
out at once, and a disconnect is seen at once, whatever the backlog. At the bound the reader stops until the
stream has caught up a little, as uvicorn itself would: the memory a stream holds stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from app.service.stream_protocol import ChannelClosed
from app.settings import Settings
from app.web.auth import bearer_token, query_key

PCM_BYTES_PER_SECOND = 32000  # DS_STREAM_BACKLOG_SECONDS counts seconds of 16 kHz s16le
# What a queued message costs beyond its bytes (the objects that hold it), so that a flood of tiny frames is
# bounded as well as a few large ones.
MESSAGE_OVERHEAD = 64
# A reader stopped at the bound starts again once the inbox is down to this fraction of it: a client that keeps
# the bound full costs a reader task per quarter of the backlog, not one per message.
READ_AGAIN_AT = 0.75


class WebSocketChannel:
    """Frames of one websocket: binary audio and text control messages in, JSON text out."""

    def __init__(self, websocket: WebSocket, authenticated: bool, backlog_limit: int) -> None:
        self.websocket = websocket
        self._authenticated = authenticated  # DS_API_KEY is set: the connection presented it (app/web/auth.py)
        self._limit = backlog_limit
        self._inbox: deque[bytes | str] = deque()
        self._queued = 0  # the inbox's cost in bytes (see MESSAGE_OVERHEAD)
        self._arrived = asyncio.Event()  # set when the inbox has a message or the reader has stopped
        self._reader: asyncio.Task[None] | None = None
        self._closed_code: int | None = None  # the client's close code once the reader has seen it go
        self._failure: BaseException | None = None

    @classmethod
    def for_settings(cls, websocket: WebSocket, settings: Settings) -> WebSocketChannel:
        """The channel a route opens: authenticated when DS_API_KEY is set, its backlog DS_STREAM_BACKLOG_SECONDS."""
        limit = int(settings.stream_backlog_seconds * PCM_BYTES_PER_SECOND)
        return cls(websocket, authenticated=bool(settings.api_key), backlog_limit=limit)

    async def accept(self) -> None:
        await self.websocket.accept()
        self._read_on()

    async def receive(self) -> bytes | str:
        """The next message; ChannelClosed as soon as the client has gone, even with messages still queued: it
        cannot receive a reply, so its backlog is not worth decoding (a resumable stream resends it)."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closed_code is not None:
                raise ChannelClosed(self._closed_code)
            if self._inbox:
                message = self._inbox.popleft()
                self._queued -= _cost(message)
                self._read_on()
                return message
            self._arrived.clear()
            await self._arrived.wait()

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.websocket.send_json(message)
        except WebSocketDisconnect as exc:
            raise ChannelClosed(exc.code) from None

    async def close(self, code: int, reason: str = "") -> None:
        # After the server's close nothing the client sends matters; the reader would only wait for the end.
        if self._reader is not None:
            self._reader.cancel()
        try:
            await self.websocket.close(code, reason=reason or None)
        except WebSocketDisconnect:
            # The client closed first, between our last message and this close (Vosk's clients hang up as soon
            # as the final arrives): the stream ended normally, there is nobody left to tell.
            return

    def presented_key(self) -> bytes | None:
        """The API key this connection authenticated with (header or `?api_key=`), to bind resume tokens to it."""
        if not self._authenticated:
            return None
        scope = self.websocket.scope
        return bearer_token(scope["headers"]) or query_key(scope.get("query_string", b""))

    def _read_on(self) -> None:
        """Keep a reader running while the inbox has room and the client is there. A reader never waits for
        room: it ends at the bound and a receive() starts another (READ_AGAIN_AT), so no task outlives the stream
        in a wait nobody would end (one in websocket.receive() ends when uvicorn closes the connection)."""
        if self._reader is None and self._closed_code is None and self._failure is None:
            if self._queued <= self._limit * READ_AGAIN_AT:
                self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while self._queued < self._limit:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self._closed_code = int(message.get("code") or 1005)
                    return
                frame: bytes | str = (
                    bytes(message["bytes"]) if message.get("bytes") is not None else str(message.get("text") or "")
                )
                self._inbox.append(frame)
                self._queued += _cost(frame)
                self._arrived.set()
        except Exception as exc:  # a state error or a bug: the stream's receive raises it, the stream ends
            self._failure = exc
        finally:
            self._reader = None
            self._arrived.set()


def _cost(message: bytes | str) -> int:
    return len(message) + MESSAGE_OVERHEAD
