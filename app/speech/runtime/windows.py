"""Cutting a run of context windows into pieces a dynamic package with enumerated time lengths accepts.

The dynamic `.mlpackage` takes only a fixed set of time lengths (`ct.EnumeratedShapes`: the Neural Engine runs
those, while a `RangeDim` model re-specialises for every new length). A sequence of `n` windows is therefore run
as full pieces of the largest length plus one last piece, zero-padded up to the smallest length that holds it.

Why padding the last piece changes nothing the caller keeps: the network is causal. Every layer but the LSTM
works on each step alone, and the LSTM's output at step t depends only on steps ≤ t, so the probabilities of
the real windows are the ones an exact-length run gives; the padded steps' probabilities are dropped. What
padding does change is the state after the piece (the LSTM ran on through the zero windows), so a padded
piece is only ever the last one and its state is not the state after the real windows: right for a file's
last piece (the state after a file is discarded) and for a stream's tail (the stream is finished); wrong for
anything that carries the state on, which must ask for `keep_state=True` (exact pieces, no padding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from app.speech.runtime.base import LstmState

# One prediction: windows (L, 19, 26) with L an enumerated length, all of them fed → (probs (L, classes), state).
Predict = Callable[[np.ndarray, LstmState], tuple[np.ndarray, LstmState]]


@dataclass(frozen=True)
class Piece:
    """Windows [start, stop) of the sequence, run at `length` ≥ stop - start (zero windows after them)."""

    start: int
    stop: int
    length: int

    @property
    def valid(self) -> int:
        """Real windows in the piece: the probabilities to keep are the first `valid` rows."""
        return self.stop - self.start

    @property
    def padding(self) -> int:
        """Zero windows appended; when > 0 the state after the piece is not the state after its windows."""
        return self.length - self.valid


def _checked_lengths(lengths: Iterable[int]) -> tuple[int, ...]:
    checked = tuple(sorted({int(n) for n in lengths}))
    if not checked or checked[0] < 1:
        raise ValueError(f"enumerated lengths must be positive and at least one, got {checked}")
    return checked


def plan_pieces(n_windows: int, lengths: Iterable[int], *, keep_state: bool = False) -> tuple[Piece, ...]:
    """The pieces that run `n_windows` windows through a package accepting only `lengths` along time.

    Full pieces of the largest length while more windows than it remain; then the rest (1 .. largest):
    - `keep_state=False` (a file's or a stream's last windows, its final state unused): one last piece at
      the smallest length ≥ the rest, zero-padded (padding 0 when the rest is itself a length);
    - `keep_state=True` (the state after the windows is carried on): the rest cut exactly into the largest
      lengths that fit, no padding, so the state after the last piece is the true one (needs 1 in
      `lengths`, which makes every count reachable).
    The largest of `lengths` is the full-piece size: leave out those above the caller's bound per
    prediction. No windows, no pieces. For a package without enumerated lengths (a `RangeDim` 1..max_steps),
    pass `range(1, max_steps + 1)`: the plan is then the exact windows of max_steps it always was.
    """
    if n_windows < 0:
        raise ValueError(f"a window count is never negative, got {n_windows}")
    allowed = _checked_lengths(lengths)
    if keep_state and allowed[0] != 1:
        raise ValueError(f"exact pieces need length 1 among the enumerated lengths, got {allowed}")
    largest = allowed[-1]
    pieces: list[Piece] = []
    start = 0
    while n_windows - start > largest:  # ">": an exact multiple ends with a full, unpadded last piece
        pieces.append(Piece(start, start + largest, largest))
        start += largest
    while start < n_windows:
        rest = n_windows - start
        if keep_state:
            length = max(n for n in allowed if n <= rest)
            pieces.append(Piece(start, start + length, length))
        else:
            pieces.append(Piece(start, n_windows, min(n for n in allowed if n >= rest)))
        start = pieces[-1].stop
    return tuple(pieces)


def piece_input(windows: np.ndarray, piece: Piece) -> np.ndarray:
    """The package input for a piece: its windows of `windows` (T, 19, 26), then `padding` zero windows."""
    if not 0 <= piece.start < piece.stop <= len(windows) or piece.padding < 0:
        raise ValueError(f"{piece} does not fit {len(windows)} windows")
    out = np.zeros((piece.length, *windows.shape[1:]), np.float32)
    out[: piece.valid] = windows[piece.start : piece.stop]
    return out


def run_in_pieces(
    predict: Predict,
    windows: np.ndarray,
    state: LstmState,
    lengths: Iterable[int],
    *,
    keep_state: bool = False,
) -> tuple[np.ndarray, LstmState | None]:
    """Run `windows` (T ≥ 1, 19, 26) from `state` as `plan_pieces` cuts them, state carried between pieces.

    Returns the real windows' probabilities (T, classes) and the state after the last window, or None when
    the last piece was padded (its state went on through the zero windows: see the module docstring).
    """
    if len(windows) == 0:
        raise ValueError("no windows to run")
    parts = []
    padded = False
    for piece in plan_pieces(len(windows), lengths, keep_state=keep_state):
        probs, state = predict(piece_input(windows, piece), state)
        parts.append(np.asarray(probs)[: piece.valid])
        padded = piece.padding > 0
    return np.concatenate(parts), None if padded else state
