"""The converted `.mlpackage`s compute what upstream's TensorFlow graph computes, proven on Linux.

Core ML predicts only on macOS, so `dsconvert.mil_eval` evaluates each package's ML Program op by op with NumPy
and these tests compare it with `dsconvert.graph.run_graph` on upstream's (native) graph, on the same inputs and
non-zero LSTM states.

The packages are converted from the graph's `coreml` variant (no length mask, state after the last step: MIL's
core `lstm` op instead of a `while_loop`), so they take only valid steps: a package run on the first `length`
windows is compared with upstream's graph run on all of them with `input_lengths` = length (the windows past
it hold real, non-zero content, or zeros for a stream's padded tail).

Two comparisons per case:
- exactness: the program evaluated in float32 against upstream's graph built with the weights the package
  stores (fp16-rounded, except the LSTM's, which the macOS 13 target keeps in float32). Only float32 summation
  order differs, so any conversion mistake (gate order, state, time axis) shows up orders of magnitude above
  the tolerance.
- the issue's criteria: the program evaluated in the precision it declares (fp16 ops, fp16 weights) against
  the float32 TF graph: argmax per valid frame 100% equal, probabilities within 1e-4, states within 1e-2.

Inputs are MFCC context windows of real speech (espeak-ng, TF's AudioSpectrogram + Mfcc with DeepSpeech's
arguments) and random normal windows. Run with `-s` to see the measured differences.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
ct = pytest.importorskip("coremltools")

from app.speech.alphabet import ENGLISH  # noqa: E402
from app.speech.decoding.greedy import greedy_decode  # noqa: E402
from app.speech.runtime.base import STATIC_STEPS, LstmState, pad_chunk  # noqa: E402
from app.speech.runtime.coreml_backend import CoreMLAcousticModel  # noqa: E402
from app.speech.runtime.numpy_backend import NumpyAcousticModel  # noqa: E402
from app.speech.runtime.windows import Piece, Predict, plan_pieces, run_in_pieces  # noqa: E402
from dsconvert import mil_eval  # noqa: E402
from dsconvert.coreml_export import convert_to_mlpackage, dynamic_lengths  # noqa: E402
from dsconvert.graph import FrozenGraph, build_frozen_graph, run_graph  # noqa: E402
from dsconvert.weights import LSTM_BIAS, LSTM_KERNEL, DeepSpeechWeights, random_weights  # noqa: E402

WIDTH = 64
SENTENCE = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge the boxing match"

# The acceptance criteria for the fp16 package against the float32 TF graph.
PROB_TOLERANCE = 1e-4
STATE_TOLERANCE = 1e-2
# Exactness (float32 evaluation vs TF with the package's stored weights): float32 rounding only.
EXACT_PROB_TOLERANCE = 1e-5  # big logits (confident outputs) amplify float32 rounding to ~1e-6
EXACT_STATE_RELATIVE = 1e-5  # of max(1, largest |state|): c grows with the sequence


@dataclass
class Converted:
    """One package and upstream's native graphs (static and dynamic) to check it against, built on demand."""

    weights: DeepSpeechWeights
    program: mil_eval.LoadedProgram
    n_steps: int | None
    _graphs: dict[tuple[int | None, bool], FrozenGraph] = field(default_factory=dict, repr=False)

    def reference(self, n_steps: int | None, stored: bool) -> FrozenGraph:
        """Upstream's graph with float32 weights, or (stored=True) with the weights the package stores."""
        key = (n_steps, stored)
        if key not in self._graphs:
            weights = _stored_weights(self.weights, self.program) if stored else self.weights
            self._graphs[key] = build_frozen_graph(weights, ENGLISH, n_steps)
        return self._graphs[key]


@dataclass(frozen=True)
class Diffs:
    probs: float
    state_c: float
    state_h: float
    argmax_agreement: float  # over all valid frames
    decisive_agreement: float  # over valid frames whose reference top-2 margin exceeds 2 x the prob tolerance
    near_ties: int  # valid frames left out of decisive_agreement

    @property
    def states(self) -> float:
        return max(self.state_c, self.state_h)


def _lstm_op(program: mil_eval.LoadedProgram):  # noqa: ANN202 (a coremltools MIL Operation)
    (op,) = [op for op in mil_eval.walk_ops(program.function) if op.op_type == "lstm"]
    return op


def _stored_weights(weights: DeepSpeechWeights, program: mil_eval.LoadedProgram) -> DeepSpeechWeights:
    """The weights a float16 package stores: dense layers fp16-rounded; the LSTM's only where its op is fp16
    (the iOS 17 opset); with the macOS 13 target the core lstm op is fp32-only and keeps float32 weights."""
    from coremltools.converters.mil.mil import types

    lstm_fp16 = _lstm_op(program).inputs["weight_ih"].dtype == types.fp16
    return DeepSpeechWeights(
        {
            k: v
            if k in (LSTM_KERNEL, LSTM_BIAS) and not lstm_fp16
            else v.astype(np.float16).astype(np.float32)
            for k, v in weights.arrays.items()
        }
    )


def _convert(
    weights: DeepSpeechWeights,
    n_steps: int | None,
    out: Path,
    deployment_target: str = "macOS13",
    **options: Any,
) -> Converted:
    """Convert and save one package; `options` (precision, max_steps) go to convert_to_mlpackage."""
    frozen = build_frozen_graph(weights, ENGLISH, n_steps, variant="coreml")
    model = convert_to_mlpackage(
        frozen, weights.n_cell_dim, {}, deployment_target=deployment_target, **options
    )
    model.save(str(out))
    return Converted(weights, mil_eval.load_program(out), n_steps)


def _speech_windows(directory: Path) -> np.ndarray | None:
    """(1, T, 19, 26) context windows of synthetic speech, computed like DeepSpeech's graph computes them."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    import soundfile
    import soxr

    wav = directory / "speech.wav"
    subprocess.run([espeak, "-w", str(wav), SENTENCE], check=True, capture_output=True)
    audio, rate = soundfile.read(wav, dtype="float32")
    audio = soxr.resample(audio, rate, 16000).astype(np.float32)
    spectrogram = tf.raw_ops.AudioSpectrogram(
        input=audio[:, np.newaxis], window_size=512, stride=320, magnitude_squared=True
    )
    mfcc = tf.raw_ops.Mfcc(
        spectrogram=spectrogram,
        sample_rate=16000,
        upper_frequency_limit=8000.0,
        lower_frequency_limit=20.0,
        filterbank_channel_count=40,
        dct_coefficient_count=26,
    ).numpy()[0]
    padded = np.pad(mfcc, ((9, 9), (0, 0)))  # 9 zero frames of context on each side
    windows = np.lib.stride_tricks.sliding_window_view(padded, 19, axis=0).transpose(0, 2, 1)
    return np.ascontiguousarray(windows[np.newaxis], dtype=np.float32)


def _inputs(kind: str, speech: np.ndarray | None, steps: int, length: int, n_cell: int, seed: int) -> dict:
    """Upstream's inputs: windows of `steps` frames (`length` valid), random non-zero LSTM state (h in (-1, 1))."""
    rng = np.random.default_rng(seed)
    if kind == "speech":
        if speech is None:
            pytest.skip("espeak-ng is not installed: no speech input")
        start = 20 + 7 * seed % 40  # somewhere inside the sentence
        windows = speech[:, start : start + steps].copy()
        assert windows.shape[1] == steps
    else:
        windows = rng.standard_normal((1, steps, 19, 26)).astype(np.float32)
    return {
        "input_node": windows,
        "input_lengths": np.array([length], dtype=np.int32),
        "previous_state_c": rng.standard_normal((1, n_cell)).astype(np.float32),
        "previous_state_h": np.tanh(rng.standard_normal((1, n_cell))).astype(np.float32),
    }


def _tail(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero the windows past input_lengths, as the native client pads a stream's last chunk to 16."""
    inputs["input_node"][:, int(inputs["input_lengths"][0]) :] = 0.0
    return inputs


def _package_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the package takes for upstream's inputs: the valid windows only, no input_lengths."""
    length = int(inputs["input_lengths"][0])
    return {
        "input_node": inputs["input_node"][:, :length],
        "previous_state_c": inputs["previous_state_c"],
        "previous_state_h": inputs["previous_state_h"],
    }


def _diffs(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], frames: int, tolerance: float) -> Diffs:
    """Max abs differences over the first `frames` (valid) frames, and argmax agreement overall and on the
    frames a `tolerance` error cannot flip.

    Where the reference's two best classes are closer than 2 x tolerance, outputs that agree within tolerance
    may still pick different classes (random weights give flat outputs: margins of 1e-6 occur, below the fp16
    grid, so both classes round to one fp16 value). Those frames are counted, not required to agree.
    """
    assert out["logits"].shape == (frames, *ref["logits"].shape[1:])
    assert out["new_state_c"].shape == ref["new_state_c"].shape
    got, want = out["logits"][:frames, 0], ref["logits"][:frames, 0]
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * tolerance
    same = got.argmax(-1) == want.argmax(-1)
    return Diffs(
        probs=float(np.abs(got - want).max()),
        state_c=float(np.abs(out["new_state_c"] - ref["new_state_c"]).max()),
        state_h=float(np.abs(out["new_state_h"] - ref["new_state_h"]).max()),
        argmax_agreement=float(np.mean(same)),
        decisive_agreement=float(np.mean(same[decisive])) if decisive.any() else 1.0,
        near_ties=int(np.count_nonzero(~decisive)),
    )


def _verify(
    model: Converted, inputs: dict[str, np.ndarray], label: str, upstream_steps: int | None | str = "same"
) -> tuple[Diffs, Diffs]:
    """The package on the valid windows against upstream's graph on all of `inputs` with input_lengths:
    exactness, then the issue's criteria, over the valid frames; returns both diffs.

    `upstream_steps`: which of upstream's graphs is the reference (16: static, None: dynamic); by default the
    one the package was converted from.
    """
    graph_steps = model.n_steps if upstream_steps == "same" else upstream_steps
    assert graph_steps is None or isinstance(graph_steps, int)
    args = [inputs[k] for k in ("input_node", "input_lengths", "previous_state_c", "previous_state_h")]
    length = int(inputs["input_lengths"][0])
    package_inputs = _package_inputs(inputs)

    exact_ref = run_graph(model.reference(graph_steps, stored=True), *args)
    exact_out = mil_eval.evaluate(model.program, package_inputs, precision="fp32")
    exact = _diffs(exact_out, exact_ref, length, EXACT_PROB_TOLERANCE)
    state_scale = max(1.0, float(np.abs(exact_ref["new_state_c"]).max()))

    ref = run_graph(model.reference(graph_steps, stored=False), *args)
    fp16 = _diffs(mil_eval.evaluate(model.program, package_inputs), ref, length, PROB_TOLERANCE)
    print(
        f"\n{label}: fp16 program vs fp32 TF: probs {fp16.probs:.2e}, c {fp16.state_c:.2e}, h {fp16.state_h:.2e}, "
        f"argmax {fp16.argmax_agreement:.1%} ({fp16.decisive_agreement:.0%} of frames with margin > 2e-4, "
        f"{fp16.near_ties} near ties) | fp32 evaluation vs TF(stored weights): probs {exact.probs:.1e}, "
        f"states {exact.states:.1e} (|c| up to {state_scale:.1f}, max p {ref['logits'][:length].max():.3f})"
    )

    assert exact.decisive_agreement == 1.0, f"{label}: conversion changes the argmax: {exact}"
    assert exact.probs <= EXACT_PROB_TOLERANCE, f"{label}: conversion changes probabilities: {exact}"
    assert exact.states <= EXACT_STATE_RELATIVE * state_scale, f"{label}: conversion changes states: {exact}"

    assert fp16.decisive_agreement == 1.0, f"{label}: fp16 argmax differs on some frames: {fp16}"
    assert fp16.probs <= PROB_TOLERANCE, f"{label}: {fp16}"
    assert fp16.states <= STATE_TOLERANCE, f"{label}: {fp16}"
    return exact, fp16


@pytest.fixture(scope="module")
def weights() -> DeepSpeechWeights:
    return random_weights(WIDTH, seed=3)


@pytest.fixture(scope="module")
def static_model(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return _convert(weights, 16, tmp_path_factory.mktemp("mil") / "static.mlpackage")


@pytest.fixture(scope="module")
def dynamic_model(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return _convert(weights, None, tmp_path_factory.mktemp("mil") / "dynamic.mlpackage")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray | None:
    return _speech_windows(tmp_path_factory.mktemp("speech"))


@pytest.mark.parametrize("kind", ["speech", "normal"])
def test_static_full_chunk(static_model: Converted, speech: np.ndarray | None, kind: str) -> None:
    _verify(static_model, _inputs(kind, speech, 16, 16, WIDTH, seed=1), f"static 16/16 {kind}")


@pytest.mark.parametrize("kind", ["speech", "normal"])
def test_tail_chunk_through_the_dynamic_package(
    dynamic_model: Converted, speech: np.ndarray | None, kind: str
) -> None:
    """The last chunk of a stream: its 5 windows through the dynamic package (what the Core ML backend does)
    give what upstream's static graph gives for them zero-padded to 16 with input_lengths = 5."""
    inputs = _tail(_inputs(kind, speech, 16, 5, WIDTH, seed=2))
    _verify(
        dynamic_model, inputs, f"tail 5 (dynamic package) vs upstream static 5/16 {kind}", upstream_steps=16
    )


@pytest.mark.parametrize("steps,length", [(1, 1), (16, 16), (50, 50), (16, 5), (37, 24)])
@pytest.mark.parametrize("kind", ["speech", "normal"])
def test_dynamic(
    dynamic_model: Converted, speech: np.ndarray | None, kind: str, steps: int, length: int
) -> None:
    """The dynamic package on `length` windows (one of its enumerated lengths) against upstream's dynamic
    graph on `steps` windows with input_lengths = length. The windows past it keep their real (non-zero)
    content: upstream's state must come from step length-1, the package's from its last step."""
    inputs = _inputs(kind, speech, steps, length, WIDTH, seed=steps + length)
    _verify(dynamic_model, inputs, f"dynamic {length} vs upstream {length}/{steps} {kind}")


class MilEvalMLModel:
    """Stands in for `coremltools.models.MLModel` on Linux: `predict` evaluates the package's ML Program with
    `mil_eval` (refusing undeclared or missing inputs and out-of-range shapes, as Core ML does)."""

    def __init__(self, program: mil_eval.LoadedProgram) -> None:
        self.program = program
        self.input_description = {spec.name for spec in program.inputs}
        self.feeds: list[dict[str, np.ndarray]] = []

    def predict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append(feed)
        return mil_eval.evaluate(self.program, feed)


@pytest.mark.parametrize("kind", ["speech", "normal"])
def test_stream_through_the_coreml_backend(
    static_model: Converted, dynamic_model: Converted, weights: DeepSpeechWeights, speech, kind: str
) -> None:
    """A stream of 3 full chunks and a 5-window tail through `CoreMLAcousticModel` running the packages (with
    the MIL evaluator in place of Core ML), the state carried across chunks: same probabilities and state as
    upstream's static graph chunk by chunk (tail zero-padded, input_lengths = 5), as the NumPy backend, and as
    upstream's dynamic graph in one pass."""
    n_windows = 3 * STATIC_STEPS + 5
    inputs = _inputs(kind, speech, n_windows, n_windows, WIDTH, seed=11)
    windows = inputs["input_node"][0]
    start = LstmState(inputs["previous_state_c"], inputs["previous_state_h"])
    fakes = {"static": MilEvalMLModel(static_model.program), "dynamic": MilEvalMLModel(dynamic_model.program)}
    backend = CoreMLAcousticModel(
        Path("static"), Path("dynamic"), WIDTH, 29, 1000, load=lambda path, units: fakes[path.name]
    )

    upstream = static_model.reference(STATIC_STEPS, stored=False)
    state, ref_c, ref_h = start, start.c, start.h
    parts, ref_parts = [], []
    for offset in range(0, n_windows, STATIC_STEPS):
        chunk, length = pad_chunk(windows[offset : offset + STATIC_STEPS])
        probs, state = backend.run_chunk(chunk, length, state)
        ref = run_graph(upstream, chunk[None], np.array([length], np.int32), ref_c, ref_h)
        ref_c, ref_h = ref["new_state_c"], ref["new_state_h"]
        parts.append(probs)
        ref_parts.append(ref["logits"][:length, 0])
    probs, want = np.concatenate(parts), np.concatenate(ref_parts)

    # Full chunks went to the static package, the tail unpadded to the dynamic one; nobody got input_lengths.
    assert [f["input_node"].shape[1] for f in fakes["static"].feeds] == [16, 16, 16]
    assert [f["input_node"].shape[1] for f in fakes["dynamic"].feeds] == [5]
    assert all("input_lengths" not in f for fake in fakes.values() for f in fake.feeds)

    numpy_backend = NumpyAcousticModel(weights.arrays, max_steps=1000)
    numpy_probs, numpy_state = numpy_backend.run_window(windows, start)
    one_pass = run_graph(static_model.reference(None, stored=False), *(inputs[k] for k in (
        "input_node", "input_lengths", "previous_state_c", "previous_state_h")))  # fmt: skip
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * PROB_TOLERANCE
    print(
        f"\nstream {n_windows} {kind} through the Core ML backend: probs {np.abs(probs - want).max():.2e}, "
        f"c {np.abs(state.c - ref_c).max():.2e}, h {np.abs(state.h - ref_h).max():.2e} vs upstream chunk by chunk"
    )
    assert probs.shape == want.shape == (n_windows, 29)
    assert np.abs(probs - want).max() <= PROB_TOLERANCE
    assert max(np.abs(state.c - ref_c).max(), np.abs(state.h - ref_h).max()) <= STATE_TOLERANCE
    assert np.array_equal(probs.argmax(-1)[decisive], want.argmax(-1)[decisive])
    # The references agree with each other in float32 (the chunked stream is the one pass, state carried).
    np.testing.assert_allclose(numpy_probs, want, atol=1e-5)
    np.testing.assert_allclose(one_pass["logits"][:, 0], want, atol=1e-5)
    np.testing.assert_allclose(numpy_state.c, ref_c, atol=1e-4)
    np.testing.assert_allclose(one_pass["new_state_h"], ref_h, atol=1e-5)


def test_packages_use_the_core_lstm_op(static_model: Converted, dynamic_model: Converted) -> None:
    """What makes them fast on a Mac: MIL's core `lstm` op (GPU / Neural Engine), no `while_loop` (CPU)."""
    for name, model in (("static", static_model), ("dynamic", dynamic_model)):
        ops = mil_eval.op_types(model.program)
        print(f"\n{name} package MIL ops: {', '.join(sorted(ops))}")
        assert "lstm" in ops and "while_loop" not in ops, f"{name}: {sorted(ops)}"
        assert ops <= mil_eval.supported_op_types()
        lstm = _lstm_op(model.program)
        assert lstm.inputs["output_sequence"].val and lstm.inputs["direction"].val == "forward"
    assert [spec.name for spec in static_model.program.inputs] == [
        "input_node",
        "previous_state_c",
        "previous_state_h",
    ]
    # The dynamic package's time axis is enumerated (the Neural Engine's kind of flexibility), the static
    # 16 first (coremltools lists the default first), and its program is the same symbolic one as before.
    node = dynamic_model.program.inputs[0]
    assert node.shapes[0] == (1, STATIC_STEPS, 19, 26)
    assert sorted(shape[1] for shape in node.shapes) == list(dynamic_lengths())
    assert {shape[2:] for shape in node.shapes} == {(19, 26)}


def test_upstream_graph_keeps_the_masked_lstm(weights: DeepSpeechWeights) -> None:
    """The native client's graph is upstream's form (length mask + state gathered at input_lengths-1); only
    the Core ML variant drops them, and for inputs whose steps are all valid both compute the same."""
    native = build_frozen_graph(weights, ENGLISH, 16)
    coreml = build_frozen_graph(weights, ENGLISH, 16, variant="coreml")
    native_ops = {n.op for n in native.graph_def.node}
    coreml_ops = {n.op for n in coreml.graph_def.node}
    assert "GatherNd" in native_ops and "StridedSlice" not in native_ops
    assert "GatherNd" not in coreml_ops and "input_lengths" not in {n.name for n in coreml.graph_def.node}
    inputs = _inputs("normal", None, 16, 16, WIDTH, seed=4)
    args = [inputs[k] for k in ("input_node", "input_lengths", "previous_state_c", "previous_state_h")]
    want = run_graph(native, *args)
    got = run_graph(coreml, *args)  # input_lengths (16) is not fed: the variant has no such placeholder
    for name in ("logits", "new_state_c", "new_state_h"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
    with pytest.raises(ValueError, match="variant='coreml'"):
        convert_to_mlpackage(native, WIDTH, {})


def test_program_uses_only_handled_ops(static_model: Converted, dynamic_model: Converted) -> None:
    for model in (static_model, dynamic_model):
        assert mil_eval.op_types(model.program) <= mil_eval.supported_op_types()


def test_refuses_inputs_core_ml_would_refuse(static_model: Converted, dynamic_model: Converted) -> None:
    too_long = _package_inputs(_inputs("normal", None, 17, 17, WIDTH, seed=0))
    with pytest.raises(mil_eval.MilEvalError, match="input_node has shape"):
        mil_eval.evaluate(static_model.program, too_long)
    # The dynamic package takes its enumerated lengths only (17 lies between 16 and 24).
    with pytest.raises(mil_eval.MilEvalError, match=r"\(1, 17, 19, 26\), not one of its enumerated shapes"):
        mil_eval.evaluate(dynamic_model.program, too_long)
    short = _package_inputs(_inputs("normal", None, 16, 5, WIDTH, seed=0))
    with pytest.raises(mil_eval.MilEvalError, match="input_node has shape"):
        mil_eval.evaluate(static_model.program, short)  # the static package takes full chunks only
    missing = _package_inputs(_inputs("normal", None, 16, 16, WIDTH, seed=0))
    del missing["previous_state_h"]
    with pytest.raises(mil_eval.MilEvalError, match="needs input 'previous_state_h'"):
        mil_eval.evaluate(static_model.program, missing)
    with pytest.raises(mil_eval.MilEvalError, match="has no inputs named input_lengths"):
        mil_eval.evaluate(static_model.program, _inputs("normal", None, 16, 16, WIDTH, seed=0))


def _mil_package(build, out: Path, precision=None) -> Path:  # noqa: ANN001 (a coremltools MIL program)
    model = ct.convert(
        build,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.macOS13,
        compute_precision=precision or ct.precision.FLOAT32,
    )
    model.save(str(out))
    return out


def test_unknown_op_is_refused_by_name(tmp_path: Path) -> None:
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec((2, 3))], opset_version=ct.target.macOS13)
    def program(x):  # noqa: ANN001, ANN202
        return mb.sin(x=mb.relu(x=x))

    package = _mil_package(program, tmp_path / "sin.mlpackage")
    with pytest.raises(mil_eval.MilEvalError, match=r"unsupported MIL op type 'sin'"):
        mil_eval.evaluate_package(package, {"x": np.ones((2, 3), np.float32)})


@pytest.mark.parametrize("output_sequence", [True, False])
def test_lstm_op_matches_tensorflow_block_lstm(tmp_path: Path, output_sequence: bool) -> None:
    """The `lstm` handler on an op built by hand (not by the converter) against TF's BlockLSTM with DeepSpeech's
    kernel layout: checks MIL's gate order (i, f, o, z) and weight layout independently of coremltools' pass."""
    from coremltools.converters.mil import Builder as mb

    steps, n_in, n_cell = 7, 10, 8
    rng = np.random.default_rng(0)
    kernel = (rng.standard_normal((n_in + n_cell, 4 * n_cell)) * 0.5).astype(np.float32)  # rows [x; h]
    bias = (rng.standard_normal(4 * n_cell) * 0.1).astype(np.float32)

    def to_mil(m: np.ndarray) -> np.ndarray:  # BlockLSTM columns i, c, f, o -> MIL gates i, f, o, z
        i, c, f, o = np.split(m, 4, axis=-1)
        return np.concatenate([i, f, o, c], axis=-1)

    @mb.program(
        input_specs=[mb.TensorSpec((steps, 1, n_in)), mb.TensorSpec((1, n_cell)), mb.TensorSpec((1, n_cell))],
        opset_version=ct.target.macOS13,
    )
    def program(x, h0, c0):  # noqa: ANN001, ANN202
        return mb.lstm(
            x=x,
            initial_h=h0,
            initial_c=c0,
            weight_ih=to_mil(kernel[:n_in]).T,
            weight_hh=to_mil(kernel[n_in:]).T,
            bias=to_mil(bias),
            output_sequence=output_sequence,
        )

    loaded = mil_eval.load_program(_mil_package(program, tmp_path / "lstm.mlpackage"))
    assert "lstm" in mil_eval.op_types(loaded)
    x = rng.standard_normal((steps, 1, n_in)).astype(np.float32)
    h0 = np.tanh(rng.standard_normal((1, n_cell))).astype(np.float32)
    c0 = rng.standard_normal((1, n_cell)).astype(np.float32)
    names = [spec.name for spec in loaded.inputs]
    sequence, h, c = mil_eval.evaluate(loaded, dict(zip(names, (x, h0, c0), strict=True))).values()

    no_peephole = np.zeros(n_cell, np.float32)
    ref = tf.raw_ops.BlockLSTM(
        seq_len_max=np.int64(steps), x=x, cs_prev=c0, h_prev=h0, w=kernel, wci=no_peephole, wcf=no_peephole,
        wco=no_peephole, b=bias, forget_bias=0.0, cell_clip=-1.0, use_peephole=False,
    )  # fmt: skip
    np.testing.assert_allclose(sequence, ref.h.numpy() if output_sequence else ref.h.numpy()[-1:], atol=1e-6)
    np.testing.assert_allclose(h, ref.h.numpy()[-1], atol=1e-6)
    np.testing.assert_allclose(c, ref.cs.numpy()[-1], atol=1e-6)


def test_lstm_variants_the_definition_leaves_open_are_refused(tmp_path: Path) -> None:
    from coremltools.converters.mil import Builder as mb

    n_in, n_cell = 3, 2
    w_ih, w_hh = np.ones((4 * n_cell, n_in), np.float32), np.ones((4 * n_cell, n_cell), np.float32)

    @mb.program(
        input_specs=[mb.TensorSpec((4, 1, n_in)), mb.TensorSpec((1, n_cell)), mb.TensorSpec((1, n_cell))],
        opset_version=ct.target.macOS13,
    )
    def program(x, h0, c0):  # noqa: ANN001, ANN202
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=w_ih, weight_hh=w_hh, direction="reverse")

    package = _mil_package(program, tmp_path / "reverse.mlpackage")
    names = [spec.name for spec in mil_eval.load_program(package).inputs]
    values = (
        np.ones((4, 1, n_in), np.float32),
        np.zeros((1, n_cell), np.float32),
        np.zeros((1, n_cell), np.float32),
    )
    with pytest.raises(mil_eval.MilEvalError, match="direction 'reverse' is not supported"):
        mil_eval.evaluate_package(package, dict(zip(names, values, strict=True)))


def test_fp16_error_on_confident_outputs(
    weights: DeepSpeechWeights, tmp_path: Path, speech: np.ndarray | None
) -> None:
    """What the fp16 package costs where a trained model lives: confident frames (layer_6 x30 gives p ~0.99).

    Random weights give flat outputs (max p ~0.07), where the fp16 grid is 3e-5 apart, so the issue's 1e-4
    holds above. Near p = 1 the fp16 grid is 4.9e-4 apart: rounding the softmax output alone can cost 2.4e-4,
    so no fp16 package meets 1e-4 there. Asserted: the conversion stays exact, the argmax agrees, and the
    fp16 error stays within a few fp16 steps near 1.
    """
    arrays = dict(weights.arrays)
    arrays["layer_6/weights"] = arrays["layer_6/weights"] * 30.0
    model = _convert(DeepSpeechWeights(arrays), None, tmp_path / "confident.mlpackage")
    kind = "speech" if speech is not None else "normal"
    inputs = _inputs(kind, speech, 50, 50, WIDTH, seed=5)
    args = [inputs[k] for k in ("input_node", "input_lengths", "previous_state_c", "previous_state_h")]
    package_inputs = _package_inputs(inputs)
    exact_ref = run_graph(model.reference(None, stored=True), *args)
    exact = _diffs(
        mil_eval.evaluate(model.program, package_inputs, "fp32"), exact_ref, 50, EXACT_PROB_TOLERANCE
    )
    ref = run_graph(model.reference(None, stored=False), *args)
    fp16 = _diffs(mil_eval.evaluate(model.program, package_inputs), ref, 50, PROB_TOLERANCE)
    print(
        f"\nconfident 50/50 {kind}: max p {ref['logits'].max():.4f}; fp16 program {fp16}; fp32 evaluation {exact}"
    )
    assert exact.probs <= EXACT_PROB_TOLERANCE and exact.decisive_agreement == 1.0
    assert fp16.argmax_agreement == 1.0
    assert fp16.probs <= 5e-3  # ~10 fp16 steps near 1


@pytest.mark.slow
def test_real_width_2048(tmp_path: Path) -> None:
    """DeepSpeech's real width: the static package on one chunk, the dynamic one on a tail and 50 steps."""
    started = time.monotonic()
    weights = random_weights(2048, seed=7)
    speech = _speech_windows(tmp_path)
    kind = "speech" if speech is not None else "normal"
    static = _convert(weights, 16, tmp_path / "static.mlpackage")
    dynamic = _convert(weights, None, tmp_path / "dynamic.mlpackage")
    converted = time.monotonic()
    _verify(static, _inputs(kind, speech, 16, 16, 2048, seed=1), f"2048 static 16/16 {kind}")
    tail = _tail(_inputs(kind, speech, 16, 5, 2048, seed=2))
    _verify(dynamic, tail, f"2048 tail 5 (dynamic) vs upstream static 5/16 {kind}", upstream_steps=16)
    _verify(dynamic, _inputs(kind, speech, 50, 50, 2048, seed=3), f"2048 dynamic 50/50 {kind}")
    print(f"\n2048: conversions {converted - started:.1f} s, checks {time.monotonic() - converted:.1f} s")


def test_macos14_target_runs_the_lstm_in_float16(
    weights: DeepSpeechWeights, tmp_path: Path, speech: np.ndarray | None
) -> None:
    """`--deployment-target macOS14`: the iOS 17 opset's core lstm takes fp16, so the whole program is fp16
    (the Neural Engine's precision; macOS 13's lstm is fp32-only). The fp16 LSTM carries fp16 state from step
    to step (the evaluator rounds h and c per step); the issue's bounds still hold."""
    from coremltools.converters.mil.mil import types

    kind = "speech" if speech is not None else "normal"
    static = _convert(weights, 16, tmp_path / "static14.mlpackage", deployment_target="macOS14")
    dynamic = _convert(weights, None, tmp_path / "dynamic14.mlpackage", deployment_target="macOS14")
    for model in (static, dynamic):
        ops = mil_eval.op_types(model.program)
        assert "lstm" in ops and "while_loop" not in ops and ops <= mil_eval.supported_op_types()
        lstm = _lstm_op(model.program)
        assert lstm.outputs[0].dtype == types.fp16 and lstm.inputs["weight_hh"].dtype == types.fp16
    _verify(static, _inputs(kind, speech, 16, 16, WIDTH, seed=1), f"macOS14 static 16/16 {kind}")
    tail = _tail(_inputs(kind, speech, 16, 5, WIDTH, seed=2))
    _verify(dynamic, tail, f"macOS14 tail 5 vs upstream static 5/16 {kind}", upstream_steps=16)
    _verify(dynamic, _inputs(kind, speech, 37, 24, WIDTH, seed=57), f"macOS14 dynamic 24 vs 24/37 {kind}")


# --- enumerated time lengths: a file in planned pieces, its last one zero-padded ------------------------------
# The dynamic package takes only its enumerated lengths, so the service runs a file as full windows of the
# largest length plus a last piece zero-padded up to the next length (app/speech/runtime/windows.py). The LSTM
# is causal: the real windows' probabilities are those of one exact pass, which the NumPy backend computes.

# The float32 package's bound: lengths 1..16, 24, 32, 50, 75, 100, so short inputs make plans of several pieces.
SMALL_MAX_STEPS = 100
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
CONFIDENT_PROB_TOLERANCE = 5e-3  # fp16 near p = 1 (test_fp16_error_on_confident_outputs)


@pytest.fixture(scope="module")
def fp32_dynamic(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    out = tmp_path_factory.mktemp("mil") / "dynamic32.mlpackage"
    return _convert(weights, None, out, "macOS14", precision="float32", max_steps=SMALL_MAX_STEPS)


def _predict(program: mil_eval.LoadedProgram) -> Predict:
    """One prediction of the package, made by the MIL evaluator as the Core ML adapter makes it."""

    def predict(windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        feed = {"input_node": windows[None], "previous_state_c": state.c, "previous_state_h": state.h}
        out = mil_eval.evaluate(program, feed)
        return out["logits"][:, 0], LstmState(out["new_state_c"], out["new_state_h"])

    return predict


def _file_windows(speech: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """n windows: the speech's first ones (as many as there are), then random normal windows."""
    rng = np.random.default_rng(seed)
    head = np.zeros((0, 19, 26), np.float32) if speech is None else speech[0, :n]
    rest = rng.standard_normal((n - len(head), 19, 26)).astype(np.float32)
    return np.concatenate([head, rest])


def _random_state(seed: int, n_cell: int = WIDTH) -> LstmState:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((1, n_cell)).astype(np.float32)
    return LstmState(c, np.tanh(rng.standard_normal((1, n_cell))).astype(np.float32))


@pytest.mark.parametrize("n_windows,last_length", [(17, 24), (33, 50), (100, 100), (237, 50), (300, 100)])
def test_file_in_planned_pieces_float32(
    fp32_dynamic: Converted,
    weights: DeepSpeechWeights,
    speech: np.ndarray | None,
    n_windows: int,
    last_length: int,
) -> None:
    """A file through the float32 package in the planned pieces (windows of 100, the last zero-padded up to
    the next length) gives the NumPy backend's one-pass probabilities within float32 rounding and its
    greedy transcript; exact pieces (keep_state) give its final state too."""
    lengths = dynamic_lengths(SMALL_MAX_STEPS)
    plan = plan_pieces(n_windows, lengths)
    assert plan[-1].length == last_length and plan[-1].stop == n_windows
    assert all(piece.length == piece.valid == SMALL_MAX_STEPS for piece in plan[:-1])
    windows, start = _file_windows(speech, n_windows, seed=n_windows), _random_state(n_windows)
    want, want_state = NumpyAcousticModel(weights.arrays, max_steps=n_windows).run_window(windows, start)

    probs, state = run_in_pieces(_predict(fp32_dynamic.program), windows, start, lengths)
    print(f"\n{n_windows} windows as {[p.length for p in plan]}: probs {np.abs(probs - want).max():.1e}")
    assert probs.shape == want.shape
    np.testing.assert_allclose(probs, want, atol=EXACT_PROB_TOLERANCE)
    assert greedy_decode(probs).text == greedy_decode(want).text
    assert (state is None) == (plan[-1].padding > 0), "a padded last piece's state is not handed back"

    exact, exact_state = run_in_pieces(
        _predict(fp32_dynamic.program), windows, start, lengths, keep_state=True
    )
    assert exact_state is not None
    np.testing.assert_allclose(exact, want, atol=EXACT_PROB_TOLERANCE)
    scale = EXACT_STATE_RELATIVE * max(1.0, float(np.abs(want_state.c).max()))
    np.testing.assert_allclose(exact_state.c, want_state.c, atol=scale)
    np.testing.assert_allclose(exact_state.h, want_state.h, atol=scale)


def test_long_file_in_planned_pieces_float16(
    dynamic_model: Converted, weights: DeepSpeechWeights, speech: np.ndarray | None
) -> None:
    """The float16 package with the lengths scripts/convert.py gives it: 1234 windows run as 1000 + 234
    zero-padded to 300, within the issue's fp16 bound of the NumPy backend's one pass, argmax equal on every
    frame an error of that bound cannot flip."""
    lengths = dynamic_lengths()
    assert [(p.valid, p.length) for p in plan_pieces(1234, lengths)] == [(1000, 1000), (234, 300)]
    windows, start = _file_windows(speech, 1234, seed=12), _random_state(12)
    want, _ = NumpyAcousticModel(weights.arrays, max_steps=1234).run_window(windows, start)
    probs, state = run_in_pieces(_predict(dynamic_model.program), windows, start, lengths)
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * PROB_TOLERANCE
    print(
        f"\n1234 windows fp16: probs {np.abs(probs - want).max():.1e}, {np.count_nonzero(~decisive)} near ties"
    )
    assert probs.shape == want.shape and state is None
    assert np.abs(probs - want).max() <= PROB_TOLERANCE
    assert np.array_equal(probs.argmax(-1)[decisive], want.argmax(-1)[decisive])


@pytest.mark.skipif(not (DEFAULT_MODEL / "weights.npz").is_file(), reason="models/default is not built")
def test_trained_model_transcript_in_planned_pieces(tmp_path: Path, speech: np.ndarray | None) -> None:
    """A trained model (models/default, width 256) converted as shipped (macOS 14: fp16 throughout), time
    bound 100 so a sentence is several pieces, the last zero-padded: the same greedy transcript as the NumPy
    backend's one pass, the same best class on every decisive frame. (Random weights give near ties that
    fp16 rounding flips whatever the pieces; a trained model's frames are decisive.)"""
    if speech is None:
        pytest.skip("espeak-ng is not installed: no speech input")
    with np.load(DEFAULT_MODEL / "weights.npz") as npz:
        trained = DeepSpeechWeights({name: npz[name] for name in npz.files})
    model = _convert(trained, None, tmp_path / "trained.mlpackage", "macOS14", max_steps=SMALL_MAX_STEPS)
    windows, start = speech[0], LstmState.zeros(trained.n_cell_dim)
    lengths = dynamic_lengths(SMALL_MAX_STEPS)
    assert plan_pieces(len(windows), lengths)[-1].padding > 0
    want, _ = NumpyAcousticModel(trained.arrays, max_steps=len(windows)).run_window(windows, start)
    probs, _ = run_in_pieces(_predict(model.program), windows, start, lengths)
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * CONFIDENT_PROB_TOLERANCE
    text = greedy_decode(probs).text
    print(f"\ntrained, {len(windows)} windows in pieces: {text!r}, probs {np.abs(probs - want).max():.1e}")
    assert text == greedy_decode(want).text and text.strip()
    assert np.abs(probs - want).max() <= CONFIDENT_PROB_TOLERANCE
    assert np.array_equal(probs.argmax(-1)[decisive], want.argmax(-1)[decisive])


@pytest.mark.parametrize("tail", range(1, STATIC_STEPS))
def test_stream_tail_at_its_enumerated_length(
    fp32_dynamic: Converted,
    dynamic_model: Converted,
    weights: DeepSpeechWeights,
    speech: np.ndarray | None,
    tail: int,
) -> None:
    """A stream's last chunk (1..15 windows) is one of the enumerated lengths, so its plan is one unpadded
    piece: the NumPy backend's probabilities and state (float32 package within float32 rounding, float16
    within the issue's bounds). The same tail zero-padded to 16 gives the same probabilities and no state."""
    windows, start = _file_windows(speech, tail, seed=tail), _random_state(tail)
    want, want_state = NumpyAcousticModel(weights.arrays, max_steps=STATIC_STEPS).run_window(windows, start)
    cases = (
        (fp32_dynamic, SMALL_MAX_STEPS, EXACT_PROB_TOLERANCE, EXACT_STATE_RELATIVE * 10),
        (dynamic_model, 1000, PROB_TOLERANCE, STATE_TOLERANCE),
    )
    for model, max_steps, prob_tolerance, state_tolerance in cases:
        lengths = dynamic_lengths(max_steps)
        assert plan_pieces(tail, lengths) == (Piece(0, tail, tail),)
        probs, state = run_in_pieces(_predict(model.program), windows, start, lengths)
        assert state is not None
        np.testing.assert_allclose(probs, want, atol=prob_tolerance)
        np.testing.assert_allclose(state.c, want_state.c, atol=state_tolerance)
        np.testing.assert_allclose(state.h, want_state.h, atol=state_tolerance)
        padded, no_state = run_in_pieces(_predict(model.program), windows, start, (STATIC_STEPS,))
        assert no_state is None
        np.testing.assert_allclose(padded, probs, atol=prob_tolerance)


# --- batched streams: the static package with enumerated batch sizes -----------------------------------------
# `scripts/convert.py --stream-batch 1,2,4,8,16` converts the static graph with an open batch dimension
# (dsconvert/batched_graph.py): concurrent streams' chunks are the rows of one prediction. Each row must be
# what a batch-1 prediction of it gives, whatever the other rows hold (other content, other states, a padded
# tail, the adapter's zero rows): compared here in float32, to float32 rounding (BLAS sums rows in another
# order than a single row, so not bit for bit).

BATCH_SIZES = (1, 2, 4, 8, 16)
ROW_RTOL = 1e-5


def _convert_batched(weights: DeepSpeechWeights, out: Path, precision: str) -> Converted:
    from dsconvert.batched_graph import build_batched_static_graph

    model = convert_to_mlpackage(
        build_batched_static_graph(weights),
        weights.n_cell_dim,
        {},
        precision=precision,
        deployment_target="macOS15",
        batch_sizes=BATCH_SIZES,
    )
    model.save(str(out))
    return Converted(weights, mil_eval.load_program(out), STATIC_STEPS)


@pytest.fixture(scope="module")
def batched32(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return _convert_batched(weights, tmp_path_factory.mktemp("mil") / "batched32.mlpackage", "float32")


@pytest.fixture(scope="module")
def batched16(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """As scripts/convert.py --stream-batch writes it: float16 compute, macOS 15."""
    return _convert_batched(weights, tmp_path_factory.mktemp("mil") / "batched16.mlpackage", "float16")


@pytest.fixture(scope="module")
def static32(weights: DeepSpeechWeights, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """Today's batch-1 static package, in float32: the reference each row must reproduce."""
    out = tmp_path_factory.mktemp("mil") / "static32.mlpackage"
    return _convert(weights, STATIC_STEPS, out, "macOS14", precision="float32")


def _rows(speech: np.ndarray | None, lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    """A batch: row b holds its own windows (speech where there is some, else random), zero past lengths[b]
    (a stream's padded tail), and its own random non-zero state."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    windows = rng.standard_normal((batch, STATIC_STEPS, 19, 26)).astype(np.float32)
    if speech is not None:
        for b in range(0, batch, 2):  # every other row speech, from another place in the sentence
            start = 10 + 9 * b
            windows[b] = speech[0, start : start + STATIC_STEPS]
    for b, length in enumerate(lengths):
        windows[b, length:] = 0.0
    return {
        "input_node": windows,
        "previous_state_c": rng.standard_normal((batch, WIDTH)).astype(np.float32),
        "previous_state_h": np.tanh(rng.standard_normal((batch, WIDTH))).astype(np.float32),
    }


def _row(inputs: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    return {name: value[b : b + 1] for name, value in inputs.items()}


def _assert_rows_close(
    out: dict[str, np.ndarray], row: int, single: dict[str, np.ndarray], rtol: float, atol: float
) -> None:
    """Row `row` of a batched evaluation against a batch-1 one: probabilities within rtol (atol for the
    tiny ones), states within rtol of their largest value (c grows along a stream: its rounding with it)."""
    np.testing.assert_allclose(out["logits"][:, row], single["logits"][:, 0], rtol=rtol, atol=atol)
    for name in ("new_state_c", "new_state_h"):
        scale = max(1.0, float(np.abs(single[name]).max()))
        np.testing.assert_allclose(out[name][row], single[name][0], rtol=rtol, atol=max(atol, rtol * scale))


@pytest.mark.parametrize(
    "lengths",
    [[16, 16], [16, 5, 16, 16], [16, 16, 1, 16, 16, 16, 15, 16], [16] * 16],
    ids=["B2", "B4-tail5", "B8-tails1,15", "B16"],
)
def test_batched_rows_are_batch_1_predictions(
    batched32: Converted,
    static32: Converted,
    weights: DeepSpeechWeights,
    speech: np.ndarray | None,
    lengths: list[int],
) -> None:
    """B rows of different content and states, some a padded tail, in one evaluation of the batched package:
    row b equals the batched package at batch 1 on row b, and today's batch-1 static package on it, to float32
    rounding; full rows equal the NumPy backend's run_chunk, and upstream's TF graph as exactly as the batch-1
    package does."""
    inputs = _rows(speech, lengths, seed=len(lengths))
    out = mil_eval.evaluate(batched32.program, inputs, precision="fp32")
    batch = len(lengths)
    assert out["logits"].shape == (STATIC_STEPS, batch, 29)
    assert out["new_state_c"].shape == out["new_state_h"].shape == (batch, WIDTH)
    numpy_backend = NumpyAcousticModel(weights.arrays, max_steps=1000)
    worst = 0.0
    for b, length in enumerate(lengths):
        alone = mil_eval.evaluate(batched32.program, _row(inputs, b), precision="fp32")
        _assert_rows_close(out, b, alone, ROW_RTOL, 1e-7)
        today = mil_eval.evaluate(static32.program, _row(inputs, b), precision="fp32")
        _assert_rows_close(out, b, today, ROW_RTOL, 1e-7)
        worst = max(worst, float(np.abs(out["logits"][:, b] - today["logits"][:, 0]).max()))
        state = LstmState(inputs["previous_state_c"][b : b + 1], inputs["previous_state_h"][b : b + 1])
        if length == STATIC_STEPS:
            want, want_state = numpy_backend.run_chunk(inputs["input_node"][b], length, state)
            np.testing.assert_allclose(out["logits"][:, b], want, atol=EXACT_PROB_TOLERANCE)
            np.testing.assert_allclose(out["new_state_h"][b : b + 1], want_state.h, atol=1e-5)
    print(f"\nbatch {batch} (lengths {lengths}): rows vs batch-1 package, probs max diff {worst:.1e}")

    # Upstream's native graph, row by row (input_lengths = the row's length): the valid frames' probabilities
    # agree for every row (the LSTM is causal: a padded tail's zero steps come after them), the state only for
    # full rows. A tail's state went on through the zero windows, which is why the Core ML backend runs a tail
    # unpadded through the dynamic package instead of as a row here.
    upstream = batched32.reference(STATIC_STEPS, stored=False)
    for b, length in enumerate(lengths):
        row = _row(inputs, b)
        ref = run_graph(
            upstream,
            row["input_node"],
            np.array([length], np.int32),
            *(row[k] for k in ("previous_state_c", "previous_state_h")),
        )
        np.testing.assert_allclose(
            out["logits"][:length, b], ref["logits"][:length, 0], atol=EXACT_PROB_TOLERANCE
        )
        if length == STATIC_STEPS:
            np.testing.assert_allclose(out["new_state_h"][b], ref["new_state_h"][0], atol=1e-5)
        else:
            assert np.abs(out["new_state_c"][b] - ref["new_state_c"][0]).max() > 1e-3


def test_zero_rows_change_no_other_row(batched32: Converted, speech: np.ndarray | None) -> None:
    """The adapter pads a batch of 5 up to 8 with zero rows (windows and states): rows 0..4 are those of the
    5 rows evaluated alone, at batch 1, and the zero rows give finite outputs."""
    inputs = _rows(speech, [16, 16, 16, 16, 16], seed=40)
    padded = {
        name: np.concatenate([value, np.zeros((3, *value.shape[1:]), np.float32)])
        for name, value in inputs.items()
    }
    out = mil_eval.evaluate(batched32.program, padded, precision="fp32")
    assert all(np.isfinite(value).all() for value in out.values())
    for b in range(5):
        _assert_rows_close(
            out, b, mil_eval.evaluate(batched32.program, _row(inputs, b), "fp32"), ROW_RTOL, 1e-7
        )


def test_float16_batched_package_rows(
    batched16: Converted, weights: DeepSpeechWeights, speech: np.ndarray | None
) -> None:
    """The package as convert.py ships it (float16 compute): its program computes each row as batch 1 does
    (evaluated in float32: to float32 rounding), and in its declared fp16 a row stays within an fp16 step of
    its batch-1 evaluation and within the issue's bounds of the float32 NumPy backend."""
    from coremltools.converters.mil.mil import types

    lstm = _lstm_op(batched16.program)
    assert lstm.outputs[0].dtype == types.fp16 and lstm.inputs["weight_hh"].dtype == types.fp16
    inputs = _rows(speech, [16, 16, 5, 16], seed=41)
    exact = mil_eval.evaluate(batched16.program, inputs, precision="fp32")
    fp16 = mil_eval.evaluate(batched16.program, inputs)
    numpy_backend = NumpyAcousticModel(weights.arrays, max_steps=1000)
    for b in range(4):
        _assert_rows_close(
            exact, b, mil_eval.evaluate(batched16.program, _row(inputs, b), "fp32"), ROW_RTOL, 1e-7
        )
        alone = mil_eval.evaluate(batched16.program, _row(inputs, b))
        # One fp16 rounding apart at most (a product summed in another order can round the other way).
        _assert_rows_close(fp16, b, alone, 0.0, 2e-3)
        if b != 2:
            state = LstmState(inputs["previous_state_c"][b : b + 1], inputs["previous_state_h"][b : b + 1])
            want, want_state = numpy_backend.run_chunk(inputs["input_node"][b], STATIC_STEPS, state)
            assert np.abs(fp16["logits"][:, b] - want).max() <= PROB_TOLERANCE
            assert np.abs(fp16["new_state_h"][b] - want_state.h[0]).max() <= STATE_TOLERANCE


def test_batched_package_interface(batched16: Converted, static_model: Converted) -> None:
    """Three inputs with the batch sizes enumerated index for index (macOS 15's multi-input enumerated
    shapes), the batch-1 program's ops, and refusals where Core ML would refuse."""
    program = batched16.program
    assert [spec.name for spec in program.inputs] == ["input_node", "previous_state_c", "previous_state_h"]
    node, state_c, state_h = program.inputs
    assert node.shapes == tuple((b, 16, 19, 26) for b in BATCH_SIZES)
    assert state_c.shapes == state_h.shapes == tuple((b, WIDTH) for b in BATCH_SIZES)
    ops = mil_eval.op_types(program)
    assert ops == mil_eval.op_types(static_model.program) and "while_loop" not in ops
    spec = ct.utils.load_spec(str(program.path))
    assert spec.specificationVersion == 9  # iOS 18 / macOS 15
    meta = dict(spec.description.metadata.userDefined)
    assert json.loads(meta["batch_sizes"]) == list(BATCH_SIZES) and meta["deployment_target"] == "macOS15"

    inputs = _rows(None, [16, 16, 16], seed=42)
    with pytest.raises(mil_eval.MilEvalError, match=r"\(3, 16, 19, 26\), not one of its enumerated shapes"):
        mil_eval.evaluate(program, inputs)
    mixed = _rows(None, [16, 16], seed=43)
    mixed["previous_state_h"] = np.zeros((4, WIDTH), np.float32)
    with pytest.raises(mil_eval.MilEvalError, match="not one of the enumerated shape combinations"):
        mil_eval.evaluate(program, mixed)
    with pytest.raises(mil_eval.MilEvalError, match="input_node has shape"):
        mil_eval.evaluate(
            program, {**_row(_rows(None, [16], seed=44), 0), "input_node": np.zeros((1, 5, 19, 26))}
        )


def test_batch_sizes_need_the_batched_graph_and_macos15(weights: DeepSpeechWeights) -> None:
    from dsconvert.batched_graph import build_batched_static_graph, has_open_batch
    from dsconvert.coreml_export import stream_batch_sizes

    batched = build_batched_static_graph(weights)
    assert has_open_batch(batched) and not has_open_batch(build_frozen_graph(weights, ENGLISH, 16, "coreml"))
    with pytest.raises(ValueError, match="needs the macOS15 deployment target"):
        convert_to_mlpackage(batched, WIDTH, {}, deployment_target="macOS14", batch_sizes=BATCH_SIZES)
    unbatched = build_frozen_graph(weights, ENGLISH, 16, variant="coreml")
    with pytest.raises(ValueError, match="open batch dimension"):
        convert_to_mlpackage(unbatched, WIDTH, {}, deployment_target="macOS15", batch_sizes=BATCH_SIZES)
    assert stream_batch_sizes([16, 4, 4, 2]) == (1, 2, 4, 16), "sorted, distinct, with 1"
    with pytest.raises(ValueError, match="must lie in 1..64"):
        stream_batch_sizes([0, 4])
    with pytest.raises(ValueError, match="must lie in 1..64"):
        stream_batch_sizes([128])


def test_batched_streams_through_the_coreml_backend(
    batched32: Converted, fp32_dynamic: Converted, weights: DeepSpeechWeights, speech: np.ndarray | None
) -> None:
    """Six streams, each 2 full chunks and a tail, through `CoreMLAcousticModel` with the batched package
    (the MIL evaluator in place of Core ML): run_chunks makes one static prediction per round (6 rows padded
    to 8), the tails go to the dynamic package; every stream's probabilities and state are those of its
    chunks run one by one (run_chunk) and of the NumPy backend over the stream, to float32 rounding."""
    fakes = {
        "static": MilEvalMLModel(batched32.program),
        "dynamic": MilEvalMLModel(fp32_dynamic.program),
    }
    backend = CoreMLAcousticModel(
        Path("static"),
        Path("dynamic"),
        WIDTH,
        29,
        SMALL_MAX_STEPS,
        load=lambda path, units: fakes[path.name],
        time_lengths=dynamic_lengths(SMALL_MAX_STEPS),
        batch_sizes=BATCH_SIZES,
    )
    assert backend.batched_chunks
    streams = 6
    n_windows = 2 * STATIC_STEPS + 3 + np.arange(streams)  # tails of 3..8 windows
    audio = [
        _file_windows(speech if s % 2 == 0 else None, int(n), seed=50 + s) for s, n in enumerate(n_windows)
    ]
    starts = [_random_state(60 + s) for s in range(streams)]
    states, parts = list(starts), [[] for _ in range(streams)]
    for offset in range(0, int(n_windows.max()), STATIC_STEPS):
        requests = [(*pad_chunk(audio[s][offset : offset + STATIC_STEPS]), states[s]) for s in range(streams)]
        for s, (probs, state) in enumerate(backend.run_chunks(requests)):
            parts[s].append(probs)
            states[s] = state
    assert [f["input_node"].shape for f in fakes["static"].feeds] == [(8, 16, 19, 26)] * 2
    assert sorted(f["input_node"].shape[1] for f in fakes["dynamic"].feeds) == list(range(3, 3 + streams))

    numpy_backend = NumpyAcousticModel(weights.arrays, max_steps=1000)
    for s in range(streams):
        probs = np.concatenate(parts[s])
        alone_state, alone = starts[s], []
        for offset in range(0, len(audio[s]), STATIC_STEPS):
            chunk_probs, alone_state = backend.run_chunk(
                *pad_chunk(audio[s][offset : offset + STATIC_STEPS]), alone_state
            )
            alone.append(chunk_probs)
        np.testing.assert_allclose(probs, np.concatenate(alone), rtol=ROW_RTOL, atol=1e-7)
        np.testing.assert_allclose(states[s].c, alone_state.c, rtol=ROW_RTOL, atol=1e-6)
        want, want_state = numpy_backend.run_window(audio[s], starts[s])
        np.testing.assert_allclose(probs, want, atol=EXACT_PROB_TOLERANCE)
        np.testing.assert_allclose(states[s].h, want_state.h, atol=1e-5)
