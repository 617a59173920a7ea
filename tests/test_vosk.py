"""The Vosk dialect on /vosk and encoded (webm/ogg) audio on both stream dialects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.audio import pcm16, with_pyav
from tests.support.protocol import stream_pcm


@pytest.fixture(scope="module")
def engine(small_model_dir: Path) -> Engine:
    return Engine.load(Settings(model_dir=small_model_dir, backend="numpy", beam_width=64))


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=engine.model_dir.path), engine)) as test_client:
        yield test_client


def vosk_session(client: TestClient, pcm: bytes, rate: int, frame_seconds: float = 0.2) -> list[dict]:
    """Drive /vosk the way Vosk's example clients (test.py) do: config, 0.2 s frames, recv after each send."""
    replies = []
    frame = int(rate * frame_seconds) * 2
    with client.websocket_connect("/vosk") as ws:
        ws.send_text('{ "config" : { "sample_rate" : ' + str(rate) + " } }")
        for start in range(0, len(pcm), frame):
            ws.send_bytes(pcm[start : start + frame])
            replies.append(ws.receive_json())
        ws.send_text('{"eof" : 1}')
        replies.append(ws.receive_json())
    return replies


def test_vosk_clients_get_one_reply_per_message(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    replies = vosk_session(client, pcm, 16000)
    frames = -(-len(pcm) // 6400)
    assert len(replies) == frames + 1
    assert all(set(r) == {"partial"} for r in replies[:-1])
    final = replies[-1]
    native = stream_pcm(client, pcm)[-1]  # the same audio on the native protocol: the same recognition
    assert final.get("text", "") == native["text"]
    if native["text"]:
        assert [w["word"] for w in final["result"]] == native["text"].split()
        for word in final["result"]:
            assert set(word) == {"conf", "start", "end", "word"} and word["start"] < word["end"]


def test_vosk_8k_default_and_resampling(client: TestClient, speech_wav: Path) -> None:
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    pcm8k = (np.clip(soxr.resample(samples, 16000, 8000), -1, 1) * 32767).astype("<i2").tobytes()
    with client.websocket_connect("/vosk") as ws:  # no config: Vosk's default 8000 Hz
        for start in range(0, len(pcm8k), 3200):
            ws.send_bytes(pcm8k[start : start + 3200])
            assert "partial" in ws.receive_json()
        ws.send_text('{"eof":1}')  # compact spelling: parsed, not compared byte for byte
        assert "text" in ws.receive_json()


def test_vosk_reset_starts_fresh(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    with client.websocket_connect("/vosk") as ws:
        ws.send_text(json.dumps({"config": {"sample_rate": 16000}}))
        results = []
        for _ in range(2):
            for start in range(0, len(pcm), 6400):
                ws.send_bytes(pcm[start : start + 6400])
                ws.receive_json()
            ws.send_text('{"reset" : 1}')
            results.append(ws.receive_json())
        ws.send_text('{"eof" : 1}')
        assert ws.receive_json() == {"text": ""}  # nothing after the last reset
    assert results[0] == results[1], "after reset the same audio gives the same result: no state carried"


def test_vosk_bad_messages(client: TestClient) -> None:
    with client.websocket_connect("/vosk") as ws:
        ws.send_text('{"config": {"sample_rate": 1}}')
        assert "sample_rate must be an integer from 8000 to 48000" in ws.receive_json()["error"]
        ws.send_text("eof")
        assert "not a JSON object" in ws.receive_json()["error"]
        ws.send_bytes(b"\x00\x01\x02")
        assert "odd frame" in ws.receive_json()["error"]
        ws.send_text('{"eof" : 1}')
        assert ws.receive_json() == {"text": ""}


@pytest.mark.parametrize(("container", "codec"), [("webm", "libopus"), ("ogg", "libopus")])
def test_encoded_stream_like_mediarecorder(
    client: TestClient, speech_wav: Path, container: str, codec: str
) -> None:
    """A browser's MediaRecorder sends webm/Opus in pieces; the server decodes it as it arrives."""
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    encoded = with_pyav(soxr.resample(samples, 16000, 48000).astype(np.float32), 48000, container, codec)
    messages = []
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "config", "format": container}))
        for start in range(0, len(encoded), 1500):
            ws.send_bytes(encoded[start : start + 1500])
        ws.send_text(json.dumps({"type": "eof"}))
        while not messages or messages[-1]["type"] != "final":
            messages.append(ws.receive_json())
    assert not [m for m in messages if m["type"] == "error"]
    assert messages[-1]["duration"] == pytest.approx(len(samples) / 16000, abs=0.1)
    assert any(m["type"] == "partial" for m in messages), "partials arrive while the encoded audio streams"


def test_encoded_garbage_is_an_error_not_a_crash(client: TestClient) -> None:
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "config", "format": "webm"}))
        ws.send_bytes(b"this is not webm at all" * 100)
        ws.send_text(json.dumps({"type": "eof"}))
        messages = [ws.receive_json()]
        while messages[-1]["type"] != "final":
            messages.append(ws.receive_json())
    assert any(m["type"] == "error" and "cannot decode the webm stream" in m["message"] for m in messages)
    assert messages[-1]["text"] == ""


def test_unknown_format_is_refused(client: TestClient) -> None:
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "config", "format": "mp4"}))
        assert ws.receive_json() == {
            "type": "error",
            "code": "bad_config",
            "message": "format must be pcm, webm or ogg, got 'mp4'",
        }
