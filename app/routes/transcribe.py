"""POST /transcribe: a whole upload through the dynamic model; JSON by default, or `?format=text|srt|vtt`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.metrics import observe_audio
from app.service import subtitles
from app.speech.audio import decode_audio
from app.speech.decoding import MAX_ALTERNATIVES, parse_hot_words
from app.speech.engine import Engine

router = APIRouter(tags=["transcription"])


class WordTiming(BaseModel):
    word: str
    start: float
    end: float
    confidence: float


class Alternative(BaseModel):
    text: str
    confidence: float = Field(description="share of the final beam's score (0..1, best first)")
    words: list[WordTiming]


class TranscriptionResponse(BaseModel):
    text: str
    duration: float
    words: list[WordTiming]
    confidence: float
    model: str
    backend: str
    decoder: str
    processing_seconds: float
    alternatives: list[Alternative] | None = Field(
        None, description="the N best transcripts, with alternatives=N"
    )


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
    503: {
        "model": ErrorMessage,
        "description": "every worker busy and the queue full (retry after the Retry-After seconds), or the "
        "server is shutting down",
    },
}


@router.post(
    "/transcribe",
    response_model=TranscriptionResponse,
    response_model_exclude_none=True,
    responses=OTHER_FORMATS,
)
async def transcribe(
    request: Request,
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
    engine: Engine = request.app.state.engine
    hot = engine.decoder.check_options(hot_words=parse_hot_words(hot_words), alternatives=alternatives)
    data = await file.read()
    async with request.app.state.admission.inference():
        samples, duration = await run_in_threadpool(
            decode_audio, data, request.app.state.settings.max_audio_seconds
        )
        result = await run_in_threadpool(engine.transcribe, samples, hot_words=hot, alternatives=alternatives)
    observe_audio(request.app, "/transcribe", result.duration, result.processing_seconds)
    transcript = result.transcript
    if format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if format == "srt":
        return Response(subtitles.srt(transcript.words), media_type=subtitles.SRT_MEDIA_TYPE)
    if format == "vtt":
        return Response(subtitles.vtt(transcript.words), media_type=subtitles.VTT_MEDIA_TYPE)
    return TranscriptionResponse(
        text=transcript.text,
        duration=round(duration, 3),
        words=[WordTiming(**asdict(word)) for word in transcript.words],
        confidence=transcript.confidence,
        model=engine.model_dir.name,
        backend=engine.model.backend,
        decoder=engine.decoder.description,
        processing_seconds=round(result.processing_seconds, 3),
        alternatives=[
            Alternative(
                text=alt.text,
                confidence=alt.confidence,
                words=[WordTiming(**asdict(word)) for word in alt.words],
            )
            for alt in transcript.alternatives
        ]
        or None,
    )
