"""Audio the tests make: real speech from espeak-ng, PCM for websocket clients, tones encoded the way soundfile,
phones and browsers write them. Imports are inside the functions: conftest imports this module before NumPy may
load (it sets the BLAS thread variables first)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def speak(text: str, out: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Real speech from espeak-ng, resampled to 16 kHz mono s16 WAV with soxr (what a client would upload)."""
    import shutil
    import subprocess

    import numpy as np
    import pytest
    import soundfile
    import soxr

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it: apt-get install espeak-ng)")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    samples, rate = soundfile.read(raw, dtype="float32")
    resampled = np.clip(soxr.resample(samples, rate, 16000), -1.0, 1.0)
    soundfile.write(out, resampled, 16000, subtype="PCM_16")
    raw.unlink()
    return out


def pcm16(path: Path) -> bytes:
    """A 16 kHz WAV's samples as the s16le PCM a websocket client sends."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == 16000
    return samples.tobytes()


def tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def with_pyav(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode like a phone (m4a/AAC) or a browser's MediaRecorder (webm/Opus) would."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame_size = 960 if codec == "libopus" else 1024
        for start in range(0, len(samples), frame_size):
            block = samples[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


# The demo's commands, spoken with pauses (spoken_phrases): the default model hears each one exactly.
DEMO_PHRASES = ["turn on the kitchen lights", "what is the weather like today", "set a timer for ten minutes"]


def spoken_phrases(
    phrases: list[str], out: Path, pause: float = 1.2, lead: float = 0.5, tail: float = 1.0
) -> Path:
    """Phrases spoken one after another with silent pauses between them (16 kHz WAV): where a stream's
    utterances should end."""
    import numpy as np
    import soundfile

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(16000 * seconds), np.float32)

    parts = [silence(lead)]
    for i, text in enumerate(phrases):
        spoken, _ = soundfile.read(speak(text, out.with_name(f"{out.stem}-{i}.wav")), dtype="float32")
        parts += [spoken, silence(pause if i < len(phrases) - 1 else tail)]
    soundfile.write(out, np.concatenate(parts), 16000, subtype="PCM_16")
    return out
