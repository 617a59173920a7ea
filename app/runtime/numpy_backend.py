"""DeepSpeech's network in NumPy: runs anywhere (Linux servers, CI, tests) from the converter's `weights.npz`.

The dense layers and the LSTM's input projection are one matrix product each over all steps; only the
recurrence (h @ recurrent kernel) runs per step. Same math as TensorFlow's BlockLSTM with forget_bias 0 and no
peepholes, gate order input, cell candidate, forget, output (upstream's LSTMBlockFusedCell layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.runtime.base import STATIC_STEPS, AcousticModel, LstmState

LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
RELU_CLIP = 20.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x| and the same value as 1/(1+exp(-x)).
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _dense(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, relu: bool = True) -> np.ndarray:
    y = x @ weights
    y += bias
    if relu:
        np.clip(y, 0.0, RELU_CLIP, out=y)
    return y


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


class NumpyAcousticModel(AcousticModel):
    backend = "numpy"

    def __init__(self, weights: dict[str, np.ndarray], max_steps: int) -> None:
        w = {name: np.ascontiguousarray(value, np.float32) for name, value in weights.items()}
        self._layers = [(w[f"layer_{i}/weights"], w[f"layer_{i}/bias"]) for i in (1, 2, 3)]
        kernel = w[f"{LSTM}/kernel"]
        self.n_cell_dim = w[f"{LSTM}/bias"].shape[0] // 4
        n_in = kernel.shape[0] - self.n_cell_dim
        self._input_kernel = kernel[:n_in]  # applied to all steps at once
        self._recurrent_kernel = np.ascontiguousarray(kernel[n_in:])  # applied step by step
        self._lstm_bias = w[f"{LSTM}/bias"]
        self._layer_5 = (w["layer_5/weights"], w["layer_5/bias"])
        self._layer_6 = (w["layer_6/weights"], w["layer_6/bias"])
        self.n_classes = self._layer_6[1].shape[0]
        self.max_steps = max_steps

    @classmethod
    def from_file(cls, path: Path, max_steps: int) -> NumpyAcousticModel:
        with np.load(path) as npz:
            return cls({name: npz[name] for name in npz.files}, max_steps)

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
            raise ValueError(
                f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
            )
        # Padding steps are masked out by the graph; computing only the valid ones gives the same result.
        return self._forward(windows[:length], state)

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        if not 1 <= windows.shape[0] <= self.max_steps:
            raise ValueError(f"the dynamic model takes 1..{self.max_steps} windows, got {windows.shape[0]}")
        return self._forward(windows, state)

    def _forward(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        steps = windows.shape[0]
        if steps == 0:
            return np.zeros((0, self.n_classes), np.float32), state
        x = np.ascontiguousarray(windows, np.float32).reshape(steps, -1)
        for weights, bias in self._layers:
            x = _dense(x, weights, bias)
        gates_in = x @ self._input_kernel
        gates_in += self._lstm_bias
        n = self.n_cell_dim
        c = state.c[0].astype(np.float32, copy=True)
        h = state.h[0].astype(np.float32, copy=True)
        outputs = np.empty((steps, n), np.float32)
        for t in range(steps):
            gates = gates_in[t] + h @ self._recurrent_kernel
            i = _sigmoid(gates[:n])
            candidate = np.tanh(gates[n : 2 * n])
            f = _sigmoid(gates[2 * n : 3 * n])  # forget_bias 0, as upstream exports it
            o = _sigmoid(gates[3 * n :])
            c = f * c + i * candidate
            h = o * np.tanh(c)
            outputs[t] = h
        x = _dense(outputs, *self._layer_5)
        probs = _softmax(_dense(x, *self._layer_6, relu=False))
        return probs, LstmState(c[None, :], h[None, :])
