"""What the Core ML backend needs of coremltools, behind a small interface tests can fake: reading a package's
specification, compiling it once into a cache keyed by its sha256 and the OS (`CompiledModelCache`), loading the
compiled model, and summarising Core ML's compute plan for /info. See coreml_backend.py for why each exists."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

INPUT_NODE = "input_node"


def default_cache_dir() -> Path:
    """Where compiled models are kept between starts when DS_COREML_CACHE_DIR is not set."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "deepspeech-coreml"
    return Path.home() / ".cache" / "deepspeech-coreml"


class Predictor(Protocol):
    def predict(self, data: dict[str, np.ndarray]) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class PackageInfo:
    """What a package's specification declares, read without compiling it."""

    inputs: frozenset[str]
    spec_version: int
    time_lengths: tuple[int, ...] = ()  # enumerated lengths of input_node's time axis; () when not enumerated
    max_length: int | None = None  # upper bound of input_node's time range, when it is a range
    # Enumerated sizes of input_node's batch axis (the batched static package, one row per stream); () when
    # the batch is fixed at 1.
    batch_sizes: tuple[int, ...] = ()


class CoreMLRuntime(Protocol):
    """The part of coremltools the backend uses (tests substitute a fake)."""

    def describe_package(self, package: Path) -> PackageInfo: ...

    def max_spec_version(self) -> int: ...

    def compile(self, package: Path, destination: Path) -> None: ...

    def load(self, compiled: Path, compute_units: str) -> Predictor: ...

    def compute_plan(self, compiled: Path, compute_units: str) -> Any: ...

    def os_tag(self) -> str: ...


def package_info(spec: Any) -> PackageInfo:
    """PackageInfo from a `Model_pb2.Model` specification (coremltools' protobuf).

    input_node's enumerated shapes give the time lengths (its axis 1) and the batch sizes (axis 0), each only
    where it varies: the dynamic package enumerates time at batch 1, the batched static package the batch at
    16 steps."""
    lengths: tuple[int, ...] = ()
    batches: tuple[int, ...] = ()
    bound = None
    for feature in spec.description.input:
        if feature.name != INPUT_NODE:
            continue
        array = feature.type.multiArrayType
        shapes = [tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes if len(s.shape) > 1]
        lengths = _varying(shape[1] for shape in shapes)
        batches = _varying(shape[0] for shape in shapes)
        ranges = array.shapeRange.sizeRanges
        if len(ranges) > 1 and ranges[1].upperBound > 0:
            bound = int(ranges[1].upperBound)
    inputs = frozenset(feature.name for feature in spec.description.input)
    return PackageInfo(inputs, int(spec.specificationVersion), lengths, bound, batches)


def _varying(sizes: Iterable[int]) -> tuple[int, ...]:
    """The distinct sizes of one axis across enumerated shapes, ascending; () where the axis is fixed."""
    distinct = tuple(sorted(set(sizes)))
    return distinct if len(distinct) > 1 else ()


class CoreMLTools:
    """The real runtime: coremltools, imported on first use (slow to import, and it predicts only on macOS)."""

    def describe_package(self, package: Path) -> PackageInfo:
        from coremltools.models.utils import load_spec

        return package_info(load_spec(str(package)))

    def max_spec_version(self) -> int:
        from coremltools.libcoremlpython import _MLModelProxy

        return int(_MLModelProxy.maximum_supported_specification_version())

    def compile(self, package: Path, destination: Path) -> None:
        from coremltools.models.utils import compile_model

        compile_model(str(package), str(destination))

    def load(self, compiled: Path, compute_units: str) -> Predictor:
        import coremltools as ct

        return ct.models.CompiledMLModel(str(compiled), compute_units=ct.ComputeUnit[compute_units])

    def compute_plan(self, compiled: Path, compute_units: str) -> Any:
        import coremltools as ct
        from coremltools.models.compute_plan import MLComputePlan

        return MLComputePlan.load_from_path(str(compiled), compute_units=ct.ComputeUnit[compute_units])

    def os_tag(self) -> str:
        import platform

        return f"macos{platform.mac_ver()[0] or 'unknown'}-{platform.machine()}"


COMPILED_NAME = "model.mlmodelc"
COMPLETE_MARKER = "complete"  # holds the sha256; written last, before the rename that publishes the entry
CACHE_FORMAT = "v1"
STAGING_PREFIX = ".staging-"
STALE_STAGING_SECONDS = 3600.0


class CompiledModelCache:
    """Compiled `.mlmodelc`s, one entry per (package sha256, OS version), published by an atomic rename.

    An entry is `<root>/<sha256>-<os>-v1/` holding `model.mlmodelc` and a `complete` marker with the sha256. It
    is compiled into a staging directory beside it and renamed into place, so a crash mid-compile leaves only
    a staging directory (swept after an hour), never an entry that looks complete. An entry without its marker
    is ignored and replaced; entries for other shas or OS versions are left alone (harmless, a few MB each)."""

    def __init__(self, root: Path, runtime: CoreMLRuntime) -> None:
        self.root = root
        self.runtime = runtime

    def compiled(self, package: Path, sha256: str) -> tuple[Path, bool]:
        """The compiled model of a package with this sha256, and whether it came from the cache."""
        entry = self._entry(sha256)
        if self._complete(entry, sha256):
            return entry / COMPILED_NAME, True
        try:
            staging = self._staging()
        except OSError as exc:
            return self._compile_privately(package, exc), False
        try:
            self.runtime.compile(package, staging / COMPILED_NAME)
            (staging / COMPLETE_MARKER).write_text(sha256 + "\n", encoding="utf-8")
            self._publish(staging, entry, sha256)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once published
        return entry / COMPILED_NAME, False

    def invalidate(self, sha256: str) -> None:
        shutil.rmtree(self._entry(sha256), ignore_errors=True)

    def _entry(self, sha256: str) -> Path:
        return self.root / f"{sha256}-{self.runtime.os_tag()}-{CACHE_FORMAT}"

    @staticmethod
    def _complete(entry: Path, sha256: str) -> bool:
        marker = entry / COMPLETE_MARKER
        try:
            return marker.read_text(encoding="utf-8").strip() == sha256 and (entry / COMPILED_NAME).is_dir()
        except OSError:
            return False

    def _staging(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_staging()
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))

    def _sweep_staging(self) -> None:
        """Remove staging directories a killed process left behind (old enough that nobody is compiling)."""
        cutoff = time.time() - STALE_STAGING_SECONDS
        for leftover in self.root.glob(STAGING_PREFIX + "*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue

    def _publish(self, staging: Path, entry: Path, sha256: str) -> None:
        if entry.exists() and not self._complete(entry, sha256):
            shutil.rmtree(
                entry, ignore_errors=True
            )  # half-written (copied, restored, interrupted): replace it
        try:
            os.rename(staging, entry)
        except OSError:
            if not self._complete(entry, sha256):  # not a concurrent start that published it first
                raise

    def _compile_privately(self, package: Path, reason: OSError) -> Path:
        """Compile into a temporary directory removed at exit: the cache cannot be written (a start costs more)."""
        log.warning(
            "cannot write the Core ML cache %s (%s): compiling %s into a temporary directory, every start",
            self.root,
            reason,
            package.name,
        )
        private = Path(tempfile.mkdtemp(prefix="deepspeech-coreml-"))
        atexit.register(shutil.rmtree, private, True)
        self.runtime.compile(package, private / COMPILED_NAME)
        return private / COMPILED_NAME


def summarise_compute_plan(plan: Any) -> dict[str, object]:
    """Where Core ML prefers to run an ML Program's ops: per device, per op type, and the estimated cost share.

    `plan` is a `coremltools.models.compute_plan.MLComputePlan`. Constants have no device and are skipped."""
    program = plan.model_structure.program
    if program is None:
        return {"error": "no compute plan: the package is not an ML Program"}
    ops: defaultdict[str, Counter[str]] = defaultdict(Counter)
    cost: defaultdict[str, float] = defaultdict(float)
    for operation in _operations(program.functions["main"].block):
        if operation.operator_name == "const":
            continue
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        device = _device_name(usage.preferred_compute_device) if usage is not None else "unknown"
        ops[operation.operator_name][device] += 1
        estimate = plan.get_estimated_cost_for_mlprogram_operation(operation)
        if estimate is not None:
            cost[device] += float(estimate.weight)
    devices: Counter[str] = Counter()
    for counts in ops.values():
        devices.update(counts)
    return {
        "devices": dict(devices.most_common()),
        "ops": {op: dict(counts.most_common()) for op, counts in sorted(ops.items())},
        "cost": {device: round(share, 3) for device, share in sorted(cost.items(), key=lambda kv: -kv[1])},
    }


def _operations(block: Any) -> Iterator[Any]:
    for operation in block.operations:
        yield operation
        for nested in operation.blocks:
            yield from _operations(nested)


def _device_name(device: Any) -> str:
    """MLCPUComputeDevice -> CPU, MLGPUComputeDevice -> GPU, MLNeuralEngineComputeDevice -> NeuralEngine."""
    return type(device).__name__.removeprefix("ML").removesuffix("ComputeDevice") or "unknown"
