"""Websocket /stream: audio in, partial transcripts out as audio arrives, a final one at the end.

Protocol (text frames are JSON):
- optional first message `{"type": "config", "sample_rate": 8000}` (s16le PCM at 8–48 kHz; default 16000) or
  `{"type": "config", "format": "webm"}` (`webm`/`ogg` as browsers' MediaRecorder makes, decoded incrementally),
  with optional `"hot_words": {"word": boost} | "word:boost,..."`, `"phrase_list": [...]` (Vosk's biasing) and
  `"alternatives": N` (the final carries the N best),
- binary frames of audio, any size (PCM: an even number of bytes),
- `{"type": "eof"}` ends the audio: the server answers the final and closes with 1000.
Server → client: `{"type": "partial", "text"}` whenever the text changes, `{"type": "final", "text", "words",
"confidence", "duration"}`, and `{"type": "error", "code", "message"}` for a bad message (the stream goes on).
A client that closes without eof gets no final: a closed websocket cannot carry one.

Resuming after a network blip (app/service/resume.py): `"resumable": true` in the config makes the server answer
`{"type": "resumable", "stream_id", "resume_token", "window"}` and acknowledge every binary frame with
`{"type": "ack", "bytes": N}` (all binary bytes received so far). If the connection drops, the stream's state
waits `window` seconds (DS_STREAM_RESUME_SECONDS); a new connection whose first message is
`{"type": "resume", "stream_id", "resume_token", "bytes": last acked N}` gets `{"type": "resumed", "stream_id",
"resume_token" (a new one: tokens are single-use), "bytes", "text"}` and resends its audio from byte `bytes`
(the server's count: acks may have been lost with the connection). The transcript goes on as if nothing happened.
A refused resume (`resume_refused`) leaves an ordinary new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from app.drain import GOING_AWAY, ServerDraining
from app.metrics import observe_stream, stream_closed, stream_failed, stream_opened
from app.service.resume import ResumableStream, ResumableStreams, ResumeRefused
from app.speech.audio import SAMPLE_RATE, UnsupportedAudio
from app.speech.decoding import DecodeOptionError, Transcript, parse_hot_words, phrase_list_hot_words
from app.speech.engine import Engine
from app.speech.runtime import InferenceError
from app.speech.session import StreamSession
from app.speech.stream_audio import StreamAudio
from app.web.auth import bearer_token, query_key

router = APIRouter(tags=["streaming"])
log = logging.getLogger(__name__)

INTERNAL_ERROR = 1011  # websocket close code: the server hit an error it cannot go on from


def _error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


FAILURE_TEXT = {
    "inference_failed": "the model failed on this stream's audio; the stream is closed (other streams are "
    "unaffected); open a new one",
    "internal_error": "an internal error ended this stream (the server logged it); open a new stream",
}


def stream_error(code: str) -> dict[str, str]:
    return _error(code, FAILURE_TEXT[code])


def final_message(transcript: Transcript, session: StreamSession) -> dict[str, Any]:
    message = {"type": "final", **transcript.to_dict(), "duration": round(session.audio_seconds, 3)}
    return message


def stream_options(config: dict[str, Any]) -> tuple[dict[str, float] | None, int]:
    """Hot words (`hot_words` as a mapping or `word:boost,...`, merged with Vosk-style `phrase_list`) and N-best."""
    raw = config.get("hot_words")
    hot: dict[str, float] = {}
    if isinstance(raw, dict):
        hot.update(raw)
    elif raw is not None:
        if isinstance(raw, list) and not all(isinstance(spec, str) for spec in raw):
            raise DecodeOptionError(
                "hot_words must be {word: boost}, 'word:boost,...' or a list of such strings"
            )
        hot.update(parse_hot_words(raw if isinstance(raw, list) else [str(raw)]) or {})
    if config.get("phrase_list") is not None:
        phrases = config["phrase_list"]
        if not isinstance(phrases, list):
            raise DecodeOptionError("phrase_list must be a list of phrases")
        hot = {**phrase_list_hot_words(phrases), **hot}
    alternatives = config.get("alternatives", 1)
    return hot or None, alternatives


async def finish_stream(session: StreamSession, audio: StreamAudio) -> Transcript:
    """Flush the input's tail (resampler, decoder) into the session, then the session's own tail."""
    await run_in_threadpool(session.feed, await run_in_threadpool(audio.finish))
    return await run_in_threadpool(session.finish)


async def final_transcript(session: StreamSession, audio: StreamAudio) -> Transcript:
    """`finish_stream`, or when the input's tail does not decode, the transcript of what did."""
    try:
        return await finish_stream(session, audio)
    except UnsupportedAudio:
        return await run_in_threadpool(session.finish)


class ClientTooSlow(TimeoutError):
    """The client left the server's messages unread for DS_STREAM_SEND_TIMEOUT seconds (its buffers are full)."""


async def send_message(websocket: WebSocket, message: dict[str, Any]) -> None:
    """send_json with a deadline: a client that stops reading cannot hold a stream (and its slot) forever."""
    timeout = websocket.app.state.settings.stream_send_timeout
    try:
        await asyncio.wait_for(websocket.send_json(message), timeout)
    except TimeoutError:
        raise ClientTooSlow(
            f"the client read nothing for {timeout:g} s (DS_STREAM_SEND_TIMEOUT); the stream was dropped"
        ) from None


async def end_stream(websocket: WebSocket, message: dict[str, Any] | None, code: int) -> None:
    """Last words and the close, if the client is still there to get them."""
    with contextlib.suppress(WebSocketDisconnect, ClientTooSlow, RuntimeError):
        if message is not None:
            await send_message(websocket, message)
        await asyncio.wait_for(websocket.close(code), websocket.app.state.settings.stream_send_timeout)


async def stream_failure(websocket: WebSocket, route: str, exc: Exception, message: Any) -> None:
    """A stream that cannot go on: the model failed on it, or a bug. It alone ends (1011); others continue."""
    if isinstance(exc, ClientTooSlow):
        log.warning("%s: %s", route, exc)
        stream_failed(websocket.app, route, "client_too_slow")
        return
    code = "inference_failed" if isinstance(exc, InferenceError) else "internal_error"
    if code == "internal_error":
        log.exception("%s: the stream failed; it was closed with 1011 (other streams go on)", route)
    else:
        log.error("%s: the model failed on a stream: %s; it was closed with 1011", route, exc)
    stream_failed(websocket.app, route, code)
    await end_stream(websocket, message(code), INTERNAL_ERROR)


class StreamIdle(TimeoutError):
    """The client sent nothing for DS_STREAM_IDLE_TIMEOUT seconds."""


class StreamTooLong(TimeoutError):
    """The stream reached DS_STREAM_MAX_SECONDS of audio or of wall-clock time: it gets its final and closes."""


def check_stream_length(websocket: WebSocket, session: StreamSession) -> None:
    """Raise StreamTooLong once the stream's audio or its time open passes DS_STREAM_MAX_SECONDS."""
    limit = websocket.app.state.settings.stream_max_seconds
    if session.audio_seconds >= limit or time.monotonic() >= websocket.state.deadline:
        raise StreamTooLong(
            f"the stream reached its maximum length of {limit:g} s (DS_STREAM_MAX_SECONDS); this is its final "
            "transcript; open a new stream to go on"
        )


TRY_AGAIN_LATER = 1013  # websocket close code: the server is at its stream limit


async def admit_stream(websocket: WebSocket) -> bool:
    """Accept the websocket if a stream slot is free, else refuse it with 1013 (try again later)."""
    if not websocket.app.state.admission.open_stream():
        # Accepted first: a close before accept reaches the client as HTTP 403, the same as a bad API key.
        await websocket.accept()
        await websocket.close(TRY_AGAIN_LATER, reason="too many open streams; retry shortly")
        return False
    await websocket.accept()
    websocket.state.deadline = time.monotonic() + websocket.app.state.settings.stream_max_seconds
    return True


MAX_CONTROL_CHARS = 64 * 1024  # control messages are a few hundred bytes; anything this big is not one


async def receive_message(websocket: WebSocket) -> bytes | dict[str, Any]:
    """The next client message: audio bytes, or a control message parsed as a JSON object (not compared as
    text). Raises WebSocketDisconnect when the client has gone, ValueError for text that is not a JSON object,
    StreamIdle / StreamTooLong at the stream's time limits and ServerDraining when the service shuts down."""
    idle_timeout = websocket.app.state.settings.stream_idle_timeout
    remaining = websocket.state.deadline - time.monotonic()
    draining = websocket.app.state.drain.event
    receiving = asyncio.ensure_future(websocket.receive())
    shutdown = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait(
            {receiving, shutdown}, timeout=max(0.0, min(idle_timeout, remaining)), return_when=FIRST_COMPLETED
        )
    finally:
        shutdown.cancel()
        if not receiving.done():
            receiving.cancel()
    if draining.is_set():  # even with audio waiting: a busy stream must not hold the shutdown up
        raise ServerDraining("the server is shutting down; this is the stream's final transcript")
    if not receiving.done() or receiving.cancelled():
        if remaining <= idle_timeout:
            raise StreamTooLong("the stream was open for DS_STREAM_MAX_SECONDS; this is its final transcript")
        raise StreamIdle(f"no message for {idle_timeout:g} s; the stream was closed (DS_STREAM_IDLE_TIMEOUT)")
    message = receiving.result()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("bytes") is not None:
        return bytes(message["bytes"])
    text = message.get("text") or ""
    if len(text) > MAX_CONTROL_CHARS:
        raise ValueError(f"a control message of {len(text)} characters; the limit is 64 KB")
    try:
        control = json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    if not isinstance(control, dict):
        raise ValueError("a control message is a JSON object")
    return control


async def feed_audio(
    websocket: WebSocket, session: StreamSession, audio: StreamAudio, data: bytes
) -> str | None:
    """Decode one audio frame into the session; the new partial text if it changed. Raises UnsupportedAudio,
    and StreamTooLong once the stream is over its maximum length (before taking more audio)."""
    check_stream_length(websocket, session)
    return await run_in_threadpool(lambda: session.feed(audio.push(data)))  # one thread hop per frame


@dataclass
class StreamState:
    """What a /stream connection works on; parked whole when a resumable stream's connection drops."""

    session: StreamSession
    audio: StreamAudio | None = None
    bytes_in: int = 0  # binary bytes received and handled (taken, or refused as a bad frame): the ack count

    def close(self) -> None:
        if self.audio is not None:
            self.audio.close()


def expire_parked(app: Any) -> Callable[[StreamState], None]:
    """What happens to a parked stream nobody came back for: its decoder is closed, its audio counted."""

    def expire(state: StreamState) -> None:
        state.close()
        observe_stream(app, "/stream", state.session)

    return expire


def presented_key(websocket: WebSocket) -> bytes | None:
    """The API key this connection authenticated with (header or `?api_key=`), to bind resume tokens to it."""
    if not websocket.app.state.settings.api_key:
        return None
    return bearer_token(websocket.scope["headers"]) or query_key(websocket.scope.get("query_string", b""))


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    registry: ResumableStreams = websocket.app.state.resumable
    if not await admit_stream(websocket):
        return
    state = StreamState(engine.open_stream())
    resumable: ResumableStream | None = None
    parked = False
    stream_opened(websocket.app, "/stream")
    try:
        while True:
            try:
                message = await receive_message(websocket)
            except ValueError as exc:
                await send_message(websocket, _error("bad_message", f"not a JSON object: {exc}"))
                continue
            if isinstance(message, bytes):
                state.audio = state.audio or StreamAudio.open()
                state.bytes_in += len(message)
                try:
                    partial = await feed_audio(websocket, state.session, state.audio, message)
                except UnsupportedAudio as exc:
                    await send_message(websocket, _error("bad_frame", str(exc)))
                    partial = None
                if partial is not None:
                    await send_message(websocket, {"type": "partial", "text": partial})
                if resumable is not None:
                    await send_message(websocket, {"type": "ack", "bytes": state.bytes_in})
                continue
            control = message
            kind = control.get("type")
            if kind == "config":
                if state.audio is not None or resumable is not None:
                    await send_message(websocket, _error("bad_config", "config must come before any audio"))
                    continue
                try:
                    state.audio = StreamAudio.open(
                        control.get("format", "pcm"),
                        control.get("sample_rate", SAMPLE_RATE),
                        websocket.app.state.settings.stream_max_seconds,
                    )
                    hot_words, alternatives = stream_options(control)
                    if hot_words or alternatives != 1:
                        state.session = engine.open_stream(hot_words=hot_words, alternatives=alternatives)
                except ValueError as exc:  # DecodeOptionError is a ValueError too
                    state.close()
                    state.audio = None
                    await send_message(websocket, _error("bad_config", str(exc)))
                    continue
                if control.get("resumable") is True:
                    resumable, token = registry.register(presented_key(websocket))
                    await send_message(
                        websocket,
                        {
                            "type": "resumable",
                            "stream_id": resumable.stream_id,
                            "resume_token": token,
                            "window": registry.window,
                        },
                    )
            elif kind == "resume":
                if state.audio is not None or resumable is not None or state.bytes_in:
                    await send_message(websocket, _error("bad_resume", "resume must be the first message"))
                    continue
                try:
                    acked = control.get("bytes")
                    if not isinstance(acked, int) or isinstance(acked, bool) or acked < 0:
                        raise ResumeRefused(
                            "resume needs `bytes`: the acknowledged byte count, an integer >= 0"
                        )
                    resumable, parked_state, token = registry.claim(
                        str(control.get("stream_id")),
                        str(control.get("resume_token")),
                        presented_key(websocket),
                    )
                except ResumeRefused as exc:
                    await send_message(websocket, _error("resume_refused", str(exc)))
                    continue
                state = parked_state
                await send_message(
                    websocket,
                    {
                        "type": "resumed",
                        "stream_id": resumable.stream_id,
                        "resume_token": token,
                        "bytes": state.bytes_in,  # resend from here (the client may have missed acks)
                        "text": state.session.partial_text,
                    },
                )
            elif kind == "eof":
                try:
                    transcript = await finish_stream(state.session, state.audio or StreamAudio.open())
                except UnsupportedAudio as exc:
                    await send_message(websocket, _error("bad_audio", str(exc)))
                    transcript = await run_in_threadpool(state.session.finish)
                await send_message(websocket, final_message(transcript, state.session))
                await websocket.close(1000)
                return
            else:
                await send_message(
                    websocket,
                    _error("bad_message", f"unknown message type {kind!r}; expected config, resume or eof"),
                )
    except WebSocketDisconnect:
        if resumable is not None and not state.session.finished:
            registry.park(resumable, state)  # the client may come back within the window
            parked = True
        return
    except StreamIdle as exc:
        await end_stream(websocket, _error("idle_timeout", str(exc)), 1000)
    except (StreamTooLong, ServerDraining) as exc:
        too_long = isinstance(exc, StreamTooLong)
        try:
            await send_message(websocket, _error("max_duration" if too_long else "server_shutdown", str(exc)))
            transcript = await final_transcript(state.session, state.audio or StreamAudio.open())
            await end_stream(
                websocket, final_message(transcript, state.session), 1000 if too_long else GOING_AWAY
            )
        except WebSocketDisconnect:
            pass
        except Exception as failure:
            await stream_failure(websocket, "/stream", failure, stream_error)
    except Exception as exc:  # ClientTooSlow, InferenceError, or a bug: this stream ends, the others go on
        await stream_failure(websocket, "/stream", exc, stream_error)
    finally:
        websocket.app.state.admission.close_stream()
        if parked:
            stream_closed(websocket.app, "/stream")  # its audio is counted when it ends for good
        else:
            if resumable is not None:
                registry.forget(resumable)
            stream_closed(websocket.app, "/stream", state.session)
            state.close()
