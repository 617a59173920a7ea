"""TensorFlow's memory-mapped graph format (`.pbmm`): read it back into a plain GraphDef, and write one.

DeepSpeech releases ship `deepspeech-X-models.pbmm`, which upstream makes from `output_graph.pb` with TensorFlow's
`convert_graphdef_memmapped_format` (tensorflow/contrib/util/convert_graphdef_memmapped_format_lib.cc); the
native client maps it with `MemmappedEnv` whenever the model path contains ".pbmm" (native_client/tfmodelstate.cc).
The facts below are read from that converter and from tensorflow/core/util/memmapped_file_system{.h,.cc,.proto,
_writer.cc}; the code is written from them.

Layout: ``[tensor region][zero pad][tensor region]...[GraphDef][directory][directory offset: uint64 LE]``

- Tensor regions hold a tensor's raw bytes (host order, i.e. little-endian) and start at a multiple of 64 bytes
  (`Allocator::kAllocatorAlignment`) from the start of the file, zero-padded, so that once the file is mapped
  (page-aligned) `ImmutableConst` can use the bytes in place.
- The GraphDef is the last region, written unaligned, named `memmapped_package://.`
  (`kMemmappedPackageDefaultGraphDef`).
- The directory is a serialized `MemmappedFileSystemDirectory` whose elements (offset, name, length) are in file
  order. TensorFlow's reader takes each region to run up to the next one's offset (the last one up to the
  directory), so offsets must strictly increase; `length`, which newer writers add, is then the exact size.
- The converter turns a `Const` into `ImmutableConst` when its dtype is plain old data (numbers and bool: not
  string, resource or variant) and its tensor holds at least `min_conversion_tensor_size` = 10000 bytes (the
  flag's default; compared with the tensor's byte size despite the name). The node keeps its name, inputs and
  device; its attrs become exactly `dtype`, `shape` and `memory_region_name` =
  `memmapped_package://` + the node name with every character outside [A-Za-z0-9_.] replaced by "_", with "_"
  appended until the name is unused. Smaller constants (biases, the metadata scalars, the alphabet string)
  stay `Const` inside the GraphDef.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2, node_def_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.util import memmapped_file_system_pb2

from dsconvert.weights import WeightsError

# tensorflow::Allocator::kAllocatorAlignment, what MemmappedFileSystemWriter::SaveTensor pads each tensor to
ALIGNMENT = 64
MIN_CONVERSION_BYTES = 10_000  # convert_graphdef_memmapped_format's --min_conversion_tensor_size default
PREFIX = "memmapped_package://"
GRAPH_REGION = PREFIX + "."
FOOTER = struct.Struct("<Q")  # the directory's offset, little-endian on every platform
IMMUTABLE_CONST = "ImmutableConst"

# TF_CALL_POD_TYPES: the dtypes the converter memory-maps; anything else stays a Const.
POD_DTYPES = frozenset(
    {
        types_pb2.DT_FLOAT,
        types_pb2.DT_DOUBLE,
        types_pb2.DT_HALF,
        types_pb2.DT_BFLOAT16,
        types_pb2.DT_INT8,
        types_pb2.DT_INT16,
        types_pb2.DT_INT32,
        types_pb2.DT_INT64,
        types_pb2.DT_UINT8,
        types_pb2.DT_UINT16,
        types_pb2.DT_UINT32,
        types_pb2.DT_UINT64,
        types_pb2.DT_COMPLEX64,
        types_pb2.DT_COMPLEX128,
        types_pb2.DT_BOOL,
    }
)

GraphDef = graph_pb2.GraphDef


class PbmmError(WeightsError):
    """The file is not a readable memory-mapped graph; the message is one line naming the file and the fault."""


@dataclass(frozen=True)
class Region:
    """One entry of the directory: `length` bytes at `offset` from the start of the file."""

    name: str
    offset: int
    length: int


# --- reading -------------------------------------------------------------------------------------------------


def read_memmapped_graph(path: str | Path) -> graph_pb2.GraphDef:
    """The GraphDef of a `.pbmm`, every `ImmutableConst` turned back into the `Const` it was made from."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PbmmError(f"cannot read graph {path}: {exc.strerror}") from exc
    return parse_memmapped_graph(data, str(path))


def package_fault(data: bytes, source: str) -> PbmmError | None:
    """None when `data` is laid out as a memory-mapped package holding a graph (a footer pointing at a directory
    that parses, is consistent and names `memmapped_package://.`), else the error saying why not. Decides by
    content, whatever the file is called; faults inside the regions surface in `parse_memmapped_graph`."""
    try:
        _graph_region(read_directory(data, source), source)
    except PbmmError as exc:
        return exc
    return None


def is_memmapped(data: bytes) -> bool:
    """Whether `data` is laid out as a memory-mapped package holding a graph (see `package_fault`)."""
    return package_fault(data, "") is None


def parse_memmapped_graph(data: bytes, source: str) -> graph_pb2.GraphDef:
    """`read_memmapped_graph` on bytes already read; `source` names the file in error messages."""
    view = memoryview(data)
    regions = read_directory(data, source)
    graph_region = _graph_region(regions, source)
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(_region_bytes(view, graph_region))
    except DecodeError as exc:
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: its graph region {GRAPH_REGION} is not a TensorFlow "
            f"GraphDef: {exc}"
        ) from exc
    for node in graph_def.node:
        if node.op == IMMUTABLE_CONST:
            _restore_const(node, view, regions, source)
    return graph_def


def _graph_region(regions: dict[str, Region], source: str) -> Region:
    region = regions.get(GRAPH_REGION)
    if region is None:
        raise PbmmError(
            f"{source} is a memory-mapped package without a graph: its directory lacks the region "
            f"{GRAPH_REGION} ({_names(regions)})"
        )
    return region


def read_directory(data: bytes, source: str) -> dict[str, Region]:
    """The regions of a memory-mapped package, checked the way TensorFlow's `MemmappedFileSystem` checks them
    (footer inside the file, directory parses, offsets strictly increasing below the directory, names unique)
    plus the explicit lengths, so a damaged file fails here with one line instead of inside the native client."""
    size = len(data)
    if size <= FOOTER.size:
        raise PbmmError(
            f"{source} is truncated or not a memory-mapped graph (.pbmm): {size} bytes, too short for a "
            f"directory and its {FOOTER.size}-byte footer"
        )
    (directory_offset,) = FOOTER.unpack_from(data, size - FOOTER.size)
    end = size - FOOTER.size
    if directory_offset > end:
        raise PbmmError(_bad_footer_message(data, source, directory_offset))
    directory = memmapped_file_system_pb2.MemmappedFileSystemDirectory()
    try:
        directory.ParseFromString(bytes(data[directory_offset:end]))
    except DecodeError as exc:
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: its directory (bytes {directory_offset}-{end} of {size}) "
            f"does not parse: {exc}"
        ) from exc
    return _regions(directory, directory_offset, source)


def _regions(
    directory: memmapped_file_system_pb2.MemmappedFileSystemDirectory, directory_offset: int, source: str
) -> dict[str, Region]:
    """Walk the elements from the last: each region ends where the next one starts (the last at the directory),
    as TensorFlow derives lengths; an explicit `length` must fit in that span."""
    regions: dict[str, Region] = {}
    limit = directory_offset
    for element in reversed(directory.element):
        name, offset = element.name, element.offset
        if offset >= directory_offset:
            raise PbmmError(
                f"{source} is a corrupt memory-mapped graph: region {name} at byte {offset} lies outside the data "
                f"(the directory starts at byte {directory_offset})"
            )
        if offset >= limit:
            raise PbmmError(
                f"{source} is a corrupt memory-mapped graph: region {name} at byte {offset} overlaps the next "
                f"region at byte {limit} (offsets must increase)"
            )
        span = limit - offset
        if element.length > span:
            raise PbmmError(
                f"{source} is a corrupt memory-mapped graph: region {name} ({element.length} bytes at byte "
                f"{offset}) runs past byte {limit}, outside its place in the file"
            )
        if name in regions:
            raise PbmmError(
                f"{source} is a corrupt memory-mapped graph: region {name} appears twice in its directory"
            )
        regions[name] = Region(name, offset, element.length or span)
        limit = offset
    return regions


def names_regions(data: bytes) -> bool:
    """Whether the bytes mention `memmapped_package://`: what is left of a package whose end was cut off (its
    GraphDef and directory name the regions), which a plain GraphDef without ImmutableConst nodes never does."""
    return PREFIX.encode() in data


def _bad_footer_message(data: bytes, source: str, directory_offset: int) -> str:
    """Tell a cut-off package (its text still names memmapped regions) from a file that never was one."""
    size = len(data)
    where = (
        f"the directory offset in its last {FOOTER.size} bytes ({directory_offset}) lies past the end of the "
        f"{size}-byte file"
    )
    if names_regions(data):
        return f"{source} is a truncated or corrupt memory-mapped graph (.pbmm): {where}"
    return f"{source} is not a memory-mapped graph (.pbmm), or is truncated: {where}"


def _restore_const(
    node: node_def_pb2.NodeDef, view: memoryview, regions: dict[str, Region], source: str
) -> None:
    """Rewrite an ImmutableConst node in place as the Const it came from: same name, inputs and device, the
    region's first bytes as `tensor_content` with the node's dtype and shape."""
    for attr in ("dtype", "shape", "memory_region_name"):
        if attr not in node.attr:
            raise PbmmError(
                f"{source} is a corrupt memory-mapped graph: ImmutableConst node {node.name} has no {attr!r} attr"
            )
    dtype = node.attr["dtype"].type
    shape = node.attr["shape"].shape
    region_name = node.attr["memory_region_name"].s.decode("utf-8", errors="replace")
    region = regions.get(region_name)
    if region is None:
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: node {node.name} reads region {region_name}, which is "
            "missing from its directory"
        )
    needed = _tensor_nbytes(dtype, shape, node.name, source)
    if needed > region.length:
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: region {region_name} holds {region.length} bytes, but node "
            f"{node.name} "
            f"({types_pb2.DataType.Name(dtype)}{_dims(shape)}) needs {needed}"
        )
    tensor = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=shape,
        tensor_content=_region_bytes(view, Region(region_name, region.offset, needed)),
    )
    node.op = "Const"
    node.attr.clear()
    node.attr["dtype"].type = dtype
    node.attr["value"].tensor.CopyFrom(tensor)


def _tensor_nbytes(dtype: int, shape: tensor_shape_pb2.TensorShapeProto, node: str, source: str) -> int:
    """Bytes the tensor occupies in its region: what ImmutableConst maps, elements × the dtype's size."""
    if dtype not in POD_DTYPES:
        name = types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: ImmutableConst node {node} has dtype {name}, which cannot "
            "be memory-mapped"
        )
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank or any(d < 0 for d in dims):
        raise PbmmError(
            f"{source} is a corrupt memory-mapped graph: ImmutableConst node {node} has a partly unknown shape "
            f"{_dims(shape)}"
        )
    return int(np.prod(dims, dtype=np.int64)) * _itemsize(dtype)


def _itemsize(dtype: int) -> int:
    import tensorflow as tf

    return int(tf.dtypes.as_dtype(dtype).size)


def _region_bytes(view: memoryview, region: Region) -> bytes:
    return bytes(view[region.offset : region.offset + region.length])


def _names(regions: dict[str, Region]) -> str:
    shown = sorted(regions)[:5]
    more = f", … {len(regions) - len(shown)} more" if len(regions) > len(shown) else ""
    return f"it has {', '.join(shown)}{more}" if shown else "it is empty"


def _dims(shape: tensor_shape_pb2.TensorShapeProto) -> str:
    return "[?]" if shape.unknown_rank else "[" + ", ".join(str(d.size) for d in shape.dim) + "]"


# --- writing -------------------------------------------------------------------------------------------------


def write_memmapped_graph(
    graph_def: graph_pb2.GraphDef, path: str | Path, min_conversion_bytes: int = MIN_CONVERSION_BYTES
) -> int:
    """Write `graph_def` as a `.pbmm`, as `convert_graphdef_memmapped_format` does; returns how many constants
    became ImmutableConst. `graph_def` is not modified. The file appears complete or not at all (written beside
    it, then renamed)."""
    if min_conversion_bytes <= 0:
        raise ValueError("min_conversion_bytes must be > 0 (the converter refuses empty tensors)")
    converted = graph_pb2.GraphDef()
    converted.CopyFrom(graph_def)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    namer = RegionNamer()
    count = 0
    try:
        with open(partial, "wb") as out:
            package = _PackageWriter(out)
            for node, payload in _large_constants(converted, min_conversion_bytes):
                region = namer.region_for(node.name)
                package.add(region, payload, ALIGNMENT)
                _make_immutable(node, region)
                count += 1
            package.add(GRAPH_REGION, converted.SerializeToString(), alignment=1)
            package.finish()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _large_constants(
    graph_def: graph_pb2.GraphDef, min_bytes: int
) -> Iterator[tuple[node_def_pb2.NodeDef, bytes]]:
    """The Const nodes the converter memory-maps, in graph order, each with its tensor's raw bytes."""
    for node in graph_def.node:
        if node.op != "Const" or "value" not in node.attr:
            continue
        payload = _pod_tensor_bytes(node.attr["value"].tensor)
        if payload is not None and len(payload) >= min_bytes:
            yield node, payload


def _pod_tensor_bytes(tensor: tensor_pb2.TensorProto) -> bytes | None:
    """The tensor's full contents in host byte order (what `Tensor::tensor_data()` holds once TensorFlow has
    parsed the proto: splats expanded, `*_val` fields unpacked), or None for dtypes that are not memory-mapped."""
    if tensor.dtype not in POD_DTYPES:
        return None
    import tensorflow as tf

    return np.ascontiguousarray(tf.make_ndarray(tensor)).tobytes()


def _make_immutable(node: node_def_pb2.NodeDef, region: str) -> None:
    """Replace a Const's attrs with exactly ImmutableConst's three, from the tensor's own dtype and shape."""
    tensor = node.attr["value"].tensor
    dtype, shape = tensor.dtype, tensor_shape_pb2.TensorShapeProto()
    shape.CopyFrom(tensor.tensor_shape)
    node.op = IMMUTABLE_CONST
    node.attr.clear()
    node.attr["dtype"].type = dtype
    node.attr["shape"].shape.CopyFrom(shape)
    node.attr["memory_region_name"].s = region.encode("ascii")


class RegionNamer:
    """Region names as the converter makes them: sanitized node name, "_" appended until unique.

    One deliberate difference: "." (the graph's own region) is taken from the start, so a constant named "."
    cannot collide with it (the converter would write a duplicate name that its own reader rejects).
    """

    _UNSAFE = re.compile(r"[^A-Za-z0-9_.]")

    def __init__(self) -> None:
        self._used = {GRAPH_REGION[len(PREFIX) :]}

    def region_for(self, node_name: str) -> str:
        name = self._UNSAFE.sub("_", node_name)
        while name in self._used:
            name += "_"
        self._used.add(name)
        return PREFIX + name


class _PackageWriter:
    """MemmappedFileSystemWriter: regions appended at the running offset, then the directory and its offset."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._offset = 0
        self._directory = memmapped_file_system_pb2.MemmappedFileSystemDirectory()

    def add(self, name: str, payload: bytes, alignment: int) -> None:
        """Pad with zeros to `alignment`, record (offset, name, length), append the bytes."""
        if not payload:
            raise ValueError(f"region {name} is empty (offsets must strictly increase)")
        self._write(b"\0" * (-self._offset % alignment))
        element = self._directory.element.add()
        element.offset = self._offset
        element.name = name
        element.length = len(payload)
        self._write(payload)

    def finish(self) -> None:
        directory_offset = self._offset
        self._write(self._directory.SerializeToString())
        self._write(FOOTER.pack(directory_offset))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)
