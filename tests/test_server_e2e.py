"""End to end against a real uvicorn on a loopback port: curl-style uploads with httpx, a websocket client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import soundfile
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen[str]:
    """`python -m app`, as `make serve` and the launchd job run it: host and port from DS_HOST/DS_PORT. Its
    output goes to `log` if given (a pipe nobody reads would fill up and block the server), else to a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env={**os.environ, "DS_HOST": "127.0.0.1", "DS_PORT": str(port), **env},
        stdout=log.open("w") if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class ServerUrl(str):
    """The base URL of a running server, with its process id and the file its log goes to."""

    log: Path
    pid: int

    @property
    def ws(self) -> str:
        return self.replace("http://", "ws://", 1)


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[ServerUrl]:
    """A real server on a free loopback port, up once /health answers; stopped on exit."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1])
    process = start_server(env, port, log)
    base = ServerUrl(f"http://127.0.0.1:{port}")
    base.log, base.pid = log, process.pid
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            process.kill()
            pytest.fail(f"server did not come up in 60 s: {log.read_text()}")
        yield base
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.unlink(missing_ok=True)


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
