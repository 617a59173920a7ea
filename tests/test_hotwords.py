"""Hot words (DeepSpeech's addHotWord, Vosk's phrase_list) and N-best alternatives, on a real scorer.

The scorer is built by the project's tooling from a small corpus in which "bob" is common and "rob" occurs
once; "kubrick" and "zorblax" are not in it at all. Probabilities are constructed as in test_decoding.py: one
peaky frame per character, and where the test needs doubt, the spoken letter only slightly ahead of another
("r" 0.5 against "b" 0.4), the kind of frame on which the language model decides. Every input is jittered by
±2 % (seeded): flashlight breaks exact score ties by comparing heap pointers, so the exact ties that evenly
spread probabilities create would make results vary from run to run; a real model's output has no such ties.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.speech.alphabet import ENGLISH
from app.speech.decoding import (
    DEFAULT_BOOST,
    MAX_ALTERNATIVES,
    MAX_HOT_WORDS,
    BeamSearchDecoder,
    DecodeOptionError,
    GreedyDecoder,
    HotWordError,
    Transcript,
    parse_hot_words,
    phrase_list_hot_words,
)
from app.speech.decoding.beam import BeamDecoder, BeamOptions
from app.speech.decoding.hotwords import validate_hot_words
from app.speech.decoding.lm import LN10, HotWordLM, Scorer
from app.speech.engine import Engine
from app.speech.runtime import STATIC_STEPS, AcousticModel, LstmState
from dsconvert.lm.build_scorer import main as build_scorer_main
from tests.support.frames import BLANK, clear, frames
from tests.support.lm import ALPHABET_TXT

A = ENGLISH


def jittered(spec: list[dict[str, float]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probs = frames(spec) * (1.0 + 0.02 * rng.uniform(-1.0, 1.0, (len(spec), A.n_classes)))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


CORPUS = """\
send it to bob
send the file to bob
give the keys to bob
call bob now
bob is here
tell bob the news
bob and alice went home
send it to alice
call alice now
the old man and the sea
we sail the blue sea at dawn
they rob the bank at dawn
call the office now
send the news to the office
"""

# "send it to rob", the r only just ahead of b: the LM ("to bob" 2x in the corpus, "rob" once) reads "bob".
ROB_OR_BOB = jittered(clear("send it to ") + [{"r": 0.5, "b": 0.4}, {BLANK: 0.95}] + clear("ob")[1:], 1)
BOB = jittered(clear("send it to bob"), 2)  # clearly "bob"
KUBRICK = jittered(clear("call kubrick now"), 3)  # a name the vocabulary lacks
SEA = jittered(clear("the old man and the sea"), 4)  # nothing like any hot word here
CALL_BOB = jittered(clear("call bob now"), 5)
# No LM: the first letter of "kubrick" is doubtful, and the acoustics alone read "cubrick".
CUBRICK = jittered(clear("call ") + [{"c": 0.5, "k": 0.4}, {BLANK: 0.95}] + clear("ubrick now")[1:], 6)
CUBRICK_CLEAR = jittered(clear("call cubrick now"), 7)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    directory = tmp_path_factory.mktemp("hotwords_lm")
    (directory / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    (directory / "alphabet.txt").write_text(ALPHABET_TXT, encoding="utf-8")
    out = directory / "lm.scorer"
    args = ["--text", str(directory / "corpus.txt"), "--alphabet", str(directory / "alphabet.txt")]
    assert build_scorer_main([*args, "--out", str(out)]) == 0
    return Scorer(out)


@pytest.fixture()
def decoder(scorer: Scorer) -> BeamDecoder:
    return BeamDecoder(A, scorer, BeamOptions(beam_width=64))


# ------------------------------------------------------------------------------------------ recognition


def test_rare_word_missed_without_boost_and_recognised_with_it(decoder: BeamDecoder) -> None:
    assert decoder.decode(ROB_OR_BOB).text == "send it to bob"
    assert decoder.decode(ROB_OR_BOB, hot_words={"rob": DEFAULT_BOOST}).text == "send it to rob"
    assert (
        decoder.decode(ROB_OR_BOB, hot_words={"ROB": DEFAULT_BOOST}).text == "send it to rob"
    )  # lower-cased
    # A small boost is not enough to overrule the bigram; other hot words change nothing.
    assert decoder.decode(ROB_OR_BOB, hot_words={"rob": 3.0}).text == "send it to bob"
    assert decoder.decode(ROB_OR_BOB, hot_words={"alice": DEFAULT_BOOST}).text == "send it to bob"


def test_boosted_word_does_not_appear_where_it_was_not_spoken(decoder: BeamDecoder) -> None:
    hot = {"rob": DEFAULT_BOOST, "kubrick": DEFAULT_BOOST}
    assert decoder.decode(BOB, hot_words=hot).text == "send it to bob"
    assert decoder.decode(SEA, hot_words=hot).text == "the old man and the sea"
    # Boosts are a trade-off, as DeepSpeech's docs warn: alpha * 20 nats outweighs a clear letter.
    overboosted = decoder.decode(BOB, hot_words={"rob": 20.0}).text.split()
    assert "rob" in overboosted and "bob" not in overboosted


def test_negative_boost_suppresses_a_word(decoder: BeamDecoder) -> None:
    assert decoder.decode(CALL_BOB).text == "call bob now"
    assert decoder.decode(CALL_BOB, hot_words={"bob": -30.0}).text == "call rob now"


def test_out_of_vocabulary_hot_word_is_recognised(decoder: BeamDecoder, scorer: Scorer) -> None:
    assert "kubrick" not in scorer.vocabulary
    assert decoder.decode(KUBRICK).text == "call alice now"  # the lexicon cannot spell it
    assert decoder.decode(KUBRICK, hot_words={"kubrick": DEFAULT_BOOST}).text == "call kubrick now"
    assert decoder.decode(SEA, hot_words={"kubrick": DEFAULT_BOOST}).text == "the old man and the sea"
    # The shared trie never learns the word; requests without it still cannot produce it.
    assert scorer.trie.search([*A.encode("kubrick"), A.space_index]) is None
    assert decoder.decode(KUBRICK).text == "call alice now"


def test_boost_maps_to_deepspeech_units(scorer: Scorer) -> None:
    # flashlight adds lm_weight * score with lm_weight = alpha * ln 10, so boost / ln 10 on the log10 score adds
    # exactly alpha * boost nats: DeepSpeech's (ln P + boost) * alpha.
    rob, oov = scorer.words.get_index("rob"), len(scorer.vocabulary) + 1
    lm = HotWordLM(scorer, {rob: 7.0 / LN10, oov: 4.0 / LN10}, frozenset({oov}))
    state = scorer.lm.start(False)
    base = scorer.lm.score(state, rob)[1]
    assert scorer.lm_weight * (lm.score(state, rob)[1] - base) == pytest.approx(scorer.alpha * 7.0)
    unk = scorer.lm.score(state, scorer.unk_index)[1]
    assert lm.score(state, oov)[1] == pytest.approx(max(unk, scorer.oov_floor) + 4.0 / LN10)
    assert (
        lm.score(state, scorer.words.get_index("bob"))[1]
        == scorer.lm.score(state, scorer.words.get_index("bob"))[1]
    )


def test_in_vocabulary_hot_words_need_no_trie_and_oov_tries_are_cached(decoder: BeamDecoder) -> None:
    decoder.decode(ROB_OR_BOB, hot_words={"rob": 5.0, "bob": -1.0})
    assert not decoder._oov_tries
    decoder.stream(hot_words={"kubrick": 5.0, "rob": 1.0})
    decoder.stream(hot_words={"kubrick": 9.0})  # other boosts, same missing word: same trie
    assert list(decoder._oov_tries) == [("kubrick",)]


# ------------------------------------------------------------------------------------------- isolation


def test_requests_with_different_hot_words_do_not_see_each_others(decoder: BeamDecoder) -> None:
    assert decoder.decode(ROB_OR_BOB, hot_words={"rob": DEFAULT_BOOST}).text == "send it to rob"
    assert decoder.decode(ROB_OR_BOB).text == "send it to bob"
    assert decoder.decode(KUBRICK, hot_words={"zorblax": DEFAULT_BOOST}).text == "call alice now"
    assert decoder.decode(KUBRICK, hot_words={"kubrick": DEFAULT_BOOST}).text == "call kubrick now"
    assert decoder.decode(KUBRICK, hot_words={"zorblax": DEFAULT_BOOST}).text == "call alice now"


def test_interleaved_streams_keep_their_own_hot_words(decoder: BeamDecoder) -> None:
    cases = [
        (ROB_OR_BOB, {"rob": DEFAULT_BOOST}, "send it to rob"),
        (ROB_OR_BOB, None, "send it to bob"),
        (KUBRICK, {"kubrick": DEFAULT_BOOST}, "call kubrick now"),
        (KUBRICK, {"zorblax": DEFAULT_BOOST, "rob": 1.0}, "call alice now"),
        (KUBRICK, None, "call alice now"),
    ]
    streams = [decoder.stream(hot_words=hot) for _, hot, _ in cases]
    longest = max(len(probs) for probs, _, _ in cases)
    for start in range(0, longest, 4):  # chunk by chunk, round robin
        for stream, (probs, _, _) in zip(streams, cases, strict=True):
            stream.feed(probs[start : start + 4])
            stream.partial()
    assert [s.finish().text for s in streams] == [expected for _, _, expected in cases]


def test_concurrent_decodes_in_threads(scorer: Scorer) -> None:
    decoder = BeamDecoder(A, scorer, BeamOptions(beam_width=64))
    jobs = [
        (ROB_OR_BOB, {"rob": DEFAULT_BOOST}, "send it to rob"),
        (ROB_OR_BOB, None, "send it to bob"),
        (KUBRICK, {"kubrick": DEFAULT_BOOST}, "call kubrick now"),
        (KUBRICK, None, "call alice now"),
    ] * 3
    barrier = threading.Barrier(4)

    def run(job: tuple[np.ndarray, dict[str, float] | None, str]) -> str:
        barrier.wait(timeout=10)
        return decoder.decode(job[0], hot_words=job[1]).text

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, jobs)) == [expected for _, _, expected in jobs]


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("hot_words", "message"),
    [
        ({"": 1.0}, "empty hot word"),
        ({"two words": 1.0}, "has a space"),
        ({"café": 1.0}, "alphabet lacks: 'é'"),
        ({"rob": math.nan}, "must be finite"),
        ({"rob": math.inf}, "must be finite"),
        ({"rob": 1000.0}, "between -100 and 100"),
        ({"rob": "loud"}, "must be a number"),
        ({"rob": True}, "must be a number"),
        ({"Rob": 1.0, "rob": 2.0}, "given twice"),
        ({"a" * 65: 1.0}, "longer than 64"),
        ({f"w{chr(97 + i % 26)}{i}": 1.0 for i in range(MAX_HOT_WORDS + 1)}, "at most 500"),
        (["rob"], "mapping"),
    ],
)
def test_invalid_hot_words_are_rejected_with_clear_messages(
    decoder: BeamDecoder, hot_words: object, message: str
) -> None:
    with pytest.raises(HotWordError, match=message):
        decoder.decode(BOB, hot_words=hot_words)  # type: ignore[arg-type]
    assert issubclass(HotWordError, ValueError)


@pytest.mark.parametrize("alternatives", [0, -1, MAX_ALTERNATIVES + 1, 2.0, "3", True])
def test_invalid_alternatives_are_rejected(decoder: BeamDecoder, alternatives: object) -> None:
    with pytest.raises(DecodeOptionError, match="alternatives"):
        decoder.stream(alternatives=alternatives)  # type: ignore[arg-type]


def test_parse_hot_words_for_http_and_phrase_list_for_vosk() -> None:
    assert parse_hot_words("rob:10, kubrick ,bob:-2.5") == {
        "rob": 10.0,
        "kubrick": DEFAULT_BOOST,
        "bob": -2.5,
    }
    assert parse_hot_words(["rob:1", "bob:2"]) == {"rob": 1.0, "bob": 2.0}  # a repeated field
    assert parse_hot_words(None) == {} and parse_hot_words(" , ") == {}
    for bad, message in [("rob:loud", "not a number"), (":5", "has no word"), ("rob:1,rob:2", "twice")]:
        with pytest.raises(HotWordError, match=message):
            parse_hot_words(bad)
    hot = phrase_list_hot_words(["call Kubrick now", "call kubrick"])
    assert hot == {"call": DEFAULT_BOOST, "Kubrick": DEFAULT_BOOST, "now": DEFAULT_BOOST}
    assert validate_hot_words(hot, A).words == ("call", "kubrick", "now")
    with pytest.raises(HotWordError, match="list of strings"):
        phrase_list_hot_words("call kubrick")


def test_greedy_decoder_refuses_hot_words_and_has_one_alternative() -> None:
    greedy = GreedyDecoder(A)
    with pytest.raises(HotWordError, match="beam-search decoder"):
        greedy.decode(BOB, hot_words={"rob": 1.0})
    with pytest.raises(HotWordError, match="beam-search decoder"):
        greedy.stream(hot_words={"rob": 1.0})
    assert greedy.decode(BOB, hot_words={}).text == "send it to bob"
    result = greedy.decode(BOB, alternatives=3)
    assert [(a.text, a.confidence) for a in result.alternatives] == [("send it to bob", 1.0)]


# ----------------------------------------------------------------------------------------------- N-best


def test_n_best_distinct_sorted_and_first_is_the_one_best(decoder: BeamDecoder) -> None:
    one_best = decoder.decode(ROB_OR_BOB)
    assert one_best.alternatives == () and "alternatives" not in one_best.to_dict()
    result = decoder.decode(ROB_OR_BOB, alternatives=4)
    texts = [a.text for a in result.alternatives]
    confidences = [a.confidence for a in result.alternatives]
    assert len(texts) == 4 and len(set(texts)) == 4
    assert texts[:2] == ["send it to bob", "send it to rob"]
    assert result.text == one_best.text == texts[0]
    assert result.words == one_best.words and result.confidence == one_best.confidence
    assert confidences == sorted(confidences, reverse=True) and 0 < sum(confidences) <= 1 + 1e-9
    assert result.alternatives[0].words == result.words
    assert [w.word for w in result.alternatives[1].words] == ["send", "it", "to", "rob"]
    payload = result.to_dict()
    assert payload["alternatives"][1]["text"] == "send it to rob" and payload["text"] == "send it to bob"
    # With the hot word the two swap places.
    boosted = decoder.decode(ROB_OR_BOB, hot_words={"rob": DEFAULT_BOOST}, alternatives=2)
    assert [a.text for a in boosted.alternatives] == ["send it to rob", "send it to bob"]


def test_n_best_from_a_stream_equals_the_whole_input(decoder: BeamDecoder) -> None:
    whole = decoder.decode(ROB_OR_BOB, hot_words={"rob": 5.0}, alternatives=3)
    stream = decoder.stream(hot_words={"rob": 5.0}, alternatives=3)
    for start in range(0, len(ROB_OR_BOB), 16):
        stream.feed(ROB_OR_BOB[start : start + 16])
    assert stream.finish() == whole


def test_n_best_on_silence_and_fewer_texts_than_asked(decoder: BeamDecoder) -> None:
    silence = decoder.decode(jittered([{BLANK: 0.97}] * 20, 8), alternatives=5)
    assert silence.text == "" and silence.alternatives[0].text == ""
    empty = decoder.decode(np.zeros((0, A.n_classes), np.float32), alternatives=5)
    assert empty.text == "" and [a.text for a in empty.alternatives] == [""]


# --------------------------------------------------------------------------------------- no scorer (LM)


def test_without_scorer_hot_words_rescore_the_final_beam() -> None:
    free = BeamDecoder(A, None, BeamOptions(beam_width=64))
    assert free.decode(CUBRICK).text == "call cubrick now"
    assert free.decode(CUBRICK, hot_words={"kubrick": DEFAULT_BOOST}).text == "call kubrick now"
    # Not spoken: a clear "c" leaves no "kubrick" in the final beam, and nothing else changes.
    assert free.decode(CUBRICK_CLEAR, hot_words={"kubrick": DEFAULT_BOOST}).text == "call cubrick now"
    assert free.decode(SEA, hot_words={"kubrick": DEFAULT_BOOST}).text == "the old man and the sea"
    result = free.decode(CUBRICK, hot_words={"kubrick": DEFAULT_BOOST}, alternatives=3)
    texts = [a.text for a in result.alternatives]
    assert texts[0] == "call kubrick now" and len(set(texts)) == 3
    assert [a.confidence for a in result.alternatives] == sorted(
        (a.confidence for a in result.alternatives), reverse=True
    )
    plain = free.decode(CUBRICK, alternatives=3)
    assert [a.text for a in plain.alternatives][:2] == ["call cubrick now", "call kubrick now"]


# -------------------------------------------------------------------------- through the service pipeline


class ScriptedModel(AcousticModel):
    """An acoustic model that answers the given probabilities, in order, whatever the audio (then blanks):
    Engine and StreamSession run their real feature and batching code around it."""

    backend = "numpy"
    n_cell_dim = 4
    max_steps = 1000

    def __init__(self, probs: np.ndarray) -> None:
        self.n_classes = probs.shape[1]
        self._script = probs
        self._at = 0
        self.calls = 0

    def _next(self, n: int) -> np.ndarray:
        out = frames([{BLANK: 0.99}] * n)
        part = self._script[self._at : self._at + n]
        out[: len(part)] = part
        self._at += n
        self.calls += 1
        return out

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        assert windows.shape[0] == STATIC_STEPS
        return self._next(length), state

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._next(len(windows)), state


def _engine(scorer: Scorer, probs: np.ndarray) -> tuple[Engine, ScriptedModel]:
    model = ScriptedModel(probs)
    return Engine(None, model, BeamSearchDecoder(A, scorer, 64)), model  # type: ignore[arg-type]


def test_engine_passes_hot_words_and_alternatives_through(scorer: Scorer) -> None:
    samples = np.zeros(16000 * 1, np.float32)  # 1 s: ~50 windows, more than the script's frames
    engine, model = _engine(scorer, ROB_OR_BOB)
    result = engine.transcribe(samples, hot_words={"rob": DEFAULT_BOOST}, alternatives=2)
    assert result.transcript.text == "send it to rob"
    assert [a.text for a in result.transcript.alternatives] == ["send it to rob", "send it to bob"]
    engine, model = _engine(scorer, ROB_OR_BOB)
    assert engine.transcribe(samples).transcript.text == "send it to bob"
    # Invalid options fail before the model runs.
    engine, model = _engine(scorer, ROB_OR_BOB)
    with pytest.raises(HotWordError, match="alphabet lacks"):
        engine.transcribe(samples, hot_words={"zoë": 5.0})
    with pytest.raises(DecodeOptionError):
        engine.transcribe(samples, alternatives=0)
    assert model.calls == 0


def test_stream_session_with_hot_words(scorer: Scorer) -> None:
    samples = np.zeros(16000 * 1, np.float32)
    finals: list[Transcript] = []
    for hot in ({"kubrick": DEFAULT_BOOST}, None):
        engine, _ = _engine(scorer, KUBRICK)
        session = engine.open_stream(hot_words=hot, alternatives=2)
        for start in range(0, len(samples), 3200):  # 0.2 s frames, as Vosk's clients send
            session.feed(samples[start : start + 3200])
        finals.append(session.finish())
    assert [f.text for f in finals] == ["call kubrick now", "call alice now"]
    assert len(finals[0].alternatives) == 2
    engine, _ = _engine(scorer, KUBRICK)
    with pytest.raises(HotWordError, match="has a space"):
        engine.open_stream(hot_words={"stanley kubrick": 5.0})


def test_scorer_fixture_is_a_real_scorer(scorer: Scorer) -> None:
    assert (
        Path(scorer.path).stat().st_size > 1000 and "rob" in scorer.vocabulary and "bob" in scorer.vocabulary
    )
    assert scorer.unigrams[scorer.words.get_index("rob")] < scorer.unigrams[scorer.words.get_index("bob")]
