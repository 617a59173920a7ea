"""Typed errors mapped to JSON responses at the edge: `{"detail": "..."}` with the right status, no traceback."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import Send

from app.service.admission import ServiceBusy
from app.speech.audio import AudioTooLong, EmptyAudio, UnsupportedAudio
from app.speech.decoding import DecodeOptionError
from app.speech.runtime import InferenceError

log = logging.getLogger(__name__)


class UploadTooLarge(ValueError):
    """The upload exceeds DS_MAX_UPLOAD_BYTES (HTTP 413)."""


class MissingUpload(ValueError):
    """The request has no multipart `file` field (HTTP 400)."""


STATUS = {
    EmptyAudio: 400,
    MissingUpload: 400,
    UnsupportedAudio: 415,
    UploadTooLarge: 413,
    AudioTooLong: 413,
    DecodeOptionError: 422,
}


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


def install_error_handlers(app: FastAPI) -> None:
    for error, status in STATUS.items():

        async def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(error, handler)

    async def inference_failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("inference failed on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "the model failed on this audio; see the server log"}, status_code=500)

    app.add_exception_handler(InferenceError, inference_failed)

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(ServiceBusy.retry_after)}
        )

    app.add_exception_handler(ServiceBusy, busy)
