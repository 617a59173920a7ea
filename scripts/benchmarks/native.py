"""Section 3: the official DeepSpeech 0.9.3 native client on the frozen static graph of the same model."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import Clip
from .common import (
    BEAM_WIDTH,
    CACHE,
    PIECE_SAMPLES,
    TARGET_NATIVE_RATIO,
    BenchError,
    best_of,
    clip_label,
    log,
    normalise,
    percentile,
    repeats_for,
    text_similarity,
)
from .models import LoadedModel
from .streaming import stream_ours

if TYPE_CHECKING:
    from .run import Bench


# Runs inside the Python 3.9 venv that tests/support/native_client.py builds (deepspeech==0.9.3).
# Python 3.6-compatible.
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
    from tests.support.native_client import ensure_native_client

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
