"""The shared services of one running app, as one typed object: what every transport's use cases work with."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from anyio.to_thread import run_sync

from app.service.admission import Admission
from app.service.drain import Drain
from app.service.jobs import JobQueue, JobsUnavailable
from app.service.metrics import Metrics
from app.service.resume import ResumableStreams
from app.settings import Settings
from app.speech.decoding.beam import BeamOptions
from app.speech.engine import Engine
from app.speech.memory import MemoryReturn

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """The models are not loaded yet (the lifespan has not run)."""


def stream_limit(settings: Settings) -> int:
    """DS_MAX_STREAMS, or fewer when that many streams' worst-case beam searches would not fit in
    DS_DECODER_MEMORY_MB (each is bounded whatever it hears: BeamOptions.stream_memory_bytes)."""
    if settings.decoder == "greedy":
        return settings.max_streams
    per_stream = BeamOptions(beam_width=settings.beam_width).stream_memory_bytes
    fits = settings.decoder_memory_mb * 2**20 // per_stream
    if fits < settings.max_streams:
        log.warning(
            "at most %d streams (not DS_MAX_STREAMS=%d): beam width %d holds up to %.0f MiB a stream, and "
            "DS_DECODER_MEMORY_MB is %d",
            fits,
            settings.max_streams,
            settings.beam_width,
            per_stream / 2**20,
            settings.decoder_memory_mb,
        )
    return max(1, min(settings.max_streams, fits))


@dataclass
class Services:
    """Settings, the loaded engine, admission, drain, metrics and the parked resumable streams of one app."""

    settings: Settings
    admission: Admission
    drain: Drain
    metrics: Metrics
    resumable: ResumableStreams
    loaded_engine: Engine | None = None
    ready: bool = False  # /ready: false until the lifespan's warm-up inference ran
    warm_up_seconds: float | None = field(default=None)
    memory: MemoryReturn = field(default_factory=MemoryReturn)
    job_queue: JobQueue | None = None  # with DS_REDIS_URL

    @property
    def jobs(self) -> JobQueue:
        """The batch job queue; JobsUnavailable (503) naming the setting when there is none."""
        if self.job_queue is None:
            raise JobsUnavailable(
                "batch jobs are off: set DS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to turn them on",
                retry_after=None,
            )
        return self.job_queue

    @classmethod
    def create(cls, settings: Settings, engine: Engine | None = None) -> Services:
        # Imported here: the stream controller builds on these services (its parked states expire into metrics).
        from app.service.streams import expire_parked

        metrics = Metrics()
        admission = Admission(settings.workers, settings.queue_length, stream_limit(settings))
        metrics.watch_admission(admission)
        services = cls(
            settings=settings,
            admission=admission,
            drain=Drain(),
            metrics=metrics,
            resumable=ResumableStreams(
                settings.stream_resume_seconds,
                settings.max_streams,
                expire_parked(metrics),
                replica_id=settings.replica_id,
            ),
            job_queue=JobQueue(settings) if settings.redis_url else None,
        )
        if engine is not None:
            services.use_engine(engine)
        return services

    @property
    def engine(self) -> Engine:
        if self.loaded_engine is None:
            raise NotReady("the models are still loading; retry when /ready answers 200")
        return self.loaded_engine

    def use_engine(self, engine: Engine) -> None:
        self.loaded_engine = engine
        self.metrics.describe_engine(engine, self.settings.compute_units)

    async def return_memory(self, audio_seconds: float) -> None:
        """After a transcription or a stream: give a large one's freed memory back (off the event loop)."""
        if audio_seconds >= self.memory.threshold and await run_sync(self.memory.after, audio_seconds):
            self.metrics.memory_trims.inc()

    def mark_ready(self, warm_up_seconds: float | None = None) -> None:
        self.ready = True
        self.metrics.ready.set(1)
        if warm_up_seconds is not None:
            self.warm_up_seconds = warm_up_seconds
            self.metrics.warm_up_seconds.set(warm_up_seconds)


WARM_UP_SECONDS = 1.0


def warm_up(engine: Engine) -> float:
    """One second of silence through `transcribe` and through a stream; returns the seconds it took.

    The first inference pays for lazy initialisation (Core ML compiles and places the model on its compute
    units, NumPy faults in the weights); a request that arrived before this would pay it instead."""
    started = time.monotonic()
    silence = np.zeros(int(16000 * WARM_UP_SECONDS), np.float32)
    engine.transcribe(silence)
    session = engine.open_stream()
    session.feed(silence)
    session.finish()
    return time.monotonic() - started
