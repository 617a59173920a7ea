"""Audio in: whatever phones and browsers make (WAV, FLAC, MP3, M4A/AAC, OGG/Vorbis/Opus, WebM/Opus…) →
mono float32 at 16 kHz.

One decoder library for every container: PyAV (FFmpeg's demuxers and decoders, shipped inside its wheels for
Linux and macOS, so no system FFmpeg). Samples are converted to float like DeepSpeech's int16/32768, channels
are averaged, and other rates are resampled with soxr (high quality) frame by frame as they decode, so what a
file holds in memory is its 16 kHz mono audio whatever its rate and channel count.

Untrusted input: every way a file can be bad ends as one of the `AudioError`s below (the web layer maps them to
4xx statuses), never as another exception (tests/test_fuzz.py), and the duration cap is checked after each decoded
frame, before the frame is resampled or kept.
"""

from __future__ import annotations

import io

import av
import numpy as np
import soxr
from av.audio.plane import AudioPlane

SAMPLE_RATE = 16000

# FFmpeg sample formats (planar ones end in "p") → NumPy dtypes.
_DTYPES = {"u8": "u1", "s16": "i2", "s32": "i4", "s64": "i8", "flt": "f4", "dbl": "f8"}
# What opening a container raises on bytes PyAV cannot make sense of (besides FFmpeg's own errors, a few of its
# checks raise ValueError, and metadata that is not UTF-8 a UnicodeDecodeError); decoding raises av.FFmpegError.
OPEN_ERRORS = (av.FFmpegError, ValueError, UnicodeDecodeError)


class AudioError(ValueError):
    """Base of the audio errors the web layer maps to HTTP statuses."""


class EmptyAudio(AudioError):
    """No bytes, or a valid container holding no samples (HTTP 400)."""


class UnsupportedAudio(AudioError):
    """Bytes that no supported decoder understands (HTTP 415)."""


class AudioTooLong(AudioError):
    """The decoded audio exceeds the duration cap (HTTP 413); checked while decoding, so a tiny file that
    decodes to hours (a decompression bomb) is stopped early."""


# No real recording is above 384 kHz; higher rates only make a tiny file cost a lot of decoding before the
# duration cap can see it (at ~200 M samples/s here, a 1 MHz FLAC bomb was a minute of CPU at the 4 h cap).
MAX_SOURCE_RATE = 384_000


class Resampler:
    """Streaming resampler to the model's 16 kHz (soxr keeps its filter state between chunks, so chunked output
    equals resampling the whole signal at once); a no-op at 16 kHz."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        if not isinstance(rate, int) or rate <= 0:
            raise UnsupportedAudio(f"invalid sample rate {rate!r}")
        if rate > MAX_SOURCE_RATE:
            raise UnsupportedAudio(
                f"sample rate {rate} Hz is above {MAX_SOURCE_RATE // 1000} kHz; resample the audio (e.g. to 16 kHz)"
            )
        try:
            self._stream = (
                soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
                if rate != SAMPLE_RATE
                else None
            )
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedAudio(f"cannot resample from {rate} Hz ({_reason(exc)})") from exc

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return np.ascontiguousarray(samples, np.float32)
        return np.asarray(self._stream.resample_chunk(samples, last=last), np.float32)


def _open(data: bytes) -> av.container.InputContainer:
    """The file as a PyAV container (EmptyAudio, UnsupportedAudio when it is nothing FFmpeg reads)."""
    if not data:
        raise EmptyAudio("the uploaded file is empty")
    try:
        return av.open(io.BytesIO(data), mode="r")
    except OPEN_ERRORS as exc:
        raise UnsupportedAudio(
            f"cannot decode the audio ({_reason(exc)}); send WAV, FLAC, MP3, M4A, OGG or WebM"
        ) from exc


def decode_audio(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole file → (16 kHz mono float32 samples, duration in seconds of the original).

    Raises EmptyAudio, UnsupportedAudio or AudioTooLong (all AudioError) and nothing else for bad input."""
    container = _open(data)
    chunks: list[np.ndarray] = []
    rate = 0
    total = 0  # samples decoded, at the file's rate
    resample: Resampler | None = None
    with container:
        if not container.streams.audio:
            raise UnsupportedAudio("the file holds no audio stream")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                samples, resample = frame_samples(frame, resample)
                rate = resample.rate
                total += len(samples)
                if max_seconds is not None and total > max_seconds * rate:
                    raise AudioTooLong(
                        f"the audio is longer than {max_seconds:g} s; raise DS_MAX_AUDIO_SECONDS or send less"
                    )
                if not np.all(np.isfinite(samples)):
                    raise UnsupportedAudio("the audio holds NaN or infinite samples")
                chunks.append(resample(samples))
        except AudioError:
            chunks.clear()  # the exception's traceback keeps this frame: not the audio decoded up to the cap too
            raise
        except av.FFmpegError as exc:
            if total == 0:
                raise UnsupportedAudio(f"cannot decode the audio ({_reason(exc)})") from exc
            # A truncated or damaged file: keep what decoded, as players do.
    if total == 0 or resample is None:
        raise EmptyAudio("the audio holds no samples")
    chunks.append(resample(np.zeros(0, np.float32), last=True))
    return np.concatenate(chunks), total / rate


def probe_duration(data: bytes, max_seconds: float | None = None) -> float | None:
    """The duration a file's header declares (None when it does not say), without decoding it: a batch job's
    check at submission. Raises EmptyAudio, UnsupportedAudio, or AudioTooLong when the header says so."""
    container = _open(data)
    with container:
        if not container.streams.audio:
            raise UnsupportedAudio("the file holds no audio stream")
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            return None
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"the audio is longer than {max_seconds:g} s; raise DS_MAX_AUDIO_SECONDS or send less")
    return round(seconds, 3)


def frame_samples(frame: av.AudioFrame, resample: Resampler | None) -> tuple[np.ndarray, Resampler]:
    """A decoded frame's mono float32 samples and the resampler for its rate (made at the first frame); a rate
    that changes mid-stream is refused (UnsupportedAudio)."""
    if resample is None:
        resample = Resampler(frame.sample_rate)
    elif frame.sample_rate != resample.rate:
        raise UnsupportedAudio(
            f"the sample rate changes mid-stream ({resample.rate} → {frame.sample_rate} Hz)"
        )
    return _mono_float(frame), resample


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame → mono float32 (channels averaged); integer formats scaled like int16/32768.

    Reads each channel's plane itself: PyAV's `frame.planes` (and so `to_ndarray`) walks FFmpeg's
    `extended_data` until a NULL pointer, which planar audio of 8 channels or more does not have, and reads past
    the array (a crash on a valid 7.1 Vorbis or Opus file, or on a header that lies about its channel count).
    """
    fmt = frame.format
    channels = frame.layout.nb_channels
    count = frame.samples
    dtype = _DTYPES.get(fmt.name.removesuffix("p"))
    if dtype is None:
        raise UnsupportedAudio(f"unsupported sample format {fmt.name}")
    if channels < 1:
        raise UnsupportedAudio("a decoded frame has no channels")
    if count <= 0:
        return np.zeros(0, np.float32)
    try:
        if fmt.is_planar:
            data = np.stack([np.frombuffer(_plane(frame, i), dtype, count=count) for i in range(channels)])
        else:  # packed: one plane, channels interleaved
            data = np.frombuffer(_plane(frame, 0), dtype, count=count * channels).reshape(count, channels).T
    except ValueError as exc:  # NumPy: "buffer is smaller than requested size"
        raise UnsupportedAudio(f"a decoded frame holds fewer samples than it claims ({exc})") from None
    if data.dtype.kind == "u":  # 8-bit PCM is unsigned around 128
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        data = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        data = data.astype(np.float32)
    return data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0]


def _plane(frame: av.AudioFrame, index: int) -> memoryview:
    """Channel `index`'s samples (planar), or all of them interleaved (packed, index 0): a view, not a copy."""
    return memoryview(AudioPlane(frame, index))


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def to_model_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio to the model's 16 kHz (no-op when it already is)."""
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, np.float32)
    if rate <= 0:
        raise UnsupportedAudio(f"invalid sample rate {rate}")
    return np.asarray(soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ"), np.float32)
