"""Websocket /vosk: the protocol of Vosk's server (alphacep/vosk-server, websocket/asr_server.py), so Vosk's
clients work unchanged.

Client → server: optional `{"config": {"sample_rate": 16000, "words": 1, "phrase_list": [...],
"max_alternatives": 3, "format": "webm", "endpoint_silence_ms": 700}}` (no reply, as Vosk; like Vosk, a grammar
applies from the first audio), binary frames of s16le mono PCM (or the declared container), `{"eof" : 1}` (final
result, then close) and `{"reset" : 1}` (final result, the session goes on with fresh state). Control messages
are parsed as JSON, not compared byte for byte as Vosk does, so `{"eof":1}` works too. `phrase_list` is a grammar
as in Vosk (app/speech/decoding/grammar.py): only its phrases' words come out, `[unk]` for anything else.
Server → client: exactly one reply per client message: after audio, `{"result": [{"conf", "start", "end",
"word"}], "text": "..."}` when an utterance ended in it (Vosk's AcceptWaveform returned true), else
`{"partial": "..."}` of the utterance in progress; for eof/reset the result of what was heard since the last one
(or `{"text": ""}`).
Vosk's default sample rate is 8000 Hz; so is this endpoint's unless the config says otherwise.
The stream's life (admission, deadlines, drain, failures) is the controller's (app/service/streams.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, WebSocket

from app.routes.websocket import WebSocketChannel
from app.service.stream_protocol import endpoint_silence, stream_options
from app.service.streams import StreamController
from app.speech.audio import UnsupportedAudio
from app.speech.decoding import Transcript, parse_grammar
from app.speech.utterances import Utterance, merge_utterances
from app.web.deps import ServicesDep

router = APIRouter(tags=["streaming"])

VOSK_DEFAULT_RATE = 8000


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


class VoskDialect:
    """Vosk's protocol for one connection, with the settings its config messages declared."""

    route = "/vosk"

    def __init__(self) -> None:
        self.spec: tuple[str, int] = ("pcm", VOSK_DEFAULT_RATE)  # the declared (format, sample rate)
        self.words = True
        self.max_alternatives = 0
        self.options: dict[str, Any] = {"hot_words": None, "alternatives": 1}  # the session's (session_options)

    def input_spec(self) -> tuple[str, int]:
        return self.spec

    def error(self, code: str, message: str) -> dict[str, Any]:
        return {"error": message}  # Vosk has no error codes, only a message

    def warning(self, code: str, message: str) -> None:
        return None  # Vosk has no such message (the metrics and the log still say it)

    def ending_notice(self, code: str, message: str) -> None:
        return None  # the final result of what was heard, as for eof

    def final(self, stream: StreamController, transcript: Transcript) -> list[dict[str, Any]]:
        # Vosk's FinalResult: what was heard since the last result, not the whole stream.
        return [self._result(stream.take_utterances())]

    def _result(self, utterances: list[Utterance]) -> dict[str, Any]:
        return vosk_result(merge_utterances(utterances), self.words, self.max_alternatives)

    async def on_audio(self, stream: StreamController, data: bytes) -> None:
        try:
            await stream.feed(data)
        except UnsupportedAudio as exc:
            await stream.send({"error": str(exc)})
            return
        # AcceptWaveform returned true: the utterances that ended (all of them, in one result, as Kaldi's
        # recognizer finalizes everything decoded when it sees an endpoint); else the partial.
        utterances = stream.take_utterances()
        if utterances:
            await stream.send(self._result(utterances))
        else:
            await stream.send({"partial": stream.session.partial_text})

    async def on_partial(self, stream: StreamController, text: str | None) -> None:
        return None  # one reply per client message: the next audio frame's reply carries it

    async def on_control(self, stream: StreamController, control: dict[str, Any]) -> bool:
        if isinstance(control.get("config"), dict):
            await self._configure(stream, control["config"])  # Vosk answers nothing to a valid config message
            return False
        if control.get("eof") or control.get("reset"):
            transcript, _ = await stream.finish()
            for message in self.final(stream, transcript):
                await stream.send(message)
            if control.get("eof"):
                return True
            await stream.reset(**self.options)
            return False
        await stream.send({"error": "expected a config, eof or reset message, or binary audio"})
        return False

    async def _configure(self, stream: StreamController, config: dict[str, Any]) -> None:
        requested = (config.get("format", "pcm"), _as_rate(config.get("sample_rate", self.spec[1])))
        try:
            options = session_options(stream, config)
            if stream.session.samples_in == 0:  # as Vosk: biasing and grammar apply before the first audio
                stream.new_session(**options)
            opened = stream.open_audio(str(requested[0]), requested[1])
        except (ValueError, TypeError, OverflowError) as exc:
            await stream.send({"error": str(exc)})
            return
        stream.use_audio(opened)
        stream.note_activity()
        self.spec, self.words = (str(requested[0]), requested[1]), bool(config.get("words", self.words))
        self.options, self.max_alternatives = options, int(config.get("max_alternatives", 0))


def session_options(stream: StreamController, config: dict[str, Any]) -> dict[str, Any]:
    """A config's decoding options: `phrase_list` a grammar (as in Vosk, not a boost), `hot_words` boosts,
    `max_alternatives` the N best, `endpoint_silence_ms` the pause that ends an utterance."""
    hot, _ = stream_options({key: value for key, value in config.items() if key != "phrase_list"})
    phrases = config.get("phrase_list")
    alphabet = stream.services.engine.decoder.alphabet
    return {
        "hot_words": hot,
        "alternatives": max(1, int(config.get("max_alternatives", 0))),
        "silence_ms": endpoint_silence(config),
        "grammar": None if phrases is None else parse_grammar(phrases, alphabet),
    }


def _as_rate(value: Any) -> Any:
    # Vosk's clients send the rate as a number, often a float (wave's getframerate() is an int, others not).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # StreamAudio.open rejects anything else with a message


@router.websocket("/vosk")
async def vosk(websocket: WebSocket, services: ServicesDep) -> None:
    channel = WebSocketChannel.for_settings(websocket, services.settings)
    await StreamController(services, channel, VoskDialect()).run()
