"""Our static frozen graph, loaded and run by the OFFICIAL DeepSpeech 0.9.3 native client.

The native client (libdeepspeech.so: TensorFlow 2.3 with selective kernel registration, ctcdecode) is the
strictest consumer of `static_graph.pb`: it needs every op kernel it registers, rejects attrs newer than TF 2.3,
reads `input_node`'s static shape, runs `input_samples`→`mfccs` for features, and reads the scalar `metadata_*`
constants. These tests load a width-64 random-weight conversion in it, transcribe real (espeak-ng) speech with
`stt` and with a stream, and compare with our own pipeline: the same graph run by our TensorFlow 2.21 batch by
batch exactly as `deepspeech.cc` streams, decoded by the very ctcdecode beam search the client links
(`ds-ctcdecoder==0.9.3`, no scorer, beam 500 / cutoff_top_n 40 / cutoff_prob 1.0). Same decoder on both sides,
so any difference is the network or the streaming; the bound is exact equality of text and of every token's
timestep.

The client lives in a cached throwaway Python 3.9 venv (tests/support/native_client.py); the tests skip, saying
why, where no Python <= 3.9 or no wheel is available.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.native_client import NativeClient, ensure_native_client

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WIDTH = 64
SEED = 64
SAMPLE_RATE = 16000
WINDOW = 512
HOP = 320
N_MFCC = 26
N_CONTEXT = 9
N_STEPS = 16
EXPORT_BEAM_WIDTH = 500
CUTOFF_TOP_N = 40
CUTOFF_PROB = 1.0
SENTENCE = "the quick brown fox jumps over the lazy dog while the native client listens"
CHUNK = 1234  # samples per feedAudioContent call: a multiple of neither the window nor the hop


@pytest.fixture(scope="module")
def native() -> NativeClient:
    started = time.monotonic()
    client = ensure_native_client()
    if isinstance(client, str):
        pytest.skip(client)
    how = f"created in {client.created_s:.1f} s" if client.created_s is not None else "reused from the cache"
    print(
        f"\nnative client venv {client.venv} (Python {client.python_version}): {how}, "
        f"{time.monotonic() - started:.1f} s"
    )
    return client


@pytest.fixture(scope="module")
def model64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model directory scripts/convert.py writes for a random-weight width-64 checkpoint."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("coremltools")
    from app.speech.alphabet import ENGLISH
    from dsconvert.checkpoint_writer import write_checkpoint
    from dsconvert.cli import main
    from dsconvert.weights import random_weights

    root = tmp_path_factory.mktemp("native64")
    alphabet = root / "alphabet.txt"
    alphabet.write_text(ENGLISH.to_text(), encoding="utf-8")
    write_checkpoint(random_weights(WIDTH, seed=SEED), root / "checkpoint")
    out = root / "model"
    assert (
        main(["--checkpoint", str(root / "checkpoint"), "--alphabet", str(alphabet), "--out", str(out)]) == 0
    )
    return out


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real synthetic speech: espeak-ng's 22.05 kHz output resampled to 16 kHz mono s16le."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
    soundfile = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    root = tmp_path_factory.mktemp("speech")
    raw = root / "espeak.wav"
    subprocess.run([espeak, "-w", str(raw), SENTENCE], check=True, capture_output=True, timeout=60)
    audio, rate = soundfile.read(raw, dtype="int16", always_2d=True)
    mono = audio[:, 0]
    resampled = soxr.resample(mono, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else mono
    wav = root / "speech16k.wav"
    soundfile.write(wav, np.asarray(resampled, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return wav


@pytest.fixture(scope="module")
def native_result(native: NativeClient, model64: Path, speech_wav: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = native.transcribe(model64 / "static_graph.pb", speech_wav, chunk=CHUNK)
    print(f"\nnative client transcribe: {time.monotonic() - started:.1f} s wall, {result['seconds']}")
    return result


def test_native_client_loads_our_graph_and_reads_its_metadata(native_result: dict[str, Any]) -> None:
    assert native_result["deepspeech_version"] == "0.9.3"
    assert native_result["sample_rate"] == SAMPLE_RATE  # metadata_sample_rate
    assert native_result["beam_width"] == EXPORT_BEAM_WIDTH  # metadata_beam_width


def test_native_client_stream_equals_stt(native_result: dict[str, Any]) -> None:
    # Random weights still emit characters on speech; an empty transcript would make the comparisons vacuous.
    assert native_result["tokens"], "the native client decoded nothing"
    assert native_result["stream_text"] == native_result["text"] == native_result["metadata_text"]
    assert native_result["stream_tokens"] == native_result["tokens"]
    frames = 1 + (native_result["samples"] - WINDOW) // HOP + 1  # whole windows + the finish frame
    assert max(t["timestep"] for t in native_result["tokens"]) < frames
    for token in native_result["tokens"]:
        assert token["start_time"] == pytest.approx(token["timestep"] * HOP / SAMPLE_RATE, abs=1e-6)


def test_native_client_matches_our_tensorflow_streaming(
    native: NativeClient, native_result: dict[str, Any], model64: Path, speech_wav: Path
) -> None:
    """Same graph, same streaming, same decoder: the transcript and every token's timestep must be identical."""
    import soundfile

    samples, rate = soundfile.read(speech_wav, dtype="int16")
    assert rate == SAMPLE_RATE
    probs = stream_probabilities_like_native_client(model64, samples)
    assert probs.shape == (1 + (len(samples) - WINDOW) // HOP + 1, 29)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    ours = native.beam_search(
        probs,
        model64 / "alphabet.txt",
        beam_width=native_result["beam_width"],
        cutoff_prob=CUTOFF_PROB,
        cutoff_top_n=CUTOFF_TOP_N,
    )
    theirs_steps = [t["timestep"] for t in native_result["tokens"]]
    our_steps = [t["timestep"] for t in ours["tokens"]]
    agreeing = sum(a == b for a, b in zip(theirs_steps, our_steps, strict=False))
    print(
        f"\nnative: {native_result['text']!r} (confidence {native_result['confidence']:.4f})"
        f"\nours:   {ours['text']!r} (confidence {ours['confidence']:.4f})"
        f"\ntimesteps agreeing: {agreeing}/{max(len(theirs_steps), len(our_steps))}, frames {probs.shape[0]}"
    )
    assert ours["text"] == native_result["text"]
    assert our_steps == theirs_steps
    # The beam's score is a sum of log probabilities along the path: equal only if the networks agree closely.
    assert ours["confidence"] == pytest.approx(native_result["confidence"], rel=1e-4, abs=1e-3)


def stream_probabilities_like_native_client(model_dir: Path, samples: np.ndarray) -> np.ndarray:
    """Our frozen static graph under TensorFlow, fed exactly as `deepspeech.cc`'s StreamingState feeds it.

    Audio: float = int16 / 32768; one MFCC frame per whole 512-sample window, hop 320. MFCC buffer: starts with
    9 zero frames; every 19 frames make one context window. Batches of 16 windows carry the LSTM state.
    Finish: one more MFCC frame from the remaining samples zero-padded to 512, 9 zero frames of right
    context, the last (< 16) windows zero-padded to 16 with input_lengths = their count, only their
    probabilities read back. Returns (T, classes) softmax probabilities.
    """
    import tensorflow as tf

    from dsconvert.graph import FrozenGraph, run_graph

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((model_dir / "static_graph.pb").read_bytes())
    frozen = FrozenGraph(graph_def, N_STEPS)
    n_cell = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))["n_cell_dim"]

    audio = np.asarray(samples, dtype=np.int16).astype(np.float32) * np.float32(1.0 / 32768)
    whole = 0 if len(audio) < WINDOW else 1 + (len(audio) - WINDOW) // HOP
    frames = [_tf_mfcc(audio[i * HOP : i * HOP + WINDOW]) for i in range(whole)]
    rest = audio[whole * HOP :]
    frames.append(_tf_mfcc(np.pad(rest, (0, WINDOW - len(rest)))))
    context = np.zeros((N_CONTEXT, N_MFCC), np.float32)
    features = np.concatenate([context, np.stack(frames), context])
    windows = np.stack([features[t : t + 2 * N_CONTEXT + 1] for t in range(len(features) - 2 * N_CONTEXT)])

    state_c = np.zeros((1, n_cell), np.float32)
    state_h = np.zeros((1, n_cell), np.float32)
    probs = []
    for start in range(0, len(windows), N_STEPS):
        chunk = windows[start : start + N_STEPS]
        batch = np.zeros((1, N_STEPS, 2 * N_CONTEXT + 1, N_MFCC), np.float32)
        batch[0, : len(chunk)] = chunk
        out = run_graph(frozen, batch, np.array([len(chunk)], np.int32), state_c, state_h)
        probs.append(out["logits"][: len(chunk), 0, :])
        state_c, state_h = out["new_state_c"], out["new_state_h"]
    return np.concatenate(probs)


def _tf_mfcc(window: np.ndarray) -> np.ndarray:
    """One MFCC frame of one 512-sample window with TensorFlow's own ops and DeepSpeech's arguments."""
    import tensorflow as tf

    assert window.shape == (WINDOW,)
    spectrogram = tf.raw_ops.AudioSpectrogram(
        input=tf.constant(window[:, None]), window_size=WINDOW, stride=HOP, magnitude_squared=True
    )
    mfcc = tf.raw_ops.Mfcc(
        spectrogram=spectrogram,
        sample_rate=SAMPLE_RATE,
        upper_frequency_limit=SAMPLE_RATE / 2,
        lower_frequency_limit=20,
        filterbank_channel_count=40,
        dct_coefficient_count=N_MFCC,
    )
    return mfcc.numpy().reshape(N_MFCC)


# --- the trained default model: the official client and our service agree word for word ---------------------

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
DEMO_SENTENCES = [
    "turn on the kitchen lights",
    "what is the weather like today",
    "switch off the kitchen oven",
]


@pytest.mark.skipif(not (DEFAULT_MODEL / "manifest.json").exists(), reason="models/default is not built")
@pytest.mark.parametrize("with_scorer", [False, True], ids=["no-lm", "kenlm-scorer"])
def test_native_client_and_our_stream_agree_on_the_trained_model(
    native: NativeClient, tmp_path: Path, with_scorer: bool
) -> None:
    """Same graph, same audio, same buffering: DeepSpeech 0.9.3's client (ds_ctcdecoder, reading our .scorer)
    and our service (flashlight-text) give the same transcripts, with and without the language model."""
    import soundfile

    from app.settings import Settings
    from app.speech.audio import decode_audio
    from app.speech.engine import Engine

    engine = Engine.load(Settings(model_dir=DEFAULT_MODEL, backend="numpy", use_scorer=with_scorer))
    scorer = (DEFAULT_MODEL / "kenlm.scorer").resolve() if with_scorer else None
    for index, text in enumerate(DEMO_SENTENCES):
        raw, wav = tmp_path / f"{index}.raw.wav", tmp_path / f"{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        samples, _ = decode_audio(raw.read_bytes())
        soundfile.write(wav, samples, 16000, subtype="PCM_16")
        pcm, _ = decode_audio(wav.read_bytes())
        theirs = native.transcribe((DEFAULT_MODEL / "static_graph.pb").resolve(), wav, scorer=scorer)
        session = engine.open_stream()
        for start in range(0, len(pcm), 3200):
            session.feed(pcm[start : start + 3200])
        ours = session.finish().text
        assert theirs["stream_text"] == theirs["text"] == ours, (text, theirs["text"], ours)
