"""Write a complete model directory atomically: nothing half-written is ever left at the destination."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.speech import model_dir as md
from app.speech.alphabet import Alphabet
from dsconvert.weights import DeepSpeechWeights


class OutputDirectoryError(RuntimeError):
    """The destination cannot be written (exists and --force not given, or not writable)."""


def tool_versions() -> dict[str, str]:
    import coremltools
    import tensorflow

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tensorflow.__version__,
        "coremltools": coremltools.__version__,
    }


def write_model_directory(
    out: Path,
    weights: DeepSpeechWeights,
    alphabet: Alphabet,
    write_artifacts: Callable[[Path], None],
    manifest_extra: dict[str, Any],
    scorer: Path | None = None,
    force: bool = False,
) -> md.Manifest:
    """Stage everything in a sibling temp directory, then rename it into place in one step.

    `write_artifacts(staging)` writes the packages and graphs; this function adds weights, alphabet, scorer and
    the manifest with the sha256 of every artifact.
    """
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputDirectoryError(f"{out} exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user (launchd)
        write_artifacts(staging)
        np.savez(staging / md.WEIGHTS_NAME, **weights.arrays)
        (staging / md.ALPHABET_NAME).write_text(alphabet.to_text(), encoding="utf-8")
        scorer_info = None
        if scorer is not None:
            shutil.copyfile(scorer, staging / md.SCORER_NAME)
            scorer_info = {"source": Path(scorer).name}  # a name: the manifest travels, paths do not
        files = {
            entry.name: md.sha256_of(entry)
            for entry in sorted(staging.iterdir())
            if entry.name != md.MANIFEST_NAME
        }
        manifest = md.Manifest(
            n_hidden=weights.n_hidden,
            n_cell_dim=weights.n_cell_dim,
            n_classes=weights.n_classes,
            alphabet=list(alphabet.labels),
            files=files,
            tools=tool_versions(),
            scorer=scorer_info,
            **manifest_extra,
        )
        (staging / md.MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _replace(staging: Path, out: Path) -> None:
    """Rename staging → out; an existing `out` is moved aside first and removed only once the new one is in."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def python_command() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
