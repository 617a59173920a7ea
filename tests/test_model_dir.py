"""A missing, incomplete, corrupt or inconsistent model directory is refused with one clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.speech import model_dir as md


@pytest.fixture
def model_copy(tmp_path: Path, small_model_dir: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(small_model_dir, copy)
    return copy


def test_a_good_directory_loads(model_copy: Path) -> None:
    loaded = md.load_model_directory(model_copy)
    assert loaded.manifest.n_classes == 29 and loaded.weights_path.is_file()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(md.ModelDirectoryError, match="does not exist; create it with scripts/convert.py"):
        md.load_model_directory(tmp_path / "nope")


def test_no_manifest(model_copy: Path) -> None:
    (model_copy / md.MANIFEST_NAME).unlink()
    with pytest.raises(md.ModelDirectoryError, match="has no manifest.json"):
        md.load_model_directory(model_copy)


def test_garbled_manifest(model_copy: Path) -> None:
    (model_copy / md.MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(md.ModelDirectoryError, match="is not a valid manifest"):
        md.load_model_directory(model_copy)


def test_missing_artifact(model_copy: Path) -> None:
    (model_copy / md.WEIGHTS_NAME).unlink()
    with pytest.raises(md.ModelDirectoryError, match="weights.npz is missing"):
        md.load_model_directory(model_copy)


def test_corrupt_artifact(model_copy: Path) -> None:
    with (model_copy / md.WEIGHTS_NAME).open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\xff\x00\xff")
    with pytest.raises(md.ModelDirectoryError, match="does not match its sha256"):
        md.load_model_directory(model_copy)


def test_corrupt_file_inside_a_package(model_copy: Path) -> None:
    weights = next((model_copy / md.STATIC_PACKAGE).rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(md.ModelDirectoryError, match="static.mlpackage does not match"):
        md.load_model_directory(model_copy)


def test_wrong_alphabet(model_copy: Path) -> None:
    manifest = json.loads((model_copy / md.MANIFEST_NAME).read_text())
    (model_copy / md.ALPHABET_NAME).write_text("a\nb\n")
    manifest["files"][md.ALPHABET_NAME] = md.sha256_of(model_copy / md.ALPHABET_NAME)
    (model_copy / md.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(md.ModelDirectoryError, match="does not match the model"):
        md.load_model_directory(model_copy)


def test_newer_format(model_copy: Path) -> None:
    manifest = json.loads((model_copy / md.MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (model_copy / md.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(md.ModelDirectoryError, match="format_version 99"):
        md.load_model_directory(model_copy)
