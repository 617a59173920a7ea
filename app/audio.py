"""Audio in: whatever phones and browsers make (WAV, FLAC, MP3, M4A/AAC, OGG/Vorbis/Opus, WebM/Opus…) →
mono float32 at 16 kHz.

One decoder library for every container: PyAV (FFmpeg's demuxers and decoders, shipped inside its wheels for
Linux and macOS, so no system FFmpeg). Samples are converted to float like DeepSpeech's int16/32768, channels
are averaged, and other rates are resampled with soxr (high quality).
"""

from __future__ import annotations

import io

import av
import numpy as np
import soxr

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Base of the audio errors the web layer maps to HTTP statuses."""


class EmptyAudio(AudioError):
    """No bytes, or a valid container holding no samples (HTTP 400)."""


class UnsupportedAudio(AudioError):
    """Bytes that no supported decoder understands (HTTP 415)."""


class AudioTooLong(AudioError):
    """The decoded audio exceeds the duration cap (HTTP 413); checked while decoding, so a tiny file that
    decodes to hours (a decompression bomb) is stopped early."""


def decode_audio(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole file → (16 kHz mono float32 samples, duration in seconds of the original)."""
    if not data:
        raise EmptyAudio("the uploaded file is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise UnsupportedAudio(
            f"cannot decode the audio ({_reason(exc)}); send WAV, FLAC, MP3, M4A, OGG or WebM"
        ) from exc
    with container:
        if not container.streams.audio:
            raise UnsupportedAudio("the file holds no audio stream")
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = 0
        total = 0
        try:
            for frame in container.decode(stream):
                if rate == 0:
                    rate = frame.sample_rate
                elif frame.sample_rate != rate:
                    raise UnsupportedAudio(
                        f"the sample rate changes mid-stream ({rate} → {frame.sample_rate} Hz)"
                    )
                samples = _mono_float(frame)
                chunks.append(samples)
                total += len(samples)
                if max_seconds is not None and total > max_seconds * rate:
                    raise AudioTooLong(
                        f"the audio is longer than {max_seconds:g} s; raise DS_MAX_AUDIO_SECONDS or send less"
                    )
        except av.FFmpegError as exc:
            if not chunks:
                raise UnsupportedAudio(f"cannot decode the audio ({_reason(exc)})") from exc
            # A truncated file: keep what decoded, as players do.
    if total == 0:
        raise EmptyAudio("the audio holds no samples")
    mono = np.concatenate(chunks)
    if not np.all(np.isfinite(mono)):
        raise UnsupportedAudio("the audio holds NaN or infinite samples")
    return to_model_rate(mono, rate), total / rate


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame → mono float32 (channels averaged); integer formats scaled like int16/32768."""
    data = frame.to_ndarray()
    fmt = frame.format
    if not fmt.is_planar:  # packed: (1, n·channels) interleaved
        data = data.reshape(-1, len(frame.layout.channels)).T
    if data.dtype.kind == "u":  # 8-bit PCM is unsigned around 128
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        data = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        data = data.astype(np.float32, copy=False)
    return data.mean(axis=0, dtype=np.float32) if data.shape[0] > 1 else data[0]


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def to_model_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio to the model's 16 kHz (no-op when it already is)."""
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, np.float32)
    if rate <= 0:
        raise UnsupportedAudio(f"invalid sample rate {rate}")
    return np.asarray(soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ"), np.float32)
