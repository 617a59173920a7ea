"""Utterances through the service: /stream's utterance messages and final, /transcribe's utterances, subtitles
cut where the stream is cut, per-stream endpoint settings and the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.audio import DEMO_PHRASES, pcm16, spoken_phrases
from tests.support.metrics import scrape, value
from tests.support.protocol import stream_pcm

PHRASES = DEMO_PHRASES


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(model_dir=Path("models/default"), backend="numpy")
    with TestClient(create_app(settings, Engine.load(settings))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def three_phrases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spoken_phrases(PHRASES, tmp_path_factory.mktemp("utterances") / "three.wav")


def test_stream_sends_an_utterance_per_phrase_and_the_whole_transcript_at_eof(
    client: TestClient, three_phrases: Path
) -> None:
    messages = stream_pcm(client, pcm16(three_phrases))
    *before, final = messages
    utterances = [m for m in before if m["type"] == "utterance"]
    last = [final["utterance"]] if final["utterance"] is not None else []
    heard = utterances + last
    assert [u["text"] for u in heard] == PHRASES
    assert final["text"] == " ".join(PHRASES)
    assert [w["word"] for u in heard for w in u["words"]] == [w["word"] for w in final["words"]]
    for utterance in heard:
        assert set(utterance) >= {"text", "words", "start", "end", "confidence"}
        assert utterance["start"] == utterance["words"][0]["start"] < utterance["end"]
        assert utterance["end"] == utterance["words"][-1]["end"] and 0 < utterance["confidence"] <= 1
    # Partials carry only the utterance in progress: never a word of one already sent.
    sent: list[str] = []
    for message in before:
        if message["type"] == "utterance":
            sent.append(message["text"])
        elif message["type"] == "partial":
            assert not any(text in message["text"] for text in sent)


def test_transcribe_and_subtitles_cut_where_the_stream_cuts(client: TestClient, three_phrases: Path) -> None:
    files = {"file": ("three.wav", three_phrases.read_bytes(), "audio/wav")}
    body = client.post("/transcribe", files=files).json()
    assert [u["text"] for u in body["utterances"]] == PHRASES
    streamed = stream_pcm(client, pcm16(three_phrases))
    spans = [(m["start"], m["end"]) for m in streamed if m["type"] == "utterance"]
    if streamed[-1]["utterance"] is not None:
        spans.append((streamed[-1]["utterance"]["start"], streamed[-1]["utterance"]["end"]))
    for (start, end), utterance in zip(spans, body["utterances"], strict=True):
        assert start == pytest.approx(utterance["start"], abs=0.021)
        assert end == pytest.approx(utterance["end"], abs=0.021)
    srt = client.post("/transcribe", files=files, params={"format": "srt"}).text
    cues = [block.splitlines()[2:] for block in srt.strip().split("\n\n")]
    assert [" ".join(lines) for lines in cues] == PHRASES  # one cue per utterance (each fits one cue)


def test_a_stream_may_turn_endpoints_off_or_change_the_pause(client: TestClient, three_phrases: Path) -> None:
    pcm = pcm16(three_phrases)
    off = stream_pcm(client, pcm, config={"type": "config", "endpoint_silence_ms": 0})
    assert [m["type"] for m in off if m["type"] == "utterance"] == []
    assert off[-1]["utterance"]["text"] == off[-1]["text"] == " ".join(PHRASES)
    long_pause = stream_pcm(client, pcm, config={"type": "config", "endpoint_silence_ms": 5000})
    assert long_pause[-1]["utterance"]["text"] == " ".join(PHRASES)  # no pause is 5 s long
    for bad in (-1, 1.5, "700", True, 10_001):
        with client.websocket_connect("/stream") as ws:
            ws.send_text(json.dumps({"type": "config", "endpoint_silence_ms": bad}))
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["code"] == "bad_config"
            assert "endpoint_silence_ms" in reply["message"]


def test_utterances_are_counted_in_the_metrics(client: TestClient, three_phrases: Path) -> None:
    def count(route: str) -> float:
        return value(scrape(client), "ds_utterance_seconds_count", route=route)

    stream_before, file_before = count("/stream"), count("/transcribe")
    stream_pcm(client, pcm16(three_phrases))
    client.post("/transcribe", files={"file": ("three.wav", three_phrases.read_bytes(), "audio/wav")})
    assert count("/stream") - stream_before == 3
    assert count("/transcribe") - file_before == 3
