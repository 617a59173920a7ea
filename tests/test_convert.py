"""scripts/convert.py: the model directory, the packages' interface, the frozen graphs and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.speech import model_dir as md
from app.speech.alphabet import ENGLISH, Alphabet

tf = pytest.importorskip("tensorflow")
ct = pytest.importorskip("coremltools")

from dsconvert.checkpoint_writer import write_checkpoint  # noqa: E402
from dsconvert.weights import WEIGHT_NAMES, DeepSpeechWeights, random_weights  # noqa: E402
from tests.support.models import SMALL_WIDTH  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONVERT = [sys.executable, str(ROOT / "scripts" / "convert.py")]


def run_convert(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CONVERT, *map(str, args)], capture_output=True, text=True, timeout=300)


def load_graph_def(path: Path) -> tf.compat.v1.GraphDef:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_def


# --- the model directory -------------------------------------------------------------------------------------


def test_model_directory_has_every_artifact_hashed(small_model_dir: Path) -> None:
    manifest = json.loads((small_model_dir / md.MANIFEST_NAME).read_text())
    expected = {
        md.STATIC_PACKAGE,
        md.DYNAMIC_PACKAGE,
        md.STATIC_GRAPH,
        md.DYNAMIC_GRAPH,
        md.WEIGHTS_NAME,
        md.ALPHABET_NAME,
    }
    assert set(manifest["files"]) == expected
    for name, digest in manifest["files"].items():
        assert md.sha256_of(small_model_dir / name) == digest
    assert manifest["n_hidden"] == SMALL_WIDTH and manifest["n_cell_dim"] == SMALL_WIDTH
    assert manifest["n_classes"] == 29 and manifest["alphabet"] == list(ENGLISH.labels)
    assert (
        manifest["n_steps"] == 16
        and manifest["dynamic_max_steps"] == 1000
        and manifest["precision"] == "float16"
    )
    # The dynamic package's enumerated time lengths: the stream tails, window lengths, the bound last.
    windows = [16, 24, 32, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000]
    assert manifest["dynamic_lengths"] == [*range(1, 16), *windows]
    assert manifest["n_input"] == 26 and manifest["n_context"] == 9 and manifest["sample_rate"] == 16000
    assert {"tensorflow", "coremltools", "numpy", "python"} <= set(manifest["tools"])
    assert manifest["source"]["kind"] == "checkpoint"
    loaded = md.load_model_directory(small_model_dir)
    assert loaded.alphabet == ENGLISH and loaded.scorer_path is None
    assert loaded.manifest.dynamic_lengths == manifest["dynamic_lengths"]
    # No staging directory is left beside the output.
    assert [p.name for p in small_model_dir.parent.iterdir()] == [small_model_dir.name]


def test_weights_npz_holds_the_checkpoint_values(small_model_dir: Path, small_checkpoint: Path) -> None:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(small_checkpoint)))
    with np.load(small_model_dir / md.WEIGHTS_NAME) as npz:
        assert set(npz.files) == set(WEIGHT_NAMES)
        for name in WEIGHT_NAMES:
            assert npz[name].dtype == np.float32
            np.testing.assert_array_equal(npz[name], reader.get_tensor(name))


# --- the Core ML packages ------------------------------------------------------------------------------------


def _io(spec, kind: str) -> dict:
    return {f.name: f.type.multiArrayType for f in getattr(spec.description, kind)}


@pytest.mark.parametrize("package", [md.STATIC_PACKAGE, md.DYNAMIC_PACKAGE])
def test_package_interface(small_model_dir: Path, package: str) -> None:
    spec = ct.utils.load_spec(str(small_model_dir / package))
    assert spec.WhichOneof("Type") == "mlProgram"
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    inputs = _io(spec, "input")
    # No input_lengths: the packages take valid steps only (a stream's tail goes to the dynamic package).
    assert list(inputs) == ["input_node", "previous_state_c", "previous_state_h"]
    for name in ("input_node", "previous_state_c", "previous_state_h"):
        assert inputs[name].dataType == float32, f"{name} must stay float32 (not FLOAT16)"
    assert list(inputs["previous_state_c"].shape) == [1, SMALL_WIDTH]
    node = inputs["input_node"]
    enumerated = [list(s.shape) for s in node.enumeratedShapes.shapes]
    assert not node.shapeRange.sizeRanges, "no RangeDim: the Neural Engine wants enumerated shapes"
    meta = dict(spec.description.metadata.userDefined)
    if package == md.STATIC_PACKAGE:
        assert list(node.shape) == [1, 16, 19, 26] and not enumerated and "time_lengths" not in meta
    else:
        lengths = json.loads((small_model_dir / md.MANIFEST_NAME).read_text())["dynamic_lengths"]
        assert json.loads(meta["time_lengths"]) == lengths
        assert list(node.shape) == [1, 16, 19, 26] and enumerated[0] == [1, 16, 19, 26]  # the default first
        assert sorted(enumerated) == [[1, n, 19, 26] for n in lengths]
    outputs = _io(spec, "output")
    assert list(outputs) == ["logits", "new_state_c", "new_state_h"]
    assert all(o.dataType == float32 for o in outputs.values())
    assert meta["kind"] == ("static" if package == md.STATIC_PACKAGE else "dynamic")
    assert json.loads(meta["alphabet"]) == list(ENGLISH.labels)
    assert meta["n_hidden"] == str(SMALL_WIDTH) and meta["n_classes"] == "29"
    assert meta["n_steps"] == ("16" if package == md.STATIC_PACKAGE else "0")
    assert "every step of input_node is valid" in meta["valid_steps"]
    assert meta["lstm"] == "core lstm op (fp16)" and meta["deployment_target"] == "macOS14"


@pytest.mark.parametrize("package", [md.STATIC_PACKAGE, md.DYNAMIC_PACKAGE])
def test_package_runs_the_core_lstm_op(small_model_dir: Path, package: str) -> None:
    """The LSTM is MIL's core `lstm` op, which Core ML can run on the GPU / Neural Engine, not a `while_loop`
    (CPU only), in both packages `scripts/convert.py` writes."""
    from dsconvert import mil_eval

    ops = mil_eval.op_types(small_model_dir / package)
    print(f"\n{package} MIL ops: {', '.join(sorted(ops))}")
    assert "lstm" in ops and "while_loop" not in ops


# --- the frozen TensorFlow graphs ----------------------------------------------------------------------------


def test_static_graph_is_shaped_like_upstreams_export(small_model_dir: Path) -> None:
    graph_def = load_graph_def(small_model_dir / md.STATIC_GRAPH)
    nodes = {n.name: n for n in graph_def.node}
    for name in (
        "input_node",
        "input_lengths",
        "previous_state_c",
        "previous_state_h",
        "logits",
        "new_state_c",
        "new_state_h",
        "input_samples",
        "mfccs",
        *(f"layer_{i}/weights" for i in (1, 2, 3, 5, 6)),
    ):
        assert name in nodes, name
    assert nodes["logits"].op == "Softmax"
    assert [d.size for d in nodes["input_node"].attr["shape"].shape.dim] == [1, 16, 19, 26]
    assert [d.size for d in nodes["previous_state_c"].attr["shape"].shape.dim] == [1, SMALL_WIDTH]
    assert [d.size for d in nodes["input_samples"].attr["shape"].shape.dim] == [512]
    ops = {n.op for n in graph_def.node}
    assert "BlockLSTM" in ops and "StridedSlice" not in ops and "Shape" not in ops
    # Upstream's form, not the Core ML variant: the state is gathered at input_lengths-1.
    assert "GatherNd" in ops and nodes["input_lengths"].op == "Placeholder"
    # Defaults that TF 2.3 (the native client) does not know are stripped.
    assert all("bad_indices_policy" not in n.attr for n in graph_def.node if n.op == "GatherNd")
    metadata = {
        n.name: tf.make_ndarray(n.attr["value"].tensor)
        for n in graph_def.node
        if n.name.startswith("metadata_")
    }
    assert all(value.shape == () for value in metadata.values()), "metadata must be scalars"
    assert metadata["metadata_version"] == 6 and metadata["metadata_sample_rate"] == 16000
    assert metadata["metadata_feature_win_len"] == 32 and metadata["metadata_feature_win_step"] == 20
    assert metadata["metadata_beam_width"] == 500
    assert metadata["metadata_alphabet"] == ENGLISH.serialize()


def test_dynamic_graph_has_an_open_time_axis(small_model_dir: Path) -> None:
    nodes = {n.name: n for n in load_graph_def(small_model_dir / md.DYNAMIC_GRAPH).node}
    assert [d.size for d in nodes["input_node"].attr["shape"].shape.dim] == [1, -1, 19, 26]


def test_graph_mfcc_branch_matches_tensorflow_audio_ops(small_model_dir: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(load_graph_def(small_model_dir / md.STATIC_GRAPH), name="")
    window = np.sin(np.arange(512) * 2 * np.pi * 440 / 16000).astype(np.float32) * 0.5
    with tf.compat.v1.Session(graph=graph) as session:
        mfccs = session.run("mfccs:0", {"input_samples:0": window})
    spectrogram = tf.raw_ops.AudioSpectrogram(
        input=window[:, None], window_size=512, stride=320, magnitude_squared=True
    )
    expected = tf.raw_ops.Mfcc(
        spectrogram=spectrogram, sample_rate=16000, upper_frequency_limit=8000, dct_coefficient_count=26
    )
    assert mfccs.shape == (1, 26)
    np.testing.assert_allclose(mfccs, expected.numpy().reshape(1, 26), atol=1e-6)


def test_alphabet_serialization_layout() -> None:
    serialized = Alphabet(("a", "#", "é")).serialize()
    assert (
        serialized == b"\x03\x00" + b"\x00\x00\x01\x00a" + b"\x01\x00\x01\x00#" + b"\x02\x00\x02\x00\xc3\xa9"
    )


# --- other sources -------------------------------------------------------------------------------------------


def test_converts_an_upstream_style_output_graph(
    tmp_path: Path, small_model_dir: Path, alphabet_file: Path
) -> None:
    from dsconvert.cli import main

    out = tmp_path / "from_graph"
    graph = small_model_dir / md.STATIC_GRAPH
    assert main(["--graph", str(graph), "--alphabet", str(alphabet_file), "--out", str(out)]) == 0
    with np.load(out / md.WEIGHTS_NAME) as a, np.load(small_model_dir / md.WEIGHTS_NAME) as b:
        for name in WEIGHT_NAMES:
            np.testing.assert_array_equal(a[name], b[name])
    assert json.loads((out / md.MANIFEST_NAME).read_text())["source"]["kind"] == "graph"


def test_width_and_classes_are_read_from_the_variables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dsconvert.cli import main

    labels = Alphabet(tuple("abc "))
    (tmp_path / "alphabet.txt").write_text(labels.to_text())
    write_checkpoint(random_weights(24, n_classes=labels.n_classes), tmp_path / "ck")
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(tmp_path / "ck"),
        "--alphabet",
        str(tmp_path / "alphabet.txt"),
        "--out",
        str(out),
    ]
    assert main([*args, "--max-steps", "64"]) == 0
    log = capsys.readouterr().out
    for package in (md.STATIC_PACKAGE, md.DYNAMIC_PACKAGE):
        assert f"[convert] {package} MIL ops: " in log and "(core lstm op in fp16, no while_loop)" in log
    loaded = md.load_model_directory(out)
    assert (loaded.manifest.n_hidden, loaded.manifest.n_classes, loaded.manifest.dynamic_max_steps) == (
        24,
        5,
        64,
    )
    assert loaded.manifest.dynamic_lengths == [*range(1, 17), 24, 32, 50, 64]  # bounded by --max-steps


def test_scorer_is_copied_and_hashed(tmp_path: Path, small_checkpoint: Path, alphabet_file: Path) -> None:
    from dsconvert.cli import main

    scorer = tmp_path / "lm.scorer"
    scorer.write_bytes(b"not checked by convert.py, only copied")
    out = tmp_path / "with_scorer"
    args = ["--checkpoint", str(small_checkpoint), "--alphabet", str(alphabet_file), "--out", str(out)]
    assert main([*args, "--scorer", str(scorer)]) == 0
    loaded = md.load_model_directory(out)
    assert loaded.scorer_path is not None and loaded.scorer_path.read_bytes() == scorer.read_bytes()


# --- bad input: one clear line, non-zero exit, nothing half-written ------------------------------------------


def test_missing_variables_are_listed(tmp_path: Path, alphabet_file: Path) -> None:
    full = random_weights(16)
    partial = {k: v for k, v in full.arrays.items() if not k.startswith("layer_5")}
    write_checkpoint(DeepSpeechWeights(partial), tmp_path / "ck")
    result = run_convert(
        "--checkpoint", tmp_path / "ck", "--alphabet", alphabet_file, "--out", tmp_path / "out"
    )
    assert result.returncode == 2
    assert "lacks DeepSpeech variables: layer_5/weights, layer_5/bias" in result.stderr
    assert not (tmp_path / "out").exists()


def test_alphabet_size_must_match_the_output_layer(tmp_path: Path, small_checkpoint: Path) -> None:
    (tmp_path / "alphabet.txt").write_text("a\nb\nc\n")
    result = run_convert(
        "--checkpoint", small_checkpoint, "--alphabet", tmp_path / "alphabet.txt", "--out", tmp_path / "o"
    )
    assert result.returncode == 2
    assert "has 3 labels (+1 blank = 4 classes) but the model's output layer has 29 classes" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda t, ck, ab: ["--checkpoint", ck, "--alphabet", t / "missing.txt"],
            "cannot read alphabet file",
        ),
        (lambda t, ck, ab: ["--checkpoint", t / "nothing-here", "--alphabet", ab], "no checkpoint found in"),
        (lambda t, ck, ab: ["--graph", t / "garbage.pb", "--alphabet", ab], "is not a TensorFlow GraphDef"),
        (lambda t, ck, ab: ["--graph", t / "absent.pb", "--alphabet", ab], "cannot read graph"),
        (
            lambda t, ck, ab: ["--checkpoint", ck, "--alphabet", ab, "--scorer", t / "x.scorer"],
            "does not exist",
        ),
    ],
)
def test_unreadable_inputs_fail_with_one_clear_line(
    tmp_path: Path, small_checkpoint: Path, alphabet_file: Path, make_args, message: str
) -> None:
    (tmp_path / "garbage.pb").write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    args = make_args(tmp_path, small_checkpoint, alphabet_file)
    result = run_convert(*args, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("convert.py: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path: Path, small_checkpoint: Path, alphabet_file: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = run_convert("--checkpoint", small_checkpoint, "--alphabet", alphabet_file, "--out", out)
    assert result.returncode == 2 and "exists and is not empty; pass --force" in result.stderr
    assert (out / "keep.txt").read_text() == "user data"


def test_failure_mid_conversion_leaves_nothing_behind(
    tmp_path: Path,
    small_checkpoint: Path,
    alphabet_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_model_dir: Path,
) -> None:
    from dsconvert import coreml_export
    from dsconvert.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    # Replacing an existing directory with --force must keep the old one when the new conversion fails.
    out = tmp_path / "models" / "m"
    out.parent.mkdir()
    out.mkdir()
    (out / "previous.txt").write_text("old model")
    monkeypatch.setattr(coreml_export, "convert_to_mlpackage", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        main(
            [
                "--checkpoint",
                str(small_checkpoint),
                "--alphabet",
                str(alphabet_file),
                "--out",
                str(out),
                "--force",
            ]
        )
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    assert (out / "previous.txt").read_text() == "old model"


def test_help_is_instant_and_names_both_sources() -> None:
    result = run_convert("--help")
    assert result.returncode == 0 and "--checkpoint" in result.stdout and "--graph" in result.stdout


# --- --stream-batch: the static package with enumerated batch sizes ------------------------------------------


def test_default_static_package_has_no_batch_dimension(small_model_dir: Path) -> None:
    """Without --stream-batch the static package is batch 1 as before (fixed shapes, macOS 14), and the
    manifest says so."""
    from app.speech.runtime.coreml_runtime import CoreMLTools

    manifest = json.loads((small_model_dir / md.MANIFEST_NAME).read_text())
    assert manifest["stream_batch_sizes"] == [1]
    assert md.load_model_directory(small_model_dir).manifest.stream_batch_sizes == [1]
    assert CoreMLTools().describe_package(small_model_dir / md.STATIC_PACKAGE).batch_sizes == ()
    meta = dict(ct.utils.load_spec(str(small_model_dir / md.STATIC_PACKAGE)).description.metadata.userDefined)
    assert "batch_sizes" not in meta


def test_stream_batch_converts_the_static_package_with_batch_sizes(
    tmp_path: Path, alphabet_file: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--stream-batch 2,4,8,16` (1 added): input_node and both states enumerate the batch index for index,
    macOS 15 by default; the sizes are in the manifest and the package's metadata; the dynamic package and the
    native client's graphs are unchanged in shape; the written package evaluates at a batch size."""
    from app.speech.runtime.coreml_runtime import CoreMLTools
    from dsconvert import mil_eval
    from dsconvert.cli import main

    width = 24
    write_checkpoint(random_weights(width, seed=9), tmp_path / "ck")
    out = tmp_path / "batched"
    args = ["--checkpoint", str(tmp_path / "ck"), "--alphabet", str(alphabet_file), "--out", str(out)]
    assert main([*args, "--stream-batch", "16,2,4,8", "--max-steps", "64"]) == 0
    log = capsys.readouterr().out
    assert f"({md.STATIC_PACKAGE}, batch sizes 1/2/4/8/16)" in log

    loaded = md.load_model_directory(out)
    assert loaded.manifest.stream_batch_sizes == [1, 2, 4, 8, 16]
    spec = ct.utils.load_spec(str(out / md.STATIC_PACKAGE))
    assert spec.specificationVersion == 9, "macOS 15: enumerated shapes on several inputs"
    inputs = _io(spec, "input")
    assert list(inputs) == ["input_node", "previous_state_c", "previous_state_h"]
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    rows = [1, 2, 4, 8, 16]
    assert [list(s.shape) for s in inputs["input_node"].enumeratedShapes.shapes] == [
        [b, 16, 19, 26] for b in rows
    ]
    for name in ("previous_state_c", "previous_state_h"):
        assert [list(s.shape) for s in inputs[name].enumeratedShapes.shapes] == [[b, width] for b in rows]
        assert list(inputs[name].shape) == [1, width] and inputs[name].dataType == float32
    assert list(inputs["input_node"].shape) == [1, 16, 19, 26], "batch 1 is the default shape"
    meta = dict(spec.description.metadata.userDefined)
    assert json.loads(meta["batch_sizes"]) == rows and meta["deployment_target"] == "macOS15"
    assert meta["kind"] == "static" and meta["lstm"] == "core lstm op (fp16)"
    info = CoreMLTools().describe_package(out / md.STATIC_PACKAGE)
    assert info.batch_sizes == tuple(rows) and info.time_lengths == ()
    assert "lstm" in mil_eval.op_types(out / md.STATIC_PACKAGE)

    dynamic = CoreMLTools().describe_package(out / md.DYNAMIC_PACKAGE)
    assert dynamic.batch_sizes == () and dynamic.time_lengths == (*range(1, 17), 24, 32, 50, 64)
    nodes = {n.name: n for n in load_graph_def(out / md.STATIC_GRAPH).node}
    assert [d.size for d in nodes["input_node"].attr["shape"].shape.dim] == [1, 16, 19, 26]
    assert "input_lengths" in nodes, "the native client's graph is upstream's, batch 1"

    rng = np.random.default_rng(1)
    feed = {
        "input_node": rng.standard_normal((4, 16, 19, 26)).astype(np.float32),
        "previous_state_c": rng.standard_normal((4, width)).astype(np.float32),
        "previous_state_h": np.tanh(rng.standard_normal((4, width))).astype(np.float32),
    }
    result = mil_eval.evaluate_package(out / md.STATIC_PACKAGE, feed)
    assert result["logits"].shape == (16, 4, 29) and result["new_state_c"].shape == (4, width)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stream-batch", "1,2,x"], "not a comma-separated list of batch sizes"),
        (["--stream-batch", "0,4"], "batch sizes must lie in 1..64"),
        (["--stream-batch", "128"], "batch sizes must lie in 1..64"),
        (
            ["--stream-batch", "1,2,4", "--deployment-target", "macOS14"],
            "--stream-batch sizes above 1 need --deployment-target macOS15",
        ),
    ],
)
def test_bad_stream_batch_fails_with_one_line(
    tmp_path: Path,
    small_checkpoint: Path,
    alphabet_file: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    from dsconvert.cli import main

    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(small_checkpoint),
        "--alphabet",
        str(alphabet_file),
        "--out",
        str(out),
        *extra,
    ]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
