"""Batch transcription jobs: a file submitted now, transcribed by a worker on any machine, fetched later.

The queue is SAQ on Redis (the README says why SAQ). What lives where in Redis:
- SAQ's job record (key = the job id): status, progress, times, attempts, the error; kept `DS_JOB_TTL_SECONDS`
  after the job ends;
- `ds:jobs:audio:<id>`: the uploaded bytes, from submission until the job ends (the one place audio is stored);
- `ds:jobs:result:<id>`: every rendering of the result (json, text, srt, vtt), written once (SET NX: a job
  delivered twice keeps the first result), expiring after `DS_JOB_TTL_SECONDS`;
- `ds:jobs:index`: job ids by submission time, for `GET /jobs`; a job exists while its id is in it, so a deleted
  job is gone at once even if a worker still finishes it.
Nothing accepted is lost: a job's heartbeat stops when its worker dies, and any worker's sweep re-queues it
(SAQ's retry), so another worker (or the restarted one) runs it again from its stored audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq import Queue
from saq.job import Job, Status
from saq.queue.redis import RedisQueue

from app.settings import Settings

log = logging.getLogger(__name__)

FUNCTION = "transcribe_job"
QUEUE_NAME = "deepspeech"
AUDIO_KEY = "ds:jobs:audio:{}"
RESULT_KEY = "ds:jobs:result:{}"
INDEX_KEY = "ds:jobs:index"
FORMATS = ("json", "text", "srt", "vtt")
REDIS_RETRY_SECONDS = 1.0
RETRIES = 3  # deliveries of one job: its first and two after lost workers
SWEPT = "the worker running this job stopped answering (killed or cut off); the job was re-queued"

STATUS_NAMES = {
    Status.NEW: "queued",
    Status.QUEUED: "queued",
    Status.ACTIVE: "running",
    Status.COMPLETE: "done",
    Status.FAILED: "failed",
    # DELETE makes a job a 404 at once, so ABORTING is only ever SAQ's sweep taking a lost job back to re-queue it.
    Status.ABORTING: "queued",
    Status.ABORTED: "cancelled",
}


class PatientQueue(RedisQueue):
    """SAQ's Redis queue, waiting a second when Redis is unreachable: SAQ's worker swallows a failed dequeue and
    starts the next at once, and a refused connection fails at once, so an idle worker spun a core while Redis
    was down (measured: 1.7 s of CPU in 3 s)."""

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        try:
            return await super().dequeue(timeout, poll_interval)
        except RedisError as exc:
            log.warning("jobs: Redis cannot be reached (%s); trying again in %g s", exc, REDIS_RETRY_SECONDS)
            await asyncio.sleep(REDIS_RETRY_SECONDS)
            return None


class JobsUnavailable(RuntimeError):
    """Jobs are off (no DS_REDIS_URL) or Redis cannot be reached: 503 (with Retry-After when it may come back)."""

    def __init__(self, message: str, retry_after: int | None = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobQueueFull(RuntimeError):
    """DS_JOB_MAX_QUEUED jobs are waiting: 503 + Retry-After."""

    retry_after = 30


class JobNotFound(LookupError):
    """No such job (never submitted, deleted, or expired): 404."""


class JobNotDone(RuntimeError):
    """The job has no result yet (or failed, or was cancelled): 409 with its status."""


class CallbackRefused(ValueError):
    """A callback_url that is not http(s) to a host in DS_JOB_CALLBACK_HOSTS: 422 (no server-side request forgery)."""


def check_callback_url(url: str, allowed_hosts: list[str]) -> None:
    """Raise CallbackRefused unless `url` is http(s) to one of `allowed_hosts` (the service never posts to a
    host its operator did not list: a client cannot make it reach the internal network)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackRefused(f"callback_url must be an http(s) URL, not {url!r}")
    if host not in allowed_hosts:
        allowed = ", ".join(allowed_hosts) or "none are"
        raise CallbackRefused(
            f"callback_url's host {host!r} is not in DS_JOB_CALLBACK_HOSTS ({allowed}); ask the operator to list it"
        )


@dataclass(frozen=True)
class JobRequest:
    """What a submission asks for, besides its audio."""

    hot_words: dict[str, float] | None = None
    alternatives: int = 1
    callback_url: str | None = None
    filename: str = ""
    audio_seconds: float | None = None  # from the container's header, when it says


def _iso(millis: int) -> str | None:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds") if millis else None


def job_view(job: Job) -> dict[str, Any]:
    """A job as `GET /jobs/{id}` answers it."""
    status = STATUS_NAMES[job.status]
    view: dict[str, Any] = {
        "id": job.key,
        "status": status,
        "progress": round(job.progress, 4),
        "audio_seconds": job.meta.get("audio_seconds"),
        "filename": job.meta.get("filename", ""),
        "created": _iso(job.queued),
        "started": _iso(job.started) if status != "queued" else None,
        "finished": _iso(job.completed),
        "attempts": job.attempts,
    }
    error = job_error(job)
    if error is not None:
        view["status"], view["error"] = "failed", error
    return view


def job_error(job: Job) -> dict[str, str] | None:
    """`{code, message}` when the job failed: the input's fault (a result saying so: never retried), a worker
    lost on every delivery, or a crash (retried, then failed; the traceback stays in the worker's log)."""
    if job.status == Status.COMPLETE and isinstance(job.result, dict) and "error" in job.result:
        return dict(job.result["error"])
    if job.status == Status.ABORTED and job.error == SWEPT:
        return {"code": "worker_lost", "message": f"{SWEPT}, {job.attempts} times; giving up"}
    if job.status == Status.FAILED:
        return {"code": "internal_error", "message": "the transcription failed; the worker's log says why"}
    return None


class JobQueue:
    """The jobs API's use cases on one SAQ queue (the service process and `python -m app.worker` share it)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self.settings = settings
        # Short timeouts: with Redis gone, /jobs answers 503 in seconds while everything else keeps working.
        self.redis: Redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        self.queue: Queue = PatientQueue(self.redis, name=QUEUE_NAME, swept_error_message=SWEPT)

    async def close(self) -> None:
        await self.queue.disconnect()

    def _unavailable(self, exc: RedisError) -> JobsUnavailable:
        return JobsUnavailable(f"the job queue's Redis ({self.settings.redis_url}) cannot be reached: {exc}")

    async def submit(self, audio: bytes, request: JobRequest) -> dict[str, Any]:
        """Store the audio and queue the job; its view (status `queued`)."""
        job_id = uuid.uuid4().hex
        ttl = self.settings.job_ttl_seconds
        try:
            await self.queue.connect()
            if await self.queue.count("queued") >= self.settings.job_max_queued:
                raise JobQueueFull(
                    f"{self.settings.job_max_queued} jobs are already waiting (DS_JOB_MAX_QUEUED); retry later"
                )
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(AUDIO_KEY.format(job_id), audio, ex=ttl)
                pipe.zadd(INDEX_KEY, {job_id: time.time()})
                await pipe.execute()
            job = await self.queue.enqueue(
                Job(
                    function=FUNCTION,
                    key=job_id,
                    kwargs={
                        "job_id": job_id,
                        "hot_words": request.hot_words,
                        "alternatives": request.alternatives,
                    },
                    timeout=0,  # a long recording runs as long as it needs: its heartbeat says it is alive
                    heartbeat=self.settings.job_heartbeat_seconds,
                    retries=RETRIES,
                    ttl=ttl,
                    meta={
                        "filename": request.filename,
                        "audio_seconds": request.audio_seconds,
                        "callback_url": request.callback_url,
                    },
                )
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        assert job is not None  # a fresh uuid is never a duplicate key
        return job_view(job)

    async def job(self, job_id: str) -> Job:
        """The job (JobNotFound when it was never submitted, was deleted, or expired)."""
        try:
            listed = await self.redis.zscore(INDEX_KEY, job_id) is not None
            job = await self.queue.job(job_id) if listed else None
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if job is None:
            raise JobNotFound(f"no job {job_id!r} (never submitted, deleted, or expired)")
        return job

    async def view(self, job_id: str) -> dict[str, Any]:
        return job_view(await self.job(job_id))

    async def result(self, job_id: str) -> dict[str, Any]:
        """Every rendering of a done job's result: {"json": {...}, "text": str, "srt": str, "vtt": str}."""
        job = await self.job(job_id)
        try:
            stored = await self.redis.get(RESULT_KEY.format(job_id))
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if stored is None:
            status = job_view(job)["status"]
            raise JobNotDone(f"job {job_id} is {status}: its result is there once it is done")
        return dict(json.loads(stored))

    async def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job and delete it, its audio and its result (then it is a 404)."""
        job = await self.job(job_id)
        try:
            if job.status not in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
                await self.queue.abort(job, "cancelled: DELETE /jobs/" + job_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(INDEX_KEY, job_id)
                pipe.delete(AUDIO_KEY.format(job_id), RESULT_KEY.format(job_id))
                await pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def list(self, offset: int, limit: int) -> dict[str, Any]:
        """A page of jobs, newest first; ids whose record expired are dropped from the index on the way."""
        try:
            ids = [i.decode() for i in await self.redis.zrevrange(INDEX_KEY, offset, offset + limit - 1)]
            jobs = await self.queue.jobs(ids)
            gone = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
            if gone:
                await self.redis.zrem(INDEX_KEY, *gone)
            total = await self.redis.zcard(INDEX_KEY)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return {
            "jobs": [job_view(job) for job in jobs if job is not None],
            "offset": offset,
            "limit": limit,
            "total": total,
        }
