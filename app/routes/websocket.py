"""A Starlette websocket as the stream controller's Channel (app/service/streams.py)."""

from __future__ import annotations

from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from app.service.streams import ChannelClosed
from app.web.auth import bearer_token, query_key


class WebSocketChannel:
    """Frames of one websocket: binary audio and text control messages in, JSON text out."""

    def __init__(self, websocket: WebSocket, authenticated: bool) -> None:
        self.websocket = websocket
        self._authenticated = authenticated  # DS_API_KEY is set: the connection presented it (app/web/auth.py)

    async def accept(self) -> None:
        await self.websocket.accept()

    async def receive(self) -> bytes | str:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise ChannelClosed(message.get("code", 1000))
        if message.get("bytes") is not None:
            return bytes(message["bytes"])
        return str(message.get("text") or "")

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.websocket.send_json(message)
        except WebSocketDisconnect as exc:
            raise ChannelClosed(exc.code) from None

    async def close(self, code: int, reason: str = "") -> None:
        await self.websocket.close(code, reason=reason or None)

    def presented_key(self) -> bytes | None:
        """The API key this connection authenticated with (header or `?api_key=`), to bind resume tokens to it."""
        if not self._authenticated:
            return None
        scope = self.websocket.scope
        return bearer_token(scope["headers"]) or query_key(scope.get("query_string", b""))
