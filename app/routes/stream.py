"""Websocket /stream: s16le PCM in, partial transcripts out as audio arrives, a final one at the end.

Protocol (text frames are JSON):
- optional first message `{"type": "config", "sample_rate": 8000}` (8–48 kHz; default 16000),
- binary frames of s16le mono PCM at that rate, any size (an even number of bytes),
- `{"type": "eof"}` ends the audio: the server answers the final and closes with 1000.
Server → client: `{"type": "partial", "text"}` whenever the text changes, `{"type": "final", "text", "words",
"confidence", "duration"}`, and `{"type": "error", "code", "message"}` for a bad message (the stream goes on).
A client that closes without eof gets no final: a closed websocket cannot carry one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import soxr
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from app.audio import SAMPLE_RATE
from app.engine import Engine
from app.features import int16_to_float

router = APIRouter(tags=["streaming"])
log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 48000


class _Resampler:
    """Streaming resampler to 16 kHz (soxr keeps its filter state between chunks)."""

    def __init__(self, rate: int) -> None:
        self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        return np.asarray(self._stream.resample_chunk(samples, last=last), np.float32)


def _error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def _parse_rate(message: dict[str, Any]) -> int:
    config = message.get("config", message)
    rate = config.get("sample_rate", SAMPLE_RATE) if isinstance(config, dict) else None
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    return rate


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    await websocket.accept()
    session = engine.open_stream()
    resample: _Resampler | None = None
    audio_started = False
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                data: bytes = message["bytes"]
                if len(data) % 2:
                    await websocket.send_json(
                        _error("bad_frame", f"odd frame of {len(data)} bytes; send s16le PCM")
                    )
                    continue
                audio_started = True
                samples = int16_to_float(data)
                if resample is not None:
                    samples = resample(samples)
                partial = await run_in_threadpool(session.feed, samples)
                if partial is not None:
                    await websocket.send_json({"type": "partial", "text": partial})
                continue
            try:
                control = json.loads(message.get("text") or "")
                if not isinstance(control, dict):
                    raise ValueError("a control message is a JSON object")
            except ValueError as exc:
                await websocket.send_json(_error("bad_message", f"not a JSON object: {exc}"))
                continue
            kind = control.get(
                "type", "config" if ("config" in control or "sample_rate" in control) else None
            )
            if kind == "config":
                if audio_started:
                    await websocket.send_json(_error("bad_config", "config must come before any audio"))
                    continue
                try:
                    rate = _parse_rate(control)
                except ValueError as exc:
                    await websocket.send_json(_error("bad_config", str(exc)))
                    continue
                resample = _Resampler(rate) if rate != SAMPLE_RATE else None
            elif kind == "eof":
                if resample is not None:
                    await run_in_threadpool(session.feed, resample(np.zeros(0, np.float32), last=True))
                transcript = await run_in_threadpool(session.finish)
                await websocket.send_json(
                    {
                        "type": "final",
                        "text": transcript.text,
                        "words": [asdict(word) for word in transcript.words],
                        "confidence": transcript.confidence,
                        "duration": round(session.audio_seconds, 3),
                    }
                )
                await websocket.close(1000)
                return
            else:
                await websocket.send_json(
                    _error("bad_message", f"unknown message type {kind!r}; expected config or eof")
                )
    except WebSocketDisconnect:
        return
