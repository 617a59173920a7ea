"""Streams that survive a network blip: a dropped `/stream` connection parks its state for a short window, and a
new connection that presents the stream's resume token takes it over as if nothing happened.

What is parked is everything the transcript depends on: the StreamSession (feature buffers, the 16-window batch,
LSTM state, decoder state) and the input decoder (resampler or container decoder), plus the count of audio bytes
the server has taken, which it acknowledged to the client. The client resends from that byte on.

Tokens: 256 random bits (`secrets`), kept only as SHA-256 digests and compared in constant time; single-use (a
resume hands out a fresh one); bound to the API key that opened the stream when one is set; valid only while
the stream is parked and for `window` seconds (DS_STREAM_RESUME_SECONDS). A live stream cannot be taken over.

Replicas: a parked state lives in one process's memory, so behind a load balancer the reconnect must reach the
replica that holds it. With DS_REPLICA_ID (`r1`) stream ids start with it (`r1.<16 hex>`), so any process can
tell whose a stream is, and the route hands out a resume URL that names the replica for the balancer to route on
(deploy/haproxy/haproxy.cfg). Without it ids are bare, as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REPLICA_STREAM_ID = re.compile(r"([A-Za-z0-9_-]{1,32})\.[0-9a-f]{16}")  # DS_REPLICA_ID "." 64 random bits


class ResumeRefused(ValueError):
    """The token is unknown, used, expired, for a live stream or for another API key."""


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


@dataclass
class ResumableStream:
    """One stream's resumable identity and, while parked, its state (`state` is the route's business)."""

    stream_id: str
    key_digest: bytes | None  # SHA-256 of the API key that opened it (None: the service is open)
    token_digest: bytes = b""
    acked_bytes: int = 0
    state: Any = None
    parked_until: float | None = None  # monotonic deadline while parked; None while connected
    _expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.token_digest = _digest(token)
        return token


class ResumableStreams:
    """The parked streams of one app. Runs on the event loop only (no locking)."""

    def __init__(
        self, window: float, capacity: int, on_expire: Callable[[Any], None], replica_id: str | None = None
    ) -> None:
        self.window = window
        self.capacity = capacity  # parked streams at most; the oldest is dropped beyond it
        self._on_expire = on_expire  # frees a parked state nobody came back for
        self.replica_id = replica_id  # DS_REPLICA_ID: the prefix of the stream ids this process hands out
        self._streams: dict[str, ResumableStream] = {}

    @property
    def parked(self) -> int:
        return sum(1 for s in self._streams.values() if s.parked_until is not None)

    def register(self, api_key: bytes | None) -> tuple[ResumableStream, str]:
        """A new resumable stream (connected) and its first token."""
        stream_id = secrets.token_hex(8)
        if self.replica_id:
            stream_id = f"{self.replica_id}.{stream_id}"
        stream = ResumableStream(stream_id, _digest(api_key) if api_key else None)
        self._streams[stream.stream_id] = stream
        return stream, stream.new_token()

    def park(self, stream: ResumableStream, state: Any) -> None:
        """The connection dropped: keep `state` for `window` seconds."""
        if self.window <= 0:
            self._drop(stream.stream_id)
            self._on_expire(state)
            return
        while self.parked >= self.capacity:  # make room: the stream parked first goes
            oldest = min(
                (s for s in self._streams.values() if s.parked_until is not None),
                key=lambda s: s.parked_until or 0,
            )
            self._expire(oldest.stream_id)
        stream.state = state
        stream.parked_until = time.monotonic() + self.window
        stream._expiry = asyncio.get_running_loop().call_later(self.window, self._expire, stream.stream_id)

    def claim(self, stream_id: str, token: str, api_key: bytes | None) -> tuple[ResumableStream, Any, str]:
        """Take a parked stream over: (its record, its state, a fresh token). ResumeRefused otherwise; the
        message never says which check failed beyond what the client can already know."""
        stream = self._streams.get(stream_id)
        token_ok = stream is not None and hmac.compare_digest(stream.token_digest, _digest(token))
        key_ok = stream is not None and (
            stream.key_digest is None or hmac.compare_digest(stream.key_digest, _digest(api_key or b""))
        )
        other = REPLICA_STREAM_ID.fullmatch(stream_id) if stream is None and self.replica_id else None
        if other is not None and other[1] != self.replica_id:  # the id names its replica: nothing new is told
            raise ResumeRefused(
                f"stream {stream_id} is held by replica {other[1]}, this is {self.replica_id}: reconnect to the "
                "stream's resume_url (through the load balancer), or open a new stream"
            )
        if stream is None or not (token_ok and key_ok) or stream.parked_until is None:
            raise ResumeRefused(
                "no resumable stream for that id and token (unknown, already resumed, expired, still connected, "
                "or opened with another key); open a new stream"
            )
        if stream._expiry is not None:
            stream._expiry.cancel()
        state, stream.state, stream.parked_until, stream._expiry = stream.state, None, None, None
        return stream, state, stream.new_token()

    def forget(self, stream: ResumableStream) -> None:
        """The stream ended normally (final sent, or closed for good): its token dies with it."""
        self._drop(stream.stream_id)

    def close_all(self) -> None:
        """Shutdown: every parked state is freed."""
        for stream_id in list(self._streams):
            self._expire(stream_id)

    def _expire(self, stream_id: str) -> None:
        stream = self._drop(stream_id)
        if stream is not None and stream.state is not None:
            log.info("resumable stream %s expired after %.0f s without a reconnect", stream_id, self.window)
            self._on_expire(stream.state)

    def _drop(self, stream_id: str) -> ResumableStream | None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream._expiry is not None:
            stream._expiry.cancel()
        return stream
