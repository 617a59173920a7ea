"""A DeepSpeech `.scorer` loaded for flashlight-text's beam search, and one request's hot words on top of it.

Hot words (per request or stream; validated in hotwords.py):
- DeepSpeech 0.9 (ctc_beam_search_decoder.cpp, DecoderState::next) adds a hot word's boost where a word
  completes: score = (ln P_lm(ngram) + sum of the boosts of the hot words in the ngram) * alpha + beta. We add
  the same alpha * boost when the hot word completes, through `HotWordLM`, a thin flashlight LM around the
  shared KenLM that returns log10 P + boost / ln(10) for hot words (lm_weight = alpha * ln 10, so exactly
  alpha * boost nats). Difference: upstream re-adds the boost while the word stays in the n-gram window (for
  each of the next order - 1 words too); we add it once, so its effect does not depend on the LM's order or on
  what follows. Upstream also skips the boost when the last word is scored at the end of input; we do not.
- Why not raise the hot word's trie score: in flashlight's LexiconDecoder the trie score is only a look-ahead.
  Each letter adds lm_weight * (node max - previous node max) and the word's completion adds lm_weight *
  (LM score - previous node max), so the trie scores cancel out and a word's total is its LM score whatever
  the trie says. The boost has to come from the LM at completion, as upstream does.
- Words missing from the scorer's vocabulary: the LexiconDecoder can only spell what its trie holds, so such
  a request gets a trie of the vocabulary plus those words (labels after <unk>). flashlight's Python binding
  cannot copy or share trie nodes (TrieNode.children / Trie.get_root hand C++-owned nodes to Python, which frees
  them: a double free), so that trie is built in full, O(vocabulary) (~0.07 s at 20k words), and cached per set
  of missing words (beam.py's OOV_TRIE_CACHE_SIZE, LRU); in-vocabulary hot words need no trie at all. HotWordLM scores a
  missing word as KenLM's <unk> (whose mass stands for every unseen word), floored at the rarest vocabulary
  word's unigram, plus the boost; that floor is also its trie look-ahead, independent of the boost, so the
  cached trie serves any boosts.
- The shared Scorer (KenLM, base trie) is never modified: requests without hot words use it directly; others
  get their own HotWordLM (their boosts) and a trie that is either the base one or an immutable cached one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flashlight.lib.text.decoder import LM, SmearingMode, Trie

# flashlight-text 0.0.7 moved KenLM here; the old `flashlight.lib.text.decoder.KenLM` path still works but
# emits a PendingDeprecationWarning on every import.
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from app.speech.alphabet import ENGLISH, Alphabet
from app.speech.decoding.scorer_file import read_scorer

LN10 = math.log(10.0)
UNK = "<unk>"


class Scorer:
    """A loaded `.scorer`: KenLM (read from the scorer file as is) plus the vocabulary trie for flashlight.

    KenLM's loader only reads the model bytes its header describes and ignores what follows, so the file is
    passed to KenLM unchanged (verified in tests: scores equal those of the bare KenLM binary). Immutable
    after loading; one instance serves every stream.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        alphabet: Alphabet = ENGLISH,
        *,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> None:
        info = read_scorer(path, alphabet)
        self.path = Path(path)
        self.alphabet = alphabet
        self.alpha = info.alpha if alpha is None else float(alpha)
        self.beta = info.beta if beta is None else float(beta)
        self.vocabulary = info.vocabulary
        # Word dictionary for the flashlight<->KenLM index map; KenLM maps unknown strings to its <unk>.
        self.words = Dictionary(list(self.vocabulary) + [UNK])
        self.unk_index = self.words.get_index(UNK)
        self.lm = KenLM(str(self.path), self.words)
        # Lexicon trie. Leaf score = the word's unigram log10 P after <s>, smeared up with MAX so partial words
        # carry a look-ahead estimate (flashlight's documented recipe).
        start = self.lm.start(False)
        self.unigrams = tuple(float(self.lm.score(start, i)[1]) for i in range(len(self.vocabulary)))
        # LM score floor (and trie look-ahead) of a hot word missing from the vocabulary: the rarest word's.
        self.oov_floor = min(self.unigrams, default=float(self.lm.score(start, self.unk_index)[1]))
        self.trie = self.build_trie()

    def build_trie(self, extra: Sequence[tuple[str, int, float]] = ()) -> Trie:
        """A new lexicon trie: the vocabulary (label = word index, score = unigram) plus `extra` (word, label,
        score) entries, smeared with MAX. Leaves `self.trie` alone."""
        index = {label: i for i, label in enumerate(self.alphabet.labels)}
        space = self.alphabet.space_index
        trie = Trie(self.alphabet.n_classes, space)
        for i, (word, score) in enumerate(zip(self.vocabulary, self.unigrams, strict=True)):
            trie.insert([*(index[ch] for ch in word), space], i, score)
        for word, label, score in extra:
            trie.insert([*(index[ch] for ch in word), space], label, score)
        trie.smear(SmearingMode.MAX)
        return trie

    @property
    def lm_weight(self) -> float:
        """flashlight's lm_weight for DeepSpeech's alpha: KenLM scores are log10, alpha weighs ln."""
        return self.alpha * LN10

    @property
    def word_score(self) -> float:
        """flashlight's per-word insertion score: DeepSpeech's beta, unchanged."""
        return self.beta


class HotWordLM(LM):  # type: ignore[misc]
    """The scorer's KenLM with one request's hot-word boosts (module docstring: how they map to DeepSpeech's).

    `boosts`: trie label -> boost in log10 units (boost / ln 10); `oov`: labels of hot words missing from the
    vocabulary, scored as KenLM's <unk> floored at `Scorer.oov_floor`. Holds no mutable state (LM states are
    KenLM's, created per decoder), so it never leaks one request's words into another's search.
    """

    def __init__(self, scorer: Scorer, boosts: dict[int, float], oov: frozenset[int]) -> None:
        LM.__init__(self)
        self._lm = scorer.lm
        self._unk = scorer.unk_index
        self._floor = scorer.oov_floor
        self._boosts = boosts
        self._oov = oov

    def start(self, start_with_nothing: bool) -> Any:
        return self._lm.start(start_with_nothing)

    def score(self, state: Any, token_index: int) -> tuple[Any, float]:
        if token_index in self._oov:
            next_state, score = self._lm.score(state, self._unk)
            return next_state, max(score, self._floor) + self._boosts[token_index]
        next_state, score = self._lm.score(state, token_index)
        boost = self._boosts.get(token_index)
        return next_state, score if boost is None else score + boost

    def finish(self, state: Any) -> tuple[Any, float]:
        return self._lm.finish(state)
