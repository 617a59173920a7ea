"""All settings, read once from `DS_*` environment variables (and an optional `.env`), passed down from here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.speech.runtime.coreml_backend import WINDOW_STEPS
from app.speech.runtime.cores import default_decoder_memory_mb, default_decoder_processes, default_threads


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DS_", env_file=".env", extra="ignore")

    host: str = Field(
        "127.0.0.1", description="address `python -m app` listens on (0.0.0.0: every interface)"
    )
    port: int = Field(8000, ge=1, le=65535)
    model_dir: Path = Field(
        Path("models/default"), description="model directory written by scripts/convert.py"
    )
    backend: Literal["auto", "numpy", "coreml"] = "auto"
    compute_units: Literal["ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE"] = "ALL"
    coreml_cache_dir: Path | None = Field(
        None,
        description="where the Core ML packages are compiled once and kept between starts, by sha256 "
        "(default: ~/Library/Caches/deepspeech-coreml)",
    )
    coreml_window_steps: int = Field(
        WINDOW_STEPS,
        ge=1,
        description="whole-file window of one Core ML prediction, in 20 ms steps (200: 4 s of audio); a "
        "prediction holds the GIL, so every stream waits for it: keep it well under the stream latency you need",
    )
    decoder_processes: int = Field(
        default_factory=default_decoder_processes,
        ge=0,
        le=64,
        description="beam-search decoder processes (spawned; each loads the scorer): every core decodes "
        "(default: the cores less one, at least 1; 0: decode in the service process)",
    )
    decoder_memory_mb: int = Field(
        default_factory=default_decoder_memory_mb,
        ge=64,
        description="memory the streams' beam searches may hold together, in MiB (default: half the RAM); streams "
        "are admitted while their worst case fits (app/speech/decoding/beam.py bounds each: width x buffered "
        "frames), so noise cannot exhaust the machine",
    )
    numpy_threads: int = Field(
        default_factory=default_threads,
        ge=1,
        le=64,
        description="cores one NumPy forward pass of a wide model spreads over while it runs alone "
        "(default: the CPUs available, at most 4; 1: off)",
    )
    decoder: Literal["beam", "greedy"] = "beam"
    beam_width: int = Field(500, ge=1, le=4096, description="DeepSpeech's export default")
    scorer: Path | None = Field(
        None, description="KenLM .scorer; default: the model directory's kenlm.scorer"
    )
    use_scorer: bool = True
    lm_alpha: float | None = Field(None, description="override the scorer's alpha")
    lm_beta: float | None = Field(None, description="override the scorer's beta")
    language: str = Field(
        "en", description="ISO-639-1 code of the model's language; /v1/audio/transcriptions rejects others"
    )
    workers: int = Field(2, ge=1, le=64, description="whole-file transcriptions running at once")
    queue_length: int = Field(
        8, ge=0, le=1024, description="requests that may wait for a worker (503 beyond)"
    )
    max_streams: int = Field(64, ge=1, le=4096, description="websocket streams open at once (refused beyond)")
    stream_idle_timeout: float = Field(
        30.0, gt=0, description="seconds a stream may stay silent before it is closed"
    )
    stream_max_seconds: float = Field(
        3600.0,
        gt=0,
        description="longest stream, in audio seconds and in wall-clock seconds: then it gets its final and closes",
    )
    stream_send_timeout: float = Field(
        10.0, gt=0, description="seconds a stream's client may leave a message unread before it is dropped"
    )
    stream_resume_seconds: float = Field(
        30.0,
        ge=0,
        description="how long a resumable stream's state waits for the client to reconnect (0: never)",
    )
    stream_coalesce_ms: float = Field(
        100.0,
        ge=0,
        le=1000,
        description="PCM frames of a stream are gathered until this much audio (or this long) before they go "
        "through the model together: tiny frames cost what 100 ms ones do (0: each frame on its own)",
    )
    stream_backlog_seconds: float = Field(
        60.0,
        gt=0,
        description="audio (seconds of 16 kHz 16-bit PCM: 1.9 MB at 60) a stream's client may send ahead of the "
        "server; it is read off the connection at once, so pings are answered and a close is seen whatever "
        "the backlog; beyond it the connection is not read until the server catches up",
    )
    endpoint_silence_ms: int = Field(
        700,
        ge=0,
        le=10_000,
        description="a pause this long after speech ends an utterance (streams send it, files are segmented at "
        "it; per stream `endpoint_silence_ms`; 0: only eof and the maximum length end one)",
    )
    max_utterance_seconds: float = Field(
        20.0,
        ge=0,
        description="an utterance ends at the next word boundary once it is this long, pause or not (0: no limit)",
    )
    stream_batching: bool = Field(
        True, description="run the LSTM steps of concurrent streams as one batch (NumPy backend)"
    )
    stream_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=50,
        description="how long a batch waits for other open streams' chunks (longer for batches that take long to run)",
    )
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="on SIGTERM: time for requests in flight to finish before the process exits"
    )
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="upload cap in bytes (413 above it)")
    max_audio_seconds: float = Field(
        4 * 3600.0, gt=0, description="decoded duration cap (413 above it), checked while decoding"
    )
    verify_model_hashes: bool = True
    redis_url: str | None = Field(
        None, description="Redis for batch jobs (/jobs), e.g. redis://127.0.0.1:6379/0; unset: /jobs answers 503"
    )
    job_workers: int = Field(
        1, ge=0, le=64, description="jobs run at once inside this process (0: only `python -m app.worker` runs them)"
    )
    job_max_queued: int = Field(1000, ge=1, description="jobs waiting at once; beyond it POST /jobs answers 503")
    job_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="how long a job's record and result are kept after it ends"
    )
    job_heartbeat_seconds: int = Field(
        20, ge=2, le=600, description="a running job whose worker is silent this long is re-queued (a lost worker)"
    )
    job_callback_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts a job's callback_url may name, comma-separated (none: callbacks are refused)",
    )
    wyoming_uri: str | None = Field(
        None,
        description="also serve Home Assistant's Wyoming protocol here, e.g. tcp://127.0.0.1:10300 (unset: off); "
        "Wyoming has no authentication, so tcp://0.0.0.0 lets anyone on the network transcribe",
    )
    wyoming_zeroconf: str | None = Field(
        None, description="advertise the Wyoming listener over mDNS as this name (needs the zeroconf extra)"
    )
    wyoming_hot_words: str | None = Field(
        None, description="hot words for every Wyoming transcription, 'word:boost,...' (Wyoming cannot send them)"
    )
    api_key: SecretStr | None = Field(
        None,
        description="API key: `Authorization: Bearer <key>` (websockets also `?api_key=`); unset or empty = open",
    )
    metrics_public: bool = Field(
        False,
        description="serve /metrics without the API key (it shows usage: request counts, audio seconds)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins allowed to call the API, comma-separated (`*` for any); unset: CORS off",
    )
    replica_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="this process's name among replicas behind a load balancer (e.g. r1, the name of its `server` "
        "line in deploy/haproxy/haproxy.cfg): resumable stream ids start with it, their `resume_url` names it, and "
        "every HTTP response carries `X-Replica`; unset: one process, nothing added",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text or one JSON object each"
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="seconds a client has for a request's line and headers, from connecting (or from the first "
        "byte of a later request on a kept-alive connection); then it is closed, with a 408 if it sent part of them",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="seconds a request body may go without a byte arriving (408 then)"
    )
    min_upload_bytes_per_second: int = Field(
        16384,
        ge=0,
        description="slowest average body rate, after a slack of DS_BODY_TIMEOUT_SECONDS (408 below it; 0: none)",
    )
    max_header_bytes: int = Field(
        65536,
        ge=1024,
        description="request line and headers, in bytes (431 above it, before they are all read)",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="connections (HTTP and websocket) open at once; at the cap the longest-idle one is closed for "
        "a new one, or the new one gets 503 if none is idle. Default: the soft open-file limit less a reserve "
        "for the service's own files (64 descriptors, or an eighth of the limit where that is more)",
    )
    max_buffered_upload_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="upload bytes held in memory at once, over all requests (503 + Retry-After beyond it, before "
        "a body is read); an upload alone is always taken",
    )

    @field_validator("job_callback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("wyoming_uri")
    @classmethod
    def _wyoming_address(cls, value: str | None) -> str | None:
        if value:
            from app.wyoming.address import WyomingAddress

            WyomingAddress.parse(value)
        return value or None

    @field_validator("wyoming_hot_words")
    @classmethod
    def _wyoming_hot_words(cls, value: str | None) -> str | None:
        if value:
            from app.speech.decoding import parse_hot_words

            parse_hot_words([value])
        return value or None

    @field_validator("replica_id", mode="before")
    @classmethod
    def _no_empty_replica(cls, value: object) -> object:
        return value or None  # DS_REPLICA_ID= (empty) is unset

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
