"""OpenAI-compatible API: `POST /v1/audio/transcriptions`, `GET /v1/models`, `GET /v1/models/{model_id}`.

Existing OpenAI clients (the `openai` SDKs, and the many tools built on them) work unchanged with
`base_url="http://host:8000/v1"`. What the fields mean here:
- `file` (required): any audio the service decodes. `model`: any value (this server serves one model; clients
  that hard-code `whisper-1` work), or none. `prompt` is ignored (no text conditioning in DeepSpeech).
  `temperature` is validated (0..1, as OpenAI does) and ignored: the beam search is deterministic.
- `language`: the model's language only (DS_LANGUAGE if that setting exists, else English), as an ISO-639-1
  code or its English name; any other language is a 400 `unsupported_language`. A character model asked to
  transcribe French returns confident garbage, so an explicit mismatch fails loudly and the client can route
  the audio elsewhere; clients that send no language are unaffected.
- `response_format`: `json` (default, `{"text"}`), `text`, `srt`, `vtt`, `verbose_json`. `verbose_json`
  carries `duration`, `segments` (split at pauses found in the CTC word alignment; see app/service/subtitles.py) and,
  with `timestamp_granularities[]=word`, `words`. Without granularities it has segments only, as OpenAI's
  (the Whisper-only segment fields: app/service/rendering.py).
- `timestamp_granularities[]`: a repeated form field whose name ends in `[]`, read from the raw form (FastAPI's
  `Form(alias=...)` does not see it). Only with `verbose_json`, as OpenAI requires.
- `stream=true` (`json` or `text`): Server-Sent Events `transcript.text.delta` ... `transcript.text.done`. The
  file runs through the same windows, model and decoder as the non-streamed answer, in pieces of 1 s of audio
  with the LSTM state carried; after a piece, the words every hypothesis in the beam agrees on (which no later
  frame can change) go out as a delta. So the deltas concatenate to the done text, which equals the
  non-streamed text (on Core ML, up to float16 differences between piece shapes).
Errors on these routes use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 bad field
or empty audio, 404 unknown model, 413 upload or duration over the caps, 415 undecodable audio, 500 model
failure. The rest of the service keeps `{"detail": ...}` (both shapes: app/web/errors.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from app.service.rendering import (
    LANGUAGE_NAMES,
    TEXT_MEDIA_TYPE,
    TranscriptionJson,
    VerboseTranscription,
    render_text,
    verbose_json,
)
from app.service.uploads import StreamedTranscription, transcribe_upload
from app.speech.decoding import DecodeOptionError, parse_hot_words
from app.speech.engine import Engine, Transcription
from app.speech.runtime import InferenceError
from app.web.deps import EngineDep, ServicesDep, UploadTicketDep
from app.web.errors import ApiError, api_error, error_payload

router = APIRouter(prefix="/v1", tags=["openai"])

ROUTE = "/v1/audio/transcriptions"

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
OWNED_BY = "local"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# --- request -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptionRequest:
    data: bytes
    response_format: str = "json"
    granularities: tuple[str, ...] = ()
    stream: bool = False
    language: str | None = None
    model: str | None = None
    hot_words: tuple[str, ...] = ()  # extension: `word:boost,...` (extra_body={"hot_words": ...} in the SDK)


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a text field, not a file", param=name)
    return value.strip()


def _check_language(value: str, served: str) -> None:
    wanted = value.strip().lower().replace("_", "-")
    names = {served, LANGUAGE_NAMES.get(served, served)}
    if wanted in names or wanted.split("-")[0] == served:
        return
    raise ApiError(
        400,
        f"this server transcribes {LANGUAGE_NAMES.get(served, served).capitalize()} only ('{served}'); "
        f"language '{value}' is not supported. Leave 'language' out or send '{served}'.",
        param="language",
        code="unsupported_language",
    )


async def _parse(request: Request, served_language: str) -> TranscriptionRequest:
    try:
        async with request.form() as form:
            upload = form.get("file")
            if upload is None:
                raise ApiError(400, "the multipart field 'file' (the audio) is required", param="file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "'file' must be a file upload (multipart/form-data)", param="file")
            data = await upload.read()
            response_format = _text_field(form, "response_format") or "json"
            granularities = [
                part.strip()
                for name in ("timestamp_granularities[]", "timestamp_granularities")
                for value in form.getlist(name)
                if isinstance(value, str)
                for part in value.split(",")
                if part.strip()
            ]
            stream = (_text_field(form, "stream") or "false").lower()
            temperature = _text_field(form, "temperature")
            language = _text_field(form, "language") or None
            model = _text_field(form, "model") or None
            hot_words = tuple(v for v in form.getlist("hot_words") if isinstance(v, str))
    except (HTTPException, MultiPartException) as exc:
        message = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise ApiError(400, f"could not parse the multipart form: {message}") from exc

    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format '{response_format}' is not supported; use one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ApiError(
                400,
                f"timestamp_granularities[] '{granularity}' is not supported; use word and/or segment",
                param="timestamp_granularities",
            )
    if granularities and response_format != "verbose_json":
        raise ApiError(
            400,
            "timestamp_granularities[] needs response_format verbose_json",
            param="timestamp_granularities",
        )
    if stream not in ("true", "false", "1", "0"):
        raise ApiError(400, f"stream must be true or false, got '{stream}'", param="stream")
    streaming = stream in ("true", "1")
    if streaming and response_format not in ("json", "text"):
        raise ApiError(
            400,
            f"stream=true streams text deltas; it works with response_format json or text, not {response_format}",
            param="stream",
        )
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ApiError(
                400, f"temperature must be a number from 0 to 1, got '{temperature}'", param="temperature"
            )
    if language is not None:
        _check_language(language, served_language.lower())
    return TranscriptionRequest(
        data=data,
        response_format=response_format,
        granularities=tuple(dict.fromkeys(granularities)),
        stream=streaming,
        language=language,
        model=model,
        hot_words=hot_words,
    )


# --- routes --------------------------------------------------------------------------------------------------


def _multipart(properties: dict[str, Any], encoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI multipart/form-data request body whose `file` field is required."""
    form: dict[str, Any] = {"schema": {"type": "object", "required": ["file"], "properties": properties}}
    if encoding is not None:
        form["encoding"] = encoding
    return {"required": True, "content": {"multipart/form-data": form}}


REQUEST_BODY = _multipart(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "audio: WAV, FLAC, MP3, M4A/AAC, OGG (Vorbis/Opus), WebM; any rate",
        },
        "model": {
            "type": "string",
            "description": "any value (one model is served; see GET /v1/models)",
            "example": "whisper-1",
        },
        "language": {
            "type": "string",
            "description": "ISO-639-1 code or English name; only the model's language (400 else)",
            "example": "en",
        },
        "prompt": {"type": "string", "description": "accepted and ignored"},
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "accepted (0..1) and ignored: decoding is deterministic",
        },
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": list(GRANULARITIES)},
            "description": "verbose_json only; repeat the field for both",
        },
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "Server-Sent Events transcript.text.delta / transcript.text.done "
            "(response_format json or text)",
        },
    },
    encoding={"timestamp_granularities[]": {"style": "form", "explode": True}},
)

TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": TranscriptionJson | VerboseTranscription,
        "description": 'json: `{"text"}`; verbose_json: VerboseTranscription; text, srt: text/plain; vtt: text/vtt; '
        'stream=true: text/event-stream of `data: {"type": "transcript.text.delta", "delta"}` events '
        'and a final `data: {"type": "transcript.text.done", "text"}`',
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    400: _error_doc("a bad field, a missing file, or empty audio"),
    401: _error_doc("DS_API_KEY is set and the request lacks that key (invalid_api_key)"),
    408: _error_doc("the body stalled or arrived too slowly (request_timeout)"),
    413: _error_doc("upload larger than DS_MAX_UPLOAD_BYTES, or audio longer than the duration cap"),
    415: _error_doc("audio that cannot be decoded"),
    500: _error_doc("the model failed on this audio"),
    503: _error_doc(
        "every worker busy and the queue full, or the buffered-upload budget spent (server_busy, before the body "
        "is read), or the server is shutting down"
    ),
}


@router.post(
    "/audio/transcriptions",
    openapi_extra={"requestBody": REQUEST_BODY},
    responses=TRANSCRIPTION_RESPONSES,
    response_class=Response,
    summary="Transcribe audio (OpenAI-compatible)",
)
async def create_transcription(request: Request, services: ServicesDep, ticket: UploadTicketDep) -> Response:
    """OpenAI's `audio.transcriptions.create`; see the module documentation for what each field does here."""
    req = await _parse(request, services.settings.language)
    try:
        hot = services.engine.decoder.check_options(hot_words=parse_hot_words(list(req.hot_words)))
    except DecodeOptionError as exc:
        raise ApiError(400, str(exc), param="hot_words", code="invalid_hot_words") from exc
    if req.stream:
        job = await StreamedTranscription.start(services, ROUTE, req.data, hot, ticket)
        return StreamingResponse(
            _sse(job, request.url.path),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(job.release),  # also when the body never ran (client gone)
        )
    upload = await transcribe_upload(services, ROUTE, req.data, hot_words=hot, ticket=ticket)
    return _formatted(upload.result, upload.duration, req, services.settings.language)


def _formatted(result: Transcription, duration: float, req: TranscriptionRequest, language: str) -> Response:
    fmt = req.response_format
    if fmt == "verbose_json":
        body = verbose_json(result, duration, req.granularities, language.lower())
        return JSONResponse(body.model_dump(exclude_none=True))
    if fmt == "json":
        return JSONResponse({"text": result.transcript.text})
    rendered = render_text(result, fmt)  # type: ignore[arg-type]  # text, srt or vtt, checked by _parse
    # OpenAI answers SRT as text/plain
    media_type = TEXT_MEDIA_TYPE if fmt == "srt" else rendered.media_type
    return Response(rendered.content, media_type=media_type)


async def _sse(job: StreamedTranscription, path: str) -> AsyncIterator[str]:
    try:
        async for event in job.events():
            yield _sse_line(event)
    except InferenceError as exc:  # the status line is sent already: report it as OpenAI's stream error
        yield _sse_line(error_payload(path, api_error(exc, path)))


def _sse_line(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _model_object(engine: Engine) -> ModelObject:
    try:
        created = int((engine.model_dir.path / "manifest.json").stat().st_mtime)
    except OSError:
        created = 0
    return ModelObject(id=engine.model_dir.name, created=created, owned_by=OWNED_BY)


@router.get("/models", response_model=ModelList, summary="List the served model (OpenAI-compatible)")
async def list_models(engine: EngineDep) -> ModelList:
    """The one loaded model; its id is the model directory's name (`created`: when it was converted)."""
    return ModelList(data=[_model_object(engine)])


@router.get(
    "/models/{model_id}",
    response_model=ModelObject,
    responses={404: _error_doc("no such model")},
    summary="Describe the served model (OpenAI-compatible)",
)
async def retrieve_model(engine: EngineDep, model_id: str) -> ModelObject:
    """The loaded model if `model_id` is its id, else 404 in OpenAI's shape."""
    model = _model_object(engine)
    if model_id != model.id:
        raise ApiError(
            404,
            f"The model '{model_id}' does not exist; this server serves '{model.id}'",
            param="model",
            code="model_not_found",
        )
    return model


TRANSLATION_BODY = _multipart({"file": {"type": "string", "format": "binary"}, "model": {"type": "string"}})


@router.post(
    "/audio/translations",
    openapi_extra={"requestBody": TRANSLATION_BODY},
    responses={404: _error_doc("always: translation is not offered")},
    summary="Not offered: translation (OpenAI-compatible error)",
)
async def create_translation() -> None:
    """OpenAI's `audio.translations.create` translates speech into English text; DeepSpeech transcribes only."""
    raise ApiError(
        404,
        "translation is not offered by this server: it transcribes speech in its model's language and does not "
        "translate; use POST /v1/audio/transcriptions",
        code="translation_not_supported",
    )
