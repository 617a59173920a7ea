"""The static graph with a batch dimension, for the batched `static.mlpackage` (`scripts/convert.py --stream-batch`).

Concurrent streams' 16-step chunks share one prediction when the static package takes several rows: row b is
stream b's chunk (its windows and its LSTM state), every row computed as the batch-1 graph computes it. This is
upstream's `create_inference_graph(batch_size=None, n_steps=16)` in the `coreml` form (see dsconvert/graph.py):

- `input_node` (B, 16, 19, 26), `previous_state_c/h` (B, n_cell) with B open (`None`); coremltools gives B the
  enumerated batch sizes. Nothing mixes rows: the dense layers act per step and row, the LSTM per row.
- The reshapes name the time axis (16, known) and leave the batch to `-1`, so the graph has no Shape ops
  (coremltools would turn them into shape arithmetic) and its ops are the batch-1 Core ML graph's.
- No `input_lengths` and no length mask, as in every Core ML graph: each row's 16 steps are all valid and its
  state is the one after step 16 (the core `lstm` op's form). A stream's tail (< 16 windows) is not a row of
  this package; the Core ML backend runs it unpadded through the dynamic package, as with batch 1.
- `logits` (16, B, classes) time-major, as upstream's `raw_logits` reshape `[-1, batch_size, n_classes]`;
  `new_state_c/h` (B, n_cell). Nothing else: no MFCC branch or `metadata_*` nodes (the native client's).

Only the Core ML conversion uses this graph; the `.pb` files for DeepSpeech's native client stay batch 1
(`graph.build_frozen_graph`), unchanged.
"""

from __future__ import annotations

import tensorflow as tf

from dsconvert.graph import (
    OUTPUT_NAMES,
    FrozenGraph,
    _dense,
    _fused_lstm_all_valid,
    freeze_with_weights,
    strip_default_attrs,
)
from dsconvert.weights import N_CONTEXT, N_INPUT, DeepSpeechWeights

tfv1 = tf.compat.v1

# The static package's chunk (= coreml_export.STATIC_STEPS; not imported here: that module loads coremltools).
BATCHED_STEPS = 16


def build_batched_static_graph(weights: DeepSpeechWeights) -> FrozenGraph:
    """The `coreml` static graph with an open batch dimension (module docstring), frozen with these weights."""
    n_cell = weights.n_cell_dim
    n_classes = weights.n_classes
    steps = BATCHED_STEPS
    graph = tf.Graph()
    with graph.as_default():
        tfv1.disable_resource_variables()  # as graph.build_frozen_graph: variables freeze to Const + Identity
        input_node = tfv1.placeholder(
            tf.float32, [None, steps, 2 * N_CONTEXT + 1, N_INPUT], name="input_node"
        )
        state_c = tfv1.placeholder(tf.float32, [None, n_cell], name="previous_state_c")
        state_h = tfv1.placeholder(tf.float32, [None, n_cell], name="previous_state_h")

        x = tf.transpose(input_node, perm=[1, 0, 2, 3])  # time-major: (16, B, 19, 26)
        x = tf.reshape(x, [-1, (2 * N_CONTEXT + 1) * N_INPUT])  # rows: step 0 of every row, then step 1, ...
        x = _dense("layer_1", x, weights.arrays["layer_1/bias"].shape[0])
        x = _dense("layer_2", x, weights.arrays["layer_2/bias"].shape[0])
        x = _dense("layer_3", x, weights.arrays["layer_3/bias"].shape[0])
        x = tf.reshape(x, [steps, -1, x.shape[-1]])  # (16, B, n_hidden): the LSTM's (time, batch, input)
        output, new_c, new_h = _fused_lstm_all_valid(x, state_c, state_h, n_cell)
        output = tf.reshape(output, [-1, n_cell])
        x = _dense("layer_5", output, weights.arrays["layer_5/bias"].shape[0])
        x = _dense("layer_6", x, n_classes, relu=False)
        raw_logits = tf.reshape(x, [steps, -1, n_classes], name="raw_logits")
        tf.nn.softmax(raw_logits, name="logits")
        tf.identity(new_c, name="new_state_c")
        tf.identity(new_h, name="new_state_h")

        frozen = freeze_with_weights(graph, weights, list(OUTPUT_NAMES))
    strip_default_attrs(frozen)
    return FrozenGraph(frozen, steps, "coreml")


def has_open_batch(frozen: FrozenGraph) -> bool:
    """Whether a frozen graph's `input_node` leaves its batch dimension open (this module's graph)."""
    for node in frozen.graph_def.node:
        if node.name == "input_node":
            dims = node.attr["shape"].shape.dim
            return bool(dims) and dims[0].size == -1
    return False
