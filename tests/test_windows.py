"""Planning the pieces a dynamic package with enumerated time lengths runs (app/speech/runtime/windows.py).

The real package is proven in tests/test_convert_mil.py (MIL evaluator); here the plan itself, and running it
with the NumPy backend as the package: the causal network gives the one-pass probabilities whatever the
padding of the last piece.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.speech.runtime.base import LstmState
from app.speech.runtime.numpy_backend import NumpyAcousticModel
from app.speech.runtime.windows import Piece, piece_input, plan_pieces, run_in_pieces
from dsconvert.weights import random_weights

# What scripts/convert.py enumerates for --max-steps 1000 (dsconvert.coreml_export.dynamic_lengths, which
# tests/test_convert.py checks in a converted model directory).
LENGTHS = (*range(1, 16), 16, 24, 32, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000)
WIDTH = 16


def _covers(plan: tuple[Piece, ...], n: int) -> bool:
    """Pieces in order, back to back, from window 0 to n."""
    edges = [0, *(p.stop for p in plan)]
    return all(p.start == a for p, a in zip(plan, edges, strict=False)) and edges[-1] == n


@pytest.mark.parametrize("keep_state", [False, True])
def test_every_count_up_to_three_windows_of_1000(keep_state: bool) -> None:
    for n in range(3001):
        plan = plan_pieces(n, LENGTHS, keep_state=keep_state)
        assert _covers(plan, n), (n, plan)
        assert all(p.length in LENGTHS and 1 <= p.valid <= p.length for p in plan)
        assert all(p.padding == 0 for p in plan[:-1]), "only the last piece is ever padded"
        full = [p for p in plan if p.start < (n - 1) // 1000 * 1000]
        assert all(p.length == 1000 for p in full), "full windows of the largest length come first"
        if keep_state:
            assert all(p.padding == 0 for p in plan)
        elif plan:
            last = plan[-1]
            assert last.length == min(m for m in LENGTHS if m >= last.valid), "padded to the next length"
            assert len(plan) == -(-n // 1000), "one piece per window of 1000"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, []),
        (5, [(0, 5, 5)]),  # a stream's tail: its own length
        (17, [(0, 17, 24)]),
        (1000, [(0, 1000, 1000)]),  # an exact multiple ends unpadded
        (1234, [(0, 1000, 1000), (1000, 1234, 300)]),
        (2001, [(0, 1000, 1000), (1000, 2000, 1000), (2000, 2001, 1)]),
    ],
)
def test_last_piece_is_padded_to_the_next_length(n: int, expected: list[tuple[int, int, int]]) -> None:
    assert [(p.start, p.stop, p.length) for p in plan_pieces(n, LENGTHS)] == expected


def test_exact_pieces_when_the_state_goes_on() -> None:
    plan = plan_pieces(1234, LENGTHS, keep_state=True)
    assert [p.length for p in plan] == [1000, 200, 32, 2] and all(p.padding == 0 for p in plan)
    assert [p.length for p in plan_pieces(50, LENGTHS, keep_state=True)] == [50]  # incremental's 1 s piece


def test_a_range_package_plans_what_it_always_ran() -> None:
    """range(1, max_steps + 1) (a RangeDim package): windows of max_steps, the last one exact."""
    plan = plan_pieces(2345, range(1, 1001))
    assert [(p.valid, p.length) for p in plan] == [(1000, 1000), (1000, 1000), (345, 345)]


def test_lengths_in_any_order_and_bad_arguments() -> None:
    assert plan_pieces(30, [50, 16, 50, 24]) == (Piece(0, 30, 50),)
    with pytest.raises(ValueError, match="never negative"):
        plan_pieces(-1, LENGTHS)
    with pytest.raises(ValueError, match="positive and at least one"):
        plan_pieces(3, [])
    with pytest.raises(ValueError, match="positive and at least one"):
        plan_pieces(3, [0, 16])
    with pytest.raises(ValueError, match="need length 1"):
        plan_pieces(3, [16, 50], keep_state=True)


def test_piece_input_appends_zero_windows() -> None:
    windows = np.arange(7 * 19 * 26, dtype=np.float32).reshape(7, 19, 26) + 1
    piece = Piece(4, 7, 16)
    out = piece_input(windows, piece)
    assert out.shape == (16, 19, 26) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[:3], windows[4:])
    assert not out[3:].any()
    assert piece.valid == 3 and piece.padding == 13
    with pytest.raises(ValueError, match="does not fit"):
        piece_input(windows, Piece(4, 8, 16))


@pytest.fixture(scope="module")
def numpy_model() -> NumpyAcousticModel:
    return NumpyAcousticModel(random_weights(WIDTH, seed=2).arrays, max_steps=1000)


def _start() -> tuple[np.ndarray, LstmState]:
    rng = np.random.default_rng(3)
    windows = rng.normal(0, 3, (237, 19, 26)).astype(np.float32)
    state = LstmState(*(rng.normal(0, 0.5, (1, WIDTH)).astype(np.float32) for _ in range(2)))
    return windows, state


def test_padded_last_piece_keeps_the_one_pass_probabilities(numpy_model: NumpyAcousticModel) -> None:
    windows, start = _start()
    lengths = (*range(1, 17), 24, 32, 50, 100)
    feeds: list[int] = []

    def predict(x: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        feeds.append(len(x))
        return numpy_model.run_window(x, state)

    want, want_state = numpy_model.run_window(windows, start)
    probs, state = run_in_pieces(predict, windows, start, lengths)
    assert feeds == [100, 100, 50] and state is None  # 37 padded to 50: its state is not handed back
    np.testing.assert_allclose(probs, want, atol=1e-6)
    feeds.clear()
    probs, state = run_in_pieces(predict, windows, start, lengths, keep_state=True)
    assert feeds == [100, 100, 32, 5] and state is not None
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(state.c, want_state.c, atol=1e-5)
    np.testing.assert_allclose(state.h, want_state.h, atol=1e-6)
    with pytest.raises(ValueError, match="no windows"):
        run_in_pieces(predict, windows[:0], start, lengths)
