"""Acoustic-model runtimes behind one interface; `load_acoustic_model` picks the backend."""

from __future__ import annotations

import logging
from pathlib import Path

from app.speech.model_dir import ModelDirectory
from app.speech.runtime.base import STATIC_STEPS, AcousticModel, InferenceError, LstmState, pad_chunk
from app.speech.runtime.batching import BatchingModel
from app.speech.runtime.coreml_backend import (
    COMPUTE_UNITS,
    WINDOW_STEPS,
    CoreMLAcousticModel,
    CoreMLLoadFailed,
    CoreMLUnavailable,
    coreml_available,
)
from app.speech.runtime.numpy_backend import NumpyAcousticModel

__all__ = [
    "COMPUTE_UNITS",
    "STATIC_STEPS",
    "AcousticModel",
    "BatchingModel",
    "CoreMLLoadFailed",
    "CoreMLUnavailable",
    "InferenceError",
    "LstmState",
    "load_acoustic_model",
    "pad_chunk",
]

BACKENDS = ("auto", "numpy", "coreml")
log = logging.getLogger(__name__)


def load_acoustic_model(
    model: ModelDirectory,
    backend: str = "auto",
    compute_units: str = "ALL",
    numpy_threads: int = 1,
    *,
    coreml_cache_dir: Path | None = None,
    coreml_window_steps: int = WINDOW_STEPS,
) -> AcousticModel:
    """Load the model directory with the requested backend; `auto` is Core ML on macOS, else NumPy.

    `numpy_threads`: cores a NumPy forward pass may spread over while it runs alone (app/speech/runtime/cores.py).
    `coreml_cache_dir`: where compiled packages are kept (default: ~/Library/Caches/deepspeech-coreml);
    `coreml_window_steps`: the whole-file window of one Core ML prediction (app/speech/runtime/coreml_backend.py).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    manifest = model.manifest
    if backend in ("auto", "coreml"):
        coreml = _load_coreml(model, backend, compute_units, coreml_cache_dir, coreml_window_steps)
        if coreml is not None:
            return coreml
    return NumpyAcousticModel.from_file(model.weights_path, manifest.dynamic_max_steps, numpy_threads)


def _load_coreml(
    model: ModelDirectory, backend: str, compute_units: str, cache_dir: Path | None, window_steps: int
) -> AcousticModel | None:
    """The Core ML model, or None where `auto` falls back to NumPy; `coreml` raises CoreMLUnavailable instead."""
    reason = coreml_available()
    if reason is None:
        try:
            return CoreMLAcousticModel.load(model, compute_units, cache_dir, window_steps)
        except CoreMLLoadFailed as exc:
            if backend == "coreml":
                raise
            # A Mac that cannot run these packages still serves, on the CPU; say so where operators look.
            log.warning("!!! Core ML cannot run this model, falling back to the NumPy backend (CPU only): %s", exc)
            return None
    if backend == "coreml":
        raise CoreMLUnavailable(f"backend 'coreml' was requested but {reason}; use DS_BACKEND=numpy")
    log.info("using the NumPy backend: %s", reason)
    return None
