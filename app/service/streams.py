"""One stream's whole life, shared by every streaming dialect (/stream, /vosk, and whatever comes next).

The controller owns what every dialect needs the same way: admission against DS_MAX_STREAMS, the idle /
max-duration / send deadlines, drain, feeding audio through the pipeline off the event loop (tiny PCM frames
gathered into ~100 ms passes), finals, metrics, parking and claiming resumable streams, and how a failure ends a
stream without touching the others. A dialect (`StreamDialect`) only translates: its client's control messages
into calls on the controller, and the controller's results into its wire messages. The transport hands over a
`Channel` (a websocket, or any other framed connection), so this module knows no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from anyio.to_thread import run_sync

from app.service.drain import ServerDraining
from app.service.metrics import Metrics
from app.service.resume import ResumableStream, ResumeRefused
from app.service.services import Services
from app.service.stream_protocol import (
    DECODER_LIMITED_TEXT,
    FAILURE_TEXT,
    BadMessage,
    Channel,
    ChannelClosed,
    ClientTooSlow,
    StreamClose,
    StreamDialect,
    StreamIdle,
    StreamTooLong,
    parse_control,
)
from app.speech.audio import SAMPLE_RATE, UnsupportedAudio
from app.speech.decoding import DecoderProcessFailed, Grammar, Transcript
from app.speech.runtime import InferenceError
from app.speech.session import StreamSession
from app.speech.stream_audio import PcmInput, StreamAudio
from app.speech.utterances import Utterance

log = logging.getLogger(__name__)

# Audio counts as activity once it adds a model step (20 ms) since the last activity: a trickle of a sample or two
# every few seconds is not a client that is streaming.
ACTIVITY_SAMPLES = 320


@dataclass
class StreamState:
    """What a stream works on; parked whole when a resumable stream's connection drops."""

    route: str
    session: StreamSession
    audio: StreamAudio | None = None
    bytes_in: int = 0  # binary bytes received and handled (taken, or refused as a bad frame): the ack count
    # PCM taken (so acked) and not yet decoded: gathered until DS_STREAM_COALESCE_MS worth (StreamController.feed).
    # Parked with the rest, so a resumed stream decodes exactly the bytes it acknowledged.
    pending: bytearray = field(default_factory=bytearray)

    def close(self) -> None:
        if self.audio is not None:
            self.audio.close()


def expire_parked(metrics: Metrics) -> Callable[[StreamState], None]:
    """What happens to a parked stream nobody came back for: its input is closed, its audio counted."""

    def expire(state: StreamState) -> None:
        state.close()
        state.session.close()
        metrics.observe_stream(state.route, state.session)

    return expire


def failure_code(exc: Exception) -> str:
    """The error code of a failure that ends a stream (FAILURE_TEXT says each one's message)."""
    if isinstance(exc, InferenceError):
        return "inference_failed"
    if isinstance(exc, DecoderProcessFailed):
        return "decoder_failed"
    return "internal_error"


class StreamController:
    """Drives one stream over `channel` in `dialect`'s words, from admission to the last close."""

    state: StreamState  # from admission on: a refused client never gets a session

    def __init__(self, services: Services, channel: Channel, dialect: StreamDialect) -> None:
        self.services = services
        self.settings = services.settings
        self.channel = channel
        self.dialect = dialect
        self.route = dialect.route
        self.resumable: ResumableStream | None = None
        self._deadline = 0.0
        self._flush_due = 0.0  # when the gathered PCM (state.pending) is decoded if no more arrives
        self._waiting: asyncio.Timeout | None = None  # the wait for the client's next message, while it lasts
        self._parked = False
        # Idle time: seconds spent waiting on the client since it last did something that moves the stream on
        # (audio that advances it, a valid control message). Junk (bad text, a 2-byte frame every few seconds)
        # is received but does not count, so it cannot hold a slot past DS_STREAM_IDLE_TIMEOUT.
        self._idle_waited = 0.0
        self._active_at_samples = 0
        self._limited_told: StreamSession | None = None  # the session whose decoder_limited was reported

    @property
    def session(self) -> StreamSession:
        return self.state.session

    # --- the life of a stream ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Admit, then take messages until the stream ends; whatever happens, the slot and the state are freed."""
        if not await self._admit():
            return
        self.services.metrics.stream_opened(self.route)
        try:
            await self._serve()
        except ChannelClosed:
            if self.resumable is not None and not self.session.finished:
                self.services.resumable.park(self.resumable, self.state)  # the client may come back
                self._parked = True
        except StreamIdle as exc:
            await self._end(self.dialect.error("idle_timeout", str(exc)), StreamClose.NORMAL)
        except (StreamTooLong, ServerDraining) as exc:
            await self._end_with_final(exc)
        except (
            Exception
        ) as exc:  # ClientTooSlow, InferenceError, or a bug: this stream ends, the others go on
            await self._fail(exc)
        finally:
            self._release()
        if not self._parked:
            await self.services.return_memory(self.session.audio_seconds)

    async def _serve(self) -> None:
        watching = asyncio.ensure_future(self._wake_on_drain())
        try:
            while not await self._serve_one():
                pass
        finally:
            watching.cancel()

    async def _serve_one(self) -> bool:
        """Take one client message (or decode the gathered PCM at its deadline); True once the stream is over."""
        try:
            message = await self._receive()
        except BadMessage as exc:
            await self.send(self.dialect.error("bad_message", str(exc)))
            return False
        if isinstance(message, bytes):
            await self.dialect.on_audio(self, message)
            return False
        await self._flush_to_dialect()  # the audio before a control message is decoded before it acts
        if message is not None and await self.dialect.on_control(self, message):
            await self.channel.close(StreamClose.NORMAL)
            return True
        return False

    async def _flush_to_dialect(self) -> None:
        partial = await self.flush()
        if partial is not None or self.session.has_utterances:
            await self.dialect.on_partial(self, partial)

    async def _admit(self) -> bool:
        """Accept if a stream slot is free, else refuse with 1013 (try again later)."""
        # Accepted first either way: a close before accept reaches the client as HTTP 403, like a bad API key.
        await self.channel.accept()
        if not self.services.admission.open_stream():
            await self.channel.close(StreamClose.TRY_AGAIN_LATER, "too many open streams; retry shortly")
            return False
        self.state = StreamState(self.route, self._open_session())
        self._deadline = time.monotonic() + self.settings.stream_max_seconds
        return True

    def _release(self) -> None:
        self.services.admission.close_stream()
        if self._parked:
            self.services.metrics.stream_closed(self.route)  # its audio is counted when it ends for good
            return
        if self.resumable is not None:
            self.services.resumable.forget(self.resumable)
        self.services.metrics.stream_closed(self.route, self.session)
        self.session.close()
        self.state.close()

    async def _end_with_final(self, reason: StreamTooLong | ServerDraining) -> None:
        too_long = isinstance(reason, StreamTooLong)
        try:
            notice = self.dialect.ending_notice(
                "max_duration" if too_long else "server_shutdown", str(reason)
            )
            if notice is not None:
                await self.send(notice)
            transcript, _ = await self.finish()
            *before, final = self.dialect.final(self, transcript)
            for message in before:
                await self.send(message)
            await self._end(final, StreamClose.NORMAL if too_long else StreamClose.GOING_AWAY)
        except ChannelClosed:
            pass
        except Exception as failure:
            await self._fail(failure)

    async def _fail(self, exc: Exception) -> None:
        """A stream that cannot go on: the model failed on it, or a bug. It alone ends (1011); others continue."""
        if isinstance(exc, ClientTooSlow):
            log.warning("%s: %s", self.route, exc)
            self.services.metrics.stream_failed(self.route, "client_too_slow")
            return
        code = failure_code(exc)
        if code == "internal_error":
            log.exception("%s: the stream failed; it was closed with 1011 (other streams go on)", self.route)
        else:
            log.error("%s: %s; the stream was closed with 1011", self.route, exc)
        self.services.metrics.stream_failed(self.route, code)
        await self._end(self.dialect.error(code, FAILURE_TEXT[code]), StreamClose.INTERNAL_ERROR)

    async def _end(self, message: dict[str, Any] | None, code: int) -> None:
        """Last words and the close, if the client is still there to get them."""
        with contextlib.suppress(ChannelClosed, ClientTooSlow, RuntimeError):
            if message is not None:
                await self.send(message)
            await asyncio.wait_for(self.channel.close(code), self.settings.stream_send_timeout)

    # --- messages ------------------------------------------------------------------------------------------

    async def _receive(self) -> bytes | dict[str, Any] | None:
        """The next client message: audio bytes, or a control message parsed as a JSON object (not compared as
        text); None when gathered PCM is due to be decoded before anything came. Raises ChannelClosed when the
        client has gone, BadMessage for text that is not a JSON object, StreamIdle / StreamTooLong at the
        stream's time limits and ServerDraining when the service shuts down."""
        if (
            self.services.drain.draining
        ):  # even with audio waiting: a busy stream must not hold the shutdown up
            raise ServerDraining("the server is shutting down; this is the stream's final transcript")
        idle_timeout = self.settings.stream_idle_timeout
        idle_left = idle_timeout - self._idle_waited
        started = time.monotonic()
        remaining = self._deadline - started
        flush_left = self._flush_due - started if self.state.pending else float("inf")
        # The channel is awaited in this task, under one timeout that _wake_on_drain ends early: no task or
        # future per message, which a stream of 2 ms frames would pay 500 times a second.
        waiting = asyncio.timeout(max(0.0, min(idle_left, remaining, flush_left)))
        try:
            async with waiting:
                self._waiting = waiting
                message = await self.channel.receive()
        except TimeoutError:
            if not waiting.expired():
                raise  # not our deadline's
            message = None
        finally:
            self._waiting = None
            self._idle_waited += time.monotonic() - started
        if message is None:
            if self.services.drain.draining:
                raise ServerDraining("the server is shutting down; this is the stream's final transcript")
            if flush_left < min(idle_left, remaining):
                return None
            if remaining <= idle_left:
                raise StreamTooLong(
                    "the stream was open for DS_STREAM_MAX_SECONDS; this is its final transcript"
                )
            raise StreamIdle(
                f"no message for {idle_timeout:g} s; the stream was closed (DS_STREAM_IDLE_TIMEOUT)"
            )
        if isinstance(message, bytes):
            return message
        return parse_control(message)

    async def _wake_on_drain(self) -> None:
        """When draining begins, end the wait for the client at once (the stream then gets its final)."""
        await self.services.drain.event.wait()
        if self._waiting is not None and not self._waiting.expired():  # an expired one is ending anyway
            self._waiting.reschedule(asyncio.get_running_loop().time())

    async def send(self, message: dict[str, Any]) -> None:
        """Send with a deadline: a client that stops reading cannot hold a stream (and its slot) forever."""
        timeout = self.settings.stream_send_timeout
        try:
            await asyncio.wait_for(self.channel.send(message), timeout)
        except TimeoutError:
            raise ClientTooSlow(
                f"the client read nothing for {timeout:g} s (DS_STREAM_SEND_TIMEOUT); the stream was dropped"
            ) from None

    # --- what dialects do with a stream --------------------------------------------------------------------

    def open_audio(self, audio_format: Any = "pcm", sample_rate: Any = SAMPLE_RATE) -> StreamAudio:
        """The input a client declared (ValueError with a message for the client if the declaration is bad)."""
        return StreamAudio.open(audio_format, sample_rate, self.settings.stream_max_seconds)

    def use_audio(self, audio: StreamAudio) -> None:
        """Read the stream's audio with `audio` from now on (the previous input is closed)."""
        if self.state.audio is not None and self.state.audio is not audio:
            self.state.audio.close()
        self.state.audio = audio

    def new_session(
        self,
        hot_words: dict[str, float] | None,
        alternatives: int,
        silence_ms: int | None = None,
        grammar: Grammar | None = None,
    ) -> None:
        """A fresh session with these decoding options (hot words or a grammar, N-best) and the pause that ends
        an utterance (None: the service's DS_ENDPOINT_SILENCE_MS); invalid options raise DecodeOptionError, a
        ValueError."""
        engine = self.services.engine
        endpoints = None if silence_ms is None else replace(engine.endpoints, silence_ms=silence_ms)
        session = self._open_session(
            hot_words=hot_words, alternatives=alternatives, endpoints=endpoints, grammar=grammar
        )
        self.state.session.close()
        self.state.session = session

    def _open_session(self, **options: Any) -> StreamSession:
        observe = functools.partial(self.services.metrics.observe_utterances, self.route)
        return self.services.engine.open_stream(on_utterances=observe, **options)

    def take_utterances(self) -> list[Utterance]:
        """The utterances the stream finished since the last call (after finish(), the last ones too)."""
        return self.session.take_utterances()

    async def feed(self, data: bytes) -> str | None:
        """Take one audio frame; the new partial text if it changed. Raises UnsupportedAudio, and StreamTooLong
        once the stream is over its maximum length (before taking more audio).

        PCM frames are gathered in the state until DS_STREAM_COALESCE_MS of audio, or until the first has waited
        that long, and then decoded in one pass: a pass costs a thread hop and a decoder partial however short its
        audio, so real-time audio in 2 ms frames, one pass each, cost 5-13x the CPU of 100 ms frames. The
        wait is bounded by the same window (`_receive` decodes at the deadline), on top of the 320 ms the
        session gathers for a model batch anyway. Encoded input is decoded frame by frame: its bytes say nothing
        of how much audio they hold, and MediaRecorder sends whole timeslices."""
        audio = self._input()
        self.state.bytes_in += len(data)
        limit = self.settings.stream_max_seconds
        if self.session.audio_seconds >= limit or time.monotonic() >= self._deadline:
            raise StreamTooLong(
                f"the stream reached its maximum length of {limit:g} s (DS_STREAM_MAX_SECONDS); this is its final "
                "transcript; open a new stream to go on"
            )
        window = self._window_bytes(audio)
        if not window:
            return await self._decode(audio, data)
        if len(data) % 2:  # refused here, as PcmInput would: the gathered bytes must stay sample-aligned
            raise UnsupportedAudio(f"odd frame of {len(data)} bytes; send s16le PCM (2 bytes a sample)")
        pending = self.state.pending
        if not pending:
            self._flush_due = time.monotonic() + self.settings.stream_coalesce_ms / 1000.0
        pending += data
        if len(pending) < window and time.monotonic() < self._flush_due:
            return None
        return await self.flush()

    async def flush(self) -> str | None:
        """Decode the gathered PCM (if any) in one pass; the new partial text if it changed."""
        if not self.state.pending:
            return None
        data = bytes(self.state.pending)
        self.state.pending.clear()
        return await self._decode(self._input(), data)

    async def _decode(self, audio: StreamAudio, data: bytes) -> str | None:
        session = self.session
        partial = await run_sync(lambda: session.feed(audio.push(data)))  # one thread hop per pass
        if session.samples_in - self._active_at_samples >= ACTIVITY_SAMPLES:
            self._active_at_samples = session.samples_in
            self.note_activity()
        if session.decoder_limited and self._limited_told is not session:
            await self._tell_limited(session)
        return partial

    async def _tell_limited(self, session: StreamSession) -> None:
        self._limited_told = session
        self.services.metrics.decoder_limited(self.route)
        log.info("%s stream: decoder under pressure (its beam stays full), pruning more often", self.route)
        notice = self.dialect.warning("decoder_limited", DECODER_LIMITED_TEXT)
        if notice is not None:
            await self.send(notice)

    def _window_bytes(self, audio: StreamAudio) -> int:
        """How many bytes of `audio` are gathered before a pass (0: none, each frame goes on its own)."""
        if not isinstance(audio, PcmInput):
            return 0
        return int(audio.rate * self.settings.stream_coalesce_ms / 1000.0) * 2

    def note_activity(self) -> None:
        """The client moved the stream on (a dialect calls this for a valid control message): idle time restarts."""
        self._idle_waited = 0.0

    async def finish(self) -> tuple[Transcript, UnsupportedAudio | None]:
        """Flush the input's tail (resampler, decoder) into the session, then the session's own tail. When the
        input's tail does not decode, the transcript of what did, and the reason."""
        await self.flush()
        session, audio = self.session, self._input()
        try:
            await run_sync(session.feed, await run_sync(audio.finish))
        except UnsupportedAudio as exc:
            return await run_sync(session.finish), exc
        return await run_sync(session.finish), None

    async def reset(self, **options: Any) -> None:
        """After a final: the stream goes on with fresh state (`new_session`'s options) and a fresh input of the
        same kind."""
        self.services.metrics.observe_stream(self.route, self.session)  # counted now: the session is replaced
        self.use_audio(self.open_audio(*self.dialect.input_spec()))
        self.new_session(**options)

    def make_resumable(self) -> dict[str, Any]:
        """Register the stream for resuming: its id, first token and the reconnect window."""
        registry = self.services.resumable
        self.resumable, token = registry.register(self.channel.presented_key())
        return {"stream_id": self.resumable.stream_id, "resume_token": token, "window": registry.window}

    def resume(self, stream_id: Any, token: Any, acked: Any) -> str:
        """Take a parked stream over (its state replaces this one's); its fresh token. Raises ResumeRefused."""
        if not isinstance(acked, int) or isinstance(acked, bool) or acked < 0:
            raise ResumeRefused("resume needs `bytes`: the acknowledged byte count, an integer >= 0")
        resumable, parked, new_token = self.services.resumable.claim(
            str(stream_id), str(token), self.channel.presented_key()
        )
        if not parked.session.healthy:  # its decoder process died while it was parked: it cannot go on right
            expire_parked(self.services.metrics)(parked)
            raise ResumeRefused("the stream's decoder process died while it was away; start a new stream")
        self.state.session.close()
        self.state.close()
        self.resumable, self.state = resumable, parked
        self._active_at_samples = parked.session.samples_in
        self.note_activity()
        return new_token

    def _input(self) -> StreamAudio:
        if self.state.audio is None:
            self.state.audio = self.open_audio(*self.dialect.input_spec())
        return self.state.audio
