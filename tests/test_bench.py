"""scripts/bench.py on the shipped default model with seconds of audio (the hidden --tiny profile): the JSON has
the headline keys with finite numbers and the transcripts it compares are not empty. The native-client part
runs only where its Python 3.9 venv is already cached (building it is not this test's business)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def needs_audio_and_model() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    if not (ROOT / "models" / "default" / "manifest.json").exists():
        pytest.skip("models/default is missing")


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_tiny_bench_writes_every_headline(bench: ModuleType, tmp_path: Path) -> None:
    needs_audio_and_model()
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--models", "default", "--sections", "1,2,4,5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in (
        "whole_file_network_rtf_2048",
        "seed_loop_over_stream_10min",
        "batched_over_unbatched_16_streams",
    ):
        assert finite(report[key]), (key, report[key], report["skipped"])
        assert report[key] > 0
        assert key in report["quick_estimates"]  # tiny, and measured on default rather than width 2048
    assert "native_client_over_ours" in report and report["native_client_over_ours"] is None
    assert "not selected" in report["headline_details"]["native_client_over_ours"]["reason"]
    assert report["headline_details"]["seed_loop_over_stream_10min"]["extrapolated"] is True
    assert not report["skipped"]

    whole = report["sections"]["whole_file"]["default"]["3 s"]
    stream = report["sections"]["streaming"]["default"]
    concurrency = report["sections"]["concurrency"]["default"]
    texts = [
        whole["text"],
        whole["engine_text"],
        whole["http"]["text"],
        stream["clips"]["3 s"]["text"],
        stream["seed"]["3 s"]["text"],
        concurrency["batched"]["16"]["text"],
        concurrency["unbatched"]["16"]["text"],
    ]
    assert all(text.strip() for text in texts), texts
    assert concurrency["batched"]["16"]["all_finals_identical"]
    greedy = concurrency["greedy"]  # the same pair with greedy decoding: batching's effect on the network alone
    assert finite(greedy["ratio"]) and greedy["ratio"] > 0
    assert greedy["batched"]["text"].strip() and greedy["batched"]["all_finals_identical"]
    for stage in ("decode_audio_rtf", "features_rtf", "network_rtf", "decoder_rtf"):
        assert finite(whole[stage]) and whole[stage] > 0
    assert finite(stream["clips"]["3 s"]["latency_p95_s"])
    assert finite(report["sections"]["limit"]["sgemm"]["flops_per_s"])
    assert finite(report["sections"]["limit"]["bandwidth"]["bytes_per_s"])
    assert {"model", "section", "metric", "value", "target", "ok"} <= set(report["rows"][0])


def test_tiny_native_client(bench: ModuleType, tmp_path: Path) -> None:
    needs_audio_and_model()
    from tests.support.native_client import DEFAULT_VENV, MARKER, ensure_native_client

    if not (DEFAULT_VENV / MARKER).exists():
        pytest.skip(
            f"the native client venv is not cached in {DEFAULT_VENV} (tests/test_native_client.py builds it)"
        )
    if isinstance(ensure_native_client(), str):
        pytest.skip("the native client is unavailable")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--models", "default", "--sections", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert finite(report["native_client_over_ours"]), report["skipped"]
    clip = report["sections"]["native_client"]["default"]["clips"]["3 s"]
    for text in (
        clip["native"]["text"],
        clip["native"]["stream_text"],
        clip["ours_text"],
        clip["ours_stream_text"],
    ):
        assert text.strip()
    assert clip["native"]["beam_width"] == bench.BEAM_WIDTH


def test_quick_leaves_native_and_concurrency_null_with_a_reason(bench: ModuleType) -> None:
    run = bench.Bench(bench.QUICK, [1, 2, 3, 4, 5], [])
    assert run.plan() == [1, 2, 5]
    values, details, _ = bench.headlines(run)
    for key in ("native_client_over_ours", "batched_over_unbatched_16_streams"):
        assert values[key] is None
        assert "--quick" in details[key]["reason"]


def test_seed_fit_and_chunk_bookkeeping(bench: ModuleType) -> None:
    from app.speech.features import StreamingFeatures

    a, b = bench.fit_quadratic([10, 20, 40, 80], [0.002 * t * t + 0.05 * t for t in (10, 20, 40, 80)])
    assert a == pytest.approx(0.002) and b == pytest.approx(0.05)
    # The pieces said to complete a chunk are exactly those after which the native client's buffers hold
    # another 16 windows.
    samples = np.random.default_rng(0).standard_normal(16000 * 3 + 777).astype(np.float32) * 0.1
    features = StreamingFeatures()
    windows = 0
    completes = []
    for start in range(0, len(samples), bench.PIECE_SAMPLES):
        before = windows // 16
        windows += len(features.push(samples[start : start + bench.PIECE_SAMPLES]))
        completes.append(windows // 16 > before)
    assert completes == bench.completing_pieces(len(samples))
    assert bench.flops_per_step(2048) == pytest.approx(
        2 * (494 * 2048 + 3 * 2048**2 + 8 * 2048**2 + 29 * 2048)
    )
