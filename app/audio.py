"""Audio in: any container soundfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3…) → mono float32 at 16 kHz.

Samples are scaled like DeepSpeech's int16/32768; other sample rates are resampled with soxr (high quality).
"""

from __future__ import annotations

import io

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Base of the audio errors the web layer maps to HTTP statuses."""


class EmptyAudio(AudioError):
    """No bytes, or a valid container holding no samples (HTTP 400)."""


class UnsupportedAudio(AudioError):
    """Bytes that no supported decoder understands (HTTP 415)."""


def decode_audio(data: bytes) -> tuple[np.ndarray, float]:
    """Decode a whole file → (16 kHz mono float32 samples, duration in seconds of the original)."""
    if not data:
        raise EmptyAudio("the uploaded file is empty")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise UnsupportedAudio(
            f"cannot decode the audio ({reason}); send WAV, FLAC, OGG (Vorbis/Opus) or MP3"
        ) from exc
    if samples.shape[0] == 0 or samples.shape[1] == 0:
        raise EmptyAudio("the audio holds no samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise UnsupportedAudio("the audio holds NaN or infinite samples")
    return to_model_rate(mono, rate), samples.shape[0] / rate


def to_model_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio to the model's 16 kHz (no-op when it already is)."""
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, np.float32)
    if rate <= 0:
        raise UnsupportedAudio(f"invalid sample rate {rate}")
    return np.asarray(soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ"), np.float32)
