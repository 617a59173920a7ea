"""Websocket /vosk: the protocol of Vosk's server (alphacep/vosk-server, websocket/asr_server.py), so Vosk's
clients work unchanged.

Client → server: optional `{"config": {"sample_rate": 16000, "words": 1, "phrase_list": [...],
"max_alternatives": 3, "format": "webm"}}` (no reply, as Vosk; like Vosk, biasing applies before the first
audio), binary frames of s16le mono PCM (or the declared container), `{"eof" : 1}` (final result, then close) and
`{"reset" : 1}` (final result, the session goes on with fresh state). Control messages are parsed as JSON, not
compared byte for byte as Vosk does, so `{"eof":1}` works too.
Server → client: exactly one reply per client message: `{"partial": "..."}` after audio, and
`{"result": [{"conf", "start", "end", "word"}], "text": "..."}` (or `{"text": ""}`) for eof/reset.
Vosk's default sample rate is 8000 Hz; so is this endpoint's unless the config says otherwise.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.drain import GOING_AWAY, ServerDraining
from app.metrics import observe_stream, stream_closed, stream_opened
from app.routes.stream import (
    FAILURE_TEXT,
    StreamIdle,
    StreamTooLong,
    admit_stream,
    end_stream,
    feed_audio,
    final_transcript,
    receive_message,
    send_message,
    stream_failure,
    stream_options,
)
from app.speech.audio import UnsupportedAudio
from app.speech.decoding import Transcript
from app.speech.engine import Engine
from app.speech.stream_audio import StreamAudio

router = APIRouter(tags=["streaming"])

VOSK_DEFAULT_RATE = 8000


def vosk_error(code: str) -> dict[str, str]:
    """A stream failure in Vosk's shape (it has no error codes, only a message)."""
    return {"error": FAILURE_TEXT[code]}


def vosk_result(transcript: Transcript, words: bool, alternatives: int = 0) -> dict[str, Any]:
    if alternatives > 0:
        return {
            "alternatives": [
                {
                    "confidence": round(alt.confidence, 6),
                    "result": [{"start": w.start, "end": w.end, "word": w.word} for w in alt.words],
                    "text": alt.text,
                }
                for alt in (transcript.alternatives or ())
            ]
            or [{"confidence": 1.0, "result": [], "text": transcript.text}]
        }
    if not transcript.text:
        return {"text": ""}
    result: dict[str, Any] = {}
    if words:
        result["result"] = [
            {"conf": round(w.confidence, 6), "end": w.end, "start": w.start, "word": w.word}
            for w in transcript.words
        ]
    result["text"] = transcript.text
    return result


@router.websocket("/vosk")
async def vosk(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    if not await admit_stream(websocket):
        return
    session = engine.open_stream()
    audio: StreamAudio | None = None
    spec: tuple[str, int] = ("pcm", VOSK_DEFAULT_RATE)  # the declared (format, sample rate)
    words = True
    hot_words: dict[str, float] | None = None
    max_alternatives = 0
    limit = websocket.app.state.settings.stream_max_seconds
    stream_opened(websocket.app, "/vosk")
    try:
        while True:
            try:
                message = await receive_message(websocket)
            except ValueError as exc:
                await send_message(websocket, {"error": f"not a JSON object: {exc}"})
                continue
            if isinstance(message, bytes):
                audio = audio or StreamAudio.open(*spec, max_seconds=limit)
                try:
                    await feed_audio(websocket, session, audio, message)
                except UnsupportedAudio as exc:
                    await send_message(websocket, {"error": str(exc)})
                    continue
                await send_message(websocket, {"partial": session.partial_text})
                continue
            control = message
            if isinstance(control.get("config"), dict):
                config = control["config"]
                requested = (str(config.get("format", "pcm")), _as_rate(config.get("sample_rate", spec[1])))
                try:
                    hot, _ = stream_options(config)
                    n_best = int(config.get("max_alternatives", 0))
                    if session.samples_in == 0:
                        session = engine.open_stream(hot_words=hot, alternatives=max(1, n_best))
                    opened = StreamAudio.open(*requested, max_seconds=limit)
                except (ValueError, TypeError, OverflowError) as exc:
                    await send_message(websocket, {"error": str(exc)})
                    continue
                if audio is not None:
                    audio.close()
                audio, spec, words = opened, requested, bool(config.get("words", words))
                hot_words, max_alternatives = hot, n_best
                continue  # Vosk answers nothing to a valid config message
            if control.get("eof") or control.get("reset"):
                audio = audio or StreamAudio.open(*spec, max_seconds=limit)
                transcript = await final_transcript(session, audio)
                await send_message(websocket, vosk_result(transcript, words, max_alternatives))
                if control.get("eof"):
                    await websocket.close(1000)
                    return
                audio.close()
                audio = StreamAudio.open(*spec, max_seconds=limit)
                observe_stream(websocket.app, "/vosk", session)  # counted now: the session is replaced
                session = engine.open_stream(hot_words=hot_words, alternatives=max(1, max_alternatives))
                continue
            await send_message(
                websocket, {"error": "expected a config, eof or reset message, or binary audio"}
            )
    except WebSocketDisconnect:
        return
    except StreamIdle as exc:
        await end_stream(websocket, {"error": str(exc)}, 1000)
    except (StreamTooLong, ServerDraining) as exc:  # the final result of what was heard, as for eof
        try:
            transcript = await final_transcript(session, audio or StreamAudio.open(*spec, max_seconds=limit))
            result = vosk_result(transcript, words, max_alternatives)
            await end_stream(websocket, result, GOING_AWAY if isinstance(exc, ServerDraining) else 1000)
        except Exception as failure:
            await stream_failure(websocket, "/vosk", failure, vosk_error)
    except Exception as exc:  # ClientTooSlow, InferenceError, or a bug: this stream ends, the others go on
        await stream_failure(websocket, "/vosk", exc, vosk_error)
    finally:
        websocket.app.state.admission.close_stream()
        stream_closed(websocket.app, "/vosk", session)
        if audio is not None:
            audio.close()


def _as_rate(value: Any) -> int:
    # Vosk's clients send the rate as a number, often a float (wave's getframerate() is an int, others not).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # StreamAudio.open rejects anything else with a message
