"""The words of a grammar search (grammar.py): each emitted word or [unk] owns the letters since the last one.

flashlight's DecodeResult gives, per frame, the token (letter, space or blank) and the word label emitted there
(-1 for none). A grammar word is emitted on the frame of its closing space, an [unk] on the frame of the
out-of-grammar letter itself, so a word's letters are the CTC-collapsed letters after the previous emission up
to its own frame. Its time span and confidence come from those letters as timings.py computes them for any word
(first letter's frame to the end of the last one's; mean path probability over those frames). Consecutive
[unk]s with no grammar word between them become one `[unk]` word, from the first one's first letter to the
last one's last. flashlight's [unk] branch lacks the CTC repeat check its word branch has, so a letter held
over two frames can emit two [unk]s; the second owns no letter and merges into the first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from flashlight.lib.text.decoder import DecodeResult

from app.speech.alphabet import Alphabet
from app.speech.decoding.grammar import UNK_WORD
from app.speech.decoding.greedy import ctc_collapse
from app.speech.decoding.timings import FRAME_SECONDS, Transcript, Word

Letters = tuple[int, int, str] | None  # (first, last timestep, text) of letters no emission owns yet


class _Span(NamedTuple):
    text: str
    first: int  # timestep of the first letter
    last: int  # timestep of the last letter


class GrammarTranscript:
    """Committed words of a grammar stream (built once per prune), read with an uncommitted tail as a Transcript.

    The last committed span stays open while it is an [unk] (a later [unk] may extend it), as do committed
    letters no emission owns yet (flashlight may prune inside a word).
    """

    def __init__(self, alphabet: Alphabet, labels: Sequence[str]) -> None:
        self._blank = alphabet.blank_index
        self._space = alphabet.space_index
        self._chars = alphabet.labels
        self._texts = tuple(labels)  # word label -> text
        self._vocabulary = {text: label for label, text in enumerate(self._texts)}
        self._unk = self._texts.index(UNK_WORD)
        self._conf = np.zeros(0)  # committed frames' path probabilities
        self._conf_sum = 0.0
        self._n = 0  # committed frames
        self._last_token: int | None = None  # the CTC collapse of later frames continues from it
        self._words: list[Word] = []  # closed words
        self._unk_span: _Span | None = None  # the trailing [unk], if the committed part ends with one
        self._open: Letters = None

    def commit(self, path: np.ndarray, words: Sequence[int], confidence: np.ndarray) -> None:
        """Append pruned frames: best-path tokens, their word labels, and each token's probability."""
        if not len(path):
            return
        spans, self._open = self._group(path, words)
        self._conf = np.concatenate([self._conf, confidence])
        self._conf_sum += float(np.sum(confidence))
        self._n += len(path)
        self._last_token = int(path[-1])
        self._unk_span = spans.pop() if spans and spans[-1].text == UNK_WORD else None
        self._words += [self._word(s, self._conf, 0) for s in spans]

    def _group(self, path: Sequence[int] | np.ndarray, words: Sequence[int]) -> tuple[list[_Span], Letters]:
        """Spans of these frames (after the committed ones), the committed trailing [unk] first if it grows."""
        chars = ctc_collapse(np.asarray(path), self._blank, previous=self._last_token, offset=self._n)
        emissions = [(self._n + i, label) for i, label in enumerate(words) if label >= 0]
        spans = [self._unk_span] if self._unk_span is not None else []
        letters, c = self._open, 0
        for frame, label in emissions:
            while c < len(chars) and chars[c][1] <= frame:  # an [unk] owns the letter of its own frame
                letters = self._add_letter(letters, *chars[c])
                c += 1
            letters = self._emit(spans, letters, label)
        for char in chars[c:]:
            letters = self._add_letter(letters, *char)
        return spans, letters

    def _add_letter(self, letters: Letters, label: int, timestep: int) -> Letters:
        if label == self._space:
            return letters
        if letters is None:
            return (timestep, timestep, self._chars[label])
        return (letters[0], timestep, letters[2] + self._chars[label])

    def _emit(self, spans: list[_Span], letters: Letters, label: int) -> Letters:
        """Close `letters` as word `label` in `spans` (merging [unk] into a preceding [unk]); none are left."""
        previous_unk = bool(spans) and spans[-1].text == UNK_WORD
        if label == self._unk and previous_unk:
            if letters is not None:
                spans[-1] = spans[-1]._replace(last=letters[1])
        elif letters is not None:
            spans.append(_Span(self._texts[label], letters[0], letters[1]))
        return None

    @staticmethod
    def _word(span: _Span, confidence: np.ndarray, base: int) -> Word:
        """timings' Word for a span; confidence[i] is timestep base + i's path probability."""
        frames = confidence[span.first - base : span.last - base + 1]
        conf = float(np.mean(frames)) if len(frames) == span.last - span.first + 1 else 0.0
        start, end = round(span.first * FRAME_SECONDS, 6), round((span.last + 1) * FRAME_SECONDS, 6)
        return Word(span.text, start, end, conf)

    def transcript(
        self,
        tail: Sequence[int] | np.ndarray,
        tail_words: Sequence[int],
        tail_confidence: np.ndarray | None,
        *,
        exact: bool = False,
        final: bool = False,
    ) -> Transcript:
        """Committed words + those of an uncommitted tail (tokens, word labels, token probabilities).

        Letters no word has closed yet are a word still being spoken: a partial result shows them if they
        spell a grammar word (the next space closes it), else leaves them out; `final` (after decode_end, where
        only flashlight's fallback leaves them) makes them an [unk].
        """
        spans, letters = self._group(tail, tail_words)
        if letters is not None:
            label = self._unk if final else self._vocabulary.get(letters[2])
            if label is not None:
                self._emit(spans, letters, label)
        tail_conf = np.zeros(0) if tail_confidence is None else tail_confidence
        base = spans[0].first if spans else self._n
        confidence = np.concatenate([self._conf[base:], tail_conf])
        words = (*self._words, *(self._word(s, confidence, base) for s in spans))
        frames = self._n + len(tail_conf)
        if not frames:
            conf = 0.0
        elif exact:
            conf = float(np.mean(np.concatenate([self._conf, tail_conf])))
        else:
            conf = (self._conf_sum + float(np.sum(tail_conf))) / frames
        return Transcript(" ".join(w.word for w in words), words, conf)

    def stable_words(self, hyps: Sequence[DecodeResult], tail_frames: int) -> list[str]:
        """The words every hypothesis has emitted: a beam search only extends or drops hypotheses, and an
        emitted word is never taken back (a later [unk] may extend an [unk], which keeps its text)."""
        committed = [w.word for w in self._words] + ([UNK_WORD] if self._unk_span is not None else [])
        sequences = []
        for hyp in hyps:
            texts: list[str] = []
            after_unk = self._unk_span is not None
            for label in hyp.words[1 : tail_frames + 1]:
                if label < 0 or (label == self._unk and after_unk):
                    continue
                texts.append(self._texts[label])
                after_unk = label == self._unk
            sequences.append(texts)
        return committed + list(os.path.commonprefix(sequences))
