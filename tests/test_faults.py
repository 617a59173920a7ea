"""Faults: a backend that fails mid-stream, a client that never reads, and a service started on a broken model
directory or a scorer that does not fit it. Each ends only what it must, says why, and is counted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.main import create_app
from app.settings import Settings
from app.speech.alphabet import Alphabet
from app.speech.engine import Engine
from app.speech.runtime import AcousticModel, InferenceError, LstmState
from app.speech.session import StreamSession
from dsconvert.lm.build_scorer import build_scorer
from tests.support.metrics import scrape, value
from tests.support.server import ROOT

# --- a backend that fails mid-stream --------------------------------------------------------------------------


class FailsOnThirdChunk(AcousticModel):
    """The engine's stream model, except that its third chunk raises InferenceError (a Core ML prediction that
    fails, a NumPy error): injected into one stream only."""

    def __init__(self, model: AcousticModel) -> None:
        self._model = model
        self.backend, self.n_cell_dim, self.n_classes, self.max_steps = (
            model.backend,
            model.n_cell_dim,
            model.n_classes,
            model.max_steps,
        )
        self.calls = 0

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        self.calls += 1
        if self.calls == 3:
            raise InferenceError("injected: the prediction failed")
        return self._model.run_chunk(windows, length, state)

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._model.run_window(windows, state)


class OneFaultyStream(Engine):
    """The real engine; the first stream it opens runs on FailsOnThirdChunk, every later one on the real model."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.model_dir, engine.model, engine.decoder)
        self.opened = 0

    def open_stream(self, **options):  # type: ignore[no-untyped-def, override]
        self.opened += 1
        session = super().open_stream(**options)
        if self.opened == 2:  # the first is the lifespan's warm-up
            return StreamSession(FailsOnThirdChunk(self.model), session._decoder)
        return session


def _stream_to_final(ws, speech_pcm: bytes, route: str) -> dict:  # type: ignore[no-untyped-def]
    for start in range(0, len(speech_pcm), 6400):
        ws.send_bytes(speech_pcm[start : start + 6400])
    ws.send_text(json.dumps({"type": "eof"} if route == "/stream" else {"eof": 1}))
    final = ws.receive_json()
    while final.get("type") in ("partial", "ack") or "partial" in final:
        final = ws.receive_json()
    return final


@pytest.mark.parametrize("route", ["/stream", "/vosk"])
def test_a_backend_failure_ends_that_stream_only_and_is_counted(
    small_engine: Engine, small_model_dir: Path, speech_pcm: bytes, route: str
) -> None:
    app = create_app(Settings(model_dir=small_model_dir), OneFaultyStream(small_engine))
    with TestClient(app) as client:
        with client.websocket_connect(route) as faulty, client.websocket_connect(route) as healthy:
            # Every frame gets an answer: Vosk's partial, or (a resumable /stream) an ack. No Vosk config: it
            # would open a new session and replace the faulty one.
            if route == "/stream":
                for ws in (faulty, healthy):
                    ws.send_text(json.dumps({"type": "config", "resumable": True}))
                    assert ws.receive_json()["type"] == "resumable"
            messages = []
            with pytest.raises(WebSocketDisconnect) as closed:
                for start in range(0, len(speech_pcm), 6400):  # 0.2 s frames; chunk 3 ends at ~0.6 s
                    faulty.send_bytes(speech_pcm[start : start + 6400])
                    messages.append(faulty.receive_json())
                    while route == "/stream" and messages[-1]["type"] not in ("ack", "error"):
                        messages.append(faulty.receive_json())
            assert closed.value.code == 1011, messages
            error = messages[-1]
            text = error["message"] if route == "/stream" else error["error"]
            assert "model failed" in text and "Traceback" not in text
            if route == "/stream":
                assert error == {"type": "error", "code": "inference_failed", "message": text}
            final = _stream_to_final(healthy, speech_pcm, route)  # the other stream, open all along, goes on
        with client.websocket_connect(route) as alone:  # the same audio with nothing else going on
            reference = _stream_to_final(alone, speech_pcm, route)
        assert final["text"] == reference["text"]
        metrics = scrape(client)
    assert value(metrics, "ds_stream_errors_total", route=route, code="inference_failed") == 1
    assert value(metrics, "ds_active_streams", route=route) == 0 and app.state.services.admission.active_streams == 0


# --- a client that never reads --------------------------------------------------------------------------------


class StalledClient:
    """ASGI wrapper: from the `after`-th message a websocket sends on, `send` never completes — what uvicorn does
    when the client reads nothing (its write buffer stays over the high-water mark, send waits for `writable`)."""

    def __init__(self, app: Any, after: int) -> None:
        self.app, self.after = app, after
        self.stalled = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        sent = 0

        async def stalling_send(message: dict) -> None:
            nonlocal sent
            if message["type"] == "websocket.send":
                sent += 1
                if sent >= self.after:
                    self.stalled += 1
                    await asyncio.Event().wait()  # forever
            await send(message)

        await self.app(scope, receive, stalling_send)


async def test_a_client_that_never_reads_is_dropped_and_frees_its_slot(
    small_engine: Engine, small_model_dir: Path, speech_pcm: bytes
) -> None:
    app = create_app(
        Settings(model_dir=small_model_dir, stream_send_timeout=0.5, max_streams=1), small_engine
    )
    stalled = StalledClient(app, after=3)  # the `resumable` reply and an ack get through, then nothing
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        with TestClient(stalled) as client, client.websocket_connect("/stream") as ws:
            ws.send_text(json.dumps({"type": "config", "resumable": True}))
            assert ws.receive_json()["type"] == "resumable"
            for start in range(0, 32000, 3200):
                ws.send_bytes(speech_pcm[start : start + 3200])
            assert ws.receive_json()["type"] in ("ack", "partial")
            deadline = time.monotonic() + 30
            while app.state.services.admission.active_streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert app.state.services.admission.active_streams == 0, "the stalled stream still holds its slot"
            assert stalled.stalled == 1
            metrics = scrape(await http.get("/metrics"))
            assert value(metrics, "ds_stream_errors_total", route="/stream", code="client_too_slow") == 1
            # The slot (max_streams=1) is free for the next client.
            with client.websocket_connect("/stream") as again:
                again.send_bytes(speech_pcm[:16000])
                again.send_text(json.dumps({"type": "eof"}))
                message = again.receive_json()
                while message["type"] == "partial":
                    message = again.receive_json()
                assert message["type"] == "final"


# --- startup on a broken model directory or a scorer that does not fit -------------------------------------


def _broken_model(kind: str, source: Path, tmp: Path) -> dict[str, str]:
    model = tmp / "model"
    shutil.copytree(source, model)
    env = {"DS_MODEL_DIR": str(model)}
    if kind == "partial":
        (model / "weights.npz").unlink()  # an interrupted copy
    elif kind == "corrupt":
        data = bytearray((model / "weights.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        (model / "weights.npz").write_bytes(bytes(data))
    elif kind == "wrong_alphabet":
        labels = (model / "alphabet.txt").read_text(encoding="utf-8").replace("'\n", "-\n")
        (model / "alphabet.txt").write_text(labels, encoding="utf-8")
    elif kind in ("foreign_scorer", "garbage_scorer"):
        scorer = tmp / "other.scorer"
        if kind == "garbage_scorer":
            scorer.write_bytes(os.urandom(4096))
        else:  # a scorer built for another alphabet (German letters), spelling words the model cannot
            corpus = tmp / "corpus.txt"
            corpus.write_text("grüne äpfel fallen\nüber den fluss\ngroße grüne wiese\n", encoding="utf-8")
            german = Alphabet(tuple(" abcdefghijklmnopqrstuvwxyz'äöüß"))
            build_scorer(corpus, german, scorer)
        env["DS_SCORER"] = str(scorer)
    return env


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("partial", "weights.npz"),
        ("corrupt", "sha256"),
        ("wrong_alphabet", "alphabet"),
        ("foreign_scorer", "alphabet lacks"),
        ("garbage_scorer", "scorer"),
    ],
)
def test_startup_refuses_a_broken_model_with_one_line(
    kind: str, expected: str, small_model_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(_broken_model(kind, small_model_dir, tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    critical = [line for line in output.splitlines() if "cannot start" in line]
    assert len(critical) == 1 and expected in critical[0], output
    assert "Uvicorn running" not in output  # it never served
