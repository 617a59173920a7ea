"""scripts/endpoint_quality.py on two short recordings of fresh espeak-ng speech with the shipped model.

Each of 8 sentences (2 recordings of 4) is followed by a real pause of 0.8-2.0 s and holds a 0.2-0.5 s
"breath" at a word boundary. At the service's default (700 ms) every pause is cut and no breath is, as on the
held-out set (scripts/endpoint_quality.py's full run); at 300 ms some breath is split, so the recordings do
exercise the difference.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.audio import speak

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "default"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "manifest.json").exists(),
    reason="models/default is not built (make default-model, or scripts/train_default.py)",
)

SENTENCES = [
    ("turn on the kitchen lights and play some music", "en-us", 160),
    ("the quick brown fox jumps over the lazy dog", "en-gb", 170),
    ("set a timer for twenty minutes please", "en-us", 150),
    ("what is the weather like in the mountains today", "en-gb", 160),
    ("remind me to call my sister after dinner", "en-us", 180),
    ("open the garage door and switch off the alarm", "en-gb", 150),
    ("seven hundred and forty two people came to the show", "en-us", 170),
    ("the library closes at nine on weekdays", "en-gb", 160),
]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "endpoint_quality", ROOT / "scripts" / "endpoint_quality.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


eq = _load_script()


@pytest.fixture(scope="module")
def engine() -> Any:
    from app.settings import Settings
    from app.speech.engine import Engine

    return Engine.load(Settings(model_dir=str(MODEL_DIR), backend="numpy"))


@pytest.fixture(scope="module")
def recordings(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    from app.speech.audio import decode_audio

    directory = tmp_path_factory.mktemp("endpoint_quality")
    sentences = []
    for i, (text, voice, speed) in enumerate(SENTENCES):
        wav = speak(text, directory / f"s{i}.wav", voice, speed)
        samples = eq.trim(decode_audio(wav.read_bytes())[0])
        sentences.append(eq.Sentence(samples, text, eq.word_gaps(engine, samples)))
    options = eq.BuildOptions(per_recording=4, breath_share=1.0, seed=3)
    return list(eq.build_recordings(sentences, options))


def test_recordings_hold_the_pauses_and_breaths(recordings: list[Any]) -> None:
    assert len(recordings) == 2
    for recording in recordings:
        assert len(recording.pauses) == len(recording.sentences) == 4
        assert len(recording.breaths) == 4  # every sentence has several words, so a gap for its breath
        for (start, end), (s_start, s_end) in zip(recording.breaths, recording.sentences, strict=True):
            assert s_start < start < end < s_end and 0.2 <= end - start <= 0.5
        for (start, end), (_, s_end) in zip(recording.pauses, recording.sentences, strict=True):
            assert start == s_end and 0.8 <= end - start <= 2.0


def test_default_silence_cuts_every_pause_and_no_breath(engine: Any, recordings: list[Any]) -> None:
    detectors = eq.Detectors(silence_ms=(300, 700), energy_db=(-35.0,))
    rows = {
        (row["detector"], row["silence_ms"]): row
        for row in eq.score_recordings(engine, recordings, noise_dbfs=-60.0, detectors=detectors)
    }
    default = rows["blank", 700]
    assert default["recall"] == 1.0, default
    assert default["breaths_split"] == 0, default
    assert default["breaths"] == 8
    assert rows["blank", 300]["breaths_split"] > 0, rows["blank", 300]  # too short a silence splits breaths
    assert "delay" in eq.format_table(list(rows.values()))
    json.dumps(list(rows.values()))  # the rows are what --out writes


def test_energy_frames_and_scoring() -> None:
    import numpy as np

    samples = np.concatenate([np.full(3200, 0.3, np.float32), np.zeros(3200, np.float32)])
    speech = eq.energy_speech(eq.with_noise(samples, -60.0, seed=0), -35.0)
    assert speech[:10].all() and not speech[10:].any()
    recording = eq.Recording(samples, pauses=[(1.0, 1.2)], breaths=[(0.4, 0.6)], sentences=[(0.3, 1.0)])
    score = eq.Score()
    score.add([55, 70, 20], recording, silence_s=0.3)  # 1.1 s (pause), 1.4 s (past its end + 0.1), 0.4 s
    summary = score.summary()
    assert (summary["cuts"], summary["correct"], summary["recall"]) == (3, 1, 1.0)
    assert (summary["breaths_split"], summary["sentence_splits"]) == (1, 1)
    assert eq.breath_point(eq.Sentence(samples, "x"), random.Random(0)) is None
