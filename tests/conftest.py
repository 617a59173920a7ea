"""Shared fixtures: small DeepSpeech-architecture models made by the project's own conversion tooling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "OPENBLAS_NUM_THREADS", "1"
)  # as the service runs (app/__init__.py), before NumPy loads

# Beam search in the test process unless a test asks for decoder processes: the suite loads dozens of engines,
# and spawning processes for each would cost seconds apiece (tests/test_decoder_processes.py covers them, and
# servers the tests start inherit this).
os.environ.setdefault("DS_DECODER_PROCESSES", "0")

pytest.register_assert_rewrite("tests.support")  # the shared helpers' asserts explain themselves as tests' do
from tests.support.audio import pcm16, speak  # noqa: E402
from tests.support.models import SMALL_WIDTH  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml's list; tests/test_coreml_mac.py skips them off macOS.
    config.addinivalue_line("markers", "coreml: runs real Core ML (macOS with coremltools; skipped elsewhere)")


@pytest.fixture(scope="session")
def alphabet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.speech.alphabet import ENGLISH

    path = tmp_path_factory.mktemp("alphabet") / "alphabet.txt"
    path.write_text(ENGLISH.to_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint with upstream variable names at width 48."""
    pytest.importorskip("tensorflow")
    from dsconvert.checkpoint_writer import write_checkpoint
    from dsconvert.weights import random_weights

    directory = tmp_path_factory.mktemp("checkpoint")
    write_checkpoint(random_weights(SMALL_WIDTH, seed=7), directory)
    return directory


@pytest.fixture(scope="session")
def small_model_dir(
    tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path, alphabet_file: Path
) -> Path:
    """The model directory `scripts/convert.py` writes for the small checkpoint."""
    from dsconvert.cli import main

    out = tmp_path_factory.mktemp("models") / "small"
    assert (
        main(["--checkpoint", str(small_checkpoint), "--alphabet", str(alphabet_file), "--out", str(out)])
        == 0
    )
    return out


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(
        "turn on the kitchen lights and play some music", tmp_path_factory.mktemp("speech") / "a.wav"
    )


@pytest.fixture(scope="session")
def other_speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(
        "the quick brown fox jumps over the lazy dog",
        tmp_path_factory.mktemp("speech") / "b.wav",
        voice="en-gb",
    )


@pytest.fixture(scope="session")
def speech_pcm(speech_wav: Path) -> bytes:
    return pcm16(speech_wav)


@pytest.fixture(scope="session")
def small_engine(small_model_dir: Path):  # type: ignore[no-untyped-def]
    """The loaded service (NumPy backend, beam 16) on the small random-weight model, shared by tests that build
    apps around it."""
    from app.settings import Settings
    from app.speech.engine import Engine

    return Engine.load(Settings(model_dir=small_model_dir, backend="numpy", beam_width=16))
