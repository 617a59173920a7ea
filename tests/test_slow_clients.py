"""Slow, idle and oversized clients against a real `python -m app` on loopback: the header deadline, the body
deadline and minimum upload rate, the header size cap (431), the connection cap, and uploads admitted (queue
place and a shared byte budget) before their bodies are read.

Each test prints its figures (run with -s to see them). Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from app.web.connections import default_max_connections
from app.web.limits import BodyDeadline
from tests.support.audio import encode, tone
from tests.support.engines import BlockingEngine, wait_for
from tests.support.server import ServerUrl, running_server

LINUX = Path("/proc/self/status").exists()
needs_proc = pytest.mark.skipif(not LINUX, reason="reads the server's fds and memory from /proc (Linux)")

HEADER_TIMEOUT = 1.0  # the deadlines the servers below run with: short, so that the tests are
BODY_TIMEOUT = 1.0
MIN_RATE = 16384  # DS_MIN_UPLOAD_BYTES_PER_SECOND's default
SLACK = 1.5  # seconds a deadline may be late on a shared, loaded machine
BOUNDARY = "slowclients"


# --- helpers ---------------------------------------------------------------------------------------------------


def server_env(model_dir: Path, **settings: str) -> dict[str, str]:
    return {"DS_MODEL_DIR": str(model_dir), "DS_BEAM_WIDTH": "16", **settings}


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def silent_wav(data_bytes: int) -> bytes:
    """A 16 kHz mono s16 WAV of `data_bytes` of silence (no encoder: the header is 44 bytes)."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        *(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16, b"data", data_bytes),
    )
    return header + bytes(data_bytes)


def multipart(audio: bytes) -> bytes:
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return part + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def response_waiting(sock: socket.socket, seconds: float) -> bool:
    """True when the server has written something (or closed) within `seconds`."""
    return bool(select.select([sock], [], [], seconds)[0])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(sock: socket.socket, timeout: float = 30.0) -> Answer:
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)  # the standard library parses the status line and headers
    response.begin()
    body = response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def closed_by_server(sock: socket.socket, seconds: float) -> bool:
    """True once the server has closed the connection (EOF or reset) within `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not response_waiting(sock, left):
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionError:
            return True
    return False


@pytest.fixture(scope="module")
def deadlines_server(small_model_dir: Path) -> Iterator[ServerUrl]:
    """One server with 1 s header and body deadlines for the tests of finding 1 and 2."""
    env = server_env(
        small_model_dir,
        DS_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        DS_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        DS_MAX_AUDIO_SECONDS="60",
    )
    with running_server(env) as base:
        yield base


# --- 1. header deadline ------------------------------------------------------------------------------------------

HOLD_SECONDS = 4.0  # how long a client below keeps its connection if the server does not close it
DRIP_INTERVAL = 0.25  # seconds between the bytes a slow client sends
REQUEST_START = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 64


@dataclass(frozen=True)
class Held:
    closed_after: float | None  # seconds until the server closed the connection; None: still open at the end
    answer: bytes  # what the server wrote first, if anything


async def hold_connection(host: str, port: int, drip: bool) -> Held:
    """Connect and send nothing (or one byte per DRIP_INTERVAL) until the server closes or HOLD_SECONDS pass."""
    reader, writer = await asyncio.open_connection(host, port)
    started, sent = time.monotonic(), 0
    try:
        while time.monotonic() - started < HOLD_SECONDS:
            if drip and sent < len(REQUEST_START):
                writer.write(REQUEST_START[sent : sent + 1])
                sent += 1
            try:
                data = await asyncio.wait_for(reader.read(4096), DRIP_INTERVAL)
            except TimeoutError:
                continue
            return Held(time.monotonic() - started, data)
        return Held(None, b"")
    except ConnectionError:
        return Held(time.monotonic() - started, b"")
    finally:
        writer.close()


async def sample_fds(pid: int, at: list[float], out: list[int]) -> None:
    started = time.monotonic()
    for moment in at:
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
        out.append(open_fds(pid))


@needs_proc
async def test_idle_and_slow_header_clients_are_closed_at_the_header_deadline(
    deadlines_server: ServerUrl,
) -> None:
    """Finding 1: 100 connections that send nothing and 100 that send their headers at 4 bytes a second."""
    host, port = address(deadlines_server)
    pid = deadlines_server.pid
    before = open_fds(pid)
    fds: list[int] = []
    sampler = asyncio.create_task(sample_fds(pid, [0.5, HOLD_SECONDS - 0.3], fds))
    started = time.monotonic()
    results = await asyncio.gather(
        *(hold_connection(host, port, drip=i % 2 == 1) for i in range(200)), return_exceptions=True
    )
    await sampler
    async with httpx.AsyncClient(base_url=deadlines_server, timeout=10) as http:
        health = await http.get("/health")
    held = [r for r in results if isinstance(r, Held)]
    closed = [r.closed_after for r in held if r.closed_after is not None]
    answered_408 = sum(r.answer.startswith(b"HTTP/1.1 408") for r in held)
    print(
        f"\n200 idle/slow-header connections: {len(closed)} closed by the server "
        f"(after {min(closed, default=0):.2f}..{max(closed, default=0):.2f} s), {answered_408} answered 408; "
        f"server fds {before} before, {fds[0]} at 0.5 s, {fds[1]} at {HOLD_SECONDS - 0.3:.1f} s; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert len(held) == 200, [r for r in results if not isinstance(r, Held)][:3]
    assert len(closed) == 200, f"{200 - len(closed)} connections still open after {HOLD_SECONDS} s"
    assert min(closed) >= HEADER_TIMEOUT * 0.9 and max(closed) <= HEADER_TIMEOUT + SLACK
    assert answered_408 >= 90, "a client that sent part of its headers is told why (408)"
    assert fds[1] <= before + 5, "the descriptors were given back"
    assert health.status_code == 200


def test_a_kept_alive_connection_gets_a_header_deadline_for_its_next_request(
    deadlines_server: ServerUrl,
) -> None:
    """The deadline is armed again when a later request on the connection begins (uvicorn's keep-alive timer
    stops at its first byte)."""
    with socket.create_connection(address(deadlines_server), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(sock).status == 200
        sock.sendall(b"GET /hea")
        started = time.monotonic()
        assert response_waiting(sock, HEADER_TIMEOUT + SLACK)
        answer = read_answer(sock)
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert time.monotonic() - started <= HEADER_TIMEOUT + SLACK


# --- 1. body deadline and minimum rate ---------------------------------------------------------------------------


def trickle(
    sock: socket.socket, body: bytes, chunk: int, interval: float, limit: float
) -> tuple[int, float, bool]:
    """Send `body` in `chunk`s every `interval` s until it is sent, the server answers, or `limit` s pass.
    Returns (bytes sent, seconds, whether the server answered before the body was all sent)."""
    started, sent = time.monotonic(), 0
    while sent < len(body) and time.monotonic() - started < limit:
        if response_waiting(sock, interval):
            return sent, time.monotonic() - started, True
        try:
            sock.sendall(body[sent : sent + chunk])
        except ConnectionError:
            return sent, time.monotonic() - started, True
        sent += chunk
    return min(sent, len(body)), time.monotonic() - started, False


def test_a_stalled_upload_gets_408_at_the_body_deadline(deadlines_server: ServerUrl) -> None:
    body = multipart(silent_wav(200_000))
    with socket.create_connection(address(deadlines_server), timeout=10) as sock:
        sock.sendall(upload_head("/transcribe", len(body)) + body[:10_000])
        started = time.monotonic()
        answered = response_waiting(sock, HOLD_SECONDS)
        waited = time.monotonic() - started
        print(f"\nstalled upload (10 KB of {len(body)} sent): answered={answered} after {waited:.2f} s")
        assert answered, f"no answer {HOLD_SECONDS} s after the upload stalled"
        answer = read_answer(sock)
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert b"DS_BODY_TIMEOUT_SECONDS" in answer.body
        assert BODY_TIMEOUT * 0.9 <= waited <= BODY_TIMEOUT + SLACK
        assert closed_by_server(sock, SLACK)


def test_an_upload_below_the_minimum_rate_gets_408(deadlines_server: ServerUrl) -> None:
    """10 KB/s: a byte every few milliseconds, so never idle, but it would hold its queue place for minutes."""
    body = multipart(silent_wav(400_000))
    with socket.create_connection(address(deadlines_server), timeout=10) as sock:
        sock.sendall(upload_head("/v1/audio/transcriptions", len(body)))
        sent, seconds, answered = trickle(sock, body, 2_500, 0.25, limit=8.0)
        # allowed: BODY_TIMEOUT of slack plus MIN_RATE bytes a second, so 10 KB/s falls behind at ~2.6 s
        expected = BODY_TIMEOUT / (1 - 10_000 / MIN_RATE)
        print(f"\n10 KB/s upload: answered={answered} after {seconds:.2f} s, {sent} bytes sent")
        assert answered, f"a 10 KB/s upload was still open after {seconds:.1f} s"
        answer = read_answer(sock)
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert b'"error"' in answer.body, "OpenAI's shape under /v1/"
        assert expected - 0.5 <= seconds <= expected + SLACK


def test_a_slow_but_steady_upload_succeeds(deadlines_server: ServerUrl) -> None:
    """64 KB/s for 4 s: past both the body deadline and its slack, since chunks keep coming above the rate."""
    body = multipart(encode(tone(16000, seconds=8.0), 16000))
    with socket.create_connection(address(deadlines_server), timeout=30) as sock:
        sock.sendall(upload_head("/transcribe", len(body)))
        sent, seconds, answered = trickle(sock, body, 16_384, 0.25, limit=30.0)
        answer = read_answer(sock)
        print(f"\n64 KB/s upload of {len(body)} bytes: {seconds:.2f} s, then {answer.status}")
        assert not answered and sent == len(body) and seconds > 3 * BODY_TIMEOUT
        assert answer.status == 200, answer.body
        assert b'"text"' in answer.body


async def test_a_websocket_is_not_held_to_the_header_or_body_deadline(deadlines_server: ServerUrl) -> None:
    pcm = (tone(16000, seconds=1.0) * 32767).astype("<i2").tobytes()
    async with websockets.connect(f"{deadlines_server.ws}/stream", open_timeout=10) as ws:
        await asyncio.sleep(HEADER_TIMEOUT + BODY_TIMEOUT + 0.5)  # silent past both deadlines
        await ws.send(pcm)
        await ws.send('{"type": "eof"}')
        for _ in range(50):
            message = await asyncio.wait_for(ws.recv(), 10)
            if '"final"' in str(message):
                break
        assert '"final"' in str(message)


async def test_the_body_deadline_stops_once_the_body_is_in() -> None:
    """A streamed response (SSE) waits on `receive` for the client's disconnect for as long as it streams: that
    wait has no deadline. (In-process: the SSE route of the real server finishes too quickly to show it.)"""
    streamed: list[float] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started = time.monotonic()
        waiting = asyncio.create_task(receive())  # what StreamingResponse does while it streams
        for _ in range(4):
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
            await asyncio.sleep(0.1)
        assert not waiting.done()
        waiting.cancel()
        await send({"type": "http.response.body", "body": b""})
        streamed.append(time.monotonic() - started)

    guarded = BodyDeadline(app, idle_seconds=0.1, min_bytes_per_second=MIN_RATE)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t") as http:
        response = await http.post("/v1/audio/transcriptions", content=b"x" * 1000)
    assert response.status_code == 200 and response.text.count("data:") == 4
    assert streamed and streamed[0] >= 0.35


# --- 2. header size ---------------------------------------------------------------------------------------------


@needs_proc
def test_a_64_mib_header_is_refused_with_431_before_it_is_buffered(deadlines_server: ServerUrl) -> None:
    pid = deadlines_server.pid
    rss_before = memory_kib(pid, "VmRSS")
    with socket.create_connection(address(deadlines_server), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        started = time.monotonic()
        sent, _, answered = trickle(sock, b"a" * 2**26, 2**16, 0.0, limit=60.0)
        rss_after = memory_kib(pid, "VmRSS")
        answer = read_answer(sock) if answered else None
        seconds = time.monotonic() - started
    growth = (rss_after - rss_before) / 1024
    print(
        f"\n64 MiB header: {answer.status if answer else 'no answer'} after {sent / 2**20:.2f} MiB sent, "
        f"{seconds:.2f} s; server RSS +{growth:.1f} MiB"
    )
    assert answer is not None and answer.status == 431
    assert b"DS_MAX_HEADER_BYTES" in answer.body
    assert sent < 2**23, "refused after about DS_MAX_HEADER_BYTES, not after the whole header"
    assert growth < 8, f"the server's RSS grew by {growth:.1f} MiB"
    with httpx.Client(base_url=deadlines_server, timeout=10) as http:
        assert http.get("/health", headers={"X-Big": "a" * 60_000}).status_code == 200, "under the cap: fine"


# --- 1. connection cap ---------------------------------------------------------------------------------------------

LOW_OPEN_FILES = 256  # a macOS Terminal's default soft limit


@contextmanager
def server_with_open_files(env: dict[str, str], open_files: int) -> Iterator[ServerUrl]:
    """`python -m app` with soft and hard RLIMIT_NOFILE at `open_files` (so that it cannot raise them)."""

    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with running_server(env, preexec_fn=limit) as base:
        yield base


@needs_proc
def test_300_idle_connections_leave_health_and_transcribe_answering_at_256_open_files(
    small_model_dir: Path, speech_wav: Path
) -> None:
    """Finding 1: the soft open-file limit at 256 and 300 connections that send nothing. The header deadline is
    long here, so what keeps the service answering is the connection cap: at the cap the longest-idle
    connection is closed for the new one."""
    env = server_env(small_model_dir, DS_HEADER_TIMEOUT_SECONDS="60")
    with server_with_open_files(env, LOW_OPEN_FILES) as base:
        host, port = address(base)
        idle: list[socket.socket] = []
        started = time.monotonic()
        try:
            for _ in range(300):
                idle.append(socket.create_connection((host, port), timeout=5))
            time.sleep(0.5)  # the server accepts them all
            fds = open_fds(base.pid)
            with httpx.Client(base_url=base, timeout=5) as http:
                health = http.get("/health")
                files = {"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}
                transcribed = http.post("/transcribe", files=files)
        finally:
            for sock in idle:
                sock.close()
        log = base.log.read_text()
    print(
        f"\n300 idle connections at {LOW_OPEN_FILES} open files: server fds {fds}, /health {health.status_code}, "
        f"/transcribe {transcribed.status_code}; {time.monotonic() - started:.1f} s"
    )
    assert health.status_code == 200 and transcribed.status_code == 200
    assert fds < LOW_OPEN_FILES - 32, "descriptors are left for the service's own files"
    cap = default_max_connections(LOW_OPEN_FILES)
    assert f"connection cap of {cap} reached" in log and "DS_MAX_CONNECTIONS" in log
    assert "Traceback" not in log


def test_default_connection_cap_keeps_a_reserve_of_descriptors() -> None:
    assert default_max_connections(256) == 192
    assert default_max_connections(10240) == 8960
    assert default_max_connections(65536) == 57344
    assert default_max_connections(resource.RLIM_INFINITY) == 57344
    assert default_max_connections(64) >= 1


# --- 3. uploads admitted before their bodies are read -----------------------------------------------------------

UPLOAD_BYTES = 24 * 2**20
BUDGET = 50 * 2**20  # two such uploads at once
UPLOADS = 8


@dataclass(frozen=True)
class UploadOutcome:
    early: bool  # the server answered before any of the body was sent
    body_sent: int
    answer: Answer
    seconds: float  # from the headers to the answer


def upload_raw(host: str, port: int, body: bytes) -> UploadOutcome:
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(upload_head("/transcribe", len(body)))
        started = time.monotonic()
        if response_waiting(sock, 1.0):  # every client's headers are in before any body goes out
            return UploadOutcome(True, 0, read_answer(sock), time.monotonic() - started)
        sent, _, _ = trickle(sock, body, 2**20, 0.0, limit=60.0)
        return UploadOutcome(False, sent, read_answer(sock, 60), time.monotonic() - started)


@needs_proc
def test_concurrent_large_uploads_are_bounded_by_the_buffered_bytes_budget(small_model_dir: Path) -> None:
    """Finding 3: eight 24 MiB uploads at once against a 50 MiB budget: two are read, six get 503 + Retry-After
    before they send a byte of body, and the server's peak RSS grows by what two uploads take, not eight."""
    env = server_env(
        small_model_dir,
        DS_MAX_BUFFERED_UPLOAD_BYTES=str(BUDGET),
        DS_MAX_AUDIO_SECONDS="2",  # each upload is read whole, then stops decoding after 2 s (413)
        DS_WORKERS="2",
        DS_QUEUE_LENGTH="8",
    )
    body = multipart(silent_wav(UPLOAD_BYTES))
    with running_server(env) as base:
        host, port = address(base)
        peak_before = memory_kib(base.pid, "VmHWM")
        outcomes: list[UploadOutcome] = []
        started = time.monotonic()
        threads = [
            threading.Thread(target=lambda: outcomes.append(upload_raw(host, port, body)))
            for _ in range(UPLOADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        seconds = time.monotonic() - started
        growth = (memory_kib(base.pid, "VmHWM") - peak_before) / 1024
        with httpx.Client(base_url=base, timeout=60) as http:  # the budget was given back
            again = http.post("/transcribe", files={"file": ("a.wav", silent_wav(UPLOAD_BYTES), "audio/wav")})
    early = [o for o in outcomes if o.early]
    read = [o for o in outcomes if not o.early]
    print(
        f"\n{UPLOADS} uploads of {UPLOAD_BYTES / 2**20:.0f} MiB, budget {BUDGET / 2**20:.0f} MiB: "
        f"{len(read)} read ({[o.answer.status for o in read]}), {len(early)} answered early "
        f"({sorted({o.answer.status for o in early})}, in {max((o.seconds for o in early), default=0) * 1000:.0f} ms); "
        f"peak RSS +{growth:.0f} MiB; {seconds:.1f} s"
    )
    assert len(outcomes) == UPLOADS
    assert len(read) == 2 and all(o.answer.status == 413 for o in read)  # audio_too_long: read and decoded
    assert len(early) == UPLOADS - 2
    for outcome in early:
        assert outcome.answer.status == 503 and outcome.answer.headers["retry-after"] == "1"
        assert b"DS_MAX_BUFFERED_UPLOAD_BYTES" in outcome.answer.body and outcome.seconds < 0.5
    assert growth < 3.5 * BUDGET / 2**20, f"peak RSS grew by {growth:.0f} MiB"
    assert again.status_code == 413


async def test_an_upload_holds_its_queue_place_while_its_body_arrives(
    small_engine: Engine, small_model_dir: Path, speech_wav: Path
) -> None:
    """One worker, no queue: an upload still sending its body has the only place, so another is refused with
    503 before its body is read (before, both were read and the second waited for the worker)."""
    blocking = BlockingEngine(small_engine)
    blocking.release.set()
    app: FastAPI = create_app(Settings(model_dir=small_model_dir, workers=1, queue_length=0), blocking)
    admission = app.state.services.admission
    audio = multipart(speech_wav.read_bytes())
    more = asyncio.Event()
    second_read: list[int] = []

    async def slow_body() -> AsyncIterator[bytes]:
        yield audio[:1000]
        await more.wait()
        yield audio[1000:]

    async def second_body() -> AsyncIterator[bytes]:
        second_read.append(1)
        yield audio

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        first = asyncio.create_task(http.post("/transcribe", content=slow_body(), headers=headers))
        await wait_for(lambda: admission.queued == 1)
        second = await http.post("/v1/audio/transcriptions", content=second_body(), headers=headers)
        assert second.status_code == 503 and second.json()["error"]["code"] == "server_busy"
        assert second.headers["retry-after"] == "1" and not second_read
        more.set()
        assert (await first).status_code == 200
    assert admission.queued == 0 and admission.busy == 0


async def test_a_chunked_upload_is_counted_against_the_budget_as_it_arrives(
    small_engine: Engine, small_model_dir: Path, speech_wav: Path
) -> None:
    app: FastAPI = create_app(
        Settings(model_dir=small_model_dir, max_buffered_upload_bytes=2**20, queue_length=8), small_engine
    )
    audio = multipart(speech_wav.read_bytes() + bytes(700_000))
    more = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield audio[: len(audio) - 10]
        await more.wait()
        yield audio[len(audio) - 10 :]

    async def chunked() -> AsyncIterator[bytes]:
        yield audio

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        first = asyncio.create_task(http.post("/transcribe", content=held_body(), headers=headers))
        await asyncio.sleep(0.2)
        second = await http.post("/transcribe", content=chunked(), headers=headers)
        assert second.status_code == 503 and "DS_MAX_BUFFERED_UPLOAD_BYTES" in second.json()["detail"]
        more.set()
        assert (await first).status_code == 200
        assert (await http.post("/transcribe", content=chunked(), headers=headers)).status_code == 200
