"""Greedy (best-path) CTC decoding, whole-input and incremental.

CTC best path: take the most probable class per frame, merge consecutive repeats, drop blanks (blank is the
last class: DeepSpeech's 29 outputs are the 28 alphabet labels then the blank). Hand-written because it is
three lines of NumPy; flashlight's decoders are beam searches.

Streams: `GrowingTranscript` turns a path that only grows (greedy's, or the beam search's committed prefix) into
words incrementally, so a partial result costs the new frames, not the whole stream (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.speech.alphabet import ENGLISH, Alphabet
from app.speech.decoding.timings import FRAME_SECONDS, CharToken, Transcript, Word, transcript_from_tokens


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


def _word(run: Sequence[CharToken], confidence: np.ndarray, base: int) -> Word:
    """timings.words_from_tokens' word, with `confidence[i]` the frame confidence of timestep base + i."""
    first, last = run[0].timestep, run[-1].timestep
    if len(confidence) > last - base:
        conf = float(np.mean(confidence[first - base : last - base + 1]))
    else:
        conf = 0.0
    text = "".join(t.char for t in run)
    return Word(text, round(first * FRAME_SECONDS, 6), round((last + 1) * FRAME_SECONDS, 6), conf)


class GrowingTranscript:
    """A CTC path that only grows (chunks appended with `commit`), read as a Transcript after each addition
    with an optional uncommitted `tail` (the beam search's best path since its last prune).

    Same result as `transcript_from_tokens(ctc_collapse(whole path), its frame confidences)`, but the words
    closed (followed by a space) in the committed part are built once and kept, so a transcript costs the
    tail, the word still open at the end of the committed part and a copy of the word list: not a pass over
    every frame. Transcript.confidence (the mean over all frames) comes from a running sum unless `exact`,
    where it is np.mean over every frame's confidence, as the whole-input decoders compute it (the two differ
    in the last bits).
    """

    def __init__(self, alphabet: Alphabet) -> None:
        self._labels = alphabet.labels
        self._blank = alphabet.blank_index
        self._conf = np.zeros(1024)  # frame confidences (float64), first `_n` used; doubled as needed
        self._n = 0
        self._conf_sum = 0.0
        self._last: int | None = None  # the last committed frame's label: the next collapse continues from it
        self.tokens: list[CharToken] = []  # every committed character
        self.raw_text = ""  # their characters
        self._words: list[Word] = []  # closed words
        self._words_text = ""  # " ".join of their texts
        self._open: list[CharToken] = []  # the characters after the last committed space

    @property
    def frames(self) -> int:
        return self._n

    @property
    def last_label(self) -> int | None:
        return self._last

    def commit(self, path: np.ndarray, confidence: np.ndarray) -> None:
        """Append frames: their best-path labels and the probability of each chosen label."""
        if not len(path):
            return
        end = self._n + len(path)
        if end > len(self._conf):
            grown = np.zeros(max(end, 2 * len(self._conf)))
            grown[: self._n] = self._conf[: self._n]
            self._conf = grown
        self._conf[self._n : end] = confidence
        self._conf_sum += float(np.sum(confidence))
        new = self._collapse(path)
        self._n = end
        self._last = int(path[-1])
        self.tokens += new
        self.raw_text += "".join(t.char for t in new)
        for token in new:
            if token.char != " ":
                self._open.append(token)
            elif self._open:
                word = _word(self._open, self._conf[:end], 0)
                self._words.append(word)
                self._words_text = f"{self._words_text} {word.word}" if self._words_text else word.word
                self._open = []

    def _collapse(self, path: Sequence[int] | np.ndarray) -> list[CharToken]:
        labels = self._labels
        return [
            CharToken(labels[lab], t)
            for lab, t in ctc_collapse(np.asarray(path), self._blank, previous=self._last, offset=self._n)
        ]

    def transcript(
        self,
        tail: Sequence[int] | np.ndarray = (),
        tail_confidence: np.ndarray | None = None,
        *,
        exact: bool = False,
    ) -> Transcript:
        """The committed path plus `tail` (labels of the frames after it; `tail_confidence` may be shorter)."""
        tail_tokens = self._collapse(tail) if len(tail) else []
        tail_conf = np.zeros(0) if tail_confidence is None else tail_confidence
        new_words: list[Word] = []
        if self._open or tail_tokens:
            base = self._open[0].timestep if self._open else self._n
            confidence = np.concatenate([self._conf[base : self._n], tail_conf])
            run = list(self._open)
            for token in tail_tokens:
                if token.char != " ":
                    run.append(token)
                elif run:
                    new_words.append(_word(run, confidence, base))
                    run = []
            if run:
                new_words.append(_word(run, confidence, base))
        parts = [self._words_text] if self._words_text else []
        text = " ".join(parts + [w.word for w in new_words])
        frames = self._n + len(tail_conf)
        if not frames:
            conf = 0.0
        elif exact:
            conf = float(np.mean(np.concatenate([self._conf[: self._n], tail_conf])))
        else:
            conf = (self._conf_sum + float(np.sum(tail_conf))) / frames
        return Transcript(text, (*self._words, *new_words), conf)

    def text(self, tail: Sequence[int] | np.ndarray = ()) -> str:
        """Normalised text of the committed path plus `tail`, without timings."""
        tail_text = "".join(t.char for t in self._collapse(tail)) if len(tail) else ""
        return " ".join((self.raw_text + tail_text).split())


class GreedyStream:
    """Incremental greedy decoding: each chunk is decoded once, continuing from the previous chunk's last label."""

    def __init__(self, alphabet: Alphabet = ENGLISH) -> None:
        self.alphabet = alphabet
        self._path = GrowingTranscript(alphabet)

    @property
    def frames(self) -> int:
        """Time steps consumed so far."""
        return self._path.frames

    def feed(self, probs: np.ndarray) -> None:
        """Decode one more chunk of probabilities (T_chunk, n_classes)."""
        probs = check_probs(probs, self.alphabet.n_classes)
        if not len(probs):
            return
        self._path.commit(probs.argmax(axis=1), probs.max(axis=1).astype(np.float64))

    @property
    def text(self) -> str:
        """Raw collapsed text so far (cheap: no re-decoding)."""
        return self._path.raw_text

    def partial(self) -> Transcript:
        """The transcript so far, at a cost independent of the stream's length (confidence: running mean)."""
        return self._path.transcript()

    def result(self) -> GreedyResult:
        """Everything decoded so far, with words and timings (partial or final: greedy never revises).

        Equals greedy_decode of all the probabilities fed; costs a copy of the token list and a sum over the
        frames (`partial()` skips both).
        """
        transcript = self._path.transcript(exact=True)
        return GreedyResult(self._path.raw_text, tuple(self._path.tokens), transcript)
