"""Findings of an independent probe of the running service, reproduced on a real uvicorn on loopback (bounded in
count and time): what reached the log, what a stream counts as activity, what the metrics show, how long a
SIGTERM takes."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.audio import pcm16, speak
from tests.support.metrics import scrape, value
from tests.support.server import ROOT, running_server

KEY = "s3cret-probe-key"
MODEL = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_BEAM_WIDTH": "64"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_spelling_of_the_key_parameter_is_redacted(log_format: str) -> None:
    env = {**MODEL, "DS_API_KEY": KEY, "DS_LOG_FORMAT": log_format}
    with running_server(env) as base:
        for name in ("api_key", "api%5Fkey", "%61pi_key", "api%5fkey"):
            with connect(f"{base.ws}/stream?{name}={KEY}") as ws:  # each spelling authenticates
                ws.send(json.dumps({"type": "eof"}))
                assert json.loads(ws.recv())["type"] == "final"
        httpx.get(f"{base}/health?api_key={KEY}")
        time.sleep(0.2)
        logs = base.log.read_text()
    assert KEY not in logs
    assert logs.count("/stream?") >= 4  # the handshake lines are there, redacted


def test_a_key_in_an_http_query_leaves_one_access_line_and_no_logging_error() -> None:
    with running_server({**MODEL, "DS_API_KEY": KEY}) as base:
        for _ in range(3):
            assert httpx.get(f"{base}/health?api_key={KEY}").status_code == 200
        time.sleep(0.2)
        logs = base.log.read_text()
    assert "Logging error" not in logs and "TypeError" not in logs
    access = [line for line in logs.splitlines() if '"GET /health?api_key=*** HTTP/1.1" 200' in line]
    assert len(access) == 3, logs[-2000:]
    assert KEY not in logs


def test_debug_logging_carries_no_transcript(tmp_path: Path) -> None:
    sentence = "turn on the kitchen lights"
    pcm = pcm16(speak(sentence, tmp_path / "s.wav"))
    with running_server({**MODEL, "DS_LOG_LEVEL": "debug"}) as base:
        with connect(f"{base.ws}/stream") as ws:
            ws.send(pcm)
            ws.send(json.dumps({"type": "eof"}))
            final = [json.loads(m) for m in ws][-1]
        time.sleep(0.2)
        logs = base.log.read_text()
    assert final["text"] == sentence  # there was a transcript to leak
    assert "kitchen" not in logs  # at debug level the websockets library logged every frame here


def test_junk_does_not_keep_an_idle_stream_open() -> None:
    """A text message that is not valid, or a 2-byte frame, every 0.4 s: the 1 s idle timeout still ends it."""
    with running_server({**MODEL, "DS_STREAM_IDLE_TIMEOUT": "1"}) as base:
        for junk in ("not json", b"\x00\x00"):
            started = time.monotonic()
            with connect(f"{base.ws}/stream") as ws:
                closed = None
                while time.monotonic() - started < 6:
                    try:
                        ws.send(junk)
                        time.sleep(0.4)
                    except Exception:  # noqa: BLE001 - the server closed it
                        closed = time.monotonic() - started
                        break
                codes = [json.loads(m).get("code") for m in _drain(ws)]
            assert closed is not None and closed < 4, f"{junk!r} kept the stream open"
            assert "idle_timeout" in codes


def _drain(ws: object) -> list[str]:
    messages = []
    try:
        while True:
            messages.append(ws.recv(timeout=0.5))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - closed or nothing more
        return messages


def test_metrics_report_resident_memory() -> None:
    with running_server(MODEL) as base:
        samples = scrape(httpx.get(f"{base}/metrics"))
    assert value(samples, "process_resident_memory_bytes") > 50e6


def test_sigterm_exits_within_the_grace_the_readme_states() -> None:
    """An upload that never finishes holds the drain: the process exits at DS_SHUTDOWN_GRACE_SECONDS, not at the
    grace plus uvicorn's own graceful-shutdown timeout."""
    with running_server({**MODEL, "DS_SHUTDOWN_GRACE_SECONDS": "2"}, ready="/ready") as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as upload:
            upload.sendall(
                b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1000000\r\n\r\n--b\r\n"
            )
            time.sleep(0.5)  # the request is in flight
            started = time.monotonic()
            base.process.send_signal(signal.SIGTERM)
            assert base.process.wait(timeout=20) == 0
            took = time.monotonic() - started
    # Before: the grace plus uvicorn's 5 s graceful-shutdown timeout. The margin is for a loaded machine.
    assert 1.8 < took < 4.5, f"exited {took:.1f} s after SIGTERM with a 2 s grace"


def test_a_long_upload_returns_its_memory(tmp_path: Path) -> None:
    """After a transcription of a minute or more the heap is trimmed (glibc keeps freed pages otherwise)."""
    import numpy as np
    import soundfile

    minute = tmp_path / "minute.wav"
    rng = np.random.default_rng(1)
    soundfile.write(minute, (rng.normal(0, 0.05, 16000 * 61)).astype(np.float32), 16000, subtype="PCM_16")
    with running_server(MODEL) as base:
        before = value(scrape(httpx.get(f"{base}/metrics")), "ds_memory_trims_total")
        response = httpx.post(f"{base}/transcribe", files={"file": minute.read_bytes()}, timeout=120)
        assert response.status_code == 200
        after = value(scrape(httpx.get(f"{base}/metrics")), "ds_memory_trims_total")
    assert after == before + 1


def test_memory_return_is_bounded_in_rate() -> None:
    from app.speech.memory import MemoryReturn

    memory = MemoryReturn(threshold=60)
    assert memory.available  # glibc here; a no-op where the C library has no malloc_trim
    assert not memory.after(10)  # short transcriptions leave the heap alone
    assert memory.after(61) and not memory.after(61)  # at most once per interval
    assert memory.trims == 1
