"""Upload decoding: what phones and browsers make, every bad file, and the duration cap while decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from app.speech.audio import AudioTooLong, EmptyAudio, UnsupportedAudio, decode_audio
from tests.support.audio import with_pyav

TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)  # 2 s at 16 kHz


def with_soundfile(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def resampled_tone(rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [
        ("WAV", "PCM_16", 16000),
        ("WAV", "PCM_24", 44100),
        ("WAV", "PCM_32", 48000),
        ("WAV", "PCM_U8", 8000),
        ("WAV", "FLOAT", 22050),
        ("WAV", "PCM_16", 192000),
        ("FLAC", "PCM_16", 48000),
        ("OGG", "VORBIS", 44100),
        ("OGG", "OPUS", 48000),
        ("MP3", "MPEG_LAYER_III", 44100),
    ],
)
def test_containers_and_rates_decode_to_16k_mono(fmt: str, subtype: str, rate: int) -> None:
    samples, duration = decode_audio(with_soundfile(resampled_tone(rate), rate, fmt, subtype))
    assert duration == pytest.approx(2.0, abs=0.06)
    assert len(samples) == pytest.approx(32000, abs=0.06 * 16000) and samples.dtype == np.float32
    # Still a 440 Hz tone of amplitude 0.5 after decoding and resampling (lossy codecs within a few %).
    middle = samples[4000:28000]
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.06)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * 16000 / len(middle) == pytest.approx(440, abs=5)


@pytest.mark.parametrize(("container", "codec", "rate"), [("ipod", "aac", 44100), ("webm", "libopus", 48000)])
def test_phone_and_browser_recordings(container: str, codec: str, rate: int) -> None:
    samples, duration = decode_audio(with_pyav(resampled_tone(rate), rate, container, codec))
    assert duration == pytest.approx(2.0, abs=0.1)
    middle = samples[4000:28000]
    assert np.argmax(np.abs(np.fft.rfft(middle))) * 16000 / len(middle) == pytest.approx(440, abs=5)


def test_int16_wav_is_scaled_exactly_like_deepspeech() -> None:
    pcm = (np.random.default_rng(0).normal(0, 3000, 16000)).astype(np.int16)
    samples, _ = decode_audio(with_soundfile(pcm, 16000, "WAV", "PCM_16"))
    np.testing.assert_array_equal(samples, pcm.astype(np.float32) / 32768)


def test_channels_are_averaged() -> None:
    six = np.stack([TONE * (i % 2) for i in range(6)], axis=1)  # odd channels carry the tone, even are silent
    samples, _ = decode_audio(with_soundfile(six, 16000, "WAV", "FLOAT"))
    np.testing.assert_allclose(samples, TONE / 2, atol=1e-6)


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage" * 20,
        b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100),
        b"\x89PNG\r\n\x1a\n" + bytes(500),
        b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\x00\x00\x80\x3e\x00\x00",  # 0 channels
        b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\xff\xff\x80\x3e\x00\x00",  # 65535 channels
    ],
)
def test_undecodable_bytes_are_unsupported(payload: bytes) -> None:
    with pytest.raises(UnsupportedAudio, match="cannot decode|no audio stream"):
        decode_audio(payload)


def test_empty_inputs() -> None:
    with pytest.raises(EmptyAudio, match="empty"):
        decode_audio(b"")
    with pytest.raises(EmptyAudio, match="no samples"):
        decode_audio(with_soundfile(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))


def test_one_sample_decodes() -> None:
    samples, duration = decode_audio(with_soundfile(np.full(1, 0.25, np.float32), 16000, "WAV", "FLOAT"))
    assert duration == pytest.approx(1 / 16000) and samples.shape == (1,)


def test_nan_samples_are_refused() -> None:
    bad = TONE.copy()
    bad[100] = np.nan
    with pytest.raises(UnsupportedAudio, match="NaN"):
        decode_audio(with_soundfile(bad, 16000, "WAV", "FLOAT"))


def test_truncated_file_keeps_what_decoded() -> None:
    data = with_soundfile(TONE, 16000, "FLAC", "PCM_16")
    samples, _ = decode_audio(data[: len(data) // 2])
    assert 0 < len(samples) < len(TONE)


def test_duration_cap_stops_a_decompression_bomb_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small FLAC of 30 minutes of silence: the cap refuses it after decoding just past the cap."""
    import app.speech.audio

    silence = with_soundfile(np.zeros(16000 * 1800, np.int16), 16000, "FLAC", "PCM_16")
    assert len(silence) < 1_000_000  # compresses hundreds of times
    decoded: list[int] = []
    real = app.speech.audio._mono_float
    monkeypatch.setattr(app.speech.audio, "_mono_float", lambda frame: decoded.append(frame.samples) or real(frame))
    with pytest.raises(AudioTooLong, match="longer than 5 s; raise DS_MAX_AUDIO_SECONDS"):
        decode_audio(silence, max_seconds=5)
    assert 5 * 16000 < sum(decoded) < 6 * 16000, "must stop just past the cap, not decode 30 minutes first"
    monkeypatch.undo()
    samples, _ = decode_audio(with_soundfile(TONE, 16000, "WAV", "PCM_16"), max_seconds=5)
    assert len(samples) == len(TONE)


def test_sample_rates_above_384_khz_are_refused_before_decoding() -> None:
    """A real recording is never above 384 kHz; a higher rate only makes a small file decode for long."""
    samples = np.zeros(1000, np.float32)
    assert decode_audio(with_soundfile(samples, 384_000, "WAV", "PCM_16"))[1] == pytest.approx(1000 / 384_000)
    with pytest.raises(UnsupportedAudio, match="above 384 kHz"):
        decode_audio(with_soundfile(samples, 1_000_000, "WAV", "PCM_16"))
