"""Greedy (best-path) CTC decoding, whole-input and incremental.

CTC best path: take the most probable class per frame, merge consecutive repeats, drop blanks (blank is the
last class: DeepSpeech's 29 outputs are the 28 alphabet labels then the blank). Hand-written because it is
three lines of NumPy; flashlight's decoders are beam searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.alphabet import ENGLISH, Alphabet
from app.decoding.timings import CharToken, Transcript, transcript_from_tokens


def check_probs(probs: np.ndarray, n_classes: int) -> np.ndarray:
    """Validate a (T, n_classes) probability matrix (a (T, 1, n) `logits` output is squeezed)."""
    probs = np.asarray(probs)
    if probs.ndim == 3 and probs.shape[1] == 1:  # the exported graph's (T, batch=1, 29)
        probs = probs[:, 0, :]
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"expected probabilities of shape (T, {n_classes}), got {probs.shape}")
    return probs


def ctc_collapse(
    path: np.ndarray, blank: int, *, previous: int | None = None, offset: int = 0
) -> list[tuple[int, int]]:
    """(label, timestep) for each frame that starts a new non-blank label; `previous`/`offset` continue a stream."""
    path = np.asarray(path, dtype=np.int64)
    if path.size == 0:
        return []
    before = np.empty_like(path)
    before[0] = blank if previous is None else previous
    before[1:] = path[:-1]
    starts = np.flatnonzero((path != blank) & (path != before))
    return [(int(path[t]), int(t) + offset) for t in starts]


@dataclass(frozen=True)
class GreedyResult:
    """Greedy decode: raw collapsed text, per-character timesteps, and the words/timings view."""

    raw_text: str
    tokens: tuple[CharToken, ...]
    transcript: Transcript

    @property
    def text(self) -> str:
        """Normalised text (single spaces, no leading/trailing space)."""
        return self.transcript.text


def greedy_decode(probs: np.ndarray, alphabet: Alphabet = ENGLISH) -> GreedyResult:
    """Best-path decode of a whole (T, n_classes) probability matrix."""
    probs = check_probs(probs, alphabet.n_classes)
    path = probs.argmax(axis=1)
    tokens = tuple(CharToken(alphabet.labels[lab], t) for lab, t in ctc_collapse(path, alphabet.blank_index))
    confidence = probs.max(axis=1).astype(np.float64) if len(probs) else np.zeros(0)
    return GreedyResult("".join(t.char for t in tokens), tokens, transcript_from_tokens(tokens, confidence))


class GreedyStream:
    """Incremental greedy decoding: each chunk is decoded once, continuing from the previous chunk's last label."""

    def __init__(self, alphabet: Alphabet = ENGLISH) -> None:
        self.alphabet = alphabet
        self._tokens: list[CharToken] = []
        self._confidence: list[np.ndarray] = []
        self._previous: int | None = None
        self._frames = 0

    @property
    def frames(self) -> int:
        """Time steps consumed so far."""
        return self._frames

    def feed(self, probs: np.ndarray) -> None:
        """Decode one more chunk of probabilities (T_chunk, n_classes)."""
        probs = check_probs(probs, self.alphabet.n_classes)
        if not len(probs):
            return
        path = probs.argmax(axis=1)
        new = ctc_collapse(path, self.alphabet.blank_index, previous=self._previous, offset=self._frames)
        self._tokens += [CharToken(self.alphabet.labels[lab], t) for lab, t in new]
        self._confidence.append(probs.max(axis=1).astype(np.float64))
        self._previous = int(path[-1])
        self._frames += len(probs)

    @property
    def text(self) -> str:
        """Raw collapsed text so far (cheap: no re-decoding)."""
        return "".join(t.char for t in self._tokens)

    def result(self) -> GreedyResult:
        """Everything decoded so far, with words and timings (partial or final: greedy never revises)."""
        if len(self._confidence) > 1:
            self._confidence = [np.concatenate(self._confidence)]
        confidence = self._confidence[0] if self._confidence else np.zeros(0)
        tokens = tuple(self._tokens)
        return GreedyResult(self.text, tokens, transcript_from_tokens(tokens, confidence))
