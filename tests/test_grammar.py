"""Vosk-style grammar (phrase_list as the only vocabulary, `[unk]` for the rest) on the trained default model.

Speech is espeak-ng's, through the real acoustic model (probabilities computed as Engine.transcribe does), so
these check the search on what the model really emits: in-grammar phrases come back exactly, out-of-grammar
speech becomes [unk], a phrase with one foreign word keeps its grammar words around one [unk].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile

from app.settings import Settings
from app.speech.alphabet import ENGLISH, Alphabet
from app.speech.decoding import DecodeOptionError, Grammar, GreedyDecoder, Transcript, parse_grammar
from app.speech.decoding.beam import BeamDecoder, BeamOptions
from app.speech.decoding.grammar import MAX_GRAMMAR_CHARS, MAX_GRAMMAR_PHRASES, UNK_WORD, Bigram, GrammarLM
from app.speech.engine import Engine
from tests.support.audio import speak

PHRASES = ["turn on the kitchen lights", "turn off the kitchen lights", "what time is it"]
SPOKEN = [
    "turn on the kitchen lights",
    "what time is it",
    "the quick brown fox jumps over the lazy dog",
    "turn on the bedroom lights",
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(Settings(model_dir="models/default", backend="numpy"))


def model_probs(engine: Engine, samples: np.ndarray) -> np.ndarray:
    """The acoustic model's (T, 29) probabilities for a whole file, windowed as Engine.transcribe runs it."""
    return engine.probabilities(samples)


@pytest.fixture(scope="module")
def speech(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Probabilities of each SPOKEN sentence."""
    folder = tmp_path_factory.mktemp("grammar_speech")
    out = {}
    for i, text in enumerate(SPOKEN):
        samples, rate = soundfile.read(speak(text, folder / f"{i}.wav"), dtype="float32")
        assert rate == 16000
        out[text] = model_probs(engine, samples)
    return out


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return parse_grammar(PHRASES)


def decode(engine: Engine, probs: np.ndarray, grammar: Grammar, alternatives: int = 1) -> Transcript:
    stream = engine.decoder.stream(grammar=grammar, alternatives=alternatives)
    stream.feed(probs)
    return stream.finish()


@pytest.mark.parametrize("text", ["turn on the kitchen lights", "what time is it"])
def test_in_grammar_speech_comes_back_exactly(
    engine: Engine, speech: dict[str, np.ndarray], grammar: Grammar, text: str
) -> None:
    result = decode(engine, speech[text], grammar, alternatives=3)
    assert result.text == text
    assert [w.word for w in result.words] == text.split()
    for before, word in zip((None, *result.words), result.words, strict=False):
        assert 0 <= word.start < word.end and 0 < word.confidence <= 1
        assert before is None or before.end <= word.start
    assert result.alternatives[0].text == text and result.alternatives[0].confidence > 0.5


def test_out_of_grammar_speech_yields_unk(
    engine: Engine, speech: dict[str, np.ndarray], grammar: Grammar
) -> None:
    result = decode(engine, speech["the quick brown fox jumps over the lazy dog"], grammar)
    words = [w.word for w in result.words]
    assert set(words) <= {*grammar.words, UNK_WORD} and UNK_WORD in words, result.text
    assert result.text == " ".join(words)
    # A run of out-of-grammar letters (one [unk] each inside the search) is one [unk] word, over several letters.
    assert all((a, b) != (UNK_WORD, UNK_WORD) for a, b in zip(words, words[1:], strict=False))
    longest = max(w.end - w.start for w in result.words if w.word == UNK_WORD)
    assert longest > 0.3


def test_a_foreign_word_inside_a_phrase_is_one_unk(
    engine: Engine, speech: dict[str, np.ndarray], grammar: Grammar
) -> None:
    # Both sides of the [unk] letter penalty: small enough that "bedroom" becomes [unk] rather than "kitchen",
    # large enough that the grammar words around it are not swallowed by the [unk].
    assert decode(engine, speech["turn on the bedroom lights"], grammar).text == "turn on the [unk] lights"


def test_without_a_scorer_the_grammar_decodes_the_same(
    engine: Engine, speech: dict[str, np.ndarray], grammar: Grammar
) -> None:
    assert engine.decoder.beam.scorer is not None  # type: ignore[attr-defined]
    bare = BeamDecoder(ENGLISH, None)
    for text, probs in speech.items():
        assert bare.decode(probs, grammar=grammar).text == decode(engine, probs, grammar).text, text


def test_chunked_stream_equals_one_shot_and_stable_words_only_grow(
    engine: Engine, speech: dict[str, np.ndarray], grammar: Grammar
) -> None:
    # Long enough that the stream prunes (every 200 frames) several times, committing words.
    probs = np.concatenate([speech[text] for text in SPOKEN * 2])
    beam: BeamDecoder = engine.decoder.beam  # type: ignore[attr-defined]
    whole = beam.stream(grammar=grammar)
    whole.feed(probs)
    one_shot = whole.finish()
    stream = beam.stream(grammar=grammar)
    stable: list[str] = []
    for start in range(0, len(probs), 16):
        stream.feed(probs[start : start + 16])
        partial, now = stream.partial(), stream.stable_words()
        assert now[: len(stable)] == stable and partial.text.split()[: len(now)] == now
        stable = now
    assert stream._pruned > 0
    final = stream.finish()
    assert final == one_shot
    assert final.text.split()[: len(stable)] == stable
    unpruned = beam.stream(grammar=grammar)
    unpruned.feed(probs, prune=False)
    assert unpruned.finish().text == final.text
    assert final.text.startswith("turn on the kitchen lights what time is it")


@pytest.mark.parametrize(
    ("phrases", "message"),
    [
        ("turn on the lights", "must be a list of strings"),
        ({"turn": 1}, "must be a list of strings"),
        ([], "is empty"),
        (["lights", 5], "entry 1 is not a string"),
        (["", "   "], "no word the model can spell"),
        (["12 34", "über"], "no word the model can spell .*'12' has characters"),
        (["[unk]"], "no word the model can spell"),
        (["a"] * (MAX_GRAMMAR_PHRASES + 1), f"at most {MAX_GRAMMAR_PHRASES} are allowed"),
        (["a" * (MAX_GRAMMAR_CHARS + 1)], f"at most {MAX_GRAMMAR_CHARS} are allowed"),
    ],
)
def test_bad_grammars_are_rejected_with_messages(phrases: object, message: str) -> None:
    with pytest.raises(DecodeOptionError, match=message):
        parse_grammar(phrases)


def test_parsing_lowercases_drops_unspellable_words_and_always_allows_unk() -> None:
    g = parse_grammar(["Turn ON the Lights!", "call [UNK] now", "", "café"])
    assert g.phrases == (("turn", "on", "the"), ("call", UNK_WORD, "now"), (UNK_WORD,))
    assert g.words == ("call", "now", "on", "the", "turn") and g.labels[-1] == UNK_WORD
    assert dict(g.dropped) == {
        "lights!": "has characters the model's alphabet lacks: '!'",
        "": "is empty",
        "café": "has characters the model's alphabet lacks: 'é'",
    }
    assert parse_grammar(["yes", "[unk]"]).phrases == (("yes",), (UNK_WORD,))  # no second "[unk]" phrase


def test_grammar_and_hot_words_cannot_be_combined(engine: Engine, grammar: Grammar) -> None:
    with pytest.raises(DecodeOptionError, match="hot_words and a grammar phrase_list cannot be combined"):
        engine.decoder.check_options(hot_words={"kitchen": 5.0}, grammar=grammar)
    with pytest.raises(DecodeOptionError, match="cannot be combined"):
        engine.decoder.stream(hot_words={"kitchen": 5.0}, grammar=grammar)
    assert not engine.decoder.check_options(grammar=grammar)
    other = Grammar(grammar.phrases, Alphabet(ENGLISH.labels[:-1]))
    with pytest.raises(DecodeOptionError, match="another alphabet"):
        engine.decoder.stream(grammar=other)


def test_greedy_decoder_refuses_a_grammar(grammar: Grammar) -> None:
    greedy = GreedyDecoder(ENGLISH)
    with pytest.raises(DecodeOptionError, match="grammar .* needs the beam-search decoder"):
        greedy.check_options(grammar=grammar)
    with pytest.raises(DecodeOptionError, match="needs the beam-search decoder"):
        greedy.stream(grammar=grammar)


def test_bigram_is_normalised_and_discounts_as_estimated_by_hand() -> None:
    g = parse_grammar(["a b", "a c", "b b a"])
    bigram = Bigram(g)
    events = range(bigram.n_labels + 1)  # words, [unk], </s>
    for history in range(bigram.n_labels + 1):  # <s>, then each label
        assert sum(bigram.prob(history, e) for e in events) == pytest.approx(1.0)
    # Counts: <s> a 2, <s> b 1, <s> [unk] 1; unigrams a 3, b 3, c 1, [unk] 1, </s> 4 of 12 events.
    a, b, c = (g.labels.index(w) for w in "abc")
    discounted = 0.5 * 3 / 4  # the discount freed at <s>: 3 seen events of 4 counts
    assert bigram.prob(0, a) == pytest.approx((2 - 0.5) / 4 + discounted * 3 / 12)
    assert bigram.prob(0, c) == pytest.approx(discounted * 1 / 12)
    assert bigram.prob(0, bigram.end) == pytest.approx(discounted * 4 / 12)
    lm = GrammarLM(g)
    state, score = lm.score(lm.start(False), a)
    assert score == pytest.approx(math.log10(bigram.prob(0, a)))
    assert lm.score(state, b)[1] == pytest.approx(math.log10(bigram.prob(1 + a, b)))
    assert lm.finish(state)[1] == pytest.approx(math.log10(bigram.prob(1 + a, bigram.end)))
    # Inside an [unk] run only the first [unk] is charged: the run is one word.
    unk_state, _ = lm.score(state, lm.unk)
    assert lm.score(unk_state, lm.unk) == (unk_state, 0.0)
    assert lm.score(unk_state, b)[1] == pytest.approx(math.log10(bigram.prob(1 + lm.unk, b)))


def test_streams_share_one_lexicon_per_grammar(grammar: Grammar) -> None:
    decoder = BeamDecoder(ENGLISH, None, BeamOptions(beam_width=50))
    first, second = decoder.stream(grammar=grammar), decoder.stream(grammar=parse_grammar(PHRASES))
    assert first._lexicon is not None and second._lexicon is not None
    assert all(a is b for a, b in zip(first._lexicon, second._lexicon, strict=True))  # built once, cached
    assert first.finish().text == "" and first.stable_words() == []
