"""Operations: a stream's maximum length, the streamed OpenAI route behind the worker limit, queue metrics, CORS,
settings that fail with one line, and clients that vanish mid-upload or mid-stream on a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.engines import BlockingEngine, wait_for
from tests.support.metrics import scrape, value
from tests.support.server import ROOT, free_port, running_server, start_server

# --- DS_STREAM_MAX_SECONDS ----------------------------------------------------------------------------------


def test_stream_over_its_audio_limit_gets_its_final_and_closes(
    small_engine: Engine, small_model_dir: Path, speech_pcm: bytes
) -> None:
    app = create_app(Settings(model_dir=small_model_dir, stream_max_seconds=0.5), small_engine)
    with TestClient(app) as client, client.websocket_connect("/stream") as ws:
        messages = []
        for start in range(0, 32000, 3200):  # 1 s of audio in 0.1 s frames; the limit stops it at 0.5 s
            ws.send_bytes(speech_pcm[start : start + 3200])
        while True:
            try:
                messages.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                assert closed.code == 1000
                break
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["max_duration"] and "DS_STREAM_MAX_SECONDS" in errors[0]["message"]
    final = messages[-1]
    assert final["type"] == "final"
    assert 0.5 <= final["duration"] <= 0.6  # nothing after the limit was taken
    assert app.state.services.admission.active_streams == 0


def test_stream_open_too_long_is_ended_even_when_silent(small_engine: Engine, small_model_dir: Path) -> None:
    settings = Settings(model_dir=small_model_dir, stream_max_seconds=0.3, stream_idle_timeout=30)
    app = create_app(settings, small_engine)
    with TestClient(app) as client, client.websocket_connect("/vosk") as ws:
        started = time.monotonic()
        ws.send_text(json.dumps({"config": {"sample_rate": 16000}}))
        result = ws.receive_json()  # Vosk's clients get the final result, as for eof
        assert result == {"text": ""}
        assert time.monotonic() - started < 10  # ended by the 0.3 s limit, not the 30 s idle timeout
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    assert app.state.services.admission.active_streams == 0


# --- the streamed OpenAI route and the worker limit ---------------------------------------------------------


async def test_streamed_openai_route_waits_its_turn_and_counts_audio(
    small_engine: Engine, small_model_dir: Path, speech_wav: Path
) -> None:
    blocking = BlockingEngine(small_engine)
    app = create_app(Settings(model_dir=small_model_dir, workers=1, queue_length=0), blocking)
    files = {"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}
    sse = {"model": "default", "stream": "true"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        busy = asyncio.create_task(http.post("/transcribe", files=files))
        await wait_for(lambda: blocking.started == 1)
        metrics = scrape(await http.get("/metrics"))
        assert value(metrics, "ds_workers_busy") == 1 and value(metrics, "ds_queue_depth") == 0
        refused = await http.post("/v1/audio/transcriptions", files=files, data=sse)
        assert refused.status_code == 503  # before any event: the one worker is busy and nothing may wait
        assert refused.json()["error"]["code"] == "server_busy"
        blocking.release.set()
        assert (await busy).status_code == 200
        streamed = await http.post("/v1/audio/transcriptions", files=files, data=sse)
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith(
            "text/event-stream"
        )
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1]["type"] == "transcript.text.done"
        metrics = scrape(await http.get("/metrics"))
    route = "/v1/audio/transcriptions"
    duration = soundfile.info(speech_wav).duration
    assert value(metrics, "ds_audio_seconds_total", route=route) == pytest.approx(duration, abs=0.01)
    assert value(metrics, "ds_real_time_factor_count", route=route) == 1
    assert value(metrics, "ds_workers_busy") == 0 and app.state.services.admission.queued == 0


# --- CORS -------------------------------------------------------------------------------------------------------


def test_cors_is_off_unless_configured(small_engine: Engine, small_model_dir: Path) -> None:
    preflight = {"Origin": "http://laptop.lan", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Settings(model_dir=small_model_dir), small_engine)) as client:
        response = client.options("/transcribe", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in client.get("/info", headers=preflight).headers

    settings = Settings(model_dir=small_model_dir, api_key="k", cors_origins=["http://laptop.lan"])
    with TestClient(create_app(settings, small_engine)) as client:
        allowed = client.options(
            "/transcribe", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert allowed.status_code == 200  # answered before the API key check: preflights carry no key
        assert allowed.headers["access-control-allow-origin"] == "http://laptop.lan"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options("/transcribe", headers={**preflight, "Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = client.get(
            "/info", headers={"Origin": "http://laptop.lan"}
        )  # no key: 401, readable by the page
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "http://laptop.lan"


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_CORS_ORIGINS", "http://a.lan/, https://b.example:8443")
    assert Settings().cors_origins == ["http://a.lan", "https://b.example:8443"]


# --- startup ----------------------------------------------------------------------------------------------------


def test_invalid_settings_stop_python_m_app_with_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "DS_PORT": "http", "DS_LOG_LEVEL": "loud"}
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert (
        "cannot start: invalid settings" in lines[0] and "DS_PORT" in lines[0] and "DS_LOG_LEVEL" in lines[0]
    )


# --- clients that vanish ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(small_model_dir: Path) -> Iterator[str]:
    with running_server({"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "16"}) as base:
        yield base


def _settled(base: str, **expected: float) -> dict:
    """/metrics once every named gauge has the expected value (the server notices a vanished client later)."""
    deadline = time.monotonic() + 15
    while True:
        metrics = scrape(httpx.get(f"{base}/metrics", timeout=10))
        current = {
            name: value(metrics, name, **labels) for name, (labels, _) in _GAUGES.items() if name in expected
        }
        if all(current[name] == wanted for name, wanted in expected.items()) or time.monotonic() > deadline:
            assert current == expected
            return metrics
        time.sleep(0.1)


_GAUGES = {
    "ds_http_requests_in_progress": ({"route": "/transcribe"}, None),
    "ds_active_streams": ({"route": "/stream"}, None),
    "ds_workers_busy": ({}, None),
    "ds_queue_depth": ({}, None),
}


def test_client_vanishing_mid_upload_frees_everything(server: str, speech_wav: Path) -> None:
    host, port = server.removeprefix("http://").split(":")
    body = speech_wav.read_bytes()
    boundary = "vanish"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    declared = len(head) + len(body) + len(f"\r\n--{boundary}--\r\n")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /transcribe HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
                f"\r\nContent-Length: {declared}\r\n\r\n".encode()
                + head
                + body[: len(body) // 2]  # half the file, then the client is gone
            )
    _settled(server, ds_http_requests_in_progress=0, ds_workers_busy=0, ds_queue_depth=0)
    files = {"file": ("a.wav", body, "audio/wav")}
    response = httpx.post(f"{server}/transcribe", files=files, timeout=60)
    assert response.status_code == 200  # the service is unharmed


def test_client_vanishing_mid_stream_frees_its_slot(server: str, speech_pcm: bytes) -> None:
    for _ in range(3):
        ws = connect(server.replace("http", "ws") + "/stream")
        ws.send(speech_pcm[:32000])
        ws.recv(timeout=30)  # the server is working on it
        ws.socket.close()  # no close frame: the network just went away
    metrics = _settled(server, ds_active_streams=0)
    assert value(metrics, "ds_http_requests_total", method="WS", route="/stream", status="101") >= 3
    with connect(server.replace("http", "ws") + "/stream") as ws:  # and a new stream works
        ws.send(speech_pcm[:16000])
        ws.send(json.dumps({"type": "eof"}))
        messages = [json.loads(raw) for raw in ws]
    assert messages[-1]["type"] == "final"


# --- SIGTERM: drain, then exit 0 -------------------------------------------------------------------------------


def _wait_healthy(process: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("server did not come up in 60 s")


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_sigterm_finishes_uploads_and_streams_in_flight_then_exits_0(
    small_model_dir: Path, speech_wav: Path, speech_pcm: bytes
) -> None:
    port = free_port()
    env = {"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "16", "DS_SHUTDOWN_GRACE_SECONDS": "20"}
    process = start_server(env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base)
        # In flight when SIGTERM comes: a stream that sent 1 s of audio, and an upload half sent.
        ws = connect(f"ws://127.0.0.1:{port}/stream")
        ws.send(speech_pcm[:32000])
        body = speech_wav.read_bytes()
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        tail = b"\r\n--b--\r\n"
        upload = socket.create_connection(("127.0.0.1", port), timeout=30)
        upload.sendall(
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(head) + len(body) + len(tail)}\r\n\r\n".encode()
            + head
            + body[: len(body) // 2]
        )
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)

        # The stream: an explanation, then the final of the 1 s it sent, then 1001 (going away).
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(json.loads(ws.recv(timeout=15)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        messages = [m for m in messages if m["type"] != "partial"]
        assert messages[0]["type"] == "error" and messages[0]["code"] == "server_shutdown"
        assert messages[1]["type"] == "final" and messages[1]["duration"] == pytest.approx(1.0, abs=0.01)

        # New work is refused while the old finishes; health still answers, readiness does not.
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        assert httpx.get(f"{base}/ready", timeout=5).json() == {"status": "draining"}
        refused = httpx.post(f"{base}/transcribe", files={"file": ("a.wav", body)}, timeout=10)
        assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
        openai = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", body)}, timeout=10)
        assert openai.status_code == 503 and openai.json()["error"]["code"] == "server_shutting_down"
        assert process.poll() is None, "exited with an upload still in flight"

        upload.sendall(body[len(body) // 2 :] + tail)  # the rest of the upload: it is answered in full
        status, answer = _read_response(upload)
        upload.close()
        assert status == 200 and "text" in json.loads(answer)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read() if process.stdout else ""
    assert "draining" in output and "Traceback" not in output
