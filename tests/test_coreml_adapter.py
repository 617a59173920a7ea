"""The Core ML adapter through fakes of coremltools: feeds, input lifetimes, windows, the compiled-model cache,
load failures and the compute plan.

The packages run MIL's core `lstm` op and have no length mask: the static one takes full 16-window chunks
only, and a stream's tail (< 16 windows) goes unpadded through the dynamic one. Packages converted before that
change declare `input_lengths` and still get it. (tests/test_convert_mil.py runs the real packages through the
adapter with the MIL evaluator; tests/test_coreml_mac.py runs real Core ML on a Mac; these fakes compute with the
NumPy backend and need neither.)

What the fakes model: `FakeMLModel` keeps every input it is fed bound for a second after the prediction and then
drops its references, as Core ML's MLE5ExecutionStream.resetQueue does without the GIL (coremltools PRs #2827,
#2829): if that is ever the last reference, the real process would crash, so the fake fails the test.
`FakeCoreML` stands in for coremltools' runtime: package specifications, compiling into a `.mlmodelc`, loading
a compiled model, the compute plan; each can be made to fail as Core ML does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from app.speech import model_dir as md
from app.speech.alphabet import ENGLISH
from app.speech.runtime import (
    STATIC_STEPS,
    CoreMLUnavailable,
    InferenceError,
    LstmState,
    load_acoustic_model,
    pad_chunk,
)
from app.speech.runtime.coreml_backend import (
    HOLD_SECONDS,
    WINDOW_STEPS,
    CoreMLAcousticModel,
    CoreMLLoadFailed,
    InputHold,
    whole_file_window,
)
from app.speech.runtime.coreml_runtime import (
    COMPILED_NAME,
    COMPLETE_MARKER,
    CoreMLTools,
    PackageInfo,
    package_info,
    summarise_compute_plan,
)
from app.speech.runtime.numpy_backend import NumpyAcousticModel
from dsconvert.weights import random_weights

WIDTH = 24
CURRENT_INPUTS = ("input_node", "previous_state_c", "previous_state_h")
LEGACY_INPUTS = ("input_node", "input_lengths", "previous_state_c", "previous_state_h")
PACKAGES = (md.STATIC_PACKAGE, md.DYNAMIC_PACKAGE)


@pytest.fixture(scope="module")
def numpy_model() -> NumpyAcousticModel:
    return NumpyAcousticModel(random_weights(WIDTH, seed=5).arrays, max_steps=1000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMLModel:
    """Stands in for a loaded Core ML model: refuses feeds Core ML would refuse, computes with the NumPy backend
    in the package's output layout, and keeps its inputs bound for LINGER_SECONDS after each prediction.

    `legacy`: a package converted before the core-lstm change (input_lengths, length mask); otherwise every
    step of input_node is valid. `describes`: has `input_description` (MLModel does, CompiledMLModel does not).
    `error`: every prediction raises it, as Core ML's RuntimeError. `classes`: logits width it returns.
    `batch_sizes` (static only): the enumerated batch sizes of a batched static package; the windows and both
    states must then have one of them as their first dimension, the same one (Core ML takes the k-th shape of
    every enumerated input together), and all rows run as one batched NumPy pass (zero rows included)."""

    LINGER_SECONDS = 1.0  # MLE5 unbinds its input ports about a second after a prediction (PR #2827)

    def __init__(
        self,
        numpy_model: NumpyAcousticModel,
        static: bool,
        legacy: bool = False,
        clock: Callable[[], float] | None = None,
        describes: bool = True,
        error: str | None = None,
        classes: int = 29,
        batch_sizes: tuple[int, ...] = (),
    ) -> None:
        self.numpy_model, self.static, self.legacy = numpy_model, static, legacy
        self.batch_sizes = batch_sizes if static and batch_sizes else (1,)
        self.clock = clock or FakeClock()
        self.inputs = set(LEGACY_INPUTS if legacy else CURRENT_INPUTS)
        if describes:
            self.input_description = self.inputs
        self.error, self.classes = error, classes
        self.feeds: list[dict[str, np.ndarray]] = []  # copies of what was fed, to assert on
        self.fed: list[dict[str, weakref.ref[np.ndarray]]] = []  # the objects fed, without keeping them alive
        self._bound: list[tuple[float, dict[str, np.ndarray]]] = []  # Core ML's own references

    def predict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.unbind_lingering()
        assert set(feed) == self.inputs, f"coremltools refuses undeclared inputs: {sorted(feed)}"
        self._bound.append((self.clock() + self.LINGER_SECONDS, dict(feed)))
        self.feeds.append({name: array.copy() for name, array in feed.items()})
        self.fed.append({name: weakref.ref(array) for name, array in feed.items()})
        if self.error:
            raise RuntimeError(self.error)
        return self._compute(feed)

    def unbind_lingering(self) -> None:
        """What Core ML's resetQueue does to inputs bound long enough: drop its references, without the GIL.
        The real process crashes (or corrupts its heap) when that reference is the last one."""
        now, lingering = self.clock(), []
        for deadline, arrays in self._bound:
            if deadline > now:
                lingering.append((deadline, arrays))
                continue
            refs = {name: weakref.ref(array) for name, array in arrays.items()}
            arrays.clear()
            dropped = sorted(name for name, ref in refs.items() if ref() is None)
            assert not dropped, f"Core ML dropped the last reference to {dropped} without the GIL: SIGSEGV"
        self._bound = lingering

    def _compute(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed["input_node"]
        batch = x.shape[0]
        assert x.dtype == np.float32 and batch in self.batch_sizes and x.shape[2:] == (19, 26), x.shape
        for name in ("previous_state_c", "previous_state_h"):
            assert feed[name].dtype == np.float32 and feed[name].shape == (batch, WIDTH), feed[name].shape
        if batch > 1:  # the batched static package: logits (16, B, classes), states (B, n_cell)
            assert x.shape[1] == STATIC_STEPS and not self.legacy
            rows = [
                (x[b], LstmState(feed["previous_state_c"][b : b + 1], feed["previous_state_h"][b : b + 1]))
                for b in range(batch)
            ]
            results = self.numpy_model._forward_batch(rows)
            logits = np.zeros((STATIC_STEPS, batch, self.classes), np.float32)
            for b, (probs, _) in enumerate(results):
                logits[:, b, : probs.shape[1]] = probs[:, : self.classes]
            return {
                "logits": logits,
                "new_state_c": np.concatenate([state.c for _, state in results]),
                "new_state_h": np.concatenate([state.h for _, state in results]),
            }
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
        padded = np.zeros((x.shape[1], 1, self.classes), np.float32)
        padded[:length, 0, : probs.shape[1]] = probs[:, : self.classes]
        return {"logits": padded, "new_state_c": new.c, "new_state_h": new.h}


def _adapter(
    numpy_model: NumpyAcousticModel,
    legacy: bool,
    units: str = "ALL",
    clock: FakeClock | None = None,
    hold: InputHold | None = None,
    error: str | None = None,
    batch_sizes: tuple[int, ...] = (),
) -> tuple[CoreMLAcousticModel, dict[str, FakeMLModel]]:
    fakes: dict[str, FakeMLModel] = {}

    def load(path: Path, compute_units: str) -> FakeMLModel:
        assert compute_units == units
        static = path.name == md.STATIC_PACKAGE
        fakes[path.name] = FakeMLModel(
            numpy_model, static, legacy, clock, error=error, batch_sizes=batch_sizes
        )
        return fakes[path.name]

    model = CoreMLAcousticModel(
        Path(md.STATIC_PACKAGE),
        Path(md.DYNAMIC_PACKAGE),
        WIDTH,
        29,
        1000,
        units,
        load=load,
        hold=hold,
        batch_sizes=batch_sizes,
    )
    return model, fakes


def _random(rng: np.random.Generator, steps: int) -> tuple[np.ndarray, LstmState]:
    windows = rng.normal(0, 3, (steps, 19, 26)).astype(np.float32)
    return windows, LstmState(*(rng.normal(0, 0.5, (1, WIDTH)).astype(np.float32) for _ in range(2)))


# --- feeds -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE"])
def test_full_chunks_go_to_the_static_package_and_the_tail_to_the_dynamic_one(
    numpy_model: NumpyAcousticModel, units: str
) -> None:
    model, fakes = _adapter(numpy_model, legacy=False, units=units)
    assert model.describe()["compute_units"] == units and model.backend == "coreml"
    windows, start = _random(np.random.default_rng(7), 37)
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
    windows, _ = _random(np.random.default_rng(8), 21)
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


# --- batched streams: a static package with enumerated batch sizes -------------------------------------------

BATCH_SIZES = (1, 2, 4, 8, 16)


def _chunks(
    seed: int, n: int, tails: dict[int, int] | None = None
) -> list[tuple[np.ndarray, int, LstmState]]:
    """n streams' chunks (windows, length, state), each its own content and state; `tails` {index: length}
    makes some of them a stream's zero-padded tail (0: an empty chunk)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(n):
        windows, state = _random(rng, STATIC_STEPS)
        length = (tails or {}).get(i, STATIC_STEPS)
        windows[length:] = 0.0
        chunks.append((windows, length, state))
    return chunks


def _assert_same(got: tuple[np.ndarray, LstmState], want: tuple[np.ndarray, LstmState]) -> None:
    """Equal to float32 rounding (the batched pass sums in another order than batch 1 may)."""
    assert got[0].shape == want[0].shape
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1].c, want[1].c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1].h, want[1].h, rtol=1e-5, atol=1e-6)


def test_a_batched_package_runs_streams_chunks_as_one_prediction(numpy_model: NumpyAcousticModel) -> None:
    """Five streams' full chunks, a tail and an empty chunk: the full ones are the rows of one static
    prediction padded up to batch 8 with zero rows, the tail goes unpadded to the dynamic package as before,
    the empty one costs nothing; each result is that chunk's run_chunk result (batch 1, one by one)."""
    model, fakes = _adapter(numpy_model, legacy=False, batch_sizes=BATCH_SIZES)
    single, single_fakes = _adapter(numpy_model, legacy=False)
    assert model.batched_chunks and not single.batched_chunks and CoreMLAcousticModel.batched_chunks is False
    assert model.describe()["stream_batch_sizes"] == list(BATCH_SIZES)
    assert "stream_batch_sizes" not in single.describe()
    chunks = _chunks(30, 7, tails={2: 5, 6: 0})
    results = model.run_chunks(chunks)

    static, dynamic = fakes[md.STATIC_PACKAGE], fakes[md.DYNAMIC_PACKAGE]
    (batch,) = static.feeds
    assert batch["input_node"].shape == (8, 16, 19, 26), "5 full chunks padded up to the next size"
    assert batch["previous_state_c"].shape == batch["previous_state_h"].shape == (8, WIDTH)
    full = [i for i, (_, length, _) in enumerate(chunks) if length == STATIC_STEPS]
    for row, i in enumerate(full):  # the rows in order, then zero rows
        np.testing.assert_array_equal(batch["input_node"][row], chunks[i][0])
        np.testing.assert_array_equal(batch["previous_state_h"][row], chunks[i][2].h[0])
    assert not batch["input_node"][5:].any() and not batch["previous_state_c"][5:].any()
    assert [f["input_node"].shape for f in dynamic.feeds] == [(1, 5, 19, 26)]

    assert len(results) == len(chunks)
    for (windows, length, state), got in zip(chunks, results, strict=True):
        want = single.run_chunk(windows, length, state)
        _assert_same(got, want)
        assert got[1].c.shape == (1, WIDTH) and got[0].dtype == np.float32 and got[0].flags.c_contiguous
        _assert_same(got, numpy_model.run_chunk(windows, length, state))
    assert results[6][1] is chunks[6][2], "an empty chunk keeps its state"
    assert len(single_fakes[md.STATIC_PACKAGE].feeds) == 5, "batch 1: one prediction per full chunk"


@pytest.mark.parametrize(
    ("n_chunks", "batches"),
    [(1, [1]), (2, [2]), (3, [4]), (16, [16]), (17, [16, 1]), (21, [16, 8]), (40, [16, 16, 8])],
)
def test_more_chunks_than_the_largest_batch_are_split(
    numpy_model: NumpyAcousticModel, n_chunks: int, batches: list[int]
) -> None:
    """Full batches of the largest size, then one prediction padded up to the next size: the fewest
    predictions, each result still the chunk's own."""
    model, fakes = _adapter(numpy_model, legacy=False, batch_sizes=BATCH_SIZES)
    chunks = _chunks(31 + n_chunks, n_chunks)
    results = model.run_chunks(chunks)
    assert [f["input_node"].shape[0] for f in fakes[md.STATIC_PACKAGE].feeds] == batches
    for (windows, length, state), got in zip(chunks, results, strict=True):
        _assert_same(got, numpy_model.run_chunk(windows, length, state))


def test_check_mac_measures_batched_streams_against_one_prediction_each(
    numpy_model: NumpyAcousticModel,
) -> None:
    """scripts/check_mac.py's batched line, on the fake: 8 streams' chunks in one prediction agree with one
    each; a batch-1 package says how to convert a batched one instead."""
    from scripts import check_mac

    report = check_mac.Report()
    model, fakes = _adapter(numpy_model, legacy=False, batch_sizes=BATCH_SIZES)
    assert check_mac.report_batched(report, model)
    numbers = report.numbers["batched"]
    assert numbers["batch_sizes"] == list(BATCH_SIZES) and numbers["ok"]
    assert numbers["max_difference"] <= 1e-5 and numbers["speedup"] > 0
    assert any(feed["input_node"].shape[0] == 8 for feed in fakes[md.STATIC_PACKAGE].feeds)
    single, _ = _adapter(numpy_model, legacy=False)
    assert check_mac.report_batched(report, single)
    assert report.numbers["batched"] == {"batch_sizes": [1]}


def test_a_lone_chunk_and_bad_chunks_with_a_batched_package(numpy_model: NumpyAcousticModel) -> None:
    model, fakes = _adapter(numpy_model, legacy=False, batch_sizes=(1, 4))
    (windows, length, state), *_ = _chunks(32, 1)
    _assert_same(model.run_chunk(windows, length, state), numpy_model.run_chunk(windows, length, state))
    assert fakes[md.STATIC_PACKAGE].feeds[-1]["input_node"].shape == (1, 16, 19, 26), "batch 1 stays batch 1"
    bad = [(windows, length, state), (np.zeros((5, 19, 26), np.float32), 5, state)]
    with pytest.raises(ValueError, match="static chunk"):
        model.run_chunks(bad)
    assert len(fakes[md.STATIC_PACKAGE].feeds) == 1, "every chunk is checked before anything runs"
    # A package without batch 1 (not what convert.py writes): a lone chunk is padded up to the smallest size.
    no_one, no_one_fakes = _adapter(numpy_model, legacy=False, batch_sizes=(4, 8))
    _assert_same(no_one.run_chunk(windows, length, state), numpy_model.run_chunk(windows, length, state))
    assert no_one_fakes[md.STATIC_PACKAGE].feeds[-1]["input_node"].shape == (4, 16, 19, 26)


def test_batched_inputs_are_held_too(numpy_model: NumpyAcousticModel) -> None:
    """The batch's arrays are fresh (no caller's buffer is bound) and outlive Core ML's late release."""
    clock = FakeClock()
    model, fakes = _adapter(
        numpy_model, legacy=False, clock=clock, hold=InputHold(HOLD_SECONDS, clock), batch_sizes=BATCH_SIZES
    )
    chunks = _chunks(33, 3)
    model.run_chunks(chunks)
    fed = fakes[md.STATIC_PACKAGE].fed[-1]
    bound = fed["input_node"]()
    assert bound is not None and all(not np.shares_memory(bound, windows) for windows, _, _ in chunks)
    del bound
    clock.advance(FakeMLModel.LINGER_SECONDS + 0.5)
    fakes[md.STATIC_PACKAGE].unbind_lingering()  # fails if Core ML's release were the last one
    assert all(ref() is not None for ref in fed.values())


def test_a_batched_package_gets_the_stream_batcher(numpy_model: NumpyAcousticModel) -> None:
    """`stream_model_for` wraps a batched Core ML model in the BatchingModel, batches capped at its largest
    size; concurrent streams' chunks then share predictions. A batch-1 package is not wrapped."""
    from app.settings import Settings
    from app.speech.engine import stream_model_for
    from app.speech.runtime import BatchingModel

    single, _ = _adapter(numpy_model, legacy=False)
    assert stream_model_for(single, Settings()) is single
    model, fakes = _adapter(numpy_model, legacy=False, batch_sizes=BATCH_SIZES)
    wrapped = stream_model_for(model, Settings())
    try:
        assert isinstance(wrapped, BatchingModel) and wrapped.model is model
        assert wrapped.max_batch == 16 and wrapped.batched_chunks
        chunks = _chunks(34, 20)
        results = wrapped.run_chunks(chunks)
        for (windows, length, state), got in zip(chunks, results, strict=True):
            _assert_same(got, numpy_model.run_chunk(windows, length, state))
        sizes = [f["input_node"].shape[0] for f in fakes[md.STATIC_PACKAGE].feeds]
        assert sum(sizes) >= 20 and len(sizes) == 2, f"20 chunks in batches of at most 16: {sizes}"
        assert wrapped.batches == 2 and wrapped.largest_batch == 16
    finally:
        wrapped.close()


def test_a_batched_package_is_loaded_and_proven_at_its_largest_batch(
    tmp_path: Path, numpy_model: NumpyAcousticModel
) -> None:
    """Through the fake coremltools: the static package's specification declares the batch sizes; the load
    proves a prediction at batch 1 and at the largest size (each enumerated shape is specialised apart)."""
    runtime = FakeCoreML(numpy_model)
    model_dir = _model_dir(tmp_path / "m", batch_sizes=BATCH_SIZES)
    model = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "cache", runtime=runtime)
    assert model.batched_chunks and model.chunk_batch_sizes == BATCH_SIZES
    static = runtime.models[md.STATIC_PACKAGE]
    assert [f["input_node"].shape[0] for f in static.feeds] == [1, 16]
    chunks = _chunks(35, 6)
    for (windows, length, state), got in zip(chunks, model.run_chunks(chunks), strict=True):
        _assert_same(got, numpy_model.run_chunk(windows, length, state))
    assert static.feeds[-1]["input_node"].shape[0] == 8

    # A package whose batched prediction fails is refused at load, naming the batch.
    class BatchFails(FakeCoreML):
        def load(self, compiled: Path, compute_units: str) -> FakeMLModel:
            model = super().load(compiled, compute_units)
            if model.static:
                model.batch_sizes = (1,)  # declares 16 but cannot run it
            return model

    with pytest.raises(
        CoreMLLoadFailed, match=r"static.mlpackage \(batch 16\) loaded but its first prediction"
    ):
        CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "cache", runtime=BatchFails(numpy_model))
    plain = CoreMLAcousticModel.load(_model_dir(tmp_path / "p"), cache_dir=tmp_path / "c", runtime=runtime)
    assert not plain.batched_chunks and plain.chunk_batch_sizes == (1,)


# --- input lifetimes: the crash after idle ----------------------------------------------------------------------


def test_inputs_are_private_copies_held_until_core_ml_has_let_go(numpy_model: NumpyAcousticModel) -> None:
    clock = FakeClock()
    model, fakes = _adapter(numpy_model, legacy=False, clock=clock, hold=InputHold(HOLD_SECONDS, clock))
    static = fakes[md.STATIC_PACKAGE]
    batch, state = _random(np.random.default_rng(9), STATIC_STEPS)
    _, new_state = model.run_chunk(batch, STATIC_STEPS, state)
    fed = static.fed[-1]
    bound = fed["input_node"]()
    assert bound is not None and not np.shares_memory(bound, batch), "Core ML must get a copy of the windows"
    for name, mine in (("previous_state_c", state.c), ("previous_state_h", state.h)):
        theirs = fed[name]()
        assert theirs is not None and theirs is not mine and not np.shares_memory(theirs, mine)
    batch[:] = 0.0  # the caller reuses its buffer (StreamSession does) while Core ML still has it bound
    np.testing.assert_array_equal(bound, static.feeds[-1]["input_node"])
    del bound, theirs

    clock.advance(FakeMLModel.LINGER_SECONDS + 0.5)  # the service goes quiet; Core ML's queue unbinds
    static.unbind_lingering()  # fails if its release were the last one
    assert all(ref() is not None for ref in fed.values()), "the hold keeps them until its time is up"

    clock.advance(HOLD_SECONDS)
    model.run_chunk(batch, STATIC_STEPS, new_state)  # the next prediction drops what expired, on this thread
    assert all(ref() is None for ref in fed.values()), "expired inputs are released, not leaked"


def test_the_fake_catches_core_ml_dropping_the_last_reference(numpy_model: NumpyAcousticModel) -> None:
    """The control: without the hold, the arrays fed would die with Core ML's late release (the real crash)."""
    clock = FakeClock()
    model, fakes = _adapter(numpy_model, legacy=False, clock=clock, hold=InputHold(0.0, clock))
    model.run_window(*_random(np.random.default_rng(10), 40))
    clock.advance(FakeMLModel.LINGER_SECONDS + 0.5)
    with pytest.raises(AssertionError, match="last reference.*without the GIL"):
        fakes[md.DYNAMIC_PACKAGE].unbind_lingering()


def test_inputs_of_a_failed_prediction_are_held_too(numpy_model: NumpyAcousticModel) -> None:
    clock = FakeClock()
    hold = InputHold(HOLD_SECONDS, clock)
    model, fakes = _adapter(numpy_model, False, clock=clock, hold=hold, error="Error computing NN outputs")
    with pytest.raises(InferenceError, match="Core ML prediction failed: Error computing NN outputs"):
        model.run_window(*_random(np.random.default_rng(11), 8))
    clock.advance(FakeMLModel.LINGER_SECONDS + 0.5)
    fakes[md.DYNAMIC_PACKAGE].unbind_lingering()
    assert hold.held_bytes() == (8 * 19 * 26 + 2 * WIDTH) * 4


# --- a fake coremltools runtime and model directory ----------------------------------------------------------


class FakeCoreML:
    """Stands in for coremltools (`CoreMLRuntime`): a package's specification is a JSON file in it, compiling
    copies the package into a `.mlmodelc`, loading one gives a FakeMLModel. `fail` names the step that raises
    as Core ML does ("compile", "load", "predict", "shape", "plan"); `max_spec` the OS's newest version."""

    def __init__(
        self, numpy_model: NumpyAcousticModel, fail: str | None = None, max_spec: int = 8, plan: Any = None
    ) -> None:
        self.numpy_model, self.fail, self.max_spec, self.plan = numpy_model, fail, max_spec, plan
        self.os = "fakeos-15.1"
        self.clock = FakeClock()
        self.compiles: list[str] = []
        self.loads: list[Path] = []
        self.models: dict[str, FakeMLModel] = {}

    def describe_package(self, package: Path) -> PackageInfo:
        spec = json.loads((package / "spec.json").read_text())
        return PackageInfo(
            frozenset(CURRENT_INPUTS),
            spec["version"],
            tuple(spec["lengths"]),
            spec.get("max_length"),
            tuple(spec.get("batch_sizes", ())),
        )

    def max_spec_version(self) -> int:
        return self.max_spec

    def compile(self, package: Path, destination: Path) -> None:
        assert destination.name.endswith(".mlmodelc") and not destination.exists()
        if self.fail == "compile":
            raise RuntimeError("Error reading protobuf spec. validator error: bad MIL program")
        shutil.copytree(package, destination)
        self.compiles.append(package.name)

    def load(self, compiled: Path, compute_units: str) -> FakeMLModel:
        self.loads.append(compiled)
        if self.fail == "load" or not (compiled / "spec.json").is_file():
            raise RuntimeError(f"Error opening the compiled model at {compiled}")
        spec = json.loads((compiled / "spec.json").read_text())
        static, batch_sizes = spec["static"], tuple(spec.get("batch_sizes", ()))
        error = "Error computing NN outputs" if self.fail == "predict" else None
        model = FakeMLModel(
            self.numpy_model, static, clock=self.clock, describes=False, error=error, batch_sizes=batch_sizes
        )
        model.classes = 28 if self.fail == "shape" else 29
        self.models[md.STATIC_PACKAGE if static else md.DYNAMIC_PACKAGE] = model
        return model

    def compute_plan(self, compiled: Path, compute_units: str) -> Any:
        if self.fail == "plan" or self.plan is None:
            raise ValueError("MLComputePlan is not supported.")
        return self.plan

    def os_tag(self) -> str:
        return self.os


def _model_dir(
    root: Path, spec_version: int = 8, lengths: tuple[int, ...] = (), batch_sizes: tuple[int, ...] = ()
) -> md.ModelDirectory:
    """A model directory with fake packages (their spec as JSON) and the width-24 weights, sha256s listed;
    `batch_sizes`: the static package's enumerated batch sizes (a batched package)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        (root / name).mkdir(exist_ok=True)
        spec: dict[str, Any] = {
            "static": name == md.STATIC_PACKAGE,
            "version": spec_version,
            "lengths": list(lengths),
        }
        if name == md.DYNAMIC_PACKAGE:
            spec["max_length"] = 1000
        else:
            spec["batch_sizes"] = list(batch_sizes)
        (root / name / "spec.json").write_text(json.dumps(spec))
    np.savez(root / md.WEIGHTS_NAME, **random_weights(WIDTH, seed=5).arrays)
    files = {name: md.sha256_of(root / name) for name in (*PACKAGES, md.WEIGHTS_NAME)}
    manifest = md.Manifest(WIDTH, WIDTH, 29, list(ENGLISH.labels), files=files)
    return md.ModelDirectory(root, manifest, ENGLISH)


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


# --- whole files in short windows (predict holds the GIL) -------------------------------------------------------


def test_whole_files_go_in_short_windows(tmp_path: Path, numpy_model: NumpyAcousticModel) -> None:
    from app.speech.decoding import GreedyDecoder
    from app.speech.engine import Engine

    runtime = FakeCoreML(numpy_model)
    model_dir = _model_dir(tmp_path / "m")
    model = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "cache", runtime=runtime)
    assert model.max_steps == WINDOW_STEPS < model_dir.manifest.dynamic_max_steps
    windows, start = _random(np.random.default_rng(12), 450)
    probs, state = model.run_long(windows, start)
    expected, expected_state = numpy_model.run_window(windows, start)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(state.h, expected_state.h, atol=1e-6)
    dynamic = runtime.models[md.DYNAMIC_PACKAGE]
    assert [f["input_node"].shape[1] for f in dynamic.feeds[1:]] == [200, 200, 50]  # [0]: the load's proof

    engine = Engine(model_dir, model, GreedyDecoder(ENGLISH))
    before = len(dynamic.feeds)
    engine.transcribe(np.random.default_rng(13).normal(0, 0.1, 16000 * 10).astype(np.float32))
    steps = [f["input_node"].shape[1] for f in dynamic.feeds[before:]]
    assert steps == [200, 200, 99], "10 s of audio: 499 feature frames, 200 a window"


ENUMERATED = (*range(1, 16), 16, 24, 32, 50, 75, 100, 150, 200)


def test_enumerated_lengths_exact_pieces_and_a_padded_last_window(
    tmp_path: Path, numpy_model: NumpyAcousticModel
) -> None:
    """A package with enumerated time lengths gets only those: a window whose state goes on is cut exactly into
    them; a file's last window is one prediction padded to the next length, its extra rows dropped. The
    probabilities are the NumPy backend's over the whole file either way."""
    from app.speech.decoding import GreedyDecoder
    from app.speech.engine import Engine

    runtime = FakeCoreML(numpy_model)
    model_dir = _model_dir(tmp_path / "m", lengths=ENUMERATED)
    model = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "cache", runtime=runtime)
    dynamic = runtime.models[md.DYNAMIC_PACKAGE]
    windows, start = _random(np.random.default_rng(21), 137)
    expected, expected_state = numpy_model.run_window(windows, start)

    before = len(dynamic.feeds)
    probs, state = model.run_window(windows, start)
    assert [f["input_node"].shape[1] for f in dynamic.feeds[before:]] == [100, 32, 5]
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(state.h, expected_state.h, atol=1e-6)

    before = len(dynamic.feeds)
    last = model.run_last_window(windows, start)
    (padded,) = dynamic.feeds[before:]
    assert padded["input_node"].shape == (1, 150, 19, 26) and not padded["input_node"][0, 137:].any()
    np.testing.assert_allclose(last, expected, atol=1e-6)

    engine = Engine(model_dir, model, GreedyDecoder(ENGLISH))
    samples = np.random.default_rng(22).normal(0, 0.1, 16000 * 10).astype(np.float32)
    before = len(dynamic.feeds)
    transcribed = engine.transcribe(samples).transcript
    assert [f["input_node"].shape[1] for f in dynamic.feeds[before:]] == [200, 200, 100]  # 99 padded to 100
    reference = Engine(model_dir, numpy_model, GreedyDecoder(ENGLISH)).transcribe(samples).transcript
    assert transcribed.text == reference.text


def test_the_manifest_lengths_are_read_when_the_spec_has_none(
    tmp_path: Path, numpy_model: NumpyAcousticModel
) -> None:
    model_dir = _model_dir(tmp_path / "m")
    model_dir.manifest.dynamic_lengths = [*range(1, 16), 16, 24, 50, 100, 150, 300, 1000]
    model = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "cache", runtime=FakeCoreML(numpy_model))
    assert model.max_steps == 150, "the largest enumerated length within the window asked for"


@pytest.mark.parametrize(
    ("requested", "max_length", "lengths", "window"),
    [
        (200, 1000, (), 200),
        (5000, 1000, (), 1000),
        (5000, 400, (), 400),  # the package's range is narrower than the manifest says
        (200, None, (16, 64, 128, 256, 1000), 128),  # enumerated: the largest that fits
        (200, None, (256, 512), 256),  # none fits: the smallest
        (5000, None, (16, 2000), 16),  # lengths past the manifest's bound are not used
    ],
)
def test_the_window_fits_the_package(
    requested: int, max_length: int | None, lengths: tuple[int, ...], window: int
) -> None:
    info = PackageInfo(frozenset(CURRENT_INPUTS), 8, lengths, max_length)
    assert whole_file_window(requested, 1000, info) == window


# --- compiled once, into a cache -------------------------------------------------------------------------------


def test_packages_are_compiled_once_and_reused(tmp_path: Path, numpy_model: NumpyAcousticModel) -> None:
    runtime, cache = FakeCoreML(numpy_model), tmp_path / "cache"
    model_dir = _model_dir(tmp_path / "m")
    first = CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    assert sorted(runtime.compiles) == sorted(PACKAGES)
    assert first.describe()["compiled"] == {"static": "compiled", "dynamic": "compiled"}
    assert len(_entries(cache)) == 2, "one entry per package, no staging left behind"
    assert all(path.is_relative_to(cache) and path.name == COMPILED_NAME for path in runtime.loads)

    second = CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    assert len(runtime.compiles) == 2, "the second start compiles nothing"
    assert second.describe()["compiled"] == {"static": "cached", "dynamic": "cached"}
    assert runtime.loads[2:] == runtime.loads[:2], "the same compiled paths: Core ML keeps its specialisation"

    # A re-converted dynamic package (new sha256 in the manifest) compiles anew; the old entry stays, unused.
    (tmp_path / "m" / md.DYNAMIC_PACKAGE / "weight.bin").write_bytes(b"new weights")
    changed = _model_dir(tmp_path / "m")
    third = CoreMLAcousticModel.load(changed, cache_dir=cache, runtime=runtime)
    assert runtime.compiles[2:] == [md.DYNAMIC_PACKAGE]
    assert third.describe()["compiled"] == {"static": "cached", "dynamic": "compiled"}
    assert len(_entries(cache)) == 3
    # An OS update recompiles both (a .mlmodelc is compiled for the OS that compiled it).
    runtime.os = "fakeos-16.0"
    CoreMLAcousticModel.load(changed, cache_dir=cache, runtime=runtime)
    assert len(runtime.compiles) == 5


def test_a_half_written_entry_is_not_used(tmp_path: Path, numpy_model: NumpyAcousticModel) -> None:
    runtime, cache = FakeCoreML(numpy_model), tmp_path / "cache"
    model_dir = _model_dir(tmp_path / "m")
    CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    static_sha = model_dir.manifest.files[md.STATIC_PACKAGE]
    (entry,) = (cache / name for name in _entries(cache) if name.startswith(static_sha))
    (entry / COMPLETE_MARKER).unlink()  # interrupted: the compiled model is there, the marker is not
    (entry / COMPILED_NAME / "spec.json").unlink()
    old_staging = cache / ".staging-killed"  # a process killed mid-compile an hour ago
    old_staging.mkdir()
    os.utime(old_staging, (time.time() - 7200, time.time() - 7200))
    busy_staging = cache / ".staging-compiling"  # another process compiling right now
    busy_staging.mkdir()

    model = CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    assert runtime.compiles[2:] == [md.STATIC_PACKAGE]
    assert model.describe()["compiled"] == {"static": "compiled", "dynamic": "cached"}
    assert (entry / COMPLETE_MARKER).read_text().strip() == static_sha
    assert (entry / COMPILED_NAME / "spec.json").is_file()
    assert not old_staging.exists() and busy_staging.exists()


def test_a_cached_model_that_no_longer_loads_is_compiled_again(
    tmp_path: Path, numpy_model: NumpyAcousticModel, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, cache = FakeCoreML(numpy_model), tmp_path / "cache"
    model_dir = _model_dir(tmp_path / "m")
    CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    dynamic_sha = model_dir.manifest.files[md.DYNAMIC_PACKAGE]
    (entry,) = (cache / name for name in _entries(cache) if name.startswith(dynamic_sha))
    (entry / COMPILED_NAME / "spec.json").unlink()  # marked complete, but Core ML cannot open it
    with caplog.at_level(logging.WARNING, logger="app.speech.runtime.coreml_backend"):
        model = CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    assert runtime.compiles[2:] == [md.DYNAMIC_PACKAGE]
    assert model.describe()["compiled"] == {"static": "cached", "dynamic": "compiled"}
    assert "cached compiled dynamic.mlpackage did not load" in caplog.text


def test_an_unwritable_cache_compiles_into_a_temporary_directory(
    tmp_path: Path, numpy_model: NumpyAcousticModel, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeCoreML(numpy_model)
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache should be")  # fails for root too, unlike a chmod
    with caplog.at_level(logging.WARNING, logger="app.speech.runtime.coreml_backend"):
        model = CoreMLAcousticModel.load(_model_dir(tmp_path / "m"), cache_dir=not_a_dir, runtime=runtime)
    assert model.describe()["compiled"] == {"static": "compiled", "dynamic": "compiled"}
    assert all(not path.is_relative_to(tmp_path) for path in runtime.loads)
    assert "cannot write the Core ML cache" in caplog.text


# --- load failures: one line at startup, or NumPy with a warning ---------------------------------------------


@pytest.mark.parametrize(
    ("fail", "spec_version", "message"),
    [
        (None, 9, r"static.mlpackage needs Core ML specification version 9 but this macOS supports up to 8"),
        ("compile", 8, r"Core ML could not compile static.mlpackage \(Error reading protobuf spec"),
        ("load", 8, r"Core ML could not load static.mlpackage \(Error opening the compiled model"),
        (
            "predict",
            8,
            r"static.mlpackage loaded but its first prediction failed \(Core ML prediction failed",
        ),
        (
            "shape",
            8,
            r"static.mlpackage loaded but its first prediction failed \(cannot reshape|logits of shape",
        ),
    ],
)
def test_a_package_core_ml_cannot_run_is_refused_at_load(
    tmp_path: Path, numpy_model: NumpyAcousticModel, fail: str | None, spec_version: int, message: str
) -> None:
    runtime, cache = FakeCoreML(numpy_model, fail=fail), tmp_path / "cache"
    model_dir = _model_dir(tmp_path / "m", spec_version=spec_version)
    with pytest.raises(CoreMLLoadFailed, match=message) as refused:
        CoreMLAcousticModel.load(model_dir, cache_dir=cache, runtime=runtime)
    text = str(refused.value)
    assert "\n" not in text and "DS_BACKEND=numpy" in text
    assert isinstance(refused.value, CoreMLUnavailable), (
        "app/main.py's STARTUP_ERRORS: one line, no traceback"
    )
    if fail == "compile":
        assert _entries(cache) == [], "a failed compile leaves nothing in the cache"


def test_auto_falls_back_to_numpy_and_says_why(
    tmp_path: Path,
    numpy_model: NumpyAcousticModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import app.speech.runtime as runtime_module
    from app.main import STARTUP_ERRORS
    from app.speech.runtime import coreml_backend

    runtimes = {"fail": "predict"}
    monkeypatch.setattr(runtime_module, "coreml_available", lambda: None)  # as on a Mac
    monkeypatch.setattr(coreml_backend, "CoreMLTools", lambda: FakeCoreML(numpy_model, **runtimes))
    model_dir, cache = _model_dir(tmp_path / "m"), tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="app.speech.runtime"):
        auto = load_acoustic_model(model_dir, "auto", coreml_cache_dir=cache)
    assert auto.backend == "numpy"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "falling back to the NumPy backend" in warning.getMessage()
    assert "first prediction failed" in warning.getMessage()
    with pytest.raises(CoreMLLoadFailed, match="first prediction failed") as refused:
        load_acoustic_model(model_dir, "coreml", coreml_cache_dir=cache)
    assert isinstance(refused.value, STARTUP_ERRORS)

    runtimes.clear()  # a Mac where it works: Core ML, with the window asked for
    coreml = load_acoustic_model(model_dir, "auto", coreml_cache_dir=cache, coreml_window_steps=64)
    assert coreml.backend == "coreml" and coreml.max_steps == 64


# --- where Core ML runs the ops (/info) ------------------------------------------------------------------------


class MLCPUComputeDevice:
    pass


class MLGPUComputeDevice:
    pass


class MLNeuralEngineComputeDevice:
    pass


def _fake_plan() -> SimpleNamespace:
    """An MLComputePlan's shape (coremltools.models.compute_plan): ops with nested blocks, devices, costs."""

    def op(
        name: str, device: type | None, cost: float | None, blocks: tuple[SimpleNamespace, ...] = ()
    ) -> SimpleNamespace:
        return SimpleNamespace(operator_name=name, blocks=list(blocks), device=device, cost=cost)

    inner = SimpleNamespace(operations=[op("add", MLCPUComputeDevice, 0.01)])
    operations = [
        op("const", None, None),
        *(op("linear", MLNeuralEngineComputeDevice, 0.1) for _ in range(3)),
        op("lstm", MLGPUComputeDevice, 0.6),
        op("softmax", MLNeuralEngineComputeDevice, 0.05),
        op("while_loop", None, None, (inner,)),
    ]

    def usage(operation: SimpleNamespace) -> SimpleNamespace | None:
        device = operation.device
        return None if device is None else SimpleNamespace(preferred_compute_device=device())

    def cost(operation: SimpleNamespace) -> SimpleNamespace | None:
        return None if operation.cost is None else SimpleNamespace(weight=operation.cost)

    main = SimpleNamespace(block=SimpleNamespace(operations=operations))
    return SimpleNamespace(
        model_structure=SimpleNamespace(program=SimpleNamespace(functions={"main": main})),
        get_compute_device_usage_for_mlprogram_operation=usage,
        get_estimated_cost_for_mlprogram_operation=cost,
    )


def test_the_compute_plan_is_summarised_for_info(tmp_path: Path, numpy_model: NumpyAcousticModel) -> None:
    from app.speech.decoding import GreedyDecoder
    from app.speech.engine import Engine

    summary = summarise_compute_plan(_fake_plan())
    assert summary == {
        "devices": {"NeuralEngine": 4, "GPU": 1, "unknown": 1, "CPU": 1},
        "ops": {
            "add": {"CPU": 1},
            "linear": {"NeuralEngine": 3},
            "lstm": {"GPU": 1},
            "softmax": {"NeuralEngine": 1},
            "while_loop": {"unknown": 1},
        },
        "cost": {"GPU": 0.6, "NeuralEngine": 0.35, "CPU": 0.01},
    }
    model_dir = _model_dir(tmp_path / "m")
    model = CoreMLAcousticModel.load(
        model_dir, cache_dir=tmp_path / "c", runtime=FakeCoreML(numpy_model, plan=_fake_plan())
    )
    runtime_info = Engine(model_dir, model, GreedyDecoder(ENGLISH)).info()["runtime"]
    assert isinstance(runtime_info, dict)
    assert runtime_info["compute_plan"] == {"static": summary, "dynamic": summary}
    assert runtime_info["compiled"] == {"static": "compiled", "dynamic": "compiled"}
    assert str(tmp_path) not in json.dumps(runtime_info), "/info names no host paths"

    # Where the plan cannot be had (macOS < 14.4, an error), the entry says why and the load goes on.
    failing = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path / "c", runtime=FakeCoreML(numpy_model))
    plan = failing.describe()["compute_plan"]
    assert plan == {
        name: {"error": "no compute plan: MLComputePlan is not supported."} for name in ("static", "dynamic")
    }


# --- the real coremltools, as far as Linux can run it ---------------------------------------------------------


def test_package_specs_are_read_from_the_shipped_packages() -> None:
    """Reading a specification needs no Core ML: coremltools parses the .mlpackage's protobuf anywhere."""
    pytest.importorskip("coremltools")
    from coremltools.proto import Model_pb2

    root = Path(__file__).resolve().parent.parent / "models" / "default"
    manifest = md.load_model_directory(root, verify_hashes=False).manifest
    static = CoreMLTools().describe_package(root / md.STATIC_PACKAGE)
    dynamic = CoreMLTools().describe_package(root / md.DYNAMIC_PACKAGE)
    assert static.inputs == dynamic.inputs == frozenset(CURRENT_INPUTS)
    assert static.max_length is None and static.time_lengths == ()
    if manifest.dynamic_lengths:  # converted with enumerated time lengths
        assert dynamic.time_lengths == tuple(manifest.dynamic_lengths) and dynamic.max_length is None
    else:  # converted with a range 1..dynamic_max_steps
        assert dynamic.max_length == manifest.dynamic_max_steps and dynamic.time_lengths == ()
    assert static.spec_version == dynamic.spec_version >= 7  # macOS 13 or later

    spec = Model_pb2.Model(specificationVersion=9)  # a package converted with enumerated time lengths
    feature = spec.description.input.add(name="input_node")
    for steps in (64, 16, 1000):
        feature.type.multiArrayType.enumeratedShapes.shapes.add().shape.extend([1, steps, 19, 26])
    assert package_info(spec) == PackageInfo(frozenset({"input_node"}), 9, (16, 64, 1000), None)

    batched = Model_pb2.Model(specificationVersion=9)  # a static package with enumerated batch sizes
    feature = batched.description.input.add(name="input_node")
    for batch in (1, 2, 4, 8, 16):
        feature.type.multiArrayType.enumeratedShapes.shapes.add().shape.extend([batch, 16, 19, 26])
    state = batched.description.input.add(name="previous_state_c")
    for batch in (1, 2, 4, 8, 16):
        state.type.multiArrayType.enumeratedShapes.shapes.add().shape.extend([batch, WIDTH])
    info = package_info(batched)
    assert info.batch_sizes == (1, 2, 4, 8, 16) and info.time_lengths == (), "time is fixed at 16"
    assert package_info(spec).batch_sizes == ()
