"""Backpressure: a bounded number of transcriptions at once, a bounded queue, 503 + Retry-After beyond it,
health answering while every worker is busy, a stream limit (close 1013) and the stream idle timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.engines import BlockingEngine, wait_for


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
async def test_full_queue_answers_503_and_health_still_answers(
    small_engine: Engine, small_model_dir: Path, speech_wav: Path, route: str
) -> None:
    blocking = BlockingEngine(small_engine)
    settings = Settings(model_dir=small_model_dir, workers=1, queue_length=1)
    app = create_app(settings, blocking)
    admission = app.state.services.admission
    files = {"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}
    data = {"model": "default"} if route.startswith("/v1") else None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        first = asyncio.create_task(http.post(route, files=files, data=data))
        await wait_for(lambda: blocking.started == 1)
        second = asyncio.create_task(http.post(route, files=files, data=data))
        await wait_for(lambda: admission.queued == 1)
        third = await http.post(route, files=files, data=data)
        assert third.status_code == 503 and "busy" in third.text
        if route == "/transcribe":
            assert third.headers["retry-after"] == "1"
        else:
            assert third.json()["error"]["code"] == "server_busy"
        health = await http.get("/health")
        assert health.status_code == 200, "health answers while every worker is busy"
        blocking.release.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
        assert admission.queued == 0
        assert (await http.post(route, files=files, data=data)).status_code == 200


def test_stream_limit_refuses_with_1013_and_frees_the_slot(
    small_engine: Engine, small_model_dir: Path
) -> None:
    app = create_app(Settings(model_dir=small_model_dir, max_streams=1), small_engine)
    with TestClient(app) as client:
        with client.websocket_connect("/stream") as first:
            with client.websocket_connect("/vosk") as second:  # accepted, then closed: never an HTTP 403
                with pytest.raises(WebSocketDisconnect) as refused:
                    second.receive_json()
            assert refused.value.code == 1013
            first.send_text('{"type": "eof"}')
            assert first.receive_json()["type"] == "final"
        with client.websocket_connect("/stream") as again:  # the slot was given back
            again.send_text('{"type": "eof"}')
            assert again.receive_json()["type"] == "final"
        assert app.state.services.admission.active_streams == 0


def test_idle_stream_is_closed_with_a_reason(small_engine: Engine, small_model_dir: Path) -> None:
    app = create_app(Settings(model_dir=small_model_dir, stream_idle_timeout=0.2), small_engine)
    with TestClient(app) as client, client.websocket_connect("/stream") as ws:
        ws.send_bytes(bytes(640))
        message = ws.receive_json()
        while message["type"] == "partial":
            message = ws.receive_json()
        assert message["code"] == "idle_timeout" and "DS_STREAM_IDLE_TIMEOUT" in message["message"]
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    assert app.state.services.admission.active_streams == 0
