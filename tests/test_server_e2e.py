"""End to end against a real uvicorn on a loopback port: curl-style uploads with httpx, a websocket client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile
from websockets.sync.client import connect

from tests.support.server import free_port, running_server, start_server


@pytest.fixture(scope="module")
def server(small_model_dir: Path) -> Iterator[str]:
    with running_server({"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "64"}) as base:
        yield base


def test_upload_like_curl(server: str, speech_wav: Path) -> None:
    with speech_wav.open("rb") as handle:
        response = httpx.post(
            f"{server}/transcribe", files={"file": ("a.wav", handle, "audio/wav")}, timeout=60
        )
    assert response.status_code == 200
    body = response.json()
    assert body["backend"] == "numpy" and body["decoder"] == "beam 64, no LM"
    assert body["duration"] == pytest.approx(soundfile.info(speech_wav).duration, abs=1e-3)
    assert isinstance(body["text"], str) and isinstance(body["words"], list)


def test_bad_upload_over_the_network(server: str) -> None:
    response = httpx.post(f"{server}/transcribe", files={"file": ("x.wav", b"nonsense" * 50)}, timeout=30)
    assert response.status_code == 415 and response.headers["content-type"] == "application/json"


def test_websocket_stream_matches_upload_of_the_same_audio(server: str, speech_wav: Path) -> None:
    pcm = soundfile.read(speech_wav, dtype="int16")[0].tobytes()
    messages = []
    with connect(server.replace("http", "ws") + "/stream") as ws:
        for start in range(0, len(pcm), 6400):  # 0.2 s frames, as Vosk's example clients send
            ws.send(pcm[start : start + 6400])
        ws.send(json.dumps({"type": "eof"}))
        for raw in ws:
            messages.append(json.loads(raw))
    assert messages[-1]["type"] == "final"
    assert all(m["type"] == "partial" for m in messages[:-1])
    assert messages[-1]["duration"] == pytest.approx(len(pcm) / 32000, abs=1e-3)


def test_a_bad_model_directory_stops_startup_with_one_line(tmp_path: Path) -> None:
    process = start_server({"DS_MODEL_DIR": str(tmp_path / "missing")}, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "cannot start: model directory" in output and "does not exist" in output
    assert "Traceback" not in output
