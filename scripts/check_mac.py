#!/usr/bin/env python3
"""Check the Core ML backend on this Mac, in one screen: what runs where, whether it agrees with NumPy, how fast.

    .venv/bin/python scripts/check_mac.py                      # models/default, speech from espeak-ng or `say`
    .venv/bin/python scripts/check_mac.py --model-dir models/ds093 --audio talk.m4a --json check.json

Lines: the backend and compute units; the compute plan (the device Core ML prefers for each package's ops,
the LSTM's named); parity with the NumPy backend on the same weights (largest probability difference, same
transcript); speed (whole-file real-time factor, stream chunk latency p50/p95); the GIL stall (a Core ML
prediction holds the GIL: how long a thread that wants to wake every millisecond waits while a whole-file window
runs, at the service's window and at the package's largest); batched streams (a static package converted with
--stream-batch: 8 streams' chunks in one prediction against one each, the same within float16 rounding);
VECLIB_MAXIMUM_THREADS=1 (what app/__init__.py sets) against every core, for Core ML's own CPU work; a cold
start (empty compiled-model cache) against a warm one.
Starts and the VECLIB runs are separate processes (a variable Accelerate reads when it loads; a cold cache).

Exits 0 when the backends agree, 1 when they do not, 2 where Core ML cannot run (not macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402, F401, I001  (sets the BLAS thread variables before NumPy loads)

import numpy as np  # noqa: E402

from app.speech.runtime.coreml_backend import coreml_available  # noqa: E402

SENTENCE = "turn on the kitchen lights and play some music"
SPEECH_SECONDS = 30.0  # the clip is repeated up to this: several whole-file windows, a steady RTF
PIECE = 5120  # 320 ms of 16 kHz samples: what a stream client sends at a time
PROB_TOLERANCE = 2e-2  # float16 on the GPU / Neural Engine against NumPy's float32 (tests/test_coreml_mac.py)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--audio", type=Path, help="any file FFmpeg decodes (default: a synthetic sentence)")
    parser.add_argument("--compute-units", default="ALL", choices=("ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE"))
    parser.add_argument("--cache-dir", type=Path, help="the compiled-model cache (default: the service's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this file")
    parser.add_argument("--child", choices=("load", "network"), help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=Path, help=argparse.SUPPRESS)  # --child network's input (.npy)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = coreml_available()
    if reason is not None:
        print(f"check_mac.py: Core ML cannot run here: {reason}; run this on a Mac with `make serve`'s .venv")
        return 2
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    report = Report()
    ok = check(args, report)
    if args.json:
        args.json.write_text(json.dumps(report.numbers, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


class Report:
    """Prints one aligned line per check as it finishes (a slow step shows where it is) and keeps the numbers."""

    def __init__(self) -> None:
        self.numbers: dict[str, Any] = {}

    def line(self, label: str, text: str, **numbers: Any) -> None:
        print(f"{label:<14}{text}", flush=True)
        self.numbers[label.strip()] = numbers


def check(args: argparse.Namespace, report: Report) -> bool:
    import coremltools

    from app.settings import Settings
    from app.speech.decoding import build_decoder
    from app.speech.engine import Engine
    from app.speech.model_dir import load_model_directory
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel
    from app.speech.runtime.numpy_backend import NumpyAcousticModel

    model_dir = load_model_directory(args.model_dir)
    manifest = model_dir.manifest
    started = time.perf_counter()
    coreml = CoreMLAcousticModel.load(model_dir, args.compute_units, args.cache_dir)
    load_seconds = time.perf_counter() - started
    numpy_model = NumpyAcousticModel.from_file(model_dir.weights_path, manifest.dynamic_max_steps, os.cpu_count() or 1)
    report.line(
        "backend",
        f"coreml, compute units {args.compute_units}; {model_dir.name} (width {manifest.n_hidden}); "
        f"macOS {platform.mac_ver()[0]} {platform.machine()}, coremltools {coremltools.__version__}; "
        f"loaded in {load_seconds:.2f} s ({', '.join(f'{k} {v}' for k, v in coreml.compiled.items())})",
        compute_units=args.compute_units,
        load_seconds=load_seconds,
        compiled=coreml.compiled,
    )
    report_compute_plan(report, coreml.compute_plan)
    samples = speech(args.audio)
    decoder = build_decoder(model_dir, Settings(model_dir=args.model_dir))
    engines = {"coreml": Engine(model_dir, coreml, decoder), "numpy": Engine(model_dir, numpy_model, decoder)}
    ok = report_parity(report, engines, samples)
    report_speed(report, engines, samples)
    report_gil(report, model_dir, coreml, args)
    ok = report_batched(report, coreml) and ok
    windows = windows_of(samples)
    report_veclib(report, args, windows)
    report_starts(report, args)
    from app.speech.runtime.coreml_backend import INPUT_HOLD

    held = INPUT_HOLD.held_bytes() / 1e6
    report.line("input hold", f"{held:.1f} MB of inputs held for Core ML right now", held_mb=held)
    return ok


def report_compute_plan(report: Report, plans: dict[str, dict[str, Any]]) -> None:
    parts = []
    for package, plan in plans.items():
        if "error" in plan:
            parts.append(f"{package}: {plan['error']}")
            continue
        devices = ", ".join(f"{device} {count}" for device, count in plan["devices"].items())
        lstm = ", ".join(plan["ops"].get("lstm", {})) or "none"
        parts.append(f"{package}: {devices} ops (lstm on {lstm})")
    report.line("compute plan", "; ".join(parts), plans=plans)


def report_parity(report: Report, engines: dict[str, Any], samples: np.ndarray) -> bool:
    from app.speech.runtime import LstmState

    windows = windows_of(samples)
    probs = {
        name: engine.model.run_long(windows, LstmState.zeros(engine.model.n_cell_dim))[0]
        for name, engine in engines.items()
    }
    difference = float(np.abs(probs["coreml"] - probs["numpy"]).max())
    argmax = float((probs["coreml"].argmax(-1) == probs["numpy"].argmax(-1)).mean())
    texts = {name: engine.transcribe(samples).transcript.text for name, engine in engines.items()}
    same = texts["coreml"] == texts["numpy"]
    ok = same and difference <= PROB_TOLERANCE
    report.line(
        "parity",
        f"max |p_coreml - p_numpy| {difference:.1e} over {len(windows)} steps (tolerance {PROB_TOLERANCE:.0e}), "
        f"argmax agrees on {argmax:.1%}; transcripts {'the same' if same else 'DIFFER'}: {texts['coreml'][:60]!r}"
        + ("" if same else f" vs {texts['numpy'][:60]!r}"),
        max_difference=difference,
        argmax_agreement=argmax,
        texts=texts,
        ok=ok,
    )
    return ok


def report_speed(report: Report, engines: dict[str, Any], samples: np.ndarray) -> None:
    seconds = len(samples) / 16000
    rtf = {name: best_of(3, partial(engine.transcribe, samples)) / seconds for name, engine in engines.items()}
    latencies = stream_latencies(engines["coreml"], samples)
    p50, p95 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 95))
    report.line(
        "speed",
        f"whole file RTF {rtf['coreml']:.4f} (NumPy {rtf['numpy']:.4f}, {rtf['numpy'] / rtf['coreml']:.1f}x); "
        f"stream chunk -> partial p50 {p50:.1f} ms, p95 {p95:.1f} ms",
        rtf=rtf,
        chunk_ms={"p50": p50, "p95": p95},
    )


def report_gil(report: Report, model_dir: Any, coreml: Any, args: argparse.Namespace) -> None:
    from app.speech.runtime import LstmState
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel

    rng = np.random.default_rng(0)
    state = LstmState.zeros(coreml.n_cell_dim)
    idle = ticker_gap(lambda: time.sleep(0.02), 10)[1]
    chunk = rng.normal(0, 3, (16, 19, 26)).astype(np.float32)
    results = {"chunk": ticker_gap(lambda: coreml.run_chunk(chunk, 16, state), 20)}
    longest = CoreMLAcousticModel.load(
        model_dir, args.compute_units, args.cache_dir, model_dir.manifest.dynamic_max_steps
    )  # the same packages (cached), the package's whole range in one window
    for model in (coreml, longest):
        window = rng.normal(0, 3, (model.max_steps, 19, 26)).astype(np.float32)
        results[f"{model.max_steps} steps"] = ticker_gap(partial(model.run_window, window, state), 5)
    text = ", ".join(f"{name} {call:.1f} ms -> stall {gap:.1f} ms" for name, (call, gap) in results.items())
    report.line(
        "GIL stall",
        f"{text} (a 1 ms ticker's longest wait; idle {idle:.1f} ms; service window {coreml.max_steps} steps)",
        idle_ms=idle,
        **{name: {"call_ms": call, "stall_ms": gap} for name, (call, gap) in results.items()},
    )


def report_batched(report: Report, coreml: Any, streams: int = 8) -> bool:
    """Concurrent streams' chunks as one prediction (a static package converted with --stream-batch) against
    one prediction per stream: the same probabilities and states (float16 rounding), and how much faster."""
    from app.speech.runtime import LstmState

    sizes = coreml.chunk_batch_sizes
    if max(sizes) == 1:
        report.line(
            "batched",
            "static package is batch 1: convert with `scripts/convert.py --stream-batch 1,2,4,8,16` (macOS 15) "
            "to share one prediction between streams",
            batch_sizes=list(sizes),
        )
        return True
    rng = np.random.default_rng(2)
    requests = [
        (rng.normal(0, 3, (16, 19, 26)).astype(np.float32), 16, LstmState.zeros(coreml.n_cell_dim))
        for _ in range(streams)
    ]
    together = coreml.run_chunks(requests)
    alone = [coreml.run_chunk(windows, length, state) for windows, length, state in requests]
    difference = max(
        float(np.abs(a - b).max()) for (a, _), (b, _) in zip(together, alone, strict=True)
    )
    batched_s = best_of(5, partial(coreml.run_chunks, requests))
    rows_s = best_of(5, lambda: [coreml.run_chunk(w, n, s) for w, n, s in requests])
    ok = difference <= PROB_TOLERANCE
    report.line(
        "batched",
        f"{streams} streams' chunks in one prediction {batched_s * 1000:.1f} ms, one each {rows_s * 1000:.1f} ms "
        f"({rows_s / batched_s:.1f}x); max |batched - alone| {difference:.1e} (batch sizes "
        f"{'/'.join(map(str, sizes))})",
        batch_sizes=list(sizes),
        batched_ms=batched_s * 1000,
        one_each_ms=rows_s * 1000,
        speedup=rows_s / batched_s,
        max_difference=difference,
        ok=ok,
    )
    return ok


def report_veclib(report: Report, args: argparse.Namespace, windows: np.ndarray) -> None:
    cores = str(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "windows.npy"
        np.save(path, windows)
        rtf: dict[str, dict[str, float]] = {}
        for units in dict.fromkeys((args.compute_units, "CPU_ONLY")):
            rtf[units] = {}
            for threads in ("1", cores):
                child = run_subprocess(args, "network", {"VECLIB_MAXIMUM_THREADS": threads}, units, ["--windows", str(path)])
                rtf[units][threads] = child["seconds"] / (len(windows) / 50)
    text = "; ".join(
        f"{units}: RTF {values['1']:.4f} with 1, {values[cores]:.4f} with {cores}" for units, values in rtf.items()
    )
    report.line("VECLIB", f"VECLIB_MAXIMUM_THREADS {text} (network only)", rtf=rtf)


def report_starts(report: Report, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        cold = run_subprocess(args, "load", {}, args.compute_units, ["--cache-dir", str(cache)])
        warm = run_subprocess(args, "load", {}, args.compute_units, ["--cache-dir", str(cache)])
    report.line(
        "start",
        f"cold cache {cold['seconds']:.2f} s ({cold['process_seconds']:.1f} s with Python), warm "
        f"{warm['seconds']:.2f} s ({warm['process_seconds']:.1f} s); {', '.join(f'{k} {v}' for k, v in warm['compiled'].items())} "
        "the second time",
        cold=cold,
        warm=warm,
    )


def run_subprocess(
    args: argparse.Namespace, child: str, env: dict[str, str], units: str, extra: list[str]
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", child, "--model-dir", str(args.model_dir), "--compute-units", units]
    if args.cache_dir and "--cache-dir" not in extra:
        command += ["--cache-dir", str(args.cache_dir)]
    started = time.perf_counter()
    done = subprocess.run(command + extra, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"check_mac.py: the {child} child failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """A measurement in a fresh process: `load` (a start) or `network` (whole-file windows through Core ML)."""
    from app.speech.model_dir import load_model_directory
    from app.speech.runtime import LstmState
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel

    model_dir = load_model_directory(args.model_dir)
    started = time.perf_counter()
    model = CoreMLAcousticModel.load(model_dir, args.compute_units, args.cache_dir)
    seconds = time.perf_counter() - started
    if args.child == "load":
        return {"seconds": seconds, "compiled": model.compiled}
    windows = np.load(args.windows)
    model.run_long(windows[: model.max_steps], LstmState.zeros(model.n_cell_dim))  # warm
    network = best_of(3, lambda: model.run_long(windows, LstmState.zeros(model.n_cell_dim)))
    return {"seconds": network, "veclib": os.environ.get("VECLIB_MAXIMUM_THREADS")}


def speech(audio: Path | None) -> np.ndarray:
    """16 kHz samples: the given file, else a spoken sentence (espeak-ng, else macOS `say`), repeated with pauses
    to SPEECH_SECONDS."""
    from app.speech.audio import decode_audio

    if audio is not None:
        return decode_audio(audio.read_bytes())[0]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "speech.aiff"
        if shutil.which("espeak-ng"):
            subprocess.run(["espeak-ng", "-w", str(path.with_suffix(".wav")), SENTENCE], check=True)
            path = path.with_suffix(".wav")
        else:
            subprocess.run(["say", "-o", str(path), SENTENCE], check=True)
        clip = decode_audio(path.read_bytes())[0]
    pause = np.zeros(8000, np.float32)
    repeats = max(1, int(np.ceil(SPEECH_SECONDS * 16000 / (len(clip) + len(pause)))))
    return np.concatenate([np.concatenate([clip, pause])] * repeats)


def windows_of(samples: np.ndarray) -> np.ndarray:
    from app.speech.features import context_windows, mfcc

    return context_windows(mfcc(samples))


def stream_latencies(engine: Any, samples: np.ndarray) -> list[float]:
    """Seconds each 320 ms piece takes through a stream (features, chunks through the model, partial)."""
    session = engine.open_stream()
    latencies = []
    for start in range(0, len(samples), PIECE):
        began = time.perf_counter()
        session.feed(samples[start : start + PIECE])
        latencies.append(time.perf_counter() - began)
    session.finish()
    return latencies


def best_of(repeats: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return min(times)


def ticker_gap(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median ms of `call`, longest ms a thread asking to wake every 1 ms waited while `call` ran repeatedly).

    A call that holds the GIL shows a wait as long as the call; one that released it would show about 1 ms."""
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    time.sleep(0.02)
    durations = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        durations.append(time.perf_counter() - began)
        time.sleep(0.005)  # the ticker runs between calls, so each call's stall is its own
    stop.set()
    ticker.join()
    return statistics.median(durations) * 1000, max(gaps) * 1000


if __name__ == "__main__":
    sys.exit(main())
