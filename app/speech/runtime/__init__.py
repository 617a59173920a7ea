"""Acoustic-model runtimes behind one interface; `load_acoustic_model` picks the backend."""

from __future__ import annotations

import logging

from app.speech.model_dir import ModelDirectory
from app.speech.runtime.base import STATIC_STEPS, AcousticModel, InferenceError, LstmState, pad_chunk
from app.speech.runtime.batching import BatchingModel
from app.speech.runtime.coreml_backend import (
    COMPUTE_UNITS,
    CoreMLAcousticModel,
    CoreMLUnavailable,
    coreml_available,
)
from app.speech.runtime.numpy_backend import NumpyAcousticModel

__all__ = [
    "COMPUTE_UNITS",
    "STATIC_STEPS",
    "AcousticModel",
    "BatchingModel",
    "CoreMLUnavailable",
    "InferenceError",
    "LstmState",
    "load_acoustic_model",
    "pad_chunk",
]

BACKENDS = ("auto", "numpy", "coreml")
log = logging.getLogger(__name__)


def load_acoustic_model(
    model: ModelDirectory, backend: str = "auto", compute_units: str = "ALL", numpy_threads: int = 1
) -> AcousticModel:
    """Load the model directory with the requested backend; `auto` is Core ML on macOS, else NumPy.

    `numpy_threads`: cores a NumPy forward pass may spread over while it runs alone (app/speech/runtime/cores.py).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    manifest = model.manifest
    if backend in ("auto", "coreml"):
        reason = coreml_available()
        if reason is None:
            return CoreMLAcousticModel(
                model.static_package,
                model.dynamic_package,
                manifest.n_cell_dim,
                manifest.n_classes,
                manifest.dynamic_max_steps,
                compute_units,
            )
        if backend == "coreml":
            raise CoreMLUnavailable(f"backend 'coreml' was requested but {reason}; use DS_BACKEND=numpy")
        log.info("using the NumPy backend: %s", reason)
    return NumpyAcousticModel.from_file(model.weights_path, manifest.dynamic_max_steps, numpy_threads)
