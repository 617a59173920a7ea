"""Optional API key (`DS_API_KEY`): `Authorization: Bearer <key>` on every route but the public ones.

Written as raw ASGI middleware, not a FastAPI dependency, because:
- it covers websockets too (Starlette's BaseHTTPMiddleware does not), and refuses them before `accept`, so a
  refused client never gets a session, a model state or a decoder;
- it answers before the body is read: an unauthenticated 100 MB upload is refused at once, not spooled first;
- a route added later is protected without anyone remembering to add a dependency to it (deny by default,
  the public paths are an explicit list).

Websockets also take `?api_key=<key>` because a browser's `WebSocket` cannot set headers. HTTP routes do not:
a key in a URL ends up in proxy logs, browser history and Referer headers, so plain HTTP keeps to the header.

A refused websocket gets `websocket.close` with code 1008 (policy violation) before `accept`. The ASGI
servers (uvicorn, hypercorn) turn a close before accept into an HTTP 403 on the handshake, so on the wire the
client sees 403 and never an open socket; in-process clients (Starlette's TestClient) see the 1008. We do not
send a 401 through the `websocket.http.response` extension: not every server has it, and browsers expose
neither the status nor the body of a failed handshake to scripts anyway.

The 401 message is the same whether the key was missing, malformed or wrong, so a caller learns nothing about
which part failed; the comparison is `hmac.compare_digest` over the UTF-8 bytes (constant time in the key's
contents).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from app.web.errors import UNAUTHORIZED, send_error

MESSAGE = UNAUTHORIZED.message
WEBSOCKET_POLICY_VIOLATION = 1008

# Always public: liveness/readiness (load balancers and launchd checks carry no key), the page and its assets
# (a browser fetches them before anyone can type a key; the page then sends the key on its own requests), and
# the API description (it documents the routes, it holds no data).
PUBLIC_PATHS = frozenset(
    {"/health", "/ready", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/asyncapi.json"}
)
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts, served from the package (fastapi-offline)
PUBLIC_PREFIXES = ("/static/", DOCS_ASSETS + "/")
METRICS_PATH = "/metrics"


def is_public(path: str, metrics_public: bool = False) -> bool:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    return metrics_public and path == METRICS_PATH


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the first `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def query_key(query_string: bytes) -> bytes | None:
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "api_key":
            return value.encode("latin-1")
    return None


class ApiKeyAuth:
    """ASGI middleware: 401 (HTTP) or close 1008 before accept (websocket) unless the request carries the key."""

    def __init__(self, app: ASGIApp, api_key: str, metrics_public: bool = False) -> None:
        if not api_key:
            raise ValueError("ApiKeyAuth needs a non-empty key; leave the middleware out to run open")
        self.app = app
        self.key = api_key.encode("utf-8")
        self.metrics_public = metrics_public

    def _valid(self, candidate: bytes | None) -> bool:
        # compare_digest on equal-type bytes; a missing candidate is compared too, so both paths cost the same.
        return hmac.compare_digest(candidate or b"", self.key) and candidate is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or is_public(scope["path"], self.metrics_public):
            await self.app(scope, receive, send)
            return
        if kind == "http" and scope["method"] == "OPTIONS":  # CORS preflights carry no credentials
            await self.app(scope, receive, send)
            return
        candidates = [bearer_token(scope["headers"])]
        if kind == "websocket":
            candidates.append(query_key(scope.get("query_string", b"")))
        # Evaluate every candidate (no short-circuit), then decide.
        results = [self._valid(candidate) for candidate in candidates]
        if any(results):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION, "reason": ""})
            return
        await send_error(send, scope["path"], UNAUTHORIZED)
