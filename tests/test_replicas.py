"""Two replicas behind the repository's HAProxy config (deploy/haproxy/haproxy.cfg), all real processes: two
`python -m app` with DS_REPLICA_ID=r1/r2 and the shipped default model, one redis-server for jobs, and Debian's
haproxy. Uploads and jobs spread over both; a websocket stays on its replica; a resumable stream cut through the
balancer reconnects to the replica that holds it (by its resume_url, not by luck); a draining replica gets no new
work. The drain test ends r2, so it comes last."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from websockets.sync.client import ClientConnection, connect

from app.service.resume import ResumableStreams, ResumeRefused
from app.settings import Settings
from tests.support.audio import pcm16, speak
from tests.support.haproxy import SERVERS, Balancer, running_haproxy
from tests.support.metrics import scrape, value
from tests.support.protocol import send_then_drop
from tests.support.redis import RedisServer, running_redis
from tests.support.server import ServerUrl, running_server

ROOT = Path(__file__).resolve().parent.parent
FRAME = 6400  # 0.2 s of 16 kHz s16le
SHORT = "turn on the kitchen lights"
SENTENCE = "please turn on the kitchen lights and then play some quiet music in the living room"
ALWAYS_SERVED = {"/health", "/ready", "/metrics"}  # answered while draining (and polled by HAProxy and us)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerUrl]]:
    def env(name: str) -> dict[str, str]:
        return {
            "DS_MODEL_DIR": str(ROOT / "models" / "default"),
            "DS_REPLICA_ID": name,
            "DS_BEAM_WIDTH": "64",
            "DS_NUMPY_THREADS": "1",  # two replicas share the machine's cores
            "DS_STREAM_RESUME_SECONDS": "10",
            "DS_REDIS_URL": redis.url,
            "DS_JOB_WORKERS": "1",
            "DS_SHUTDOWN_GRACE_SECONDS": "10",  # the drain test's replica exits within it whatever happens
        }

    with ExitStack() as stack:
        logs = tmp_path_factory.mktemp("replica-logs")  # kept: what a failure needs
        yield {
            name: stack.enter_context(running_server(env(name), ready="/ready", log=logs / f"{name}.log"))
            for name in SERVERS
        }


@pytest.fixture(scope="module")
def lb(replicas: dict[str, ServerUrl]) -> Iterator[Balancer]:
    with running_haproxy(replicas, check_inter="500ms") as balancer:  # fall 2: a replica is out within ~1 s
        yield balancer


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(SHORT, tmp_path_factory.mktemp("replicas") / "short.wav").read_bytes()


@pytest.fixture(scope="module")
def sentence_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SENTENCE, tmp_path_factory.mktemp("replicas") / "sentence.wav")


@pytest.fixture(scope="module")
def pcm(sentence_wav: Path) -> bytes:
    return pcm16(sentence_wav)


def served(replica: str, route: str, method: str = "POST", status: str = "200") -> float:
    return value(
        scrape(httpx.get(f"{replica}/metrics", timeout=10)),
        "ds_http_requests_total",
        method=method,
        route=route,
        status=status,
    )


def active_streams(replicas: dict[str, ServerUrl]) -> dict[str, float]:
    return {
        name: value(scrape(httpx.get(f"{url}/metrics", timeout=10)), "ds_active_streams", route="/stream")
        for name, url in replicas.items()
    }


def work_seen(replica: str) -> float:
    """Every request this replica counted, but those it answers while draining too (health, readiness, metrics)."""
    samples = scrape(httpx.get(f"{replica}/metrics", timeout=10))
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "ds_http_requests_total" and dict(labels)["route"] not in ALWAYS_SERVED
    )


def messages_until_final(ws: ClientConnection) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] != "final":
        out.append(json.loads(ws.recv(timeout=30)))
    return out


def unbroken_final(url: str, pcm: bytes) -> dict[str, Any]:
    with connect(url) as ws:
        for start in range(0, len(pcm), FRAME):
            ws.send(pcm[start : start + FRAME])
        ws.send(json.dumps({"type": "eof"}))
        return messages_until_final(ws)[-1]


def upload(client: httpx.Client, path: str, wav: bytes) -> httpx.Response:
    return client.post(path, files={"file": ("speech.wav", wav, "audio/wav")})


def test_replica_ids_name_the_replica_in_stream_ids_and_refusals() -> None:
    streams = ResumableStreams(window=5, capacity=4, on_expire=lambda state: None, replica_id="r1")
    stream, token = streams.register(None)
    assert re.fullmatch(r"r1\.[0-9a-f]{16}", stream.stream_id)
    with pytest.raises(ResumeRefused, match="held by replica r2, this is r1"):
        streams.claim("r2.0123456789abcdef", token, None)  # reached the wrong replica: it says whose it is
    with pytest.raises(ResumeRefused, match="^no resumable stream"):
        streams.claim("r2." + "x" * 999, token, None)  # not an id this service hands out: nothing echoed
    bare, _ = ResumableStreams(5, 4, lambda state: None).register(None)
    assert re.fullmatch(r"[0-9a-f]{16}", bare.stream_id)  # without DS_REPLICA_ID: as before
    assert Settings(replica_id="").replica_id is None
    # "." separates it from the random part; it goes into a URL and a header.
    for bad in ("r.1", "r 1", "r1/x", "x" * 33):
        with pytest.raises(ValidationError):
            Settings(replica_id=bad)


def test_uploads_spread_over_both_replicas(
    lb: Balancer, replicas: dict[str, ServerUrl], short_wav: bytes
) -> None:
    before = {name: served(url, "/transcribe") for name, url in replicas.items()}
    with httpx.Client(base_url=lb, timeout=60) as client:  # one kept-alive connection: balanced per request
        answers = [upload(client, "/transcribe", short_wav) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["text"] for a in answers} == {SHORT}
    by_header = Counter(a.headers["x-replica"] for a in answers)
    assert by_header == {"r1": 10, "r2": 10}  # round robin
    by_metrics = {name: served(url, "/transcribe") - before[name] for name, url in replicas.items()}
    assert by_metrics == by_header  # each replica counted what its header claimed
    with httpx.Client(base_url=lb, timeout=10) as client:  # `?replica=` pins only a /stream reconnect
        pinned = Counter(client.get("/info?replica=r1").headers["x-replica"] for _ in range(4))
    assert pinned == {"r1": 2, "r2": 2}


def test_a_websocket_stream_stays_on_its_replica(
    lb: Balancer, replicas: dict[str, ServerUrl], sentence_wav: Path, pcm: bytes
) -> None:
    with httpx.Client(base_url=lb, timeout=60) as client:
        upload_text = upload(client, "/transcribe", sentence_wav.read_bytes()).json()["text"]
    assert len(upload_text.split()) >= 8, upload_text
    assert active_streams(replicas) == {"r1": 0, "r2": 0}
    seen = []
    with connect(lb.ws + "/stream") as ws:
        home = ws.response.headers["x-replica"]  # the handshake says where HAProxy put it
        for index, start in enumerate(range(0, len(pcm), FRAME)):
            ws.send(pcm[start : start + FRAME])
            if index % 6 == 0:
                seen.append(active_streams(replicas))
        ws.send(json.dumps({"type": "eof"}))
        final = messages_until_final(ws)[-1]  # then the replica closes the stream
    other = next(name for name in SERVERS if name != home)
    assert all(sample == {home: 1, other: 0} for sample in seen), seen  # one replica for its whole life
    assert final["text"] == upload_text  # and the transcript is the whole file's


def open_resumable_on(lb: Balancer, target: str) -> tuple[ClientConnection, dict[str, Any]]:
    """A resumable stream through HAProxy that landed on `target` (round robin: within two tries)."""
    for _ in range(4):
        ws = connect(lb.ws + "/stream")
        ws.send(json.dumps({"type": "config", "resumable": True}))
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "resumable", hello
        if ws.response.headers["x-replica"] == target:
            return ws, hello
        ws.close()
    raise AssertionError(f"no stream landed on {target}")


def steer_round_robin_away_from(lb: Balancer, target: str) -> None:
    """Until the last balanced request went to `target`: the round robin's next pick is then the other
    replica, so a reconnect that still reaches `target` was routed by its URL."""
    with httpx.Client(base_url=lb, timeout=10) as client:
        for _ in range(4):
            if client.get("/info").headers["x-replica"] == target:
                return
    raise AssertionError("the round robin did not alternate")


def resume_through(
    lb: Balancer, hello: dict[str, Any], acked: int, target: str
) -> tuple[ClientConnection, dict[str, Any]]:
    """Reconnect to the stream's resume_url through HAProxy and resume; retried briefly, since the replica may
    not have seen the drop yet (a connected stream cannot be claimed)."""
    claim = {
        "type": "resume",
        "stream_id": hello["stream_id"],
        "resume_token": hello["resume_token"],
        "bytes": acked,
    }
    for _ in range(50):
        steer_round_robin_away_from(lb, target)
        ws = connect(lb.ws + hello["resume_url"])
        assert ws.response.headers["x-replica"] == target  # by the URL: the round robin pointed elsewhere
        ws.send(json.dumps(claim))
        answer = json.loads(ws.recv(timeout=10))
        if answer["type"] == "resumed":
            return ws, answer
        assert answer["code"] == "resume_refused", answer
        ws.close()
        time.sleep(0.05)
    raise AssertionError("the stream could not be resumed")


@pytest.mark.parametrize("target", SERVERS)
def test_a_cut_resumable_stream_resumes_on_its_replica_through_haproxy(
    lb: Balancer, replicas: dict[str, ServerUrl], pcm: bytes, target: str
) -> None:
    reference = unbroken_final(lb.ws + "/stream", pcm)
    assert len(reference["text"].split()) >= 8, reference

    ws, hello = open_resumable_on(lb, target)
    assert hello["stream_id"].startswith(f"{target}.") and hello["resume_url"] == f"/stream?replica={target}"
    cut, acked = send_then_drop(ws, pcm, FRAME)  # then the network goes away (HAProxy passes the drop on)

    other = next(name for name in SERVERS if name != target)
    with connect(replicas[other].ws + "/stream") as wrong:  # the other replica knows whose stream it is
        wrong.send(
            json.dumps({"type": "resume", "stream_id": hello["stream_id"], "resume_token": "x", "bytes": 0})
        )
        refused = json.loads(wrong.recv(timeout=10))
        assert refused["code"] == "resume_refused" and f"held by replica {target}" in refused["message"]

    ws, resumed = resume_through(lb, hello, acked, target)
    with ws:
        assert resumed["stream_id"] == hello["stream_id"] and resumed["resume_url"] == hello["resume_url"]
        assert acked <= resumed["bytes"] <= cut
        for start in range(resumed["bytes"], len(pcm), FRAME):
            ws.send(pcm[start : start + FRAME])
        ws.send(json.dumps({"type": "eof"}))
        final = messages_until_final(ws)[-1]
    assert (final["text"], final["words"], final["duration"]) == (
        reference["text"],
        reference["words"],
        reference["duration"],
    )


def test_jobs_through_haproxy_spread_and_all_get_done(
    lb: Balancer, replicas: dict[str, ServerUrl], short_wav: bytes
) -> None:
    def finished() -> dict[str, float]:
        return {
            name: value(
                scrape(httpx.get(f"{url}/metrics", timeout=10)), "ds_jobs_finished_total", status="done"
            )
            for name, url in replicas.items()
        }

    before = finished()
    with httpx.Client(base_url=lb, timeout=30) as client:
        submitted = [upload(client, "/jobs", short_wav) for _ in range(6)]
        assert [s.status_code for s in submitted] == [202] * 6, [s.text for s in submitted]
        assert Counter(s.headers["x-replica"] for s in submitted) == {"r1": 3, "r2": 3}
        pending = {s.json()["id"] for s in submitted}
        polled_on = set()
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for job_id in sorted(pending):
                view = client.get(f"/jobs/{job_id}")  # any replica answers: the jobs live in Redis
                polled_on.add(view.headers["x-replica"])
                assert view.json()["status"] in {"queued", "running", "done"}, view.json()
                if view.json()["status"] == "done":
                    pending.discard(job_id)
            time.sleep(0.1)
        assert not pending, f"jobs not done in 30 s: {pending}"
        results = [client.get(f"/jobs/{s.json()['id']}/result").json()["text"] for s in submitted]
    assert results == [SHORT] * 6 and polled_on == {"r1", "r2"}
    ran = {name: count - before[name] for name, count in finished().items()}
    assert sum(ran.values()) == 6, ran  # run once each, by whichever replica's worker took it from Redis


def test_a_draining_replica_gets_no_new_requests(
    lb: Balancer, replicas: dict[str, ServerUrl], short_wav: bytes
) -> None:
    """Last: r2 exits at the end. An upload still arriving keeps it draining (alive) while we look."""
    r2 = replicas["r2"]
    host, port = r2.removeprefix("http://").split(":")
    held = socket.create_connection((host, int(port)))
    held.sendall(
        b"POST /transcribe HTTP/1.1\r\nHost: r2\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n--b\r\n"
    )
    deadline = time.monotonic() + 10
    while value(scrape(httpx.get(f"{r2}/metrics")), "ds_http_requests_in_progress", route="/transcribe") < 1:
        assert time.monotonic() < deadline, "the held upload never reached r2"
        time.sleep(0.02)
    try:
        r2.process.send_signal(signal.SIGTERM)
        while httpx.get(f"{r2}/ready", timeout=5).json()["status"] != "draining":
            time.sleep(0.02)
        # Until HAProxy's checks take r2 out (two failed /ready, 500 ms apart), a small request that r2 refuses
        # with 503 is retried on r1: the client never sees the drain.
        answers = []
        with httpx.Client(base_url=lb, timeout=10) as client:
            while lb.server_status()["r2"] != "DOWN":
                answers.append(client.get("/info"))
                time.sleep(0.01)
            assert answers and {(a.status_code, a.headers["x-replica"]) for a in answers} == {(200, "r1")}
            assert served(r2, "/info", "GET", "503") >= 1  # r2 did refuse some of them: HAProxy retried them
            lb.wait_for_status({"r1": "UP", "r2": "DOWN"})
            seen_by_r2 = work_seen(r2)
            uploads = [upload(client, "/transcribe", short_wav) for _ in range(6)]
        assert {(a.status_code, a.headers["x-replica"], a.json()["text"]) for a in uploads} == {
            (200, "r1", SHORT)
        }
        with connect(lb.ws + "/stream?replica=r2") as ws:  # a reconnect to the draining replica: balanced
            assert ws.response.headers["x-replica"] == "r1"
            ws.send(
                json.dumps(
                    {"type": "resume", "stream_id": "r2.0123456789abcdef", "resume_token": "x", "bytes": 0}
                )
            )
            assert "held by replica r2" in json.loads(ws.recv(timeout=10))["message"]  # the client opens anew
        assert work_seen(r2) == seen_by_r2  # not one request reached the draining replica
        assert r2.process.poll() is None  # still draining: the held upload is in flight
    finally:
        held.close()  # the last request in flight goes away: r2 finishes draining and exits
    try:
        assert r2.process.wait(timeout=20) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"r2 did not exit after its drain: {r2.log.read_text()[-5000:]}")
