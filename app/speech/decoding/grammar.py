"""Vosk's grammar (`phrase_list`): recognise only the phrases' words, and `[unk]` for anything else.

What Vosk does (vosk-api src/recognizer.cc, Recognizer::UpdateGrammarFst): it estimates a bigram LM
(LanguageModelEstimator, ngram_order 2, discount 0.5) from the phrases, each phrase one sentence, ignores words
missing from the model's vocabulary with a warning, and decodes with that LM as the only vocabulary; `[unk]` is
a word the list may contain. Here:
- `parse_grammar` lower-cases and splits the phrases; words the alphabet cannot spell are dropped with a reason
  (`Grammar.dropped`, Vosk's warning). `[unk]` is always allowed, as if the list held the phrase "[unk]".
- `GrammarLM` is that bigram, written by hand (no library estimates an LM from a word list in-process): counts
  with sentence start and end, as Kaldi's estimator adds them; each history's counts are discounted by 0.5
  (absolute discounting) and the freed mass goes to the unigram distribution (interpolated, so every history's
  distribution sums to 1 without a special case where a history saw every word). Vosk's copy of the estimator
  instead multiplies every count by the discount and adds a 0.5 backoff arc, which is not normalised.
- The search is flashlight's LexiconDecoder over a trie of the grammar's words. Out-of-grammar speech is its own
  unknown-word mechanism: a letter that leads to a trie node that ends no word emits `unk` (adding unk_score)
  and returns to the root. So that any letter can do that, every letter gets a root node (an entry spelled
  [letter, UNREACHABLE], a class the acoustic model never emits). The decoder thus emits one [unk] per
  out-of-grammar letter; grammar_words.py merges a run of them into one `[unk]` word, and GrammarLM charges
  the run's LM probability once (an [unk] right after [unk] scores log 1).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from flashlight.lib.text.decoder import (
    LM,
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    LMState,
    SmearingMode,
    Trie,
)

from app.speech.alphabet import ENGLISH, Alphabet
from app.speech.decoding.hotwords import (
    DecodeOptionError,
    HotWords,
    validate_alternatives,
    validate_hot_words,
)

if TYPE_CHECKING:
    from app.speech.decoding.beam import BeamOptions

UNK_WORD = "[unk]"
MAX_GRAMMAR_PHRASES = 1000
MAX_GRAMMAR_CHARS = 10_000  # all phrases together: bounds the trie and the LM (a few ms to build)
GRAMMAR_CACHE_SIZE = 8  # grammars whose trie and LM are kept for reuse
DISCOUNT = 0.5  # Vosk's LanguageModelOptions.discount
# flashlight's lm_weight for GrammarLM's log10 scores: ln 10 weighs the grammar's ln P by 1, as a probability
# (measured with UNK_LETTER_SCORE below: weights 0.5, 0.7, 1 and 2 scored 6.4, 5.7, 5.7 and 14 % at their best).
GRAMMAR_LM_WEIGHT = math.log(10.0)
# flashlight's unk_score: nats added per [unk] letter. Too small and [unk] swallows spoken grammar words; too
# large and out-of-grammar speech is forced into grammar words ("open" -> "on", "phone" -> "one"). Measured on
# the default model with espeak-ng speech: 45 utterances for 3 grammars (3 commands; 10 digits + yes/no; 20
# home-automation phrases), in, partly in and out of the grammar, errors counted against the ideal output
# (grammar words kept, each run of other words one [unk]). Per-letter scores -1, -2, -3, -4, -5, -5.5, -6,
# -6.5, -7, -7.5, -8, -10 gave 37, 18, 14, 10, 9.6, 8.3, 6.4, 5.7, 7.0, 10, 16, 22 % word errors; every
# utterance wholly in its grammar came back exactly at all of them. -6 sits in the best range (-5.5 to -7).
# The LM's [unk] probability is what the estimator gives the phrase "[unk]" (Vosk's, with "[unk]" listed).
UNK_LETTER_SCORE = -6.0


class GrammarError(DecodeOptionError):
    """The phrase list is not a usable grammar, or this decoder cannot apply one (HTTP 422)."""


@dataclass(frozen=True)
class Grammar:
    """Validated phrases as word tuples (the "[unk]" phrase included); hashable, so a cache key."""

    phrases: tuple[tuple[str, ...], ...]
    alphabet: Alphabet = ENGLISH
    dropped: tuple[tuple[str, str], ...] = ()  # (word or phrase, why it was left out): Vosk's warnings

    @property
    def words(self) -> tuple[str, ...]:
        """The vocabulary: distinct words, sorted, without [unk]; word i has LM/trie label i."""
        return tuple(sorted({w for phrase in self.phrases for w in phrase if w != UNK_WORD}))

    @property
    def labels(self) -> tuple[str, ...]:
        """Label -> word: the vocabulary, then [unk] (label `len(words)`)."""
        return (*self.words, UNK_WORD)


def _spelling_problem(word: str, alphabet: Alphabet) -> str | None:
    """Why the alphabet cannot spell `word` (None if it can)."""
    allowed = set(alphabet.labels) - {" "}
    bad = "".join(sorted(set(word) - allowed))
    return f"has characters the model's alphabet lacks: {bad!r}" if bad else None


def parse_grammar(phrases: object, alphabet: Alphabet = ENGLISH) -> Grammar:
    """Vosk's phrase list (a list of strings) as a Grammar; raise GrammarError with a client message if unusable."""
    if isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
        raise GrammarError(f"phrase_list must be a list of strings, not {type(phrases).__name__}")
    if not phrases:
        raise GrammarError("phrase_list is empty; give at least one phrase")
    if len(phrases) > MAX_GRAMMAR_PHRASES:
        raise GrammarError(
            f"phrase_list has {len(phrases)} phrases; at most {MAX_GRAMMAR_PHRASES} are allowed"
        )
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str):
            raise GrammarError(f"phrase_list entry {i} is not a string: {phrase!r}")
    chars = sum(len(p) for p in phrases)
    if chars > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"phrase_list has {chars} characters; at most {MAX_GRAMMAR_CHARS} are allowed")
    kept: list[tuple[str, ...]] = []
    dropped: dict[str, str] = {}
    for phrase in phrases:
        words = []
        for word in phrase.lower().split():
            problem = None if word == UNK_WORD else _spelling_problem(word, alphabet)
            if problem is None:
                words.append(word)
            else:
                dropped.setdefault(word, problem)
        if words:
            kept.append(tuple(words))
        else:
            dropped.setdefault(phrase, "has no word the model can spell" if phrase.strip() else "is empty")
    if not any(w != UNK_WORD for phrase in kept for w in phrase):
        why = "; ".join(f"{item!r} {reason}" for item, reason in list(dropped.items())[:5])
        raise GrammarError(f"phrase_list has no word the model can spell ({why or 'only [unk]'})")
    if (UNK_WORD,) not in kept:
        kept.append((UNK_WORD,))  # [unk] is always allowed, as if the list held it (see module docstring)
    return Grammar(tuple(kept), alphabet, tuple(dropped.items()))


def check_beam_options(
    alphabet: Alphabet, hot_words: Any, alternatives: int, grammar: Grammar | None
) -> HotWords:
    """A beam search's per-request options, validated (HotWordError / DecodeOptionError / GrammarError)."""
    hot = validate_hot_words(hot_words, alphabet)
    validate_alternatives(alternatives)
    check_grammar(grammar, hot, alphabet)
    return hot


def check_grammar(grammar: Grammar | None, hot_words: HotWords, alphabet: Alphabet) -> Grammar | None:
    """A stream's grammar option: a Grammar for this alphabet, and not together with hot words."""
    if grammar is None:
        return None
    if not isinstance(grammar, Grammar):
        raise GrammarError("grammar must be a Grammar (see parse_grammar)")
    if hot_words:
        raise GrammarError("hot_words and a grammar phrase_list cannot be combined")
    if grammar.alphabet != alphabet:
        raise GrammarError("the grammar was parsed for another alphabet than the model's")
    return grammar


class Bigram:
    """The grammar's bigram estimate, P(word | previous word) with <s> and </s> (GrammarLM serves its log10).

    Labels: words 0..V-1 and [unk] V as in `Grammar.labels`; event V+1 is </s>; history 0 is <s>, 1 + label
    a word. Interpolated absolute discounting: P(w|h) = max(c(h,w) - D, 0) / c(h) + D n(h) / c(h) * P1(w),
    n(h) the number of distinct events after h, P1 the unigram distribution of all events (</s> included).
    """

    def __init__(self, grammar: Grammar, discount: float = DISCOUNT) -> None:
        index = {word: i for i, word in enumerate(grammar.labels)}
        self.n_labels = len(index)
        self.end = self.n_labels  # </s>
        pairs: Counter[tuple[int, int]] = Counter()
        for phrase in grammar.phrases:
            labels = [index[w] for w in phrase]
            histories = [0] + [1 + lab for lab in labels]
            pairs.update(zip(histories, [*labels, self.end], strict=True))
        unigram: Counter[int] = Counter()
        totals: Counter[int] = Counter()
        types: Counter[int] = Counter()
        for (history, event), count in pairs.items():
            unigram[event] += count
            totals[history] += count
            types[history] += 1
        n = sum(unigram.values())
        self.unigram = [unigram[e] / n for e in range(self.n_labels + 1)]
        # Per history: the weight of the unigram distribution, and the seen events' probabilities.
        self.backoff = [
            discount * types[h] / totals[h] if totals[h] else 1.0 for h in range(self.n_labels + 1)
        ]
        self.seen: list[dict[int, float]] = [{} for _ in range(self.n_labels + 1)]
        for (history, event), count in pairs.items():
            direct = (count - discount) / totals[history]
            self.seen[history][event] = direct + self.backoff[history] * self.unigram[event]

    def prob(self, history: int, event: int) -> float:
        """P(event | history); history 0 = <s>, else 1 + label; event a label or `end`."""
        p = self.seen[history].get(event)
        return self.backoff[history] * self.unigram[event] if p is None else p


class GrammarLM(LM):  # type: ignore[misc]
    """Bigram as a flashlight LM: one LMState per history (flashlight merges hypotheses by state identity).

    An [unk] right after [unk] scores 0 (log10 1): the decoder emits one [unk] per letter, and the run is one
    word whose LM probability was paid at its first letter. Immutable after construction, so streams share it.
    """

    def __init__(self, grammar: Grammar) -> None:
        LM.__init__(self)
        self.bigram = bg = Bigram(grammar)
        self.unk = bg.n_labels - 1
        n_hist = bg.n_labels + 1
        # log10 of Bigram.prob, kept sparse (a 1000-phrase grammar may have thousands of words).
        self._seen = [{e: math.log10(p) for e, p in seen.items()} for seen in bg.seen]
        self._backoff = [math.log10(b) for b in bg.backoff]
        self._unigram = [math.log10(p) if p > 0 else -math.inf for p in bg.unigram]
        self._states = [LMState() for _ in range(n_hist)]
        self._ends = [LMState() for _ in range(n_hist)]  # after </s>: one per history, as KenLM's differ
        self._history = {state: h for h, state in enumerate(self._states)}

    def log10_prob(self, history: int, event: int) -> float:
        """log10 Bigram.prob, from the sparse tables."""
        p = self._seen[history].get(event)
        return self._backoff[history] + self._unigram[event] if p is None else p

    def unigram_log10(self, label: int) -> float:
        """log10 P1(label): the trie's look-ahead score for the word."""
        return self._unigram[label]

    def start(self, start_with_nothing: bool) -> Any:
        return self._states[0]

    def score(self, state: Any, token_index: int) -> tuple[Any, float]:
        h = self._history[state]
        if token_index == self.unk and h == 1 + self.unk:
            return state, 0.0
        return self._states[1 + token_index], self.log10_prob(h, token_index)

    def finish(self, state: Any) -> tuple[Any, float]:
        h = self._history[state]
        return self._ends[h], self.log10_prob(h, self.bigram.end)


@lru_cache(maxsize=GRAMMAR_CACHE_SIZE)
def grammar_lexicon(grammar: Grammar) -> tuple[Trie, GrammarLM]:
    """The grammar's trie and LM, built once per grammar (Vosk clients reuse one per utterance) and shared."""
    a = grammar.alphabet
    lm = GrammarLM(grammar)
    index = {label: i for i, label in enumerate(a.labels)}
    unreachable = a.n_classes  # a class past the acoustic model's outputs: emissions never hold it
    trie = Trie(a.n_classes + 1, a.space_index)
    for label, word in enumerate(grammar.words):
        trie.insert([*(index[ch] for ch in word), a.space_index], label, lm.unigram_log10(label))
    for i in range(a.size):
        if i != a.space_index:
            # Only makes the node [letter] exist, so the letter can start an [unk]. Score -inf: smeared with
            # MAX it adds nothing to a real word's look-ahead, and a path into a node that starts no word dies.
            trie.insert([i, unreachable], lm.unk, -math.inf)
    trie.smear(SmearingMode.MAX)
    return trie, lm


def grammar_decoder(grammar: Grammar, opt: BeamOptions) -> tuple[LexiconDecoder, tuple[Trie, GrammarLM]]:
    """A LexiconDecoder restricted to the grammar; keep the returned (trie, LM) alive as long as it."""
    trie, lm = grammar_lexicon(grammar)
    a = grammar.alphabet
    options = LexiconDecoderOptions(
        opt.beam_width,
        opt.cutoff_top_n,
        opt.beam_threshold,
        GRAMMAR_LM_WEIGHT,
        0.0,  # word_score: no insertion bonus; the LM's probabilities alone weigh the words
        UNK_LETTER_SCORE,
        0.0,  # sil_score
        True,  # log_add, as the scorer's search
        CriterionType.CTC,
    )
    return LexiconDecoder(options, trie, lm, a.space_index, a.blank_index, lm.unk, [], False), (trie, lm)
