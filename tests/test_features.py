"""app.speech.features against TensorFlow's AudioSpectrogram + Mfcc ops and the native client's streaming buffers."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import soundfile
import soxr

from app.speech.features import (
    HOP_SAMPLES,
    N_CONTEXT,
    N_MFCC,
    SAMPLE_RATE,
    STEP_SECONDS,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    StreamingFeatures,
    context_windows,
    features_for_file,
    frame_count,
    int16_to_float,
    mfcc,
)

SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Seven silver swans swam silently seaward."
TF_TOLERANCE = 1e-4
SIGNALS = [
    "speech",
    "white_noise",
    "tone_440",
    "tone_7999",
    "silence",
    "clipped_square",
    "noise_len_0",
    "noise_len_511",
    "noise_len_512",
    "noise_len_513",
    "noise_len_832",
]
# Lengths around every boundary of the streaming relation: no frame, one frame, k < 9, k = 9, k = 10, long.
STREAM_LENGTHS = [0, 1, 511, 512, 513, 831, 832, 833, 2500, 3072, 3391, 3392, 3393, 3712, 9999]


def _quantize(x: np.ndarray) -> np.ndarray:
    """What a real client sends: s16le, read back through the service's own conversion."""
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    return int16_to_float(pcm.tobytes())


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("espeak") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SPEECH_TEXT], check=True, capture_output=True)
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate != SAMPLE_RATE  # espeak-ng speaks at 22050 Hz: the resampling is part of the test
    return _quantize(soxr.resample(audio, rate, SAMPLE_RATE))


@pytest.fixture(scope="session")
def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    out = {
        "white_noise": _quantize(np.clip(rng.normal(0.0, 0.25, t.size), -1.0, 1.0)),
        "tone_440": _quantize(0.5 * np.sin(2 * np.pi * 440.0 * t)),
        "tone_7999": _quantize(0.5 * np.sin(2 * np.pi * 7999.0 * t)),
        "silence": np.zeros(t.size, dtype=np.float32),  # every channel at the 1e-12 log floor
        # Full-scale square wave: int16 -32768 / 32767, the extremes a client can send.
        "clipped_square": _quantize(np.where(np.sin(2 * np.pi * 1000.0 * t + 0.1) >= 0, 1.0, -1.0)),
    }
    for n in (0, 511, 512, 513, 832):
        out[f"noise_len_{n}"] = _quantize(rng.uniform(-0.9, 0.9, n))
    return out


@pytest.fixture
def signal(request: pytest.FixtureRequest, signals: dict[str, np.ndarray]) -> np.ndarray:
    name = request.param
    return request.getfixturevalue("speech") if name == "speech" else signals[name]


@pytest.fixture(scope="session")
def tf_mfcc() -> Callable[[np.ndarray], np.ndarray]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")

    def run(samples: np.ndarray) -> np.ndarray:
        # DeepSpeech's feature graph (util/feeding.py audio_to_features) with its arguments.
        spectrogram = tf.raw_ops.AudioSpectrogram(
            input=tf.constant(samples.reshape(-1, 1)),
            window_size=WINDOW_SAMPLES,
            stride=HOP_SAMPLES,
            magnitude_squared=True,
        )
        mfccs = tf.raw_ops.Mfcc(
            spectrogram=spectrogram,
            sample_rate=SAMPLE_RATE,
            upper_frequency_limit=SAMPLE_RATE / 2,
            lower_frequency_limit=20.0,
            filterbank_channel_count=40,
            dct_coefficient_count=N_MFCC,
        )
        return mfccs[0].numpy()

    return run


def _stream(audio: np.ndarray, sizes: Iterator[int] | list[int]) -> np.ndarray:
    """Push audio in the given chunk sizes (until it is used up), then finish; all windows in order."""
    stream = StreamingFeatures()
    out = []
    start = 0
    for size in sizes:
        if start >= audio.size:
            break
        windows = stream.push(audio[start : start + size])
        assert windows.dtype == np.float32 and windows.shape[1:] == (WINDOW_FRAMES, N_MFCC)
        out.append(windows)
        start += size
    assert start >= audio.size
    out.append(stream.finish())
    return np.concatenate(out)


def _random_sizes(seed: int, high: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(0, high))  # includes empty pushes


def _assert_same_windows(got: np.ndarray, want: np.ndarray) -> None:
    # Bit-identical with OpenBLAS; another BLAS may round a 1-frame product differently from a 32-frame one,
    # so allow float32 rounding. Any misaligned frame or window would differ by whole units.
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_constants_follow_deepspeech() -> None:
    assert (SAMPLE_RATE, WINDOW_SAMPLES, HOP_SAMPLES) == (16000, 512, 320)
    assert (N_MFCC, N_CONTEXT, WINDOW_FRAMES) == (26, 9, 19)
    assert STEP_SECONDS == pytest.approx(0.02)


@pytest.mark.parametrize("signal", SIGNALS, indirect=True)
def test_mfcc_matches_tensorflow(signal: np.ndarray, tf_mfcc: Callable[[np.ndarray], np.ndarray]) -> None:
    want = tf_mfcc(signal)
    got = mfcc(signal)
    assert got.dtype == np.float32
    assert got.shape == want.shape == (frame_count(signal.size), N_MFCC)
    if want.size:
        assert float(np.max(np.abs(got - want))) <= TF_TOLERANCE


def test_tail_frame_matches_tensorflow(
    speech: np.ndarray, tf_mfcc: Callable[[np.ndarray], np.ndarray]
) -> None:
    # finish() computes a frame from a zero-padded partial window: the native client feeds it to the same op.
    for n in (0, 1, 191, 320, 511):
        tail = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        tail[:n] = speech[8000 : 8000 + n]
        assert float(np.max(np.abs(mfcc(tail) - tf_mfcc(tail)))) <= TF_TOLERANCE


@pytest.mark.parametrize(
    ("n", "frames"), [(0, 0), (1, 0), (511, 0), (512, 1), (513, 1), (831, 1), (832, 2), (16000, 49)]
)
def test_only_whole_windows_make_frames(n: int, frames: int) -> None:
    assert frame_count(n) == frames
    assert mfcc(np.zeros(n, dtype=np.float32)).shape == (frames, N_MFCC)


def test_silence_sits_on_the_log_floor() -> None:
    frame = mfcc(np.zeros(WINDOW_SAMPLES, dtype=np.float32))[0]
    # DCT of 40 equal log(1e-12): only c0 = sqrt(2/40) * 40 * ln(1e-12) survives.
    assert frame[0] == pytest.approx(math.sqrt(2 / 40) * 40 * math.log(1e-12), rel=1e-6)
    assert np.max(np.abs(frame[1:])) < 1e-5


def test_mfcc_wants_mono_samples() -> None:
    with pytest.raises(ValueError):
        mfcc(np.zeros((1024, 2), dtype=np.float32))


def test_context_windows_pad_nine_zero_frames_each_side() -> None:
    frames = np.arange(1, 12 * N_MFCC + 1, dtype=np.float32).reshape(12, N_MFCC)
    windows = context_windows(frames)
    assert windows.shape == (12, WINDOW_FRAMES, N_MFCC)
    assert windows.dtype == np.float32 and windows.flags.c_contiguous
    for t in range(12):
        for row in range(WINDOW_FRAMES):
            source = t + row - N_CONTEXT
            want = frames[source] if 0 <= source < 12 else np.zeros(N_MFCC, dtype=np.float32)
            np.testing.assert_array_equal(windows[t, row], want)
    np.testing.assert_array_equal(windows[:, N_CONTEXT], frames)  # the center row is frame t


def test_context_windows_edge_sizes() -> None:
    assert context_windows(np.zeros((0, N_MFCC), dtype=np.float32)).shape == (0, WINDOW_FRAMES, N_MFCC)
    one = context_windows(np.ones((1, N_MFCC), dtype=np.float32))
    assert one.shape == (1, WINDOW_FRAMES, N_MFCC)
    assert one[0, N_CONTEXT].tolist() == [1.0] * N_MFCC
    assert np.count_nonzero(one) == N_MFCC
    windows = context_windows(np.ones((3, N_MFCC), dtype=np.float32))
    windows[0, 0, 0] = 5.0  # a copy, not a view into shared padding
    assert windows[1, 1, 0] == 0.0


def test_features_for_file_is_mfcc_then_windows(speech: np.ndarray) -> None:
    features = features_for_file(speech)
    assert features.shape == (frame_count(speech.size), WINDOW_FRAMES, N_MFCC)
    np.testing.assert_array_equal(features, context_windows(mfcc(speech)))


def test_int16_to_float_scales_by_32768() -> None:
    pcm = np.array([-32768, -1, 0, 1, 16384, 32767], dtype="<i2")
    want = np.array([-1.0, -1 / 32768, 0.0, 1 / 32768, 0.5, 32767 / 32768], dtype=np.float32)
    for given in (pcm.tobytes(), bytearray(pcm.tobytes()), memoryview(pcm.tobytes()), pcm):
        got = int16_to_float(given)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert int16_to_float(b"").shape == (0,)
    with pytest.raises(ValueError):
        int16_to_float(b"\x00\x01\x02")
    with pytest.raises(TypeError):
        int16_to_float(np.zeros(4, dtype=np.float32))


def test_stream_emits_first_window_after_ten_frames() -> None:
    # The MFCC buffer starts with 9 zero frames, so the 10th frame (512 + 9 * 320 samples) completes window 0.
    stream = StreamingFeatures()
    audio = _quantize(np.random.default_rng(3).uniform(-0.5, 0.5, 3392))
    assert stream.push(audio[:3391]).shape == (0, WINDOW_FRAMES, N_MFCC)
    first = stream.push(audio[3391:])
    assert first.shape == (1, WINDOW_FRAMES, N_MFCC)
    np.testing.assert_array_equal(first[0, :N_CONTEXT], 0.0)
    np.testing.assert_array_equal(first[0, N_CONTEXT:], mfcc(audio))
    assert stream.push(np.zeros(0, dtype=np.float32)).shape == (0, WINDOW_FRAMES, N_MFCC)
    assert stream.push(np.zeros(319, dtype=np.float32)).shape[0] == 0
    assert stream.push(np.zeros(1, dtype=np.float32)).shape[0] == 1  # every further 320 samples: one window


@pytest.mark.parametrize("chunk", [1, 7, 320, 511, 512, 513, 4096])
def test_stream_is_independent_of_chunking(speech: np.ndarray, chunk: int) -> None:
    audio = speech[: SAMPLE_RATE + 77] if chunk == 1 else speech  # 1-sample pushes on 1 s keep this fast
    whole = _stream(audio, [audio.size])
    _assert_same_windows(_stream(audio, [chunk] * (audio.size // chunk + 1)), whole)


@pytest.mark.parametrize("seed", range(6))
def test_stream_is_independent_of_random_chunking(speech: np.ndarray, seed: int) -> None:
    audio = np.concatenate([speech, np.zeros(5000, dtype=np.float32), speech[:7001]])  # silence mid-stream
    high = [3, 50, 700, 2000, 20000, 100000][seed]
    _assert_same_windows(_stream(audio, _random_sizes(seed, high)), _stream(audio, [audio.size]))


@pytest.mark.parametrize("n", STREAM_LENGTHS)
def test_stream_vs_whole_file(signals: dict[str, np.ndarray], n: int) -> None:
    audio = np.resize(signals["white_noise"], n) * np.float32(0.5)
    k = frame_count(n)
    whole = features_for_file(audio)
    streamed = _stream(audio, _random_sizes(n, 900))
    # finish() adds exactly one frame: the samples after the last whole window, zero-padded to 512.
    assert streamed.shape == (k + 1, WINDOW_FRAMES, N_MFCC)
    tail_samples = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    tail_samples[: n - HOP_SAMPLES * k] = audio[HOP_SAMPLES * k :]
    tail = mfcc(tail_samples)[0]
    # Exactly: the stream is the whole-file path on the audio zero-padded to k + 1 whole windows.
    _assert_same_windows(
        streamed, features_for_file(np.pad(audio, (0, HOP_SAMPLES * k + WINDOW_SAMPLES - n)))
    )
    # Against the plain whole-file windows: the tail frame sits where the file has its first zero pad frame,
    # so windows t < k - 9 are identical, windows k-9 .. k-1 differ only in row 9 + k - t (tail instead of
    # zeros), and window k is extra: the last 9 frames, the tail, 9 zero frames.
    untouched = max(0, k - N_CONTEXT)
    _assert_same_windows(streamed[:untouched], whole[:untouched])
    for t in range(untouched, k):
        row = N_CONTEXT + k - t
        np.testing.assert_array_equal(whole[t, row], 0.0)
        expected = whole[t].copy()
        expected[row] = tail
        _assert_same_windows(streamed[t], expected)
    last = np.zeros((WINDOW_FRAMES, N_MFCC), dtype=np.float32)
    frames = mfcc(audio)
    last[N_CONTEXT - min(k, N_CONTEXT) : N_CONTEXT] = frames[k - min(k, N_CONTEXT) :]
    last[N_CONTEXT] = tail
    _assert_same_windows(streamed[k], last)


def test_huge_push_in_one_call(signals: dict[str, np.ndarray]) -> None:
    audio = np.tile(signals["white_noise"], 10)  # 20 s
    stream = StreamingFeatures()
    windows = stream.push(audio)
    k = frame_count(audio.size)
    assert windows.shape == (k - N_CONTEXT, WINDOW_FRAMES, N_MFCC)  # the last 9 wait for right context
    _assert_same_windows(windows, features_for_file(audio)[: k - N_CONTEXT])
    assert stream.finish().shape == (N_CONTEXT + 1, WINDOW_FRAMES, N_MFCC)


def test_finish_on_empty_stream_still_computes_the_tail_frame() -> None:
    windows = StreamingFeatures().finish()
    assert windows.shape == (1, WINDOW_FRAMES, N_MFCC)
    np.testing.assert_array_equal(windows[0, N_CONTEXT], mfcc(np.zeros(WINDOW_SAMPLES, dtype=np.float32))[0])
    assert (
        np.count_nonzero(windows[0, :N_CONTEXT]) == 0 and np.count_nonzero(windows[0, N_CONTEXT + 1 :]) == 0
    )


def test_stream_lifecycle(speech: np.ndarray) -> None:
    stream = StreamingFeatures()
    first = np.concatenate([stream.push(speech), stream.finish()])
    assert stream.finished
    with pytest.raises(RuntimeError):
        stream.push(speech[:10])
    with pytest.raises(RuntimeError):
        stream.finish()
    stream.reset()
    assert not stream.finished
    stream.push(speech[:1234])  # a partial stream, then reset: nothing may leak into the next one
    stream.reset()
    np.testing.assert_array_equal(np.concatenate([stream.push(speech), stream.finish()]), first)
    with pytest.raises(ValueError):
        StreamingFeatures().push(np.zeros((10, 2), dtype=np.float32))


def test_speech_fixture_is_speech(speech: np.ndarray) -> None:
    # Guard the fixture itself: a few seconds of voiced audio at 16 kHz, not silence or a broken resample.
    assert 2.0 < speech.size / SAMPLE_RATE < 15.0
    assert 0.05 < float(np.max(np.abs(speech))) <= 1.0
    assert float(np.std(mfcc(speech)[:, 1:])) > 1.0
