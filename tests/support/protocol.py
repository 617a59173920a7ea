"""Talking to the app in-process through Starlette's TestClient: the /stream protocol, any websocket dialect
message by message, and the check that nothing of the server's own (a traceback, a file path) reaches a client."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient

Message = str | bytes

# Message text or file paths (the server's own) must never reach a client; nor must a traceback.
LEAK = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|(?:^|[\s'\"(])/(?:tmp|home|work|usr|root|opt|var)/"
)


def assert_no_leak(text: str) -> None:
    assert not LEAK.search(text), text[:500]


def stream_pcm(client: TestClient, pcm: bytes, chunk: int = 3200, config: dict | None = None) -> list[dict]:
    """Speak the /stream protocol; returns every server message (partials, errors, the final last)."""
    messages = []
    with client.websocket_connect("/stream") as ws:
        if config is not None:
            ws.send_text(json.dumps(config))
        for start in range(0, len(pcm), chunk):
            ws.send_bytes(pcm[start : start + chunk])
        ws.send_text(json.dumps({"type": "eof"}))
        while True:
            message = ws.receive_json()
            messages.append(message)
            if message["type"] == "final":
                break
    return messages


def converse(
    client: TestClient, path: str, messages: list[Message], end: str
) -> tuple[list[dict[str, Any]], int]:
    """Send each message (text or binary), then `end`; every reply until the server closes, and the close code.
    Never waits for a reply that might not come: the end message always gets one, then the close."""
    replies = []
    with client.websocket_connect(path) as ws:
        for message in messages:
            if isinstance(message, bytes):
                ws.send_bytes(message)
            else:
                ws.send_text(message)
        ws.send_text(end)
        while True:
            reply = ws.receive()
            if reply["type"] == "websocket.close":
                return replies, reply.get("code", 1000)
            assert_no_leak(reply.get("text") or "")
            replies.append(json.loads(reply["text"]))


def send_then_drop(ws: Any, pcm: bytes, frame: int) -> tuple[int, int]:
    """Send the first half of `pcm` (whole frames) on a resumable /stream (a websockets sync client), read acks
    until some have come while others are still in flight, then drop the TCP connection with no close frame (the
    network went away); (the bytes sent, the last ack seen)."""
    cut = (len(pcm) // 2) // frame * frame  # mid-sentence
    for start in range(0, cut, frame):
        ws.send(pcm[start : start + frame])
    acked = 0
    while acked < cut // 2:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "ack":
            acked = message["bytes"]
    ws.socket.close()
    return cut, acked
