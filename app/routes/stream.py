"""Websocket /stream: audio in, partial transcripts out as audio arrives, a final one at the end.

Protocol (text frames are JSON):
- optional first message `{"type": "config", "sample_rate": 8000}` (s16le PCM at 8–48 kHz; default 16000) or
  `{"type": "config", "format": "webm"}` (`webm`/`ogg` as browsers' MediaRecorder makes, decoded incrementally),
- binary frames of audio, any size (PCM: an even number of bytes),
- `{"type": "eof"}` ends the audio: the server answers the final and closes with 1000.
Server → client: `{"type": "partial", "text"}` whenever the text changes, `{"type": "final", "text", "words",
"confidence", "duration"}`, and `{"type": "error", "code", "message"}` for a bad message (the stream goes on).
A client that closes without eof gets no final: a closed websocket cannot carry one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from app.audio import SAMPLE_RATE, UnsupportedAudio
from app.decoding import Transcript
from app.engine import Engine
from app.session import StreamSession
from app.stream_audio import StreamAudio

router = APIRouter(tags=["streaming"])


def _error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def final_message(transcript: Transcript, session: StreamSession) -> dict[str, Any]:
    return {
        "type": "final",
        "text": transcript.text,
        "words": [asdict(word) for word in transcript.words],
        "confidence": transcript.confidence,
        "duration": round(session.audio_seconds, 3),
    }


async def finish_stream(session: StreamSession, audio: StreamAudio) -> Transcript:
    """Flush the input's tail (resampler, decoder) into the session, then the session's own tail."""
    await run_in_threadpool(session.feed, await run_in_threadpool(audio.finish))
    return await run_in_threadpool(session.finish)


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    await websocket.accept()
    session = engine.open_stream()
    audio: StreamAudio | None = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                audio = audio or StreamAudio.open()
                try:
                    samples = await run_in_threadpool(audio.push, message["bytes"])
                except UnsupportedAudio as exc:
                    await websocket.send_json(_error("bad_frame", str(exc)))
                    continue
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
            kind = control.get("type")
            if kind == "config":
                if audio is not None:
                    await websocket.send_json(_error("bad_config", "config must come before any audio"))
                    continue
                try:
                    audio = StreamAudio.open(
                        control.get("format", "pcm"), control.get("sample_rate", SAMPLE_RATE)
                    )
                except ValueError as exc:
                    await websocket.send_json(_error("bad_config", str(exc)))
            elif kind == "eof":
                try:
                    transcript = await finish_stream(session, audio or StreamAudio.open())
                except UnsupportedAudio as exc:
                    await websocket.send_json(_error("bad_audio", str(exc)))
                    transcript = await run_in_threadpool(session.finish)
                await websocket.send_json(final_message(transcript, session))
                await websocket.close(1000)
                return
            else:
                await websocket.send_json(
                    _error("bad_message", f"unknown message type {kind!r}; expected config or eof")
                )
    except WebSocketDisconnect:
        return
    finally:
        if audio is not None:
            audio.close()
