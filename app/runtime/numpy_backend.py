"""DeepSpeech's network in NumPy: runs anywhere (Linux servers, CI, tests) from the converter's `weights.npz`.

The dense layers and the LSTM's input projection are one matrix product each over all steps; only the
recurrence (h @ recurrent kernel) runs per step. Same math as TensorFlow's BlockLSTM with forget_bias 0 and no
peepholes, gate order input, cell candidate, forget, output (upstream's LSTMBlockFusedCell layout).

Batching (`run_chunks`): chunks of several streams run together. The dense layers see all their valid steps as
one matrix; the recurrence runs once per time step with one row per stream still running at that step, so the
recurrent kernel (n x 4n floats: 67 MB at width 2048, read from memory every step) is read once per step for
all streams instead of once per stream. Streams are sorted by length, longest first, so the rows still running
at step t are a prefix; rows are laid out time-major (step 0 of every stream, then step 1, ...), so each step's
rows are one contiguous block and the previous step's output block is the next step's h.

Everything is float32 (weights, state, activations, the constants only ever meet float32 arrays), and the
per-step work is a fixed set of in-place ufunc calls on preallocated buffers:
- gate columns are reordered at load time to (input, forget, output, candidate) so the three sigmoids are one
  contiguous block;
- sigmoid(x) = 0.5 * tanh(x / 2) + 0.5, and the sigmoid gates' columns of the kernels and bias are halved at
  load time (exact: a power of two), so one tanh over all 4n gate columns computes every gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.runtime.base import STATIC_STEPS, AcousticModel, LstmState

LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
RELU_CLIP = 20.0
F32 = np.float32
HALF = F32(0.5)
# Up to this many rows the recurrence runs as one matrix-vector product per row rather than one matrix product:
# OpenBLAS's sgemm packs the whole recurrent kernel on every call, so on the machine measured (x86-64, OpenBLAS
# 0.3.31, one thread, widths 256 to 2048) 2 to 3 rows cost 3 to 4 times one row as a matrix product but only 2 to 3
# times row by row; from about 4 rows on the matrix product wins (16 rows: about 5 times one row at width 2048).
GEMV_ROWS = 3


def _dense(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, relu: bool = True) -> np.ndarray:
    y = x @ weights
    y += bias
    if relu:
        np.clip(y, F32(0.0), F32(RELU_CLIP), out=y)
    return y


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


class NumpyAcousticModel(AcousticModel):
    backend = "numpy"
    batched_chunks = True

    def __init__(self, weights: dict[str, np.ndarray], max_steps: int) -> None:
        w = {name: np.ascontiguousarray(value, F32) for name, value in weights.items()}
        self._layers = [(w[f"layer_{i}/weights"], w[f"layer_{i}/bias"]) for i in (1, 2, 3)]
        kernel = w[f"{LSTM}/kernel"]
        n = self.n_cell_dim = w[f"{LSTM}/bias"].shape[0] // 4
        n_in = kernel.shape[0] - n
        # (i, candidate, f, o) -> (i, f, o, candidate), sigmoid gates halved (see the module docstring).
        order = np.r_[0:n, 2 * n : 4 * n, n : 2 * n]
        scale = np.ones(4 * n, F32)
        scale[: 3 * n] = 0.5
        kernel = kernel[:, order] * scale
        self._input_kernel = np.ascontiguousarray(kernel[:n_in])  # applied to all steps at once
        self._recurrent_kernel = np.ascontiguousarray(kernel[n_in:])  # applied step by step
        self._lstm_bias = np.ascontiguousarray(w[f"{LSTM}/bias"][order] * scale)
        self._layer_5 = (w["layer_5/weights"], w["layer_5/bias"])
        self._layer_6 = (w["layer_6/weights"], w["layer_6/bias"])
        self.n_classes = self._layer_6[1].shape[0]
        self.max_steps = max_steps

    @classmethod
    def from_file(cls, path: Path, max_steps: int) -> NumpyAcousticModel:
        with np.load(path) as npz:
            return cls({name: npz[name] for name in npz.files}, max_steps)

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        _check_chunk(windows, length)
        # Padding steps are masked out by the graph; computing only the valid ones gives the same result.
        return self._forward(windows[:length], state)

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        for windows, length, _ in requests:
            _check_chunk(windows, length)
        return self._forward_batch([(windows[:length], state) for windows, length, state in requests])

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        if not 1 <= windows.shape[0] <= self.max_steps:
            raise ValueError(f"the dynamic model takes 1..{self.max_steps} windows, got {windows.shape[0]}")
        return self._forward(windows, state)

    def _forward(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._forward_batch([(windows, state)])[0]

    def _forward_batch(
        self, items: Sequence[tuple[np.ndarray, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        """Each item's windows (T_b, 19, 26), all valid, from its state → (probs (T_b, classes), new state)."""
        n = self.n_cell_dim
        results: list[tuple[np.ndarray, LstmState]] = [
            (np.zeros((0, self.n_classes), F32), state) for _, state in items
        ]
        # Longest first (stable), zero-length items dropped: the rows running at step t are a prefix.
        order = sorted((b for b in range(len(items)) if len(items[b][0])), key=lambda b: -len(items[b][0]))
        if not order:
            return results
        lengths = np.array([len(items[b][0]) for b in order])
        steps = int(lengths[0])
        active = (lengths[None, :] > np.arange(steps)[:, None]).sum(axis=1)  # rows running at each step
        offsets = np.zeros(steps + 1, np.int64)
        np.cumsum(active, out=offsets[1:])  # step t's rows: offsets[t] .. offsets[t + 1], time-major

        if len(order) == 1:
            x = np.ascontiguousarray(items[order[0]][0], F32).reshape(steps, -1)
        else:
            x = np.empty((int(offsets[-1]), self._layers[0][0].shape[0]), F32)
            for row, b in enumerate(order):
                x[offsets[: lengths[row]] + row] = items[b][0].reshape(lengths[row], -1)
        for weights, bias in self._layers:
            x = _dense(x, weights, bias)
        gates_in = x @ self._input_kernel
        gates_in += self._lstm_bias

        batch = len(order)
        c = np.empty((batch, n), F32)
        h0 = np.empty((batch, n), F32)
        for row, b in enumerate(order):
            c[row] = items[b][1].c.reshape(n)
            h0[row] = items[b][1].h.reshape(n)
        outputs = self._recurrence(gates_in, c, h0, active, offsets)

        x = _dense(outputs, *self._layer_5)
        probs = _softmax(_dense(x, *self._layer_6, relu=False))
        for row, b in enumerate(order):
            rows = offsets[: lengths[row]] + row
            last = int(rows[-1])
            results[b] = (probs[rows], LstmState(c[row : row + 1].copy(), outputs[last : last + 1].copy()))
        return results

    def _recurrence(
        self, gates_in: np.ndarray, c: np.ndarray, h0: np.ndarray, active: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """The LSTM steps over time-major packed rows; updates `c` in place, returns every step's h."""
        n = self.n_cell_dim
        kernel = self._recurrent_kernel
        outputs = np.empty((int(offsets[-1]), n), F32)
        gates = np.empty((len(c), 4 * n), F32)
        scratch = np.empty((len(c), n), F32)
        views: dict[int, tuple[np.ndarray, ...]] = {}  # per number of running rows: built once, reused
        h = h0
        for k, start in zip(active.tolist(), offsets[:-1].tolist(), strict=True):
            if k not in views:
                g = gates[:k]
                views[k] = (g, g[:, : 3 * n], g[:, :n], g[:, n : 2 * n], g[:, 2 * n : 3 * n], g[:, 3 * n :])
                views[k] += (c[:k], scratch[:k])
            g, sig, i, f, o, candidate, ck, tmp = views[k]
            end = start + k
            if k <= GEMV_ROWS:
                for r in range(k):
                    np.matmul(h[r], kernel, out=g[r])
            else:
                np.matmul(h[:k], kernel, out=g)
            g += gates_in[start:end]
            np.tanh(g, out=g)
            sig *= HALF  # i, f, o: sigmoid = 0.5 * tanh(x / 2) + 0.5 (x / 2 is in the weights)
            sig += HALF
            ck *= f  # forget_bias 0, as upstream exports it
            np.multiply(i, candidate, out=tmp)
            ck += tmp
            np.tanh(ck, out=tmp)
            h = outputs[start:end]
            np.multiply(o, tmp, out=h)
        return outputs


def _check_chunk(windows: np.ndarray, length: int) -> None:
    if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
        raise ValueError(
            f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
        )
