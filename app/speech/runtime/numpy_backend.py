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

Several cores (`threads`, DS_NUMPY_THREADS): a wide model's LSTM units are split into `threads` shards, and its
gate columns laid out shard by shard (shard j: its units' input, forget, output, candidate gates), so one
shard's step (its gate columns of h @ kernel, then its units' cell update) needs nothing from the others until
the next step's h. While a forward pass runs alone (app/speech/runtime/cores.py) each step runs one shard per core,
and the dense layers split their output columns the same way; otherwise it all runs in the caller's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from app.speech.runtime.base import STATIC_STEPS, AcousticModel, LstmState
from app.speech.runtime.cores import CORES, CorePool

LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
RELU_CLIP = 20.0
F32 = np.float32
HALF = F32(0.5)
# Up to this many rows the recurrence runs as one matrix-vector product per row rather than one matrix product:
# OpenBLAS's sgemm packs the whole recurrent kernel on every call, so on the machine measured (x86-64, OpenBLAS
# 0.3.31, one thread, widths 256 to 2048) 2 to 3 rows cost 3 to 4 times one row as a matrix product but only 2 to 3
# times row by row; from about 4 rows on the matrix product wins (16 rows: about 5 times one row at width 2048).
GEMV_ROWS = 3
# Below this many bytes a weight matrix's product is not split across cores: handing a share to a helper thread
# costs about 50 us, as much as a whole step of the default width-256 model (its 1 MB recurrent kernel).
PARALLEL_MIN_BYTES = 4 * 1024 * 1024


def _dense_columns(
    x: np.ndarray, weights: np.ndarray, bias: np.ndarray, relu: bool, out: np.ndarray, a: int, b: int
) -> None:
    """out[:, a:b] = layer(x) for output columns a..b (a share of one layer, see _dense)."""
    y = out[:, a:b]
    np.matmul(x, weights[:, a:b], out=y)
    y += bias[a:b]
    if relu:
        np.clip(y, F32(0.0), F32(RELU_CLIP), out=y)


def _dense(
    x: np.ndarray, weights: np.ndarray, bias: np.ndarray, relu: bool = True, pool: CorePool | None = None
) -> np.ndarray:
    """One layer; with a pool (and weights worth it), each core computes its share of the output columns."""
    out = np.empty((len(x), weights.shape[1]), F32)
    if pool is None or weights.nbytes < PARALLEL_MIN_BYTES or CORES.crowded():
        _dense_columns(x, weights, bias, relu, out, 0, weights.shape[1])
    else:
        bounds = _shares(weights.shape[1], pool.threads)
        pool.run([partial(_dense_columns, x, weights, bias, relu, out, a, b) for a, b in bounds])
    return out


def _shares(size: int, parts: int) -> list[tuple[int, int]]:
    """0..size cut into `parts` consecutive near-equal ranges."""
    edges = [size * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


class NumpyAcousticModel(AcousticModel):
    backend = "numpy"
    batched_chunks = True

    def __init__(self, weights: dict[str, np.ndarray], max_steps: int, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        w = {name: np.ascontiguousarray(value, F32) for name, value in weights.items()}
        self._layers = [(w[f"layer_{i}/weights"], w[f"layer_{i}/bias"]) for i in (1, 2, 3)]
        kernel = w[f"{LSTM}/kernel"]
        n = self.n_cell_dim = w[f"{LSTM}/bias"].shape[0] // 4
        n_in = kernel.shape[0] - n
        # Only a recurrent kernel big enough to be worth a hand-over per step is split across cores.
        parallel = threads > 1 and n * 4 * n * 4 >= PARALLEL_MIN_BYTES and n >= threads
        self.threads = threads if parallel else 1
        # Units in shards; each shard's gates laid out (i, f, o, candidate) from TF's (i, candidate, f, o),
        # sigmoid gates halved (see the module docstring).
        self._shards = _shares(n, self.threads)
        order = np.concatenate(
            [np.r_[a:b, 2 * n + a : 2 * n + b, 3 * n + a : 3 * n + b, n + a : n + b] for a, b in self._shards]
        )
        scale = np.concatenate(
            [np.r_[np.full(3 * (b - a), 0.5, F32), np.ones(b - a, F32)] for a, b in self._shards]
        )
        kernel = kernel[:, order] * scale
        self._input_kernel = np.ascontiguousarray(kernel[:n_in])  # applied to all steps at once
        self._recurrent_kernel = np.ascontiguousarray(kernel[n_in:])  # applied step by step
        self._lstm_bias = np.ascontiguousarray(w[f"{LSTM}/bias"][order] * scale)
        self._layer_5 = (w["layer_5/weights"], w["layer_5/bias"])
        self._layer_6 = (w["layer_6/weights"], w["layer_6/bias"])
        self.n_classes = self._layer_6[1].shape[0]
        self.max_steps = max_steps

    @classmethod
    def from_file(cls, path: Path, max_steps: int, threads: int = 1) -> NumpyAcousticModel:
        with np.load(path) as npz:
            return cls({name: npz[name] for name in npz.files}, max_steps, threads)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "threads": self.threads}

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
        with CORES.claim(self.threads) as pool:
            return self._forward_packed(items, pool)

    def _forward_packed(
        self, items: Sequence[tuple[np.ndarray, LstmState]], pool: CorePool | None
    ) -> list[tuple[np.ndarray, LstmState]]:
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
            x = _dense(x, weights, bias, pool=pool)
        gates_in = _dense(x, self._input_kernel, self._lstm_bias, relu=False, pool=pool)

        batch = len(order)
        c = np.empty((batch, n), F32)
        h0 = np.empty((batch, n), F32)
        for row, b in enumerate(order):
            c[row] = items[b][1].c.reshape(n)
            h0[row] = items[b][1].h.reshape(n)
        outputs = self._recurrence(gates_in, c, h0, active, offsets, pool)

        x = _dense(outputs, *self._layer_5, pool=pool)
        probs = _softmax(_dense(x, *self._layer_6, relu=False))
        for row, b in enumerate(order):
            rows = offsets[: lengths[row]] + row
            last = int(rows[-1])
            results[b] = (probs[rows], LstmState(c[row : row + 1].copy(), outputs[last : last + 1].copy()))
        return results

    def _recurrence(
        self,
        gates_in: np.ndarray,
        c: np.ndarray,
        h0: np.ndarray,
        active: np.ndarray,
        offsets: np.ndarray,
        pool: CorePool | None,
    ) -> np.ndarray:
        """The LSTM steps over time-major packed rows; updates `c` in place, returns every step's h.

        With a pool each shard's step (its gate columns' product, then its units' update) runs on its own core,
        the shards meeting once per step; without one, one product for all gates, then the shards in turn.
        """
        n = self.n_cell_dim
        kernel = self._recurrent_kernel
        outputs = np.empty((int(offsets[-1]), n), F32)
        gates = np.empty((len(c), 4 * n), F32)
        scratch = np.empty((len(c), n), F32)
        views: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}  # per (running rows, shard): built once

        def shard_views(k: int, shard: int) -> tuple[np.ndarray, ...]:
            found = views.get((k, shard))
            if found is None:
                a, b = self._shards[shard]
                m = b - a
                g = gates[:k, 4 * a : 4 * b]
                found = views[(k, shard)] = (
                    *(g, kernel[:, 4 * a : 4 * b], g[:, : 3 * m]),
                    *(g[:, :m], g[:, m : 2 * m], g[:, 2 * m : 3 * m], g[:, 3 * m :]),
                    *(c[:k, a:b], scratch[:k, a:b]),
                )
            return found

        def product(k: int, h: np.ndarray, g: np.ndarray, columns: np.ndarray) -> None:
            if k <= GEMV_ROWS:
                for r in range(k):
                    np.matmul(h[r], columns, out=g[r])
            else:
                np.matmul(h[:k], columns, out=g)

        def cell(k: int, start: int, shard: int) -> None:
            g, _, sig, i, f, o, candidate, ck, tmp = shard_views(k, shard)
            a, b = self._shards[shard]
            g += gates_in[start : start + k, 4 * a : 4 * b]
            np.tanh(g, out=g)
            sig *= HALF  # i, f, o: sigmoid = 0.5 * tanh(x / 2) + 0.5 (x / 2 is in the weights)
            sig += HALF
            ck *= f  # forget_bias 0, as upstream exports it
            np.multiply(i, candidate, out=tmp)
            ck += tmp
            np.tanh(ck, out=tmp)
            np.multiply(o, tmp, out=outputs[start : start + k, a:b])

        def shard_step(k: int, start: int, h: np.ndarray, shard: int) -> None:
            g, columns = shard_views(k, shard)[:2]
            product(k, h, g, columns)
            cell(k, start, shard)

        shards = range(len(self._shards))
        h = h0
        for k, start in zip(active.tolist(), offsets[:-1].tolist(), strict=True):
            if pool is not None and not CORES.crowded():
                pool.run([partial(shard_step, k, start, h, shard) for shard in shards])
            else:
                product(k, h, gates[:k], kernel)
                for shard in shards:
                    cell(k, start, shard)
            h = outputs[start : start + k]
        return outputs


def _check_chunk(windows: np.ndarray, length: int) -> None:
    if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
        raise ValueError(
            f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
        )
