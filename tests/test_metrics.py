"""/health, /ready (503 until the warm-up), /metrics in Prometheus text, and the access log.

Real speech (speech_wav) through a small random-weight model; the tests check counts, durations and gauges,
never transcripts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service.metrics import Metrics
from app.service.services import warm_up
from app.settings import Settings
from app.speech.audio import decode_audio
from app.speech.engine import Engine
from app.web.logs import JsonFormatter
from tests.support.audio import pcm16
from tests.support.metrics import scrape, value


@pytest.fixture(scope="module")
def settings(small_model_dir: Path) -> Settings:
    return Settings(model_dir=small_model_dir, backend="numpy", beam_width=16)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    return Engine.load(settings)


@pytest.fixture(scope="module")
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def wav(speech_wav: Path) -> bytes:
    return speech_wav.read_bytes()


# --- /health and /ready -------------------------------------------------------------------------------------


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


async def test_ready_503_before_warm_up_then_200(settings: Settings, engine: Engine) -> None:
    app = create_app(settings, engine)
    # httpx's ASGITransport runs no lifespan, so no warm-up ran: loaded, not ready.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.get("/ready")
        assert response.status_code == 503 and response.json() == {"status": "starting"}
        assert response.headers["retry-after"] == "1"
        assert (await http.get("/health")).status_code == 200  # alive all the same
        assert value(scrape(await http.get("/metrics")), "ds_ready") == 0
        seconds = warm_up(engine)
        assert seconds > 0
        app.state.services.mark_ready(seconds)
        response = await http.get("/ready")
        assert response.status_code == 200 and response.json() == {"status": "ready"}
        samples = scrape(await http.get("/metrics"))
        assert value(samples, "ds_ready") == 1 and value(samples, "ds_warm_up_seconds") == pytest.approx(
            seconds
        )


def test_lifespan_warms_up(client: TestClient) -> None:
    assert client.get("/ready").status_code == 200
    samples = scrape(client)
    assert value(samples, "ds_ready") == 1 and value(samples, "ds_warm_up_seconds") > 0


async def test_ready_503_without_engine(settings: Settings) -> None:
    app = create_app(settings)  # no engine, and ASGITransport runs no lifespan: nothing loaded
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/health")).status_code == 200


def test_warm_up_runs_both_paths(engine: Engine) -> None:
    class Spy:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def transcribe(self, samples):  # type: ignore[no-untyped-def]
            self.calls.append(f"transcribe {len(samples)}")
            return engine.transcribe(samples)

        def open_stream(self):  # type: ignore[no-untyped-def]
            self.calls.append("open_stream")
            return engine.open_stream()

    spy = Spy()
    warm_up(spy)  # type: ignore[arg-type]
    assert spy.calls == ["transcribe 16000", "open_stream"]


# --- /metrics -----------------------------------------------------------------------------------------------


def test_metrics_text_parses_and_describes_the_model(client: TestClient, engine: Engine) -> None:
    samples = scrape(client)
    info = [labels for (name, labels) in samples if name == "ds_model_info"]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["model"] == "small" and labels["backend"] == "numpy" and labels["compute_units"] == "cpu"
    assert labels["decoder"] == engine.decoder.description
    assert value(samples, "ds_model_load_seconds") == pytest.approx(engine.load_seconds)
    assert value(samples, "ds_model_load_seconds") > 0


def test_request_counter_by_route_template(client: TestClient) -> None:
    before = scrape(client)
    for _ in range(3):
        assert client.get("/info").status_code == 200
    assert client.get("/v1/models/no-such-model").status_code == 404
    assert client.get("/v1/models/another-one").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)
    name = "ds_http_requests_total"
    assert (
        value(after, name, method="GET", route="/info", status="200")
        - value(before, name, method="GET", route="/info", status="200")
        == 3
    )
    # Templates, not raw paths: two ids, one series.
    assert (
        value(after, name, method="GET", route="/v1/models/{model_id}", status="404")
        - value(before, name, method="GET", route="/v1/models/{model_id}", status="404")
        == 2
    )
    assert value(after, name, method="GET", route="<unmatched>", status="404") >= 1
    assert not any("no-such-model" in str(labels) for (_, labels) in after)
    count = "ds_http_request_duration_seconds_count"
    assert (
        value(after, count, method="GET", route="/info") - value(before, count, method="GET", route="/info")
        == 3
    )


def test_transcribe_audio_seconds_and_rtf(
    client: TestClient, wav: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _, duration = decode_audio(wav)
    before = scrape(client)
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = client.post("/transcribe", files={"file": ("a.wav", wav, "audio/wav")})
    assert response.status_code == 200
    after = scrape(client)
    audio = value(after, "ds_audio_seconds_total", route="/transcribe") - value(
        before, "ds_audio_seconds_total", route="/transcribe"
    )
    assert audio == pytest.approx(duration, abs=1e-3)
    rtf_count = value(after, "ds_real_time_factor_count", route="/transcribe") - value(
        before, "ds_real_time_factor_count", route="/transcribe"
    )
    assert rtf_count == 1
    rtf_sum = value(after, "ds_real_time_factor_sum", route="/transcribe") - value(
        before, "ds_real_time_factor_sum", route="/transcribe"
    )
    processing = response.json()["processing_seconds"]
    assert rtf_sum == pytest.approx(processing / duration, abs=1e-2)
    assert value(after, "ds_http_requests_total", method="POST", route="/transcribe", status="200") >= 1
    # One access-log line for the request, with its audio seconds and nothing of the transcript.
    lines = [r for r in caplog.records if r.name == "app.access" and r.access["route"] == "/transcribe"]
    assert len(lines) == 1
    fields = lines[0].access
    assert fields["method"] == "POST" and fields["status"] == 200
    assert fields["audio_seconds"] == pytest.approx(duration, abs=1e-3) and fields["duration_ms"] > 0
    text = response.json()["text"]
    if text:
        assert text not in caplog.text


def test_openai_route_counts_audio(client: TestClient, wav: bytes) -> None:
    before = scrape(client)
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")})
    assert response.status_code == 200
    after = scrape(client)
    route = "/v1/audio/transcriptions"
    assert value(after, "ds_audio_seconds_total", route=route) > value(
        before, "ds_audio_seconds_total", route=route
    )
    assert (
        value(after, "ds_real_time_factor_count", route=route)
        == value(before, "ds_real_time_factor_count", route=route) + 1
    )


def _active(client: TestClient, route: str) -> float:
    return value(scrape(client), "ds_active_streams", route=route)


def _wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_active_streams_and_stream_rtf(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    before = scrape(client)
    assert value(before, "ds_active_streams", route="/stream") == 0
    with client.websocket_connect("/stream") as ws:
        ws.send_text("not json")  # answered with an error: the handler is running and the stream is counted
        assert ws.receive_json()["type"] == "error"
        assert _active(client, "/stream") == 1
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
        ws.send_text(json.dumps({"type": "eof"}))
        while (final := ws.receive_json())["type"] != "final":
            pass
    assert _wait_for(lambda: _active(client, "/stream") == 0)
    after = scrape(client)
    audio = value(after, "ds_audio_seconds_total", route="/stream") - value(
        before, "ds_audio_seconds_total", route="/stream"
    )
    assert audio == pytest.approx(final["duration"], abs=1e-3) and audio > 1.0
    assert (
        value(after, "ds_real_time_factor_count", route="/stream")
        - value(before, "ds_real_time_factor_count", route="/stream")
        == 1
    )
    assert value(after, "ds_real_time_factor_sum", route="/stream") > value(
        before, "ds_real_time_factor_sum", route="/stream"
    )
    assert value(after, "ds_http_requests_total", method="WS", route="/stream", status="101") >= 1


def test_stream_closed_without_eof_goes_back_to_zero(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    with client.websocket_connect("/stream") as ws:
        ws.send_bytes(pcm[:16000])
        ws.send_text("not json")
        assert ws.receive_json()["type"] == "error"
        assert _active(client, "/stream") == 1
    assert _wait_for(lambda: _active(client, "/stream") == 0)


def test_vosk_active_streams_and_audio(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    half = len(pcm) // 4 * 2  # whole samples
    before = scrape(client)
    with client.websocket_connect("/vosk") as ws:
        ws.send_text(json.dumps({"config": {"sample_rate": 16000}}))
        ws.send_bytes(pcm[:half])
        assert "partial" in ws.receive_json()
        assert _active(client, "/vosk") == 1
        ws.send_text('{"reset" : 1}')  # the first session is counted here
        assert "text" in ws.receive_json()
        ws.send_bytes(pcm[half:])
        assert "partial" in ws.receive_json()
        ws.send_text('{"eof" : 1}')
        assert "text" in ws.receive_json()
    assert _wait_for(lambda: _active(client, "/vosk") == 0)
    after = scrape(client)
    audio = value(after, "ds_audio_seconds_total", route="/vosk") - value(
        before, "ds_audio_seconds_total", route="/vosk"
    )
    assert audio == pytest.approx(len(pcm) / 2 / 16000, abs=1e-3)
    assert (
        value(after, "ds_real_time_factor_count", route="/vosk")
        - value(before, "ds_real_time_factor_count", route="/vosk")
        == 2
    )


def test_each_app_has_its_own_registry(settings: Settings, engine: Engine) -> None:
    with TestClient(create_app(settings, engine)) as a, TestClient(create_app(settings, engine)) as b:
        a.get("/info")
        a.get("/info")
        b.get("/info")
        count = "ds_http_requests_total"
        assert value(scrape(a), count, method="GET", route="/info", status="200") == 2
        assert value(scrape(b), count, method="GET", route="/info", status="200") == 1
    Metrics()  # and a fresh set never collides with the global registry either


# --- logs ---------------------------------------------------------------------------------------------------


def test_json_access_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/health")
    records = [r for r in caplog.records if r.name == "app.access"]
    assert records
    entry = json.loads(JsonFormatter().format(records[-1]))
    assert entry["logger"] == "app.access" and entry["level"] == "INFO"
    assert entry["method"] == "GET" and entry["route"] == "/health" and entry["status"] == 200
    assert entry["duration_ms"] >= 0 and "audio_seconds" not in entry


def test_json_formatter_other_records() -> None:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "loaded %s", ("x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "loaded x" and entry["level"] == "WARNING"
