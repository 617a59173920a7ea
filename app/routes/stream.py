"""Websocket /stream: audio in, partial transcripts out as audio arrives, a final one at the end.

Protocol (text frames are JSON):
- optional first message `{"type": "config", "sample_rate": 8000}` (s16le PCM at 8–48 kHz; default 16000) or
  `{"type": "config", "format": "webm"}` (`webm`/`ogg` as browsers' MediaRecorder makes, decoded incrementally),
  with optional `"hot_words": {"word": boost} | "word:boost,..."`, `"phrase_list": [...]` (Vosk's biasing) and
  `"alternatives": N` (each utterance and the final carry the N best) and `"endpoint_silence_ms": N` (the pause
  that ends an utterance, 0: none; default DS_ENDPOINT_SILENCE_MS),
- binary frames of audio, any size (PCM: an even number of bytes),
- `{"type": "eof"}` ends the audio: the server answers the final and closes with 1000.
Server → client: `{"type": "utterance", "text", "words", "start", "end", "confidence"}` when a pause (or
DS_MAX_UTTERANCE_SECONDS) ends an utterance (app/speech/endpoint.py); `{"type": "partial", "text"}` whenever the
text of the utterance in progress changes; `{"type": "final", "text", "words", "confidence", "duration",
"utterance"}` after eof: text and words of the whole stream, `utterance` the last one (eof ended it; null when a
pause already had), so the utterance messages and the final's utterance together are the whole transcript; and
`{"type": "error", "code", "message"}` for a bad message (the stream goes on); `{"type": "warning", "code",
"message"}` once when the decoder runs under pressure (`decoder_limited`: noise keeps its beam full, so it keeps
less history to bound its memory; the stream goes on).
A client that closes without eof gets no final: a closed websocket cannot carry one.

Resuming after a network blip (app/service/resume.py): `"resumable": true` in the config makes the server answer
`{"type": "resumable", "stream_id", "resume_token", "window", "resume_url"}` and acknowledge every binary frame
with `{"type": "ack", "bytes": N}` (all binary bytes received so far). If the connection drops, the stream's
state waits `window` seconds (DS_STREAM_RESUME_SECONDS); a new connection to `resume_url` (a path and query,
relative to the address the client connected to) whose first message is `{"type": "resume", "stream_id",
"resume_token", "bytes": last acked N}` gets `{"type": "resumed", "stream_id", "resume_token" (a new one: tokens
are single-use), "bytes", "text", "resume_url"}` and resends its audio from byte `bytes` (the server's count: acks
may have been lost with the connection). The transcript goes on as if nothing happened. A refused resume
(`resume_refused`) leaves an ordinary new stream. `resume_url` is `/stream`, or with DS_REPLICA_ID
`/stream?replica=r1`: the state lives in one replica's memory, and a load balancer routes on that parameter
(deploy/haproxy/haproxy.cfg); this service itself ignores it, so resuming on plain `/stream` works as before.

The stream's life (admission, deadlines, drain, failures, parking) is the controller's (app/service/streams.py);
this module translates messages.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, WebSocket

from app.routes.websocket import WebSocketChannel
from app.service.resume import ResumeRefused
from app.service.stream_protocol import endpoint_silence, stream_options
from app.service.streams import StreamController
from app.speech.audio import SAMPLE_RATE, UnsupportedAudio
from app.speech.decoding import Transcript
from app.speech.utterances import Utterance
from app.web.deps import ServicesDep

router = APIRouter(tags=["streaming"])


def error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def utterance_message(utterance: Utterance) -> dict[str, Any]:
    return {"type": "utterance", **utterance.to_dict()}


class StreamDialect:
    """The /stream protocol of one connection."""

    route = "/stream"

    def input_spec(self) -> tuple[str, int]:
        return "pcm", SAMPLE_RATE

    def error(self, code: str, message: str) -> dict[str, Any]:
        return error(code, message)

    def ending_notice(self, code: str, message: str) -> dict[str, Any]:
        return error(code, message)

    def warning(self, code: str, message: str) -> dict[str, Any]:
        return {"type": "warning", "code": code, "message": message}

    def final(self, stream: StreamController, transcript: Transcript) -> list[dict[str, Any]]:
        # The utterances eof finished: all but the last as utterance messages, the last in the final (whose
        # text and words stay the whole stream's, as before utterances existed).
        before = stream.take_utterances()
        last = before.pop() if before else None
        final = {
            "type": "final",
            **transcript.to_dict(),
            "duration": round(stream.session.audio_seconds, 3),
            "utterance": None if last is None else last.to_dict(),
        }
        return [*(utterance_message(u) for u in before), final]

    async def on_audio(self, stream: StreamController, data: bytes) -> None:
        try:
            partial = await stream.feed(data)
        except UnsupportedAudio as exc:
            await stream.send(error("bad_frame", str(exc)))
            partial = None
        await self.on_partial(stream, partial)
        if stream.resumable is not None:
            await stream.send({"type": "ack", "bytes": stream.state.bytes_in})

    async def on_partial(self, stream: StreamController, text: str | None) -> None:
        for utterance in stream.take_utterances():
            await stream.send(utterance_message(utterance))
        if text is not None:
            await stream.send({"type": "partial", "text": text})

    async def on_control(self, stream: StreamController, control: dict[str, Any]) -> bool:
        kind = control.get("type")
        if kind == "config":
            await self._configure(stream, control)
        elif kind == "resume":
            await self._resume(stream, control)
        elif kind == "eof":
            transcript, bad_tail = await stream.finish()
            if bad_tail is not None:
                await stream.send(error("bad_audio", str(bad_tail)))
            for message in self.final(stream, transcript):
                await stream.send(message)
            return True
        else:
            await stream.send(
                error("bad_message", f"unknown message type {kind!r}; expected config, resume or eof")
            )
        return False

    async def _configure(self, stream: StreamController, control: dict[str, Any]) -> None:
        if stream.state.audio is not None or stream.resumable is not None:
            await stream.send(error("bad_config", "config must come before any audio"))
            return
        try:
            audio = stream.open_audio(control.get("format", "pcm"), control.get("sample_rate", SAMPLE_RATE))
        except ValueError as exc:
            await stream.send(error("bad_config", str(exc)))
            return
        try:
            hot_words, alternatives = stream_options(control)
            silence_ms = endpoint_silence(control)
            if hot_words or alternatives != 1 or silence_ms is not None:
                stream.new_session(hot_words, alternatives, silence_ms)
        except ValueError as exc:  # DecodeOptionError is a ValueError too
            audio.close()
            await stream.send(error("bad_config", str(exc)))
            return
        stream.use_audio(audio)
        stream.note_activity()
        if control.get("resumable") is True:
            await stream.send(
                {"type": "resumable", **stream.make_resumable(), "resume_url": resume_url(stream)}
            )

    async def _resume(self, stream: StreamController, control: dict[str, Any]) -> None:
        if stream.state.audio is not None or stream.resumable is not None or stream.state.bytes_in:
            await stream.send(error("bad_resume", "resume must be the first message"))
            return
        try:
            token = stream.resume(control.get("stream_id"), control.get("resume_token"), control.get("bytes"))
        except ResumeRefused as exc:
            await stream.send(error("resume_refused", str(exc)))
            return
        assert stream.resumable is not None
        await stream.send(
            {
                "type": "resumed",
                "stream_id": stream.resumable.stream_id,
                "resume_token": token,
                "bytes": stream.state.bytes_in,  # resend from here (the client may have missed acks)
                "text": stream.session.partial_text,
                "resume_url": resume_url(stream),
            }
        )


def resume_url(stream: StreamController) -> str:
    """Where a dropped resumable stream reconnects: this route, naming the replica that holds its state (the one
    that serves this connection) for the load balancer to route on. Only the replica, not the stream id: that is
    all the balancer needs, and the id goes in the resume message with its token, not into access logs."""
    replica = stream.services.settings.replica_id
    return f"{StreamDialect.route}?{urlencode({'replica': replica})}" if replica else StreamDialect.route


@router.websocket("/stream")
async def stream(websocket: WebSocket, services: ServicesDep) -> None:
    channel = WebSocketChannel.for_settings(websocket, services.settings)
    await StreamController(services, channel, StreamDialect()).run()
