"""The endpointer and utterance decoding: where streams and files are cut, on frames and on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.settings import Settings
from app.speech.alphabet import ENGLISH
from app.speech.endpoint import EndpointConfig, Endpointer
from app.speech.engine import Engine
from tests.support.audio import DEMO_PHRASES, spoken_phrases

PHRASES = DEMO_PHRASES
BLANK, SPACE = ENGLISH.blank_index, ENGLISH.space_index
A = ENGLISH.labels.index("a")


def frames(labels: list[int]) -> np.ndarray:
    """Probabilities whose best class per frame is `labels`."""
    probs = np.full((len(labels), ENGLISH.n_classes), 0.01, np.float32)
    probs[np.arange(len(labels)), labels] = 0.9
    return probs


def speech(n: int) -> list[int]:
    return [A, BLANK] * (n // 2)


def cuts_of(probs: np.ndarray, config: EndpointConfig, chunks: list[int]) -> list[int]:
    endpointer = Endpointer(config, BLANK, SPACE)
    found, start = [], 0
    for size in chunks:
        found += endpointer.push(probs[start : start + size])
        start += size
    return found + endpointer.push(probs[start:])


def test_a_pause_after_speech_ends_an_utterance_however_the_frames_are_chunked() -> None:
    labels = [BLANK] * 20 + speech(40) + [BLANK] * 50 + speech(30) + [SPACE, BLANK] * 10
    probs = frames(labels)
    config = EndpointConfig(silence_ms=700)  # 35 frames
    # The first pause is 51 frames after the last character (40 speech frames end on a blank): cut 35 in.
    assert cuts_of(probs, config, []) == [20 + 39 + 35]
    rng = np.random.default_rng(1)
    for _ in range(20):
        chunks = list(rng.integers(1, 40, size=10))
        assert cuts_of(probs, config, chunks) == [94]
    assert cuts_of(probs, EndpointConfig(silence_ms=0), []) == []  # off: only eof ends it
    assert cuts_of(probs, EndpointConfig(silence_ms=1500), []) == []  # no pause that long


def test_leading_silence_is_no_utterance_and_the_maximum_length_waits_for_a_word_boundary() -> None:
    config = EndpointConfig(silence_ms=700, max_utterance_seconds=1.0)  # 50 frames
    assert cuts_of(frames([BLANK] * 120), config, [16] * 7) == [50, 100]  # silence: dropped every 50 frames
    # Speech without a pause: cut at the first space after 50 frames (a word boundary), not mid-word.
    word = [A, A, BLANK, A, A, BLANK, A]  # 7 frames of one word, then a space
    labels = (word + [SPACE]) * 12
    cuts = cuts_of(frames(labels), config, [])
    assert cuts and all(labels[cut - 1] == SPACE for cut in cuts)
    assert cuts[0] == 56  # the first space at or after frame 50
    # No boundary at all: cut anyway, MAX_OVERRUN_SECONDS (2 s, 100 frames) past the maximum.
    assert cuts_of(frames([A, BLANK] * 100), config, []) == [150]


def test_bad_endpoint_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="endpoint_silence_ms"):
        EndpointConfig(silence_ms=-1)
    with pytest.raises(ValueError, match="max_utterance_seconds"):
        EndpointConfig(max_utterance_seconds=-1)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(Settings(model_dir=Path("models/default"), backend="numpy"))


@pytest.fixture(scope="module")
def phrases_audio(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = spoken_phrases(PHRASES, tmp_path_factory.mktemp("phrases") / "three.wav")
    samples, _ = soundfile.read(path, dtype="float32")
    return samples


def test_a_file_is_cut_into_its_phrases_and_the_whole_is_their_concatenation(
    engine: Engine, phrases_audio: np.ndarray
) -> None:
    result = engine.transcribe(phrases_audio)
    utterances = result.utterances
    assert [u.text for u in utterances] == PHRASES  # the default model knows these words
    assert " ".join(u.text for u in utterances) == result.transcript.text
    assert [w for u in utterances for w in u.transcript.words] == list(result.transcript.words)
    for before, after in zip(utterances, utterances[1:], strict=False):
        assert before.end + 0.7 <= after.start  # a real pause between them
        assert before.first_frame + before.frames == after.first_frame
    assert 0.5 <= utterances[0].start and utterances[-1].end <= len(phrases_audio) / 16000
    single = engine.transcribe(phrases_audio[: int(16000 * (utterances[0].end + 0.3))])
    assert single.transcript.text == PHRASES[0] and len(single.utterances) == 1


def test_a_stream_cuts_where_the_file_is_cut(engine: Engine, phrases_audio: np.ndarray) -> None:
    file_cut = engine.transcribe(phrases_audio).utterances
    session = engine.open_stream()
    partials, streamed = [], []
    for start in range(0, len(phrases_audio), 1600):  # 100 ms of audio at a time
        partial = session.feed(phrases_audio[start : start + 1600])
        streamed += session.take_utterances()
        if partial is not None:
            partials.append(partial)
            assert not any(u.text in partial for u in streamed)  # a partial is the utterance in progress
    whole = session.finish()
    streamed += session.take_utterances()
    assert [u.text for u in streamed] == [u.text for u in file_cut]
    for ours, theirs in zip(streamed, file_cut, strict=True):
        assert abs(ours.first_frame - theirs.first_frame) <= 1  # float32 rounding may move an argmax
        assert ours.start == pytest.approx(theirs.start, abs=0.021)
    assert whole.text == " ".join(u.text for u in streamed)
    assert max(len(p) for p in partials) <= max(len(u.text) for u in streamed)


def test_endpoints_off_gives_one_utterance_as_before(engine: Engine, phrases_audio: np.ndarray) -> None:
    session = engine.open_stream(endpoints=EndpointConfig(silence_ms=0))
    session.feed(phrases_audio)
    assert session.take_utterances() == []
    whole = session.finish()
    (only,) = session.take_utterances()
    assert only.text == whole.text == " ".join(PHRASES)


def test_silence_alone_gives_no_utterance(engine: Engine) -> None:
    session = engine.open_stream(endpoints=EndpointConfig(silence_ms=700, max_utterance_seconds=2.0))
    session.feed(np.zeros(16000 * 7, np.float32))
    whole = session.finish()
    assert session.take_utterances() == [] and whole.text == "" and whole.words == ()
