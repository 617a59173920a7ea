"""Core ML backend (macOS): the converter's two `.mlpackage`s, compiled once into a cache, run through coremltools.

The adapter only feeds the packages what the graph's placeholders take (names, float32/int32, shapes) and hands
the LSTM state back. Everything else (streaming, state ownership, decoding) is shared with the NumPy backend.

The packages run MIL's core `lstm` op (GPU / Neural Engine) because they are converted from a graph without a
length mask: every step they are given is valid and the state they return is the last step's. So a stream's
tail chunk (fewer than 16 valid windows) must not be zero-padded into the static package (the padding steps
would run through the LSTM and move the state); it runs through the dynamic package at its exact length,
which is what upstream's graph computes for the padded chunk with `input_lengths` = the tail's length.
Packages converted before that change still declare `input_lengths` (and mask with it); they are fed it, so
both kinds of model directory work.

Batched streams: a static package converted with a batch dimension (`scripts/convert.py --stream-batch
1,2,4,8,16`; enumerated batch sizes, macOS 15) takes several streams' full chunks as the rows of one prediction:
`run_chunks` stacks them (windows (B,16,19,26), states (B,n_cell)), zero rows padding the batch up to the next
enumerated size and more chunks than the largest size split into several predictions (planned like a file's
windows: full batches of the largest size, then one padded up); `batched_chunks` is then True, so the stream
batcher (app/speech/runtime/batching.py) gathers concurrent streams' chunks into those calls, as for NumPy. Rows
never mix (the network is per row), so each row's result is its `run_chunk` result and the zero rows' are
dropped. Tails (< 16 windows, once per stream) still go one by one through the dynamic package.

Four facts about Core ML under Python (coremltools 9.0) shape the rest:
- Inputs outlive `predict()`. coremltools wraps each input numpy array in an MLMultiArray without copying and
  keeps a reference to the array inside it; Core ML's MLE5 engine leaves its input ports bound after the call
  and unbinds them about a second later on its own queue (`MLE5ExecutionStream.resetQueue`), dropping that
  reference without the GIL (coremltools PRs #2827 and #2829, open; SIGSEGV with 9.0 on macOS 26 once the
  process goes idle: a warm-up followed by a quiet service). Each prediction therefore gets private copies that
  no other code touches, and `InputHold` keeps them for `HOLD_SECONDS`, so Core ML's late release is never the
  last one and ours happens later, on a Python thread with the GIL. The copies also keep a caller's reused
  buffer (StreamSession's batch) from being rewritten while Core ML still has its pointer bound.
- `predict()` holds the GIL for the whole prediction (the binding releases it nowhere): while one runs, every
  other stream and the event loop wait. Whole files therefore go through in windows of `window_steps`
  (DS_COREML_WINDOW_STEPS), short next to a stream's 320 ms chunk period; `scripts/check_mac.py` measures the stall.
- `MLModel(path)` compiles the package into a fresh temporary `.mlmodelc` at every load, so Core ML's device
  specialisation (seconds) is redone at every start, and a crash leaks the copy into $TMPDIR. `CompiledModelCache`
  compiles each package once, keyed by its sha256 (from the manifest) and the OS version, and the adapter loads
  the compiled model (`CompiledMLModel`) from that stable path.
- A package Core ML cannot load (a newer specification than the OS supports, a compile error) only gives a
  warning until its first prediction fails. `load` checks the specification version, runs one tiny prediction
  per package and raises `CoreMLLoadFailed` with one line instead.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.speech.model_dir import DYNAMIC_PACKAGE, STATIC_PACKAGE, ModelDirectory
from app.speech.runtime.base import STATIC_STEPS, AcousticModel, InferenceError, LstmState
from app.speech.runtime.coreml_packages import (  # the errors are this adapter's API too
    CoreMLLoadFailed,
    CoreMLUnavailable,
    _compute_plan_entry,
    _load_package,
    _one_line,
)
from app.speech.runtime.coreml_runtime import (
    INPUT_NODE,
    CompiledModelCache,
    CoreMLRuntime,
    CoreMLTools,
    PackageInfo,
    default_cache_dir,
)
from app.speech.runtime.windows import plan_pieces, run_in_pieces

__all__ = ["COMPUTE_UNITS", "WINDOW_STEPS", "CoreMLAcousticModel", "CoreMLLoadFailed", "CoreMLUnavailable"]

log = logging.getLogger(__name__)

COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE")
# Whole-file window: 200 steps = 4 s of audio per predict. Each predict holds the GIL; at DeepSpeech's width 2048
# a step reads the 34 MB float16 recurrent kernel, so 1000 steps would stall every stream for several hundred
# milliseconds (an estimate; check_mac.py measures it), while 200 keep the per-call overhead small.
WINDOW_STEPS = 200
# Core ML lets go of bound inputs about 1 s after a prediction (PR #2827's trace); several times that is safe.
HOLD_SECONDS = 5.0


def coreml_available() -> str | None:
    """None when Core ML prediction works here, else the reason it does not."""
    if sys.platform != "darwin":
        return f"Core ML runs only on macOS (this is {sys.platform})"
    try:
        import coremltools  # noqa: F401
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError as exc:
        return f"coremltools with its native library is not installed ({exc}); pip install '.[coreml]'"
    return None


class InputHold:
    """Keeps the arrays of every feed given to Core ML referenced for `seconds` after its prediction.

    Entries are only ever appended and, once expired, dropped by a later `keep` on the calling thread (with the
    GIL); in between nothing touches their arrays (not even to measure them: `nbytes` is counted before the
    prediction), so Core ML's release from its queue only decrements a count that stays above zero. Memory:
    the inputs fed in the last `seconds`, plus those fed before an idle spell until the next prediction."""

    def __init__(self, seconds: float = HOLD_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._held: deque[tuple[float, dict[str, np.ndarray], int]] = deque()
        self._lock = threading.Lock()

    def keep(self, feed: dict[str, np.ndarray], nbytes: int) -> None:
        now = self._clock()
        expired = []
        with self._lock:
            self._held.append((now + self.seconds, feed, nbytes))
            while self._held and self._held[0][0] <= now:
                expired.append(self._held.popleft())
        expired.clear()  # their arrays are freed here, with the GIL held, Core ML long done with them

    def held_bytes(self) -> int:
        with self._lock:
            return sum(nbytes for _, _, nbytes in self._held)


# One per process, not per model: a model dropped right after a prediction (a failed load, a benchmark's reload)
# must not take the arrays Core ML still holds with it.
INPUT_HOLD = InputHold()


def _load_mlmodel(path: Path, compute_units: str) -> Any:
    """An uncached load (compiles to a temporary .mlmodelc); `CoreMLAcousticModel.load` uses the cache instead."""
    import coremltools as ct

    return ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])


def _declares_input(model: Any, name: str) -> bool:
    """Whether a loaded model declares an input (coremltools refuses a feed with undeclared names)."""
    description = getattr(model, "input_description", None)
    return description is not None and name in description


def _check_units(compute_units: str) -> None:
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f"compute units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}")


def _private(array: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous float32 copy that only the feed (and then the hold) references."""
    return np.array(array, dtype=np.float32, order="C", copy=True)


def whole_file_window(requested: int, max_steps: int, info: PackageInfo) -> int:
    """The whole-file window: `requested` steps at most, within the package's bound, and one of its enumerated
    time lengths when it has them (the largest that fits, else the smallest)."""
    bound = min(max_steps, info.max_length or max_steps)
    window = max(1, min(requested, bound))
    usable = [n for n in info.time_lengths if n <= bound]
    if usable:
        fitting = [n for n in usable if n <= window]
        window = max(fitting) if fitting else min(usable)
    return window


class CoreMLAcousticModel(AcousticModel):
    backend = "coreml"

    def __init__(
        self,
        static_package: Path,
        dynamic_package: Path,
        n_cell_dim: int,
        n_classes: int,
        max_steps: int,
        compute_units: str = "ALL",
        load: Callable[[Path, str], Any] = _load_mlmodel,
        hold: InputHold | None = None,
        time_lengths: Sequence[int] = (),
        batch_sizes: Sequence[int] = (),
    ) -> None:
        _check_units(compute_units)
        self.compute_units = compute_units
        self.n_cell_dim = n_cell_dim
        self.n_classes = n_classes
        self.max_steps = max_steps
        # The dynamic package's time lengths up to the window (enumerated: what it accepts; a range: every one).
        self._lengths = tuple(n for n in time_lengths if n <= max_steps) or tuple(range(1, max_steps + 1))
        # The static package's batch sizes (enumerated: one row per stream's chunk); batch 1 only without them.
        self.chunk_batch_sizes = tuple(sorted({int(n) for n in batch_sizes if n >= 1})) or (1,)
        self.batched_chunks = self.chunk_batch_sizes[-1] > 1  # the class says False: batch 1 loops
        self._hold = INPUT_HOLD if hold is None else hold
        self._static = load(static_package, compute_units)
        self._dynamic = load(dynamic_package, compute_units)
        # Packages converted before the core-lstm change declare (and need) input_lengths; current ones do not.
        self._static_lengths = _declares_input(self._static, "input_lengths")
        self._dynamic_lengths = _declares_input(self._dynamic, "input_lengths")
        # Set by `load`: how each package was compiled, and where Core ML places its ops (for /info).
        self.compiled: dict[str, str] = {}
        self.compute_plan: dict[str, dict[str, object]] = {}

    @classmethod
    def load(
        cls,
        model: ModelDirectory,
        compute_units: str = "ALL",
        cache_dir: Path | None = None,
        window_steps: int = WINDOW_STEPS,
        runtime: CoreMLRuntime | None = None,
        hold: InputHold | None = None,
    ) -> CoreMLAcousticModel:
        """Compile (once: cached by sha256) and load a model directory's packages, and prove that they predict.

        Raises CoreMLLoadFailed (one line) for a package this Mac cannot compile, load or run."""
        _check_units(compute_units)
        runtime = CoreMLTools() if runtime is None else runtime
        cache = CompiledModelCache(cache_dir or default_cache_dir(), runtime)
        packages = {
            name: _load_package(runtime, cache, model, name, compute_units)
            for name in (STATIC_PACKAGE, DYNAMIC_PACKAGE)
        }
        dynamic = _with_manifest_lengths(packages[DYNAMIC_PACKAGE].info, model)
        adapter = cls(
            model.static_package,
            model.dynamic_package,
            model.manifest.n_cell_dim,
            model.manifest.n_classes,
            whole_file_window(window_steps, model.manifest.dynamic_max_steps, dynamic),
            compute_units,
            load=lambda path, _units: packages[path.name],
            hold=hold,
            time_lengths=dynamic.time_lengths,
            batch_sizes=packages[STATIC_PACKAGE].info.batch_sizes,
        )
        adapter._prove_predictions(min(dynamic.time_lengths, default=1))
        for name, package in packages.items():
            stem = name.removesuffix(".mlpackage")
            adapter.compiled[stem] = "cached" if package.cached else "compiled"
            adapter.compute_plan[stem] = _compute_plan_entry(runtime, package.compiled, compute_units)
        return adapter

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {**super().describe(), "compute_units": self.compute_units}
        if self.compiled:
            described["compiled"] = self.compiled
        if self.compute_plan:
            described["compute_plan"] = self.compute_plan
        if self.batched_chunks:
            described["stream_batch_sizes"] = list(self.chunk_batch_sizes)
        return described

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        _check_chunk(windows, length)
        if length == 0:
            return np.zeros((0, self.n_classes), np.float32), state
        if length < STATIC_STEPS:
            # The static package has no length mask (every step is valid, state after step 16), so the tail
            # runs unpadded through the dynamic package: the state after step `length`, as upstream computes.
            return self._predict(self._dynamic, self._dynamic_lengths, windows[:length], state)
        return self._predict_rows([(windows, state)], self.chunk_batch_sizes[0])[0]

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        """Full chunks as the rows of as few static predictions as the batch sizes allow (the module
        docstring); empty chunks and tails as `run_chunk` runs them. Each result is the chunk's `run_chunk`
        result. Every chunk is checked before anything runs."""
        for windows, length, _ in requests:
            _check_chunk(windows, length)
        results: list[tuple[np.ndarray, LstmState] | None] = [None] * len(requests)
        full = [i for i, (_, length, _) in enumerate(requests) if length == STATIC_STEPS]
        for i, (windows, length, state) in enumerate(requests):
            if length < STATIC_STEPS:
                results[i] = self.run_chunk(windows, length, state)
        # Batch sizes cut the rows as enumerated lengths cut a file's windows: full batches of the largest
        # size, then the rest in one prediction padded up to the next size (batch 1 only: one row each).
        for piece in plan_pieces(len(full), self.chunk_batch_sizes):
            rows = full[piece.start : piece.stop]
            outputs = self._predict_rows([(requests[i][0], requests[i][2]) for i in rows], piece.length)
            for i, output in zip(rows, outputs, strict=True):
                results[i] = output
        done = [result for result in results if result is not None]
        assert len(done) == len(requests)  # every request is a tail, empty, or one of the full rows
        return done

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        """A window whose state goes on: cut exactly into the package's time lengths (no padding)."""
        probs, new_state = run_in_pieces(
            self._predict_dynamic, self._checked(windows), state, self._lengths, keep_state=True
        )
        assert new_state is not None  # exact pieces always end with a state
        return probs, new_state

    def run_last_window(self, windows: np.ndarray, state: LstmState) -> np.ndarray:
        """A file's last window: one prediction, zero-padded up to the next enumerated length (the state after
        it, moved on by the padding, is discarded)."""
        return run_in_pieces(self._predict_dynamic, self._checked(windows), state, self._lengths)[0]

    def _checked(self, windows: np.ndarray) -> np.ndarray:
        if not 1 <= windows.shape[0] <= self.max_steps:
            raise ValueError(f"the dynamic model takes 1..{self.max_steps} windows, got {windows.shape[0]}")
        return windows

    def _predict_dynamic(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._predict(self._dynamic, self._dynamic_lengths, windows, state)

    def _predict(
        self, model: Any, takes_lengths: bool, windows: np.ndarray, state: LstmState
    ) -> tuple[np.ndarray, LstmState]:
        """One dynamic-package prediction over windows that are all valid."""
        length = windows.shape[0]
        feed = {
            INPUT_NODE: _private(windows[None]),
            "previous_state_c": _private(state.c),
            "previous_state_h": _private(state.h),
        }
        if takes_lengths:
            feed["input_lengths"] = np.array([length], np.int32)
        out = self._run(model, feed)
        probs = np.asarray(out["logits"], np.float32).reshape(-1, self.n_classes)[:length]
        new_state = LstmState(
            np.asarray(out["new_state_c"], np.float32).reshape(1, self.n_cell_dim),
            np.asarray(out["new_state_h"], np.float32).reshape(1, self.n_cell_dim),
        )
        return probs, new_state

    def _predict_rows(
        self, chunks: Sequence[tuple[np.ndarray, LstmState]], size: int
    ) -> list[tuple[np.ndarray, LstmState]]:
        """One static-package prediction of full chunks (windows (16, 19, 26), state) as rows 0..n-1 of a batch
        of `size` (an enumerated batch size; zero rows after them): each row's probabilities and state."""
        n, cells = len(chunks), self.n_cell_dim
        if not 0 < n <= size:
            raise ValueError(f"{n} chunks do not fit a batch of {size}")
        # Fresh arrays that only the feed (then the hold) references, as _private makes them.
        windows = np.zeros((size, STATIC_STEPS, *chunks[0][0].shape[1:]), np.float32)
        state_c = np.zeros((size, cells), np.float32)
        state_h = np.zeros((size, cells), np.float32)
        for row, (chunk, state) in enumerate(chunks):
            windows[row] = chunk
            state_c[row] = state.c.reshape(cells)
            state_h[row] = state.h.reshape(cells)
        feed = {INPUT_NODE: windows, "previous_state_c": state_c, "previous_state_h": state_h}
        if self._static_lengths:  # a package converted before the core-lstm change (batch 1)
            feed["input_lengths"] = np.full(size, STATIC_STEPS, np.int32)
        out = self._run(self._static, feed)
        # logits are time-major: (16, batch, classes); the states (batch, n_cell).
        probs = np.asarray(out["logits"], np.float32).reshape(STATIC_STEPS, size, self.n_classes)
        new_c = np.asarray(out["new_state_c"], np.float32).reshape(size, cells)
        new_h = np.asarray(out["new_state_h"], np.float32).reshape(size, cells)
        return [
            (
                np.ascontiguousarray(probs[:, row]),
                LstmState(new_c[row : row + 1].copy(), new_h[row : row + 1].copy()),
            )
            for row in range(n)
        ]

    def _run(self, model: Any, feed: dict[str, np.ndarray]) -> Mapping[str, Any]:
        """One prediction; the feed's arrays are held past it (the module docstring: Core ML lets go late)."""
        nbytes = sum(array.nbytes for array in feed.values())
        try:
            return model.predict(feed)
        except Exception as exc:  # Core ML raises plain RuntimeErrors with its own messages
            raise InferenceError(f"Core ML prediction failed: {exc}") from exc
        finally:
            self._hold.keep(feed, nbytes)  # also after a failure: Core ML may have bound the inputs anyway

    def _prove_predictions(self, dynamic_length: int) -> None:
        """One tiny prediction per package: a package Core ML loaded but cannot run fails here, at startup."""
        zeros = LstmState.zeros(self.n_cell_dim)
        trials: list[tuple[str, int, Callable[[], tuple[np.ndarray, LstmState]]]] = [
            (
                STATIC_PACKAGE,
                STATIC_STEPS,
                lambda: self.run_chunk(_silence(STATIC_STEPS), STATIC_STEPS, zeros),
            ),
            (DYNAMIC_PACKAGE, dynamic_length, lambda: self.run_window(_silence(dynamic_length), zeros)),
        ]
        if self.batched_chunks:  # the largest batch too: each enumerated shape is its own specialisation
            largest = self.chunk_batch_sizes[-1]
            chunks = [(_silence(STATIC_STEPS), zeros)] * largest
            trials.append(
                (
                    f"{STATIC_PACKAGE} (batch {largest})",
                    STATIC_STEPS,
                    lambda: self._predict_rows(chunks, largest)[-1],
                )
            )
        for name, length, trial in trials:
            try:
                probs, state = trial()
                _check_outputs(probs, state, (length, self.n_classes), (1, self.n_cell_dim))
            except (InferenceError, ValueError, KeyError) as exc:
                raise CoreMLLoadFailed(
                    f"{name} loaded but its first prediction failed ({_one_line(exc)}); "
                    "re-convert it with scripts/convert.py or use DS_BACKEND=numpy"
                ) from exc


def _with_manifest_lengths(info: PackageInfo, model: ModelDirectory) -> PackageInfo:
    """The package's enumerated time lengths, else the manifest's `dynamic_lengths` (read defensively: older
    manifests have none, and the specification is what Core ML enforces)."""
    listed = getattr(model.manifest, "dynamic_lengths", None) or ()
    if info.time_lengths or not all(isinstance(n, int) and n > 0 for n in listed):
        return info
    return replace(info, time_lengths=tuple(sorted(set(listed))))


def _check_chunk(windows: np.ndarray, length: int) -> None:
    if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
        raise ValueError(
            f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
        )


def _silence(steps: int) -> np.ndarray:
    return np.zeros((steps, 19, 26), np.float32)


def _check_outputs(
    probs: np.ndarray, state: LstmState, probs_shape: tuple[int, int], state_shape: tuple[int, int]
) -> None:
    if probs.shape != probs_shape:
        raise ValueError(f"logits of shape {probs.shape}, expected {probs_shape}")
    if state.c.shape != state_shape or state.h.shape != state_shape:
        raise ValueError(f"states of shape {state.c.shape}, {state.h.shape}, expected {state_shape}")
    if not (np.isfinite(probs).all() and np.isfinite(state.c).all() and np.isfinite(state.h).all()):
        raise ValueError("outputs that are not finite")
