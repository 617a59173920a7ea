"""Prometheus metrics: one CollectorRegistry per app (tests build many apps in one process; the global registry
would reject the second app's metrics as duplicates), and the observations every transport makes through them.

Labels are route templates, never raw paths. The web layer (app/web/instrumentation.py) counts requests and
writes the access log; `request_audio` is how an observation here reaches that request's access-log line.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from app.service.admission import Admission
    from app.speech.engine import Engine
    from app.speech.session import StreamSession
    from app.speech.utterances import Utterance

# Real-time factor = processing seconds / audio seconds: < 1 is faster than real time. Streams sit near the
# model's cost per second of audio; whole files on Core ML go well below 0.05.
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
UTTERANCE_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# Per request: the audio seconds observed while handling it, for the access-log line (set by the web layer's
# middleware, filled by `Metrics.observe`; a mutable holder so the writes are seen whatever context they run in).
request_audio: ContextVar[list[float] | None] = ContextVar("request_audio", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ds_http_requests",
            "Requests by method, route template and status (websockets: 101 or 403)",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "ds_http_request_duration_seconds",
            "Request duration (websockets: the whole session)",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "ds_http_requests_in_progress",
            "Requests being handled now, by route (the queue in front of the model)",
            ["route"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "ds_audio_seconds", "Seconds of audio transcribed, by route", ["route"], registry=r
        )
        self.processing_seconds = Counter(
            "ds_processing_seconds", "Seconds spent in the model and decoder, by route", ["route"], registry=r
        )
        self.rtf = Histogram(
            "ds_real_time_factor",
            "Processing seconds / audio seconds per transcription or stream",
            ["route"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.stream_errors = Counter(
            "ds_stream_errors",
            "Streams ended by an error, by route and code (inference_failed, internal_error, client_too_slow)",
            ["route", "code"],
            registry=r,
        )
        self.utterance_seconds = Histogram(
            "ds_utterance_seconds",
            "Utterances the endpointer found (streams and files), by route: first word's start to last word's end",
            ["route"],
            buckets=UTTERANCE_BUCKETS,
            registry=r,
        )
        self.jobs = Gauge(
            "ds_jobs",
            "Batch jobs in the queue now, by state (queued, running), read from Redis",
            ["state"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "ds_jobs_finished",
            "Batch jobs this process's workers ended, by status (done, failed)",
            ["status"],
            registry=r,
        )
        self.job_wait_seconds = Histogram(
            "ds_job_queue_wait_seconds",
            "Time from a job's submission to a worker starting it",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_run_seconds = Histogram(
            "ds_job_run_seconds", "Time a worker spent on a job", buckets=JOB_BUCKETS, registry=r
        )
        self.decoder_limited_streams = Counter(
            "ds_decoder_limited_streams",
            "Streams whose beam search ran under pressure (its beam full: noise to the model) and so kept less "
            "history, by route",
            ["route"],
            registry=r,
        )
        self.active_streams = Gauge(
            "ds_active_streams", "Open websocket streams, by route", ["route"], registry=r
        )
        self.model_load_seconds = Gauge(
            "ds_model_load_seconds",
            "Seconds the model directory, acoustic model and decoder took to load",
            registry=r,
        )
        self.warm_up_seconds = Gauge(
            "ds_warm_up_seconds", "Seconds the startup warm-up inference took", registry=r
        )
        self.ready = Gauge("ds_ready", "1 once models are loaded and warmed up, else 0", registry=r)
        self.queue_depth = Gauge(
            "ds_queue_depth",
            "Transcriptions waiting for a worker, uploads still arriving included (503 once DS_QUEUE_LENGTH wait)",
            registry=r,
        )
        self.workers_busy = Gauge(
            "ds_workers_busy", "Transcriptions running now (at most DS_WORKERS)", registry=r
        )
        self.model = Info("ds_model", "The loaded model, backend, compute units and decoder", registry=r)
        # process_resident_memory_bytes, process_open_fds and the CPU seconds (read from /proc: Linux only).
        ProcessCollector(registry=r)
        self.memory_trims = Counter(
            "ds_memory_trims",
            "Times freed memory was returned to the system after a large transcription",
            registry=r,
        )

    def describe_engine(self, engine: Engine, compute_units: str) -> None:
        """Fill the Info metric and the load time from a loaded Engine."""
        self.model.info(
            {
                "model": str(engine.model_dir.name),
                "backend": str(engine.model.backend),
                "compute_units": compute_units if engine.model.backend == "coreml" else "cpu",
                "decoder": str(engine.decoder.description),
            }
        )
        if engine.load_seconds is not None:
            self.model_load_seconds.set(engine.load_seconds)

    def watch_admission(self, admission: Admission) -> None:
        """Queue depth and busy workers are read from the Admission when /metrics is scraped."""
        self.queue_depth.set_function(lambda: admission.queued)
        self.workers_busy.set_function(lambda: admission.busy)

    def observe(self, route: str, audio_seconds: float, processing_seconds: float | None) -> None:
        """A finished transcription (a file, or one stream's audio): audio seconds, processing seconds, RTF."""
        holder = request_audio.get()
        if holder is not None:
            holder.append(audio_seconds)
        if audio_seconds <= 0:
            return
        self.audio_seconds.labels(route).inc(audio_seconds)
        if processing_seconds is not None:
            self.processing_seconds.labels(route).inc(processing_seconds)
            self.rtf.labels(route).observe(processing_seconds / audio_seconds)

    def observe_stream(self, route: str, session: StreamSession) -> None:
        """A stream's audio and compute time, counted once when it ends (or when /vosk's reset replaces it)."""
        if session.audio_seconds > 0:
            self.observe(route, session.audio_seconds, session.processing_seconds)

    def observe_utterances(self, route: str, utterances: Iterable[Utterance]) -> None:
        """Utterances as they are found: their count and lengths."""
        histogram = self.utterance_seconds.labels(route)
        for utterance in utterances:
            histogram.observe(utterance.end - utterance.start)

    def job_started(self, waited_seconds: float) -> None:
        self.job_wait_seconds.observe(max(0.0, waited_seconds))

    def job_finished(self, status: str, run_seconds: float | None) -> None:
        self.jobs_finished.labels(status).inc()
        if run_seconds is not None:
            self.job_run_seconds.observe(run_seconds)

    def stream_opened(self, route: str) -> None:
        self.active_streams.labels(route).inc()

    def stream_closed(self, route: str, session: StreamSession | None = None) -> None:
        """The stream is over (eof, client gone or error): the gauge goes down; its audio is counted once."""
        self.active_streams.labels(route).dec()
        if session is not None:
            self.observe_stream(route, session)

    def decoder_limited(self, route: str) -> None:
        self.decoder_limited_streams.labels(route).inc()

    def stream_failed(self, route: str, code: str) -> None:
        self.stream_errors.labels(route, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
