"""The Core ML adapter's feeds, through fake MLModels that check what Core ML would receive.

The packages run MIL's core `lstm` op and have no length mask: the static one takes full 16-window chunks
only, and a stream's tail (< 16 windows) goes unpadded through the dynamic one. Packages converted before that
change declare `input_lengths` and still get it. (tests/test_convert_mil.py runs the real packages through the
adapter with the MIL evaluator; these fakes compute with the NumPy backend and need no TensorFlow.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.speech import model_dir as md
from app.speech.runtime import STATIC_STEPS, LstmState, pad_chunk
from app.speech.runtime.coreml_backend import CoreMLAcousticModel
from app.speech.runtime.numpy_backend import NumpyAcousticModel
from dsconvert.weights import random_weights

WIDTH = 24
CURRENT_INPUTS = ("input_node", "previous_state_c", "previous_state_h")
LEGACY_INPUTS = ("input_node", "input_lengths", "previous_state_c", "previous_state_h")


@pytest.fixture(scope="module")
def numpy_model() -> NumpyAcousticModel:
    return NumpyAcousticModel(random_weights(WIDTH, seed=5).arrays, max_steps=1000)


class FakeMLModel:
    """Stands in for `coremltools.models.MLModel`: declares its inputs like `MLModel.input_description`,
    refuses feeds Core ML would refuse, and computes with the NumPy backend in the package's output layout.

    `legacy`: a package converted before the core-lstm change (input_lengths, length mask); otherwise every
    step of input_node is valid."""

    def __init__(self, numpy_model: NumpyAcousticModel, static: bool, legacy: bool) -> None:
        self.numpy_model, self.static, self.legacy = numpy_model, static, legacy
        self.input_description = set(LEGACY_INPUTS if legacy else CURRENT_INPUTS)
        self.feeds: list[dict[str, np.ndarray]] = []

    def predict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append(feed)
        assert set(feed) == self.input_description, f"coremltools refuses undeclared inputs: {sorted(feed)}"
        x = feed["input_node"]
        assert x.dtype == np.float32 and x.shape[0] == 1 and x.shape[2:] == (19, 26)
        for name in ("previous_state_c", "previous_state_h"):
            assert feed[name].dtype == np.float32 and feed[name].shape == (1, WIDTH)
        if self.static:
            assert x.shape[1] == STATIC_STEPS
        else:
            assert 1 <= x.shape[1] <= 1000
        length = x.shape[1]
        if self.legacy:
            assert feed["input_lengths"].dtype == np.int32 and feed["input_lengths"].shape == (1,)
            length = int(feed["input_lengths"][0])
        state = LstmState(feed["previous_state_c"], feed["previous_state_h"])
        probs, new = self.numpy_model._forward(x[0, :length], state)
        padded = np.zeros((x.shape[1], 1, probs.shape[1]), np.float32)
        padded[:length, 0] = probs
        return {"logits": padded, "new_state_c": new.c, "new_state_h": new.h}


def _adapter(
    numpy_model: NumpyAcousticModel, legacy: bool, units: str = "ALL"
) -> tuple[CoreMLAcousticModel, dict[str, FakeMLModel]]:
    fakes: dict[str, FakeMLModel] = {}

    def load(path: Path, compute_units: str) -> FakeMLModel:
        assert compute_units == units
        fakes[path.name] = FakeMLModel(numpy_model, static=path.name == md.STATIC_PACKAGE, legacy=legacy)
        return fakes[path.name]

    model = CoreMLAcousticModel(
        Path(md.STATIC_PACKAGE), Path(md.DYNAMIC_PACKAGE), WIDTH, 29, 1000, units, load=load
    )
    return model, fakes


@pytest.mark.parametrize("units", ["ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE"])
def test_full_chunks_go_to_the_static_package_and_the_tail_to_the_dynamic_one(
    numpy_model: NumpyAcousticModel, units: str
) -> None:
    model, fakes = _adapter(numpy_model, legacy=False, units=units)
    assert model.describe()["compute_units"] == units and model.backend == "coreml"
    rng = np.random.default_rng(7)
    windows = rng.normal(0, 3, (37, 19, 26)).astype(np.float32)
    start = LstmState(*(rng.normal(0, 0.5, (1, WIDTH)).astype(np.float32) for _ in range(2)))
    state, parts = start, []
    for offset in range(0, len(windows), STATIC_STEPS):  # 16 + 16 + a 5-window tail, state carried
        probs, state = model.run_chunk(*pad_chunk(windows[offset : offset + STATIC_STEPS]), state)
        parts.append(probs)
    expected, expected_state = numpy_model.run_window(windows, start)
    np.testing.assert_allclose(np.concatenate(parts), expected, atol=1e-6)
    np.testing.assert_allclose(state.c, expected_state.c, atol=1e-6)
    np.testing.assert_allclose(state.h, expected_state.h, atol=1e-6)
    assert [f["input_node"].shape[1] for f in fakes[md.STATIC_PACKAGE].feeds] == [16, 16]
    (tail_feed,) = fakes[md.DYNAMIC_PACKAGE].feeds
    assert tail_feed["input_node"].shape == (1, 5, 19, 26), "the tail runs at its exact length, unpadded"
    np.testing.assert_array_equal(tail_feed["input_node"][0], windows[32:])
    second = numpy_model.run_window(windows[:32], start)[1]
    np.testing.assert_allclose(tail_feed["previous_state_h"], second.h, atol=1e-6)
    # Whole file through the dynamic package.
    probs, _ = model.run_long(windows, start)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert fakes[md.DYNAMIC_PACKAGE].feeds[-1]["input_node"].shape == (1, 37, 19, 26)


def test_packages_converted_before_the_change_still_get_input_lengths(
    numpy_model: NumpyAcousticModel,
) -> None:
    model, fakes = _adapter(numpy_model, legacy=True)
    rng = np.random.default_rng(8)
    windows = rng.normal(0, 3, (21, 19, 26)).astype(np.float32)
    state = LstmState.zeros(WIDTH)
    first, state = model.run_chunk(*pad_chunk(windows[:16]), state)
    tail, state = model.run_chunk(*pad_chunk(windows[16:]), state)
    expected, expected_state = numpy_model.run_window(windows, LstmState.zeros(WIDTH))
    np.testing.assert_allclose(np.concatenate([first, tail]), expected, atol=1e-6)
    np.testing.assert_allclose(state.c, expected_state.c, atol=1e-6)
    assert [int(f["input_lengths"][0]) for f in fakes[md.STATIC_PACKAGE].feeds] == [16]
    assert [int(f["input_lengths"][0]) for f in fakes[md.DYNAMIC_PACKAGE].feeds] == [5]


def test_empty_and_malformed_chunks(numpy_model: NumpyAcousticModel) -> None:
    model, fakes = _adapter(numpy_model, legacy=False)
    state = LstmState.zeros(WIDTH)
    probs, new_state = model.run_chunk(np.zeros((16, 19, 26), np.float32), 0, state)
    assert probs.shape == (0, 29) and new_state is state
    assert not fakes[md.STATIC_PACKAGE].feeds and not fakes[md.DYNAMIC_PACKAGE].feeds
    with pytest.raises(ValueError, match="static chunk"):
        model.run_chunk(np.zeros((5, 19, 26), np.float32), 5, state)
    with pytest.raises(ValueError, match="static chunk"):
        model.run_chunk(np.zeros((16, 19, 26), np.float32), 17, state)
