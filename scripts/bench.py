#!/usr/bin/env python3
"""Benchmark the service side by side with its references, in one process run: a table on stdout, JSON on disk.

Every headline figure is a ratio of two things measured in the same run (the machines are shared and noisy),
with the absolute numbers next to it for context. Sections (`--sections`):

  1 whole file   real-time factor of /transcribe's stages (decode audio, features, network, decoder) and end to
                 end through HTTP (a real uvicorn on a loopback port, POST /transcribe with httpx)
  2 streaming    our StreamSession fed 320 ms pieces: compute per audio second, per-chunk latency p50/p95;
                 against the coremltools guide's loop (the seed: static model per chunk, then the beam decoder
                 re-run over ALL probabilities so far), same model and decoder; the seed is quadratic, so at
                 10 min it is measured at shorter lengths, fitted (a*t^2 + b*t) and extrapolated
  3 native       the official DeepSpeech 0.9.3 native client (throwaway Python 3.9 venv) running the frozen
                 static graph of the same model: whole file and stream, same audio, beam width and scorer
  4 concurrency  N = 1, 4, 16, 64 websocket streams on a real uvicorn, fed as fast as the server accepts them
                 (throughput, not real-time pacing); 16 streams with DS_STREAM_BATCHING=true and =false
  5 limit        this machine's sgemm and memory bandwidth, and the fraction of that limit each stage reaches

Models (`--models`): `default` (models/default) and `2048` (random weights at DeepSpeech's real width, made
by scripts/make_random_model.py into .cache/bench/random-2048 once and reused; about 2.5 min and several GB
of RAM the first time), or a model directory path. Audio: espeak-ng sentences concatenated into one track,
cut into 10 s, 60 s and 10 min clips, cached under .cache/bench/.

    python scripts/bench.py --json bench.json     # everything: about 40 min on 2 cores
    python scripts/bench.py --quick               # < 10 min on 2 cores: no native client, no concurrency,
                                                  # shorter audio; estimates are flagged in the JSON
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The service's package before NumPy: it sets its BLAS thread defaults before OpenBLAS loads, and the in-process
# measurements must run NumPy as the server does.
import app  # noqa: E402, F401, I001
import numpy as np  # noqa: E402

BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

CACHE = ROOT / ".cache" / "bench"
SAMPLE_RATE = 16000
PIECE_SAMPLES = 5120  # 320 ms: what a streaming client sends at a time (16 hops, so about one chunk a piece)
STATIC_STEPS = 16
STEP_SECONDS = 0.02
# DeepSpeech's export metadata (the native client reads it from the graph): both sides search with it.
BEAM_WIDTH = 500
LONG_SECONDS = 600.0  # "10 min": where the seed loop is compared with our stream
BATCHED_STREAMS = 16
PAIRED_MAX_SECONDS = 60.0  # section 2 re-measures the whole file next to the stream up to this length
SYNC_MESSAGE = json.dumps({"type": "bench_sync"})  # unknown type: the server answers an error, in order

# Headline keys of the JSON; each is one ratio measured in one run.
HEADLINES = (
    "whole_file_network_rtf_2048",
    "seed_loop_over_stream_10min",
    "native_client_over_ours",
    "batched_over_unbatched_16_streams",
)
HEADLINE_MODEL = "2048"  # headlines are taken from this model when it ran, else from the widest one that did

# The targets the table checks (value, comparison).
TARGET_NETWORK_RTF = 0.08
TARGET_STREAM_OVER_WHOLE = 1.2
TARGET_SEED_RATIO = 50.0
TARGET_NATIVE_RATIO = 4.0
TARGET_BATCHED_RATIO = 2.5
TARGET_SGEMM_FRACTION = 0.5

# Spoken by espeak-ng (en-us, 160 wpm) one after another, 250 ms apart, cycled until the track is long enough.
SENTENCES = (
    "turn on the kitchen lights and play some music",
    "the quick brown fox jumps over the lazy dog",
    "please set a timer for ten minutes",
    "what is the weather going to be like tomorrow morning",
    "call my sister and tell her that i will be late for dinner",
    "the meeting has been moved to thursday afternoon at three",
    "remind me to buy milk eggs and bread on the way home",
    "open the garage door and switch off the porch light",
    "a journey of a thousand miles begins with a single step",
    "the train to the airport leaves every twenty minutes",
    "she read the letter twice before she put it back in the drawer",
    "add apples oranges and a bag of rice to the shopping list",
    "the children played in the garden until the sun went down",
    "how many people live in the largest city of the country",
    "the old man walked slowly along the river with his dog",
    "send a message to the team saying the report is ready",
    "it was the best of times it was the worst of times",
    "turn the volume down and pause the music for a moment",
    "we need to finish the project before the end of the month",
    "the library closes at eight o'clock on weekdays",
    "my favourite colour is green and my favourite food is soup",
    "there are seven days in a week and twelve months in a year",
    "the doctor told him to drink more water and sleep longer",
    "please lock the front door and close all the windows",
    "the price of the new phone is higher than last year",
    "a cold wind blew across the empty field all night",
    "the student asked the teacher a difficult question",
    "book a table for four people at seven thirty tonight",
    "the car would not start because the battery was flat",
    "every morning she drinks a cup of coffee and reads the news",
)
VOICE = "en-us"
WORDS_PER_MINUTE = 160
GAP_SECONDS = 0.25


# ---------------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """How much to measure: the full bench, --quick (< 10 min on 2 cores), or the hidden --tiny (tests)."""

    name: str
    clips: tuple[float, ...]  # clip lengths (s); each is a prefix of one speech track
    http: tuple[float, ...]  # clips also sent through HTTP
    seed_fit: tuple[float, ...]  # seed-loop lengths for the quadratic fit, width < 1024
    seed_fit_wide: tuple[float, ...]  # the same at width >= 1024 (more work per frame)
    native: tuple[float, ...]  # clips for the native client, width < 1024
    native_wide: tuple[float, ...]  # the same at width >= 1024
    concurrency: tuple[int, ...]
    concurrency_seconds: float  # audio per stream, width < 1024
    concurrency_seconds_wide: float  # the same at width >= 1024
    sgemm_shape: tuple[int, int, int]
    copy_mb: int
    runs_sections: frozenset[int]  # sections the profile can measure

    @property
    def short(self) -> float:
        return self.clips[0]

    @property
    def longest(self) -> float:
        return self.clips[-1]


FULL = Profile(
    "full",
    clips=(10.0, 60.0, 600.0),
    http=(10.0, 60.0),
    seed_fit=(10.0, 20.0, 40.0, 60.0),
    seed_fit_wide=(2.5, 5.0, 10.0, 20.0),
    native=(10.0, 60.0),
    native_wide=(10.0, 60.0),
    concurrency=(1, 4, 16, 64),
    concurrency_seconds=10.0,
    concurrency_seconds_wide=5.0,
    sgemm_shape=(2048, 2048, 8192),
    copy_mb=256,
    runs_sections=frozenset({1, 2, 3, 4, 5}),
)
QUICK = Profile(
    "quick",
    clips=(10.0, 60.0),
    http=(10.0,),
    seed_fit=(5.0, 10.0, 20.0, 30.0),
    seed_fit_wide=(2.5, 5.0, 10.0, 15.0),
    native=(),
    native_wide=(),
    concurrency=(),
    concurrency_seconds=0.0,
    concurrency_seconds_wide=0.0,
    sgemm_shape=(2048, 2048, 8192),
    copy_mb=256,
    runs_sections=frozenset({1, 2, 5}),
)
TINY = Profile(
    "tiny",
    clips=(3.0,),
    http=(3.0,),
    seed_fit=(1.0, 1.5, 2.0, 3.0),
    seed_fit_wide=(1.0, 1.5, 2.0, 3.0),
    native=(3.0,),
    native_wide=(3.0,),
    concurrency=(1, BATCHED_STREAMS),
    concurrency_seconds=1.0,
    concurrency_seconds_wide=1.0,
    sgemm_shape=(1024, 1024, 2048),
    copy_mb=64,
    runs_sections=frozenset({1, 2, 3, 4, 5}),
)


def clip_label(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """Something the bench needs failed (a server that does not start, a protocol surprise)."""


# ---------------------------------------------------------------------------------------------------- audio


def _speak(text: str) -> np.ndarray:
    """espeak-ng → 16 kHz mono float32 (soxr), as a client's WAV decodes."""
    import soundfile
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return np.clip(soxr.resample(samples, rate, SAMPLE_RATE), -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    tmp.replace(path)


def read_wav(path: Path) -> np.ndarray:
    """s16 mono 16 kHz WAV → int16 samples."""
    with wave.open(str(path), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def track_tag() -> str:
    """Names the cached audio after what it is made of, so that editing the sentences makes new files."""
    return _digest(*SENTENCES, VOICE, WORDS_PER_MINUTE, GAP_SECONDS)


def speech_track(seconds: float, cache: Path = CACHE) -> np.ndarray:
    """int16 speech of exactly `seconds`: the sentences in order (cycled), cut at the end.

    Deterministic, so a shorter track is a prefix of a longer one and every clip is a prefix of the track.
    Each sentence is synthesized once and cached; so is the track.
    """
    track_path = cache / f"speech-{track_tag()}-{seconds:g}s.wav"
    if track_path.exists():
        return read_wav(track_path)
    import shutil

    if shutil.which("espeak-ng") is None:
        raise BenchError("espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
    sentence_dir = cache / "sentences"
    sentence_dir.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.int16)
    need = int(round(seconds * SAMPLE_RATE))
    parts: list[np.ndarray] = []
    total = 0
    k = 0
    while total < need:
        index = k % len(SENTENCES)
        path = sentence_dir / f"{_digest(SENTENCES[index], VOICE, WORDS_PER_MINUTE)}.wav"
        if not path.exists():
            write_wav(path, _speak(SENTENCES[index]))
        for part in (read_wav(path), gap):
            parts.append(part)
            total += len(part)
        k += 1
    track = np.concatenate(parts)[:need]
    write_wav(track_path, track.astype(np.float32) / 32768.0)
    return track


@dataclass
class Clip:
    seconds: float
    path: Path  # s16 mono 16 kHz WAV
    pcm: np.ndarray  # int16

    @property
    def samples(self) -> np.ndarray:
        """float32 as the service's decoders produce it (int16 / 32768)."""
        return self.pcm.astype(np.float32) * np.float32(1.0 / 32768.0)

    @property
    def label(self) -> str:
        return clip_label(self.seconds)


def prepare_clips(lengths: Sequence[float], cache: Path = CACHE) -> dict[float, Clip]:
    """The clips, each a prefix of one track of the longest length, written as WAVs (HTTP and native need files)."""
    cache.mkdir(parents=True, exist_ok=True)
    track = speech_track(max(lengths), cache)
    clips = {}
    for seconds in sorted(set(lengths)):
        path = cache / f"speech-{track_tag()}-{seconds:g}s.wav"
        pcm = track[: int(round(seconds * SAMPLE_RATE))]
        if not path.exists():
            write_wav(path, pcm.astype(np.float32) / 32768.0)
        clips[seconds] = Clip(seconds, path, pcm)
    return clips


# ---------------------------------------------------------------------------------------------------- models


def ensure_model(name: str) -> Path:
    """`default`, `2048` (random weights at width 2048, generated once into .cache/bench/random-2048) or a path."""
    if name == "default":
        path = ROOT / "models" / "default"
    elif name.isdigit():
        path = CACHE / f"random-{name}"
        if not (path / "manifest.json").exists():
            log(f"making a random-weight width-{name} model in {path} (convert.py; once, then cached)")
            started = time.monotonic()
            made = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "make_random_model.py"), "--width", name]
                + ["--out", str(path), "--force"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            if made.returncode != 0:
                raise BenchError(
                    f"making the width-{name} model failed (it needs the convert extra: pip install -e "
                    f"'.[convert]'):\n{made.stderr[-2000:]}"
                )
            log(f"made {path} in {time.monotonic() - started:.0f} s")
    else:
        path = Path(name)
    if not (path / "manifest.json").exists():
        raise BenchError(f"{path} is not a model directory (no manifest.json)")
    return path.resolve()


def _foreign_settings() -> list[str]:
    """DS_* variables of the caller's environment, which the bench ignores: its settings are its own."""
    return sorted(
        k for k in os.environ if k.startswith("DS_") and k not in ("DS_NATIVE_VENV", "DS_NATIVE_PYTHON")
    )


def engine_settings(model_dir: Path) -> Any:
    """Settings for an in-process Engine: the service's defaults (DS_* variables and .env ignored) with the
    NumPy backend, beam 500 and the model directory's scorer if it has one."""
    from app.settings import Settings

    saved = {k: os.environ.pop(k) for k in _foreign_settings()}
    try:
        return Settings(
            _env_file=None, model_dir=model_dir, backend="numpy", decoder="beam", beam_width=BEAM_WIDTH
        )
    finally:
        os.environ.update(saved)


def server_env(model_dir: Path, **extra: str) -> dict[str, str]:
    """The whole environment of a uvicorn subprocess: the caller's without its DS_* settings, then the same
    settings as `engine_settings`, plus limits that a benchmark must not hit."""
    inherited = {k: v for k, v in os.environ.items() if k not in _foreign_settings()}
    return {
        **inherited,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DS_MODEL_DIR": str(model_dir),
        "DS_BACKEND": "numpy",
        "DS_DECODER": "beam",
        "DS_BEAM_WIDTH": str(BEAM_WIDTH),
        "DS_MAX_STREAMS": "512",
        "DS_STREAM_IDLE_TIMEOUT": "900",
        "DS_LOG_LEVEL": "warning",
        **extra,
    }


class NetworkTimer:
    """Adds up the seconds a model spends in its `run*` methods, wrapped on the instance (outermost call only)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self._depth = threading.local()
        self._names: list[str] = []

    def __enter__(self) -> NetworkTimer:
        for name in dir(type(self.model)):
            if name.startswith("run") and callable(getattr(self.model, name, None)):
                setattr(self.model, name, self._wrap(getattr(self.model, name)))
                self._names.append(name)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._names:
            with contextlib.suppress(AttributeError):
                delattr(self.model, name)
        self._names.clear()

    def _wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.value = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - started

        return timed


@dataclass
class LoadedModel:
    name: str
    path: Path
    engine: Any
    width: int
    decoder: str  # the decoder's description, e.g. "beam 500, kenlm kenlm.scorer"
    scorer: Path | None

    @property
    def wide(self) -> bool:
        return self.width >= 1024


def load_model(name: str) -> LoadedModel:
    from app.speech.engine import Engine

    path = ensure_model(name)
    engine = Engine.load(engine_settings(path))
    warm = np.zeros(SAMPLE_RATE, np.float32)  # as the server's warm-up: weights faulted in, lazy init paid
    engine.transcribe(warm)
    session = engine.open_stream()
    session.feed(warm)
    session.finish()
    scorer = getattr(getattr(engine.decoder, "scorer", None), "path", None)
    return LoadedModel(name, path, engine, engine.model.n_cell_dim, engine.decoder.description, scorer)


def close_model(model: LoadedModel) -> None:
    close = getattr(model.engine, "close", None)  # a stream batcher's thread, where the engine has one
    if close is not None:
        close()


# ---------------------------------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, np.float64), q))


def chunks_completed(n_samples: int) -> int:
    """16-step chunks a stream has run after n samples: windows = MFCC frames - 9 (the native client's buffers)."""
    from app.speech.features import N_CONTEXT, frame_count

    return max(0, frame_count(n_samples) - N_CONTEXT) // STATIC_STEPS


def completing_pieces(n_samples: int, piece: int = PIECE_SAMPLES) -> list[bool]:
    """For each piece of a stream, whether it completes a 16-step chunk (its partial is a new chunk's)."""
    return [
        chunks_completed(min(start + piece, n_samples)) > chunks_completed(start)
        for start in range(0, n_samples, piece)
    ]


def text_similarity(a: str, b: str) -> float:
    """1 - character error rate of b against a (1.0 = identical), floored at 0."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    try:
        import jiwer

        return max(0.0, 1.0 - float(jiwer.cer(a, b)))
    except ImportError:
        import difflib

        return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def normalise(text: str) -> str:
    return " ".join(text.split())


def best_of(repeats: int, run: Callable[[], dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """Run `repeats` times and keep the fastest (least disturbed by the other work on a shared machine)."""
    best: dict[str, Any] | None = None
    for _ in range(max(1, repeats)):
        result = run()
        if best is None or result[key] < best[key]:
            best = result
    assert best is not None
    best["repeats"] = max(1, repeats)
    return best


def paired(
    repeats: int, run_a: Callable[[], dict[str, Any]], run_b: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """best_of for two measurements taken alternately (a, b, a, b, ...): their ratio sees the same load."""
    best_a: dict[str, Any] | None = None
    best_b: dict[str, Any] | None = None
    for _ in range(max(1, repeats)):
        a, b = run_a(), run_b()
        best_a = a if best_a is None or a["seconds"] < best_a["seconds"] else best_a
        best_b = b if best_b is None or b["seconds"] < best_b["seconds"] else best_b
    assert best_a is not None and best_b is not None
    best_a["repeats"] = best_b["repeats"] = max(1, repeats)
    return best_a, best_b


def repeats_for(seconds: float, model: LoadedModel | None = None) -> int:
    """Short clips run several times (the fastest counts); at width >= 1024 twice, to keep --quick quick."""
    if seconds > 15:
        return 1
    return 2 if model is not None and model.wide else 3


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), KiB; 0 where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak RSS of a process while a block runs, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base: str
    pid: int
    log_path: Path
    start_seconds: float


@contextlib.contextmanager
def uvicorn_server(model_dir: Path, tag: str, **env: str) -> Iterator[Server]:
    """A real uvicorn (`python -m uvicorn app.main:app`) on a free loopback port, up once /ready answers 200."""
    import httpx

    port = free_port()
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / f"server-{tag}.log"
    started = time.monotonic()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
            + ["--log-level", "warning", "--ws-ping-interval", "600", "--ws-ping-timeout", "600"],
            cwd=ROOT,
            env=server_env(model_dir, **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise BenchError(f"the server exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the server was not ready in 600 s:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield Server(base, process.pid, log_path, time.monotonic() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------- FLOPs


def flops_per_step(n: int) -> float:
    """FLOPs of one time step's dense layers at width n (the issue's count): layers 1-3, the LSTM's input and
    recurrent kernels, layers 5 and 6."""
    return 2.0 * (19 * 26 * n + n * n + n * n + (n + n) * 4 * n + n * n + n * 29)


def recurrent_flops_per_step(n: int) -> float:
    return 2.0 * n * 4 * n


def dense_flops_per_step(n: int) -> float:
    """Everything but the recurrence: the part that batches over time steps (and streams)."""
    return flops_per_step(n) - recurrent_flops_per_step(n)


def recurrent_bytes_per_step(n: int) -> float:
    """float32 recurrent kernel (n, 4n), read once per step at batch 1."""
    return 4.0 * n * 4 * n


def limit_seconds_per_step(n: int, sgemm: float, bandwidth: float, batch: int = 1) -> float:
    """Best possible seconds per time step (per stream): dense layers at sgemm speed, plus the recurrence,
    which at batch b reads its kernel once for b streams: bandwidth-bound at small b, FLOP-bound at large b."""
    recurrence = max(recurrent_bytes_per_step(n) / (bandwidth * batch), recurrent_flops_per_step(n) / sgemm)
    return dense_flops_per_step(n) / sgemm + recurrence


# ---------------------------------------------------------------------------------------------------- section 1


def whole_file_stages(model: LoadedModel, clip: Clip, with_engine: bool = False) -> dict[str, Any]:
    """/transcribe's pipeline stage by stage, with the service's own functions (and, with `with_engine`, the
    same audio through Engine.transcribe in one call, as a check that the stages add up to it)."""
    from app.speech.audio import decode_audio
    from app.speech.features import context_window_blocks, mfcc
    from app.speech.runtime import LstmState

    engine = model.engine
    data = clip.path.read_bytes()
    t0 = time.perf_counter()
    samples, duration = decode_audio(data)
    t1 = time.perf_counter()
    frames = mfcc(samples)
    features_s = time.perf_counter() - t1
    network_s = 0.0
    state = LstmState.zeros(engine.model.n_cell_dim)
    parts = [np.zeros((0, engine.model.n_classes), np.float32)]
    blocks = context_window_blocks(frames, engine.model.max_steps)
    while True:
        t = time.perf_counter()
        windows = next(blocks, None)
        features_s += time.perf_counter() - t
        if windows is None:
            break
        t = time.perf_counter()
        probs, state = engine.model.run_window(windows, state)
        network_s += time.perf_counter() - t
        parts.append(probs)
    probs = np.concatenate(parts)
    t = time.perf_counter()
    transcript = engine.decoder.decode(probs)
    decoder_s = time.perf_counter() - t
    result: dict[str, Any] = {}
    if with_engine:
        t = time.perf_counter()
        result["engine_text"] = engine.transcribe(samples).transcript.text
        result["engine_transcribe_s"] = time.perf_counter() - t
    return {
        **result,
        "audio_seconds": duration,
        "steps": int(len(probs)),
        "decode_audio_s": t1 - t0,
        "features_s": features_s,
        "network_s": network_s,
        "decoder_s": decoder_s,
        "seconds": features_s + network_s + decoder_s,  # what best_of compares
        "text": transcript.text,
    }


def http_transcribe(server: Server, clip: Clip) -> dict[str, Any]:
    import httpx

    data = clip.path.read_bytes()
    started = time.perf_counter()
    response = httpx.post(
        f"{server.base}/transcribe", files={"file": ("speech.wav", data, "audio/wav")}, timeout=3600
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"POST /transcribe answered {response.status_code}: {response.text[:300]}")
    body = response.json()
    return {
        "seconds": seconds,
        "processing_seconds": body.get("processing_seconds"),
        "text": body.get("text", ""),
        "decoder": body.get("decoder"),
    }


def section_whole_file(bench: Bench, model: LoadedModel) -> None:
    results: dict[str, Any] = {}
    for seconds in bench.profile.clips:
        clip = bench.clips[seconds]
        log(f"1 whole file: {model.name}, {clip.label}")
        r = best_of(repeats_for(seconds, model), partial(whole_file_stages, model, clip))
        audio = r["audio_seconds"]
        if seconds == bench.profile.short:
            engine = whole_file_stages(model, clip, with_engine=True)
            r["engine_transcribe_s"] = engine["engine_transcribe_s"]
            r["engine_transcribe_rtf"] = engine["engine_transcribe_s"] / audio
            r["engine_text"] = engine["engine_text"]
        for stage in ("decode_audio", "features", "network", "decoder"):
            r[f"{stage}_rtf"] = r[f"{stage}_s"] / audio
        r["in_process_rtf"] = (r["decode_audio_s"] + r["seconds"]) / audio
        results[clip.label] = r
        rtf = r["network_rtf"]
        target = ("<=", TARGET_NETWORK_RTF) if model.width == 2048 else None
        bench.row(model, 1, f"network RTF ({clip.label})", rtf, target)
        bench.row(model, 1, f"decode audio RTF ({clip.label})", r["decode_audio_rtf"])
        bench.row(model, 1, f"features RTF ({clip.label})", r["features_rtf"])
        bench.row(model, 1, f"decoder RTF ({clip.label})", r["decoder_rtf"])
        bench.row(model, 1, f"in-process total RTF ({clip.label})", r["in_process_rtf"])
    http_lengths = [s for s in bench.profile.http if s in bench.clips]
    if http_lengths:
        with uvicorn_server(model.path, f"{model.name}-http") as server:
            for seconds in http_lengths:
                clip = bench.clips[seconds]
                log(f"1 whole file over HTTP: {model.name}, {clip.label}")
                r = best_of(repeats_for(seconds, model), partial(http_transcribe, server, clip))
                r["rtf"] = r["seconds"] / seconds
                in_process = results[clip.label]
                r["http_over_in_process"] = r["seconds"] / (
                    in_process["decode_audio_s"] + in_process["seconds"]
                )
                r["text_equals_in_process"] = normalise(r["text"]) == normalise(in_process["text"])
                results[clip.label]["http"] = r
                bench.row(model, 1, f"HTTP end-to-end RTF ({clip.label})", r["rtf"])
                bench.row(model, 1, f"HTTP / in-process time ({clip.label})", r["http_over_in_process"])
    bench.section_result("whole_file", model, results)


# ---------------------------------------------------------------------------------------------------- section 2


def stream_ours(model: LoadedModel, samples: np.ndarray, piece: int = PIECE_SAMPLES) -> dict[str, Any]:
    """Our StreamSession fed `piece` samples at a time, as a client sends them; latency = the feed() call with
    the piece that completes a 16-step chunk (it runs the chunk and returns the partial)."""
    session = model.engine.open_stream()
    completes = completing_pieces(len(samples), piece)
    latencies: list[float] = []
    with NetworkTimer(model.engine.model) as network:
        started = time.perf_counter()
        for k, start in enumerate(range(0, len(samples), piece)):
            t = time.perf_counter()
            session.feed(samples[start : start + piece])
            if completes[k]:
                latencies.append(time.perf_counter() - t)
        final = session.finish()
        seconds = time.perf_counter() - started
    audio = len(samples) / SAMPLE_RATE
    return {
        "seconds": seconds,
        "audio_seconds": audio,
        "compute_per_audio_s": seconds / audio,
        "network_s": network.seconds,
        "network_rtf": network.seconds / audio,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "chunks": len(latencies),
        "text": final.text,
    }


def seed_loop(model: LoadedModel, samples: np.ndarray) -> dict[str, Any]:
    """The coremltools guide's loop on our model and decoder: features for the whole file first, then per chunk
    of 16 windows the static model (input_lengths 16, state carried), append the probabilities, and re-decode
    ALL of them from scratch with the beam decoder. As in the guide, `while start + 16 < T` drops the tail."""
    from app.speech.features import context_windows, mfcc
    from app.speech.runtime import LstmState

    engine = model.engine
    started = time.perf_counter()
    windows = context_windows(mfcc(samples))
    state = LstmState.zeros(engine.model.n_cell_dim)
    parts: list[np.ndarray] = []
    chunk_seconds: list[float] = []
    text = ""
    start = 0
    while start + STATIC_STEPS < len(windows):
        t = time.perf_counter()
        probs, state = engine.model.run_chunk(windows[start : start + STATIC_STEPS], STATIC_STEPS, state)
        parts.append(probs)
        start += STATIC_STEPS
        text = engine.decoder.decode(np.concatenate(parts)).text
        chunk_seconds.append(time.perf_counter() - t)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "audio_seconds": len(samples) / SAMPLE_RATE,
        "latency_p50_s": percentile(chunk_seconds, 50),
        "latency_p95_s": percentile(chunk_seconds, 95),
        "chunks": len(chunk_seconds),
        "text": text,
    }


def fit_quadratic(lengths: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Least squares t = a*L^2 + b*L with a, b >= 0 (a noisy negative term is dropped and the other refitted)."""
    x = np.asarray(lengths, np.float64)
    y = np.asarray(seconds, np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([x * x, x], axis=1), y, rcond=None)
    if a < 0:
        a, b = 0.0, float(x @ y / (x @ x))
    elif b < 0:
        a, b = float((x * x) @ y / ((x * x) @ (x * x))), 0.0
    return float(a), float(b)


def section_streaming(bench: Bench, model: LoadedModel) -> None:
    profile = bench.profile
    results: dict[str, Any] = {"piece_seconds": PIECE_SAMPLES / SAMPLE_RATE, "clips": {}}
    whole = bench.sections.get("whole_file", {}).get(model.name, {})
    for seconds in profile.clips:
        clip = bench.clips[seconds]
        log(f"2 streaming: {model.name}, {clip.label}")
        repeats = repeats_for(seconds, model)
        stream_run = partial(stream_ours, model, clip.samples)
        if seconds <= PAIRED_MAX_SECONDS:  # whole file right next to the stream: the ratio sees the same load
            whole_run, r = paired(repeats, partial(whole_file_stages, model, clip), stream_run)
            w = {**whole_run, "interleaved": True}
        else:  # 10 min: Section 1's whole-file figure, minutes apart (pairing would add minutes at width 2048)
            r = best_of(repeats, stream_run)
            w = {**whole[clip.label], "interleaved": False} if clip.label in whole else {}
        results["clips"][clip.label] = r
        bench.row(model, 2, f"stream compute / audio s ({clip.label})", r["compute_per_audio_s"])
        bench.row(model, 2, f"stream network RTF ({clip.label})", r["network_rtf"])
        bench.row(model, 2, f"chunk latency p50, s ({clip.label})", r["latency_p50_s"])
        bench.row(model, 2, f"chunk latency p95, s ({clip.label})", r["latency_p95_s"])
        if w:
            ratio = r["compute_per_audio_s"] / (w["seconds"] / w["audio_seconds"])
            r["over_whole_file"] = ratio
            r["whole_file_compute_per_audio_s"] = w["seconds"] / w["audio_seconds"]
            r["whole_file_interleaved"] = w["interleaved"]
            bench.row(
                model,
                2,
                f"stream / whole-file compute ({clip.label})",
                ratio,
                ("<=", TARGET_STREAM_OVER_WHOLE),
            )
    # The seed loop: measured at the short clip directly, and at several lengths for the quadratic fit.
    fit_lengths = profile.seed_fit_wide if model.wide else profile.seed_fit
    track = bench.clips[profile.longest].samples
    seed_runs: dict[float, dict[str, Any]] = {}
    for seconds in sorted({profile.short, *fit_lengths}):
        log(f"2 seed loop: {model.name}, {clip_label(seconds)}")
        samples = track[: int(round(seconds * SAMPLE_RATE))]
        seed_runs[seconds] = best_of(
            1 if seconds > profile.short or model.wide else 2, partial(seed_loop, model, samples)
        )
    short = bench.clips[profile.short]
    seed_short = seed_runs[profile.short]
    ours_short = results["clips"][short.label]
    ratio_short = seed_short["seconds"] / ours_short["seconds"]
    results["seed"] = {clip_label(s): r for s, r in seed_runs.items()}
    results[f"seed_over_stream_{short.label}"] = ratio_short
    bench.row(model, 2, f"seed loop / our stream ({short.label}, measured)", ratio_short)
    bench.row(model, 2, f"seed chunk latency p95, s ({short.label})", seed_short["latency_p95_s"])

    a, b = fit_quadratic(fit_lengths, [seed_runs[s]["seconds"] for s in fit_lengths])
    seed_long = a * LONG_SECONDS**2 + b * LONG_SECONDS
    worst_residual = max(
        abs(a * t * t + b * t - seed_runs[t]["seconds"]) / seed_runs[t]["seconds"] for t in fit_lengths
    )
    longest = bench.clips[profile.longest]
    ours_longest = results["clips"][longest.label]
    ours_measured = math.isclose(longest.seconds, LONG_SECONDS)
    ours_long = ours_longest["seconds"] * LONG_SECONDS / longest.seconds
    ratio_long = seed_long / ours_long
    how_ours = (
        "measured on 10 min of audio"
        if ours_measured
        else f"extrapolated linearly from {longest.label} (our stream is linear in the audio length)"
    )
    results["seed_over_stream_10min"] = {
        "value": ratio_long,
        "extrapolated": True,
        "seed_fit": {
            "model": "seconds = a*t^2 + b*t",
            "a": a,
            "b": b,
            "measured_s": {clip_label(t): seed_runs[t]["seconds"] for t in fit_lengths},
            "worst_relative_residual": worst_residual,
        },
        "seed_seconds_at_10min": seed_long,
        "stream_seconds_at_10min": ours_long,
        "how": (
            f"seed loop measured at {', '.join(clip_label(s) for s in fit_lengths)}, fitted a*t^2 + b*t and "
            f"extrapolated to 10 min; our stream {how_ours}"
        ),
        "stream_extrapolated": not ours_measured,
    }
    bench.row(
        model,
        2,
        "seed loop / our stream (10 min, seed extrapolated)",
        ratio_long,
        (">=", TARGET_SEED_RATIO),
    )
    bench.section_result("streaming", model, results)


# ---------------------------------------------------------------------------------------------------- section 3

# Runs inside the Python 3.9 venv that tests/native_client.py builds (deepspeech==0.9.3). Python 3.6-compatible.
NATIVE_RUNNER = r"""
import json, sys, time, wave
import numpy as np
import deepspeech


def read(path):
    with wave.open(path, "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def chunks(n):
    frames = 0 if n < 512 else 1 + (n - 512) // 320
    return max(0, frames - 9) // 16


def main():
    a = json.loads(sys.argv[1])
    t = time.perf_counter()
    model = deepspeech.Model(a["model"])
    load_s = time.perf_counter() - t
    if a["scorer"]:
        model.enableExternalScorer(a["scorer"])
    model.setBeamWidth(a["beam_width"])
    audio = read(a["audio"])
    t = time.perf_counter()
    model.stt(audio[:16000])  # the first inference pays TensorFlow's session setup: not counted
    warm_s = time.perf_counter() - t
    out = {"load_s": load_s, "warm_up_s": warm_s, "beam_width": model.beamWidth(), "version": deepspeech.version()}
    best = None
    for _ in range(a["repeats"]):
        t = time.perf_counter()
        text = model.stt(audio)
        s = time.perf_counter() - t
        if best is None or s < best:
            best = s
            out["text"] = text
    out["whole_s"] = best
    best = None
    piece = a["piece"]
    for _ in range(a["repeats"]):
        latencies = []
        t = time.perf_counter()
        stream = model.createStream()
        for start in range(0, len(audio), piece):
            end = min(start + piece, len(audio))
            c = time.perf_counter()
            stream.feedAudioContent(audio[start:end])
            stream.intermediateDecode()  # a partial after every piece, as our server sends one
            if chunks(end) > chunks(start):
                latencies.append(time.perf_counter() - c)
        text = stream.finishStream()
        s = time.perf_counter() - t
        if best is None or s < best:
            best = s
            out["stream_text"] = text
            out["latencies"] = latencies
    out["stream_s"] = best
    sys.stdout.write("\n" + json.dumps(out) + "\n")


main()
"""


def run_native(client: Any, model: LoadedModel, clip: Clip, repeats: int) -> dict[str, Any]:
    """The native client on the model directory's static_graph.pb: stt (whole file) and a stream fed 320 ms
    pieces with a partial each, warm (one untimed inference first)."""
    graph = model.path / "static_graph.pb"
    if not graph.exists():
        raise BenchError(f"{graph} is missing: the native client needs the frozen static graph")
    runner = CACHE / "native_bench_runner.py"
    runner.write_text(NATIVE_RUNNER, encoding="utf-8")
    args = {
        "model": str(graph),
        "scorer": str(model.scorer.resolve()) if model.scorer else None,
        "beam_width": BEAM_WIDTH,
        "audio": str(clip.path.resolve()),
        "piece": PIECE_SAMPLES,
        "repeats": repeats,
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(client.python), str(runner), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=7200,
    )
    if done.returncode != 0:
        raise BenchError(f"the native client runner failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
    latencies = result.pop("latencies")
    result["latency_p50_s"] = percentile(latencies, 50)
    result["latency_p95_s"] = percentile(latencies, 95)
    return result


def section_native(bench: Bench, model: LoadedModel) -> None:
    from tests.native_client import ensure_native_client

    lengths = bench.profile.native_wide if model.wide else bench.profile.native
    if not lengths:
        bench.skip_model_section("native_client", model, "not in this profile")
        return
    client = ensure_native_client()
    if isinstance(client, str):
        bench.skip_model_section("native_client", model, client)
        return
    results: dict[str, Any] = {
        "decoder": {
            "beam_width": BEAM_WIDTH,
            "cutoff_top_n": 40,  # both sides' default
            "scorer": str(model.scorer) if model.scorer else None,
            "alpha_beta": "the scorer's own, both sides" if model.scorer else None,
            "ours": model.decoder,
        },
        "clips": {},
    }
    for seconds in lengths:
        clip = bench.clips[seconds]
        log(f"3 native client: {model.name}, {clip.label}")
        repeats = repeats_for(seconds, model)
        native = run_native(client, model, clip, repeats)
        samples = clip.samples

        def whole_ours(samples: np.ndarray = samples) -> dict[str, Any]:
            t = time.perf_counter()
            text = model.engine.transcribe(samples).transcript.text
            return {"seconds": time.perf_counter() - t, "text": text}

        ours_whole = best_of(repeats, whole_ours)
        ours_stream = best_of(repeats, partial(stream_ours, model, samples))
        r = {
            "native": native,
            "ours_whole_s": ours_whole["seconds"],
            "ours_stream_s": ours_stream["seconds"],
            "ours_text": ours_whole["text"],
            "ours_stream_text": ours_stream["text"],
            "ours_latency_p95_s": ours_stream["latency_p95_s"],
            "whole_ratio": native["whole_s"] / ours_whole["seconds"],
            "stream_ratio": native["stream_s"] / ours_stream["seconds"],
            "whole_same_text": normalise(native["text"]) == normalise(ours_whole["text"]),
            "stream_same_text": normalise(native["stream_text"]) == normalise(ours_stream["text"]),
            "whole_text_similarity": text_similarity(
                normalise(native["text"]), normalise(ours_whole["text"])
            ),
            "stream_text_similarity": text_similarity(
                normalise(native["stream_text"]), normalise(ours_stream["text"])
            ),
        }
        results["clips"][clip.label] = r
        target = (">=", TARGET_NATIVE_RATIO)
        bench.row(model, 3, f"native / ours, whole file ({clip.label})", r["whole_ratio"], target)
        bench.row(model, 3, f"native / ours, stream ({clip.label})", r["stream_ratio"], target)
        bench.row(model, 3, f"same transcript, whole file ({clip.label})", r["whole_same_text"], "same")
        bench.row(model, 3, f"same transcript, stream ({clip.label})", r["stream_same_text"], "same")
        bench.row(model, 3, f"transcript similarity, whole ({clip.label})", r["whole_text_similarity"])
        bench.row(model, 3, f"transcript similarity, stream ({clip.label})", r["stream_text_similarity"])
        if native["latency_p95_s"] and ours_stream["latency_p95_s"]:
            r["latency_p95_ratio"] = native["latency_p95_s"] / ours_stream["latency_p95_s"]
            bench.row(model, 3, f"native / ours, chunk latency p95 ({clip.label})", r["latency_p95_ratio"])
        bench.row(
            model,
            3,
            f"native RTF whole / stream ({clip.label})",
            f"{native['whole_s'] / seconds:.3g} / {native['stream_s'] / seconds:.3g}",
        )
    longest = results["clips"][clip_label(lengths[-1])]
    results["native_client_over_ours"] = min(longest["whole_ratio"], longest["stream_ratio"])
    bench.section_result("native_client", model, results)


# ---------------------------------------------------------------------------------------------------- section 4


@dataclass
class StreamOutcome:
    latencies: list[float]
    text: str
    partials: int


async def _drive_stream(ws: Any, pieces: Sequence[bytes], completes: Sequence[bool]) -> StreamOutcome:
    """Closed loop: a 320 ms frame, then a message of unknown type whose error reply (the server answers a
    stream's messages in order) says the frame was taken; then the next frame. Latency of a frame that
    completes a chunk = from sending it to the first reply after it (its partial, or the ack if the text did
    not change)."""
    latencies: list[float] = []
    partials = 0
    for piece, completes_chunk in zip(pieces, completes, strict=True):
        started = time.perf_counter()
        await ws.send(piece)
        await ws.send(SYNC_MESSAGE)
        first: float | None = None
        while True:
            message = json.loads(await ws.recv())
            if first is None:
                first = time.perf_counter() - started
            if message.get("type") == "partial":
                partials += 1
                continue
            if message.get("type") == "error" and message.get("code") == "bad_message":
                break
            raise BenchError(f"unexpected message from /stream: {message}")
        if completes_chunk:
            latencies.append(first)
    await ws.send(json.dumps({"type": "eof"}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == "final":
            return StreamOutcome(latencies, message.get("text", ""), partials)
        if message.get("type") != "partial":
            raise BenchError(f"unexpected message from /stream after eof: {message}")


async def _run_streams(url: str, pcm: np.ndarray, n: int) -> tuple[float, list[StreamOutcome]]:
    from websockets.asyncio.client import connect

    data = pcm.astype("<i2").tobytes()
    step = PIECE_SAMPLES * 2
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    completes = completing_pieces(len(pcm))
    sockets = await asyncio.gather(
        *(
            connect(url, max_size=None, ping_interval=None, open_timeout=120, close_timeout=10)
            for _ in range(n)
        )
    )
    # Generous (20 s of wall time per second of audio, all streams together), but a hung server must not
    # hang the bench.
    timeout = 120 + 20 * n * len(pcm) / SAMPLE_RATE
    try:
        started = time.perf_counter()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(_drive_stream(ws, pieces, completes) for ws in sockets)), timeout
        )
        wall = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return wall, list(outcomes)


def concurrent_streams(server: Server, pcm: np.ndarray, n: int) -> dict[str, Any]:
    url = server.base.replace("http://", "ws://") + "/stream"
    time.sleep(0.5)  # let the previous run's memory settle before the idle reading
    before = rss_kib(server.pid)
    with RssSampler(server.pid) as rss:
        wall, outcomes = asyncio.run(_run_streams(url, pcm, n))
    audio = n * len(pcm) / SAMPLE_RATE
    latencies = [x for o in outcomes for x in o.latencies]
    texts = {o.text for o in outcomes}
    return {
        "streams": n,
        "audio_seconds": audio,
        "wall_seconds": wall,
        "audio_s_per_wall_s": audio / wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "rss_before_mib": before / 1024,
        "rss_peak_mib": rss.peak / 1024,
        "rss_per_stream_mib": max(0, rss.peak - before) / 1024 / n,
        "text": outcomes[0].text,
        "all_finals_identical": len(texts) == 1,
        "partials_per_stream": statistics.mean(o.partials for o in outcomes),
    }


def section_concurrency(bench: Bench, model: LoadedModel) -> None:
    profile = bench.profile
    if not profile.concurrency:
        bench.skip_model_section("concurrency", model, "not in this profile")
        return
    seconds = profile.concurrency_seconds_wide if model.wide else profile.concurrency_seconds
    pcm = bench.clips[profile.longest].pcm[: int(seconds * SAMPLE_RATE)]
    results: dict[str, Any] = {
        "feeding": (
            "throughput: each stream sends its next 320 ms frame as soon as the server has taken the previous "
            "one (closed loop, acknowledged in order), not paced in real time; latency is measured under that load"
        ),
        "audio_per_stream_s": len(pcm) / SAMPLE_RATE,
        "batched": {},
    }
    with uvicorn_server(model.path, f"{model.name}-batched", DS_STREAM_BATCHING="true") as server:
        results["server_start_s"] = server.start_seconds
        for n in profile.concurrency:
            log(f"4 concurrency: {model.name}, {n} streams, batching on")
            r = concurrent_streams(server, pcm, n)
            results["batched"][str(n)] = r
            bench.row(model, 4, f"{n} streams: audio s / wall s", r["audio_s_per_wall_s"])
            bench.row(model, 4, f"{n} streams: partial latency p95, s", r["latency_p95_s"])
            bench.row(model, 4, f"{n} streams: RSS per stream, MiB", r["rss_per_stream_mib"])
        batched = results["batched"].get(str(BATCHED_STREAMS))
        if batched is None:
            log(f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, batching on")
            batched = concurrent_streams(server, pcm, BATCHED_STREAMS)
            results["batched"][str(BATCHED_STREAMS)] = batched
    with uvicorn_server(model.path, f"{model.name}-unbatched", DS_STREAM_BATCHING="false") as server:
        log(f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, batching off")
        unbatched = concurrent_streams(server, pcm, BATCHED_STREAMS)
    results["unbatched"] = {str(BATCHED_STREAMS): unbatched}
    ratio = batched["audio_s_per_wall_s"] / unbatched["audio_s_per_wall_s"]
    results["batched_over_unbatched_16_streams"] = ratio
    results["batched_same_text_as_unbatched"] = normalise(batched["text"]) == normalise(unbatched["text"])
    bench.row(
        model, 4, f"{BATCHED_STREAMS} streams unbatched: audio s / wall s", unbatched["audio_s_per_wall_s"]
    )
    bench.row(
        model,
        4,
        f"batched / unbatched throughput ({BATCHED_STREAMS} streams)",
        ratio,
        (">=", TARGET_BATCHED_RATIO),
    )
    bench.row(model, 4, "batched finals = unbatched finals", results["batched_same_text_as_unbatched"])
    # The same pair with greedy decoding: what batching does for the network alone, without the beam search
    # (which holds the GIL and, on the random model's flat probabilities, costs as much as the network).
    greedy: dict[str, Any] = {}
    for batching in ("true", "false"):
        tag = f"{model.name}-greedy-{'batched' if batching == 'true' else 'unbatched'}"
        with uvicorn_server(model.path, tag, DS_STREAM_BATCHING=batching, DS_DECODER="greedy") as server:
            log(
                f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, greedy decoder, batching {batching}"
            )
            greedy[batching] = concurrent_streams(server, pcm, BATCHED_STREAMS)
    greedy_ratio = greedy["true"]["audio_s_per_wall_s"] / greedy["false"]["audio_s_per_wall_s"]
    results["greedy"] = {"batched": greedy["true"], "unbatched": greedy["false"], "ratio": greedy_ratio}
    bench.row(model, 4, f"greedy decoder: batched / unbatched ({BATCHED_STREAMS} streams)", greedy_ratio)
    bench.section_result("concurrency", model, results)


# ---------------------------------------------------------------------------------------------------- section 5


def measure_sgemm(shape: tuple[int, int, int], repeats: int = 3) -> dict[str, Any]:
    """NumPy float32 (m×k) @ (k×n): the best of `repeats`, after one warm-up."""
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return {"shape": list(shape), "seconds": best, "flops_per_s": 2.0 * m * k * n / best}


def measure_bandwidth(megabytes: int, repeats: int = 5) -> dict[str, Any]:
    """Large float32 array copy: (read + write bytes) / time, the best of `repeats` after one (page-faulting)
    copy; reading alone (a sum); and a matrix-vector product over the same bytes, which is what the recurrence
    does with its kernel and, unlike the first two, runs on as many cores as BLAS has threads."""
    x = np.ones(megabytes * 1024 * 1024 // 4, np.float32)
    y = np.empty_like(x)
    np.copyto(y, x)
    matrix = x.reshape(-1, 4096)
    vector = np.ones(len(matrix), np.float32)
    product = vector @ matrix
    copy = read = gemv = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(y, x)
        copy = min(copy, time.perf_counter() - t)
        t = time.perf_counter()
        x.sum()
        read = min(read, time.perf_counter() - t)
        t = time.perf_counter()
        np.matmul(vector, matrix, out=product)
        gemv = min(gemv, time.perf_counter() - t)
    rates = {
        "copy_bytes_per_s": 2.0 * x.nbytes / copy,
        "read_bytes_per_s": x.nbytes / read,
        "gemv_bytes_per_s": x.nbytes / gemv,
    }
    # The roofline takes the fastest: the limit should be the best this machine showed.
    return {"megabytes": megabytes, **rates, "bytes_per_s": max(rates.values())}


def blas_threads() -> str:
    """This process's BLAS thread setting (what `import app` left: the service's own default)."""
    return os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "library default"


def machine_probe(profile: Profile) -> dict[str, Any]:
    """sgemm and bandwidth with every core: a fresh process (this script, --machine-probe) whose BLAS may use
    them all, whatever threads the service gives itself."""
    cores = str(os.cpu_count() or 1)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--machine-probe"]
        + [json.dumps({"shape": profile.sgemm_shape, "megabytes": profile.copy_mb})],
        capture_output=True,
        text=True,
        env={**os.environ, **dict.fromkeys(BLAS_THREAD_VARS, cores)},
        timeout=900,
    )
    if done.returncode != 0:
        raise BenchError(f"the machine probe failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "blas_threads": cores}


def machine_limit(profile: Profile, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """sgemm and bandwidth now (every core), merged with an earlier probe (the start of the run): each the best
    seen, as a roofline should be; on a shared machine one probe may land in a busy moment."""
    probes = [machine_probe(profile)] + ([earlier] if earlier else [])
    return {
        "sgemm": max((p["sgemm"] for p in probes), key=lambda m: m["flops_per_s"]),
        "bandwidth": max((p["bandwidth"] for p in probes), key=lambda m: m["bytes_per_s"]),
        "probes": probes,
    }


def measure_dense(model: LoadedModel, rows: int, repeats: int = 3) -> dict[str, Any]:
    """The dense layers (1, 2, 3, the LSTM's input kernel, 5, 6) on `rows` steps at once, with the model's
    weights and the NumPy backend's own dense op on the cores a lone pass of this model gets (its `threads`):
    what batching buys per FLOP. The recurrence is excluded."""
    from app.speech.runtime import numpy_backend
    from app.speech.runtime.cores import CORES, CorePool

    lstm = numpy_backend.LSTM
    with np.load(model.path / "weights.npz") as npz:
        w = {name: np.ascontiguousarray(npz[name], np.float32) for name in npz.files}
    n = w[f"{lstm}/bias"].shape[0] // 4
    input_kernel = np.ascontiguousarray(w[f"{lstm}/kernel"][:-n])
    threads = getattr(model.engine.model, "threads", 1)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((rows, 19 * 26), dtype=np.float32)
    h = rng.standard_normal((rows, n), dtype=np.float32)

    def run(pool: CorePool | None) -> None:
        def layer(x: np.ndarray, name: str, relu: bool = True) -> np.ndarray:
            if name == "lstm":  # the LSTM's input projection: the kernel's input rows, no activation
                return numpy_backend._dense(x, input_kernel, w[f"{lstm}/bias"], relu, pool=pool)
            return numpy_backend._dense(x, w[f"{name}/weights"], w[f"{name}/bias"], relu, pool=pool)

        x = x0
        for i in (1, 2, 3):
            x = layer(x, f"layer_{i}")
        layer(x, "lstm", relu=False)
        layer(layer(h, "layer_5"), "layer_6", relu=False)

    best = math.inf
    with CORES.claim(threads) as pool:
        run(pool)
        for _ in range(repeats):
            t = time.perf_counter()
            run(pool)
            best = min(best, time.perf_counter() - t)
    return {
        "rows": rows,
        "seconds": best,
        "flops_per_s": dense_flops_per_step(n) * rows / best,
        "threads": pool.threads if pool is not None else 1,
    }


def section_limit(bench: Bench) -> None:
    profile = bench.profile
    log("5 limit: sgemm and memory bandwidth")
    machine = machine_limit(profile, bench.early_probe)
    sgemm, bandwidth = machine["sgemm"], machine["bandwidth"]
    # For context: sgemm with the service's one BLAS thread. The dense layers' efficiency is measured against
    # sgemm on every core, since a lone pass splits them over the cores itself (app/speech/runtime/cores.py).
    own = measure_sgemm(profile.sgemm_shape)
    own["blas_threads"] = blas_threads()
    results: dict[str, Any] = {**machine, "sgemm_service_threads": own, "models": {}}
    shape = "x".join(map(str, profile.sgemm_shape))
    cores = machine["probes"][0]["blas_threads"]
    bench.row(None, 5, f"sgemm {shape}, {cores} threads, GFLOP/s", sgemm["flops_per_s"] / 1e9)
    bench.row(None, 5, f"sgemm {shape}, {own['blas_threads']} thread(s) as served", own["flops_per_s"] / 1e9)
    bench.row(
        None, 5, f"memory copy {profile.copy_mb} MB, GB/s (best probe)", bandwidth["copy_bytes_per_s"] / 1e9
    )
    bench.row(
        None, 5, f"memory read {profile.copy_mb} MB, GB/s (best probe)", bandwidth["read_bytes_per_s"] / 1e9
    )
    bench.row(
        None,
        5,
        f"memory read by gemv {profile.copy_mb} MB, every core, GB/s (best probe)",
        bandwidth.get("gemv_bytes_per_s", 0.0) / 1e9,
    )
    for model in bench.models.values():
        log(f"5 limit: {model.name} dense layers")
        n = model.width
        batched = measure_dense(model, BATCHED_STREAMS * STATIC_STEPS)
        window = measure_dense(model, 1000, repeats=2)
        fraction = batched["flops_per_s"] / sgemm["flops_per_s"]
        results["models"][model.name] = {
            "width": n,
            "flops_per_step": flops_per_step(n),
            "recurrent_bytes_per_step": recurrent_bytes_per_step(n),
            "dense_batched_16x16": batched,
            "dense_window_1000": window,
            "dense_batched_fraction_of_sgemm": fraction,
            "limit_rtf_batch1": limit_seconds_per_step(n, sgemm["flops_per_s"], bandwidth["bytes_per_s"])
            / STEP_SECONDS,
            f"limit_rtf_batch{BATCHED_STREAMS}": limit_seconds_per_step(
                n, sgemm["flops_per_s"], bandwidth["bytes_per_s"], BATCHED_STREAMS
            )
            / STEP_SECONDS,
        }
        target = (">=", TARGET_SGEMM_FRACTION) if n >= 2048 else None
        bench.row(model, 5, "dense layers, 16 streams x 16 steps / sgemm, every core", fraction, target)
        bench.row(
            model,
            5,
            "dense layers, 1000 steps / sgemm, every core",
            window["flops_per_s"] / sgemm["flops_per_s"],
        )
        bench.row(model, 5, "network RTF limit (batch 1)", results["models"][model.name]["limit_rtf_batch1"])
    bench.sections["limit"] = results


def stage_fractions(bench: Bench) -> None:
    """What fraction of this machine's limit each measured stage reaches (limit time / measured time)."""
    limit = bench.sections.get("limit")
    if not limit:
        return
    sgemm = limit["sgemm"]["flops_per_s"]
    bandwidth = limit["bandwidth"]["bytes_per_s"]
    fractions: dict[str, Any] = {}
    for name, model in bench.models.items():
        n = model.width
        per_step = limit_seconds_per_step(n, sgemm, bandwidth)
        f: dict[str, Any] = {}
        whole = bench.sections.get("whole_file", {}).get(name, {})
        if whole:
            label, r = list(whole.items())[-1]
            f[f"whole_file_network ({label})"] = per_step * r["steps"] / r["network_s"]
        stream = bench.sections.get("streaming", {}).get(name, {}).get("clips", {})
        if stream:
            label, r = list(stream.items())[-1]
            steps = r["audio_seconds"] / STEP_SECONDS
            f[f"stream_network ({label})"] = per_step * steps / r["network_s"]
            f[f"stream_all_compute ({label})"] = per_step * steps / r["seconds"]
        conc = bench.sections.get("concurrency", {}).get(name, {})
        for key, batch in (("batched", BATCHED_STREAMS), ("unbatched", 1)):
            r = conc.get(key, {}).get(str(BATCHED_STREAMS))
            if r:
                steps = r["audio_seconds"] / STEP_SECONDS
                limit_s = limit_seconds_per_step(n, sgemm, bandwidth, batch) * steps
                f[f"{BATCHED_STREAMS}_streams_{key}_all_compute"] = limit_s / r["wall_seconds"]
        fractions[name] = f
        for stage, value in f.items():
            bench.row(model, 5, f"fraction of limit: {stage}", value)
    limit["stage_fraction_of_limit"] = fractions
    limit["note"] = (
        "limit per time step = dense FLOPs / sgemm + max(recurrent kernel bytes / (bandwidth * batch), recurrent "
        "FLOPs / sgemm), with the best sgemm and bandwidth (the fastest of copy, read and a gemv on every core) of two probes; "
        "fraction = limit / measured. 'all_compute' stages also include features and the "
        "decoder, so they are lower bounds of the network's own fraction. A recurrent kernel that fits in cache "
        "(wholly at width 256, partly at 2048 with a large L3) beats the memory bound, and the probes and the "
        "stage see different moments of a shared machine: fractions above 1 come from those."
    )


# ---------------------------------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, profile: Profile, sections: Sequence[int], model_names: Sequence[str]) -> None:
        self.profile = profile
        self.wanted_sections = list(sections)
        self.model_names = list(model_names)
        self.models: dict[str, LoadedModel] = {}
        self.clips: dict[float, Clip] = {}
        self.sections: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.early_probe: dict[str, Any] | None = None  # sgemm and bandwidth at the start (section 5)

    def row(
        self,
        model: LoadedModel | None,
        section: int,
        metric: str,
        value: Any,
        target: tuple[str, float] | str | None = None,
    ) -> None:
        """One line of the table; `target` is (">=" or "<=", limit), or "same" for a yes/no that must be yes."""
        ok: bool | None = None
        text: str | None = None
        if isinstance(target, tuple):
            op, limit = target
            text = f"{op} {limit:g}"
            if value is not None:
                ok = value <= limit if op == "<=" else value >= limit
        elif target is not None:
            text = target
            ok = bool(value)
        self.rows.append(
            {
                "model": model.name if model else "-",
                "section": section,
                "metric": metric,
                "value": value,
                "target": text,
                "ok": ok,
            }
        )

    def section_result(self, section: str, model: LoadedModel, result: dict[str, Any]) -> None:
        self.sections.setdefault(section, {})[model.name] = result

    def skip_model_section(self, section: str, model: LoadedModel, reason: str) -> None:
        self.skipped[f"{section}/{model.name}"] = reason
        log(f"skipped {section} for {model.name}: {reason}")

    def plan(self) -> list[int]:
        """The sections this profile runs; the others are recorded as skipped, with why."""
        for section in self.wanted_sections:
            if section not in self.profile.runs_sections:
                self.skipped[SECTION_NAMES[section]] = (
                    "--quick does not run it (needs the full bench: python scripts/bench.py)"
                )
        return [s for s in self.wanted_sections if s in self.profile.runs_sections]

    def run(self) -> None:
        profile = self.profile
        todo = self.plan()
        log(f"profile {profile.name}: sections {todo}, models {self.model_names}")
        if any(s in todo for s in (1, 2, 3, 4)):
            self.clips = prepare_clips(profile.clips)
        for name in self.model_names:
            log(f"loading model {name}")
            model = load_model(name)
            self.models[model.name] = model
        if 5 in todo:
            log("5 limit: a first sgemm and bandwidth probe")
            self.early_probe = machine_probe(profile)
        for section in todo:
            if section == 5:
                section_limit(self)
                continue
            for model in self.models.values():
                try:
                    SECTION_RUNNERS[section](self, model)
                except Exception as exc:  # one failing part must not lose the others' numbers
                    self.skipped[f"{SECTION_NAMES[section]}/{model.name}"] = (
                        f"failed: {type(exc).__name__}: {exc}"
                    )
                    log(f"section {section} failed for {model.name}:\n{traceback.format_exc()}")
        stage_fractions(self)
        for model in self.models.values():
            close_model(model)


SECTION_NAMES = {1: "whole_file", 2: "streaming", 3: "native_client", 4: "concurrency", 5: "limit"}
SECTION_RUNNERS: dict[int, Callable[[Bench, LoadedModel], None]] = {
    1: section_whole_file,
    2: section_streaming,
    3: section_native,
    4: section_concurrency,
}


# ---------------------------------------------------------------------------------------------------- report


def _pick(bench: Bench, section: str) -> tuple[str, dict[str, Any]] | None:
    """The headline model's result in a section, else the widest model's that has one."""
    results = bench.sections.get(section, {})
    if HEADLINE_MODEL in results:
        return HEADLINE_MODEL, results[HEADLINE_MODEL]
    ranked = sorted(results, key=lambda name: -bench.models[name].width)
    return (ranked[0], results[ranked[0]]) if ranked else None


def _missing_reason(bench: Bench, section: str) -> str:
    reasons = [reason for key, reason in bench.skipped.items() if key.split("/")[0] == section]
    if reasons:
        return "; ".join(sorted(set(reasons)))
    if SECTION_IDS[section] not in bench.wanted_sections:
        return f"section {SECTION_IDS[section]} was not selected (--sections)"
    return "not measured"


def headlines(bench: Bench) -> tuple[dict[str, float | None], dict[str, Any], dict[str, str]]:
    """The four headline ratios, how each was measured, and which are estimates rather than the full figure."""
    values: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    estimates: dict[str, str] = {}
    tiny = bench.profile is TINY

    def put(
        key: str, section: str, value_of: Callable[[dict[str, Any]], float], info: dict[str, Any]
    ) -> None:
        picked = _pick(bench, section)
        if picked is None:
            values[key] = None
            details[key] = {"value": None, "reason": _missing_reason(bench, section)}
            return
        name, result = picked
        values[key] = value_of(result)
        info = {"value": values[key], "model": name, "width": bench.models[name].width, **info}
        info["per_model"] = {m: value_of(r) for m, r in bench.sections[section].items()}
        if name != HEADLINE_MODEL:
            info["substitute"] = (
                f"measured on {name} (width {info['width']}): {HEADLINE_MODEL} was not in --models"
            )
            estimates[key] = info["substitute"]
        details[key] = info

    # Section results hold one entry per clip, shortest first: the headline uses the longest.
    put("whole_file_network_rtf_2048", "whole_file", lambda r: r[list(r)[-1]]["network_rtf"], {})
    whole = _pick(bench, "whole_file")
    if whole:
        label = list(whole[1])[-1]
        details["whole_file_network_rtf_2048"].update(
            audio=label, how="network seconds / audio seconds, NumPy backend, dynamic model in windows"
        )
        if label != clip_label(LONG_SECONDS):
            estimates.setdefault("whole_file_network_rtf_2048", f"measured on {label} of audio, not 10 min")

    put("seed_loop_over_stream_10min", "streaming", lambda r: r["seed_over_stream_10min"]["value"], {})
    stream = _pick(bench, "streaming")
    if stream:
        info = stream[1]["seed_over_stream_10min"]
        details["seed_loop_over_stream_10min"].update(
            {k: v for k, v in info.items() if k != "value"}, decoder=bench.models[stream[0]].decoder
        )
        if info["stream_extrapolated"]:
            longest = clip_label(bench.profile.longest)
            estimates.setdefault(
                "seed_loop_over_stream_10min",
                f"our stream's 10 min time extrapolated linearly from {longest} (the seed's is always fitted)",
            )

    put("native_client_over_ours", "native_client", lambda r: r["native_client_over_ours"], {})
    native = _pick(bench, "native_client")
    if native:
        label = list(native[1]["clips"])[-1]
        r = native[1]["clips"][label]
        details["native_client_over_ours"].update(
            audio=label,
            how="native client seconds / ours, the smaller of whole file and stream",
            whole_ratio=r["whole_ratio"],
            stream_ratio=r["stream_ratio"],
            same_text_whole=r["whole_same_text"],
            same_text_stream=r["stream_same_text"],
            decoder=native[1]["decoder"],
        )

    put(
        "batched_over_unbatched_16_streams",
        "concurrency",
        lambda r: r["batched_over_unbatched_16_streams"],
        {},
    )
    conc = _pick(bench, "concurrency")
    if conc:
        details["batched_over_unbatched_16_streams"].update(
            how="aggregate audio seconds per wall second, 16 streams, DS_STREAM_BATCHING=true / =false",
            feeding=conc[1]["feeding"],
            audio_per_stream_s=conc[1]["audio_per_stream_s"],
            greedy_decoder_ratio=conc[1].get("greedy", {}).get("ratio"),
        )
    if tiny:
        for key in HEADLINES:
            if values.get(key) is not None:
                note = "tiny profile (tests): seconds of audio, not a figure to quote"
                estimates[key] = f"{note}; {estimates[key]}" if key in estimates else note
    return values, details, estimates


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def print_table(bench: Bench, values: dict[str, float | None], estimates: dict[str, str], out: Any) -> None:
    header = ("model", "section", "metric", "value", "target", "ok")
    rows = [
        (
            r["model"],
            f"{r['section']} {SECTION_NAMES[r['section']].replace('_', ' ')}",
            r["metric"],
            _format(r["value"]),
            r["target"] or "",
            "" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL"),
        )
        for r in bench.rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:{'>' if i in (3,) else '<'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    previous = None
    for row in rows:
        if previous is not None and row[1] != previous:
            print(file=out)
        previous = row[1]
        print(line.format(*row).rstrip(), file=out)
    print(file=out)
    print("headline ratios (each measured within this one run):", file=out)
    for key in HEADLINES:
        value = values.get(key)
        note = estimates.get(key, "")
        text = (
            _format(value)
            if value is not None
            else "null (" + _missing_reason(bench, HEADLINE_SECTIONS[key]) + ")"
        )
        print(f"  {key:36s} {text}" + (f"   [estimate: {note}]" if note else ""), file=out)
    if bench.skipped:
        print("skipped:", file=out)
        for key, reason in bench.skipped.items():
            print(f"  {key}: {reason}", file=out)
    notes = [
        "times are the best of 2-3 runs for clips up to 15 s, else one run; ratios compare runs of this process",
        "RTF = seconds / audio seconds; latency = until the partial of the piece that completes a 16-step chunk",
    ]
    for result in bench.sections.get("concurrency", {}).values():
        notes.append("section 4 feeding: " + result["feeding"])
        break
    if "limit" in bench.sections and "note" in bench.sections["limit"]:
        notes.append("section 5: " + bench.sections["limit"]["note"])
    print("notes:", file=out)
    for note in notes:
        print("  - " + note, file=out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    blas = ""
    with contextlib.suppress(Exception):
        config = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = f"{config['Build Dependencies']['blas']['name']} {config['Build Dependencies']['blas']['version']}"
    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "git_commit": commit,
        "git_dirty": dirty,
        # BLAS threads change small products' speed a lot on a loaded machine: what this run had (after
        # `import app`, which sets the service's default).
        "ignored_ds_settings": _foreign_settings(),
        "dotenv_present": (ROOT / ".env").exists(),  # the server subprocesses would read it
        "blas_thread_env": {k: os.environ[k] for k in BLAS_THREAD_VARS if k in os.environ},
    }


SECTION_IDS = {name: i for i, name in SECTION_NAMES.items()}
HEADLINE_SECTIONS = {
    "whole_file_network_rtf_2048": "whole_file",
    "seed_loop_over_stream_10min": "streaming",
    "native_client_over_ours": "native_client",
    "batched_over_unbatched_16_streams": "concurrency",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "The full run takes about 40 min on 2 cores, more on a busy machine (the first run also makes the\n"
            "width-2048 model, ~2.5 min, and the audio); --quick < 10 min, without sections 3 and 4 and with\n"
            "shorter audio (its estimates are flagged in the JSON). Section 3 needs a Python 3.9 for\n"
            "deepspeech==0.9.3 (tests/native_client.py builds .cache/ds093-venv once)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="< 10 min: sections 1, 2, 5 on 10 s and 60 s of audio"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number to this JSON file")
    parser.add_argument(
        "--sections",
        default="1,2,3,4,5",
        help="comma-separated: 1 whole file, 2 streaming, "
        "3 native client, 4 concurrency, 5 limit (default: all)",
    )
    parser.add_argument(
        "--models",
        default="default,2048",
        help="comma-separated: default, 2048 (random weights, generated once), or model directory paths "
        "(default: default,2048)",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds of audio (tests)
    parser.add_argument("--machine-probe", metavar="JSON", help=argparse.SUPPRESS)  # see machine_probe()
    args = parser.parse_args(argv)
    try:
        args.section_list = sorted({int(s) for s in args.sections.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sections takes numbers 1-5, got {args.sections!r}")
    if not args.section_list or not set(args.section_list) <= set(SECTION_NAMES):
        parser.error(f"--sections takes numbers 1-5, got {args.sections!r}")
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_list:
        parser.error("--models needs at least one model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.machine_probe:
        spec = json.loads(args.machine_probe)
        probe = {
            "sgemm": measure_sgemm(tuple(spec["shape"])),
            "bandwidth": measure_bandwidth(spec["megabytes"]),
        }
        print(json.dumps(probe))
        return 0
    profile = TINY if args.tiny else QUICK if args.quick else FULL
    started = time.monotonic()
    load_start = os.getloadavg()
    bench = Bench(profile, args.section_list, args.model_list)
    try:
        bench.run()
    except BenchError as exc:  # a missing model or tool: one line, no traceback
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 2
    values, details, estimates = headlines(bench)
    wall = time.monotonic() - started
    print_table(bench, values, estimates, sys.stdout)
    print(
        f"\nbench wall time: {wall:.0f} s ({profile.name}); load average {load_start[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end",
        flush=True,
    )
    if args.json:
        report = {
            **values,
            "quick_estimates": estimates,
            "headline_details": details,
            "profile": profile.name,
            "wall_seconds": wall,
            "targets": {
                "whole_file_network_rtf_2048": f"<= {TARGET_NETWORK_RTF}",
                "stream_compute_over_whole_file": f"<= {TARGET_STREAM_OVER_WHOLE}",
                "seed_loop_over_stream_10min": f">= {TARGET_SEED_RATIO}",
                "native_client_over_ours": f">= {TARGET_NATIVE_RATIO}, same transcripts",
                "batched_over_unbatched_16_streams": f">= {TARGET_BATCHED_RATIO}",
                "dense_batched_fraction_of_sgemm": f">= {TARGET_SGEMM_FRACTION}",
            },
            "meta": {
                **machine_info(),
                "argv": sys.argv[1:] if argv is None else list(argv),
                "load_average_start": load_start,
                "load_average_end": os.getloadavg(),
                "beam_width": BEAM_WIDTH,
                "piece_seconds": PIECE_SAMPLES / SAMPLE_RATE,
            },
            "models": {
                name: {"path": m.path, "width": m.width, "decoder": m.decoder, "scorer": m.scorer}
                for name, m in bench.models.items()
            },
            "audio": {c.label: {"path": c.path, "seconds": c.seconds} for c in bench.clips.values()},
            "sections": bench.sections,
            "rows": bench.rows,
            "skipped": bench.skipped,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(report), indent=1) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
