"""One NumPy forward pass spread over several cores (app/speech/runtime/cores.py, the sharded numpy_backend): the same
probabilities and state as one thread, to float32 rounding (a different column split may take another BLAS
kernel: OPENBLAS_CORETYPE Haswell and Zen differ in the last bits, Sandybridge does not); the pool is only lent to
a pass that runs alone; a failing share fails its caller and leaves the pool usable."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from app.settings import Settings
from app.speech.runtime import LstmState, pad_chunk
from app.speech.runtime.cores import CORES, CorePool, Cores, default_threads
from app.speech.runtime.numpy_backend import PARALLEL_MIN_BYTES, NumpyAcousticModel
from dsconvert.weights import random_weights

WIDTH = 512  # the smallest width whose recurrent kernel (512 x 2048 floats = 4 MiB) is split across cores


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_weights(WIDTH, seed=11).arrays


def _inputs(seed: int, steps: int) -> tuple[np.ndarray, LstmState]:
    rng = np.random.default_rng(seed)
    windows = rng.normal(0, 3, (steps, 19, 26)).astype(np.float32)
    state = LstmState(*(rng.normal(0, 0.5, (1, WIDTH)).astype(np.float32) for _ in range(2)))
    return windows, state


def test_width_512_is_the_smallest_split_model(weights: dict[str, np.ndarray]) -> None:
    assert WIDTH * 4 * WIDTH * 4 == PARALLEL_MIN_BYTES
    assert NumpyAcousticModel(weights, 100, threads=2).threads == 2
    # The default model's width: one step costs less than handing a share to a helper.
    narrow = random_weights(256, seed=1).arrays
    assert NumpyAcousticModel(narrow, 100, threads=2).threads == 1
    assert NumpyAcousticModel(narrow, 100, threads=2).describe()["threads"] == 1


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_sharded_window_equals_one_thread(weights: dict[str, np.ndarray], threads: int) -> None:
    windows, state = _inputs(1, 300)
    ref_probs, ref_state = NumpyAcousticModel(weights, 1000).run_window(windows, state)
    probs, new_state = NumpyAcousticModel(weights, 1000, threads=threads).run_window(windows, state)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.c, ref_state.c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state.h, ref_state.h, rtol=1e-5, atol=1e-6)


def test_sharded_batched_chunks_equal_one_thread(weights: dict[str, np.ndarray]) -> None:
    """Streams of different lengths in one batch: 1-3 rows run row by row, more as one product; every shard
    agrees with the unsharded model."""
    requests = []
    for seed, length in enumerate([16, 5, 16, 1, 0, 12, 16, 3]):
        windows, state = _inputs(seed, max(length, 1))
        requests.append((pad_chunk(windows)[0], length, state))
    reference = NumpyAcousticModel(weights, 1000).run_chunks(requests)
    got = NumpyAcousticModel(weights, 1000, threads=2).run_chunks(requests)
    for (probs, state), (ref_probs, ref_state) in zip(got, reference, strict=True):
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.c, ref_state.c, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.h, ref_state.h, rtol=1e-5, atol=1e-6)


def test_concurrent_passes_share_out_the_cores_and_agree(weights: dict[str, np.ndarray]) -> None:
    """Four passes at once: at most one holds the pool at a time, the others run in their own thread (or stop
    using the pool mid-pass when they see company); all give the one-thread answer."""
    model = NumpyAcousticModel(weights, 1000, threads=2)
    reference = NumpyAcousticModel(weights, 1000)
    inputs = [_inputs(seed, 120) for seed in range(4)]
    expected = [reference.run_window(w, s)[0] for w, s in inputs]
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(inputs))

    def run(k: int) -> None:
        start.wait()
        got[k] = model.run_window(*inputs[k])[0]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got) == list(range(len(inputs)))
    for k, probs in got.items():
        np.testing.assert_allclose(probs, expected[k], rtol=1e-5, atol=1e-6)
    assert CORES.in_flight == 0


def test_claim_lends_the_pool_only_to_a_lone_pass() -> None:
    cores = Cores()
    with cores.claim(2) as first:
        assert isinstance(first, CorePool) and first.threads == 2
        assert not cores.crowded()
        with cores.claim(2) as second:
            assert second is None  # another pass is running: this one gets no helpers
            assert cores.crowded()
        assert not cores.crowded()
    with cores.claim(2) as again:
        assert again is first  # one pool per size, reused
    with cores.claim(1) as single:
        assert single is None
    assert cores.in_flight == 0


def test_a_failing_share_fails_the_caller_and_the_pool_lives_on() -> None:
    pool = CorePool(3)
    ran: list[int] = []

    def share(k: int, fail: bool = False) -> Callable[[], None]:
        def task() -> None:
            if fail:
                raise ValueError(f"share {k} failed")
            ran.append(k)

        return task

    with pytest.raises(ValueError, match="share 2 failed"):
        pool.run([share(0), share(1), share(2, fail=True)])
    assert sorted(ran) == [0, 1]  # the others still ran to the end before the error came back
    with pytest.raises(ValueError, match="share 0 failed"):
        pool.run([share(0, fail=True), share(1), share(2)])
    ran.clear()
    pool.run([share(0), share(1), share(2)])
    assert sorted(ran) == [0, 1, 2]
    with pytest.raises(ValueError, match="expected 3 tasks"):
        pool.run([share(0)])
    with pytest.raises(ValueError, match="at least 2"):
        CorePool(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_its_own_helpers(weights: dict[str, np.ndarray]) -> None:
    """The parent's helper threads do not exist in a forked child: it must start its own, not wait forever."""
    model = NumpyAcousticModel(weights, 1000, threads=2)
    windows, state = _inputs(3, 40)
    expected = model.run_window(windows, state)[0]  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if the pass completes with the same answer
        ok = False
        try:
            ok = bool(np.array_equal(model.run_window(windows, state)[0], expected))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's forward pass hung waiting for the parent's helper threads")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_NUMPY_THREADS", raising=False)
    assert Settings(_env_file=None).numpy_threads == default_threads()  # type: ignore[call-arg]
    assert 1 <= default_threads() <= 4
    monkeypatch.setenv("DS_NUMPY_THREADS", "1")
    assert Settings(_env_file=None).numpy_threads == 1  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="threads must be at least 1"):
        NumpyAcousticModel(random_weights(64, seed=1).arrays, 100, threads=0)
