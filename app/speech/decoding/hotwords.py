"""Hot words (DeepSpeech 0.9's `addHotWord(word, boost)`, Vosk's `phrase_list`): validation and parsing.

A hot word is one word the alphabet can spell; its boost is a finite number in natural-log units of language
model probability, DeepSpeech's unit: the beam search adds `alpha * boost` to a hypothesis' log score each time
it completes that word (see app/speech/decoding/beam.py for how, and how that differs from upstream). Positive boosts
make the word more likely, negative ones less. Words missing from the scorer's vocabulary are allowed: they are
spelled into the search's lexicon for that request only.

Everything here raises `HotWordError` (a ValueError) with a message meant for the client; the web layer maps it
to 422. Limits keep one request from making the search slow or huge: at most MAX_HOT_WORDS words of at most
MAX_HOT_WORD_CHARS characters, |boost| <= MAX_BOOST.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.speech.alphabet import Alphabet

MAX_HOT_WORDS = 500
MAX_HOT_WORD_CHARS = 64
MAX_BOOST = 100.0
# A word listed without a boost (`hot_words=acme`, Vosk's phrase_list): e^(alpha * 10) ≈ 10^4 times more likely
# at alpha ≈ 0.93, about the distance between a common and a rare word of a large English LM; measured in
# tests/test_hotwords.py to recover a rare word without inserting it where it was not spoken.
DEFAULT_BOOST = 10.0
MAX_ALTERNATIVES = 50


class DecodeOptionError(ValueError):
    """A per-request decoding option (hot words, alternatives) is invalid; the message says why (HTTP 422)."""


class HotWordError(DecodeOptionError):
    """A hot word or its boost is invalid, or this decoder cannot apply hot words."""


@dataclass(frozen=True)
class HotWords:
    """Validated hot words: (word, boost) pairs sorted by word; hashable, so usable as a cache key."""

    items: tuple[tuple[str, float], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(word for word, _ in self.items)

    def as_dict(self) -> dict[str, float]:
        return dict(self.items)


NO_HOT_WORDS = HotWords()


def _spellable(word: str, alphabet: Alphabet) -> str | None:
    """The word as the alphabet spells it (as given, else lower-cased), or None."""
    labels = set(alphabet.labels) - {" "}
    for candidate in (word, word.lower()):
        if set(candidate) <= labels:
            return candidate
    return None


def validate_hot_words(hot_words: Mapping[str, float] | HotWords | None, alphabet: Alphabet) -> HotWords:
    """Check and normalise a {word: boost} mapping (None or {} = no hot words); raise HotWordError if invalid.

    A word is stripped, and lower-cased when only its lower-case form is in the alphabet ("ACME" -> "acme" with
    DeepSpeech's English alphabet). It must be one word (no spaces: split phrases first, as DeepSpeech ignores
    hot words with a space), at most MAX_HOT_WORD_CHARS long, spelled with the alphabet's labels only.
    """
    if hot_words is None:
        return NO_HOT_WORDS
    if isinstance(hot_words, HotWords):
        return hot_words
    if not isinstance(hot_words, Mapping):
        raise HotWordError("hot words must be a mapping of word to boost")
    if len(hot_words) > MAX_HOT_WORDS:
        raise HotWordError(f"{len(hot_words)} hot words; at most {MAX_HOT_WORDS} are allowed per request")
    seen: dict[str, float] = {}
    for raw, boost_value in hot_words.items():
        if not isinstance(raw, str):
            raise HotWordError(f"hot word {raw!r} is not a string")
        word = raw.strip()
        if not word:
            raise HotWordError("empty hot word")
        if any(ch.isspace() for ch in word):
            raise HotWordError(f"hot word {raw!r} has a space; give each word of a phrase separately")
        if len(word) > MAX_HOT_WORD_CHARS:
            raise HotWordError(f"hot word {word[:20]!r}... is longer than {MAX_HOT_WORD_CHARS} characters")
        spelled = _spellable(word, alphabet)
        if spelled is None:
            allowed = set(alphabet.labels)
            bad = "".join(sorted({ch for ch in word.lower() if ch not in allowed}))
            raise HotWordError(f"hot word {word!r} has characters the model's alphabet lacks: {bad!r}")
        if isinstance(boost_value, bool):
            raise HotWordError(f"boost for hot word {word!r} must be a number, not {boost_value!r}")
        try:
            boost = float(boost_value)
        except (TypeError, ValueError):
            raise HotWordError(f"boost for hot word {word!r} must be a number, not {boost_value!r}") from None
        if not math.isfinite(boost) or abs(boost) > MAX_BOOST:
            raise HotWordError(
                f"boost {boost_value!r} for hot word {word!r} must be finite, between -{MAX_BOOST:g} "
                f"and {MAX_BOOST:g}"
            )
        if spelled in seen:
            raise HotWordError(f"hot word {spelled!r} is given twice")
        seen[spelled] = boost
    return HotWords(tuple(sorted(seen.items())))


def validate_alternatives(alternatives: int) -> int:
    """N for N-best: an int from 1 to MAX_ALTERNATIVES."""
    if isinstance(alternatives, bool) or not isinstance(alternatives, int):
        raise DecodeOptionError(f"alternatives must be an integer, not {alternatives!r}")
    if not 1 <= alternatives <= MAX_ALTERNATIVES:
        raise DecodeOptionError(f"alternatives must be between 1 and {MAX_ALTERNATIVES}, not {alternatives}")
    return alternatives


def parse_hot_words(specs: str | Iterable[str] | None) -> dict[str, float]:
    """Parse the HTTP form `word:boost,word2:boost2,word3` (a word without `:boost` gets DEFAULT_BOOST).

    Accepts one string or several (a repeated query/form field); entries are comma-separated, blanks skipped.
    Only the syntax is checked here (a word given twice is an error); `validate_hot_words` checks the rest.
    """
    if specs is None:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    parsed: dict[str, float] = {}
    for spec in specs:
        for entry in spec.split(","):
            entry = entry.strip()
            if not entry:
                continue
            word, sep, boost_text = entry.rpartition(":")
            if not sep:
                word, boost = entry, DEFAULT_BOOST
            else:
                word = word.strip()
                try:
                    boost = float(boost_text)
                except ValueError:
                    raise HotWordError(
                        f"hot word entry {entry!r}: boost {boost_text.strip()!r} is not a number "
                        "(expected word:boost, e.g. acme:10)"
                    ) from None
            if not word:
                raise HotWordError(f"hot word entry {entry!r} has no word (expected word:boost)")
            if word in parsed:
                raise HotWordError(f"hot word {word!r} is given twice")
            parsed[word] = boost
    return parsed


def phrase_list_hot_words(phrases: object, boost: float = DEFAULT_BOOST) -> dict[str, float]:
    """Vosk's `phrase_list` (a list of phrases) as hot words: every distinct word of every phrase, one boost.

    Vosk restricts recognition to the phrases; DeepSpeech's model cannot, so the words are boosted instead.
    """
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        raise HotWordError("phrase_list must be a list of strings")
    words: dict[str, str] = {}  # lower-cased -> first spelling seen ("The" and "the" are one hot word)
    for phrase in phrases:
        for word in phrase.split():
            words.setdefault(word.lower(), word)
    return {word: boost for word in words.values()}
