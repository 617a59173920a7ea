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
    python scripts/bench.py --jobs --quick        # batch jobs alone (scripts/benchmarks/jobs.py): throughput
                                                  # with 1 and 2 worker processes, the queue's added latency
"""

# The entry point and its CLI; the sections live in scripts/benchmarks/ (one module each), and the real uvicorn
# they measure is started by the tests' harness, tests/support/server.py.

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `scripts.benchmarks` and `tests.support` resolve from the repository root, whether this file runs as a script
# (then sys.path[0] is scripts/) or is loaded by path (tests/test_bench.py).
sys.path.insert(0, str(ROOT))

# The service's package before NumPy (scripts.benchmarks.common imports it first as well): it sets its BLAS
# thread defaults before OpenBLAS loads, and the in-process measurements must run NumPy as the server does.
import app  # noqa: E402, F401, I001

from scripts.benchmarks.common import (  # noqa: E402
    BEAM_WIDTH,
    FULL,
    PIECE_SAMPLES,
    QUICK,
    SECTION_NAMES,
    TINY,
    BenchError,
    completing_pieces,
    flops_per_step,
)
from scripts.benchmarks.jobs import JOBS_FULL, JOBS_QUICK, JOBS_TINY, run_jobs_bench  # noqa: E402
from scripts.benchmarks.limits import measure_bandwidth, measure_sgemm  # noqa: E402
from scripts.benchmarks.report import headlines, print_table, write_json  # noqa: E402
from scripts.benchmarks.run import Bench  # noqa: E402
from scripts.benchmarks.streaming import fit_quadratic  # noqa: E402

# What the module offers besides `main` (tests/test_bench.py loads this file by path and reaches them here).
__all__ = [
    "BEAM_WIDTH",
    "PIECE_SAMPLES",
    "QUICK",
    "Bench",
    "completing_pieces",
    "fit_quadratic",
    "flops_per_step",
    "headlines",
    "main",
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "The full run takes about 40 min on 2 cores, more on a busy machine (the first run also makes the\n"
            "width-2048 model, ~2.5 min, and the audio); --quick < 10 min, without sections 3 and 4 and with\n"
            "shorter audio (its estimates are flagged in the JSON). Section 3 needs a Python 3.9 for\n"
            "deepspeech==0.9.3 (tests/support/native_client.py builds .cache/ds093-venv once)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="< 10 min: sections 1, 2, 5 on 10 s and 60 s of audio"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number to this JSON file")
    parser.add_argument(
        "--jobs",
        action="store_true",
        help="instead of the sections: batch jobs (needs redis-server) on the first of --models, jobs per second "
        "with one and two `python -m app.worker` processes and the latency the queue adds to a short file",
    )
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
    if args.jobs:
        jobs_profile = JOBS_TINY if args.tiny else JOBS_QUICK if args.quick else JOBS_FULL
        return run_jobs_bench(jobs_profile, args.model_list[0], args.json)
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
        argv_used = sys.argv[1:] if argv is None else list(argv)
        write_json(args.json, bench, values, details, estimates, wall, load_start, argv_used)
    return 0


if __name__ == "__main__":
    sys.exit(main())
