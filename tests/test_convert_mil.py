"""The converted `.mlpackage`s compute what their TensorFlow graphs compute, proven on Linux.

Core ML predicts only on macOS, so `dsconvert.mil_eval` evaluates each package's ML Program op by op with NumPy
and these tests compare it with `dsconvert.graph.run_graph` on the same inputs and non-zero LSTM states.

Two comparisons per case:
- exactness: the program evaluated in float32 against the TF graph built with the same fp16-rounded weights the
  package stores. Only float32 summation order differs, so any conversion mistake (gate order, masking, state
  gather, padding) shows up orders of magnitude above the tolerance.
- the issue's criteria: the program evaluated in the precision it declares (fp16 ops, fp16 weights) against
  the float32 TF graph: argmax per valid frame 100% equal, probabilities within 1e-4, states within 1e-2.

Inputs are MFCC context windows of real speech (espeak-ng, TF's AudioSpectrogram + Mfcc with DeepSpeech's
arguments) and random normal windows. Run with `-s` to see the measured differences.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
ct = pytest.importorskip("coremltools")

from app.alphabet import ENGLISH  # noqa: E402
from dsconvert import mil_eval  # noqa: E402
from dsconvert.coreml_export import convert_to_mlpackage  # noqa: E402
from dsconvert.graph import FrozenGraph, build_frozen_graph, run_graph  # noqa: E402
from dsconvert.weights import DeepSpeechWeights, random_weights  # noqa: E402

WIDTH = 64
SENTENCE = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge the boxing match"

# The acceptance criteria for the fp16 package against the float32 TF graph.
PROB_TOLERANCE = 1e-4
STATE_TOLERANCE = 1e-2
# Exactness (float32 evaluation vs TF with fp16-rounded weights): float32 rounding only.
EXACT_PROB_TOLERANCE = 1e-5  # big logits (confident outputs) amplify float32 rounding to ~1e-6
EXACT_STATE_RELATIVE = 1e-5  # of max(1, largest |state|): c grows with the sequence


@dataclass(frozen=True)
class Converted:
    frozen: FrozenGraph  # float32 weights: the reference
    frozen_fp16_weights: FrozenGraph  # the weights the package stores, in a float32 graph
    program: mil_eval.LoadedProgram


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


def _fp16_rounded(weights: DeepSpeechWeights) -> DeepSpeechWeights:
    return DeepSpeechWeights({k: v.astype(np.float16).astype(np.float32) for k, v in weights.arrays.items()})


def _convert(weights: DeepSpeechWeights, n_steps: int | None, out: Path) -> Converted:
    frozen = build_frozen_graph(weights, ENGLISH, n_steps)
    convert_to_mlpackage(frozen, weights.n_cell_dim, {}).save(str(out))
    return Converted(
        frozen=frozen,
        frozen_fp16_weights=build_frozen_graph(_fp16_rounded(weights), ENGLISH, n_steps),
        program=mil_eval.load_program(out),
    )


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
    """Windows of `steps` frames (`length` valid), random non-zero LSTM state (h in (-1, 1) like a real h)."""
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


def _diffs(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], frames: int, tolerance: float) -> Diffs:
    """Max abs differences, and argmax agreement overall and on the frames a `tolerance` error cannot flip.

    Where the reference's two best classes are closer than 2 x tolerance, outputs that agree within tolerance
    may still pick different classes (random weights give flat outputs: margins of 1e-6 occur, below the fp16
    grid, so both classes round to one fp16 value). Those frames are counted, not required to agree.
    """
    assert out["logits"].shape == ref["logits"].shape
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


def _verify(model: Converted, inputs: dict[str, np.ndarray], label: str) -> tuple[Diffs, Diffs]:
    """Exactness over all frames, then the issue's criteria over the valid frames; returns both diffs."""
    args = [inputs[k] for k in ("input_node", "input_lengths", "previous_state_c", "previous_state_h")]
    length = int(inputs["input_lengths"][0])

    exact_ref = run_graph(model.frozen_fp16_weights, *args)
    exact_out = mil_eval.evaluate(model.program, inputs, precision="fp32")
    exact = _diffs(exact_out, exact_ref, len(exact_ref["logits"]), EXACT_PROB_TOLERANCE)
    state_scale = max(1.0, float(np.abs(exact_ref["new_state_c"]).max()))

    ref = run_graph(model.frozen, *args)
    fp16 = _diffs(mil_eval.evaluate(model.program, inputs), ref, length, PROB_TOLERANCE)
    print(
        f"\n{label}: fp16 program vs fp32 TF: probs {fp16.probs:.2e}, c {fp16.state_c:.2e}, h {fp16.state_h:.2e}, "
        f"argmax {fp16.argmax_agreement:.1%} ({fp16.decisive_agreement:.0%} of frames with margin > 2e-4, "
        f"{fp16.near_ties} near ties) | fp32 evaluation vs TF(fp16 weights): probs {exact.probs:.1e}, "
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
def test_static_tail_chunk(static_model: Converted, speech: np.ndarray | None, kind: str) -> None:
    """The last chunk of a stream: 5 windows, zero-padded to 16 as the native client pads them."""
    _verify(static_model, _tail(_inputs(kind, speech, 16, 5, WIDTH, seed=2)), f"static 5/16 {kind}")


@pytest.mark.parametrize("steps,length", [(1, 1), (16, 16), (37, 37), (16, 5), (37, 20)])
@pytest.mark.parametrize("kind", ["speech", "normal"])
def test_dynamic(
    dynamic_model: Converted, speech: np.ndarray | None, kind: str, steps: int, length: int
) -> None:
    # Frames past input_lengths keep their real (non-zero) content: the state must still come from step length-1.
    inputs = _inputs(kind, speech, steps, length, WIDTH, seed=steps + length)
    _verify(dynamic_model, inputs, f"dynamic {length}/{steps} {kind}")


def test_program_uses_only_handled_ops(static_model: Converted, dynamic_model: Converted) -> None:
    for model in (static_model, dynamic_model):
        assert mil_eval.op_types(model.program) <= mil_eval.supported_op_types()


def test_refuses_inputs_core_ml_would_refuse(static_model: Converted) -> None:
    too_long = _inputs("normal", None, 17, 17, WIDTH, seed=0)
    with pytest.raises(mil_eval.MilEvalError, match="input_node has shape"):
        mil_eval.evaluate(static_model.program, too_long)
    missing = _inputs("normal", None, 16, 16, WIDTH, seed=0)
    del missing["previous_state_h"]
    with pytest.raises(mil_eval.MilEvalError, match="needs input 'previous_state_h'"):
        mil_eval.evaluate(static_model.program, missing)


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


def test_lstm_op_matches_tensorflow_block_lstm(tmp_path: Path) -> None:
    """The `lstm` handler (unused by today's packages: the converter lowers BlockLSTM to a while_loop) against
    TF's BlockLSTM with DeepSpeech's kernel layout: checks MIL's gate order (i, f, o, z) and weight layout."""
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
            output_sequence=True,
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
    np.testing.assert_allclose(sequence, ref.h.numpy(), atol=1e-6)
    np.testing.assert_allclose(h, ref.h.numpy()[-1], atol=1e-6)
    np.testing.assert_allclose(c, ref.cs.numpy()[-1], atol=1e-6)


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
    inputs = _inputs(kind, speech, 37, 37, WIDTH, seed=5)
    args = [inputs[k] for k in ("input_node", "input_lengths", "previous_state_c", "previous_state_h")]
    exact_ref = run_graph(model.frozen_fp16_weights, *args)
    exact = _diffs(mil_eval.evaluate(model.program, inputs, "fp32"), exact_ref, 37, EXACT_PROB_TOLERANCE)
    ref = run_graph(model.frozen, *args)
    fp16 = _diffs(mil_eval.evaluate(model.program, inputs), ref, 37, PROB_TOLERANCE)
    print(
        f"\nconfident 37/37 {kind}: max p {ref['logits'].max():.4f}; fp16 program {fp16}; fp32 evaluation {exact}"
    )
    assert exact.probs <= EXACT_PROB_TOLERANCE and exact.decisive_agreement == 1.0
    assert fp16.argmax_agreement == 1.0
    assert fp16.probs <= 5e-3  # ~10 fp16 steps near 1


@pytest.mark.slow
def test_real_width_2048(tmp_path: Path) -> None:
    """DeepSpeech's real width: the static package on one chunk, the dynamic one on 50 steps (speech input)."""
    started = time.monotonic()
    weights = random_weights(2048, seed=7)
    speech = _speech_windows(tmp_path)
    kind = "speech" if speech is not None else "normal"
    static = _convert(weights, 16, tmp_path / "static.mlpackage")
    dynamic = _convert(weights, None, tmp_path / "dynamic.mlpackage")
    converted = time.monotonic()
    _verify(static, _inputs(kind, speech, 16, 16, 2048, seed=1), f"2048 static 16/16 {kind}")
    _verify(static, _tail(_inputs(kind, speech, 16, 5, 2048, seed=2)), f"2048 static 5/16 {kind}")
    _verify(dynamic, _inputs(kind, speech, 50, 50, 2048, seed=3), f"2048 dynamic 50/50 {kind}")
    print(f"\n2048: conversions {converted - started:.1f} s, checks {time.monotonic() - converted:.1f} s")
