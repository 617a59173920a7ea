"""Batch jobs (`python scripts/bench.py --jobs`): what the queue costs and what a second worker process buys.

Measured in one run against a real redis-server, a real uvicorn (DS_JOB_WORKERS=0: it runs no job itself) and
`python -m app.worker` processes, on the same short clip:

  throughput   N jobs submitted at once (a few client threads) and run by one worker process, then by two:
               jobs per second over the workers' span (the first job's `started` to the last one's `finished`,
               from the job records), and their ratio (two workers / one), on this machine's cores
  latency      one job at a time, one idle worker: POST /jobs to the job's `finished` (and to a poller seeing
               `done`, polling every 10 ms), against POST /transcribe of the same file on the same service;
               medians of M, and the difference (what the queue adds)

The runs alternate (one worker, two, one, two, ... ) and the best of each is kept, as the other sections do.
Workers are up (their first sweep done) before jobs arrive: a SAQ worker starting with jobs waiting can sweep
one it is taking, which would cost that job SAQ's 5 s abort wait and say nothing about throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.worker import WorkerProcess

from .audio import prepare_clips
from .common import CACHE, BenchError, log
from .models import ensure_model, server_env, uvicorn_server


@dataclass(frozen=True)
class JobsProfile:
    name: str
    jobs: int  # per throughput run
    repeats: int  # throughput runs per worker count, alternating
    latency_samples: int  # jobs (and /transcribe calls) for the latency medians
    clip_seconds: float


JOBS_FULL = JobsProfile("full", jobs=40, repeats=2, latency_samples=15, clip_seconds=10.0)
JOBS_QUICK = JobsProfile("quick", jobs=40, repeats=1, latency_samples=7, clip_seconds=10.0)
JOBS_TINY = JobsProfile("tiny", jobs=6, repeats=1, latency_samples=2, clip_seconds=3.0)
SUBMITTERS = 4  # client threads submitting a throughput run's jobs (faster than one worker runs them)
WORKER_START_S = 120.0
POLL_S = 0.01


@contextlib.contextmanager
def workers(env: dict[str, str], n: int, tag: str) -> Iterator[list[WorkerProcess]]:
    """`n` worker processes, started together, up and past their first sweep; stopped on exit."""
    started = [WorkerProcess(env, CACHE / f"worker-{tag}-{i}.log", inherit_env=False) for i in range(n)]
    try:
        for worker in started:
            worker.wait_started(WORKER_START_S, on_failure=_refuse)
        time.sleep(1.0)  # the first sweep of each runs as it starts: let it pass before any job is queued
        yield started
    finally:
        for worker in started:
            worker.stop()


def _refuse(message: str) -> None:
    raise BenchError(message)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _submit(client: Any, base: str, data: bytes) -> str:
    response = client.post(f"{base}/jobs", files={"file": ("speech.wav", data, "audio/wav")})
    if response.status_code != 202:
        raise BenchError(f"POST /jobs answered {response.status_code}: {response.text[:300]}")
    return str(response.json()["id"])


def _views(client: Any, base: str, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll GET /jobs until every one of `ids` is done; their views."""
    deadline = time.monotonic() + timeout
    while True:
        listed: dict[str, dict[str, Any]] = {}
        for offset in range(0, len(ids) + 100, 100):
            page = client.get(f"{base}/jobs", params={"offset": offset, "limit": 100}).json()["jobs"]
            listed.update({view["id"]: view for view in page})
            if len(page) < 100:
                break
        statuses = [listed.get(job_id, {}).get("status") for job_id in ids]
        if "failed" in statuses:
            failed = next(listed[i] for i in ids if listed[i]["status"] == "failed")
            raise BenchError(f"a job failed: {failed}")
        if all(status == "done" for status in statuses):
            return {job_id: listed[job_id] for job_id in ids}
        if time.monotonic() > deadline:
            raise BenchError(f"jobs not done after {timeout:g} s: {statuses}")
        time.sleep(0.05)


def throughput(base: str, data: bytes, n: int, workers_running: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            ids = list(pool.map(lambda _: _submit(client, base, data), range(n)))
        submitted = time.perf_counter() - started
        views = _views(client, base, ids, timeout=120 + 10 * n)
        wall = time.perf_counter() - started
        for job_id in ids:
            client.delete(f"{base}/jobs/{job_id}")
    first = min(_seconds(v["started"]) for v in views.values())
    last = max(_seconds(v["finished"]) for v in views.values())
    span = last - first
    attempts = sorted({v["attempts"] for v in views.values()})
    return {
        "workers": workers_running,
        "jobs": n,
        "submit_seconds": submitted,
        "wall_seconds": wall,  # first POST to the poller seeing every job done
        "worker_span_seconds": span,
        "jobs_per_s": n / span,
        "jobs_per_s_wall": n / wall,
        "attempts": attempts,  # [1] unless a job was delivered twice
        "seconds": -n / span,  # for choosing the best run (highest throughput)
    }


def latency(base: str, data: bytes, samples: int) -> dict[str, Any]:
    """Job after job, then /transcribe after /transcribe, on an idle service and worker."""
    import httpx

    finished: list[float] = []
    observed: list[float] = []
    waited: list[float] = []
    ran: list[float] = []
    direct: list[float] = []
    with httpx.Client(timeout=120) as client:
        for _ in range(samples):
            posted = time.time()
            t0 = time.perf_counter()
            job_id = _submit(client, base, data)
            while True:
                view = client.get(f"{base}/jobs/{job_id}").json()
                if view["status"] == "done":
                    observed.append(time.perf_counter() - t0)
                    break
                if view["status"] == "failed":
                    raise BenchError(f"a job failed: {view}")
                time.sleep(POLL_S)
            finished.append(_seconds(view["finished"]) - posted)
            waited.append(_seconds(view["started"]) - _seconds(view["created"]))
            ran.append(_seconds(view["finished"]) - _seconds(view["started"]))
            client.delete(f"{base}/jobs/{job_id}")
        for _ in range(samples):
            t0 = time.perf_counter()
            response = client.post(f"{base}/transcribe", files={"file": ("speech.wav", data, "audio/wav")})
            direct.append(time.perf_counter() - t0)
            if response.status_code != 200:
                raise BenchError(f"POST /transcribe answered {response.status_code}: {response.text[:300]}")
    job_s, transcribe_s = statistics.median(finished), statistics.median(direct)
    return {
        "samples": samples,
        "job_post_to_finished_median_s": job_s,
        "job_post_to_seen_done_median_s": statistics.median(observed),
        "job_queue_wait_median_s": statistics.median(waited),  # created -> started, from the job record
        "job_run_median_s": statistics.median(ran),  # started -> finished
        "transcribe_median_s": transcribe_s,
        "added_latency_s": job_s - transcribe_s,
        "job_over_transcribe": job_s / transcribe_s,
        "poll_interval_s": POLL_S,
    }


def measure(profile: JobsProfile, model_name: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Every number of the jobs benchmark, and the table's rows."""
    from tests.support.redis import running_redis

    if shutil.which("redis-server") is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server / brew install redis)")
    model_dir = ensure_model(model_name)
    clip = prepare_clips((profile.clip_seconds,))[profile.clip_seconds]
    data = clip.path.read_bytes()
    results: dict[str, Any] = {"model": str(model_dir), "clip": clip.label, "profile": profile.name}
    rows: list[tuple[str, Any]] = []
    with running_redis() as redis:
        worker_env = {**server_env(model_dir, DS_REDIS_URL=redis.url), "DS_LOG_LEVEL": "info"}
        with uvicorn_server(
            model_dir, f"{model_dir.name}-jobs", DS_REDIS_URL=redis.url, DS_JOB_WORKERS="0"
        ) as server:
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for repeat in range(profile.repeats):
                for n in (1, 2):
                    log(
                        f"jobs: {profile.jobs} jobs of {clip.label}, {n} worker process(es), run {repeat + 1}"
                    )
                    with workers(worker_env, n, f"{n}w"):
                        runs[n].append(throughput(server, data, profile.jobs, n))
                        if n == 1 and repeat == 0:
                            log(
                                f"jobs: latency, {profile.latency_samples} jobs and /transcribe calls one at a time"
                            )
                            results["latency"] = latency(server, data, profile.latency_samples)
    best = {n: max(r, key=lambda x: x["jobs_per_s"]) for n, r in runs.items()}
    ratio = best[2]["jobs_per_s"] / best[1]["jobs_per_s"]
    results.update(
        {
            "throughput": {f"{n}_workers": {"best": best[n], "runs": runs[n]} for n in runs},
            "two_over_one_worker": ratio,
            "cpus": os.cpu_count(),
        }
    )
    lat = results["latency"]
    rows += [
        (f"1 worker: jobs / s ({profile.jobs} x {clip.label})", best[1]["jobs_per_s"]),
        (f"2 workers: jobs / s ({profile.jobs} x {clip.label})", best[2]["jobs_per_s"]),
        (f"2 workers / 1 worker throughput ({os.cpu_count()} CPUs)", ratio),
        ("1 worker: jobs / s, first POST to all seen done", best[1]["jobs_per_s_wall"]),
        ("2 workers: jobs / s, first POST to all seen done", best[2]["jobs_per_s_wall"]),
        (f"job POST -> finished, median of {lat['samples']}, s", lat["job_post_to_finished_median_s"]),
        (
            f"job POST -> poller sees done ({POLL_S * 1000:g} ms polls), s",
            lat["job_post_to_seen_done_median_s"],
        ),
        ("  of it: queued (created -> started), s", lat["job_queue_wait_median_s"]),
        ("  of it: run (started -> finished), s", lat["job_run_median_s"]),
        (f"POST /transcribe, median of {lat['samples']}, s", lat["transcribe_median_s"]),
        ("latency the queue adds (job - /transcribe), s", lat["added_latency_s"]),
        ("job / /transcribe latency", lat["job_over_transcribe"]),
    ]
    return results, rows


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_jobs_bench(profile: JobsProfile, model_name: str, json_path: Path | None) -> int:
    """`python scripts/bench.py --jobs`: the table on stdout, every number in `json_path`."""
    from .report import _jsonable, machine_info

    started = time.monotonic()
    load_start = os.getloadavg()
    try:
        results, rows = measure(profile, model_name)
    except BenchError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 2
    wall = time.monotonic() - started
    width = max(len(metric) for metric, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  ----------")
    for metric, value in rows:
        print(f"{metric:<{width}}  {_format(value)}")
    print(
        f"\nbench wall time: {wall:.0f} s (jobs, {profile.name}); load average {load_start[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end",
        flush=True,
    )
    if json_path is not None:
        report = {
            "jobs_two_over_one_worker": results["two_over_one_worker"],
            "jobs_added_latency_s": results["latency"]["added_latency_s"],
            "profile": profile.name,
            "wall_seconds": wall,
            "how": __doc__,
            "meta": {
                **machine_info(),
                "argv": sys.argv[1:],
                "load_average_start": load_start,
                "load_average_end": os.getloadavg(),
            },
            "jobs": results,
            "rows": [{"metric": metric, "value": value} for metric, value in rows],
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_jsonable(report), indent=1) + "\n", encoding="utf-8")
        log(f"wrote {json_path}")
    return 0
