"""The memory-mapped graph (`.pbmm`): our writer against TensorFlow's format, our reader against upstream's.

The proof runs both ways. DeepSpeech 0.9.3's own native client (TensorFlow 2.3's MemmappedEnv + ImmutableConst)
loads a `.pbmm` our writer made from our model's `static_graph.pb` and transcribes real speech exactly as it does
from the `.pb`; shifting the regions off TensorFlow's 64-byte alignment makes that client's ImmutableConst refuse
them, so the weights really come from the regions. And `scripts/convert.py --graph model.pbmm` gives the very
same `weights.npz` as `--graph model.pb`. Damaged files fail with one `convert.py: error:` line.

Width 50 on purpose: layer_2/3/5 weights are exactly 10000 bytes (the converter's threshold, which converts
them), layer_6's (5800 bytes) stays Const, and 98800/10000-byte regions need padding to the next 64-byte offset.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("coremltools")

from tensorflow.core.framework import graph_pb2, node_def_pb2, tensor_pb2, types_pb2  # noqa: E402
from tensorflow.core.util import memmapped_file_system_pb2  # noqa: E402

from app.speech import model_dir as md  # noqa: E402
from app.speech.alphabet import ENGLISH  # noqa: E402
from dsconvert import pbmm  # noqa: E402
from dsconvert.graph import build_frozen_graph  # noqa: E402
from dsconvert.weights import LSTM_KERNEL, WEIGHT_NAMES, random_weights, read_graph_file  # noqa: E402
from tests.support.native_client import NativeClient, ensure_native_client  # noqa: E402

WIDTH = 50
SEED = 50
# Constants of at least 10000 bytes at width 50: what TensorFlow's converter turns into ImmutableConst.
MAPPED = {
    "layer_1/weights": "layer_1_weights",  # 494 x 50 floats = 98800 bytes
    "layer_2/weights": "layer_2_weights",  # 50 x 50 = 10000 bytes: the threshold is inclusive
    "layer_3/weights": "layer_3_weights",
    LSTM_KERNEL: "cudnn_lstm_rnn_multi_rnn_cell_cell_0_cudnn_compatible_lstm_cell_kernel",  # 80000 bytes
    "layer_5/weights": "layer_5_weights",
}


@pytest.fixture(scope="module")
def graph_def() -> graph_pb2.GraphDef:
    """Upstream's inference graph with random weights: what `output_graph.pb` and `static_graph.pb` hold."""
    return build_frozen_graph(random_weights(WIDTH, seed=SEED), ENGLISH, 16).graph_def


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory: pytest.TempPathFactory, graph_def: graph_pb2.GraphDef) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pbmm")
    pb, mm = root / "output_graph.pb", root / "output_graph.pbmm"
    pb.write_bytes(graph_def.SerializeToString())
    assert pbmm.write_memmapped_graph(graph_def, mm) == len(MAPPED)
    return {"pb": pb, "pbmm": mm}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, graph_files: dict[str, Path]) -> dict[str, Path]:
    """`scripts/convert.py --graph` on the .pb and on the .pbmm: two model directories."""
    from dsconvert.cli import main

    root = tmp_path_factory.mktemp("converted")
    alphabet = root / "alphabet.txt"
    alphabet.write_text(ENGLISH.to_text(), encoding="utf-8")
    out = {}
    for kind, graph in graph_files.items():
        out[kind] = root / kind
        assert main(["--graph", str(graph), "--alphabet", str(alphabet), "--out", str(out[kind])]) == 0
    return out


def directory_of(data: bytes) -> tuple[memmapped_file_system_pb2.MemmappedFileSystemDirectory, int]:
    """The directory and its offset, decoded independently of dsconvert.pbmm (the proto TensorFlow ships)."""
    (offset,) = struct.unpack("<Q", data[-8:])
    directory = memmapped_file_system_pb2.MemmappedFileSystemDirectory()
    directory.ParseFromString(data[offset:-8])
    return directory, offset


def with_directory(
    data: bytes, edit: Callable[[memmapped_file_system_pb2.MemmappedFileSystemDirectory], None]
) -> bytes:
    directory, offset = directory_of(data)
    edit(directory)
    return data[:offset] + directory.SerializeToString() + struct.pack("<Q", offset)


# --- the format ----------------------------------------------------------------------------------------------


def test_round_trip_gives_back_the_identical_graph(graph_files: dict[str, Path], graph_def) -> None:
    restored = pbmm.read_memmapped_graph(graph_files["pbmm"])
    assert restored == graph_def  # every node, every constant's dtype, shape and bytes
    assert not any(node.op == "ImmutableConst" for node in restored.node)


def test_layout_is_tensorflows(graph_files: dict[str, Path], graph_def) -> None:
    """Regions in file order at 64-byte offsets, zero padding, the GraphDef last and unaligned, then the
    directory and its offset; big constants become ImmutableConst with exactly three attrs."""
    data = graph_files["pbmm"].read_bytes()
    directory, directory_offset = directory_of(data)
    elements = list(directory.element)
    assert [e.name for e in elements] == [f"memmapped_package://{MAPPED[n]}" for n in MAPPED] + [
        "memmapped_package://."
    ]
    offsets = [e.offset for e in elements] + [directory_offset]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(
        offsets
    )  # TF 2.3 derives lengths from them
    originals = {n.name: n for n in graph_def.node}
    position = 0
    for element, name in zip(elements, MAPPED, strict=False):
        assert element.offset % 64 == 0  # Allocator::kAllocatorAlignment
        assert data[position : element.offset] == b"\0" * (element.offset - position)  # the padding
        content = tf.make_ndarray(originals[name].attr["value"].tensor).tobytes()
        assert (
            element.length == len(content)
            and data[element.offset : element.offset + element.length] == content
        )
        position = element.offset + element.length
    assert position % 64 != 0, "width 50 should leave the graph region unaligned"
    graph_element = elements[-1]
    assert (
        graph_element.offset == position and graph_element.offset + graph_element.length == directory_offset
    )

    stored = graph_pb2.GraphDef()
    stored.ParseFromString(data[graph_element.offset : directory_offset])
    nodes = {n.name: n for n in stored.node}
    assert {n.name for n in stored.node if n.op == "ImmutableConst"} == set(MAPPED)
    for name, region in MAPPED.items():
        node, original = nodes[name], originals[name]
        assert set(node.attr) == {"dtype", "shape", "memory_region_name"}
        assert node.attr["memory_region_name"].s == f"memmapped_package://{region}".encode()
        assert node.attr["dtype"].type == types_pb2.DT_FLOAT
        assert node.attr["shape"].shape == original.attr["value"].tensor.tensor_shape
        assert list(node.input) == list(original.input) and node.device == original.device
    # Under 10000 bytes, or not plain old data: kept in the GraphDef as they were.
    for name in ("layer_6/weights", "layer_1/bias", "metadata_alphabet", "metadata_sample_rate"):
        assert nodes[name] == originals[name]


def test_constants_the_converter_keeps_or_maps(tmp_path: Path) -> None:
    """Splats and typed `*_val` fields are expanded as TensorFlow parses them; strings stay Const; names are
    sanitized and made unique the converter's way; --min_conversion_tensor_size counts bytes."""

    def const(name: str, tensor: tensor_pb2.TensorProto) -> node_def_pb2.NodeDef:
        node = node_def_pb2.NodeDef(name=name, op="Const")
        node.attr["dtype"].type = tensor.dtype
        node.attr["value"].tensor.CopyFrom(tensor)
        return node

    shape = tf.TensorShape([60, 50]).as_proto()
    graph = graph_pb2.GraphDef()
    graph.node.extend(
        [
            # One float_val for 3000 elements: a splat, as tf.fill folds to.
            const(
                "splat/zeros",
                tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[1.5]),
            ),
            const("splat_zeros", tf.make_tensor_proto(np.arange(3000, dtype=np.int32))),
            const("mask-v1.0", tf.make_tensor_proto(np.arange(20000) % 3 == 0)),  # "." kept, "-" not
            const("halves", tf.make_tensor_proto(np.linspace(-1, 1, 6000).astype(np.float16))),
            const("text", tf.make_tensor_proto(np.array([b"x" * 20000], dtype=object))),
            const("small", tf.make_tensor_proto(np.ones(10, np.float32))),
        ]
    )
    path = tmp_path / "typed.pbmm"
    assert pbmm.write_memmapped_graph(graph, path, min_conversion_bytes=12000) == 4
    names = [e.name for e in directory_of(path.read_bytes())[0].element]
    assert names == [
        "memmapped_package://splat_zeros",
        "memmapped_package://splat_zeros_",
        "memmapped_package://mask_v1.0",
        "memmapped_package://halves",
        "memmapped_package://.",
    ]
    restored = {n.name: n for n in pbmm.read_memmapped_graph(path).node}
    for node in graph.node:
        expected = tf.make_ndarray(node.attr["value"].tensor)
        actual = tf.make_ndarray(restored[node.name].attr["value"].tensor)
        assert restored[node.name].op == "Const" and actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)
    assert restored["text"] == graph.node[4] and restored["small"] == graph.node[5]
    assert pbmm.write_memmapped_graph(graph, tmp_path / "all.pbmm", min_conversion_bytes=1) == 5


# --- convert.py ----------------------------------------------------------------------------------------------


def test_convert_reads_the_same_weights_from_the_pbmm(converted: dict[str, Path]) -> None:
    with np.load(converted["pb"] / md.WEIGHTS_NAME) as a, np.load(converted["pbmm"] / md.WEIGHTS_NAME) as b:
        assert set(a.files) == set(b.files) == set(WEIGHT_NAMES)
        for name in WEIGHT_NAMES:
            assert a[name].dtype == b[name].dtype == np.float32
            np.testing.assert_array_equal(
                a[name], b[name]
            )  # the same bytes, read from regions or from Consts
    kinds = {
        k: json.loads((d / md.MANIFEST_NAME).read_text())["source"]["kind"] for k, d in converted.items()
    }
    assert kinds == {"pb": "graph", "pbmm": "pbmm"}
    assert md.load_model_directory(converted["pbmm"]).manifest.n_hidden == WIDTH


def test_a_pbmm_is_recognised_by_its_content(tmp_path: Path, graph_files: dict[str, Path]) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(graph_files["pbmm"].read_bytes())
    plain_named_pbmm = tmp_path / "plain.pbmm"
    plain_named_pbmm.write_bytes(graph_files["pb"].read_bytes())
    cut_named_pb = tmp_path / "cut.pb"  # what is left still names its regions: reported as a damaged package
    cut_named_pb.write_bytes(graph_files["pbmm"].read_bytes()[:-100])
    with pytest.raises(pbmm.PbmmError, match=r"cut\.pb is a truncated or corrupt memory-mapped graph"):
        read_graph_file(cut_named_pb)
    from_pb, kind_pb = read_graph_file(graph_files["pb"])
    for path, kind in ((renamed, "pbmm"), (plain_named_pbmm, "graph")):
        weights, found = read_graph_file(path)
        assert found == kind
        for name in WEIGHT_NAMES:
            np.testing.assert_array_equal(weights.arrays[name], from_pb.arrays[name])
    assert kind_pb == "graph"


def test_help_names_both_graph_files(capsys: pytest.CaptureFixture) -> None:
    from dsconvert.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "output_graph.pb" in help_text and "deepspeech-0.9.3-models.pbmm" in help_text
    assert "output_graph.pbmm" in help_text


def garbled_directory(data: bytes) -> bytes:
    offset = directory_of(data)[1]
    return data[:offset] + b"\xff" * (len(data) - 8 - offset) + data[-8:]


def garbled_graph(data: bytes) -> bytes:
    graph = directory_of(data)[0].element[-1]
    end = graph.offset + graph.length
    return data[: graph.offset] + b"\xff" * graph.length + data[end:]


def region_moved_past_the_end(data: bytes) -> bytes:
    return with_directory(data, lambda d: setattr(d.element[1], "offset", len(data) + 4096))


def region_shortened(data: bytes) -> bytes:
    return with_directory(data, lambda d: setattr(d.element[0], "length", 100))


# damage -> (what it does to a good .pbmm, what the one error line says)
BAD_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "garbage": (
        lambda d: b"\xff\xfe not a protobuf \x00" * 10,
        "is not a memory-mapped graph (.pbmm), or is truncated",
    ),
    "empty": (lambda d: b"", "is truncated or not a memory-mapped graph (.pbmm): 0 bytes"),
    "cut in half": (lambda d: d[: len(d) // 2], "or is truncated: the directory offset in its last 8 bytes"),
    "last byte lost": (lambda d: d[:-1], "is a truncated or corrupt memory-mapped graph (.pbmm)"),
    "directory garbled": (garbled_directory, "is a corrupt memory-mapped graph: its directory (bytes"),
    "region outside the file": (
        region_moved_past_the_end,
        "region memmapped_package://layer_2_weights at byte",
    ),
    "region missing": (
        lambda d: with_directory(d, lambda m: m.element.pop(0)),
        "node layer_1/weights reads region memmapped_package://layer_1_weights, which is missing",
    ),
    "region too short": (
        region_shortened,
        "holds 100 bytes, but node layer_1/weights (DT_FLOAT[494, 50]) needs 98800",
    ),
    "graph region missing": (
        lambda d: with_directory(d, lambda m: m.element.pop()),
        "without a graph: its directory lacks the region memmapped_package://.",
    ),
    "graph region garbled": (
        garbled_graph,
        "its graph region memmapped_package://. is not a TensorFlow GraphDef",
    ),
}


@pytest.mark.parametrize("damage", list(BAD_FILES))
def test_a_damaged_pbmm_fails_with_one_clear_line(
    damage: str,
    tmp_path: Path,
    graph_files: dict[str, Path],
    alphabet_file: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from dsconvert.cli import main

    make, message = BAD_FILES[damage]
    bad = tmp_path / "deepspeech-0.9.3-models.pbmm"
    bad.write_bytes(make(graph_files["pbmm"].read_bytes()))
    out = tmp_path / "out"
    assert main(["--graph", str(bad), "--alphabet", str(alphabet_file), "--out", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"convert.py: error: {bad}"), errors
    assert message in errors[0] and "memory-mapped" in errors[0], errors[0]
    if "outside" in damage:
        assert "lies outside the data" in errors[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_a_truncated_pbmm_gets_exactly_this_line(
    tmp_path: Path, graph_files: dict[str, Path], alphabet_file: Path, capsys: pytest.CaptureFixture
) -> None:
    from dsconvert.cli import main

    bad = tmp_path / "output_graph.pbmm"
    bad.write_bytes(graph_files["pbmm"].read_bytes()[:-100])  # the directory and its footer cut off
    out = tmp_path / "out"
    assert main(["--graph", str(bad), "--alphabet", str(alphabet_file), "--out", str(out)]) == 2
    footer = struct.unpack("<Q", bad.read_bytes()[-8:])[0]
    assert capsys.readouterr().err == (
        f"convert.py: error: {bad} is a truncated or corrupt memory-mapped graph (.pbmm): the directory offset "
        f"in its last 8 bytes ({footer}) lies past the end of the {bad.stat().st_size}-byte file\n"
    )
    assert not out.exists()


# --- DeepSpeech 0.9.3's native client ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native() -> NativeClient:
    client = ensure_native_client()
    if isinstance(client, str):
        pytest.skip(client)
    return client


def transcribe(native: NativeClient, model: Path, wav: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = native.transcribe(model, wav, chunk=1234)
    print(f"\nnative client on {model.name}: {time.monotonic() - started:.1f} s, {result['text']!r}")
    return result


def test_native_client_transcribes_our_pbmm_exactly_as_the_pb(
    native: NativeClient, converted: dict[str, Path], speech_wav: Path, tmp_path: Path
) -> None:
    """Our model's static_graph.pb, written as a .pbmm by our writer: DeepSpeech 0.9.3 maps it (the path ends
    in .pbmm, so tfmodelstate.cc takes MemmappedEnv) and gives the same transcript, tokens and timesteps."""
    static_pb = converted["pb"] / md.STATIC_GRAPH
    static_pbmm = tmp_path / "static_graph.pbmm"
    static = graph_pb2.GraphDef()
    static.ParseFromString(static_pb.read_bytes())
    assert pbmm.write_memmapped_graph(static, static_pbmm) == len(MAPPED)

    theirs_pb = transcribe(native, static_pb, speech_wav)
    theirs_mm = transcribe(native, static_pbmm, speech_wav)
    assert theirs_pb["tokens"], "the native client decoded nothing: the comparison would be vacuous"
    for key in (
        "text",
        "metadata_text",
        "tokens",
        "stream_text",
        "stream_tokens",
        "sample_rate",
        "beam_width",
    ):
        assert theirs_mm[key] == theirs_pb[key], key
    assert theirs_mm["confidence"] == pytest.approx(theirs_pb["confidence"], rel=1e-6)

    # Control: the same package shifted 4 bytes off the 64-byte alignment. TensorFlow's reader still accepts it
    # (and so does ours, same weights), but the client's ImmutableConst refuses to map the regions ("Readonly
    # memory region has wrong alignment", every session run fails, nothing is decoded): the weights the client
    # used above came from our regions, not from some copy inside the GraphDef.
    data = static_pbmm.read_bytes()
    directory, offset = directory_of(data)
    for element in directory.element:
        element.offset += 4
    shifted = tmp_path / "shifted.pbmm"
    shifted.write_bytes(
        b"\0" * 4 + data[:offset] + directory.SerializeToString() + struct.pack("<Q", offset + 4)
    )
    assert pbmm.read_memmapped_graph(shifted) == pbmm.read_memmapped_graph(static_pbmm) == static
    refused = transcribe(native, shifted, speech_wav)
    assert refused["tokens"] == [] and refused["text"] == ""
