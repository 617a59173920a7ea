"""The OpenAI-compatible API driven by the official `openai` SDK against the in-process app (every response format,
timestamp granularities, streaming, errors), subtitles parsed back, and /transcribe?format=.

The model has random weights, so transcripts are noise: the tests assert consistency and structure, never text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import subtitles
from app.service.incremental import transcript_events
from app.settings import Settings
from app.speech.alphabet import ENGLISH
from app.speech.audio import decode_audio
from app.speech.decoding import GreedyDecoder, Word
from app.speech.engine import Engine


@pytest.fixture(scope="module")
def settings(small_model_dir: Path) -> Settings:
    return Settings(model_dir=small_model_dir, backend="numpy", beam_width=64, max_upload_bytes=2_000_000)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    return Engine.load(settings)


def build_app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings, engine)


@pytest.fixture(scope="module")
def http(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(build_app(settings, engine)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="not-needed", http_client=http, max_retries=0
    )


@pytest.fixture(scope="module")
def two_utterances(
    speech_wav: Path, other_speech_wav: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Two sentences with a second of silence between them (~6.5 s): several streaming pieces."""
    a, _ = soundfile.read(speech_wav, dtype="float32")
    b, _ = soundfile.read(other_speech_wav, dtype="float32")
    path = tmp_path_factory.mktemp("openai") / "two.wav"
    soundfile.write(path, np.concatenate([a, np.zeros(16000, np.float32), b]), 16000, subtype="PCM_16")
    return path


def upload(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "audio/wav")


def expected(engine: Engine, path: Path) -> tuple[str, tuple[Word, ...], float]:
    samples, duration = decode_audio(path.read_bytes())
    transcript = engine.transcribe(samples).transcript
    return transcript.text, transcript.words, duration


# --- subtitle parsers (independent of app/service/subtitles.py) -------------------------------------------------------

SRT_TIME = r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})"
VTT_TIME = r"(\d{2,}):(\d{2}):(\d{2})\.(\d{3})"


def _seconds(match: tuple[str, ...]) -> float:
    h, m, s, ms = (int(x) for x in match)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_cues(document: str, kind: str) -> list[tuple[float, float, list[str]]]:
    """(start, end, lines) per cue; asserts the block structure of SRT or WebVTT."""
    if kind == "vtt":
        assert document.startswith("WEBVTT\n\n")
        document = document[len("WEBVTT\n\n") :]
    time_re = SRT_TIME if kind == "srt" else VTT_TIME
    cues = []
    blocks = [b for b in document.split("\n\n") if b.strip()]
    for number, block in enumerate(blocks, start=1):
        lines = block.strip("\n").split("\n")
        if kind == "srt":
            assert lines.pop(0) == str(number)
        timing = re.fullmatch(f"{time_re} --> {time_re}", lines[0])
        assert timing, lines[0]
        groups = timing.groups()
        assert lines[1:] and all(lines[1:])
        cues.append((_seconds(groups[:4]), _seconds(groups[4:]), lines[1:]))
    return cues


def check_cues(cues: list[tuple[float, float, list[str]]], text: str, duration: float) -> None:
    assert " ".join(" ".join(lines) for _, _, lines in cues) == text
    previous_end = 0.0
    for start, end, lines in cues:
        assert previous_end <= start < end <= duration + 1e-3
        previous_end = end
        assert len(lines) <= subtitles.MAX_LINES
        assert all(len(line) <= subtitles.MAX_LINE_CHARS or " " not in line for line in lines)


# --- /v1/models ----------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI, engine: Engine) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [engine.model_dir.name]
    assert models.data[0].object == "model" and models.data[0].created > 0
    assert client.models.retrieve(engine.model_dir.name).id == engine.model_dir.name
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("whisper-1")
    assert info.value.body == {
        "message": f"The model 'whisper-1' does not exist; this server serves '{engine.model_dir.name}'",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


# --- response formats ----------------------------------------------------------------------------------------


def test_json_and_text_equal_the_engine(client: openai.OpenAI, engine: Engine, speech_wav: Path) -> None:
    text, _, _ = expected(engine, speech_wav)
    assert text, "the random model says something on speech (the checks below need words)"
    for model in ("whisper-1", engine.model_dir.name):
        assert client.audio.transcriptions.create(file=upload(speech_wav), model=model).text == text
    plain = client.audio.transcriptions.create(
        file=upload(speech_wav),
        model="whisper-1",
        response_format="text",
        language="en",
        prompt="ignored",
        temperature=0.4,
    )
    assert plain == text + "\n"
    assert (
        client.audio.transcriptions.create(file=upload(speech_wav), model="x", language="English").text
        == text
    )


@pytest.mark.parametrize(
    ("granularities", "has_segments", "has_words"),
    [
        (None, True, False),
        (["segment"], True, False),
        (["word"], False, True),
        (["word", "segment"], True, True),
    ],
)
def test_verbose_json(
    client: openai.OpenAI,
    engine: Engine,
    two_utterances: Path,
    granularities: list[str] | None,
    has_segments: bool,
    has_words: bool,
) -> None:
    text, words, duration = expected(engine, two_utterances)
    samples, _ = decode_audio(two_utterances.read_bytes())
    utterance_starts = [u.transcript.words[0] for u in engine.transcribe(samples).utterances]
    extra = {} if granularities is None else {"timestamp_granularities": granularities}
    result = client.audio.transcriptions.create(
        file=upload(two_utterances), model="whisper-1", response_format="verbose_json", **extra
    )
    assert result.text == text and result.language == "english"
    assert result.duration == pytest.approx(duration, abs=1e-3)
    assert (result.segments is not None) == has_segments and (result.words is not None) == has_words
    if result.words is not None:
        assert [(w.word, w.start, w.end) for w in result.words] == [
            (w.word, round(w.start, 3), round(w.end, 3)) for w in words
        ]
    if result.segments is not None:
        segments = result.segments
        assert [s.id for s in segments] == list(range(len(segments)))
        assert " ".join(s.text for s in segments) == text
        # Segments partition the words in order; each starts/ends at its first/last word.
        word_iter = iter(words)
        previous: list[Word] = []
        for seg in segments:
            seg_words = [next(word_iter) for _ in seg.text.split()]
            assert seg.start == round(seg_words[0].start, 3) and seg.end == round(seg_words[-1].end, 3)
            assert seg.start < seg.end <= duration
            if previous:  # split for a reason: an utterance starts, the length cap, or the two lines are full
                first = seg_words[0]
                assert previous[-1].end <= first.start
                assert (
                    first in utterance_starts
                    or first.end - previous[0].start > subtitles.MAX_SEGMENT_SECONDS
                    or len(subtitles.wrap([w.word for w in [*previous, first]])) > subtitles.MAX_LINES
                )
            previous = seg_words
            assert not set(seg_words[1:]) & set(utterance_starts)  # never across an utterance's start
            assert seg.tokens == [] and seg.seek == 0 and seg.temperature == 0.0 and seg.no_speech_prob == 0.0
            assert -25 < seg.avg_logprob <= 0 and seg.compression_ratio > 0
        assert next(word_iter, None) is None


@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_subtitles_through_the_sdk(
    client: openai.OpenAI, http: TestClient, engine: Engine, two_utterances: Path, kind: str
) -> None:
    text, _, duration = expected(engine, two_utterances)
    document = client.audio.transcriptions.create(
        file=upload(two_utterances),
        model="whisper-1",
        response_format=kind,
    )
    assert isinstance(document, str)
    cues = parse_cues(document, kind)
    check_cues(cues, text, duration)
    verbose = client.audio.transcriptions.create(
        file=upload(two_utterances), model="whisper-1", response_format="verbose_json"
    )
    assert verbose.segments is not None
    assert [(round(a, 3), round(b, 3)) for a, b, _ in cues] == [(s.start, s.end) for s in verbose.segments]
    raw = http.post(
        "/v1/audio/transcriptions", files={"file": upload(two_utterances)}, data={"response_format": kind}
    )
    assert raw.headers["content-type"].startswith("text/plain" if kind == "srt" else "text/vtt")


# --- streaming -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["json", "text"])
def test_stream_deltas_concatenate_to_the_done_text(
    client: openai.OpenAI, engine: Engine, two_utterances: Path, response_format: str
) -> None:
    text, _, _ = expected(engine, two_utterances)
    events = list(
        client.audio.transcriptions.create(
            file=upload(two_utterances),
            model="whisper-1",
            stream=True,
            response_format=response_format,
        )
    )
    *deltas, done = events
    assert done.type == "transcript.text.done"
    assert all(event.type == "transcript.text.delta" for event in deltas)
    assert "".join(event.delta for event in deltas) == done.text == text
    assert len(deltas) >= 2, "text goes out while the audio is processed, not only at the end"


class CountingModel:
    """The engine's model, counting the pieces run through it."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def run_window(self, *args: object) -> object:
        self.calls += 1
        return self._model.run_window(*args)


async def _events_with_model_calls(engine: Engine, samples: np.ndarray) -> list[tuple[dict, int]]:
    counting = CountingModel(engine.model)
    counted = Engine(engine.model_dir, counting, engine.decoder)
    return [(event, counting.calls) async for event in transcript_events(counted, samples)]


async def test_deltas_are_sent_before_the_model_has_seen_all_the_audio(
    engine: Engine, two_utterances: Path
) -> None:
    samples, _ = decode_audio(two_utterances.read_bytes())
    events = await _events_with_model_calls(engine, samples)
    total = events[-1][1]
    assert total >= 5, "1 s pieces"
    first_delta_at = next(calls for event, calls in events if event["type"] == "transcript.text.delta")
    assert first_delta_at < total / 2
    assert "".join(e.get("delta", "") for e, _ in events) == events[-1][0]["text"]


@pytest.mark.parametrize("decoder", ["greedy", "scorer"])
async def test_stream_with_other_decoders(
    engine: Engine, small_model_dir: Path, tmp_path: Path, two_utterances: Path, decoder: str
) -> None:
    """Greedy (never revises) and beam search with a KenLM scorer (the lexicon decoder): same invariants."""
    if decoder == "greedy":
        other = Engine(engine.model_dir, engine.model, GreedyDecoder(ENGLISH))
    else:
        from dsconvert.lm.build_scorer import build_scorer

        (tmp_path / "corpus.txt").write_text(
            "turn on the kitchen lights\nplay some music\nthe quick brown fox\n"
        )
        scorer = build_scorer(tmp_path / "corpus.txt", ENGLISH, tmp_path / "t.scorer")
        other = Engine.load(
            Settings(model_dir=small_model_dir, backend="numpy", beam_width=64, scorer=scorer, lm_alpha=1.5)
        )
    samples, _ = decode_audio(two_utterances.read_bytes())
    events = await _events_with_model_calls(other, samples)
    text = other.transcribe(samples).transcript.text
    assert text
    deltas = [e["delta"] for e, _ in events if e["type"] == "transcript.text.delta"]
    assert "".join(deltas) == events[-1][0]["text"] == text
    assert len(deltas) >= 2


def test_stream_of_audio_too_short_for_one_window(http: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "tiny.wav"
    soundfile.write(path, np.zeros(300, np.float32), 16000, subtype="PCM_16")
    response = http.post("/v1/audio/transcriptions", files={"file": upload(path)}, data={"stream": "true"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.text == 'data: {"type": "transcript.text.done", "text": ""}\n\n'


# --- errors --------------------------------------------------------------------------------------------------


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"", 400, "empty_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100), 415, "unsupported_audio"),
        (b"\x89PNG\r\n\x1a\n" + bytes(500), 415, "unsupported_audio"),
    ],
)
def test_bad_audio_through_the_sdk(client: openai.OpenAI, payload: bytes, status: int, code: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(file=("x.wav", payload), model="whisper-1")
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == code and info.value.body["param"] == "file"
    assert (
        info.value.body["type"] == "invalid_request_error" and "Traceback" not in info.value.body["message"]
    )


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"response_format": "diarized_json"}, "response_format", None),
        ({"language": "fr"}, "language", "unsupported_language"),
        ({"temperature": "1.5"}, "temperature", None),
        ({"temperature": "warm"}, "temperature", None),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities", None),
        (
            {"response_format": "verbose_json", "timestamp_granularities[]": "token"},
            "timestamp_granularities",
            None,
        ),
        ({"stream": "true", "response_format": "srt"}, "stream", None),
        ({"stream": "maybe"}, "stream", None),
    ],
)
def test_bad_fields_are_400_in_openai_shape(
    http: TestClient, speech_wav: Path, fields: dict[str, str], param: str, code: str | None
) -> None:
    response = http.post("/v1/audio/transcriptions", files={"file": upload(speech_wav)}, data=fields)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == param and error["code"] == code and error["type"] == "invalid_request_error"


def test_missing_or_malformed_upload_is_400(http: TestClient) -> None:
    error = _error(http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}))
    assert error["param"] == "file" and "required" in error["message"]
    error = _error(http.post("/v1/audio/transcriptions", data={"file": "not a file"}))
    assert error["param"] == "file"
    for content_type, message in (
        ("multipart/form-data", "could not parse the multipart form: Missing boundary"),
        ("multipart/form-data; boundary=x", "'file' (the audio) is required"),  # truncated: no parts
    ):
        response = http.post(
            "/v1/audio/transcriptions", content=b"--x\r\nbroken", headers={"content-type": content_type}
        )
        assert response.status_code == 400 and message in _error(response)["message"]


def test_granularities_sent_by_hand_as_a_repeated_field(http: TestClient, speech_wav: Path) -> None:
    files = [
        ("file", upload(speech_wav)),
        ("response_format", (None, b"verbose_json")),
        ("timestamp_granularities[]", (None, b"word")),
        ("timestamp_granularities[]", (None, b"segment")),
    ]
    body = http.post("/v1/audio/transcriptions", files=files).json()
    assert "words" in body and "segments" in body and body["task"] == "transcribe"


def test_upload_over_the_cap_is_413(client: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(
            file=("big.wav", bytes(settings.max_upload_bytes + 1)), model="whisper-1"
        )
    assert info.value.status_code == 413
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "request_too_large" and body["param"] == "file"
    assert "DS_MAX_UPLOAD_BYTES" in body["message"]


def test_the_rest_of_the_service_keeps_detail_errors(http: TestClient) -> None:
    response = http.post("/transcribe", files={"file": ("x.wav", b"", "audio/wav")})
    assert response.status_code == 400 and set(response.json()) == {"detail"}


def test_openapi_documents_the_form_fields(http: TestClient) -> None:
    spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/v1/audio/transcriptions"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "model", "language", "prompt", "temperature", "response_format", "stream"} <= set(
        schema["properties"]
    )
    assert "timestamp_granularities[]" in schema["properties"]
    assert {"400", "413", "415"} <= set(operation["responses"])
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert (
        {"VerboseTranscription", "ErrorResponse", "ModelList"} <= refs <= set(spec["components"]["schemas"])
    )


# --- /transcribe?format= -------------------------------------------------------------------------------------


def test_transcribe_formats(
    http: TestClient, client: openai.OpenAI, engine: Engine, two_utterances: Path
) -> None:
    text, _, duration = expected(engine, two_utterances)
    as_json = http.post("/transcribe", files={"file": upload(two_utterances)})
    assert as_json.json()["text"] == text and "words" in as_json.json()
    assert http.post("/transcribe?format=json", files={"file": upload(two_utterances)}).json()["text"] == text
    plain = http.post("/transcribe?format=text", files={"file": upload(two_utterances)})
    assert plain.headers["content-type"].startswith("text/plain") and plain.text == text + "\n"
    for kind, media_type in (("srt", "application/x-subrip"), ("vtt", "text/vtt")):
        response = http.post(f"/transcribe?format={kind}", files={"file": upload(two_utterances)})
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        check_cues(parse_cues(response.text, kind), text, duration)
        # One subtitle module behind both routes: the same document.
        assert response.text == client.audio.transcriptions.create(
            file=upload(two_utterances),
            model="whisper-1",
            response_format=kind,
        )
    assert http.post("/transcribe?format=docx", files={"file": upload(two_utterances)}).status_code == 422


# --- app/service/subtitles.py ----------------------------------------------------------------------------------------


def words_at(*spans: tuple[str, float, float]) -> list[Word]:
    return [Word(word, start, end, 0.9) for word, start, end in spans]


def test_timestamps() -> None:
    assert subtitles.srt_timestamp(0) == "00:00:00,000"
    assert subtitles.srt_timestamp(1.234) == "00:00:01,234"
    assert subtitles.vtt_timestamp(3723.456) == "01:02:03.456"
    assert subtitles.srt_timestamp(59.9996) == "00:01:00,000"
    assert subtitles.vtt_timestamp(100 * 3600 + 0.5) == "100:00:00.500"


def test_segments_split_at_utterances_length_and_width() -> None:
    first = words_at(("turn", 0.1, 0.3), ("on", 0.35, 0.5))
    second = words_at(("lights", 1.2, 1.6), ("now", 1.7, 1.9))
    assert [s.text for s in subtitles.segment_utterances([first, second])] == ["turn on", "lights now"]
    assert [s.text for s in subtitles.segment_words(first + second)] == ["turn on lights now"]  # pauses: not here
    long = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.4, 0.9) for i in range(40)]  # 20 s without a pause
    segments = subtitles.segment_words(long)
    assert all(s.end - s.start <= subtitles.MAX_SEGMENT_SECONDS for s in segments)
    assert " ".join(s.text for s in segments) == " ".join(w.word for w in long)
    wide = [Word("abcdefghij", i * 0.2, i * 0.2 + 0.15, 0.9) for i in range(20)]  # 4 s, 219 characters
    for seg in subtitles.segment_words(wide):
        assert len(seg.lines) <= 2 and all(len(line) <= 42 for line in seg.lines)
        assert " ".join(seg.lines) == seg.text


def test_lines_are_balanced_and_long_words_stand_alone() -> None:
    assert subtitles.balanced_lines("a bb ccc dddd eeeee ffffff ggggggg hhhhhhhh iiiiiiiii".split()) == [
        "a bb ccc dddd eeeee ffffff",
        "ggggggg hhhhhhhh iiiiiiiii",
    ]
    giant = "x" * 60
    segments = subtitles.segment_words(words_at(("hi", 0, 0.2), (giant, 0.3, 1.0), ("there", 1.1, 1.3)))
    assert [s.lines for s in segments] == [("hi",), (giant,), ("there",)]


def test_documents_and_escaping() -> None:
    words = words_at(("a<b", 0.0, 0.5), ("&c", 0.6, 1.0))
    assert subtitles.srt([words]) == "1\n00:00:00,000 --> 00:00:01,000\na<b &c\n\n"
    assert subtitles.vtt([words]) == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na&lt;b &amp;c\n"
    assert subtitles.srt([]) == "" and subtitles.vtt([]) == "WEBVTT\n\n"
