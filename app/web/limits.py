"""Upload cap enforced while the body streams in, before anything is parsed or spooled to disk."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.web.errors import send_error, upload_too_large


class _BodyTooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: 413 as soon as Content-Length or the bytes received exceed `max_bytes`.

    Written as raw ASGI because the multipart parser would otherwise read (and spool) the whole body before
    any route code runs, and FastAPI turns errors raised while parsing into a generic 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, send)
            return
        received = 0
        tripped = False

        async def counting_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    tripped = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not tripped:  # once tripped, whatever the app answers is replaced by the 413
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if tripped:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_error(send, scope["path"], upload_too_large(self.max_bytes))
