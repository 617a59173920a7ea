"""/asyncapi.json against the code: every message real /stream and /vosk sessions send validates against the
schema the document declares for it, every error code the code can send is declared, and the document is linked
from /docs and public like the OpenAPI one."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.audio import pcm16, spoken_phrases
from tests.support.protocol import stream_pcm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(small_engine: Engine) -> Iterator[TestClient]:
    settings = Settings(model_dir=small_engine.model_dir.path, api_key="k3y")
    with TestClient(create_app(settings, small_engine), headers={"Authorization": "Bearer k3y"}) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/asyncapi.json", headers={"Authorization": ""})  # public, like /openapi.json
    assert response.status_code == 200
    return response.json()


def sent_schemas(document: dict[str, Any], channel: str) -> dict[str, dict[str, Any]]:
    """name -> payload schema of what the server sends on `channel` (its `send` operation's messages)."""
    operation = next(
        op for op in document["operations"].values()
        if op["action"] == "send" and op["channel"]["$ref"] == f"#/channels/{channel}"
    )
    messages = document["channels"][channel]["messages"]
    refs = [ref["$ref"].rsplit("/", 1)[1] for ref in operation["messages"]]
    return {messages[key]["name"]: messages[key]["payload"] for key in refs}


def assert_declared_stream(document: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    schemas = sent_schemas(document, "stream")
    for message in messages:
        assert message["type"] in schemas, message
        jsonschema.validate(message, schemas[message["type"]])


def assert_declared_vosk(document: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    schemas = sent_schemas(document, "vosk")
    for message in messages:
        matching = [name for name, schema in schemas.items() if jsonschema.Draft202012Validator(schema).is_valid(message)]
        assert matching, f"{message} matches no declared /vosk message"


def receive_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    received = []
    while True:
        received.append(ws.receive_json())
        if received[-1]["type"] == kind:
            return received


def test_the_document_is_asyncapi_3_and_linked_from_docs(client: TestClient, document: dict[str, Any]) -> None:
    assert document["asyncapi"].startswith("3.")
    assert {ch["address"] for ch in document["channels"].values()} == {"/stream", "/vosk"}
    assert "/asyncapi.json" in client.get("/openapi.json").json()["info"]["description"]


def test_every_stream_message_is_declared(
    client: TestClient, document: dict[str, Any], speech_pcm: bytes
) -> None:
    got: list[dict[str, Any]] = []
    with client.websocket_connect("/stream") as ws:
        ws.send_text("not json")
        got += [ws.receive_json()]
        ws.send_text(json.dumps({"type": "nonsense"}))
        got += [ws.receive_json()]
        ws.send_text(json.dumps({"type": "config", "resumable": True, "alternatives": 2, "hot_words": {"on": 4}}))
        got += [ws.receive_json()]
        ws.send_text(json.dumps({"type": "config"}))
        got += [ws.receive_json()]
        ws.send_bytes(b"\x01")  # an odd frame
        got += [ws.receive_json(), ws.receive_json()]  # bad_frame, ack
        for start in range(0, len(speech_pcm), 6400):
            ws.send_bytes(speech_pcm[start : start + 6400])
            got += receive_until(ws, "ack")
        ws.send_text(json.dumps({"type": "eof"}))
        got += receive_until(ws, "final")
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "resume", "stream_id": "x", "resume_token": "y", "bytes": 0}))
        got += [ws.receive_json()]
    kinds = {m["type"] for m in got}
    assert {"error", "resumable", "ack", "partial", "final"} <= kinds
    assert any(m.get("alternatives") for m in got if m["type"] == "final")
    assert_declared_stream(document, got)


def test_every_vosk_message_is_declared(client: TestClient, document: dict[str, Any], speech_pcm: bytes) -> None:
    got: list[dict[str, Any]] = []
    with client.websocket_connect("/vosk") as ws:
        ws.send_text('{"config": {"sample_rate": 16000}}')
        ws.send_text("[1]")
        got += [ws.receive_json()]
        ws.send_bytes(speech_pcm[:32000])
        got += [ws.receive_json()]
        ws.send_text('{"reset": 1}')
        got += [ws.receive_json()]
        ws.send_text('{"config": {"sample_rate": 16000, "max_alternatives": 2}}')
        ws.send_bytes(speech_pcm)
        got += [ws.receive_json()]
        ws.send_text('{"eof": 1}')
        got += [ws.receive_json()]
    assert "error" in got[0] and "partial" in got[1] and "alternatives" in got[-1]
    assert_declared_vosk(document, got)


def test_every_error_code_the_code_sends_is_declared(document: dict[str, Any]) -> None:
    sources = "".join(
        (ROOT / path).read_text()
        for path in ("app/routes/stream.py", "app/service/streams.py", "app/service/stream_protocol.py")
    )
    used = set(re.findall(r'error\(\s*"([a-z_]+)"', sources))
    used |= set(re.findall(r'"(max_duration|server_shutdown|idle_timeout)"', sources))
    used |= set(re.findall(r'^    "([a-z_]+)": "', sources, flags=re.M))  # FAILURE_TEXT
    declared = set(document["channels"]["stream"]["messages"]["streamError"]["payload"]["properties"]["code"]["enum"])
    assert used and used <= declared, used - declared


def test_utterance_messages_are_declared(document: dict[str, Any], tmp_path: Path) -> None:
    """Utterances need a model that hears pauses: the trained default one, on phrases with pauses between."""
    pcm = pcm16(spoken_phrases(["turn on the lights", "what time is it"], tmp_path / "two.wav"))
    settings = Settings(model_dir=ROOT / "models" / "default", backend="numpy")
    with TestClient(create_app(settings, Engine.load(settings))) as client:
        got = stream_pcm(client, pcm, config={"type": "config", "alternatives": 2, "endpoint_silence_ms": 600})
        replies = []
        with client.websocket_connect("/vosk") as ws:
            ws.send_text('{"config": {"sample_rate": 16000, "endpoint_silence_ms": 600}}')
            for start in range(0, len(pcm), 6400):
                ws.send_bytes(pcm[start : start + 6400])
                replies.append(ws.receive_json())
            ws.send_text('{"eof": 1}')
            replies.append(ws.receive_json())
    assert any(m["type"] == "utterance" and m.get("alternatives") for m in got)
    assert any("result" in reply for reply in replies[:-1])  # a result at the pause, before eof
    assert_declared_stream(document, got)
    assert_declared_vosk(document, replies)
