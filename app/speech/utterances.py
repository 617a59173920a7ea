"""A stream's decoding cut into utterances at the endpointer's cuts: what streams and whole files share.

At each cut the utterance's decoder stream is finished (its best hypothesis committed, the last word closed and
scored as at the end of input) and a fresh one takes the frames after it, so a stream's decoder memory and the
cost of a partial stay those of one utterance however long the stream runs. The LSTM state is not the
decoder's: it carries on across cuts as in upstream's streaming. The language model starts each utterance at
its sentence start, which is what follows a pause of DS_ENDPOINT_SILENCE_MS; a cut forced by the maximum length
loses the previous words as LM context, the price of a bounded utterance.

Words and times are counted from the stream's start. Utterances with no words (silence, noise decoded to
nothing) are not reported; their frames still count in the whole transcript's confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.speech.decoding import Alternative, DecoderStream, Transcript, Word
from app.speech.decoding.timings import EMPTY, FRAME_SECONDS
from app.speech.endpoint import Endpointer


def _shift_word(word: Word, frames: int) -> Word:
    # Through whole frames, so a shifted time is exactly what a decoder that started at frame 0 would give.
    def at(seconds: float) -> float:
        return round((round(seconds / FRAME_SECONDS) + frames) * FRAME_SECONDS, 6)

    return replace(word, start=at(word.start), end=at(word.end))


def shift_transcript(transcript: Transcript, frames: int) -> Transcript:
    """The transcript with its words' times moved `frames` model steps later."""
    if not frames:
        return transcript
    words = tuple(_shift_word(w, frames) for w in transcript.words)
    alternatives = tuple(
        replace(alt, words=tuple(_shift_word(w, frames) for w in alt.words))
        for alt in transcript.alternatives
    )
    return replace(transcript, words=words, alternatives=alternatives)


@dataclass(frozen=True)
class Utterance:
    """One utterance's transcript (times from the stream's start) and the frames it covers."""

    transcript: Transcript
    first_frame: int
    frames: int

    @property
    def text(self) -> str:
        return self.transcript.text

    @property
    def start(self) -> float:
        """The first word's start (seconds from the stream's start)."""
        return self.transcript.words[0].start

    @property
    def end(self) -> float:
        """The last word's end."""
        return self.transcript.words[-1].end

    def to_dict(self) -> dict[str, Any]:
        """`text`, `words`, `start`, `end`, `confidence` (and `alternatives` when asked for)."""
        body = self.transcript.to_dict()
        return {**body, "start": self.start, "end": self.end}


def join_utterances(utterances: list[Utterance], total_frames: int, conf_sum: float) -> Transcript:
    """The whole stream's transcript: every utterance's words in order, confidence over all frames."""
    if not utterances:
        return replace(EMPTY, confidence=conf_sum / total_frames if total_frames else 0.0)
    last = utterances[-1].transcript
    if len(utterances) == 1 and utterances[0].frames == total_frames:
        return last  # one utterance is the whole stream: exactly its decoder's result
    before = " ".join(u.text for u in utterances[:-1])
    words = tuple(w for u in utterances for w in u.transcript.words)
    alternatives = tuple(
        Alternative(f"{before} {alt.text}".strip(), alt.confidence, (*words[: -len(last.words)], *alt.words))
        for alt in last.alternatives
    )
    text = " ".join(u.text for u in utterances)
    return Transcript(text, words, conf_sum / total_frames, alternatives)


def merge_utterances(utterances: list[Utterance]) -> Transcript:
    """Several utterances as one transcript (what a client that reads results, not utterances, gets)."""
    frames = sum(u.frames for u in utterances)
    return join_utterances(utterances, frames, sum(u.transcript.confidence * u.frames for u in utterances))


class UtteranceDecoder:
    """A DecoderStream over a whole stream that finishes one decoder stream per utterance.

    `new_stream` makes each utterance's decoder stream (same hot words and N-best for all); with no
    `endpointer` the stream is one utterance, decoded exactly as before endpoints existed.
    """

    def __init__(self, new_stream: Callable[[], DecoderStream], endpointer: Endpointer | None) -> None:
        self._new_stream = new_stream
        self._endpointer = endpointer
        self._stream = new_stream()
        self._first = 0  # the current utterance's first frame
        self._frames = 0  # frames fed
        self._conf_sum = 0.0  # sum over finished utterances of confidence x frames
        self._done: list[Utterance] = []  # every finished utterance with words (for the final transcript)
        self._new: list[Utterance] = []  # finished since the last take_utterances()
        self._final: Transcript | None = None
        self._partial: Transcript | None = None  # until the next feed: a partial costs a search (or a round trip)
        self._text: str | None = None  # the partial's text alone, likewise
        self._limited_before = 0  # finished utterances' prunes under pressure

    @property
    def utterances(self) -> list[Utterance]:
        """Every utterance finished so far."""
        return list(self._done)

    def take_utterances(self) -> list[Utterance]:
        """The utterances finished since the last call."""
        new, self._new = self._new, []
        return new

    def feed(self, probs: np.ndarray) -> None:
        if not len(probs):
            return
        self._partial = self._text = None
        cuts = self._endpointer.push(probs) if self._endpointer is not None else []
        taken = 0
        for cut in cuts:
            self._feed_stream(probs[taken : cut - self._frames + taken])
            taken = cut - self._frames + taken
            self._frames = cut
            self._end_utterance()
            self._stream = self._new_stream()
        rest = probs[taken:]
        self._feed_stream(rest)
        self._frames += len(rest)

    def _feed_stream(self, probs: np.ndarray) -> None:
        if len(probs):
            self._stream.feed(probs)

    def _end_utterance(self) -> None:
        self._limited_before = self.limited_prunes
        frames = self._frames - self._first
        transcript = shift_transcript(self._stream.finish(), self._first)
        self._conf_sum += transcript.confidence * frames
        if transcript.words:
            utterance = Utterance(transcript, self._first, frames)
            self._done.append(utterance)
            self._new.append(utterance)
        self._first = self._frames

    @property
    def limited_prunes(self) -> int:
        """Prunes the beam search took under pressure (its beam full: noise to the model) in this stream."""
        return self._limited_before + int(getattr(self._stream, "limited_prunes", 0))

    @property
    def healthy(self) -> bool:
        """False once the decoder stream cannot go on (its decoder process died)."""
        return bool(getattr(self._stream, "healthy", True))

    def partial(self) -> Transcript:
        """The utterance in progress, as far as it goes (times from the stream's start)."""
        if self._final is not None:
            return EMPTY
        if self._partial is None:
            self._partial = shift_transcript(self._stream.partial(), self._first)
        return self._partial

    def partial_text(self) -> str:
        """The partial's text alone: a decoder process sends just that (a stream's partial message)."""
        if self._final is not None:
            return ""
        if self._partial is None and hasattr(self._stream, "partial_text"):
            if self._text is None:
                self._text = str(self._stream.partial_text())
            return self._text
        return self.partial().text

    def stable_words(self) -> list[str]:
        """Every finished utterance's words, then those of the current one no later frame can change."""
        done = [w.word for u in self._done for w in u.transcript.words]
        return done + (self._stream.stable_words() if self._final is None else [])

    def finish(self) -> Transcript:
        """End the last utterance and return the whole stream's transcript."""
        if self._final is None:
            self._end_utterance()
            self._final = join_utterances(self._done, self._frames, self._conf_sum)
        return self._final
