"""A stream's incoming bytes → 16 kHz mono float32 samples, for both websocket dialects.

Raw s16le PCM at a declared rate (8–48 kHz, resampled with soxr's streaming resampler, which keeps its filter
state between frames), or an encoded container as browsers' MediaRecorder produces (`webm`, `ogg`: Opus or
Vorbis), decoded incrementally by PyAV — the same FFmpeg decoders as uploads.

An encoded stream decodes to at most `max_seconds` of audio (the stream's length limit): a few KB of Ogg FLAC can
decode to hours, and a push hands the session everything its bytes decoded to. The decoder stops there with an
error, as it does on a NaN sample or a sample rate that changes.

Why a thread for encoded input: FFmpeg's demuxers pull bytes through a blocking read, while the websocket
pushes frames as they arrive. A small pipe bridges the two: the decode thread blocks in `read` until the next
frame (or the end) comes; `push` returns once the decoder has taken the frame's bytes and asks for more, with
the samples they yielded.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections import deque

import av
import numpy as np

from app.settings import Settings
from app.speech.audio import (
    SAMPLE_RATE,
    AudioError,
    Resampler,
    UnsupportedAudio,
    _reason,
    frame_samples,
)
from app.speech.features import int16_to_float

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 48000
ENCODED_FORMATS = {"webm": "webm", "ogg": "ogg"}  # declared name → FFmpeg demuxer
DECODE_TIMEOUT = 30.0  # seconds a push waits for the decoder to take its bytes
# Most audio an encoded stream decodes to (its own seconds) unless the route says otherwise: DS_STREAM_MAX_SECONDS'
# default. A few bytes of Ogg can decode to hours (a decompression bomb); the decoder stops here.
MAX_SECONDS: float = Settings.model_fields["stream_max_seconds"].default


class StreamAudio:
    """Interface of both kinds: `push(bytes) → samples`, `finish() → samples`, `close()`."""

    def push(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def finish(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the input holds (threads); safe to call more than once."""

    @staticmethod
    def open(
        audio_format: str = "pcm", sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
    ) -> StreamAudio:
        """The input a client declared; ValueError with a message for the client if the declaration is bad (of
        any JSON type). `max_seconds`: the most audio an encoded input decodes (DS_STREAM_MAX_SECONDS; MAX_SECONDS
        when not given)."""
        if not isinstance(audio_format, str):
            raise ValueError(f"format must be pcm, webm or ogg, got {_shown(audio_format)}")
        if audio_format == "pcm":
            if (
                isinstance(sample_rate, bool)
                or not isinstance(sample_rate, int)
                or not MIN_RATE <= sample_rate <= MAX_RATE
            ):
                raise ValueError(
                    f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}, got {_shown(sample_rate)}"
                )
            return PcmInput(sample_rate)
        if audio_format in ENCODED_FORMATS:
            return EncodedInput(
                ENCODED_FORMATS[audio_format], MAX_SECONDS if max_seconds is None else max_seconds
            )
        raise ValueError(f"format must be pcm, webm or ogg, got {_shown(audio_format)}")


def _shown(value: object, limit: int = 40) -> str:
    """A client's value in an error message, cut short (a control message may be large)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PcmInput(StreamAudio):
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resample = Resampler(rate)

    def push(self, data: bytes) -> np.ndarray:
        if len(data) % 2:
            raise UnsupportedAudio(f"odd frame of {len(data)} bytes; send s16le PCM (2 bytes a sample)")
        return self._resample(int16_to_float(data))

    def finish(self) -> np.ndarray:
        return self._resample(np.zeros(0, np.float32), last=True)


class _Pipe(io.RawIOBase):
    """Blocking byte pipe: the websocket side writes, FFmpeg's demuxer reads; None marks the end.

    The writer can wait until the reader has taken everything and asks for more (`wait_idle`), so after a push
    every sample the bytes so far can yield has been decoded: partials do not depend on thread timing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[bytes | None] = deque()
        self._buffer = b""
        self._ended = False
        self._idle = False  # the reader waits for data and nothing is queued (or the reader is gone)
        self._reader_gone = False

    def readable(self) -> bool:
        return True

    def write_chunk(self, data: bytes | None) -> None:
        with self._cond:
            if self._reader_gone:
                return  # the decoder stopped (error or end): drop input rather than let it pile up
            self._chunks.append(data)
            self._idle = False
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._idle, timeout)

    def reader_gone(self) -> None:
        with self._cond:
            self._reader_gone = self._idle = True
            self._chunks.clear()
            self._cond.notify_all()

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            if self._ended:
                return 0
            with self._cond:
                while not self._chunks:
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                chunk = self._chunks.popleft()
            if chunk is None:
                self._ended = True
                return 0
            self._buffer = chunk
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class StreamTooLongToDecode(UnsupportedAudio):
    """An encoded stream decoded to more than its `max_seconds`; decoding stopped there."""


class EncodedInput(StreamAudio):
    def __init__(self, demuxer: str, max_seconds: float = MAX_SECONDS) -> None:
        self._pipe = _Pipe()
        self._demuxer = demuxer
        self._max_seconds = max_seconds
        self._out: queue.Queue[np.ndarray] = queue.Queue()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._decode, name=f"decode-{demuxer}", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        resample: Resampler | None = None
        rate = 0
        total = 0  # samples decoded, at the stream's rate
        try:
            # Tiny probe: the codec parameters are in the container header; the default probe would wait for
            # seconds of audio before the first sample comes out.
            with av.open(
                self._pipe,
                mode="r",
                format=self._demuxer,
                options={"probesize": "32", "analyzeduration": "0"},
            ) as container:
                if not container.streams.audio:
                    raise UnsupportedAudio(f"the {self._demuxer} stream holds no audio track")
                for frame in container.decode(audio=0):
                    samples, resample = frame_samples(frame, resample)
                    rate = resample.rate
                    room = int(self._max_seconds * rate) - total
                    if len(samples) > room:  # checked before resampling: a frame may hold hours
                        self._out.put(resample(samples[: max(room, 0)], last=True))
                        raise StreamTooLongToDecode(
                            f"the {self._demuxer} stream decodes to more than {self._max_seconds:g} s of audio; "
                            "the rest was not decoded"
                        )
                    total += len(samples)
                    if not np.all(np.isfinite(samples)):
                        raise UnsupportedAudio("the audio holds NaN or infinite samples")
                    self._out.put(resample(samples))
                if resample is not None:
                    self._out.put(resample(np.zeros(0, np.float32), last=True))
        except AudioError as exc:
            self._error = exc
        except (av.FFmpegError, ValueError) as exc:
            self._error = UnsupportedAudio(f"cannot decode the {self._demuxer} stream ({_reason(exc)})")
        except Exception as exc:
            # A bug, or no memory: this stream's input ends with a bad_frame error; the service goes on.
            log.exception("the %s decoder failed", self._demuxer)
            self._error = UnsupportedAudio(f"cannot decode the {self._demuxer} stream ({type(exc).__name__})")
        finally:
            self._pipe.reader_gone()

    def _drain(self) -> np.ndarray:
        parts = []
        while True:
            try:
                parts.append(self._out.get_nowait())
            except queue.Empty:
                break
        if self._error is not None and not parts:
            raise UnsupportedAudio(str(self._error))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def push(self, data: bytes) -> np.ndarray:
        self._pipe.write_chunk(data)
        self._pipe.wait_idle(DECODE_TIMEOUT)
        return self._drain()

    def finish(self) -> np.ndarray:
        self._pipe.write_chunk(None)
        self._thread.join(timeout=DECODE_TIMEOUT)
        return self._drain()

    def close(self) -> None:
        if self._thread.is_alive():
            self._pipe.write_chunk(None)
