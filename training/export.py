"""PyTorch model → DeepSpeech's upstream-named arrays (and a TF checkpoint through dsconvert).

- Input normalisation folded into layer_1, so the exported graph takes raw DeepSpeech features:
  x_n = (x - μ) / σ per input feature (μ, σ of each of the 26 coefficients, tiled over the 19 window frames);
  x_n W + b = x (W / σ) + (b - (μ / σ) W), i.e. W' = W / σ (row-wise), b' = b - (μ / σ) · W.
- LSTM: PyTorch stacks gates (input, forget, cell candidate, output) and has two biases; upstream's
  LSTMBlockFusedCell kernel is [W_input; W_recurrent] (n_in + n_cell, 4 n_cell) with gate columns (input,
  cell candidate, forget, output) and one bias, applied with forget_bias 0. So kernel = [W_ih W_hh]^T with gate
  blocks reordered (0, 2, 1, 3), bias = b_ih + b_hh reordered the same way.
- Dense layers: upstream stores weights as (in, out), PyTorch as (out, in): transpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsconvert.weights import LSTM_BIAS, LSTM_KERNEL, DeepSpeechWeights
from training.model import WINDOW, DeepSpeechModel

# PyTorch gate block → position in upstream's (i, c, f, o) layout: take blocks i, g, f, o of (i, f, g, o).
_TORCH_TO_UPSTREAM_GATES = (0, 2, 1, 3)


def _reorder_gates(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    blocks = np.split(a, 4, axis=axis)
    assert all(b.shape[axis] == n for b in blocks)
    return np.concatenate([blocks[k] for k in _TORCH_TO_UPSTREAM_GATES], axis=axis)


def upstream_arrays(model: DeepSpeechModel) -> dict[str, np.ndarray]:
    """The eleven arrays by upstream name (float32), normalisation folded into layer_1."""

    def np64(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().to(torch.float64).numpy()

    mean = np.tile(np64(model.feature_mean), WINDOW)
    std = np.tile(np64(model.feature_std), WINDOW)
    w1 = np64(model.layer_1.weight).T  # (494, H)
    b1 = np64(model.layer_1.bias)
    arrays = {
        "layer_1/weights": w1 / std[:, None],
        "layer_1/bias": b1 - (mean / std) @ w1,
    }
    for name in ("layer_2", "layer_3", "layer_5", "layer_6"):
        layer = getattr(model, name)
        arrays[f"{name}/weights"] = np64(layer.weight).T
        arrays[f"{name}/bias"] = np64(layer.bias)
    n = model.lstm.hidden_size
    kernel = np.concatenate([np64(model.lstm.weight_ih_l0), np64(model.lstm.weight_hh_l0)], axis=1).T
    arrays[LSTM_KERNEL] = _reorder_gates(kernel, n, axis=1)
    arrays[LSTM_BIAS] = _reorder_gates(np64(model.lstm.bias_ih_l0) + np64(model.lstm.bias_hh_l0), n, axis=0)
    return {name: value.astype(np.float32) for name, value in arrays.items()}


def export_weights(model: DeepSpeechModel) -> DeepSpeechWeights:
    return DeepSpeechWeights.checked(upstream_arrays(model), "trained PyTorch model")


def write_upstream_checkpoint(model: DeepSpeechModel, directory: Path, step: int = 1) -> Path:
    """A TF checkpoint with upstream variable names (what scripts/convert.py --checkpoint reads)."""
    from dsconvert.checkpoint_writer import write_checkpoint

    return write_checkpoint(export_weights(model), directory, step=step)


def torch_probabilities(model: DeepSpeechModel, frames: np.ndarray) -> np.ndarray:
    """Softmax probabilities (T, classes) of one utterance's raw MFCC frames (T, 26), whole-file."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(frames, np.float32))[None])
    return torch.softmax(logits[:, 0].double(), dim=-1).numpy()


def max_probability_difference(model: DeepSpeechModel, frames: np.ndarray) -> float:
    """|torch probs - numpy backend probs on the exported weights|, max over the utterance (the export check)."""
    from app.speech.features import context_windows
    from app.speech.runtime.base import LstmState
    from app.speech.runtime.numpy_backend import NumpyAcousticModel

    weights = export_weights(model)
    numpy_model = NumpyAcousticModel(weights.arrays, max_steps=max(1, len(frames)))
    probs, _ = numpy_model.run_window(context_windows(frames), LstmState.zeros(weights.n_cell_dim))
    return float(np.max(np.abs(probs - torch_probabilities(model, frames))))
