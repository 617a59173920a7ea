"""The one interface every acoustic-model backend implements: context windows + length + LSTM state in,
softmax probabilities + new state out. Streaming, state and decoding code is written once against it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STATIC_STEPS = 16  # the static package's (and the native client's) chunk length


class InferenceError(RuntimeError):
    """The backend failed to run the model on valid input."""


@dataclass(frozen=True)
class LstmState:
    """LSTM cell and hidden state, each (1, n_cell) float32, as the graph's previous_state_c/h take them."""

    c: np.ndarray
    h: np.ndarray

    @classmethod
    def zeros(cls, n_cell: int) -> LstmState:
        return cls(np.zeros((1, n_cell), np.float32), np.zeros((1, n_cell), np.float32))


class AcousticModel(ABC):
    """A loaded DeepSpeech acoustic model; thread-safe for concurrent calls with separate states."""

    backend: str  # "numpy" or "coreml": reported in responses, logs and /info
    n_cell_dim: int
    n_classes: int
    max_steps: int  # the dynamic model's time bound per call
    # True where run_chunks computes several chunks in one pass (cheaper than one by one); batching streams'
    # chunks (app/speech/runtime/batching.py) only pays off then.
    batched_chunks: bool = False

    @abstractmethod
    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        """Static model: windows (16, 19, 26) whose first `length` are valid → probs (length, classes)."""

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        """Several streams' static chunks (windows, length, state) at once → each one's run_chunk result.

        This default runs them one by one; backends that can batch them (`batched_chunks`) override it.
        """
        return [self.run_chunk(windows, length, state) for windows, length, state in requests]

    @abstractmethod
    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        """Dynamic model: windows (T, 19, 26), 1 ≤ T ≤ max_steps, all valid → probs (T, classes)."""

    def run_last_window(self, windows: np.ndarray, state: LstmState) -> np.ndarray:
        """`run_window` for a file's last window, whose state nobody reads: probs only. A backend may pad it to a
        shape it runs faster (the LSTM is causal, so padding after the last window changes no probability)."""
        return self.run_window(windows, state)[0]

    def run_long(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        """Any number of windows through the dynamic model in consecutive calls of ≤ max_steps, state carried.

        Gives the same probabilities as one pass (the LSTM is the only thing that looks across time), with
        memory bounded by one call's window.
        """
        if len(windows) == 0:
            return np.zeros((0, self.n_classes), np.float32), state
        parts = []
        for start in range(0, len(windows), self.max_steps):
            probs, state = self.run_window(windows[start : start + self.max_steps], state)
            parts.append(probs)
        return np.concatenate(parts), state

    def attach_stream(self) -> Callable[[], None]:
        """A stream starts sending chunks; returns the call that says it has stopped (call it once).

        Plain models ignore it; the batching wrapper counts open streams to know when waiting for other
        streams' chunks can pay off.
        """
        return _detach_nothing

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "n_cell_dim": self.n_cell_dim, "max_steps": self.max_steps}


def _detach_nothing() -> None:
    return None


def pad_chunk(windows: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero-pad up to 16 windows to a full static chunk, as the native client pads the tail batch."""
    length = len(windows)
    if not 0 < length <= STATIC_STEPS:
        raise ValueError(f"a chunk holds 1..{STATIC_STEPS} windows, got {length}")
    if length == STATIC_STEPS:
        return np.ascontiguousarray(windows, np.float32), length
    padded = np.zeros((STATIC_STEPS, *windows.shape[1:]), np.float32)
    padded[:length] = windows
    return padded, length
