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
  with `timestamp_granularities[]=word`, `words`. Without granularities it has segments only, as OpenAI's.
  Whisper-only segment fields are filled honestly: `seek` 0 (one pass over the whole file, no 30 s windows),
  `tokens` [] (no text tokenizer), `temperature` 0.0 (deterministic search), `avg_logprob` = ln of the mean
  per-frame probability of the chosen token over the segment's words (their frames weighted by duration;
  the mean of logs would be lower, by Jensen's inequality), `compression_ratio` = UTF-8 length / zlib length
  of the segment text exactly as Whisper computes it, `no_speech_prob` 0.0 (segments are made of recognised
  words; there is no separate no-speech detector).
- `timestamp_granularities[]`: a repeated form field whose name ends in `[]`, read from the raw form (FastAPI's
  `Form(alias=...)` does not see it). Only with `verbose_json`, as OpenAI requires.
- `stream=true` (`json` or `text`): Server-Sent Events `transcript.text.delta` ... `transcript.text.done`. The
  file runs through the same windows, model and decoder as the non-streamed answer, in pieces of 1 s of audio
  with the LSTM state carried; after a piece, the words every hypothesis in the beam agrees on (which no later
  frame can change) go out as a delta. So the deltas concatenate to the done text, which equals the
  non-streamed text (on Core ML, up to float16 differences between piece shapes).
Errors on these routes use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 bad field
or empty audio, 404 unknown model, 413 upload or duration over the caps, 415 undecodable audio, 500 model
failure. The rest of the service keeps `{"detail": ...}`.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from app.metrics import observe_audio
from app.service import subtitles
from app.service.admission import ServiceBusy, Ticket
from app.speech import audio
from app.speech.decoding import DecodeOptionError, GreedyDecoder, HotWords, Transcript, Word, parse_hot_words
from app.speech.decoding.beam import BeamStream
from app.speech.engine import Engine
from app.speech.features import context_window_blocks, mfcc
from app.speech.runtime import InferenceError, LstmState
from app.web.errors import UploadTooLarge

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)

PREFIX = "/v1/"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
PIECE_STEPS = 50  # streaming: model time steps per piece (1 s of audio)
LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "pl": "polish",
    "ru": "russian",
    "ca": "catalan",
    "zh": "chinese",
    "ja": "japanese",
}
OWNED_BY = "local"


# --- errors --------------------------------------------------------------------------------------------------


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


def _from_app_error(exc: Exception) -> OpenAIError:
    """The app's typed errors (app/speech/audio.py, app/web/errors.py, the runtime) in OpenAI's shape."""
    message = str(exc)
    if isinstance(exc, audio.EmptyAudio):
        return OpenAIError(400, message, param="file", code="empty_audio")
    if isinstance(exc, audio.UnsupportedAudio):
        return OpenAIError(415, message, param="file", code="unsupported_audio")
    if isinstance(exc, UploadTooLarge):
        return OpenAIError(413, message, param="file", code="request_too_large")
    if isinstance(exc, audio.AudioTooLong):
        return OpenAIError(413, message, param="file", code="audio_too_long")
    if isinstance(exc, audio.AudioError):
        return OpenAIError(400, message, param="file", code="invalid_audio")
    if isinstance(exc, ServiceBusy):
        return OpenAIError(503, message, type="server_error", code="server_busy")
    if isinstance(exc, InferenceError):
        log.error("inference failed on %s: %s", PREFIX + "audio/transcriptions", exc)
        return OpenAIError(500, "the model failed on this audio; see the server log", type="server_error")
    raise exc


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
        raise OpenAIError(400, f"'{name}' must be a text field, not a file", param=name)
    return value.strip()


def _model_language(request: Request) -> str:
    return str(getattr(request.app.state.settings, "language", "en")).lower()


def _check_language(value: str, served: str) -> None:
    wanted = value.strip().lower().replace("_", "-")
    names = {served, LANGUAGE_NAMES.get(served, served)}
    if wanted in names or wanted.split("-")[0] == served:
        return
    raise OpenAIError(
        400,
        f"this server transcribes {LANGUAGE_NAMES.get(served, served).capitalize()} only ('{served}'); "
        f"language '{value}' is not supported. Leave 'language' out or send '{served}'.",
        param="language",
        code="unsupported_language",
    )


async def _parse(request: Request) -> TranscriptionRequest:
    try:
        async with request.form() as form:
            upload = form.get("file")
            if upload is None:
                raise OpenAIError(400, "the multipart field 'file' (the audio) is required", param="file")
            if not isinstance(upload, UploadFile):
                raise OpenAIError(400, "'file' must be a file upload (multipart/form-data)", param="file")
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
        raise OpenAIError(400, f"could not parse the multipart form: {message}") from exc

    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(
            400,
            f"response_format '{response_format}' is not supported; use one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise OpenAIError(
                400,
                f"timestamp_granularities[] '{granularity}' is not supported; use word and/or segment",
                param="timestamp_granularities",
            )
    if granularities and response_format != "verbose_json":
        raise OpenAIError(
            400,
            "timestamp_granularities[] needs response_format verbose_json",
            param="timestamp_granularities",
        )
    if stream not in ("true", "false", "1", "0"):
        raise OpenAIError(400, f"stream must be true or false, got '{stream}'", param="stream")
    streaming = stream in ("true", "1")
    if streaming and response_format not in ("json", "text"):
        raise OpenAIError(
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
            raise OpenAIError(
                400, f"temperature must be a number from 0 to 1, got '{temperature}'", param="temperature"
            )
    if language is not None:
        _check_language(language, _model_language(request))
    return TranscriptionRequest(
        data=data,
        response_format=response_format,
        granularities=tuple(dict.fromkeys(granularities)),
        stream=streaming,
        language=language,
        model=model,
        hot_words=hot_words,
    )


# --- responses -----------------------------------------------------------------------------------------------


class VerboseSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class VerboseWord(BaseModel):
    word: str
    start: float
    end: float


class VerboseTranscription(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[VerboseSegment] | None = None
    words: list[VerboseWord] | None = None


class TranscriptionJson(BaseModel):
    text: str


def avg_logprob(words: Sequence[Word]) -> float:
    """ln of the duration-weighted mean word confidence (each word's confidence is already the mean per-frame
    probability of the chosen token over its frames)."""
    weights = np.array([max(w.end - w.start, 1e-6) for w in words])
    confidences = np.array([w.confidence for w in words])
    mean = float(np.sum(weights * confidences) / np.sum(weights)) if len(words) else 0.0
    return round(float(np.log(max(mean, 1e-10))), 6)


def compression_ratio(text: str) -> float:
    """Whisper's repetition check: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 6) if data else 0.0


def verbose_json(
    transcript: Transcript, duration: float, granularities: Sequence[str], language: str
) -> VerboseTranscription:
    body = VerboseTranscription(
        language=LANGUAGE_NAMES.get(language, language), duration=round(duration, 3), text=transcript.text
    )
    if not granularities or "segment" in granularities:
        body.segments = [
            VerboseSegment(
                id=i,
                seek=0,
                start=round(seg.start, 3),
                end=round(seg.end, 3),
                text=seg.text,
                tokens=[],
                temperature=0.0,
                avg_logprob=avg_logprob(seg.words),
                compression_ratio=compression_ratio(seg.text),
                no_speech_prob=0.0,
            )
            for i, seg in enumerate(subtitles.segment_words(transcript.words))
        ]
    if "word" in granularities:
        body.words = [
            VerboseWord(word=w.word, start=round(w.start, 3), end=round(w.end, 3)) for w in transcript.words
        ]
    return body


def _formatted(transcript: Transcript, duration: float, req: TranscriptionRequest, language: str) -> Response:
    fmt = req.response_format
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt == "srt":  # OpenAI answers SRT as text/plain
        return PlainTextResponse(subtitles.srt(transcript.words))
    if fmt == "vtt":
        return Response(subtitles.vtt(transcript.words), media_type=subtitles.VTT_MEDIA_TYPE)
    if fmt == "verbose_json":
        body = verbose_json(transcript, duration, req.granularities, language)
        return JSONResponse(body.model_dump(exclude_none=True))
    return JSONResponse({"text": transcript.text})


# --- streaming -----------------------------------------------------------------------------------------------


class IncrementalTranscription:
    """`Engine.transcribe` in pieces: the same feature windows, the dynamic model over `piece_steps` windows at a
    time with the LSTM state carried (the probabilities of its ≤ max_steps windows), and the decoder fed piece by
    piece, as `Decoder.decode` runs it; so the final transcript is the non-streamed one. After a piece,
    `step` returns the words that became certain; `finished` after the last piece, with `transcript` set.

    Certain words: for the beam search, those every hypothesis agrees on (`BeamStream.stable_words`); for greedy,
    every word but the last (greedy never revises). The check costs O(beam x frames), so it runs after every
    piece at first and then at least every tenth of the audio so far (bounded total cost on long files).
    """

    def __init__(
        self,
        engine: Engine,
        samples: np.ndarray,
        piece_steps: int = PIECE_STEPS,
        hot_words: HotWords | None = None,
    ) -> None:
        self._engine = engine
        self._samples: np.ndarray | None = samples
        self._blocks: Iterator[np.ndarray] = iter(())
        self._total = 0
        self._state = LstmState.zeros(engine.model.n_cell_dim)
        self._decoder = engine.decoder.stream(hot_words=hot_words)
        self._piece = piece_steps
        self._steps = 0
        self._checked_at = 0
        self.stable: list[str] = []
        self.transcript: Transcript | None = None

    @property
    def finished(self) -> bool:
        return self.transcript is not None

    def step(self) -> list[str]:
        """Run the next piece (the first call also computes the features); return the newly certain words."""
        if self.transcript is not None:
            return []
        if self._samples is not None:  # MFCCs once; context windows one piece at a time, as Engine.transcribe
            frames = mfcc(self._samples)
            self._total = len(frames)
            self._blocks = context_window_blocks(frames, self._piece)
            self._samples = None
        piece = next(self._blocks, None)
        if piece is not None and len(piece):
            probs, self._state = self._engine.model.run_window(piece, self._state)
            self._decoder.feed(probs)
            self._steps += len(piece)
        if piece is None or self._steps >= self._total:
            return self._finish()
        if self._steps - self._checked_at < max(self._piece, self._steps // 10):
            return []
        self._checked_at = self._steps
        return self._extend(self._certain_words())

    def _certain_words(self) -> list[str]:
        if isinstance(self._decoder, BeamStream):
            return self._decoder.stable_words()
        if isinstance(self._engine.decoder, GreedyDecoder):
            return [word.word for word in self._decoder.partial().words[:-1]]
        return []  # a decoder we know nothing about: everything at the end

    def _extend(self, words: list[str]) -> list[str]:
        n = len(self.stable)
        if len(words) <= n or words[:n] != self.stable:
            return []
        self.stable = words
        return words[n:]

    def _finish(self) -> list[str]:
        self.transcript = self._decoder.finish()
        final = [word.word for word in self.transcript.words]
        n = len(self.stable)
        if final[:n] != self.stable:  # cannot happen with the decoders above; never hide it if it does
            log.error("streamed words %r are not a prefix of the final transcript %r", self.stable, final)
        self.stable = final
        return final[n:]


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


async def transcript_events(
    engine: Engine,
    samples: np.ndarray,
    hot_words: HotWords | None = None,
    job_seconds: list[float] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """`transcript.text.delta` events as words become certain, then `transcript.text.done`. The seconds spent
    computing (not waiting on the client) are added to `job_seconds` for the RTF metric."""
    job = IncrementalTranscription(engine, samples, hot_words=hot_words)
    sent = False
    while not job.finished:
        started = time.perf_counter()
        words = await run_in_threadpool(job.step)
        if job_seconds is not None:
            job_seconds[0] += time.perf_counter() - started
        if words:
            yield {"type": "transcript.text.delta", "delta": (" " if sent else "") + " ".join(words)}
            sent = True
    assert job.transcript is not None
    yield {"type": "transcript.text.done", "text": job.transcript.text}


async def _event_stream(
    request: Request, samples: np.ndarray, hot_words: HotWords | None, ticket: Ticket
) -> AsyncIterator[str]:
    """The SSE body: waits for its worker slot (reserved before the 200 went out), then streams the events."""
    computing = [0.0]
    try:
        async with ticket:
            async for event in transcript_events(request.app.state.engine, samples, hot_words, computing):
                yield _sse(event)
    except InferenceError as exc:  # the status line is sent already: report it as OpenAI's stream error
        yield _sse(_from_app_error(exc).body)
        return
    observe_audio(request.app, "/v1/audio/transcriptions", len(samples) / audio.SAMPLE_RATE, computing[0])


# --- routes --------------------------------------------------------------------------------------------------

REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
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
            },
            "encoding": {"timestamp_granularities[]": {"style": "form", "explode": True}},
        }
    },
}

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
    413: _error_doc("upload larger than DS_MAX_UPLOAD_BYTES, or audio longer than the duration cap"),
    415: _error_doc("audio that cannot be decoded"),
    500: _error_doc("the model failed on this audio"),
    503: _error_doc("every worker busy and the queue full (server_busy), or the server is shutting down"),
}


@router.post(
    "/audio/transcriptions",
    openapi_extra={"requestBody": REQUEST_BODY},
    responses=TRANSCRIPTION_RESPONSES,
    response_class=Response,
    summary="Transcribe audio (OpenAI-compatible)",
)
async def create_transcription(request: Request) -> Response:
    """OpenAI's `audio.transcriptions.create`; see the module documentation for what each field does here."""
    engine: Engine = request.app.state.engine
    try:
        req = await _parse(request)
        try:
            hot = engine.decoder.check_options(hot_words=parse_hot_words(list(req.hot_words)))
        except DecodeOptionError as exc:
            raise OpenAIError(400, str(exc), param="hot_words", code="invalid_hot_words") from exc
        max_seconds = request.app.state.settings.max_audio_seconds
        if req.stream:
            # A place in the queue first (full: a 503 now, before the 200 is sent), so that decoding, like the
            # model, runs for a bounded number of requests at once; the worker slot is taken in the body.
            ticket = request.app.state.admission.reserve()
            try:
                samples, duration = await run_in_threadpool(audio.decode_audio, req.data, max_seconds)
            except BaseException:
                ticket.release()
                raise
            return StreamingResponse(
                _event_stream(request, samples, hot, ticket),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(ticket.release),  # also when the body never ran (client gone)
            )
        async with request.app.state.admission.inference():  # decoding counts against the workers too
            samples, duration = await run_in_threadpool(audio.decode_audio, req.data, max_seconds)
            result = await run_in_threadpool(engine.transcribe, samples, hot_words=hot)
        observe_audio(request.app, "/v1/audio/transcriptions", result.duration, result.processing_seconds)
    except OpenAIError as exc:
        return exc.response()
    except (audio.AudioError, UploadTooLarge, InferenceError, ServiceBusy) as exc:
        return _from_app_error(exc).response()
    return _formatted(result.transcript, duration, req, _model_language(request))


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
async def list_models(request: Request) -> ModelList:
    """The one loaded model; its id is the model directory's name (`created`: when it was converted)."""
    return ModelList(data=[_model_object(request.app.state.engine)])


@router.get(
    "/models/{model_id}",
    response_model=ModelObject,
    responses={404: _error_doc("no such model")},
    summary="Describe the served model (OpenAI-compatible)",
)
async def retrieve_model(request: Request, model_id: str) -> ModelObject | JSONResponse:
    """The loaded model if `model_id` is its id, else 404 in OpenAI's shape."""
    model = _model_object(request.app.state.engine)
    if model_id != model.id:
        return OpenAIError(
            404,
            f"The model '{model_id}' does not exist; this server serves '{model.id}'",
            param="model",
            code="model_not_found",
        ).response()
    return model
