"""POST /transcribe: a whole upload through the dynamic model; JSON by default, or `?format=text|srt|vtt`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from app.service import subtitles
from app.service.rendering import TranscriptionResponse, render_text, transcription_response
from app.service.uploads import transcribe_upload
from app.speech.decoding import MAX_ALTERNATIVES, parse_hot_words
from app.web.deps import ServicesDep, UploadTicketDep

router = APIRouter(tags=["transcription"])


class ErrorMessage(BaseModel):
    """Every error of this route: what was wrong, for a person (never a traceback)."""

    detail: str


class InvalidRequest(BaseModel):
    """422: a message (hot words, alternatives) or FastAPI's list of field errors (a missing `file` field)."""

    detail: str | list[dict[str, Any]]


OTHER_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`format=json` (default): the JSON above; `text`: the transcript as text/plain; "
        "`srt` / `vtt`: subtitles, one cue per segment (split at pauses, ≤ 7 s, ≤ 2 lines of 42 characters)",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            subtitles.SRT_MEDIA_TYPE: {"schema": {"type": "string"}},
            subtitles.VTT_MEDIA_TYPE: {"schema": {"type": "string"}},
        },
    },
    400: {"model": ErrorMessage, "description": "empty audio, or a body that is not multipart/form-data"},
    401: {"model": ErrorMessage, "description": "DS_API_KEY is set and the request lacks that key"},
    413: {
        "model": ErrorMessage,
        "description": "upload over DS_MAX_UPLOAD_BYTES, or audio over the duration cap",
    },
    415: {"model": ErrorMessage, "description": "audio that cannot be decoded"},
    422: {
        "model": InvalidRequest,
        "description": "invalid hot words or alternatives, or a missing `file` field",
    },
    408: {
        "model": ErrorMessage,
        "description": "the body stalled (DS_BODY_TIMEOUT_SECONDS) or arrived below DS_MIN_UPLOAD_BYTES_PER_SECOND",
    },
    503: {
        "model": ErrorMessage,
        "description": "every worker busy and the queue full, or DS_MAX_BUFFERED_UPLOAD_BYTES of uploads held "
        "(both before the body is read; retry after the Retry-After seconds), or the server is shutting down",
    },
}


@router.post(
    "/transcribe",
    response_model=TranscriptionResponse,
    response_model_exclude_none=True,
    responses=OTHER_FORMATS,
)
async def transcribe(
    services: ServicesDep,
    ticket: UploadTicketDep,
    file: Annotated[
        UploadFile,
        File(description="audio: WAV, FLAC, MP3, M4A/AAC, OGG (Vorbis/Opus) or WebM; any rate, any channels"),
    ],
    format: Annotated[Literal["json", "text", "srt", "vtt"], Query(description="response format")] = "json",
    hot_words: Annotated[
        list[str] | None,
        Query(
            description="`word:boost,...` boosted inside the beam search (DeepSpeech's units; a word alone gets 10)"
        ),
    ] = None,
    alternatives: Annotated[
        int, Query(ge=1, le=MAX_ALTERNATIVES, description="return the N best transcripts")
    ] = 1,
) -> TranscriptionResponse | Response:
    """Transcribe one file: decode, resample to 16 kHz mono, run the model over all of it, beam-search decode."""
    engine = services.engine
    hot = engine.decoder.check_options(hot_words=parse_hot_words(hot_words), alternatives=alternatives)
    upload = await transcribe_upload(
        services, "/transcribe", await file.read(), hot_words=hot, alternatives=alternatives, ticket=ticket
    )
    if format == "json":
        return transcription_response(upload.result, upload.duration, engine)
    rendered = render_text(upload.result, format)
    return Response(rendered.content, media_type=rendered.media_type)
