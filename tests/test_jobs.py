"""Batch jobs end to end: a real redis-server, real `python -m app` services and `python -m app.worker` processes.

What is checked: a job's life over HTTP (submit, poll, result equal to /transcribe's, delete), listing, 100 jobs
each run exactly once across two worker processes (SAQ's own "Processing"/"Finished" log lines counted), a
worker SIGKILLed mid-job (another one finishes it after the heartbeat and a sweep), SIGTERM mid-job (finished
within the grace, or put back past it), Redis stopped and started again, cancelling a running job, callbacks,
the service without DS_REDIS_URL, bad input, a full queue, a busy service (its own worker waits for a slot) and
the job metrics.

The long job: the default model transcribes clean speech at some 300x real time (a minute in 0.2 s: too quick
to catch running), so the long recording is three minutes of speech with white noise over it, which makes the
beam search work (2-3 s a run on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.service.job_runner import SWEEP_SECONDS
from app.service.jobs import AUDIO_KEY, RESULT_KEY
from tests.support.audio import pcm16, speak, spoken_phrases
from tests.support.metrics import scrape, value
from tests.support.redis import RedisServer, running_redis
from tests.support.server import ROOT, ServerUrl, running_server
from tests.support.worker import WorkerProcess

MODEL_DIR = ROOT / "models" / "default"
HEARTBEAT = 3  # DS_JOB_HEARTBEAT_SECONDS where a worker is killed: recovery in seconds, not the default 20
# SAQ's RedisQueue.sweep marks a silent job aborting and waits this long for it to end before re-queueing it.
SAQ_SWEEP_ABORT_WAIT = 5.0
SHORT_TEXT = "turn on the kitchen lights"
PHRASES = [
    "turn on the kitchen lights and play some music",
    "the quick brown fox jumps over the lazy dog",
    "please set a timer for ten minutes",
    "what is the weather going to be like tomorrow morning",
]
FORMATS = ("text", "srt", "vtt")

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "manifest.json").exists(), reason="models/default is missing (the trained default model)"
)


# ---------------------------------------------------------------------------------------------------- helpers


def job_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    """A service's or worker's settings: the default model, one BLAS thread (two cores for several processes)."""
    return {
        "DS_MODEL_DIR": str(MODEL_DIR),
        "DS_NUMPY_THREADS": "1",
        "DS_LOG_LEVEL": "info",
        "DS_LOG_FORMAT": "text",
        "DS_REDIS_URL": redis_url or "",
        **extra,
    }


def db_url(redis: RedisServer, db: int) -> str:
    """One Redis database per service: the queues of different tests do not meet."""
    return redis.url.rsplit("/", 1)[0] + f"/{db}"


def submit(base: str, audio: bytes, *, params: dict[str, Any] | None = None, **form: str) -> httpx.Response:
    return httpx.post(
        f"{base}/jobs",
        files={"file": ("speech.wav", audio, "audio/wav")},
        params=params,
        data=form or None,
        timeout=60,
    )


def submitted(base: str, audio: bytes, **kwargs: Any) -> str:
    response = submit(base, audio, **kwargs)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for(base: str, job_id: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the job until it has `status` (done or failed instead fails at once). `cancelled` is not taken for
    final: a job SAQ's sweep is re-queueing reads `cancelled` for a while (a DELETEd job is a 404, never
    `cancelled`); test_a_job_being_recovered_never_reads_cancelled is about that."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base}/jobs/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        view = response.json()
        if view["status"] == status:
            return dict(view)
        if view["status"] in ("done", "failed"):
            pytest.fail(f"job {job_id} ended {view['status']}, not {status}: {view}")
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} is not {status} after {timeout:g} s: {view}")
        time.sleep(0.02)


def transcribe(base: str, audio: bytes, fmt: str = "json", **params: Any) -> httpx.Response:
    response = httpx.post(
        f"{base}/transcribe",
        files={"file": ("speech.wav", audio, "audio/wav")},
        params={"format": fmt, **params},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def result(base: str, job_id: str, fmt: str = "json") -> httpx.Response:
    return httpx.get(f"{base}/jobs/{job_id}/result", params={"format": fmt}, timeout=30)


def without_timing(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "processing_seconds"}


def same_result(body: dict[str, Any]) -> dict[str, Any]:
    """What a transcription says, for comparing a job's result with /transcribe's: without the timing, and
    without null fields (/transcribe leaves them out; whether a job's JSON does too is
    test_the_json_result_is_what_transcribe_answers's business)."""
    return {k: v for k, v in without_timing(body).items() if v is not None}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Hook:
    """A callback receiver on loopback: the POSTs it got, answering `statuses` in turn (then 200)."""

    url: str
    posts: list[tuple[float, dict[str, Any]]]
    statuses: list[int]


@pytest.fixture
def hook() -> Iterator[Hook]:
    posts: list[tuple[float, dict[str, Any]]] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            posts.append((time.monotonic(), json.loads(body)))
            status = statuses.pop(0) if statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Hook(f"http://127.0.0.1:{server.server_address[1]}/hook", posts, statuses)
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass
class Audio:
    short: bytes  # 1.8 s: "turn on the kitchen lights"
    long: bytes  # three minutes of noisy speech: seconds of work
    pcm: bytes  # the short one as s16le PCM, for /stream


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Audio:
    import numpy as np
    import soundfile

    folder = tmp_path_factory.mktemp("jobs-audio")
    short = speak(SHORT_TEXT, folder / "short.wav")
    minute, _ = soundfile.read(spoken_phrases(PHRASES * 4, folder / "minute.wav", pause=0.8), dtype="float32")
    speech = np.tile(minute, 3)
    noise = np.random.default_rng(1).standard_normal(len(speech)).astype(np.float32) * 0.1
    soundfile.write(folder / "long.wav", np.clip(speech + noise, -1, 1), 16000, subtype="PCM_16")
    return Audio(short.read_bytes(), (folder / "long.wav").read_bytes(), pcm16(short))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def service(redis: RedisServer) -> Iterator[ServerUrl]:
    """The service with its own job worker (DS_JOB_WORKERS=1) and loopback callbacks allowed."""
    env = job_env(db_url(redis, 1), DS_JOB_WORKERS="1", DS_JOB_CALLBACK_HOSTS="127.0.0.1")
    with running_server(env) as base:
        yield base


@dataclass
class Reference:
    short: dict[str, Any]  # /transcribe's answer in every format
    long: dict[str, Any]
    long_seconds: float  # wall time of /transcribe on the long file


@pytest.fixture(scope="module")
def reference(service: ServerUrl, audio: Audio) -> Reference:
    """/transcribe's answers for the two files: what every job's result must equal."""
    short: dict[str, Any] = {"json": transcribe(service, audio.short).json()}
    short.update({fmt: transcribe(service, audio.short, fmt).text for fmt in FORMATS})
    started = time.monotonic()
    long = transcribe(service, audio.long).json()
    return Reference(short, long, time.monotonic() - started)


class Cluster:
    """A service running no jobs itself (DS_JOB_WORKERS=0) and `python -m app.worker` processes beside it."""

    def __init__(self, base: ServerUrl, redis_url: str, folder: Path) -> None:
        self.base = base
        self.redis_url = redis_url
        self.folder = folder
        self.workers: list[WorkerProcess] = []
        self.recovery_statuses: list[str] | None = None  # what test_a_worker_killed_mid_job's poller saw

    def start_worker(self, **extra: str) -> WorkerProcess:
        log = self.folder / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(job_env(self.redis_url, DS_JOB_HEARTBEAT_SECONDS=str(HEARTBEAT), **extra), log)
        self.workers.append(worker)
        return worker

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def ensure(self, n: int) -> list[WorkerProcess]:
        """At least `n` workers running (started together: their model loads overlap)."""
        started = [self.start_worker() for _ in range(n - len(self.live()))]
        for worker in started:
            worker.wait_started()
        return self.live()

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def runner_of(self, job_id: str, timeout: float = 10.0) -> WorkerProcess:
        """The worker whose log says it is processing the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers:
                if worker.saq_lines("Processing", job_id):
                    return worker
            time.sleep(0.02)
        pytest.fail(f"no worker's log shows job {job_id} processing")

    def saq_lines(self, what: str, job_id: str) -> list[str]:
        return [line for w in self.workers for line in w.saq_lines(what, job_id)]


@pytest.fixture(scope="module")
def cluster(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = db_url(redis, 2)
    env = job_env(url, DS_JOB_WORKERS="0", DS_JOB_HEARTBEAT_SECONDS=str(HEARTBEAT))
    with running_server(env) as base:
        cluster = Cluster(base, url, tmp_path_factory.mktemp("workers"))
        try:
            yield cluster
        finally:
            cluster.stop_all()


@dataclass
class Stoppable:
    """A service running no jobs (DS_JOB_WORKERS=0, DS_JOB_MAX_QUEUED=2) on a Redis of its own, to stop."""

    base: ServerUrl
    redis: RedisServer


@pytest.fixture(scope="module")
def stoppable() -> Iterator[Stoppable]:
    with running_redis() as redis:
        env = job_env(redis.url, DS_JOB_WORKERS="0", DS_JOB_MAX_QUEUED="2")
        with running_server(env) as base:
            yield Stoppable(base, redis)


# ---------------------------------------------------------------------------------------------------- a job's life


def test_submit_poll_result_and_delete(service: ServerUrl, audio: Audio, reference: Reference) -> None:
    response = submit(service, audio.short)
    assert response.status_code == 202
    queued = response.json()
    job_id = queued["id"]
    assert len(job_id) == 32 and queued["status"] == "queued" and queued["progress"] == 0
    assert queued["filename"] == "speech.wav" and queued["attempts"] == 0
    assert queued["audio_seconds"] == pytest.approx(reference.short["json"]["duration"], abs=0.01)
    assert queued["created"] and queued["started"] is None and queued["finished"] is None

    done = wait_for(service, job_id, "done")
    assert done["progress"] == 1 and done["attempts"] == 1 and "error" not in done
    created, started, finished = (datetime.fromisoformat(done[k]) for k in ("created", "started", "finished"))
    assert created <= started <= finished

    body = result(service, job_id)
    assert body.status_code == 200 and body.headers["content-type"] == "application/json"
    assert same_result(body.json()) == same_result(reference.short["json"])
    assert body.json()["text"] == SHORT_TEXT
    for fmt in FORMATS:
        rendered = result(service, job_id, fmt)
        assert rendered.status_code == 200
        assert rendered.text == reference.short[fmt], fmt

    deleted = httpx.delete(f"{service}/jobs/{job_id}", timeout=10)
    assert deleted.status_code == 204 and deleted.content == b""
    assert httpx.get(f"{service}/jobs/{job_id}", timeout=10).status_code == 404
    assert result(service, job_id).status_code == 404
    assert httpx.delete(f"{service}/jobs/{job_id}", timeout=10).status_code == 404
    listed = httpx.get(f"{service}/jobs", params={"limit": 100}, timeout=10).json()
    assert job_id not in [job["id"] for job in listed["jobs"]]
    assert httpx.get(f"{service}/jobs/no-such-job", timeout=10).status_code == 404


def test_the_json_result_is_what_transcribe_answers(
    service: ServerUrl, audio: Audio, reference: Reference
) -> None:
    job_id = submitted(service, audio.short)
    wait_for(service, job_id, "done")
    assert without_timing(result(service, job_id).json()) == without_timing(reference.short["json"])


def test_hot_words_and_alternatives_as_transcribe_takes_them(service: ServerUrl, audio: Audio) -> None:
    params: dict[str, Any] = {"hot_words": "kitchen:5", "alternatives": 3}
    expected = transcribe(service, audio.short, **params).json()
    job_id = submitted(service, audio.short, params=params)
    wait_for(service, job_id, "done")
    got = result(service, job_id).json()
    assert without_timing(got) == without_timing(expected)
    assert 1 <= len(got["alternatives"]) <= 3  # the distinct transcripts the beam found, at most 3
    bad = submit(service, audio.short, params={"alternatives": 0})
    assert bad.status_code == 422


def test_list_is_newest_first_a_page_at_a_time(service: ServerUrl, audio: Audio) -> None:
    ids = [submitted(service, audio.short) for _ in range(3)]
    first = httpx.get(f"{service}/jobs", params={"limit": 2}, timeout=10).json()
    assert [job["id"] for job in first["jobs"]] == [ids[2], ids[1]]
    assert first["offset"] == 0 and first["limit"] == 2 and first["total"] >= 3
    second = httpx.get(f"{service}/jobs", params={"offset": 1, "limit": 2}, timeout=10).json()
    assert [job["id"] for job in second["jobs"]] == [ids[1], ids[0]]
    assert all({"status", "progress", "created"} <= set(job) for job in second["jobs"])
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert httpx.get(f"{service}/jobs", params=bad, timeout=10).status_code == 422
    for job_id in ids:
        wait_for(service, job_id, "done")


def test_a_job_still_queued_has_no_result(stoppable: Stoppable, audio: Audio) -> None:
    job_id = submitted(stoppable.base, audio.short)  # no worker anywhere: it stays queued
    try:
        assert httpx.get(f"{stoppable.base}/jobs/{job_id}", timeout=10).json()["status"] == "queued"
        response = result(stoppable.base, job_id)
        assert response.status_code == 409 and "queued" in response.json()["detail"]
    finally:
        assert httpx.delete(f"{stoppable.base}/jobs/{job_id}", timeout=10).status_code == 204


# ---------------------------------------------------------------------------------------------------- workers


def test_a_hundred_jobs_each_run_exactly_once(cluster: Cluster, audio: Audio, reference: Reference) -> None:
    workers = cluster.ensure(2)
    ids = [submitted(cluster.base, audio.short) for _ in range(100)]
    deadline = time.monotonic() + 60
    while True:
        views = httpx.get(f"{cluster.base}/jobs", params={"limit": 100}, timeout=10).json()["jobs"]
        by_id = {view["id"]: view for view in views}
        if all(by_id.get(job_id, {}).get("status") in ("done", "failed") for job_id in ids):
            break
        assert time.monotonic() < deadline, [v["status"] for v in views]
        time.sleep(0.2)
    assert [by_id[job_id]["status"] for job_id in ids] == ["done"] * 100
    assert [by_id[job_id]["attempts"] for job_id in ids] == [1] * 100
    # SAQ logs a line when a worker takes a job and when it ends one: once each per job, across every worker.
    for job_id in ids:
        processing, finished = cluster.saq_lines("Processing", job_id), cluster.saq_lines("Finished", job_id)
        assert len(processing) == 1 and len(finished) == 1, (job_id, processing, finished)
        assert "attempts: 1," in finished[0]
    shares = [sum(1 for job_id in ids if w.saq_lines("Finished", job_id)) for w in workers]
    assert sum(shares) == 100 and min(shares) > 0, shares  # both workers took jobs
    assert "Finished Job<" not in cluster.base.log.read_text()  # DS_JOB_WORKERS=0: the service ran none
    for job_id in ids[:3] + ids[-3:]:
        assert result(cluster.base, job_id, "text").text == reference.short["text"]


def test_a_worker_killed_mid_job(cluster: Cluster, audio: Audio, reference: Reference) -> None:
    cluster.ensure(2)
    job_id = submitted(cluster.base, audio.long)
    wait_for(cluster.base, job_id, "running")
    victim = cluster.runner_of(job_id)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed = time.monotonic()
    # The heartbeat stops; a sweep (every SWEEP_SECONDS, one at a time across the workers: the killed one may
    # have taken the sweep lock just before) finds it HEARTBEAT s old, marks it aborting, waits SAQ's 5 s for it
    # to end, and re-queues it; the other worker runs it again from its stored audio.
    bound = (
        max(HEARTBEAT, SWEEP_SECONDS) + SWEEP_SECONDS + SAQ_SWEEP_ABORT_WAIT + 2 * reference.long_seconds + 5
    )
    statuses: list[str] = []  # as a client polling meanwhile sees them
    while True:
        view = httpx.get(f"{cluster.base}/jobs/{job_id}", timeout=10).json()
        if not statuses or statuses[-1] != view["status"]:
            statuses.append(view["status"])
        if view["status"] in ("done", "failed"):
            break
        assert time.monotonic() - killed < bound, (statuses, view)
        time.sleep(0.05)
    recovered = time.monotonic() - killed
    cluster.recovery_statuses = statuses
    assert view["status"] == "done" and view["attempts"] == 2, (statuses, view)
    assert not victim.saq_lines("Finished", job_id)
    (survivor,) = [w for w in cluster.live() if w.saq_lines("Finished", job_id)]
    assert survivor is not victim and len(survivor.saq_lines("Processing", job_id)) == 1
    assert same_result(result(cluster.base, job_id).json()) == same_result(reference.long)
    print(f"killed worker's job done {recovered:.1f} s later (bound {bound:.1f} s), statuses {statuses}")


def test_a_job_being_recovered_never_reads_cancelled(cluster: Cluster) -> None:
    if cluster.recovery_statuses is None:
        pytest.skip("needs test_a_worker_killed_mid_job's run (it records the statuses a poller saw)")
    assert "cancelled" not in cluster.recovery_statuses, cluster.recovery_statuses


def test_sigterm_lets_the_running_job_finish(cluster: Cluster, audio: Audio, reference: Reference) -> None:
    cluster.ensure(1)
    job_id = submitted(cluster.base, audio.long)
    wait_for(cluster.base, job_id, "running")
    worker = cluster.runner_of(job_id)
    worker.process.send_signal(signal.SIGTERM)  # DS_SHUTDOWN_GRACE_SECONDS (20) is longer than the job
    assert worker.process.wait(timeout=30 + 2 * reference.long_seconds) == 0
    done = wait_for(cluster.base, job_id, "done", timeout=5)
    assert done["attempts"] == 1 and len(worker.saq_lines("Finished", job_id)) == 1
    assert same_result(result(cluster.base, job_id).json()) == same_result(reference.long)


def test_sigterm_past_the_grace_puts_the_job_back(
    cluster: Cluster, audio: Audio, reference: Reference
) -> None:
    cluster.stop_all()
    impatient = cluster.start_worker(DS_SHUTDOWN_GRACE_SECONDS="0").wait_started()
    job_id = submitted(cluster.base, audio.long)
    wait_for(cluster.base, job_id, "running")
    assert cluster.runner_of(job_id) is impatient
    # The next worker is up (its first sweep done) before the job is back in the queue: a worker starting with
    # a job waiting may sweep it in the instant its own dequeue takes it (SAQ's race), which is not this test's.
    patient = next(w for w in cluster.ensure(2) if w is not impatient)
    impatient.process.send_signal(signal.SIGTERM)
    assert impatient.process.wait(timeout=30) == 0
    assert not impatient.saq_lines("Finished", job_id)
    assert "Retrying Job<" in impatient.text()  # SAQ put it back: cancelled past the grace, not swept
    done = wait_for(cluster.base, job_id, "done", timeout=30 + 2 * reference.long_seconds)
    assert done["attempts"] == 2 and len(patient.saq_lines("Finished", job_id)) == 1
    assert same_result(result(cluster.base, job_id).json()) == same_result(reference.long)


def test_cancelling_a_running_job(service: ServerUrl, redis: RedisServer, audio: Audio) -> None:
    import redis as redis_client

    store = redis_client.Redis.from_url(db_url(redis, 1))
    job_id = submitted(service, audio.long)
    wait_for(service, job_id, "running")
    keys = (AUDIO_KEY.format(job_id), RESULT_KEY.format(job_id))
    assert store.exists(keys[0]) == 1
    assert httpx.delete(f"{service}/jobs/{job_id}", timeout=10).status_code == 204
    assert httpx.get(f"{service}/jobs/{job_id}", timeout=10).status_code == 404
    assert result(service, job_id).status_code == 404
    assert store.exists(*keys) == 0
    # The service's worker goes on to the next job, and the cancelled one leaves nothing behind.
    next_id = submitted(service, audio.short)
    wait_for(service, next_id, "done", timeout=60)
    assert result(service, next_id, "text").text.strip() == SHORT_TEXT
    assert store.exists(*keys) == 0
    assert job_id not in [j["id"] for j in httpx.get(f"{service}/jobs", params={"limit": 100}).json()["jobs"]]
    store.close()


# ---------------------------------------------------------------------------------------------------- Redis


def test_redis_stopped_and_started_again(stoppable: Stoppable, audio: Audio, reference: Reference) -> None:
    from websockets.sync.client import connect

    base = stoppable.base
    job_id = submitted(base, audio.short)  # no worker yet: it waits in Redis
    stoppable.redis.stop()
    try:
        for response in (
            submit(base, audio.short),
            httpx.get(f"{base}/jobs/{job_id}", timeout=30),
            httpx.get(f"{base}/jobs", timeout=30),
        ):
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert "cannot be reached" in response.json()["detail"]
        # Everything but /jobs goes on.
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert transcribe(base, audio.short, "text").text == reference.short["text"]
        with connect(base.ws + "/stream") as ws:
            for start in range(0, len(audio.pcm), 6400):
                ws.send(audio.pcm[start : start + 6400])
            ws.send(json.dumps({"type": "eof"}))
            final = [m for m in map(json.loads, ws) if m["type"] == "final"]
        assert final and final[0]["text"] == SHORT_TEXT
    finally:
        stoppable.redis.start()  # the same port and data (appendonly)
    view = httpx.get(f"{base}/jobs/{job_id}", timeout=30)
    assert view.status_code == 200 and view.json()["status"] == "queued"
    worker = WorkerProcess(job_env(stoppable.redis.url), base.log.with_suffix(".worker.log"))
    try:
        worker.wait_started()
        # (A worker starting with a job waiting may sweep it as it takes it, SAQ's race: then the job is
        # re-queued after SAQ's 5 s wait and runs again; done either way.)
        wait_for(base, job_id, "done", timeout=30)
        assert result(base, job_id, "text").text == reference.short["text"]
    finally:
        worker.stop()


def test_a_worker_waits_for_redis_without_spinning(tmp_path: Path) -> None:
    with running_redis() as redis:
        worker = WorkerProcess(job_env(redis.url), tmp_path / "worker.log").wait_started()
        try:
            redis.stop()
            time.sleep(0.5)
            before = cpu_seconds(worker.pid)
            time.sleep(2)
            spent = cpu_seconds(worker.pid) - before
            redis.start()
        finally:
            worker.stop()
    assert spent < 0.2, f"the worker used {spent:.2f} s of CPU in 2 s while Redis was down"


# ---------------------------------------------------------------------------------------------------- callbacks


def test_callbacks_only_to_listed_hosts(service: ServerUrl, audio: Audio, hook: Hook) -> None:
    port = hook.url.split(":")[2].split("/")[0]
    for url in (
        f"http://localhost:{port}/hook",  # a name for the same address, but not the listed host
        "http://10.0.0.1/hook",
        f"ftp://127.0.0.1:{port}/hook",
        "file:///etc/passwd",
        "127.0.0.1/hook",
    ):
        response = submit(service, audio.short, callback_url=url)
        assert response.status_code == 422, (url, response.text)
        assert "callback_url" in response.json()["detail"], url
    assert hook.posts == []


def test_a_callback_is_posted_once(service: ServerUrl, audio: Audio, hook: Hook) -> None:
    job_id = submitted(service, audio.short, callback_url=hook.url)
    wait_for(service, job_id, "done")
    deadline = time.monotonic() + 10
    while not hook.posts and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.5)  # past the first retry's delay: nothing more comes
    assert [body for _, body in hook.posts] == [{"id": job_id, "status": "done"}]


def test_a_failing_callback_is_retried(service: ServerUrl, audio: Audio, hook: Hook) -> None:
    hook.statuses.extend([500, 500])
    job_id = submitted(service, audio.short, callback_url=hook.url)
    wait_for(service, job_id, "done")
    deadline = time.monotonic() + 15
    while len(hook.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert [body for _, body in hook.posts] == [{"id": job_id, "status": "done"}] * 3
    times = [t for t, _ in hook.posts]
    assert times[1] - times[0] == pytest.approx(1, abs=0.5) and times[2] - times[1] == pytest.approx(
        2, abs=0.5
    )


# ---------------------------------------------------------------------------------------------------- refusals


def test_without_redis_url_jobs_say_which_setting(audio: Audio) -> None:
    with running_server(job_env(None)) as base:
        for response in (
            submit(base, audio.short),
            httpx.get(f"{base}/jobs", timeout=10),
            httpx.get(f"{base}/jobs/abc", timeout=10),
            httpx.get(f"{base}/jobs/abc/result", timeout=10),
            httpx.delete(f"{base}/jobs/abc", timeout=10),
        ):
            assert response.status_code == 503, response.text
            assert "DS_REDIS_URL" in response.json()["detail"]
            assert "retry-after" not in response.headers  # it does not come back by waiting
        assert transcribe(base, audio.short, "text").text.strip() == SHORT_TEXT


def test_what_is_not_audio_is_refused_at_submission(service: ServerUrl) -> None:
    before = httpx.get(f"{service}/jobs", params={"limit": 1}, timeout=10).json()["total"]
    response = submit(service, b"this is not audio at all " * 40)
    assert response.status_code == 415, response.text
    assert httpx.get(f"{service}/jobs", params={"limit": 1}, timeout=10).json()["total"] == before


def test_a_full_queue_refuses_with_retry_after(stoppable: Stoppable, audio: Audio) -> None:
    base = stoppable.base
    ids = [submitted(base, audio.short) for _ in range(2)]  # DS_JOB_MAX_QUEUED=2, and no worker
    try:
        refused = submit(base, audio.short)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
        assert "DS_JOB_MAX_QUEUED" in refused.json()["detail"]
        # Cancelling a queued job makes room.
        assert httpx.delete(f"{base}/jobs/{ids.pop()}", timeout=10).status_code == 204
        ids.append(submitted(base, audio.short))
    finally:
        for job_id in ids:
            httpx.delete(f"{base}/jobs/{job_id}", timeout=10)


def test_a_busy_service_delays_its_jobs_rather_than_failing_them(redis: RedisServer, audio: Audio) -> None:
    env = job_env(db_url(redis, 4), DS_JOB_WORKERS="1", DS_WORKERS="1", DS_QUEUE_LENGTH="0")
    with running_server(env) as base:
        busy = threading.Thread(target=transcribe, args=(base, audio.long))
        busy.start()
        try:
            time.sleep(0.3)  # the long /transcribe holds the only worker slot
            assert httpx.post(f"{base}/transcribe", files={"file": ("a.wav", audio.short)}).status_code == 503
            job_id = submitted(base, audio.short)
            deadline = time.monotonic() + 60
            while (view := httpx.get(f"{base}/jobs/{job_id}", timeout=10).json())["status"] not in (
                "done",
                "failed",
            ):
                assert time.monotonic() < deadline, view
                time.sleep(0.05)
        finally:
            busy.join()
    assert view["status"] == "done" and view["attempts"] == 1, view


# ---------------------------------------------------------------------------------------------------- metrics


def test_job_metrics_move(service: ServerUrl, audio: Audio) -> None:
    before = scrape(httpx.get(f"{service}/metrics", timeout=10))
    job_id = submitted(service, audio.short)
    wait_for(service, job_id, "done")
    after = scrape(httpx.get(f"{service}/metrics", timeout=10))
    done = value(after, "ds_jobs_finished_total", status="done") - value(
        before, "ds_jobs_finished_total", status="done"
    )
    assert done == 1
    for histogram in ("ds_job_queue_wait_seconds", "ds_job_run_seconds"):
        assert value(after, f"{histogram}_count") - value(before, f"{histogram}_count") == 1, histogram
    assert value(after, "ds_job_run_seconds_sum") > value(before, "ds_job_run_seconds_sum")
    assert {("ds_jobs", frozenset({("state", s)})) for s in ("queued", "running")} <= set(after)
