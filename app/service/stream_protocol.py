"""The vocabulary every streaming dialect shares with the stream controller: the Channel a transport hands over,
the StreamDialect a protocol implements, how streams end (close codes, failure texts, the typed reasons), and the
parsing of control messages and their decoding options."""

from __future__ import annotations

import json
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from app.speech.decoding import DecodeOptionError, Transcript, parse_hot_words, phrase_list_hot_words

if TYPE_CHECKING:
    from app.service.streams import StreamController

MAX_CONTROL_CHARS = 64 * 1024  # control messages are a few hundred bytes; anything this big is not one
MAX_ENDPOINT_SILENCE_MS = 10_000  # as DS_ENDPOINT_SILENCE_MS: a longer "pause" is the end of the conversation


class StreamClose(IntEnum):
    """How a stream ends, as RFC 6455 close codes (a websocket sends them as they are; other channels map them)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    INTERNAL_ERROR = 1011  # the server hit an error it cannot go on from
    TRY_AGAIN_LATER = 1013  # the server is at its stream limit


FAILURE_TEXT = {
    "inference_failed": "the model failed on this stream's audio; the stream is closed (other streams are "
    "unaffected); open a new one",
    "internal_error": "an internal error ended this stream (the server logged it); open a new stream",
    "decoder_failed": "the decoder process holding this stream's state died; the stream is closed (other streams "
    "are unaffected); open a new one",
}

# Said once per stream, and the stream goes on.
DECODER_LIMITED_TEXT = (
    "this audio keeps the beam search's every hypothesis alive (noise, music or static sound like that to the "
    "model), so the decoder now keeps less history to bound its memory; speech is unaffected, but expect little "
    "or no text from sound like this"
)


class ChannelClosed(Exception):
    """The client has gone (the connection closed)."""


class Channel(Protocol):
    """A framed, bidirectional connection to one client: binary audio and JSON text in, JSON objects out."""

    async def accept(self) -> None: ...
    async def receive(self) -> bytes | str:
        """The next frame; raises ChannelClosed when the client has gone. A channel should keep reading its
        connection while the stream is busy (pings answered, a close seen: app/routes/websocket.py)."""
        ...

    async def send(self, message: dict[str, Any]) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...
    def presented_key(self) -> bytes | None:
        """The API key this connection authenticated with (None when the service is open)."""
        ...


class StreamIdle(TimeoutError):
    """The client sent nothing for DS_STREAM_IDLE_TIMEOUT seconds."""


class StreamTooLong(TimeoutError):
    """The stream reached DS_STREAM_MAX_SECONDS of audio or of wall-clock time: it gets its final and closes."""


class ClientTooSlow(TimeoutError):
    """The client left the server's messages unread for DS_STREAM_SEND_TIMEOUT seconds (its buffers are full)."""


class BadMessage(ValueError):
    """A message the stream cannot take (text that is not a JSON object, a malformed frame); the stream goes on.
    Its text is the client's explanation."""


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


class StreamDialect(Protocol):
    """One wire protocol's side of a stream: one instance per connection (it may keep per-connection settings)."""

    route: str

    def input_spec(self) -> tuple[str, int]:
        """The (format, sample rate) audio is read as when the client declared none."""
        ...

    def error(self, code: str, message: str) -> dict[str, Any]:
        """An error message in this dialect's shape (`code` is the service's; a dialect may leave it out)."""
        ...

    def ending_notice(self, code: str, message: str) -> dict[str, Any] | None:
        """What to send before the final when the server ends the stream (max_duration, server_shutdown)."""
        ...

    def warning(self, code: str, message: str) -> dict[str, Any] | None:
        """A notice the stream goes on after (decoder_limited), or None where the protocol has no such message."""
        ...

    def final(self, stream: StreamController, transcript: Transcript) -> list[dict[str, Any]]:
        """The messages that end a stream whose whole transcript is `transcript` (the last one is the final;
        the utterances eof finished are the stream's `take_utterances()`)."""
        ...

    async def on_audio(self, stream: StreamController, data: bytes) -> None: ...
    async def on_partial(self, stream: StreamController, text: str | None) -> None:
        """Audio decoded between client messages (gathered audio at its deadline, or before a control message):
        the new partial text if it changed, and any utterances it finished (`take_utterances()`); a dialect that
        sends partials and utterances as they happen sends them."""
        ...

    async def on_control(self, stream: StreamController, control: dict[str, Any]) -> bool:
        """Handle one control message; True when the stream is over (the final is sent)."""
        ...


def endpoint_silence(config: dict[str, Any]) -> int | None:
    """A stream's own `endpoint_silence_ms` (0: no endpoint at pauses), or None for the service's setting."""
    value = config.get("endpoint_silence_ms")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ENDPOINT_SILENCE_MS:
        raise DecodeOptionError(
            f"endpoint_silence_ms must be an integer from 0 (off) to {MAX_ENDPOINT_SILENCE_MS} milliseconds"
        )
    return value


def parse_control(text: str) -> dict[str, Any]:
    """A control message: a JSON object of bounded size (BadMessage otherwise)."""
    if len(text) > MAX_CONTROL_CHARS:
        raise BadMessage(f"not a JSON object: a control message of {len(text)} characters; the limit is 64 KB")
    try:
        control = json.loads(text)
    except RecursionError:
        raise BadMessage("not a JSON object: the JSON is nested too deeply") from None
    except ValueError as exc:
        raise BadMessage(f"not a JSON object: {exc}") from None
    if not isinstance(control, dict):
        raise BadMessage("not a JSON object (a control message must be one)")
    return control
