"""The model directory that `scripts/convert.py` writes and the service loads.

Layout: `manifest.json` (feature parameters, widths, alphabet, sha256 of every artifact, tool versions),
`weights.npz` (float32 weights by upstream variable name, run by the NumPy backend), `static.mlpackage` and
`dynamic.mlpackage` (Core ML, run on macOS), `static_graph.pb` / `dynamic_graph.pb` (the frozen TF graphs;
the static one loads in DeepSpeech's native client), `alphabet.txt`, and optionally `kenlm.scorer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.speech.alphabet import Alphabet, AlphabetError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
WEIGHTS_NAME = "weights.npz"
STATIC_PACKAGE = "static.mlpackage"
DYNAMIC_PACKAGE = "dynamic.mlpackage"
STATIC_GRAPH = "static_graph.pb"
DYNAMIC_GRAPH = "dynamic_graph.pb"
ALPHABET_NAME = "alphabet.txt"
SCORER_NAME = "kenlm.scorer"


class ModelDirectoryError(RuntimeError):
    """The model directory is missing, incomplete, corrupt or inconsistent; the message says what to do."""


@dataclass
class Manifest:
    """What the converter wrote, and what the service checks before it serves anything."""

    n_hidden: int
    n_cell_dim: int
    n_classes: int
    alphabet: list[str]
    n_steps: int = 16
    dynamic_max_steps: int = 1000
    # The time lengths dynamic.mlpackage accepts (enumerated shapes), ascending, the largest dynamic_max_steps;
    # empty for packages converted with a range (any length 1..dynamic_max_steps).
    dynamic_lengths: list[int] = field(default_factory=list)
    # The batch sizes static.mlpackage accepts (enumerated; scripts/convert.py --stream-batch), ascending: [1]
    # for a package without a batch dimension; empty in manifests written before the option (batch 1 too).
    stream_batch_sizes: list[int] = field(default_factory=list)
    n_input: int = 26
    n_context: int = 9
    sample_rate: int = 16000
    feature_win_len_ms: int = 32
    feature_win_step_ms: int = 20
    precision: str = "float16"  # Core ML compute precision of the packages
    format_version: int = FORMAT_VERSION
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    scorer: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            data = json.loads(text)
            manifest = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ModelDirectoryError(
                f"{source} is not a valid manifest ({exc}); re-run scripts/convert.py"
            ) from exc
        if manifest.format_version != FORMAT_VERSION:
            raise ModelDirectoryError(
                f"{source} has format_version {manifest.format_version}, this service reads {FORMAT_VERSION}; "
                "re-run scripts/convert.py"
            )
        return manifest


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory (e.g. an .mlpackage) as its sorted relative paths and contents."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDirectory:
    path: Path
    manifest: Manifest
    alphabet: Alphabet

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def static_package(self) -> Path:
        return self.path / STATIC_PACKAGE

    @property
    def dynamic_package(self) -> Path:
        return self.path / DYNAMIC_PACKAGE

    @property
    def scorer_path(self) -> Path | None:
        scorer = self.path / SCORER_NAME
        return scorer if SCORER_NAME in self.manifest.files else None

    @property
    def name(self) -> str:
        return self.path.resolve().name


def load_model_directory(path: str | Path, verify_hashes: bool = True) -> ModelDirectory:
    """Open and check a model directory; raise `ModelDirectoryError` with one clear line when it is unusable."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ModelDirectoryError(
            f"model directory {root} does not exist; create it with scripts/convert.py or set DS_MODEL_DIR"
        )
    if not manifest_path.is_file():
        raise ModelDirectoryError(f"{root} has no {MANIFEST_NAME}; it was not written by scripts/convert.py")
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
    for required in (WEIGHTS_NAME, ALPHABET_NAME):
        if required not in manifest.files:
            raise ModelDirectoryError(f"{manifest_path} lists no {required}; re-run scripts/convert.py")
    for name, expected in manifest.files.items():
        artifact = root / name
        if not artifact.exists():
            raise ModelDirectoryError(
                f"{artifact} is missing (listed in the manifest); the directory is incomplete"
            )
        if verify_hashes and sha256_of(artifact) != expected:
            raise ModelDirectoryError(
                f"{artifact} does not match its sha256 in the manifest; the file is corrupt"
            )
    try:
        alphabet = Alphabet.from_file(root / ALPHABET_NAME)
    except AlphabetError as exc:
        raise ModelDirectoryError(str(exc)) from exc
    if list(alphabet.labels) != manifest.alphabet or alphabet.n_classes != manifest.n_classes:
        raise ModelDirectoryError(
            f"{root / ALPHABET_NAME} does not match the model ({alphabet.n_classes} classes vs "
            f"{manifest.n_classes} in the manifest); use the alphabet the model was converted with"
        )
    return ModelDirectory(root, manifest, alphabet)
