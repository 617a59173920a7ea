"""Real Core ML on a Mac: the shipped models/default (its .mlpackages) through CoreMLAcousticModel, against the
NumPy backend on the same weights.

Marked `coreml` and skipped with the reason where Core ML cannot predict (Linux, or no coremltools); on a Mac
`pytest -m coreml tests/test_coreml_mac.py -s` runs them and prints the figures. The crash-after-idle and startup
tests run in child processes, so a SIGSEGV is a failed test rather than a dead pytest. The last test runs
everywhere else: scripts/check_mac.py refuses in one line off macOS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.speech.engine import Engine
from app.speech.runtime.coreml_backend import coreml_available

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
REASON = coreml_available()
needs_core_ml = pytest.mark.skipif(REASON is not None, reason=f"needs Core ML: {REASON}")
# float16 on the GPU / Neural Engine against NumPy's float32; a first guess, to confirm on Macs (check_mac.py
# prints the figure): the transcripts must be the same regardless.
PROB_TOLERANCE = 2e-2
PIECE = 5120  # 320 ms: what a stream client sends at a time


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Engine]:
    from app.settings import Settings
    from app.speech.decoding import build_decoder
    from app.speech.model_dir import load_model_directory
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel
    from app.speech.runtime.numpy_backend import NumpyAcousticModel

    model_dir = load_model_directory(DEFAULT_MODEL)
    coreml = CoreMLAcousticModel.load(model_dir, cache_dir=tmp_path_factory.mktemp("coreml-cache"))
    numpy_model = NumpyAcousticModel.from_file(model_dir.weights_path, model_dir.manifest.dynamic_max_steps)
    decoder = build_decoder(model_dir, Settings(model_dir=DEFAULT_MODEL))
    return {"coreml": Engine(model_dir, coreml, decoder), "numpy": Engine(model_dir, numpy_model, decoder)}


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> np.ndarray:
    import soundfile

    samples, rate = soundfile.read(speech_wav, dtype="float32")
    assert rate == 16000
    return samples


def _probs(engine: Engine, samples: np.ndarray) -> np.ndarray:
    from app.speech.features import context_windows, mfcc
    from app.speech.runtime import LstmState

    model = engine.model
    return model.run_long(context_windows(mfcc(samples)), LstmState.zeros(model.n_cell_dim))[0]


def _stream(engine: Engine, samples: np.ndarray) -> str:
    session = engine.open_stream()
    for start in range(0, len(samples), PIECE):
        session.feed(samples[start : start + PIECE])
    return str(session.finish().text)


def _compare(engines: dict[str, Engine], samples: np.ndarray, what: str) -> None:
    coreml, numpy_probs = _probs(engines["coreml"], samples), _probs(engines["numpy"], samples)
    difference = float(np.abs(coreml - numpy_probs).max())
    texts = {name: engine.transcribe(samples).transcript.text for name, engine in engines.items()}
    print(f"\n{what}: {len(coreml)} steps, max probability difference {difference:.2e}, {texts['coreml']!r}")
    assert difference <= PROB_TOLERANCE
    assert texts["coreml"] == texts["numpy"]


@pytest.mark.coreml
@needs_core_ml
def test_a_whole_file_matches_numpy(engines: dict[str, Engine], speech: np.ndarray) -> None:
    _compare(engines, speech, "whole file")


@pytest.mark.coreml
@needs_core_ml
def test_a_whole_file_past_one_window_matches_numpy(engines: dict[str, Engine], speech: np.ndarray) -> None:
    pause = np.zeros(8000, np.float32)
    long = np.concatenate([speech, pause, speech, pause, speech, pause, speech])
    window = engines["coreml"].model.max_steps
    assert len(long) / 320 > 2 * window, "the file must span several Core ML windows"
    _compare(engines, long, f"{len(long) / 16000:.0f} s in windows of {window} steps")


@pytest.mark.coreml
@needs_core_ml
def test_a_stream_matches_numpy(engines: dict[str, Engine], speech: np.ndarray) -> None:
    texts = {name: _stream(engine, speech) for name, engine in engines.items()}
    print(f"\nstream: {texts['coreml']!r}")
    assert texts["coreml"] == texts["numpy"]


@pytest.mark.coreml
@needs_core_ml
def test_concurrent_streams_each_get_their_own_transcript(
    engines: dict[str, Engine], speech: np.ndarray, other_speech_wav: Path
) -> None:
    import soundfile

    other = soundfile.read(other_speech_wav, dtype="float32")[0]
    clips = [speech, other] * 4
    alone = [_stream(engines["coreml"], clip) for clip in clips[:2]]
    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(lambda clip: _stream(engines["coreml"], clip), clips))
    assert together == alone * 4


def _macos_major() -> int:
    import platform

    release = platform.mac_ver()[0]
    return int(release.split(".")[0]) if release else 0


@pytest.mark.coreml
@needs_core_ml
@pytest.mark.skipif(_macos_major() < 15, reason="a batched static package needs macOS 15 (enumerated shapes)")
def test_a_batched_static_package_shares_one_prediction_between_streams(
    tmp_path: Path, engines: dict[str, Engine], speech: np.ndarray, other_speech_wav: Path
) -> None:
    """The default model converted from its frozen graph with --stream-batch 1,2,4,8: 5 streams' chunks in one
    prediction equal each chunk alone (float16 rounding), and streams through the batcher get the batch-1
    package's transcripts."""
    import soundfile

    from app.settings import Settings
    from app.speech.engine import stream_model_for
    from app.speech.model_dir import load_model_directory
    from app.speech.runtime import LstmState
    from app.speech.runtime.coreml_backend import CoreMLAcousticModel
    from dsconvert.cli import main

    out = tmp_path / "batched"
    args = [
        "--graph",
        str(DEFAULT_MODEL / "static_graph.pb"),
        "--alphabet",
        str(DEFAULT_MODEL / "alphabet.txt"),
    ]
    assert main([*args, "--out", str(out), "--stream-batch", "1,2,4,8"]) == 0
    model = CoreMLAcousticModel.load(load_model_directory(out), cache_dir=tmp_path / "cache")
    assert model.chunk_batch_sizes == (1, 2, 4, 8)
    rng = np.random.default_rng(3)
    requests = [
        (rng.normal(0, 3, (16, 19, 26)).astype(np.float32), 16, LstmState.zeros(model.n_cell_dim))
        for _ in range(5)
    ]
    for (got, got_state), (windows, length, state) in zip(model.run_chunks(requests), requests, strict=True):
        want, want_state = model.run_chunk(windows, length, state)
        assert float(np.abs(got - want).max()) <= PROB_TOLERANCE
        assert float(np.abs(got_state.h - want_state.h).max()) <= PROB_TOLERANCE
    batched = Engine(
        engines["coreml"].model_dir,
        engines["coreml"].model,
        engines["coreml"].decoder,
        stream_model_for(model, Settings(model_dir=DEFAULT_MODEL)),
    )
    clips = [speech, soundfile.read(other_speech_wav, dtype="float32")[0]] * 2
    alone = [_stream(engines["coreml"], clip) for clip in clips]
    with ThreadPoolExecutor(len(clips)) as pool:
        assert list(pool.map(lambda clip: _stream(batched, clip), clips)) == alone


IDLE_CHILD = """
import sys, time
from pathlib import Path
import numpy as np
from app.speech.model_dir import load_model_directory
from app.speech.runtime import LstmState
from app.speech.runtime.coreml_backend import CoreMLAcousticModel

model = CoreMLAcousticModel.load(load_model_directory(sys.argv[1]), cache_dir=Path(sys.argv[2]))
rng = np.random.default_rng(0)
for _ in range(3):
    state = LstmState.zeros(model.n_cell_dim)
    for _ in range(20):
        _, state = model.run_chunk(rng.normal(0, 3, (16, 19, 26)).astype(np.float32), 16, state)
    model.run_window(rng.normal(0, 3, (model.max_steps, 19, 26)).astype(np.float32), state)
    # Quiet for 3 s (Core ML releases what it still holds, from its own queue, about 1 s in) while Python
    # allocates and frees: a release without the GIL would corrupt this heap.
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        junk = [object() for _ in range(1000)]
        time.sleep(0.001)
print("survived")
"""


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.coreml
@needs_core_ml
def test_predictions_after_an_idle_spell_do_not_crash(tmp_path: Path) -> None:
    done = _child(IDLE_CHILD, str(DEFAULT_MODEL), str(tmp_path / "cache"))
    assert done.returncode == 0, (
        f"exit {done.returncode} (-11: SIGSEGV, Core ML released an input without the GIL): {done.stderr[-2000:]}"
    )
    assert done.stdout.strip().endswith("survived")


START_CHILD = """
import json, sys, time
from pathlib import Path
from app.speech.model_dir import load_model_directory
from app.speech.runtime.coreml_backend import CoreMLAcousticModel

model_dir = load_model_directory(sys.argv[1])
started = time.perf_counter()
model = CoreMLAcousticModel.load(model_dir, cache_dir=Path(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - started, "compiled": model.compiled}))
"""


@pytest.mark.coreml
@needs_core_ml
def test_a_warm_cache_starts_faster_and_nothing_leaks_into_tmpdir(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    starts = []
    for _ in range(2):
        done = _child(START_CHILD, str(DEFAULT_MODEL), str(tmp_path / "cache"), env={"TMPDIR": str(tmpdir)})
        assert done.returncode == 0, done.stderr[-2000:]
        starts.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = starts
    print(f"\nstart: cold cache {cold['seconds']:.2f} s, warm {warm['seconds']:.2f} s")
    assert cold["compiled"] == {"static": "compiled", "dynamic": "compiled"}
    assert warm["compiled"] == {"static": "cached", "dynamic": "cached"}
    assert warm["seconds"] < cold["seconds"]
    leaked = [path for path in tmpdir.rglob("*.mlmodelc")]
    assert not leaked, f"compiled copies left in $TMPDIR: {leaked}"


@pytest.mark.coreml
@needs_core_ml
def test_info_reports_where_core_ml_runs_the_ops(engines: dict[str, Engine]) -> None:
    runtime = engines["coreml"].info()["runtime"]
    assert isinstance(runtime, dict)
    plans = runtime["compute_plan"]
    print(f"\ncompute plan: {json.dumps(plans)}")
    assert set(plans) == {"static", "dynamic"}
    for plan in plans.values():
        if "error" in plan:  # MLComputePlan needs macOS 14.4; the entry says why instead
            assert plan["error"].startswith("no compute plan:")
            continue
        assert "lstm" in plan["ops"], "the packages run MIL's core lstm op"
        assert set(plan["devices"]) <= {"CPU", "GPU", "NeuralEngine", "unknown"}


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off macOS")
def test_check_mac_says_in_one_line_that_core_ml_cannot_run_here() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_mac.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert "Core ML cannot run here" in line and sys.platform in line
