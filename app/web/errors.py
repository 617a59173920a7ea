"""Every error a client can get over HTTP, in one place: the table from the pipeline's and the service's error
types to (status, code, message), rendered as `{"detail": message}` or, under `/v1/`, OpenAI's
`{"error": {"message", "type", "param", "code"}}` (the OpenAI SDKs read that shape and raise their typed
errors). Exception handlers, the raw ASGI middlewares (auth, upload cap and admission, body deadline, drain),
the connection guard (header deadline and size, connection cap) and the SSE stream's in-band error all render
through here, so a status or a message is decided once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from app.service.admission import ServiceBusy
from app.service.jobs import CallbackRefused, JobNotDone, JobNotFound, JobQueueFull, JobsUnavailable
from app.speech.audio import AudioError, AudioTooLong, EmptyAudio, UnsupportedAudio
from app.speech.decoding import DecodeOptionError, DecoderProcessFailed
from app.speech.runtime import InferenceError

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"  # the OpenAI-compatible routes answer errors in OpenAI's shape


class ApiError(Exception):
    """An error a transport or middleware answers directly: status, message and OpenAI's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str = "invalid_request_error",
        param: str | None = None,
        openai_message: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param
        self.openai_message = openai_message or message
        self.headers = headers


@dataclass(frozen=True)
class ErrorKind:
    """How one error type is answered; `message` replaces the exception's text where that text is internal."""

    status: int
    code: str | None
    type: str = "invalid_request_error"
    param: str | None = None
    message: str | None = None
    retry_after: int | None = None


# Looked up in order, so a subclass comes before its base (EmptyAudio before AudioError).
ERRORS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (EmptyAudio, ErrorKind(400, "empty_audio", param="file")),
    (UnsupportedAudio, ErrorKind(415, "unsupported_audio", param="file")),
    (AudioTooLong, ErrorKind(413, "audio_too_long", param="file")),
    (AudioError, ErrorKind(400, "invalid_audio", param="file")),
    (DecodeOptionError, ErrorKind(422, "invalid_option")),
    (ServiceBusy, ErrorKind(503, "server_busy", type="server_error", retry_after=ServiceBusy.retry_after)),
    (JobsUnavailable, ErrorKind(503, "jobs_unavailable", type="server_error")),  # Retry-After: the error's
    (JobQueueFull, ErrorKind(503, "job_queue_full", type="server_error", retry_after=JobQueueFull.retry_after)),
    (JobNotFound, ErrorKind(404, "job_not_found")),
    (JobNotDone, ErrorKind(409, "job_not_done")),
    (CallbackRefused, ErrorKind(422, "callback_not_allowed", param="callback_url")),
    (
        DecoderProcessFailed,
        ErrorKind(500, "decoder_failed", type="server_error", message="a decoder process died on this audio; retry"),
    ),
    (
        InferenceError,
        ErrorKind(500, None, type="server_error", message="the model failed on this audio; see the server log"),
    ),
)

UNAUTHORIZED = ApiError(
    401,
    "missing or invalid API key; send 'Authorization: Bearer <key>'",
    code="invalid_api_key",
    openai_message="Incorrect API key provided, or none was given. Send 'Authorization: Bearer <key>'.",
    headers=(("www-authenticate", 'Bearer realm="deepspeech"'),),
)
SHUTTING_DOWN = ApiError(
    503,
    "the service is shutting down; retry shortly (another instance may take over)",
    code="server_shutting_down",
    type="server_error",
    headers=(("retry-after", "5"),),
)


def upload_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"upload larger than {max_bytes} bytes; raise DS_MAX_UPLOAD_BYTES or send less audio",
        code="request_too_large",
        param="file",
    )


CLOSE = (("connection", "close"),)  # the client stopped sending, or sent too much: no keep-alive after this


def header_timeout(seconds: float) -> ApiError:
    return ApiError(
        408,
        f"request headers not complete within {seconds:g} s; raise DS_HEADER_TIMEOUT_SECONDS for slower clients",
        code="request_timeout",
        headers=CLOSE,
    )


def headers_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        431,
        f"request line and headers larger than {max_bytes} bytes; raise DS_MAX_HEADER_BYTES or send fewer",
        code="request_header_fields_too_large",
        headers=CLOSE,
    )


def too_many_connections(max_connections: int) -> ApiError:
    return ApiError(
        503,
        f"the server holds its maximum of {max_connections} connections and none is idle; retry shortly "
        "(DS_MAX_CONNECTIONS)",
        code="too_many_connections",
        type="server_error",
        headers=(("retry-after", "1"), *CLOSE),
    )


def body_timeout(seconds: float) -> ApiError:
    return ApiError(
        408,
        f"no request body arrived for {seconds:g} s; raise DS_BODY_TIMEOUT_SECONDS for slower clients",
        code="request_timeout",
        headers=CLOSE,
    )


def body_too_slow(min_bytes_per_second: int) -> ApiError:
    return ApiError(
        408,
        f"the request body arrived at less than {min_bytes_per_second} bytes a second; lower "
        "DS_MIN_UPLOAD_BYTES_PER_SECOND for slower clients",
        code="request_timeout",
        headers=CLOSE,
    )


def upload_budget_full(held: int, budget: int) -> ServiceBusy:
    return ServiceBusy(
        f"{held} bytes of uploads are held already, and this one would go over DS_MAX_BUFFERED_UPLOAD_BYTES "
        f"({budget}); retry shortly"
    )


def api_error(exc: Exception, path: str) -> ApiError:
    """The ApiError for an exception of the table (logged where its text stays in the server log); others raise."""
    if isinstance(exc, ApiError):
        return exc
    for error_type, kind in ERRORS:
        if isinstance(exc, error_type):
            if kind.message is not None:
                log.error("%s on %s: %s", type(exc).__name__, path, exc)
            retry_after = getattr(exc, "retry_after", kind.retry_after)  # the error's own, when it knows better
            headers = (("retry-after", str(retry_after)),) if retry_after is not None else ()
            return ApiError(
                kind.status,
                kind.message or str(exc),
                code=kind.code,
                type=kind.type,
                param=kind.param,
                headers=headers,
            )
    raise exc


def error_payload(path: str, error: ApiError) -> dict[str, object]:
    """`{"detail"}`, or OpenAI's error object on the OpenAI-compatible routes."""
    if path.startswith(OPENAI_PREFIX):
        return {
            "error": {
                "message": error.openai_message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
    return {"detail": error.message}


def error_response(path: str, error: ApiError) -> JSONResponse:
    return JSONResponse(error_payload(path, error), status_code=error.status, headers=dict(error.headers))


async def send_json(
    send: Send, status: int, payload: object, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """A whole JSON response from raw ASGI middleware (which answers before FastAPI's handlers run)."""
    body = json.dumps(payload).encode()
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, path: str, error: ApiError, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """`error` from raw ASGI middleware, in the path's shape, with its own headers and `headers`."""
    own = tuple((name.encode(), value.encode()) for name, value in error.headers)
    names = {name for name, _ in headers}
    await send_json(
        send, error.status, error_payload(path, error), (*headers, *(h for h in own if h[0] not in names))
    )


def raw_response(path: str, error: ApiError) -> bytes:
    """`error` as a whole HTTP/1.1 response, for the connection guard (app/web/connections.py), which answers
    from the protocol before any request reaches the app."""
    body = json.dumps(error_payload(path, error)).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", "content-type: application/json"]
    lines += [f"content-length: {len(body)}", *(f"{name}: {value}" for name, value in error.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def install_error_handlers(app: FastAPI) -> None:
    """One handler for ApiError and every type of the table; Starlette's own HTTP errors (an unknown path, a
    wrong method) keep FastAPI's `{"detail"}` but answer in OpenAI's shape under /v1/."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, api_error(exc, request.url.path))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith(OPENAI_PREFIX):
            return await http_exception_handler(request, exc)
        message = f"{exc.detail}: {request.method} {request.url.path}"
        code = "unknown_url" if exc.status_code == 404 else None
        return error_response(request.url.path, ApiError(exc.status_code, message, code=code))

    app.add_exception_handler(ApiError, handler)
    for error_type, _ in ERRORS:
        app.add_exception_handler(error_type, handler)
    app.add_exception_handler(StarletteHTTPException, http_error)
