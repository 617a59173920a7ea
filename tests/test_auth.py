"""DS_API_KEY: Bearer on HTTP, Bearer or ?api_key= on websockets, OpenAI's error shape on /v1, public routes open.

Real speech (speech_wav) through a small random-weight model: transcripts are noise, so the tests check
statuses, shapes and that authorised requests reach the pipeline, never particular words.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from app.web.auth import MESSAGE, WEBSOCKET_POLICY_VIOLATION, ApiKeyAuth, bearer_token, is_public
from app.web.logs import RedactApiKey, redact_api_keys
from tests.support.audio import pcm16

KEY = "s3cret-key-0123456789"
GOOD = {"Authorization": f"Bearer {KEY}"}
WRONG = {"Authorization": "Bearer not-the-key"}


@pytest.fixture(scope="module")
def plain_settings(small_model_dir: Path) -> Settings:
    return make_settings(small_model_dir)


def make_settings(model_dir: Path, **overrides: object) -> Settings:
    """Through the constructor, so `api_key` is validated into a SecretStr (model_copy would not)."""
    return Settings(model_dir=model_dir, backend="numpy", beam_width=16, **overrides)


@pytest.fixture(scope="module")
def engine(plain_settings: Settings) -> Engine:
    return Engine.load(plain_settings)


@pytest.fixture(scope="module")
def keyed_settings(small_model_dir: Path) -> Settings:
    return make_settings(small_model_dir, api_key=KEY)


@pytest.fixture(scope="module")
def client(keyed_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(keyed_settings, engine)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def wav(speech_wav: Path) -> bytes:
    return speech_wav.read_bytes()


def _upload(wav: bytes) -> dict:
    return {"file": ("a.wav", wav, "audio/wav")}


def assert_plain_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"detail": MESSAGE}


# --- unit ---------------------------------------------------------------------------------------------------


def test_bearer_token_parsing() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"authorization", b"bearer   abc ")]) == b"abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"authorization", b"Bearer")]) is None
    assert bearer_token([(b"x-other", b"Bearer abc")]) is None


def test_public_paths() -> None:
    for path in ("/health", "/ready", "/", "/static/app.js", "/openapi.json", "/docs"):
        assert is_public(path)
    for path in ("/transcribe", "/info", "/stream", "/vosk", "/v1/models", "/metrics", "/static", "/healthz"):
        assert not is_public(path)
    assert is_public("/metrics", metrics_public=True)


def test_empty_key_is_refused_by_the_middleware() -> None:
    with pytest.raises(ValueError):
        ApiKeyAuth(lambda scope, receive, send: None, api_key="")  # type: ignore[arg-type, return-value]


# --- POST /transcribe ---------------------------------------------------------------------------------------


def test_transcribe_needs_the_key(client: TestClient, wav: bytes) -> None:
    assert_plain_401(client.post("/transcribe", files=_upload(wav)))
    assert_plain_401(client.post("/transcribe", files=_upload(wav), headers=WRONG))
    assert_plain_401(
        client.post("/transcribe", files=_upload(wav), headers={"Authorization": f"Basic {KEY}"})
    )
    # HTTP routes do not take the key from the URL (it would end up in logs and browser history).
    assert_plain_401(client.post("/transcribe", files=_upload(wav), params={"api_key": KEY}))


def test_missing_and_wrong_key_answer_the_same(client: TestClient, wav: bytes) -> None:
    missing = client.post("/transcribe", files=_upload(wav))
    wrong = client.post("/transcribe", files=_upload(wav), headers=WRONG)
    prefix = client.post("/transcribe", files=_upload(wav), headers={"Authorization": "Bearer " + KEY[:-1]})
    assert missing.content == wrong.content == prefix.content
    assert missing.headers["www-authenticate"] == wrong.headers["www-authenticate"]


def test_transcribe_with_the_key(client: TestClient, wav: bytes) -> None:
    response = client.post("/transcribe", files=_upload(wav), headers=GOOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["text"], str) and body["duration"] > 1.0 and body["model"] == "small"


def test_other_http_routes_need_the_key(client: TestClient) -> None:
    assert_plain_401(client.get("/info"))
    assert client.get("/info", headers=GOOD).status_code == 200
    assert_plain_401(client.get("/metrics"))
    assert client.get("/metrics", headers=GOOD).status_code == 200


# --- OpenAI-compatible routes -------------------------------------------------------------------------------


def test_openai_routes_answer_401_in_openai_shape(client: TestClient, wav: bytes) -> None:
    for headers in ({}, WRONG):
        response = client.post("/v1/audio/transcriptions", files=_upload(wav), headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert KEY not in error["message"]
    response = client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_openai_route_with_the_key(client: TestClient, wav: bytes) -> None:
    response = client.post(
        "/v1/audio/transcriptions", files=_upload(wav), data={"response_format": "verbose_json"}, headers=GOOD
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] > 1.0
    assert client.get("/v1/models", headers=GOOD).status_code == 200


def test_openai_sdk_sees_authentication_error(client: TestClient, speech_wav: Path) -> None:
    openai = pytest.importorskip("openai")
    wrong = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=client, max_retries=0)
    with open(speech_wav, "rb") as f, pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.transcriptions.create(file=f, model="default")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    right = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client, max_retries=0)
    with open(speech_wav, "rb") as f:
        result = right.audio.transcriptions.create(file=f, model="default")
    assert isinstance(result.text, str)


# --- websockets ---------------------------------------------------------------------------------------------


def _refused(client: TestClient, url: str, headers: dict | None = None) -> int:
    with pytest.raises(WebSocketDisconnect) as caught:
        with client.websocket_connect(url, headers=dict(headers or {})) as ws:
            ws.receive_text()
    return caught.value.code


@pytest.mark.parametrize("path", ["/stream", "/vosk"])
def test_websocket_refused_before_accept(client: TestClient, path: str) -> None:
    assert _refused(client, path) == WEBSOCKET_POLICY_VIOLATION
    assert _refused(client, path, headers=WRONG) == WEBSOCKET_POLICY_VIOLATION
    assert _refused(client, f"{path}?api_key=wrong") == WEBSOCKET_POLICY_VIOLATION
    assert _refused(client, f"{path}?api_key=") == WEBSOCKET_POLICY_VIOLATION


def _stream(client: TestClient, url: str, pcm: bytes, headers: dict | None = None) -> dict:
    with client.websocket_connect(url, headers=dict(headers or {})) as ws:
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
        ws.send_text(json.dumps({"type": "eof"}))
        while True:
            message = ws.receive_json()
            if message["type"] == "final":
                return message


def _vosk(client: TestClient, url: str, pcm: bytes, headers: dict | None = None) -> dict:
    with client.websocket_connect(url, headers=dict(headers or {})) as ws:
        ws.send_text(json.dumps({"config": {"sample_rate": 16000}}))
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
            assert "partial" in ws.receive_json()
        ws.send_text('{"eof" : 1}')
        return ws.receive_json()


def test_stream_with_header_or_query_key(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    by_header = _stream(client, "/stream", pcm, headers=GOOD)
    by_query = _stream(client, "/stream?" + str(httpx.QueryParams({"api_key": KEY})), pcm)
    assert by_header["duration"] == by_query["duration"] > 1.0
    assert by_header["text"] == by_query["text"]  # the same audio through the same model


def test_vosk_with_header_or_query_key(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    by_header = _vosk(client, "/vosk", pcm, headers=GOOD)
    by_query = _vosk(client, "/vosk?" + str(httpx.QueryParams({"api_key": KEY})), pcm)
    assert "text" in by_header and by_header == by_query


def test_query_key_is_not_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        with client.websocket_connect("/stream?" + str(httpx.QueryParams({"api_key": KEY}))) as ws:
            ws.send_text(json.dumps({"type": "eof"}))
            assert ws.receive_json()["type"] == "final"
    assert caplog.records, "no access-log line"
    assert KEY not in caplog.text and "api_key" not in caplog.text


# --- public routes ------------------------------------------------------------------------------------------


def test_public_routes_stay_public(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200  # the lifespan warmed up
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_metrics_public_when_configured(small_model_dir: Path, engine: Engine) -> None:
    settings = make_settings(small_model_dir, api_key=KEY, metrics_public=True)
    with TestClient(create_app(settings, engine)) as c:
        assert c.get("/metrics").status_code == 200
        assert_plain_401(c.get("/info"))


def test_no_key_means_open(plain_settings: Settings, engine: Engine, wav: bytes) -> None:
    with TestClient(create_app(plain_settings, engine)) as c:
        assert c.get("/info").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.post("/transcribe", files=_upload(wav)).status_code == 200
        with c.websocket_connect("/stream") as ws:
            ws.send_text(json.dumps({"type": "eof"}))
            assert ws.receive_json()["type"] == "final"


def test_empty_key_setting_means_open(small_model_dir: Path, engine: Engine) -> None:
    with TestClient(create_app(make_settings(small_model_dir, api_key=""), engine)) as c:
        assert c.get("/info").status_code == 200


# --- httpx's ASGITransport (no lifespan) --------------------------------------------------------------------


async def test_asgi_transport(keyed_settings: Settings, engine: Engine, wav: bytes) -> None:
    transport = httpx.ASGITransport(app=create_app(keyed_settings, engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert_plain_401(await http.post("/transcribe", files=_upload(wav)))
        assert_plain_401(await http.post("/transcribe", files=_upload(wav), headers=WRONG))
        response = await http.post("/transcribe", files=_upload(wav), headers=GOOD)
        assert response.status_code == 200, response.text
        openai_401 = await http.post("/v1/audio/transcriptions", files=_upload(wav))
        assert openai_401.status_code == 401 and openai_401.json()["error"]["code"] == "invalid_api_key"
        assert (await http.get("/health")).status_code == 200


# --- the key stays out of logs and metrics ------------------------------------------------------------------


def test_uvicorn_handshake_line_is_redacted() -> None:
    redact_api_keys()
    redact_api_keys()  # idempotent
    logger = logging.getLogger("uvicorn.error")
    assert sum(isinstance(f, RedactApiKey) for f in logger.filters) == 1
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", f"/stream?format=webm&api_key={KEY}&x=1"),
        None,
    )
    assert RedactApiKey().filter(record)
    assert KEY not in record.getMessage()
    assert "/stream?format=webm&api_key=***&x=1" in record.getMessage()


def test_refusals_are_counted_by_route(client: TestClient, wav: bytes) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def refused(route: str, method: str, status: str) -> float:
        text = client.get("/metrics", headers=GOOD).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ds_http_requests_total" and sample.labels == {
                    "method": method,
                    "route": route,
                    "status": status,
                }:
                    return sample.value
        return 0.0

    before_http, before_ws = refused("/transcribe", "POST", "401"), refused("/stream", "WS", "403")
    client.post("/transcribe", files=_upload(wav))
    _refused(client, "/stream")
    assert refused("/transcribe", "POST", "401") == before_http + 1
    assert refused("/stream", "WS", "403") == before_ws + 1
