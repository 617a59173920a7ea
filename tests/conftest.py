"""Shared fixtures: small DeepSpeech-architecture models made by the project's own conversion tooling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SMALL_WIDTH = 48


@pytest.fixture(scope="session")
def alphabet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.alphabet import ENGLISH

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
