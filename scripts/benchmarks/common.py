"""Constants, profiles, targets, logging and the measuring helpers every section of the bench uses."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The service's package before NumPy: it sets its BLAS thread defaults before OpenBLAS loads, and the in-process
# measurements must run NumPy as the server does.
import app  # noqa: F401

# isort: split
import numpy as np

if TYPE_CHECKING:
    from .models import LoadedModel

ROOT = Path(__file__).resolve().parent.parent.parent

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
    "beam_streams_processes_over_one",
)
HEADLINE_MODEL = "2048"  # headlines are taken from this model when it ran, else from the widest one that did

# The targets the table checks (value, comparison).
TARGET_NETWORK_RTF = 0.08
TARGET_STREAM_OVER_WHOLE = 1.2
TARGET_SEED_RATIO = 50.0
TARGET_NATIVE_RATIO = 4.0
TARGET_BATCHED_RATIO = 2.5
TARGET_PROCESSES_RATIO = 1.7  # on 2 cores: decoding in a decoder process beside the service's
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


SECTION_NAMES = {1: "whole_file", 2: "streaming", 3: "native_client", 4: "concurrency", 5: "limit"}
SECTION_IDS = {name: i for i, name in SECTION_NAMES.items()}
HEADLINE_SECTIONS = {
    "whole_file_network_rtf_2048": "whole_file",
    "seed_loop_over_stream_10min": "streaming",
    "native_client_over_ours": "native_client",
    "batched_over_unbatched_16_streams": "concurrency",
    "beam_streams_processes_over_one": "concurrency",
}


def foreign_settings() -> list[str]:
    """DS_* variables of the caller's environment, which the bench ignores: its settings are its own."""
    return sorted(
        k for k in os.environ if k.startswith("DS_") and k not in ("DS_NATIVE_VENV", "DS_NATIVE_PYTHON")
    )


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat); 0 where /proc has none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def child_pids(pid: int) -> list[int]:
    """A process's live children (its decoder processes), from /proc/<pid>/task/*/children."""
    pids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
    return pids


class CpuMeter:
    """CPU seconds a process and, separately, its children used while a block ran."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.own = self.children = 0.0

    def _read(self) -> tuple[float, dict[int, float]]:
        return cpu_seconds(self.pid), {child: cpu_seconds(child) for child in child_pids(self.pid)}

    def __enter__(self) -> CpuMeter:
        self._before = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        own, children = self._read()
        self.own = own - self._before[0]
        self.children = sum(t - self._before[1].get(child, 0.0) for child, t in children.items())


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
