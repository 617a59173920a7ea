"""The Wyoming speech-to-text conversation, as a StreamDialect on the stream controller.

Client → server: `describe` (→ `info`), `transcribe` (optional: `language`, and since wyoming 1.8
`transcript_names` / `transcript_terms`, taken as hot words), `audio-start`, `audio-chunk`s, `audio-stop`.
Server → client: `transcript-start` at audio-start; `transcript-chunk`s as words become certain (the decoder
stream's stable words: a later frame cannot change them), so the chunks concatenate to the final text;
then `transcript` (the final text) and `transcript-stop`, and the connection closes, as wyoming-faster-whisper's
handler does after a transcript. A bad event gets an `error` event and the conversation goes on.
"""

from __future__ import annotations

from typing import Any

from app.service.streams import StreamController
from app.speech.audio import SAMPLE_RATE, UnsupportedAudio
from app.speech.decoding import DEFAULT_BOOST, Transcript

ROUTE = "wyoming"
NAME_BOOST = 2 * DEFAULT_BOOST  # Wyoming: names "take priority over terms"


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


class WyomingDialect:
    """One Wyoming connection's side of a stream."""

    route = ROUTE

    def __init__(self, info: dict[str, Any], language: str, hot_words: dict[str, float] | None) -> None:
        self._info = info  # the describe answer (server.py builds it once)
        self._language = language
        self._hot_words = hot_words  # DS_WYOMING_HOT_WORDS: Wyoming clients before 1.8 cannot send any
        self._started = False
        self._sent: list[str] = []  # the words the transcript-chunks carried so far

    def input_spec(self) -> tuple[str, int]:
        return "pcm", SAMPLE_RATE

    def error(self, code: str, message: str) -> dict[str, Any]:
        return event("error", text=message, code=code)

    def warning(self, code: str, message: str) -> None:
        return None  # Wyoming has no such event (the metrics and the log still say it)

    def ending_notice(self, code: str, message: str) -> None:
        return None  # the transcript of what was heard follows (drain, maximum length)

    def final(self, stream: StreamController, transcript: Transcript) -> list[dict[str, Any]]:
        stream.take_utterances()  # the text is the whole transcript; utterances have no Wyoming event
        text = transcript.text
        messages = []
        if not self._started:
            messages.append(event("transcript-start", language=self._language))
        chunk = self._chunk([word.word for word in transcript.words])
        if chunk is not None:
            messages.append(chunk)
        messages += [event("transcript", text=text, language=self._language), event("transcript-stop")]
        return messages

    async def on_audio(self, stream: StreamController, data: bytes) -> None:
        if not self._started:
            await stream.send(self.error("bad_event", "an audio-chunk before audio-start"))
            return
        try:
            await stream.feed(data)
        except UnsupportedAudio as exc:
            await stream.send(self.error("bad_audio", str(exc)))
            return
        await self.on_partial(stream, None)

    async def on_partial(self, stream: StreamController, text: str | None) -> None:
        stream.take_utterances()
        chunk = self._chunk(stream.session.stable_words())
        if chunk is not None:
            await stream.send(chunk)

    def _chunk(self, words: list[str]) -> dict[str, Any] | None:
        """A transcript-chunk of the words after those already sent (None when there are none). Stable words
        only grow, and the final's words extend them (a beam search only extends or drops hypotheses)."""
        sent = len(self._sent)
        if len(words) <= sent or words[:sent] != self._sent:
            return None
        self._sent = list(words)
        return event("transcript-chunk", text=(" " if sent else "") + " ".join(words[sent:]))

    async def on_control(self, stream: StreamController, control: dict[str, Any]) -> bool:
        kind, data = control.get("type"), control.get("data") or {}
        if kind == "describe":
            await stream.send(self._info)
        elif kind == "transcribe":
            await self._transcribe(stream, data)
        elif kind == "audio-start":
            await self._audio_start(stream, data)
        elif kind == "audio-stop":
            transcript, _ = await stream.finish()
            for message in self.final(stream, transcript):
                await stream.send(message)
            return True
        elif kind == "ping":
            await stream.send(event("pong", text=data.get("text")))
        else:
            await stream.send(self.error("bad_event", f"unexpected event {kind!r} for speech-to-text"))
        stream.note_activity()
        return False

    async def _transcribe(self, stream: StreamController, data: dict[str, Any]) -> None:
        language = data.get("language")
        if language not in (None, self._language) and str(language).split("-")[0] != self._language:
            await stream.send(
                self.error("unsupported_language", f"this model transcribes {self._language!r}")
            )
            return
        hot = dict(self._hot_words or {})
        hot.update({term: DEFAULT_BOOST for term in _words(data.get("transcript_terms"))})
        hot.update({name: NAME_BOOST for name in _words(data.get("transcript_names"))})
        try:
            stream.new_session(hot or None, 1)
        except ValueError as exc:
            await stream.send(self.error("bad_hot_words", str(exc)))

    async def _audio_start(self, stream: StreamController, data: dict[str, Any]) -> None:
        if self._started:
            await stream.send(self.error("bad_event", "audio-start twice; one transcription per connection"))
            return
        try:
            stream.use_audio(stream.open_audio("pcm", data["rate"]))
        except ValueError as exc:
            await stream.send(self.error("bad_audio", str(exc)))
            return
        self._started = True
        await stream.send(event("transcript-start", language=self._language))


def _words(value: Any) -> list[str]:
    """Wyoming's names/terms as hot words: each a lower-case word list entry (phrases split into words)."""
    if not isinstance(value, list):
        return []
    return [word for item in value if isinstance(item, str) for word in item.lower().split()]
