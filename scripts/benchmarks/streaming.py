"""Section 2: our StreamSession fed 320 ms pieces, against the coremltools guide's loop (the seed)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import (
    LONG_SECONDS,
    PAIRED_MAX_SECONDS,
    PIECE_SAMPLES,
    SAMPLE_RATE,
    STATIC_STEPS,
    TARGET_SEED_RATIO,
    TARGET_STREAM_OVER_WHOLE,
    best_of,
    clip_label,
    completing_pieces,
    log,
    paired,
    percentile,
    repeats_for,
)
from .models import LoadedModel, NetworkTimer
from .whole_file import whole_file_stages

if TYPE_CHECKING:
    from .run import Bench


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
