"""Streams that survive a network blip: cut the connection mid-sentence, reconnect with the resume token and the
last acknowledged byte, and the final transcript equals the uninterrupted stream's. Real uvicorn, real speech,
the shipped default model (so the transcript is real words)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from websockets.sync.client import ClientConnection, connect

from app.service.resume import ResumableStreams, ResumeRefused
from tests.support.audio import speak
from tests.support.protocol import send_then_drop
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parent.parent
FRAME = 6400  # 0.2 s of 16 kHz s16le
SENTENCE = "please turn on the kitchen lights and then play some quiet music in the living room"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {
        "DS_MODEL_DIR": str(ROOT / "models" / "default"),
        "DS_BEAM_WIDTH": "64",
        "DS_STREAM_RESUME_SECONDS": "2",
    }
    with running_server(env) as base:
        yield base.replace("http://", "ws://") + "/stream"


@pytest.fixture(scope="module")
def pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    wav = speak(SENTENCE, tmp_path_factory.mktemp("resume") / "speech.wav")
    samples, rate = soundfile.read(wav, dtype="int16")
    assert rate == 16000
    return samples.tobytes()


def messages_until_final(ws: ClientConnection) -> list[dict[str, Any]]:
    out = []
    while not out or out[-1]["type"] != "final":
        out.append(json.loads(ws.recv(timeout=30)))
    return out


def open_resumable(url: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = connect(url)
    ws.send(json.dumps({"type": "config", "resumable": True}))
    hello = json.loads(ws.recv(timeout=10))
    assert hello["type"] == "resumable" and hello["window"] == 2
    assert hello["resume_url"] == "/stream"  # no DS_REPLICA_ID: reconnect where it connected
    assert "x-replica" not in ws.response.headers
    assert len(hello["resume_token"]) >= 40  # 256 random bits, URL-safe
    return ws, hello


def resume(url: str, stream_id: str, token: str, acked: int) -> tuple[ClientConnection, dict[str, Any]]:
    """Reconnect and resume; retried briefly, since the server may not have noticed the drop yet."""
    for _ in range(50):
        ws = connect(url)
        ws.send(json.dumps({"type": "resume", "stream_id": stream_id, "resume_token": token, "bytes": acked}))
        answer = json.loads(ws.recv(timeout=10))
        if answer["type"] == "resumed":
            return ws, answer
        assert answer["code"] == "resume_refused", answer
        ws.close()
        time.sleep(0.05)
    raise AssertionError("the stream could not be resumed")


def test_a_cut_stream_resumes_to_the_uninterrupted_transcript(server: str, pcm: bytes) -> None:
    with connect(server) as ws:  # the reference: one connection, no resume
        for start in range(0, len(pcm), FRAME):
            ws.send(pcm[start : start + FRAME])
        ws.send(json.dumps({"type": "eof"}))
        reference = messages_until_final(ws)[-1]
    assert len(reference["text"].split()) >= 6, reference  # real words, so equality means something

    ws, hello = open_resumable(server)
    cut, acked = send_then_drop(ws, pcm, FRAME)  # then the network goes away

    ws, resumed = resume(server, hello["stream_id"], hello["resume_token"], acked)
    with ws:
        assert resumed["stream_id"] == hello["stream_id"]
        assert (
            acked <= resumed["bytes"] <= cut
        )  # the server's count; it may have taken frames we saw no ack for
        assert resumed["resume_token"] != hello["resume_token"]
        assert resumed["resume_url"] == "/stream" and "." not in resumed["stream_id"]
        for start in range(resumed["bytes"], len(pcm), FRAME):
            ws.send(pcm[start : start + FRAME])
        ws.send(json.dumps({"type": "eof"}))
        final = messages_until_final(ws)[-1]
    assert final["text"] == reference["text"]
    assert final["words"] == reference["words"]
    assert final["duration"] == reference["duration"]

    # Single use: the first token is spent, and the stream is over anyway.
    with connect(server) as ws:
        message = {"type": "resume", "stream_id": hello["stream_id"], "resume_token": hello["resume_token"]}
        ws.send(json.dumps({**message, "bytes": 0}))
        assert json.loads(ws.recv(timeout=10))["code"] == "resume_refused"


def test_tokens_are_single_use_expire_and_never_take_over_a_live_stream(server: str, pcm: bytes) -> None:
    ws, hello = open_resumable(server)
    ws.send(pcm[:FRAME])
    assert json.loads(ws.recv(timeout=30))["type"] in {"ack", "partial"}
    with connect(server) as thief:  # the stream is still connected: not claimable
        request = {"type": "resume", "stream_id": hello["stream_id"], "resume_token": hello["resume_token"]}
        thief.send(json.dumps({**request, "bytes": FRAME}))
        refused = json.loads(thief.recv(timeout=10))
        assert refused["type"] == "error" and refused["code"] == "resume_refused"
        thief.send(json.dumps({"type": "eof"}))  # a refused resume leaves an ordinary new stream
        assert messages_until_final(thief)[-1]["duration"] == 0
    ws.socket.close()

    again, resumed = resume(server, hello["stream_id"], hello["resume_token"], FRAME)
    again.socket.close()  # dropped again: only the new token works now
    with connect(server) as old:
        old.send(json.dumps({**request, "bytes": FRAME}))
        assert json.loads(old.recv(timeout=10))["code"] == "resume_refused"
    time.sleep(2.5)  # past DS_STREAM_RESUME_SECONDS
    with connect(server) as late:
        late.send(json.dumps({**request, "resume_token": resumed["resume_token"], "bytes": FRAME}))
        assert json.loads(late.recv(timeout=10))["code"] == "resume_refused"


def test_resume_must_come_first_and_carry_a_byte_count(server: str) -> None:
    with connect(server) as ws:
        ws.send(json.dumps({"type": "resume", "stream_id": "x", "resume_token": "y"}))
        assert json.loads(ws.recv(timeout=10))["code"] == "resume_refused"  # no `bytes`
        ws.send(bytes(640))  # silence: no partial comes back
        ws.send(json.dumps({"type": "resume", "stream_id": "x", "resume_token": "y", "bytes": 0}))
        message = json.loads(ws.recv(timeout=10))
        while message.get("code") != "bad_resume":
            message = json.loads(ws.recv(timeout=10))


async def test_tokens_are_bound_to_the_api_key_and_stored_as_digests() -> None:
    expired: list[str] = []
    streams = ResumableStreams(window=0.2, capacity=2, on_expire=expired.append)
    stream, token = streams.register(b"key-one")
    assert token.encode() not in repr(stream).encode() and stream.token_digest != token.encode()
    streams.park(stream, "state-1")
    with pytest.raises(ResumeRefused):
        streams.claim(stream.stream_id, token, b"key-two")  # same token, another key
    with pytest.raises(ResumeRefused):
        streams.claim(stream.stream_id, token + "x", b"key-one")
    _, state, fresh = streams.claim(stream.stream_id, token, b"key-one")
    assert state == "state-1" and fresh != token
    streams.park(stream, "state-1b")
    others = [streams.register(None) for _ in range(2)]
    for other, _ in others:
        streams.park(other, f"state-{other.stream_id}")  # capacity 2: the oldest parked one makes room
    assert expired == ["state-1b"] and streams.parked == 2
    await asyncio.sleep(0.3)
    assert sorted(expired[1:]) == sorted(f"state-{o.stream_id}" for o, _ in others) and streams.parked == 0
