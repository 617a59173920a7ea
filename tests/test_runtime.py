"""The runtime interface: NumPy backend against the frozen TF graph, the Core ML adapter with a fake MLModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.speech import model_dir as md
from app.speech.runtime import STATIC_STEPS, CoreMLUnavailable, LstmState, load_acoustic_model, pad_chunk
from app.speech.runtime.coreml_backend import CoreMLAcousticModel
from app.speech.runtime.numpy_backend import NumpyAcousticModel
from tests.support.models import SMALL_WIDTH, frozen_graph

tf = pytest.importorskip("tensorflow")
from dsconvert.graph import run_graph  # noqa: E402


@pytest.fixture(scope="module")
def numpy_model(small_model_dir: Path) -> NumpyAcousticModel:
    loaded = load_acoustic_model(md.load_model_directory(small_model_dir), "numpy")
    assert isinstance(loaded, NumpyAcousticModel)
    return loaded


def _random_state(rng: np.random.Generator) -> LstmState:
    return LstmState(*(rng.normal(0, 0.5, (1, SMALL_WIDTH)).astype(np.float32) for _ in range(2)))


@pytest.mark.parametrize("length", [16, 5, 1])
def test_numpy_static_chunk_matches_tensorflow(small_model_dir: Path, numpy_model, length: int) -> None:
    rng = np.random.default_rng(length)
    windows, _ = pad_chunk(rng.normal(0, 3, (length, 19, 26)).astype(np.float32))
    state = _random_state(rng)
    reference = run_graph(
        frozen_graph(small_model_dir, md.STATIC_GRAPH, 16),
        windows[None],
        np.array([length], np.int32),
        state.c,
        state.h,
    )
    probs, new_state = numpy_model.run_chunk(windows, length, state)
    assert probs.shape == (length, 29)
    np.testing.assert_allclose(probs, reference["logits"][:length, 0], atol=1e-6)
    np.testing.assert_allclose(new_state.c, reference["new_state_c"], atol=1e-5)
    np.testing.assert_allclose(new_state.h, reference["new_state_h"], atol=1e-5)


def test_numpy_dynamic_window_matches_tensorflow(small_model_dir: Path, numpy_model) -> None:
    rng = np.random.default_rng(3)
    windows = rng.normal(0, 3, (73, 19, 26)).astype(np.float32)
    state = _random_state(rng)
    reference = run_graph(
        frozen_graph(small_model_dir, md.DYNAMIC_GRAPH, None),
        windows[None],
        np.array([73], np.int32),
        state.c,
        state.h,
    )
    probs, new_state = numpy_model.run_window(windows, state)
    np.testing.assert_allclose(probs, reference["logits"][:, 0], atol=1e-6)
    np.testing.assert_allclose(new_state.h, reference["new_state_h"], atol=1e-5)


def test_run_long_equals_one_pass(numpy_model) -> None:
    """Audio longer than the dynamic bound runs in windows with the state carried: same probabilities."""
    rng = np.random.default_rng(4)
    windows = rng.normal(0, 3, (250, 19, 26)).astype(np.float32)
    start = LstmState.zeros(SMALL_WIDTH)
    one_pass, one_state = numpy_model.run_window(windows, start)
    bounded = NumpyAcousticModel.__new__(NumpyAcousticModel)
    bounded.__dict__.update(numpy_model.__dict__, max_steps=37)  # several times shorter than the input
    chunked, chunked_state = bounded.run_long(windows, start)
    np.testing.assert_allclose(chunked, one_pass, atol=1e-6)
    np.testing.assert_allclose(chunked_state.c, one_state.c, atol=1e-6)
    with pytest.raises(ValueError, match="1..37"):
        bounded.run_window(windows, start)


def test_static_chunks_equal_the_dynamic_pass(numpy_model) -> None:
    rng = np.random.default_rng(5)
    windows = rng.normal(0, 3, (40, 19, 26)).astype(np.float32)
    state = LstmState.zeros(SMALL_WIDTH)
    parts = []
    for start in range(0, 40, STATIC_STEPS):
        chunk, length = pad_chunk(windows[start : start + STATIC_STEPS])
        probs, state = numpy_model.run_chunk(chunk, length, state)
        parts.append(probs)
    whole, whole_state = numpy_model.run_window(windows, LstmState.zeros(SMALL_WIDTH))
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    np.testing.assert_allclose(state.h, whole_state.h, atol=1e-6)


def test_zero_length_chunk_keeps_the_state(numpy_model) -> None:
    state = _random_state(np.random.default_rng(6))
    probs, new_state = numpy_model.run_chunk(np.zeros((16, 19, 26), np.float32), 0, state)
    assert probs.shape == (0, 29) and new_state is state


# --- Core ML adapter: tests/test_coreml_adapter.py (fake MLModels) and tests/test_convert_mil.py (real packages)


@pytest.mark.skipif(__import__("sys").platform == "darwin", reason="checks the refusal off macOS")
def test_coreml_is_refused_clearly_off_macos(small_model_dir: Path) -> None:
    with pytest.raises(CoreMLUnavailable, match="Core ML runs only on macOS.*DS_BACKEND=numpy"):
        load_acoustic_model(md.load_model_directory(small_model_dir), "coreml")
    auto = load_acoustic_model(md.load_model_directory(small_model_dir), "auto")
    assert auto.backend == "numpy"
    with pytest.raises(ValueError, match="compute units"):
        CoreMLAcousticModel(Path("s"), Path("d"), 4, 29, 10, "GPU_ONLY", load=lambda p, u: None)
