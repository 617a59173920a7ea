"""The bench's audio: espeak-ng sentences concatenated into one speech track, cut into clips, cached under
.cache/bench/."""

from __future__ import annotations

import hashlib
import io
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import (
    CACHE,
    GAP_SECONDS,
    SAMPLE_RATE,
    SENTENCES,
    VOICE,
    WORDS_PER_MINUTE,
    BenchError,
    clip_label,
)


def _speak(text: str) -> np.ndarray:
    """espeak-ng → 16 kHz mono float32 (soxr), as a client's WAV decodes."""
    import soundfile
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return np.clip(soxr.resample(samples, rate, SAMPLE_RATE), -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    tmp.replace(path)


def read_wav(path: Path) -> np.ndarray:
    """s16 mono 16 kHz WAV → int16 samples."""
    with wave.open(str(path), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def track_tag() -> str:
    """Names the cached audio after what it is made of, so that editing the sentences makes new files."""
    return _digest(*SENTENCES, VOICE, WORDS_PER_MINUTE, GAP_SECONDS)


def speech_track(seconds: float, cache: Path = CACHE) -> np.ndarray:
    """int16 speech of exactly `seconds`: the sentences in order (cycled), cut at the end.

    Deterministic, so a shorter track is a prefix of a longer one and every clip is a prefix of the track.
    Each sentence is synthesized once and cached; so is the track.
    """
    track_path = cache / f"speech-{track_tag()}-{seconds:g}s.wav"
    if track_path.exists():
        return read_wav(track_path)
    import shutil

    if shutil.which("espeak-ng") is None:
        raise BenchError("espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
    sentence_dir = cache / "sentences"
    sentence_dir.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.int16)
    need = int(round(seconds * SAMPLE_RATE))
    parts: list[np.ndarray] = []
    total = 0
    k = 0
    while total < need:
        index = k % len(SENTENCES)
        path = sentence_dir / f"{_digest(SENTENCES[index], VOICE, WORDS_PER_MINUTE)}.wav"
        if not path.exists():
            write_wav(path, _speak(SENTENCES[index]))
        for part in (read_wav(path), gap):
            parts.append(part)
            total += len(part)
        k += 1
    track = np.concatenate(parts)[:need]
    write_wav(track_path, track.astype(np.float32) / 32768.0)
    return track


@dataclass
class Clip:
    seconds: float
    path: Path  # s16 mono 16 kHz WAV
    pcm: np.ndarray  # int16

    @property
    def samples(self) -> np.ndarray:
        """float32 as the service's decoders produce it (int16 / 32768)."""
        return self.pcm.astype(np.float32) * np.float32(1.0 / 32768.0)

    @property
    def label(self) -> str:
        return clip_label(self.seconds)


def prepare_clips(lengths: Sequence[float], cache: Path = CACHE) -> dict[float, Clip]:
    """The clips, each a prefix of one track of the longest length, written as WAVs (HTTP and native need files)."""
    cache.mkdir(parents=True, exist_ok=True)
    track = speech_track(max(lengths), cache)
    clips = {}
    for seconds in sorted(set(lengths)):
        path = cache / f"speech-{track_tag()}-{seconds:g}s.wav"
        pcm = track[: int(round(seconds * SAMPLE_RATE))]
        if not path.exists():
            write_wav(path, pcm.astype(np.float32) / 32768.0)
        clips[seconds] = Clip(seconds, path, pcm)
    return clips
