"""CTC beam search through flashlight-text, with a DeepSpeech `.scorer` (KenLM + vocabulary) or without an LM.

Mapping DeepSpeech's decoder (`native_client/ctcdecode`) onto flashlight's LexiconDecoder:
- Emissions are natural-log probabilities, log(p + FLT_MIN) as upstream's get_pruned_log_probs does.
- DeepSpeech scores a word with alpha * ln P_lm + beta; KenLM (and so flashlight's KenLM wrapper, which returns
  `model->BaseScore`) gives log10 P, and upstream divides by log10(e) to get ln. flashlight adds
  lm_weight * log10 P + word_score, so lm_weight = alpha * ln(10) and word_score = beta.
- The lexicon trie spells each vocabulary word with alphabet indices followed by the space label, exactly the
  paths of the scorer's own trie (labels there are index + 1); the space is flashlight's silence/word separator,
  blank is the last class, unknown words are forbidden (unk_score = -inf), as with upstream's trie.
- cutoff_top_n (40) is flashlight's beam_size_token; beam width (500 in the export metadata) is beam_size.
  Same-prefix hypotheses are merged by log-add, as upstream's prefix beam search sums their probabilities.
- flashlight only emits a word when its separator is consumed, and at decode_end keeps only hypotheses that sit
  at a word boundary. DeepSpeech instead scores the last word at the end of input. So before decode_end we feed
  one synthetic frame in which the separator is certain (log 1 = 0, all else log FLT_MIN): a hypothesis that
  ends inside a complete vocabulary word closes it and gets its LM score; one at a boundary is unaffected.
- Differences we accept: flashlight smears unigram scores through the trie as a look-ahead, adds the
  end-of-sentence LM score at decode_end, and prunes with beam_threshold; upstream does none of these.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flashlight.lib.text.decoder import (
    CriterionType,
    DecodeResult,
    LexiconDecoder,
    LexiconDecoderOptions,
    LexiconFreeDecoder,
    LexiconFreeDecoderOptions,
    SmearingMode,
    Trie,
    ZeroLM,
)

# flashlight-text 0.0.7 moved KenLM here; the old `flashlight.lib.text.decoder.KenLM` path still works but
# emits a PendingDeprecationWarning on every import.
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from app.alphabet import ENGLISH, Alphabet
from app.decoding.greedy import check_probs, ctc_collapse
from app.decoding.scorer_file import read_scorer
from app.decoding.timings import CharToken, Transcript, transcript_from_tokens

FLT_MIN = float(np.finfo(np.float32).tiny)  # upstream's NUM_FLT_MIN
LN10 = math.log(10.0)
UNK = "<unk>"


@dataclass(frozen=True)
class BeamOptions:
    """Search settings; defaults follow DeepSpeech's export metadata and decoder defaults."""

    beam_width: int = 500  # metadata_beam_width of the released models (the training flag default is 1024)
    cutoff_top_n: int = 40  # upstream default; flashlight's beam_size_token
    # flashlight drops hypotheses scoring this far (nats) below the best; upstream has no such cut. 30 nats is
    # a probability ratio of 1e-13, far below anything that can win, and keeps the search fast.
    beam_threshold: float = 30.0
    # Streaming: once this many frames are buffered, commit the best path up to `prune_look_back` frames ago
    # (flashlight moves that point further back to a word boundary) and free the older hypotheses.
    prune_interval: int = 500
    prune_look_back: int = 100


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
        self.trie = Trie(alphabet.n_classes, alphabet.space_index)
        start = self.lm.start(False)
        for i, word in enumerate(self.vocabulary):
            _, score = self.lm.score(start, i)
            self.trie.insert([*alphabet.encode(word), alphabet.space_index], i, score)
        self.trie.smear(SmearingMode.MAX)

    @property
    def lm_weight(self) -> float:
        """flashlight's lm_weight for DeepSpeech's alpha: KenLM scores are log10, alpha weighs ln."""
        return self.alpha * LN10

    @property
    def word_score(self) -> float:
        """flashlight's per-word insertion score: DeepSpeech's beta, unchanged."""
        return self.beta


def _emissions(probs: np.ndarray) -> np.ndarray:
    # C-contiguous float32, as flashlight reads the raw pointer as T x N floats.
    return np.ascontiguousarray(np.log(np.maximum(probs, FLT_MIN)), dtype=np.float32)


class BeamDecoder:
    """Beam search over (T, n_classes) probabilities; with a Scorer uses its LM and vocabulary, else no LM."""

    def __init__(
        self, alphabet: Alphabet = ENGLISH, scorer: Scorer | None = None, options: BeamOptions | None = None
    ) -> None:
        if scorer is not None and scorer.alphabet != alphabet:
            raise ValueError("the scorer was loaded for another alphabet")
        if alphabet.space_index < 0:
            raise ValueError("beam search needs a space label as word separator")
        self.alphabet = alphabet
        self.scorer = scorer
        self.options = options or BeamOptions()
        self._zero_lm = ZeroLM() if scorer is None else None

    def _new_decoder(self) -> LexiconDecoder | LexiconFreeDecoder:
        opt, a = self.options, self.alphabet
        if self.scorer is None:
            free = LexiconFreeDecoderOptions(
                opt.beam_width, opt.cutoff_top_n, opt.beam_threshold, 0.0, 0.0, True, CriterionType.CTC
            )
            return LexiconFreeDecoder(free, self._zero_lm, a.space_index, a.blank_index, [])
        s = self.scorer
        lex = LexiconDecoderOptions(
            opt.beam_width,
            opt.cutoff_top_n,
            opt.beam_threshold,
            s.lm_weight,
            s.word_score,
            -math.inf,  # unk_score: only vocabulary words, like upstream's trie
            0.0,  # sil_score: upstream has no silence bonus
            True,  # log_add: merge identical prefixes by summing, as prefix beam search does
            CriterionType.CTC,
        )
        return LexiconDecoder(lex, s.trie, s.lm, a.space_index, a.blank_index, s.unk_index, [], False)

    def stream(self) -> BeamStream:
        """Start an incremental decode (one per audio stream)."""
        return BeamStream(self)

    def decode(self, probs: np.ndarray) -> Transcript:
        """Decode a whole utterance."""
        stream = self.stream()
        stream.feed(probs, prune=False)
        return stream.finish()


class BeamStream:
    """Incremental beam search: decode_begin once, decode_step per chunk, best hypothesis for partials,
    periodic prune with a committed prefix, decode_end for the final result. Nothing is decoded twice.

    Not thread-safe; use one per stream. flashlight-text's bindings keep the GIL while decoding (two threads
    decoding at once take twice as long as one), so parallel streams need processes, not threads.
    Pruning caveat (flashlight's design): prune keeps every hypothesis alive at the commit point but drops
    their histories, so the committed prefix is the best path at pruning time and is never revised.
    """

    def __init__(self, decoder: BeamDecoder) -> None:
        self._owner = decoder
        self._alphabet = decoder.alphabet
        self._decoder = decoder._new_decoder()
        self._decoder.decode_begin()
        self._frames = 0  # frames fed
        self._pruned = 0  # frames whose path is committed (flashlight's nPrunedFrames_)
        self._committed_path: list[int] = []  # best-path token per committed frame
        self._committed_conf: list[np.ndarray] = []  # chosen-token probability per committed frame
        self._pending: list[np.ndarray] = []  # probabilities of frames not committed yet
        self._finished: Transcript | None = None

    @property
    def frames(self) -> int:
        """Time steps consumed so far."""
        return self._frames

    def feed(self, probs: np.ndarray, *, prune: bool = True) -> None:
        """Decode one more chunk (T_chunk, n_classes); prunes old hypotheses once enough frames are buffered."""
        if self._finished is not None:
            raise RuntimeError("stream already finished")
        probs = check_probs(probs, self._alphabet.n_classes)
        if not len(probs):
            return
        em = _emissions(probs)
        self._decoder.decode_step(em.ctypes.data, em.shape[0], em.shape[1])
        self._pending.append(np.asarray(probs, dtype=np.float32))
        self._frames += len(probs)
        opt = self._owner.options
        if prune and self._frames - self._pruned >= opt.prune_interval:
            self.prune(opt.prune_look_back)

    def prune(self, look_back: int) -> None:
        """Commit the best path up to (about) `look_back` frames ago and let flashlight free older states."""
        best = self._decoder.get_best_hypothesis(look_back)
        committed = len(best.tokens) - 1  # buffer index 0 is the already-committed (or initial) state
        if committed <= 0:
            return
        path = list(best.tokens[1 : committed + 1])
        self._decoder.prune(look_back)
        pending = np.concatenate(self._pending)
        self._committed_path += path
        self._committed_conf.append(pending[np.arange(committed), path].astype(np.float64))
        self._pending = [pending[committed:]]
        self._pruned += committed

    def _best_now(self) -> DecodeResult | None:
        # get_best_hypothesis stops at the last word boundary; a partial result should show the word being
        # spoken, so take the best of all hypotheses at the current frame instead.
        hyps = self._decoder.get_all_final_hypothesis()
        return max(hyps, key=lambda h: h.score) if hyps else None

    def _transcript(self, tokens_after_pruned: list[int]) -> Transcript:
        n_pending = self._frames - self._pruned
        blank = self._alphabet.blank_index
        # DecodeResult pads unreached frames with -1; read those as blank rather than index from the end.
        tail = [tok if tok >= 0 else blank for tok in tokens_after_pruned[:n_pending]]
        path = np.asarray(self._committed_path + tail, dtype=np.int64)
        conf_parts = list(self._committed_conf)
        if n_pending:
            pending = np.concatenate(self._pending) if len(self._pending) != 1 else self._pending[0]
            self._pending = [pending]
            conf_parts.append(pending[np.arange(len(tail)), tail].astype(np.float64))
        confidence = np.concatenate(conf_parts) if conf_parts else np.zeros(0)
        labels = self._alphabet.labels
        tokens = [CharToken(labels[lab], t) for lab, t in ctc_collapse(path, blank)]
        return transcript_from_tokens(tokens, confidence)

    def partial(self) -> Transcript:
        """Best transcript so far (it may still change; words in progress included)."""
        if self._finished is not None:
            return self._finished
        best = self._best_now()
        return self._transcript(list(best.tokens[1:]) if best is not None else [])

    def finish(self) -> Transcript:
        """Close the last word (synthetic separator frame), run decode_end and return the final transcript."""
        if self._finished is not None:
            return self._finished
        a = self._alphabet
        if self._owner.scorer is not None:  # the lexicon-free decoder has no words to close
            separator = np.full((1, a.n_classes), math.log(FLT_MIN), dtype=np.float32)
            separator[0, a.space_index] = 0.0
            self._decoder.decode_step(separator.ctypes.data, 1, a.n_classes)
        self._decoder.decode_end()
        # Not get_best_hypothesis(0): it cuts the path back to the last word boundary, and we want every
        # frame's token for the confidences. After decode_end the final hypotheses come sorted, best first.
        hyps = self._decoder.get_all_final_hypothesis()
        best_tokens = list(hyps[0].tokens[1:]) if hyps else []
        # Buffer layout: [0] committed/initial state, [1..n] real frames, then (with a scorer) the separator
        # frame, and decode_end's closing step; _transcript keeps the n real frames only.
        self._finished = self._transcript(best_tokens)
        self._pending = []
        return self._finished
