"""What a worker does with one job: its stored audio through the upload use case, every rendering stored once,
the audio deleted, the client's callback told. Runs in the service process (DS_JOB_WORKERS) and in
`python -m app.worker` alike, as SAQ's task function.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import Any

import httpx
from saq import Worker
from saq.job import Job
from saq.types import PartialTimersDict

from app.service.admission import ServiceBusy
from app.service.jobs import AUDIO_KEY, FUNCTION, INDEX_KEY, RESULT_KEY, JobQueue
from app.service.rendering import render_text, transcription_response
from app.service.services import Services
from app.service.uploads import UploadTranscription, transcribe_upload
from app.speech.audio import AudioError
from app.speech.decoding import DecodeOptionError

log = logging.getLogger(__name__)

ROUTE = "/jobs"
CALLBACK_ATTEMPTS = 5  # at 0, 1, 2, 4 and 8 s: a receiver that restarts within ~15 s still hears of the job
SWEEP_SECONDS = 10
BUSY_RETRY_SECONDS = 1.0
# A worker's wait for the next job, per round: SAQ's default (0) blocks in Redis until a job comes, so a stopping
# worker would hang there until its grace ran out.
DEQUEUE_SECONDS = 1.0  # how often each worker looks for jobs whose worker went silent


def rendered(upload: UploadTranscription, services: Services) -> dict[str, Any]:
    """Every format of `/transcribe`'s answer for the file."""
    response = transcription_response(upload.result, upload.duration, services.engine)
    texts = {fmt: render_text(upload.result, fmt).content for fmt in ("text", "srt", "vtt")}
    return {"json": response.model_dump(mode="json", exclude_none=True), **texts}  # as /transcribe's route


class JobRunner:
    """Runs jobs against one Services (its engine, admission, metrics) and tells callbacks."""

    def __init__(self, services: Services, jobs: JobQueue) -> None:
        self.services = services
        self.jobs = jobs
        self._callbacks: set[asyncio.Task[None]] = set()

    async def run(
        self, job: Job, job_id: str, hot_words: dict[str, float] | None, alternatives: int
    ) -> dict[str, Any]:
        redis = self.jobs.redis
        if await redis.exists(RESULT_KEY.format(job_id)):
            return {"result": "stored"}  # delivered again after its result was written: the first one stands
        audio = await redis.get(AUDIO_KEY.format(job_id))
        if audio is None:
            return await self._failed(
                job, job_id, "audio_gone", "the job's audio is gone (deleted or expired)"
            )
        self.services.metrics.job_started(time.time() - job.queued / 1000)
        started = time.monotonic()
        try:
            upload = await self._transcribe(job, audio, hot_words, alternatives)
        except (AudioError, DecodeOptionError) as exc:  # the input's fault: failing again would not help
            return await self._failed(job, job_id, type(exc).__name__, str(exc))
        body = json.dumps(rendered(upload, self.services))
        if await redis.zscore(INDEX_KEY, job_id) is None:
            return {"result": "deleted"}  # cancelled while it ran: nothing is kept
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(RESULT_KEY.format(job_id), body, nx=True, ex=self.services.settings.job_ttl_seconds)
            pipe.delete(AUDIO_KEY.format(job_id))
            await pipe.execute()
        self.services.metrics.job_finished("done", time.monotonic() - started)
        self._tell(job, "done")
        return {"result": "stored", "audio_seconds": round(upload.duration, 3)}

    async def _transcribe(
        self, job: Job, audio: bytes, hot_words: dict[str, float] | None, alternatives: int
    ) -> UploadTranscription:
        """The upload use case, with a heartbeat (and the progress) written every few seconds while it runs."""
        done = [0.0]
        beat = asyncio.ensure_future(self._heartbeat(job, done))
        try:
            while True:
                try:
                    return await transcribe_upload(
                        self.services, ROUTE, audio, hot_words=hot_words, alternatives=alternatives, progress=done.append
                    )
                except ServiceBusy:  # every worker slot taken and their queue full (uploads): a job waits its turn
                    await asyncio.sleep(BUSY_RETRY_SECONDS)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat

    async def _heartbeat(self, job: Job, done: list[float]) -> None:
        interval = max(1.0, job.heartbeat / 4)
        while True:
            await job.update(progress=done[-1])  # also SAQ's heartbeat (the job's `touched` time)
            await asyncio.sleep(interval)

    async def _failed(self, job: Job, job_id: str, code: str, message: str) -> dict[str, Any]:
        await self.jobs.redis.delete(AUDIO_KEY.format(job_id))
        self.services.metrics.job_finished("failed", None)
        self._tell(job, "failed")
        return {"error": {"code": code, "message": message}}

    def _tell(self, job: Job, status: str) -> None:
        """POST {id, status} to the job's callback_url in the background (never delaying the next job)."""
        url = job.meta.get("callback_url")
        if url:
            task = asyncio.ensure_future(post_callback(url, {"id": job.key, "status": status}))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    def worker(self, concurrency: int, *, in_process: bool) -> Worker:
        """A SAQ worker running this runner's jobs, sweeping for lost ones every SWEEP_SECONDS; `in_process`
        (inside the service) leaves SIGTERM to the service's drain."""

        async def transcribe_job(
            ctx: dict[str, Any], *, job_id: str, hot_words: Any, alternatives: int
        ) -> Any:
            return await self.run(ctx["job"], job_id, hot_words, alternatives)

        return (InProcessWorker if in_process else JobWorker)(
            self.jobs.queue,
            functions=[(FUNCTION, transcribe_job)],
            concurrency=concurrency,
            timers=PartialTimersDict(sweep=SWEEP_SECONDS),  # type: ignore[typeddict-item]  # the rest default
            dequeue_timeout=DEQUEUE_SECONDS,
            shutdown_grace_period_s=int(self.services.settings.shutdown_grace_seconds),
        )


class JobWorker(Worker):
    """SAQ's Worker, stopping promptly: its upkeep loops (sweep, abort, worker info) sleep up to SWEEP_SECONDS
    between rounds and SAQ's stop would wait them out; they are cancelled first, while jobs get the grace."""

    async def stop(self) -> None:
        for task in list(self.tasks):
            if task.get_name() != "process":
                task.cancel()
        await super().stop()


class InProcessWorker(JobWorker):
    """A worker inside the service: SAQ's Worker takes SIGINT/SIGTERM for itself, which would replace the
    service's drain (app/__main__.py); here the lifespan stops it instead."""

    SIGNALS: list[signal.Signals] = []


async def post_callback(url: str, body: dict[str, str]) -> None:
    """The callback, retried with backoff; a receiver that never answers 2xx is logged, not retried forever."""
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        for attempt in range(CALLBACK_ATTEMPTS):
            if attempt:
                await asyncio.sleep(2 ** (attempt - 1))
            try:
                response = await client.post(url, json=body)
                if response.is_success:
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
        log.warning(
            "job %s: its callback %s failed %d times (%s); giving up",
            body["id"],
            url,
            CALLBACK_ATTEMPTS,
            reason,
        )


class JobWorkers:
    """The service process's own job workers (DS_JOB_WORKERS) and the queue gauges of its /metrics."""

    GAUGE_SECONDS = 5.0

    def __init__(self, services: Services) -> None:
        self.services = services
        self.runner = JobRunner(services, services.jobs)
        count = services.settings.job_workers
        self.worker = self.runner.worker(count, in_process=True) if count else None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.worker is not None:
            self._tasks.append(asyncio.ensure_future(self.worker.start()))
        self._tasks.append(asyncio.ensure_future(self._gauges()))

    async def _gauges(self) -> None:
        queue, gauge = self.runner.jobs.queue, self.services.metrics.jobs
        while True:
            with contextlib.suppress(Exception):  # Redis away: the gauges keep their last values
                gauge.labels("queued").set(await queue.count("queued"))
                gauge.labels("running").set(await queue.count("active"))
            await asyncio.sleep(self.GAUGE_SECONDS)

    async def stop(self) -> None:
        """Jobs running here finish within DS_SHUTDOWN_GRACE_SECONDS, or go back to the queue for another worker."""
        if self.worker is not None:
            await self.worker.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runner.jobs.close()
