"""Loading one Core ML package: check its specification version, compile it once (the cache, keyed by sha256),
load it, and say in one line why not; what coreml_backend.py's CoreMLAcousticModel runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.speech.model_dir import ModelDirectory, sha256_of
from app.speech.runtime.coreml_runtime import (
    CompiledModelCache,
    CoreMLRuntime,
    PackageInfo,
    Predictor,
    summarise_compute_plan,
)

log = logging.getLogger("app.speech.runtime.coreml_backend")


class CoreMLUnavailable(RuntimeError):
    """Core ML cannot run here (not macOS, or coremltools without its native prediction library)."""


class CoreMLLoadFailed(CoreMLUnavailable):
    """Core ML is here but cannot load or run this model directory's packages (the message says why)."""


@dataclass
class LoadedPackage:
    """A compiled package loaded by Core ML, with what its specification declares (CompiledMLModel has no
    `input_description`)."""

    predictor: Predictor
    info: PackageInfo
    compiled: Path
    cached: bool

    @property
    def input_description(self) -> frozenset[str]:
        return self.info.inputs

    def predict(self, data: dict[str, np.ndarray]) -> Mapping[str, Any]:
        return self.predictor.predict(data)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def _load_package(
    runtime: CoreMLRuntime, cache: CompiledModelCache, model: ModelDirectory, name: str, compute_units: str
) -> LoadedPackage:
    """Check, compile (or reuse) and load one package; a cached entry that no longer loads is compiled again."""
    package = model.path / name
    info = _package_info(runtime, package, name)
    sha256 = model.manifest.files.get(name) or sha256_of(package)
    compiled, cached = _compile(cache, package, sha256, name)
    try:
        return _load_compiled(runtime, compiled, compute_units, info, cached, name)
    except CoreMLLoadFailed as exc:
        if not cached:
            raise
        log.warning("the cached compiled %s did not load (%s); compiling it again", name, exc)
    cache.invalidate(sha256)
    compiled, _ = _compile(cache, package, sha256, name)
    return _load_compiled(runtime, compiled, compute_units, info, False, name)


def _compile(cache: CompiledModelCache, package: Path, sha256: str, name: str) -> tuple[Path, bool]:
    try:
        return cache.compiled(package, sha256)
    except Exception as exc:
        raise CoreMLLoadFailed(
            f"Core ML could not compile {name} ({_one_line(exc)}); use DS_BACKEND=numpy"
        ) from exc


def _load_compiled(
    runtime: CoreMLRuntime, compiled: Path, compute_units: str, info: PackageInfo, cached: bool, name: str
) -> LoadedPackage:
    try:
        return LoadedPackage(runtime.load(compiled, compute_units), info, compiled, cached)
    except Exception as exc:
        raise CoreMLLoadFailed(
            f"Core ML could not load {name} ({_one_line(exc)}); use DS_BACKEND=numpy"
        ) from exc


def _package_info(runtime: CoreMLRuntime, package: Path, name: str) -> PackageInfo:
    try:
        info = runtime.describe_package(package)
        supported = runtime.max_spec_version()
    except Exception as exc:
        raise CoreMLLoadFailed(f"cannot read {name} ({_one_line(exc)}); use DS_BACKEND=numpy") from exc
    if info.spec_version > supported:
        raise CoreMLLoadFailed(
            f"{name} needs Core ML specification version {info.spec_version} but this macOS supports up to "
            f"{supported}: update macOS, re-convert with an older --deployment-target, or use DS_BACKEND=numpy"
        )
    return info


def _compute_plan_entry(runtime: CoreMLRuntime, compiled: Path, compute_units: str) -> dict[str, object]:
    """The compute plan's summary, or why there is none (MLComputePlan needs macOS 14.4): never a failure."""
    try:
        return summarise_compute_plan(runtime.compute_plan(compiled, compute_units))
    except Exception as exc:
        return {"error": f"no compute plan: {_one_line(exc)}"}
