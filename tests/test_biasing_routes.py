"""Hot words and N-best through every route: /transcribe, /v1/audio/transcriptions, /stream and /vosk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.audio import pcm16
from tests.support.lm import VOCABULARY_TEXT


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, small_model_dir: Path) -> Iterator[TestClient]:
    from app.speech.alphabet import ENGLISH
    from dsconvert.lm.build_scorer import build_scorer

    directory = tmp_path_factory.mktemp("scorer")
    (directory / "corpus.txt").write_text(VOCABULARY_TEXT)
    scorer = build_scorer(directory / "corpus.txt", ENGLISH, directory / "home.scorer")
    settings = Settings(model_dir=small_model_dir, backend="numpy", beam_width=64, scorer=scorer)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def upload(client: TestClient, wav: Path, query: str = "") -> dict:
    response = client.post(f"/transcribe{query}", files={"file": wav.read_bytes()})
    assert response.status_code == 200, response.text
    return response.json()


def test_transcribe_alternatives(client: TestClient, speech_wav: Path) -> None:
    plain = upload(client, speech_wav)
    assert "alternatives" not in plain
    body = upload(client, speech_wav, "?alternatives=3")
    alternatives = body["alternatives"]
    assert 1 <= len(alternatives) <= 3 and alternatives[0]["text"] == body["text"] == plain["text"]
    assert len({a["text"] for a in alternatives}) == len(alternatives)
    confidences = [a["confidence"] for a in alternatives]
    assert confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-6


def test_transcribe_hot_words_are_validated(client: TestClient, speech_wav: Path) -> None:
    for query, message in (
        ("?hot_words=kitch%C3%A9n:5", "characters the model's alphabet lacks"),
        ("?hot_words=lights:abc", "boost"),
        ("?alternatives=0", "greater than or equal to 1"),
    ):
        response = client.post(f"/transcribe{query}", files={"file": speech_wav.read_bytes()})
        assert response.status_code == 422, query
        assert message in json.dumps(response.json()), (query, response.json())
    body = upload(client, speech_wav, "?hot_words=kitchen:5,zanzibar:8")  # in and out of the vocabulary
    assert set(body["text"].split()) <= set(VOCABULARY_TEXT.split()) | {"zanzibar"}


def test_openai_route_takes_hot_words(client: TestClient, speech_wav: Path) -> None:
    files = {"file": ("a.wav", speech_wav.read_bytes())}
    ok = client.post("/v1/audio/transcriptions", files=files, data={"model": "m", "hot_words": "kitchen:4"})
    assert ok.status_code == 200
    bad = client.post("/v1/audio/transcriptions", files=files, data={"model": "m", "hot_words": "a b:3"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_hot_words"


def test_stream_config_biasing_and_alternatives(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "config", "hot_words": {"kitchen": "loud"}}))
        error = ws.receive_json()
        assert error["code"] == "bad_config" and "boost" in error["message"]
        config = {
            "type": "config",
            "phrase_list": ["kitchen lights"],
            "hot_words": "music:3",
            "alternatives": 2,
        }
        ws.send_text(json.dumps(config))
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
        ws.send_text(json.dumps({"type": "eof"}))
        message = ws.receive_json()
        while message["type"] != "final":
            message = ws.receive_json()
    assert message["alternatives"][0]["text"] == message["text"]
    assert len(message["alternatives"]) <= 2


def test_vosk_phrase_list_is_a_grammar_with_max_alternatives(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    with client.websocket_connect("/vosk") as ws:
        ws.send_text(
            json.dumps({"config": {"sample_rate": 16000, "phrase_list": ["kitchen"], "max_alternatives": 2}})
        )
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
            assert "partial" in ws.receive_json()
        ws.send_text('{"eof" : 1}')
        reply = ws.receive_json()
    assert set(reply) == {"alternatives"} and 1 <= len(reply["alternatives"]) <= 2
    for alternative in reply["alternatives"]:
        assert set(alternative) == {"confidence", "result", "text"}
        assert set(alternative["text"].split()) <= {"kitchen", "[unk]"}  # the grammar's words, or [unk]
