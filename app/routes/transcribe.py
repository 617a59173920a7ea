"""POST /transcribe: a whole upload through the dynamic model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.audio import decode_audio
from app.engine import Engine

router = APIRouter(tags=["transcription"])


class WordTiming(BaseModel):
    word: str
    start: float
    end: float
    confidence: float


class TranscriptionResponse(BaseModel):
    text: str
    duration: float
    words: list[WordTiming]
    confidence: float
    model: str
    backend: str
    decoder: str
    processing_seconds: float


@router.post("/transcribe", response_model=TranscriptionResponse)
async def transcribe(
    request: Request,
    file: Annotated[
        UploadFile, File(description="audio: WAV, FLAC, OGG (Vorbis/Opus) or MP3; any rate, mono or stereo")
    ],
) -> TranscriptionResponse:
    """Transcribe one file: decode, resample to 16 kHz mono, run the model over all of it, beam-search decode."""
    engine: Engine = request.app.state.engine
    data = await file.read()
    samples, duration = await run_in_threadpool(decode_audio, data)
    result = await run_in_threadpool(engine.transcribe, samples)
    transcript = result.transcript
    return TranscriptionResponse(
        text=transcript.text,
        duration=round(duration, 3),
        words=[WordTiming(**asdict(word)) for word in transcript.words],
        confidence=transcript.confidence,
        model=engine.model_dir.name,
        backend=engine.model.backend,
        decoder=engine.decoder.description,
        processing_seconds=round(result.processing_seconds, 3),
    )
