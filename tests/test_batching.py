"""Concurrent streams' chunks as one batch: NumpyAcousticModel.run_chunks, the BatchingModel worker, and streams
through StreamSession / Engine with batching on giving exactly what they give one at a time."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.speech.runtime import (
    STATIC_STEPS,
    AcousticModel,
    BatchingModel,
    InferenceError,
    LstmState,
    pad_chunk,
)
from app.speech.runtime.numpy_backend import NumpyAcousticModel
from dsconvert.weights import random_weights

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _model(width: int, seed: int = 1) -> NumpyAcousticModel:
    return NumpyAcousticModel(random_weights(width, seed=seed).arrays, 1000)


def _state(rng: np.random.Generator, width: int) -> LstmState:
    return LstmState(*(rng.normal(0, 0.5, (1, width)).astype(np.float32) for _ in range(2)))


def _requests(
    rng: np.random.Generator, width: int, lengths: Sequence[int]
) -> list[tuple[np.ndarray, int, LstmState]]:
    out = []
    for length in lengths:
        windows, _ = pad_chunk(rng.normal(0, 3, (max(length, 1), 19, 26)).astype(np.float32))
        out.append((windows, length, _state(rng, width)))
    return out


def _assert_same(got: tuple[np.ndarray, LstmState], expected: tuple[np.ndarray, LstmState]) -> None:
    (probs, state), (ref_probs, ref_state) = got, expected
    assert probs.shape == ref_probs.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref_probs, **TOLERANCE)
    np.testing.assert_array_equal(probs.argmax(axis=1), ref_probs.argmax(axis=1))
    for name in ("c", "h"):
        value = getattr(state, name)
        assert value.shape == getattr(ref_state, name).shape and value.dtype == np.float32
        np.testing.assert_allclose(value, getattr(ref_state, name), **TOLERANCE)


# --------------------------------------------------------------------------------- NumpyAcousticModel.run_chunks


@pytest.mark.parametrize(
    "width, lengths",
    [
        (64, [16, 5, 16, 1, 0, 12, 16, 3, 16, 16, 7]),  # mixed lengths, a zero-length chunk, more than 3 rows
        (64, [16, 16]),  # two rows: the row-by-row recurrence
        (64, [9]),
        (256, [16, 2, 16, 16, 11, 16]),
        (256, [0, 0]),
    ],
)
def test_run_chunks_equals_run_chunk_per_stream(width: int, lengths: list[int]) -> None:
    model = _model(width)
    requests = _requests(np.random.default_rng(width + len(lengths)), width, lengths)
    batched = model.run_chunks(requests)
    assert len(batched) == len(requests)
    for request, result in zip(requests, batched, strict=True):
        _assert_same(result, model.run_chunk(*request))
        if request[1] == 0:
            assert result[1] is request[2], "a zero-length chunk leaves the state as it is"


def test_run_chunks_matches_the_tensorflow_static_graph(small_model_dir: Path) -> None:
    """Each stream of a batch against upstream's frozen static graph (the ground truth, at batch 1)."""
    pytest.importorskip("tensorflow")
    from app.speech import model_dir as md
    from app.speech.runtime import load_acoustic_model
    from dsconvert.graph import run_graph
    from tests.support.models import SMALL_WIDTH, frozen_graph

    model = load_acoustic_model(md.load_model_directory(small_model_dir), "numpy")
    graph = frozen_graph(small_model_dir, md.STATIC_GRAPH, 16)
    requests = _requests(np.random.default_rng(12), SMALL_WIDTH, [16, 4, 16, 9, 1])
    for (windows, length, state), (probs, new_state) in zip(
        requests, model.run_chunks(requests), strict=True
    ):
        reference = run_graph(graph, windows[None], np.array([length], np.int32), state.c, state.h)
        np.testing.assert_allclose(probs, reference["logits"][:length, 0], atol=1e-6)
        np.testing.assert_allclose(new_state.c, reference["new_state_c"], atol=1e-5)
        np.testing.assert_allclose(new_state.h, reference["new_state_h"], atol=1e-5)


def test_run_chunks_carries_state_like_one_pass() -> None:
    """Streams of different lengths advanced chunk by chunk through run_chunks: each equals its own dynamic
    pass (the LSTM state of a row stops at its chunk's length)."""
    width, rng = 64, np.random.default_rng(3)
    model = _model(width, seed=3)
    sequences = [rng.normal(0, 3, (n, 19, 26)).astype(np.float32) for n in (40, 16, 33, 7)]
    states = [LstmState.zeros(width) for _ in sequences]
    parts: list[list[np.ndarray]] = [[] for _ in sequences]
    for start in range(0, 48, STATIC_STEPS):
        live = [i for i, seq in enumerate(sequences) if start < len(seq)]
        requests = [(*pad_chunk(sequences[i][start : start + STATIC_STEPS]), states[i]) for i in live]
        for i, (probs, state) in zip(live, model.run_chunks(requests), strict=True):
            parts[i].append(probs)
            states[i] = state
    for seq, got, state in zip(sequences, parts, states, strict=True):
        _assert_same((np.concatenate(got), state), model.run_window(seq, LstmState.zeros(width)))


def test_everything_stays_float32() -> None:
    model = _model(64)

    def arrays(value: object) -> list[np.ndarray]:
        if isinstance(value, np.ndarray):
            return [value]
        if isinstance(value, list | tuple):
            return [a for item in value for a in arrays(item)]
        return []

    weights = arrays(list(vars(model).values()))
    assert len(weights) >= 11 and all(a.dtype == np.float32 for a in weights)
    # float64 input and state are computed in float32 too
    rng = np.random.default_rng(0)
    state = LstmState(*(rng.normal(0, 0.5, (1, 64)) for _ in range(2)))
    probs, new = model.run_chunk(rng.normal(0, 3, (16, 19, 26)), 16, state)
    assert probs.dtype == new.c.dtype == new.h.dtype == np.float32


def test_run_chunks_rejects_a_bad_chunk() -> None:
    model = _model(64)
    with pytest.raises(ValueError, match="static chunk"):
        model.run_chunks([(np.zeros((15, 19, 26), np.float32), 15, LstmState.zeros(64))])


def test_default_run_chunks_loops_over_run_chunk() -> None:
    model = _model(64)
    looped = AcousticModel.run_chunks(model, _requests(np.random.default_rng(2), 64, [16, 4]))
    for got, request in zip(looped, _requests(np.random.default_rng(2), 64, [16, 4]), strict=True):
        _assert_same(got, model.run_chunk(*request))


# ------------------------------------------------------------------------------------------------ BatchingModel


class RecordingModel(AcousticModel):
    """Delegates to a NumPy model, records each run_chunks call's size, and fails when told to."""

    def __init__(self, model: NumpyAcousticModel) -> None:
        self._model = model
        self.backend, self.n_cell_dim, self.n_classes, self.max_steps = (
            model.backend,
            model.n_cell_dim,
            model.n_classes,
            model.max_steps,
        )
        self.batched_chunks = True
        self.sizes: list[int] = []
        self.threads: set[int] = set()
        self.poison_length: int | None = None  # a chunk of this length fails, alone or in a batch
        self.broken: Exception | None = None  # every call fails (the backend is down)
        self.singles = 0  # run_chunk calls: the batcher's fallback after a failed batch

    def _check(self, length: int) -> None:
        if self.broken is not None:
            raise self.broken
        if length == self.poison_length:
            raise InferenceError(f"cannot run a chunk of length {length}")

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        self.singles += 1
        self._check(length)
        return self._model.run_chunk(windows, length, state)

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        self.sizes.append(len(requests))
        self.threads.add(threading.get_ident())
        for _, length, _ in requests:
            self._check(length)
        return self._model.run_chunks(requests)

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._model.run_window(windows, state)


def _stream(model: AcousticModel, windows: np.ndarray, width: int) -> tuple[np.ndarray, LstmState]:
    """One stream as StreamSession runs it: 16-window chunks, the tail zero-padded, state carried."""
    state = LstmState.zeros(width)
    parts = []
    for start in range(0, len(windows), STATIC_STEPS):
        probs, state = model.run_chunk(*pad_chunk(windows[start : start + STATIC_STEPS]), state)
        parts.append(probs)
    return np.concatenate(parts), state


def _in_threads(n: int, work) -> list[object]:
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # handed to the test thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    return results


def test_concurrent_streams_get_exactly_their_unbatched_results() -> None:
    width = 64
    plain = _model(width, seed=5)
    recording = RecordingModel(plain)
    # A long wait: the worker gathers every open stream's chunk, so batches of several certainly happen.
    batcher = BatchingModel(recording, max_wait_s=0.25)
    rng = np.random.default_rng(5)
    inputs = [rng.normal(0, 3, (int(n), 19, 26)).astype(np.float32) for n in rng.integers(20, 120, 8)]
    try:

        def work(i: int) -> tuple[np.ndarray, LstmState]:
            detach = batcher.attach_stream()
            try:
                return _stream(batcher, inputs[i], width)
            finally:
                detach()

        results = _in_threads(8, work)
    finally:
        batcher.close()
    for windows, result in zip(inputs, results, strict=True):
        assert isinstance(result, tuple), result
        _assert_same(result, _stream(plain, windows, width))
    info = batcher.describe()["stream_batching"]
    assert isinstance(info, dict)
    total = sum(-(-len(w) // STATIC_STEPS) for w in inputs)
    assert info["chunks"] == sum(recording.sizes) == total
    assert info["batches"] == len(recording.sizes) < total, "chunks of several streams ran together"
    assert info["largest_batch"] == max(recording.sizes) > 1
    assert info["mean_batch_size"] > 1 and info["open_streams"] == 0
    assert recording.threads == {batcher._thread.ident}, "the wrapped model is only called by the worker"


def test_a_failing_chunk_fails_only_its_caller_and_the_worker_goes_on() -> None:
    width = 64
    plain = _model(width)
    recording = RecordingModel(plain)
    batcher = BatchingModel(recording, max_wait_s=5.0)
    requests = _requests(np.random.default_rng(8), width, [16, 7, 16])
    try:
        recording.poison_length = 7  # the second stream's chunk breaks the backend
        detaches = [batcher.attach_stream() for _ in requests]  # three open streams: one batch of three
        results = _in_threads(3, lambda i: batcher.run_chunk(*requests[i]))
        assert recording.sizes == [3] and recording.singles == 3  # the batch failed, then one by one
        assert isinstance(results[1], InferenceError) and "length 7" in str(results[1])
        for i in (0, 2):  # the others got their own results, as if nothing had happened
            assert isinstance(results[i], tuple), results[i]
            _assert_same(results[i], plain.run_chunk(*requests[i]))
        # A failure of the whole backend reaches every caller of that batch; the worker survives it.
        recording.poison_length, recording.broken = None, RuntimeError("backend fell over")
        results = _in_threads(3, lambda i: batcher.run_chunk(*requests[i]))
        assert all(isinstance(r, RuntimeError) and "fell over" in str(r) for r in results), results
        recording.broken = None
        results = _in_threads(3, lambda i: batcher.run_chunk(*requests[i]))
        for request, result in zip(requests, results, strict=True):
            assert isinstance(result, tuple), result
            _assert_same(result, plain.run_chunk(*request))
        for detach in detaches:
            detach()
        # One caller's malformed chunk fails that caller only, in its own thread, before any batching.
        with pytest.raises(ValueError, match="static chunk"):
            batcher.run_chunk(np.zeros((8, 19, 26), np.float32), 8, LstmState.zeros(width))
        assert batcher.running
    finally:
        batcher.close()


def test_a_lone_stream_does_not_wait_for_company() -> None:
    """With one open stream the worker runs each chunk at once: with an hour's max_wait this would hang."""
    width = 64
    plain = _model(width)
    batcher = BatchingModel(plain, max_wait_s=3600.0)
    windows = np.random.default_rng(9).normal(0, 3, (50, 19, 26)).astype(np.float32)
    detach = batcher.attach_stream()
    try:
        result = _in_threads(1, lambda i: _stream(batcher, windows, width))[0]
    finally:
        detach()
        batcher.close()
    assert isinstance(result, tuple), result
    _assert_same(result, _stream(plain, windows, width))
    assert batcher.batches == 4 and batcher.largest_batch == 1


class SlowModel(RecordingModel):
    """A model whose batches take at least `delay` seconds, like a wide model's."""

    def __init__(self, model: NumpyAcousticModel, delay: float) -> None:
        super().__init__(model)
        self.delay = delay

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        time.sleep(self.delay)
        return super().run_chunks(requests)


def test_the_wait_for_company_grows_with_the_batches_run_time() -> None:
    """A quarter of the recent batches' run time (at most 50 ms), never less than max_wait_s; 0 stays 0."""
    width = 64
    fast = BatchingModel(_model(width), max_wait_s=0.002)
    slow = BatchingModel(SlowModel(_model(width), delay=0.08), max_wait_s=0.002)
    slower = BatchingModel(SlowModel(_model(width), delay=0.4), max_wait_s=0.002)
    never = BatchingModel(SlowModel(_model(width), delay=0.08), max_wait_s=0.0)
    windows = np.random.default_rng(3).normal(0, 3, (16, 19, 26)).astype(np.float32)
    try:
        assert slow.wait_s() == fast.wait_s() == 0.002  # nothing has run yet
        for batcher in (slow, slower, never):
            state = LstmState.zeros(width)
            for _ in range(10):  # a lone caller: each chunk runs at once, alone
                _, state = batcher.run_chunk(windows, STATIC_STEPS, state)
        # The moving average starts at 0 and weighs each run 1/4: after 10 runs it holds >= 94 % of the delay.
        assert 0.25 * 0.08 * 0.94 <= slow.wait_s() <= 0.05
        assert slower.wait_s() == 0.05  # capped
        assert never.wait_s() == 0.0  # DS_STREAM_BATCH_WAIT_MS=0 turns waiting off altogether
    finally:
        for batcher in (fast, slow, slower, never):
            batcher.close()


def test_close_stops_the_worker_and_later_chunks_run_unbatched() -> None:
    width = 64
    plain = _model(width)
    batcher = BatchingModel(plain, max_batch=4)
    request = _requests(np.random.default_rng(10), width, [16])[0]
    _assert_same(batcher.run_chunk(*request), plain.run_chunk(*request))
    assert batcher.running
    batcher.close()
    assert not batcher.running and not batcher._thread.is_alive()
    batcher.close()  # idempotent
    _assert_same(batcher.run_chunk(*request), plain.run_chunk(*request))
    # run_window passes straight through; describe() reports the settings and counters
    windows = request[0]
    _assert_same(batcher.run_window(windows, request[2]), plain.run_window(windows, request[2]))
    info = batcher.describe()
    assert info["backend"] == "numpy"
    assert info["stream_batching"] == {
        "max_batch": 4,
        "max_wait_ms": 2.0,
        "batches": 2,
        "chunks": 2,
        "mean_batch_size": 1.0,
        "largest_batch": 1,
        "open_streams": 0,
    }
    with pytest.raises(ValueError):
        BatchingModel(plain, max_batch=0)


def test_max_batch_caps_a_batch() -> None:
    width = 64
    plain = _model(width)
    recording = RecordingModel(plain)
    batcher = BatchingModel(recording, max_batch=3, max_wait_s=5.0)
    requests = _requests(np.random.default_rng(11), width, [16] * 7)
    try:
        results = batcher.run_chunks(requests)  # queued at once
    finally:
        batcher.close()
    assert recording.sizes == [3, 3, 1]
    for request, result in zip(requests, results, strict=True):
        _assert_same(result, plain.run_chunk(*request))


# ------------------------------------------------------------------------------------- StreamSession and Engine


def _default_model_or_skip():
    from app.speech import model_dir as md

    if not (DEFAULT_MODEL / "manifest.json").exists():
        pytest.skip("models/default is not built (make default-model)")
    return md.load_model_directory(DEFAULT_MODEL)


def test_sessions_attach_and_detach() -> None:
    from app.speech.decoding.greedy import GreedyStream
    from app.speech.session import StreamSession
    from app.speech.utterances import UtteranceDecoder

    class Decoder:  # a DecoderStream
        def __init__(self) -> None:
            self._stream = GreedyStream()

        def feed(self, probs: np.ndarray) -> None:
            self._stream.feed(probs)

        def partial(self):
            return self._stream.partial()

        def finish(self):
            return self._stream.result().transcript

    batcher = BatchingModel(_model(64))
    try:
        finished, closed, dropped = (
            StreamSession(batcher, UtteranceDecoder(Decoder, None))  # type: ignore[arg-type]  # enough of one
            for _ in range(3)
        )
        assert batcher.open_streams == 3
        finished.feed(np.zeros(8000, np.float32))
        finished.finish()
        assert batcher.open_streams == 2
        closed.close()
        closed.close()
        assert batcher.open_streams == 1
        del dropped  # a client gone without eof
        gc.collect()
        assert batcher.open_streams == 0
    finally:
        batcher.close()


def test_concurrent_sessions_transcribe_as_sequential_ones(tmp_path: Path) -> None:
    """models/default with its scorer: several sessions streaming at once through the batcher give the same
    final transcripts as the same sessions one after another without it."""
    from app.settings import Settings
    from app.speech.audio import decode_audio
    from app.speech.decoding import build_decoder
    from app.speech.engine import Engine
    from app.speech.runtime import load_acoustic_model
    from tests.support.audio import speak

    model_dir = _default_model_or_skip()
    model = load_acoustic_model(model_dir, "numpy")
    decoder = build_decoder(model_dir, Settings(model_dir=DEFAULT_MODEL, decoder="beam"))
    sentences = [
        ("turn on the kitchen lights", "en-us"),
        ("switch off the bedroom fan", "en"),
        ("play some music in the living room", "en-gb"),
        ("what is the weather tomorrow", "en-us"),
    ]
    samples = [
        decode_audio(speak(text, tmp_path / f"{i}.wav", voice).read_bytes())[0]
        for i, (text, voice) in enumerate(sentences)
    ]
    sequential = Engine(model_dir, model, decoder)
    batcher = BatchingModel(model, max_wait_s=0.05)
    concurrent = Engine(model_dir, model, decoder, stream_model=batcher)

    def run(sessions, i: int):
        session = sessions[i]
        for start in range(0, len(samples[i]), 3200):  # 0.2 s pieces, as a live client sends them
            session.feed(samples[i][start : start + 3200])
        return session.finish()

    try:
        sessions = [concurrent.open_stream() for _ in samples]  # all open: batches wait for one another
        together = _in_threads(len(samples), lambda i: run(sessions, i))
    finally:
        concurrent.close()
    alone = [run({i: sequential.open_stream()}, i) for i in range(len(samples))]
    assert batcher.largest_batch > 1 and batcher.batches < batcher.chunks
    for got, expected in zip(together, alone, strict=True):
        assert not isinstance(got, BaseException), got
        assert got.text == expected.text and got.text
        assert [(w.word, w.start, w.end) for w in got.words] == [
            (w.word, w.start, w.end) for w in expected.words
        ]
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-4)
    assert together[0].text == "turn on the kitchen lights"


def test_engine_load_wraps_the_stream_model_only() -> None:
    from app.settings import Settings
    from app.speech.engine import Engine

    _default_model_or_skip()
    engine = Engine.load(Settings(model_dir=DEFAULT_MODEL, backend="numpy", decoder="greedy"))
    try:
        assert isinstance(engine.stream_model, BatchingModel) and engine.stream_model.model is engine.model
        assert isinstance(engine.model, NumpyAcousticModel)
        assert engine.stream_model.max_wait_s == pytest.approx(0.002)
        session = engine.open_stream()
        assert engine.stream_model.open_streams == 1
        session.feed(np.zeros(16000, np.float32))
        session.finish()
        runtime = engine.info()["runtime"]
        assert isinstance(runtime, dict) and runtime["backend"] == "numpy"
        assert runtime["stream_batching"]["chunks"] >= 1  # type: ignore[index]
    finally:
        engine.close()
    assert not engine.stream_model.running
    engine.close()  # idempotent
    off = Engine.load(
        Settings(model_dir=DEFAULT_MODEL, backend="numpy", decoder="greedy", stream_batching=False)
    )
    assert off.stream_model is off.model
    off.close()


def test_only_backends_that_batch_get_the_batcher() -> None:
    """Core ML's run_chunks is the one-by-one default (batched_chunks False): not wrapped. The batching
    settings' defaults: on, 2 ms."""
    from app.settings import Settings
    from app.speech.engine import stream_model_for
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel

    assert CoreMLAcousticModel.batched_chunks is False and NumpyAcousticModel.batched_chunks is True
    unbatched = RecordingModel(_model(64))
    unbatched.batched_chunks = False
    assert stream_model_for(unbatched, Settings()) is unbatched
    numpy_model = _model(64)
    wrapped = stream_model_for(numpy_model, Settings())
    try:
        assert isinstance(wrapped, BatchingModel) and wrapped.model is numpy_model
        assert wrapped.max_wait_s == pytest.approx(0.002) and wrapped.max_batch == 64
    finally:
        assert isinstance(wrapped, BatchingModel)
        wrapped.close()
    assert stream_model_for(numpy_model, Settings(stream_batching=False)) is numpy_model
    slow = stream_model_for(numpy_model, Settings(stream_batch_wait_ms=10.0))
    assert isinstance(slow, BatchingModel) and slow.max_wait_s == pytest.approx(0.01)
    slow.close()
