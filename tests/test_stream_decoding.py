"""Streaming decoders' partial results on long streams: built incrementally (the committed prefix's words are
kept), they equal the slow full collapse of the whole path, and BeamStream.stable_words() equals the original
all-frames computation (what app/routes/openai.py used to do)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from app.speech.alphabet import ENGLISH
from app.speech.decoding.beam import BeamDecoder, BeamOptions, BeamStream
from app.speech.decoding.greedy import GreedyStream, ctc_collapse, greedy_decode
from app.speech.decoding.lm import Scorer
from app.speech.decoding.timings import CharToken, Transcript, transcript_from_tokens

A = ENGLISH
DEFAULT_SCORER = Path(__file__).resolve().parent.parent / "models" / "default" / "kenlm.scorer"


def random_probs(frames: int, seed: int, blank_boost: float = 2.0) -> np.ndarray:
    """Random per-frame distributions leaning to blank, with some spaces: words of a few letters."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (frames, A.n_classes))
    logits[:, A.blank_index] += blank_boost
    logits[:, A.space_index] += 0.8
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def slow_partial(stream: BeamStream, probs: np.ndarray) -> Transcript:
    """What BeamStream.partial() computed before: the whole path (committed + best tail) collapsed from the
    start, every frame's confidence from the probabilities fed."""
    best = stream._best_now()
    tail = stream._tail(list(best.tokens[1:]) if best is not None else [])
    path = np.asarray(stream._committed_path + tail, dtype=np.int64)
    confidence = probs[np.arange(len(path)), path].astype(np.float64)
    tokens = [CharToken(A.labels[lab], t) for lab, t in ctc_collapse(path, A.blank_index)]
    return transcript_from_tokens(tokens, confidence)


def original_stable_words(stream: BeamStream) -> list[str]:
    """The stable words computed over all frames, as app/routes/openai.py once did (O(beam x frames))."""
    hyps = stream._decoder.get_all_final_hypothesis()
    frames = stream.frames
    if not hyps or not frames:
        return []
    alphabet = stream._alphabet
    blank = alphabet.blank_index
    committed = stream._committed_path
    paths = np.full((len(hyps), frames), blank, dtype=np.int64)
    paths[:, : len(committed)] = committed
    for row, hyp in zip(paths, hyps, strict=True):
        tokens = hyp.tokens[1 : frames - stream._pruned + 1]
        row[len(committed) : len(committed) + len(tokens)] = tokens
    paths[paths < 0] = blank
    before = np.empty_like(paths)
    before[:, 0] = blank
    before[:, 1:] = paths[:, :-1]
    starts = (paths != blank) & (paths != before)
    labels = {tuple(row[keep].tolist()) for row, keep in zip(paths, starts, strict=True)}
    common = os.path.commonprefix(list(labels))
    text = "".join(alphabet.labels[label] for label in common)
    return text[: text.rfind(" ") + 1].split()


def assert_same_transcript(got: Transcript, expected: Transcript) -> None:
    assert got.text == expected.text
    assert got.words == expected.words  # words, timings and per-word confidences exactly
    assert got.confidence == pytest.approx(expected.confidence, rel=1e-9, abs=1e-12)


def _decoders() -> list[BeamDecoder]:
    decoders = [BeamDecoder(A, options=BeamOptions(beam_width=24, prune_interval=200, prune_look_back=40))]
    if DEFAULT_SCORER.exists():
        scorer = Scorer(DEFAULT_SCORER, A)
        decoders.append(
            BeamDecoder(A, scorer, BeamOptions(beam_width=24, prune_interval=200, prune_look_back=40))
        )
    return decoders


@pytest.mark.parametrize("decoder", _decoders(), ids=lambda d: "scorer" if d.scorer else "no-lm")
def test_beam_partials_equal_the_full_collapse_on_a_long_stream(decoder: BeamDecoder) -> None:
    probs = random_probs(1500, seed=21)
    stream = decoder.stream()
    checked = 0
    for i, start in enumerate(range(0, len(probs), 16)):
        stream.feed(probs[start : start + 16])
        if i % 4 == 0 or start + 16 >= len(probs):
            fed = probs[: stream.frames]
            assert_same_transcript(stream.partial(), slow_partial(stream, fed))
            assert stream.stable_words() == original_stable_words(stream)
            checked += 1
    assert stream._pruned >= 1000, "several prunes: most of the path is committed"
    assert checked > 20 and stream.partial().text
    final = stream.finish()
    assert final == decoder.decode(probs)  # the final result is computed exactly as whole-input decoding


def test_stable_words_on_a_fresh_stream() -> None:
    stream = BeamDecoder(A, options=BeamOptions(beam_width=8)).stream()
    assert stream.stable_words() == [] == original_stable_words(stream)
    stream.feed(random_probs(40, seed=2))
    assert stream.stable_words() == original_stable_words(stream)


@pytest.mark.parametrize("chunk", [1, 16, 333])
def test_greedy_partials_equal_the_whole_input_decode(chunk: int) -> None:
    probs = random_probs(2000, seed=4)
    stream = GreedyStream()
    for start in range(0, len(probs), chunk):
        stream.feed(probs[start : start + chunk])
        if (start // chunk) % 7 == 0:
            whole = greedy_decode(probs[: stream.frames])
            assert_same_transcript(stream.partial(), whole.transcript)
    whole = greedy_decode(probs)
    assert_same_transcript(stream.partial(), whole.transcript)
    assert stream.result() == whole and stream.text == whole.raw_text
    assert len(whole.transcript.words) > 50


def test_greedy_stream_starts_empty() -> None:
    stream = GreedyStream()
    assert stream.partial() == Transcript("", (), 0.0) == stream.result().transcript
    stream.feed(random_probs(3, seed=1, blank_boost=20.0))
    assert stream.partial().text == "" and stream.partial().confidence > 0.9


def test_growing_transcript_equals_the_full_collapse_at_any_split() -> None:
    """Random paths over few labels (repeats and spaces at the split points), committed in random pieces, each
    read with a random uncommitted tail: always the transcript of the whole path collapsed at once."""
    from app.speech.decoding.greedy import GrowingTranscript

    rng = np.random.default_rng(6)
    choices = np.array([A.labels.index("a"), A.labels.index("b"), A.space_index, A.blank_index])
    for _ in range(20):
        path = rng.choice(choices, size=300, p=[0.3, 0.2, 0.2, 0.3])
        confidence = rng.uniform(0.1, 1.0, size=300)
        growing = GrowingTranscript(A)
        committed = 0
        while committed < len(path):
            step = int(rng.integers(1, 40))
            growing.commit(path[committed : committed + step], confidence[committed : committed + step])
            committed = min(committed + step, len(path))
            end = int(rng.integers(committed, len(path) + 1))
            tail, tail_conf = path[committed:end], confidence[committed:end]
            tokens = [CharToken(A.labels[lab], t) for lab, t in ctc_collapse(path[:end], A.blank_index)]
            expected = transcript_from_tokens(tokens, confidence[:end])
            assert_same_transcript(growing.transcript(tail, tail_conf), expected)
            exact = growing.transcript(tail, tail_conf, exact=True)
            assert exact.confidence == expected.confidence
            assert growing.text(tail) == expected.text
