"""Core ML backend (macOS): the converter's two `.mlpackage`s through coremltools' `MLModel`.

A thin adapter: it only feeds the packages what the graph's placeholders take (names, float32/int32, shapes) and
hands the LSTM state back. Everything else (streaming, state ownership, decoding) is shared with the NumPy backend.

The packages run MIL's core `lstm` op (GPU / Neural Engine) because they are converted from a graph without a
length mask: every step they are given is valid and the state they return is the last step's. So a stream's
tail chunk (fewer than 16 valid windows) must not be zero-padded into the static package (the padding steps
would run through the LSTM and move the state); it runs through the dynamic package at its exact length,
which is what upstream's graph computes for the padded chunk with `input_lengths` = the tail's length.
Packages converted before that change still declare `input_lengths` (and mask with it); they are fed it, so
both kinds of model directory work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.speech.runtime.base import STATIC_STEPS, AcousticModel, InferenceError, LstmState

COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE")


class CoreMLUnavailable(RuntimeError):
    """Core ML cannot run here (not macOS, or coremltools without its native prediction library)."""


def coreml_available() -> str | None:
    """None when Core ML prediction works here, else the reason it does not."""
    import sys

    if sys.platform != "darwin":
        return f"Core ML runs only on macOS (this is {sys.platform})"
    try:
        import coremltools  # noqa: F401
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError as exc:
        return f"coremltools with its native library is not installed ({exc}); pip install '.[coreml]'"
    return None


def _load_mlmodel(path: Path, compute_units: str) -> Any:
    import coremltools as ct

    return ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])


def _declares_input(model: Any, name: str) -> bool:
    """Whether a loaded model declares an input (coremltools refuses a feed with undeclared names)."""
    description = getattr(model, "input_description", None)
    return description is not None and name in description


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
    ) -> None:
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(
                f"compute units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}"
            )
        self.compute_units = compute_units
        self.n_cell_dim = n_cell_dim
        self.n_classes = n_classes
        self.max_steps = max_steps
        self._static = load(static_package, compute_units)
        self._dynamic = load(dynamic_package, compute_units)
        # Packages converted before the core-lstm change declare (and need) input_lengths; current ones do not.
        self._static_lengths = _declares_input(self._static, "input_lengths")
        self._dynamic_lengths = _declares_input(self._dynamic, "input_lengths")

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "compute_units": self.compute_units}

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
            raise ValueError(
                f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
            )
        if length == 0:
            return np.zeros((0, self.n_classes), np.float32), state
        if length < STATIC_STEPS:
            # The static package has no length mask (every step is valid, state after step 16), so the tail
            # runs unpadded through the dynamic package: the state after step `length`, as upstream computes.
            return self._predict(self._dynamic, self._dynamic_lengths, windows[:length], state)
        return self._predict(self._static, self._static_lengths, windows, state)

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        if not 1 <= windows.shape[0] <= self.max_steps:
            raise ValueError(f"the dynamic model takes 1..{self.max_steps} windows, got {windows.shape[0]}")
        return self._predict(self._dynamic, self._dynamic_lengths, windows, state)

    def _predict(
        self, model: Any, takes_lengths: bool, windows: np.ndarray, state: LstmState
    ) -> tuple[np.ndarray, LstmState]:
        """One prediction over windows that are all valid (the static package gets exactly 16)."""
        length = windows.shape[0]
        feed = {
            "input_node": np.ascontiguousarray(windows[None], np.float32),
            "previous_state_c": np.ascontiguousarray(state.c, np.float32),
            "previous_state_h": np.ascontiguousarray(state.h, np.float32),
        }
        if takes_lengths:
            feed["input_lengths"] = np.array([length], np.int32)
        try:
            out = model.predict(feed)
        except Exception as exc:  # Core ML raises plain RuntimeErrors with its own messages
            raise InferenceError(f"Core ML prediction failed: {exc}") from exc
        probs = np.asarray(out["logits"], np.float32).reshape(-1, self.n_classes)[:length]
        new_state = LstmState(
            np.asarray(out["new_state_c"], np.float32).reshape(1, self.n_cell_dim),
            np.asarray(out["new_state_h"], np.float32).reshape(1, self.n_cell_dim),
        )
        return probs, new_state
