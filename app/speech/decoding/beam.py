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

Hot words (per request or stream; validated in hotwords.py): with a scorer they are scored where a word
completes, by lm.py's HotWordLM (that module says how this maps to DeepSpeech 0.9's hot words).
- Without a scorer (lexicon-free search with no LM) nothing completes "words" inside the search, and a Python
  per-token LM would be called beam x classes times per frame (far too slow). There hot words rescore the final
  beam instead: each of the best RESCORE_HYPOTHESES hypotheses gains `boost` nats per occurrence of a hot word,
  and the best after that wins. It picks a hot word's spelling only if the search kept it, and does not affect
  partial results or text already committed by pruning (long streams).

Grammar (Vosk's phrase_list; grammar.py says how): the grammar's trie and bigram LM replace the scorer's (with
or without one), and grammar_words.py turns the emitted words and [unk]s into the transcript's words.

N-best: after decode_end, flashlight's final hypotheses, best first, deduplicated by text; confidence =
exp(score - logsumexp(scores of all final hypotheses)) (see timings.Alternative).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flashlight.lib.text.decoder import (
    CriterionType,
    DecodeResult,
    LexiconDecoder,
    LexiconDecoderOptions,
    LexiconFreeDecoder,
    LexiconFreeDecoderOptions,
    Trie,
    ZeroLM,
)

# flashlight-text 0.0.7 moved KenLM here; the old `flashlight.lib.text.decoder.KenLM` path still works but
# emits a PendingDeprecationWarning on every import.
from app.speech.alphabet import ENGLISH, Alphabet
from app.speech.decoding.grammar import Grammar, check_grammar, grammar_decoder
from app.speech.decoding.grammar_words import GrammarTranscript
from app.speech.decoding.greedy import GrowingTranscript, check_probs
from app.speech.decoding.hotwords import NO_HOT_WORDS, HotWords, validate_alternatives, validate_hot_words
from app.speech.decoding.lm import LN10, HotWordLM, Scorer
from app.speech.decoding.timings import Alternative, Transcript

FLT_MIN = float(np.finfo(np.float32).tiny)  # upstream's NUM_FLT_MIN
OOV_TRIE_CACHE_SIZE = 4  # tries for sets of out-of-vocabulary hot words; each is as big as the base trie
RESCORE_HYPOTHESES = 128  # lexicon-free search: final hypotheses rescored with hot words


@dataclass(frozen=True)
class BeamOptions:
    """Search settings; defaults follow DeepSpeech's export metadata and decoder defaults."""

    beam_width: int = 500  # metadata_beam_width of the released models (the training flag default is 1024)
    cutoff_top_n: int = 40  # upstream default; flashlight's beam_size_token
    # flashlight drops hypotheses scoring this far (nats) below the best; upstream has no such cut. 15 nats is a
    # probability ratio of 3e-7: on the default model's held-out set (173 utterances, beam 500 + LM) 30, 20 and 15
    # gave the same WER/CER (22.45 % / 12.30 %) and 10 a worse one; 15 decodes 3.7x faster than 30.
    beam_threshold: float = 15.0
    # Streaming: once this many frames are buffered, commit the best path up to `prune_look_back` frames ago
    # (flashlight moves that point further back to a word boundary) and free the older hypotheses. Every partial
    # converts each live hypothesis's path since the last prune, and flashlight keeps every buffered frame's
    # beam, so fewer buffered frames cost less: 10 min of speech streamed on the default model took 15.3 s at
    # 500, 12.9 at 300, 12.3 at 200, 11.8 at 150, with the same 1767 words each time; at width 2048 (random
    # weights, 1 min) the text was identical at 500 and 200 and the decoder's memory 94 MB instead of 273.
    prune_interval: int = 200
    prune_look_back: int = 100
    # Memory bound per stream, whatever the input: flashlight keeps every buffered frame's hypotheses, at most
    # beam_width of them, so a stream holds at most beam_width x buffered frames (x BYTES_PER_HYPOTHESIS_FRAME).
    # On speech the beam is thin; on noise (music, static, a random model) it stays full. Wide beams prune more
    # often to stay under this many hypothesis-frames (never below MIN_PRUNE_INTERVAL); beam 500 at interval 200
    # is 100 000 and so unchanged (its transcripts and the held-out WER/CER with it).
    max_hypothesis_frames: int = 160_000
    # Under pressure: a beam this full is noise to the model (on the default model's espeak speech the beam held
    # at most 160 of 500 hypotheses; on music or noise every one). Once it was that full at `pressure_checks`
    # counts in a row (one per PRESSURE_CHECK_FRAMES: 6 s) the stream prunes twice as often, holding half the
    # memory, until its beam thins again, and says so (BeamStream.limited_prunes). Not sooner: a few seconds of
    # speech the model cannot read fill it too (the held-out set's high voice), and their transcripts stay as
    # they were.
    pressure_fill: float = 0.9
    pressure_checks: int = 3

    @property
    def stream_prune_interval(self) -> int:
        """The prune interval under the memory bound."""
        bounded = self.max_hypothesis_frames // max(self.beam_width, 1)
        return max(MIN_PRUNE_INTERVAL, min(self.prune_interval, bounded))

    @property
    def pressure_prune_interval(self) -> int:
        """The prune interval while the beam stays full."""
        return max(MIN_PRUNE_INTERVAL, self.stream_prune_interval // 2)

    @property
    def stream_prune_look_back(self) -> int:
        return self.look_back(self.stream_prune_interval)

    def look_back(self, interval: int) -> int:
        """Frames a prune at `interval` leaves uncommitted."""
        return min(self.prune_look_back, interval // 2)

    def under_pressure(self, live_hypotheses: int) -> bool:
        return live_hypotheses >= self.pressure_fill * self.beam_width

    @property
    def stream_memory_bytes(self) -> int:
        """The most a stream's decoder holds, as measured (BYTES_PER_HYPOTHESIS_FRAME)."""
        return self.beam_width * self.stream_prune_interval * BYTES_PER_HYPOTHESIS_FRAME + STREAM_BASE_BYTES


# Measured on random (noise-like) probabilities at width 2048 with the default scorer, 4 streams at once
# (python scripts/decoder_memory.py): 36, 20 and 13 MiB per stream at prune intervals 200, 100 and 50,
# i.e. about 90-140 bytes per live hypothesis and buffered frame, and a floor of a few MiB.
BYTES_PER_HYPOTHESIS_FRAME = 128
STREAM_BASE_BYTES = 4 * 1024 * 1024
MIN_PRUNE_INTERVAL = 32
# The beam is counted (to tell pressure) at a prune at most once per this many frames (2 s): counting builds every
# hypothesis's path (get_all_final_hypothesis, 16 ms for a full beam of 2048 on noise), and on noise the stream
# prunes at nearly every frame (a prune commits only up to the best path's last word, and noise may have none for
# a while): counted at every prune, 60 s of music took 61 s to decode at width 2048 instead of 4.4.
PRESSURE_CHECK_FRAMES = 100


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
        self._oov_tries: OrderedDict[tuple[str, ...], Trie] = OrderedDict()
        self._oov_lock = threading.Lock()

    def _lexicon(self, hot: HotWords) -> tuple[Trie, Any]:
        """The trie and LM for a search with these hot words (the shared ones when there are none)."""
        s = self.scorer
        assert s is not None
        if not hot:
            return s.trie, s.lm
        oov = tuple(word for word in hot.words if not s.words.contains(word))  # sorted, as hot.words
        first_oov = len(s.vocabulary) + 1  # labels after the vocabulary and <unk>
        labels = {word: first_oov + k for k, word in enumerate(oov)}
        boosts: dict[int, float] = {}
        for word, boost in hot.items:
            boosts[labels[word] if word in labels else s.words.get_index(word)] = boost / LN10
        trie = self._oov_trie(oov) if oov else s.trie
        return trie, HotWordLM(s, boosts, frozenset(labels.values()))

    def _oov_trie(self, oov: tuple[str, ...]) -> Trie:
        """Vocabulary + these missing words (labels in order after <unk>), built once per set, LRU-cached."""
        s = self.scorer
        assert s is not None
        with self._oov_lock:
            trie = self._oov_tries.get(oov)
            if trie is None:
                first = len(s.vocabulary) + 1
                trie = s.build_trie([(word, first + k, s.oov_floor) for k, word in enumerate(oov)])
                self._oov_tries[oov] = trie
                while len(self._oov_tries) > OOV_TRIE_CACHE_SIZE:
                    self._oov_tries.popitem(last=False)
            else:
                self._oov_tries.move_to_end(oov)
            return trie

    def _new_decoder(self, trie: Trie | None = None, lm: Any = None) -> LexiconDecoder | LexiconFreeDecoder:
        opt, a = self.options, self.alphabet
        if self.scorer is None:
            free = LexiconFreeDecoderOptions(
                opt.beam_width, opt.cutoff_top_n, opt.beam_threshold, 0.0, 0.0, True, CriterionType.CTC
            )
            return LexiconFreeDecoder(free, self._zero_lm, a.space_index, a.blank_index, [])
        s = self.scorer
        trie = s.trie if trie is None else trie
        lm = s.lm if lm is None else lm
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
        return LexiconDecoder(lex, trie, lm, a.space_index, a.blank_index, s.unk_index, [], False)

    def stream(
        self,
        *,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> BeamStream:
        """Start an incremental decode (one per audio stream), with its own hot words or grammar and N for N-best.

        Raises HotWordError / DecodeOptionError (ValueErrors) for invalid options.
        """
        hot = validate_hot_words(hot_words, self.alphabet)
        check_grammar(grammar, hot, self.alphabet)
        return BeamStream(self, hot, validate_alternatives(alternatives), grammar)

    def decode(
        self,
        probs: np.ndarray,
        *,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> Transcript:
        """Decode a whole utterance, pruning as a stream does so memory stays bounded on long files."""
        stream = self.stream(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        stream.feed(probs)
        return stream.finish()


class BeamStream:
    """Incremental beam search: decode_begin once, decode_step per chunk, best hypothesis for partials,
    periodic prune with a committed prefix, decode_end for the final result. Nothing is decoded twice.

    Not thread-safe; use one per stream. flashlight-text's bindings keep the GIL while decoding (two threads
    decoding at once take twice as long as one), so parallel streams need processes, not threads.
    Pruning caveat (flashlight's design): prune keeps every hypothesis alive at the commit point but drops
    their histories, so the committed prefix is the best path at pruning time and is never revised.
    Cost: the committed prefix's words are built once (GrowingTranscript), so partial() and stable_words()
    cost the frames since the last prune (at most prune_interval), not the length of the stream.
    """

    def __init__(
        self,
        decoder: BeamDecoder,
        hot_words: HotWords = NO_HOT_WORDS,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> None:
        self._owner = decoder
        self._alphabet = decoder.alphabet
        self._hot = hot_words
        self._alternatives = alternatives
        # Keep this stream's trie and LM referenced for as long as its C++ decoder uses them.
        self._lexicon: tuple[Trie, Any] | None = None
        self._grammar_words: GrammarTranscript | None = None  # the committed words, for a grammar stream
        if grammar is not None:
            self._decoder, self._lexicon = grammar_decoder(grammar, decoder.options)
            self._grammar_words = GrammarTranscript(self._alphabet, grammar.labels)
        else:
            self._lexicon = decoder._lexicon(hot_words) if decoder.scorer is not None else None
            self._decoder = decoder._new_decoder(*(self._lexicon or ()))
        self._decoder.decode_begin()
        self._frames = 0  # frames fed
        self._pruned = 0  # frames whose path is committed (flashlight's nPrunedFrames_)
        self._interval = decoder.options.stream_prune_interval  # shorter under pressure
        self._next_check = 0  # the first frame at which a prune may count the beam again
        self._full_checks = 0  # counts in a row that found the beam full
        self.limited_prunes = 0  # prunes taken under pressure (the beam full: noise to the model)
        # Best-path token per committed frame (a list append per prune): kept for tests/test_stream_decoding.py's
        # reference collapse, which checks stable_words() against the all-frames computation.
        self._committed_path: list[int] = []
        self._committed = GrowingTranscript(self._alphabet)  # committed frames' words and confidences
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
        opt = self._owner.options
        while len(probs):
            # Split at the prune points so that any chunking of the same probabilities prunes at the same frames
            # (and so decodes the same): whole-file decoding, streams and the OpenAI SSE path agree exactly.
            room = self._interval - (self._frames - self._pruned) if prune else len(probs)
            part, probs = probs[: max(room, 1)], probs[max(room, 1) :]
            em = _emissions(part)
            self._decoder.decode_step(em.ctypes.data, em.shape[0], em.shape[1])
            self._pending.append(np.asarray(part, dtype=np.float32))
            self._frames += len(part)
            if prune and self._frames - self._pruned >= self._interval:
                self.prune(opt.look_back(self._interval))
                if self._frames >= self._next_check:
                    self._check_pressure()
                    self._next_check = self._frames + PRESSURE_CHECK_FRAMES

    def _check_pressure(self) -> None:
        """After a prune (at frames that depend on the probabilities alone, so any chunking decides alike): a beam
        full for long prunes at the shorter interval until it thins."""
        opt = self._owner.options
        full = opt.under_pressure(len(self._decoder.get_all_final_hypothesis()))
        self._full_checks = self._full_checks + 1 if full else 0
        limited = self._full_checks >= opt.pressure_checks
        self._interval = opt.pressure_prune_interval if limited else opt.stream_prune_interval
        self.limited_prunes += limited

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
        confidence = pending[np.arange(committed), path].astype(np.float64)
        self._committed.commit(np.asarray(path), confidence)
        if self._grammar_words is not None:
            self._grammar_words.commit(np.asarray(path), best.words[1 : committed + 1], confidence)
        self._pending = [pending[committed:]]
        self._pruned += committed

    def _best_now(self) -> DecodeResult | None:
        # get_best_hypothesis stops at the last word boundary; a partial result should show the word being
        # spoken, so take the best of all hypotheses at the current frame instead.
        hyps = self._decoder.get_all_final_hypothesis()
        return max(hyps, key=lambda h: h.score) if hyps else None

    def _tail(self, tokens_after_pruned: Sequence[int]) -> list[int]:
        # DecodeResult pads unreached frames with -1; read those as blank rather than index from the end.
        blank = self._alphabet.blank_index
        return [tok if tok >= 0 else blank for tok in tokens_after_pruned[: self._frames - self._pruned]]

    def _text(self, tokens_after_pruned: Sequence[int]) -> str:
        """Normalised text of a hypothesis (committed path + its tokens), without timings."""
        return self._committed.text(self._tail(tokens_after_pruned))

    def _transcript(
        self, hyp: DecodeResult | None, *, exact: bool = False, final: bool = False
    ) -> Transcript:
        """Committed path + this hypothesis's frames as a Transcript; `exact`: see GrowingTranscript; `final`:
        after decode_end (a grammar stream's unclosed letters become [unk], see GrammarTranscript)."""
        tail = self._tail(list(hyp.tokens[1:]) if hyp is not None else [])
        tail_conf = None
        if self._frames - self._pruned:
            pending = np.concatenate(self._pending) if len(self._pending) != 1 else self._pending[0]
            self._pending = [pending]
            tail_conf = pending[np.arange(len(tail)), tail].astype(np.float64)
        if self._grammar_words is None:
            return self._committed.transcript(tail, tail_conf, exact=exact)
        # The frame after the real ones is finish()'s separator: the last grammar word is emitted there.
        words = list(hyp.words[1 : self._frames - self._pruned + 2]) if hyp is not None else []
        return self._grammar_words.transcript(tail, words, tail_conf, exact=exact, final=final)

    def stable_words(self) -> list[str]:
        """The words before the last space of the common text prefix of every hypothesis in the beam.

        Every later hypothesis, the final one included, extends one of the current hypotheses (a beam search only
        extends or drops them), so these words can no longer change. Frames already pruned are the committed path,
        shared by every hypothesis.
        """
        hyps = self._decoder.get_all_final_hypothesis()
        frames = self._frames
        if not hyps or not frames:
            return []
        if self._grammar_words is not None:
            return self._grammar_words.stable_words(hyps, frames - self._pruned)
        alphabet = self._alphabet
        blank = alphabet.blank_index
        # The committed path's collapse is shared: only the frames since the last prune differ between
        # hypotheses (collapsed here all at once, continuing from the committed path's last label).
        tail_frames = frames - self._pruned
        paths = np.full((len(hyps), tail_frames), blank, dtype=np.int64)
        for row, hyp in zip(paths, hyps, strict=True):
            tokens = hyp.tokens[1 : tail_frames + 1]
            row[: len(tokens)] = tokens
        paths[paths < 0] = blank  # frames a hypothesis has not reached read as blank, as BeamStream does
        before = np.empty_like(paths)
        last = self._committed.last_label
        before[:, :1] = blank if last is None else last
        before[:, 1:] = paths[:, :-1]
        starts = (paths != blank) & (paths != before)  # CTC collapse, every hypothesis at once
        labels = {tuple(row[keep].tolist()) for row, keep in zip(paths, starts, strict=True)}
        common = os.path.commonprefix(list(labels))
        text = self._committed.raw_text + "".join(alphabet.labels[label] for label in common)
        return text[: text.rfind(" ") + 1].split()

    def partial(self) -> Transcript:
        """Best transcript so far (it may still change; words in progress included, with a grammar once spelled)."""
        if self._finished is not None:
            return self._finished
        return self._transcript(self._best_now())

    def finish(self) -> Transcript:
        """Close the last word (synthetic separator frame), run decode_end and return the final transcript."""
        if self._finished is not None:
            return self._finished
        a = self._alphabet
        # The lexicon-free decoder has no words to close.
        if self._owner.scorer is not None or self._grammar_words is not None:
            separator = np.full((1, a.n_classes), math.log(FLT_MIN), dtype=np.float32)
            separator[0, a.space_index] = 0.0
            self._decoder.decode_step(separator.ctypes.data, 1, a.n_classes)
        self._decoder.decode_end()
        # Not get_best_hypothesis(0): it cuts the path back to the last word boundary, and we want every
        # frame's token for the confidences. After decode_end the final hypotheses come sorted, best first.
        ranked = self._ranked(self._decoder.get_all_final_hypothesis())
        # Buffer layout: [0] committed/initial state, [1..n] real frames, then (with a lexicon) the separator
        # frame, and decode_end's closing step; _transcript keeps the n real frames' tokens only.
        transcript = self._transcript(ranked[0][1] if ranked else None, exact=True, final=True)
        if self._alternatives > 1:
            transcript = replace(transcript, alternatives=self._n_best(ranked, transcript))
        self._finished = transcript
        self._pending = []
        return self._finished

    def _ranked(self, hyps: list[DecodeResult]) -> list[tuple[float, DecodeResult]]:
        """(score, hypothesis), best first; without a scorer, hot words rescore the best RESCORE_HYPOTHESES."""
        if self._owner.scorer is not None or not self._hot:
            ranked = [(float(h.score), h) for h in hyps]
        else:
            boosts = self._hot.as_dict()
            ranked = []
            for h in hyps[:RESCORE_HYPOTHESES]:
                words = self._text(list(h.tokens[1:])).split()
                ranked.append((float(h.score) + sum(boosts.get(w, 0.0) for w in words), h))
        ranked.sort(key=lambda pair: -pair[0])  # stable: ties keep flashlight's order
        return ranked

    def _n_best(self, ranked: list[tuple[float, DecodeResult]], best: Transcript) -> tuple[Alternative, ...]:
        """Up to N distinct texts, best first, with their share of the final beam's score mass."""
        if not ranked:
            return (Alternative(best.text, 1.0, best.words),)
        scores = np.array([score for score, _ in ranked])
        top = scores.max()
        total = float(top + np.log(np.exp(scores - top).sum()))
        out: list[Alternative] = []
        seen: set[str] = set()
        for score, hyp in ranked:
            transcript = best if not out else self._transcript(hyp, final=True)
            if transcript.text in seen:
                continue
            seen.add(transcript.text)
            out.append(Alternative(transcript.text, math.exp(score - total), transcript.words))
            if len(out) == self._alternatives:
                break
        return tuple(out)
