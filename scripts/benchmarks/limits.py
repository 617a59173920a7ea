"""Section 5: this machine's sgemm and memory bandwidth, and the fraction of that limit each stage reaches."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import (
    BATCHED_STREAMS,
    BLAS_THREAD_VARS,
    STATIC_STEPS,
    STEP_SECONDS,
    TARGET_SGEMM_FRACTION,
    BenchError,
    Profile,
    dense_flops_per_step,
    flops_per_step,
    limit_seconds_per_step,
    log,
    recurrent_bytes_per_step,
)
from .models import LoadedModel

if TYPE_CHECKING:
    from .run import Bench

BENCH_SCRIPT = Path(__file__).resolve().parent.parent / "bench.py"  # machine_probe runs its --machine-probe


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
    """sgemm and bandwidth with every core: a fresh process (scripts/bench.py --machine-probe) whose BLAS may use
    them all, whatever threads the service gives itself."""
    cores = str(os.cpu_count() or 1)
    done = subprocess.run(
        [sys.executable, str(BENCH_SCRIPT), "--machine-probe"]
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
