"""DS_REPLICA_ID: which of several replicas behind a load balancer answered. Every HTTP response, and the
handshake of every websocket it accepts, carries `X-Replica: r1`, so operators (and the tests) can see how the
balancer spreads the work. Resumable stream ids and resume URLs name the replica too (app/service/resume.py,
app/routes/stream.py); deploy/haproxy/haproxy.cfg routes a reconnect on them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-replica"


class ReplicaHeader:
    """Adds `X-Replica` to HTTP responses (errors and 503s of the layers inside it included) and to websocket
    accepts."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.header = (HEADER, replica_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
