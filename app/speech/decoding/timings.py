"""Words, timings and confidences from a per-character CTC alignment: what the web layer serializes.

Timing facts (DeepSpeech `deepspeech.cc` / the exported metadata): one model time step is 20 ms
(hop 320 samples at 16 kHz) and upstream's per-character token start_time is timestep x 0.02 s.
Words are runs of non-space characters between spaces, as in upstream's client code.

Choices (upstream exposes no per-word end time nor per-word confidence):
- Word.start = first character's timestep x 0.02 s; Word.end = (last character's timestep + 1) x 0.02 s, the
  end of the frame that emitted the last character. CTC emits a character on one (peaky) frame, so the end is
  a lower bound of the acoustic end: trailing frames of a long vowel may be labelled blank.
- Confidence per frame = the probability the acoustic model gave to the token the decoder's path chose at
  that frame (greedy: that frame's max; beam: the chosen token, lower where the LM overruled the acoustics).
  Word.confidence = mean of that over the frames from the word's first to its last character (blanks and
  repeats between its characters included). The mean, not the min: one uncertain frame inside a long word
  would otherwise dominate. Transcript.confidence = mean over all frames of the utterance (silence included),
  a 0..1 figure rather than upstream's unbounded log-score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

FRAME_SECONDS = 0.02  # one DeepSpeech time step (feature hop 20 ms)


class CharToken(NamedTuple):
    """One emitted character and the model time step that emitted it (upstream's TokenMetadata)."""

    char: str
    timestep: int


@dataclass(frozen=True)
class Word:
    """A recognised word with its time span in seconds and a 0..1 confidence."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Alternative:
    """One of the N best transcripts (Vosk's `max_alternatives`, DeepSpeech's `num_results`).

    confidence: the share of the final beam's score mass held by this text's best hypothesis,
    exp(score - logsumexp(all final hypotheses' scores)), where a score is flashlight's total (acoustic log
    probability + alpha * LM log probability + beta per word + hot-word boosts). So it is 0..1, comparable
    across the alternatives of one decode (they are sorted by it and sum to at most 1), but not with
    Transcript.confidence, which is the mean acoustic probability of the chosen path.
    """

    text: str
    confidence: float
    words: tuple[Word, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": self.confidence, "words": [asdict(w) for w in self.words]}


@dataclass(frozen=True)
class Transcript:
    """Decoder output: normalised text (words joined by one space), its words, and a 0..1 confidence.

    alternatives: empty unless more than one was asked for; then the N best distinct texts, best first
    (alternatives[0].text == text), possibly fewer when the search holds fewer.
    """

    text: str
    words: tuple[Word, ...]
    confidence: float
    alternatives: tuple[Alternative, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the web layer (`alternatives` only when there are some)."""
        out = {"text": self.text, "words": [asdict(w) for w in self.words], "confidence": self.confidence}
        if self.alternatives:
            out["alternatives"] = [a.to_dict() for a in self.alternatives]
        return out


EMPTY = Transcript("", (), 0.0)


def words_from_tokens(
    tokens: Sequence[CharToken],
    frame_confidence: np.ndarray | None = None,
    *,
    frame_seconds: float = FRAME_SECONDS,
) -> list[Word]:
    """Split a character alignment into words at spaces; time them and score them (see module docstring)."""
    words: list[Word] = []
    run: list[CharToken] = []

    def close() -> None:
        if not run:
            return
        first, last = run[0].timestep, run[-1].timestep
        if frame_confidence is not None and len(frame_confidence) > last:
            conf = float(np.mean(frame_confidence[first : last + 1]))
        else:
            conf = 1.0 if frame_confidence is None else 0.0
        text = "".join(t.char for t in run)
        words.append(Word(text, round(first * frame_seconds, 6), round((last + 1) * frame_seconds, 6), conf))
        run.clear()

    for token in tokens:
        if token.char == " ":
            close()
        else:
            run.append(token)
    close()
    return words


def transcript_from_tokens(
    tokens: Sequence[CharToken],
    frame_confidence: np.ndarray | None = None,
    *,
    frame_seconds: float = FRAME_SECONDS,
) -> Transcript:
    """Build the serializable Transcript from a character alignment and the per-frame path confidence."""
    words = words_from_tokens(tokens, frame_confidence, frame_seconds=frame_seconds)
    if frame_confidence is not None and len(frame_confidence):
        confidence = float(np.mean(frame_confidence))
    else:
        confidence = 0.0
    return Transcript(" ".join(w.word for w in words), tuple(words), confidence)
