"""CTC decoding: greedy (whole and streamed), word timings, and flashlight beam search with and without a scorer.

Probabilities are constructed frame by frame the way a CTC acoustic model emits them: one peaky frame per
character, blanks between, and where a test needs ambiguity the right class gets slightly less mass than a
wrong one (blank or another letter), the usual failure of a greedy reading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.speech.alphabet import ENGLISH
from app.speech.decoding.beam import BeamDecoder, BeamOptions
from app.speech.decoding.greedy import GreedyStream, ctc_collapse, greedy_decode
from app.speech.decoding.lm import Scorer
from app.speech.decoding.timings import CharToken, Transcript, Word, words_from_tokens
from tests.support.frames import BLANK, clear, frames
from tests.support.lm import CorpusLM, build_corpus_lm

A = ENGLISH


def noisy_utterance(text: str, seed: int, peak: float = 6.0) -> np.ndarray:
    """A longer input: per character one frame + two blanks, softmax of Gaussian noise with a peak on the truth."""
    rng = np.random.default_rng(seed)
    truth: list[int] = []
    for ch in text:
        truth += [A.labels.index(ch), A.blank_index, A.blank_index]
    logits = rng.normal(0.0, 1.0, (len(truth), A.n_classes))
    logits[np.arange(len(truth)), truth] += peak
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# "helo wrld": the second l of hello and the o of world are each a bit weaker than blank on their frame.
HELO_WRLD = (
    clear("hel")
    + [{BLANK: 0.55, "l": 0.4}, {BLANK: 0.95}]
    + clear("o w")[1:]
    + [{BLANK: 0.55, "o": 0.4}, {BLANK: 0.95}]
    + clear("rld")[1:]
)
# "hello word": the l of world is a bit weaker than blank; both readings are vocabulary words.
HELLO_WORD = clear("hel") + [{BLANK: 0.35, "l": 0.6}, {BLANK: 0.95}] + clear("o wor")[1:]
HELLO_WORD += [{BLANK: 0.55, "l": 0.4}, {BLANK: 0.95}] + clear("d")[1:]


@pytest.fixture(scope="module")
def corpus_lm(tmp_path_factory: pytest.TempPathFactory) -> CorpusLM:
    return build_corpus_lm(tmp_path_factory.mktemp("decoding_lm"))


@pytest.fixture(scope="module")
def scorer(corpus_lm: CorpusLM) -> Scorer:
    return Scorer(corpus_lm.scorer)


# ------------------------------------------------------------------------------------------------- greedy


def test_greedy_reads_constructed_probabilities() -> None:
    result = greedy_decode(frames(HELO_WRLD))
    assert result.text == "helo wrld"
    # One token per emitted character, at the frame that emitted it (blank frames in between).
    assert result.tokens == (
        CharToken("h", 1),
        CharToken("e", 3),
        CharToken("l", 5),
        CharToken("o", 9),
        CharToken(" ", 11),
        CharToken("w", 13),
        CharToken("r", 17),
        CharToken("l", 19),
        CharToken("d", 21),
    )


def test_greedy_collapses_repeats_and_needs_blank_between_double_letters() -> None:
    spec = [{"h": 0.9}] * 3 + [
        {"e": 0.9},
        {"l": 0.9},
        {"l": 0.9},
        {BLANK: 0.9},
        {"l": 0.9},
        {"o": 0.9},
        {"o": 0.9},
    ]
    result = greedy_decode(frames(spec))
    assert result.raw_text == "hello"
    assert [t.timestep for t in result.tokens] == [0, 3, 4, 7, 8]
    assert ctc_collapse(np.array([28, 28, 0, 0, 28, 0]), blank=28) == [(0, 2), (0, 5)]
    assert greedy_decode(np.zeros((0, 29), np.float32)).transcript == Transcript("", (), 0.0)
    with pytest.raises(ValueError, match="shape"):
        greedy_decode(np.zeros((5, 28), np.float32))


@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_greedy_stream_equals_whole_input(chunk: int) -> None:
    probs = noisy_utterance("the old man and the sea saw the blue sea", seed=3, peak=3.0)
    whole = greedy_decode(probs)
    stream = GreedyStream()
    for start in range(0, len(probs), chunk):
        stream.feed(probs[start : start + chunk])
        assert whole.raw_text.startswith(stream.text)  # partials only ever grow
    assert stream.result() == whole
    assert stream.frames == len(probs)


def test_greedy_stream_does_not_split_a_repeat_across_chunks() -> None:
    probs = frames([{"a": 0.9}] * 4 + [{BLANK: 0.9}])
    stream = GreedyStream()
    stream.feed(probs[:2])
    stream.feed(probs[2:])
    assert stream.text == "a"
    stream.feed(np.zeros((0, 29), np.float32))  # an empty chunk is a no-op
    assert stream.result().tokens == (CharToken("a", 0),)


# ------------------------------------------------------------------------------------------------ timings


def test_word_timings_and_confidence() -> None:
    probs = frames(HELO_WRLD)
    result = greedy_decode(probs)
    first, second = result.transcript.words
    # start = first char timestep x 20 ms, end = (last char timestep + 1) x 20 ms.
    assert (first.word, first.start, first.end) == ("helo", 0.02, 0.2)
    assert (second.word, second.start, second.end) == ("wrld", 0.26, 0.44)
    # confidence = mean over the word's frames (first..last char) of the chosen (here: max) probability.
    assert first.confidence == pytest.approx(float(np.mean(probs[1:10].max(axis=1))))
    assert result.transcript.confidence == pytest.approx(float(np.mean(probs.max(axis=1))))
    payload = json.loads(json.dumps(result.transcript.to_dict()))
    assert payload["text"] == "helo wrld" and payload["words"][1] == {
        "word": "wrld",
        "start": 0.26,
        "end": 0.44,
        "confidence": pytest.approx(second.confidence),
    }


def test_words_split_on_any_run_of_spaces() -> None:
    tokens = [CharToken(" ", 0), CharToken("a", 2), CharToken(" ", 4), CharToken(" ", 6), CharToken("b", 9)]
    assert words_from_tokens(tokens) == [Word("a", 0.04, 0.06, 1.0), Word("b", 0.18, 0.2, 1.0)]
    assert words_from_tokens([]) == []


# --------------------------------------------------------------------------------------------- beam search


def test_lm_beam_fixes_misspelled_greedy_output(scorer: Scorer) -> None:
    probs = frames(HELO_WRLD)
    assert greedy_decode(probs).text == "helo wrld"
    result = BeamDecoder(A, scorer).decode(probs)
    assert result.text == "hello world"
    hello, world = result.words
    assert (hello.start, hello.end, world.start, world.end) == (0.02, 0.2, 0.26, 0.44)
    # The beam path takes the weaker "l" and "o" frames: those words' confidence drops below greedy's.
    assert hello.confidence < greedy_decode(probs).transcript.words[0].confidence
    # Without an LM the beam search has no reason to prefer the dictionary spelling.
    assert BeamDecoder(A).decode(probs).text == "helo wrld"


def test_language_model_not_just_the_lexicon_decides(corpus_lm: CorpusLM, scorer: Scorer) -> None:
    probs = frames(HELLO_WORD)
    assert greedy_decode(probs).text == "hello word"
    # Both "word" and "world" are vocabulary words: with the LM off (alpha = beta = 0) the acoustics win ...
    lexicon_only = Scorer(corpus_lm.scorer, alpha=0.0, beta=0.0)
    assert BeamDecoder(A, lexicon_only).decode(probs).text == "hello word"
    # ... with the scorer's alpha the bigram "hello world" (4 times in the corpus, "hello word" never) wins.
    assert BeamDecoder(A, scorer).decode(probs).text == "hello world"


def test_scorer_weights_follow_deepspeech_alpha_beta(corpus_lm: CorpusLM, scorer: Scorer) -> None:
    assert (scorer.alpha, scorer.beta) == (0.931289039105002, 1.1834137581510284)  # from the trailer
    assert scorer.lm_weight == pytest.approx(scorer.alpha * math.log(10))  # KenLM scores are log10
    assert scorer.word_score == scorer.beta
    custom = Scorer(corpus_lm.scorer, alpha=0.5, beta=2.0)
    assert (custom.alpha, custom.beta, custom.lm_weight) == (0.5, 2.0, pytest.approx(0.5 * math.log(10)))
    assert "world" in scorer.vocabulary and "café" not in scorer.vocabulary


def test_no_lm_beam_matches_greedy_on_peaky_probabilities() -> None:
    probs = noisy_utterance("say hello to the whole world", seed=11)
    greedy = greedy_decode(probs)
    beam = BeamDecoder(A, options=BeamOptions(beam_width=64)).decode(probs)
    assert beam.text == greedy.text == "say hello to the whole world"
    assert [(w.word, w.start, w.end) for w in beam.words] == [
        (w.word, w.start, w.end) for w in greedy.transcript.words
    ]


def test_incremental_beam_equals_whole_input(scorer: Scorer) -> None:
    text = "hello world the old man and the sea help the world say hello to the world we sail the blue sea"
    text = f"{text} {text}"
    probs = noisy_utterance(text, seed=5, peak=4.0)  # 567 frames (11 s); greedy misreads several words
    assert greedy_decode(probs).text != text
    options = BeamOptions(prune_interval=150, prune_look_back=40)  # force several prunes
    decoder = BeamDecoder(A, scorer, options)
    whole = decoder.decode(probs)
    assert whole.text == text
    stream = decoder.stream()
    partials: list[str] = []
    for i, start in enumerate(range(0, len(probs), 16)):  # the native client's 16-step batches
        stream.feed(probs[start : start + 16])
        if i % 5 == 0:
            partials.append(stream.partial().text)
    final = stream.finish()
    assert final == whole  # same text, word timings and confidences
    assert stream.partial() == final and stream.frames == len(probs)
    assert stream._pruned >= 300  # the prune path was exercised (committed frames)
    assert any(p and text.startswith(p.rsplit(" ", 1)[0]) for p in partials[2:])
    with pytest.raises(RuntimeError):
        stream.feed(probs[:16])


def test_incremental_no_lm_beam_equals_whole_input() -> None:
    probs = noisy_utterance("the whole world was watching", seed=2, peak=5.0)
    decoder = BeamDecoder(A, options=BeamOptions(beam_width=100, prune_interval=60, prune_look_back=10))
    whole = decoder.decode(probs)
    stream = decoder.stream()
    for start in range(0, len(probs), 7):
        stream.feed(probs[start : start + 7])
    assert stream.finish() == whole


def test_beam_on_empty_and_silent_input(scorer: Scorer) -> None:
    assert BeamDecoder(A, scorer).decode(np.zeros((0, 29), np.float32)).text == ""
    silence = frames([{BLANK: 0.97}] * 50)
    result = BeamDecoder(A, scorer).decode(silence)
    assert result.text == "" and result.words == () and result.confidence > 0.9


def test_scorer_file_is_used_as_is(corpus_lm: CorpusLM) -> None:
    # The .scorer (KenLM bytes + trailer) goes straight to KenLM: no temp copy of the model part.
    s = Scorer(corpus_lm.scorer)
    assert s.path == Path(corpus_lm.scorer)
    state = s.lm.start(False)
    assert s.lm.score(state, s.words.get_index("hello"))[1] < 0


def test_pruning_points_do_not_depend_on_chunking(scorer: Scorer) -> None:
    """Long inputs prune every 100-200 frames (bounded memory); any chunking prunes at the same frames, so a stream
    fed in odd chunks decodes exactly like the whole input."""
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 1, (1337, ENGLISH.n_classes))
    logits[:, ENGLISH.blank_index] += 2.5
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    decoder = BeamDecoder(ENGLISH, scorer, BeamOptions(beam_width=32))
    whole = decoder.decode(probs)
    stream = decoder.stream()
    start = 0
    for size in rng.integers(1, 90, 100):
        stream.feed(probs[start : start + int(size)])
        start += int(size)
    stream.feed(probs[start:])
    assert stream._pruned > 0, "a 1337-frame input must have pruned"
    assert stream.finish() == whole
