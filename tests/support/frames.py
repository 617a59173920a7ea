"""CTC probabilities built frame by frame, the way a CTC acoustic model emits them: one peaky frame per
character, blanks between."""

from __future__ import annotations

import numpy as np

from app.speech.alphabet import ENGLISH

BLANK = "_"


def frames(spec: list[dict[str, float]]) -> np.ndarray:
    """(T, 29) probabilities: each frame names some classes' mass; the rest is spread evenly."""
    rows = np.zeros((len(spec), ENGLISH.n_classes))
    for t, frame in enumerate(spec):
        for label, p in frame.items():
            rows[t, ENGLISH.blank_index if label == BLANK else ENGLISH.labels.index(label)] = p
        free = rows[t] == 0
        rows[t, free] = (1.0 - rows[t].sum()) / free.sum()
    return rows.astype(np.float32)


def clear(text: str, p: float = 0.9) -> list[dict[str, float]]:
    """A clean utterance: each character on one frame, a blank frame after it."""
    spec: list[dict[str, float]] = [{BLANK: 0.95}]
    for ch in text:
        spec += [{ch: p}, {BLANK: 0.95}]
    return spec
