"""Build, freeze and clean DeepSpeech's inference graph with TensorFlow 2's `tf.compat.v1`.

Node for node as upstream's `create_inference_graph` (DeepSpeech 0.7–0.9, `training/deepspeech_training/train.py`)
names and shapes them, because two consumers depend on those names: coremltools (inputs/outputs of the packages)
and DeepSpeech's native client (`native_client/tfmodelstate.cc` reads `input_node`'s static shape for n_steps,
`previous_state_c` for the state size, runs `input_samples`→`mfccs` for features and the `metadata_*` constants).

Two variants of the same network (`build_frozen_graph(..., variant=...)`):
- `native` (the `.pb` files): upstream's exact form, outputs masked past `input_lengths` and the final state
  gathered at step `input_lengths - 1`.
- `coreml` (conversion to Core ML only): every step is valid, the final state is `cs[-1]`/`h[-1]` and nothing
  is masked. Nothing uses `input_lengths`, so freezing drops it and the packages have no such input (a
  stream's short tail runs through the dynamic package at its exact length). That is the one form
  coremltools' `tf_lstm_to_core_lstm` pass maps to MIL's core `lstm` op (it needs the cell-state sequence
  consumed only by slices of its last step); upstream's gather at a runtime index makes coremltools unroll
  the LSTM into a `while_loop`, which runs on the CPU only. For inputs whose steps are all valid (a full
  static chunk, a dynamic window of exactly the valid steps) both variants compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf

from app.speech.alphabet import Alphabet
from dsconvert.weights import (
    DENSE_LAYERS,
    LSTM_BIAS,
    LSTM_KERNEL,
    LSTM_SCOPE,
    N_CONTEXT,
    N_INPUT,
    DeepSpeechWeights,
)

tfv1 = tf.compat.v1

# Upstream defaults (util/flags.py) exported as graph metadata.
GRAPH_VERSION = 6  # training/deepspeech_training/GRAPH_VERSION of 0.9.x
SAMPLE_RATE = 16000
FEATURE_WIN_LEN_MS = 32
FEATURE_WIN_STEP_MS = 20
EXPORT_BEAM_WIDTH = 500
RELU_CLIP = 20.0
AUDIO_WINDOW_SAMPLES = SAMPLE_RATE * FEATURE_WIN_LEN_MS // 1000  # 512
AUDIO_STEP_SAMPLES = SAMPLE_RATE * FEATURE_WIN_STEP_MS // 1000  # 320

OUTPUT_NAMES = ("logits", "new_state_c", "new_state_h")
METADATA_NAMES = (
    "metadata_version",
    "metadata_sample_rate",
    "metadata_feature_win_len",
    "metadata_feature_win_step",
    "metadata_beam_width",
    "metadata_alphabet",
)


GraphVariant = Literal["native", "coreml"]
GRAPH_VARIANTS: tuple[GraphVariant, ...] = ("native", "coreml")


@dataclass(frozen=True)
class FrozenGraph:
    graph_def: tf.compat.v1.GraphDef
    n_steps: int | None  # None: dynamic time axis
    variant: GraphVariant = "native"


def _dense(name: str, x: tf.Tensor, units: int, relu: bool = True) -> tf.Tensor:
    with tfv1.variable_scope(name):
        bias = tfv1.get_variable("bias", [units], initializer=tfv1.zeros_initializer())
        weights = tfv1.get_variable("weights", [x.shape[-1], units], initializer=tfv1.zeros_initializer())
    output = tf.nn.bias_add(tf.matmul(x, weights), bias)
    if relu:
        output = tf.minimum(tf.nn.relu(output), RELU_CLIP)
    return output


def _block_lstm(
    x: tf.Tensor,
    seq_len_max: tf.Tensor,
    state_c: tf.Tensor,
    state_h: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor,
    n_cell: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One fused `BlockLSTM` as `LSTMBlockFusedCell(forget_bias=0)` emits it; returns the (cs, h) sequences."""
    no_peephole = tf.zeros([n_cell], dtype=tf.float32)
    _, cs, _, _, _, _, h = tf.raw_ops.BlockLSTM(
        seq_len_max=seq_len_max,
        x=x,
        cs_prev=state_c,
        h_prev=state_h,
        w=kernel,
        wci=no_peephole,
        wcf=no_peephole,
        wco=no_peephole,
        b=bias,
        forget_bias=0.0,
        cell_clip=-1.0,
        use_peephole=False,
    )
    return cs, h


def _lstm_variables(n_input: int, n_cell: int) -> tuple[tf.Variable, tf.Variable]:
    kernel = tfv1.get_variable("kernel", [n_input + n_cell, 4 * n_cell], initializer=tfv1.zeros_initializer())
    bias = tfv1.get_variable("bias", [4 * n_cell], initializer=tfv1.zeros_initializer())
    return kernel, bias


def _fused_lstm(
    x: tf.Tensor, seq_length: tf.Tensor, state_c: tf.Tensor, state_h: tf.Tensor, n_cell: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The ops `LSTMBlockFusedCell(forget_bias=0)` emits: one fused `BlockLSTM`, outputs masked past each
    sequence length, final state gathered at step length-1 (initial state prepended so length 0 keeps it).

    The time length comes from the static shape when there is one (upstream does the same), so the static
    graph has no Shape/StridedSlice ops, which the native client's selective kernel registration lacks.
    """
    with tfv1.variable_scope(LSTM_SCOPE):
        kernel, bias = _lstm_variables(x.shape[-1], n_cell)
        time_len = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
        max_len = tf.cast(tf.reduce_max(seq_length), tf.int64)
        cs, h = _block_lstm(x, max_len, state_c, state_h, kernel, bias, n_cell)
        mask = tf.transpose(tf.sequence_mask(seq_length, time_len, dtype=tf.float32), [1, 0])
        mask = tf.tile(tf.expand_dims(mask, -1), [1, 1, n_cell])
        outputs = h * mask
        all_c = tf.concat([tf.expand_dims(state_c, 0), cs], 0)
        all_h = tf.concat([tf.expand_dims(state_h, 0), outputs], 0)
        index = tf.stack([seq_length, tf.range(1)], axis=1)
        return outputs, tf.gather_nd(all_c, index), tf.gather_nd(all_h, index)


def _fused_lstm_all_valid(
    x: tf.Tensor, state_c: tf.Tensor, state_h: tf.Tensor, n_cell: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The Core ML variant: every one of x's steps is valid, so no mask and the final state is `cs[-1]`/`h[-1]`.

    `cs` feeds nothing but the slice of its last step and `h` is used whole: the pattern `tf_lstm_to_core_lstm`
    maps to MIL's `lstm(output_sequence=True)`. `seq_len_max` is the whole time axis (the core op has no
    sequence length, so TF must not stop early either).
    """
    with tfv1.variable_scope(LSTM_SCOPE):
        kernel, bias = _lstm_variables(x.shape[-1], n_cell)
        if x.shape[0] is not None:
            seq_len_max = tf.constant(x.shape[0], dtype=tf.int64)
        else:
            seq_len_max = tf.cast(tf.shape(x)[0], tf.int64)
        cs, h = _block_lstm(x, seq_len_max, state_c, state_h, kernel, bias, n_cell)
        return h, cs[-1], h[-1]


def _feature_branch() -> None:
    """`input_samples` (512,) → `mfccs` (1, 26): what the native client calls to compute features."""
    input_samples = tfv1.placeholder(tf.float32, [AUDIO_WINDOW_SAMPLES], "input_samples")
    samples = tf.expand_dims(input_samples, -1)
    spectrogram = tf.raw_ops.AudioSpectrogram(
        input=samples, window_size=AUDIO_WINDOW_SAMPLES, stride=AUDIO_STEP_SAMPLES, magnitude_squared=True
    )
    mfccs = tf.raw_ops.Mfcc(
        spectrogram=spectrogram,
        sample_rate=SAMPLE_RATE,
        dct_coefficient_count=N_INPUT,
        upper_frequency_limit=SAMPLE_RATE / 2,
        lower_frequency_limit=20,
        filterbank_channel_count=40,
    )
    tf.identity(tf.reshape(mfccs, [-1, N_INPUT]), name="mfccs")


def _metadata(alphabet: Alphabet) -> None:
    # Scalars, as the 0.9.3 export writes them (the native client reads them with scalar<T>()).
    tf.constant(GRAPH_VERSION, dtype=tf.int32, name="metadata_version")
    tf.constant(SAMPLE_RATE, dtype=tf.int32, name="metadata_sample_rate")
    tf.constant(FEATURE_WIN_LEN_MS, dtype=tf.int32, name="metadata_feature_win_len")
    tf.constant(FEATURE_WIN_STEP_MS, dtype=tf.int32, name="metadata_feature_win_step")
    tf.constant(EXPORT_BEAM_WIDTH, dtype=tf.int32, name="metadata_beam_width")
    tf.constant(alphabet.serialize(), dtype=tf.string, name="metadata_alphabet")


def build_frozen_graph(
    weights: DeepSpeechWeights, alphabet: Alphabet, n_steps: int | None, variant: GraphVariant = "native"
) -> FrozenGraph:
    """Build `create_inference_graph(batch_size=1, n_steps)` with these weights and freeze it.

    `variant="native"` is upstream's exact graph (what the native client loads); `"coreml"` is the form
    converted to Core ML (see the module docstring): same names, same weights, no length mask.
    """
    if variant not in GRAPH_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(GRAPH_VARIANTS)}, got {variant!r}")
    n_cell = weights.n_cell_dim
    n_classes = weights.n_classes
    graph = tf.Graph()
    with graph.as_default():
        tfv1.disable_resource_variables()  # RefVariables freeze to Const + Identity, like upstream's TF 1.15
        _feature_branch()
        input_node = tfv1.placeholder(tf.float32, [1, n_steps, 2 * N_CONTEXT + 1, N_INPUT], name="input_node")
        seq_length = tfv1.placeholder(tf.int32, [1], name="input_lengths")
        state_c = tfv1.placeholder(tf.float32, [1, n_cell], name="previous_state_c")
        state_h = tfv1.placeholder(tf.float32, [1, n_cell], name="previous_state_h")

        x = tf.transpose(input_node, perm=[1, 0, 2, 3])  # time-major
        x = tf.reshape(x, [-1, (2 * N_CONTEXT + 1) * N_INPUT])
        x = _dense("layer_1", x, weights.arrays["layer_1/bias"].shape[0])
        x = _dense("layer_2", x, weights.arrays["layer_2/bias"].shape[0])
        x = _dense("layer_3", x, weights.arrays["layer_3/bias"].shape[0])
        x = tf.reshape(x, [-1, 1, x.shape[-1]])
        if variant == "native":
            output, new_c, new_h = _fused_lstm(x, seq_length, state_c, state_h, n_cell)
        else:
            output, new_c, new_h = _fused_lstm_all_valid(x, state_c, state_h, n_cell)
        output = tf.reshape(output, [-1, n_cell])
        x = _dense("layer_5", output, weights.arrays["layer_5/bias"].shape[0])
        x = _dense("layer_6", x, n_classes, relu=False)
        raw_logits = tf.reshape(x, [-1, 1, n_classes], name="raw_logits")
        tf.nn.softmax(raw_logits, name="logits")
        tf.identity(new_c, name="new_state_c")
        tf.identity(new_h, name="new_state_h")
        _metadata(alphabet)

        output_nodes = [*OUTPUT_NAMES, "mfccs", *METADATA_NAMES]
        frozen = freeze_with_weights(graph, weights, output_nodes)
    strip_default_attrs(frozen)
    return FrozenGraph(frozen, n_steps, variant)


def freeze_with_weights(
    graph: tf.Graph, weights: DeepSpeechWeights, output_nodes: list[str]
) -> tf.compat.v1.GraphDef:
    """The graph (being built, as the default graph) with the checkpoint's weights loaded into its variables
    and frozen to constants, cut down to what `output_nodes` need."""
    with tfv1.Session(graph=graph) as session:
        by_name = {v.op.name: v for v in tfv1.global_variables()}
        for name in (
            *(f"{layer}/{p}" for layer in DENSE_LAYERS for p in ("weights", "bias")),
            LSTM_KERNEL,
            LSTM_BIAS,
        ):
            by_name[name].load(weights.arrays[name], session)
        frozen = tfv1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), output_nodes)
    return tfv1.graph_util.extract_sub_graph(frozen, output_nodes)


def strip_default_attrs(graph_def: tf.compat.v1.GraphDef) -> None:
    """Drop attributes that hold their op's default value.

    TensorFlow's forward-compatibility rule (what SavedModel's `strip_default_attrs` does): an older runtime
    fills in defaults for the attrs it knows and rejects attrs it does not, so a graph written by TF 2.21
    loads in the native client's TF 2.3 only without the attrs added since (e.g. GatherNd's
    `bad_indices_policy`, MatMul's `grad_a`/`grad_b`).
    """
    from tensorflow.python.framework import op_def_registry

    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr_def in op_def.attr:
            if attr_def.HasField("default_value") and attr_def.name in node.attr:
                if node.attr[attr_def.name] == attr_def.default_value:
                    del node.attr[attr_def.name]


def run_graph(
    frozen: FrozenGraph,
    windows: np.ndarray,
    lengths: np.ndarray,
    state_c: np.ndarray,
    state_h: np.ndarray,
) -> dict[str, np.ndarray]:
    """Run the frozen graph once (the reference the Core ML packages and the NumPy runtime are checked against).

    The `coreml` variant has no `input_lengths` (every step of `windows` is valid): `lengths` is not fed to it.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph_def, name="")
    feed = {"input_node:0": windows, "previous_state_c:0": state_c, "previous_state_h:0": state_h}
    if frozen.variant == "native":
        feed["input_lengths:0"] = lengths
    with tfv1.Session(graph=graph) as session:
        fetched = session.run([f"{name}:0" for name in OUTPUT_NAMES], feed)
    return dict(zip(OUTPUT_NAMES, fetched, strict=True))
