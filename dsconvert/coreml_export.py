"""Frozen DeepSpeech graph → Core ML ML Program (`.mlpackage`) with coremltools.

Facts measured with coremltools 9.0 + TensorFlow 2.21 that shape this module:
- `ct.convert("x.pb")` fails with TF 2 installed; a parsed GraphDef with `source="tensorflow"` works.
- A dynamic graph converted without an explicit `ct.RangeDim` gets a time range of 1..2.
- With a macOS 13+ deployment target the I/O silently becomes FLOAT16 unless the TensorTypes say float32.
- The LSTM becomes MIL's core `lstm` op (which the GPU and Neural Engine can run) only from the graph's `coreml`
  variant (no length mask, state = last step); upstream's masked graph becomes a `while_loop`, CPU only.
  The packages therefore have no `input_lengths`: every step of `input_node` is valid.
- The core `lstm` op takes fp16 only from the iOS 17 opset (macOS 14): with the macOS 13 target and float16
  compute, coremltools keeps the LSTM (weights included) in float32 between casts, which the Neural Engine
  does not run; `deployment_target="macOS14"` makes it fp16 too.
- The dynamic package's time axis is a `ct.EnumeratedShapes` set (see `dynamic_lengths`): coremltools keeps
  the input symbolic in the MIL program (`(1, is0, 19, 26)`), the same program as with a `RangeDim`, core
  `lstm` op included; only the model description lists the shapes. It puts the default shape first in that
  list and adds it when it is not one of the shapes; it refuses fewer than 2; Core ML takes up to 128.
- The batched static package (`batch_sizes`, scripts/convert.py --stream-batch) enumerates the batch axis of
  three inputs at once (input_node (B,16,19,26), previous_state_c/h (B,n_cell)). coremltools 9.0 refuses more
  than one input with EnumeratedShapes below the iOS 18 opset (`_validate_enumerated_shape_inputs`: "Expected a
  single enumerated shape input for deployment targets below iOS 18"), and from it wants the same number of
  shapes per input: Core ML (macOS 15+) then takes the k-th shape of every input together. So that package
  needs `deployment_target="macOS15"`. Its MIL program keeps B symbolic per input (`is0`, `is1`, `is2`) with
  the batch-1 program's ops (the core `lstm` op takes x (16, B, n_hidden)); only the description lists the B.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import coremltools as ct
import numpy as np

from dsconvert import mil_eval
from dsconvert.graph import OUTPUT_NAMES, FrozenGraph
from dsconvert.weights import N_CONTEXT, N_INPUT

log = logging.getLogger(__name__)

STATIC_STEPS = 16
# Upper bound of the dynamic package's time axis: 1000 steps = 20 s of audio per prediction. Longer audio runs
# in consecutive windows with the LSTM state carried across (the service does this), so the bound only caps
# the memory of one prediction.
DYNAMIC_MAX_STEPS = 1000
# The dynamic package's time lengths (ct.EnumeratedShapes on input_node's time axis). coremltools' guide
# recommends enumerated shapes for the Neural Engine: Core ML prepares each one, whereas a RangeDim model runs
# there only with reshape hints (macOS 15) and re-specialises for every new length, and whole files bring
# every length from 1 to max_steps. Who uses which length (app/speech/runtime/windows.py plans the pieces):
# - 1..15: a stream's tail, at its exact length (< 16 windows left at finish; exact, so no padding at all);
# - max_steps: the full windows a long file is cut into (Engine.transcribe, run_long), state carried exactly;
# - 50: the 1 s pieces of the incremental (SSE) transcription, which carry the state too, so exactly;
# - the rest: the last window of a file, zero-padded up to the next length. The LSTM is causal and the state
#   after a file's last window is discarded, so padding costs compute only: the spacing (x1.25..1.5 from 16
#   up) keeps the padded steps at most ~half of that last window's real ones (17 -> 24, 33 -> 50, 101 ->
#   150, 501 -> 750), and denser where most requests are (commands of 1-6 s: 50-300 steps).
# 28 shapes with max_steps 1000, well under Core ML's 128; each shape is one more specialisation at load.
# A --max-steps above 1000 adds itself only (1001 -> 2000 pads up to as many steps again).
STREAM_TAIL_LENGTHS = tuple(range(1, STATIC_STEPS))
WINDOW_LENGTHS = (16, 24, 32, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000)
MAX_ENUMERATED_SHAPES = 128  # Core ML's bound on enumerated shapes (coremltools' flexible-inputs guide)
DEPLOYMENT_TARGETS = {
    "macOS13": ct.target.macOS13,
    "macOS14": ct.target.macOS14,
    "macOS15": ct.target.macOS15,
}
DEFAULT_DEPLOYMENT_TARGET = "macOS14"  # fp16 LSTM (Neural Engine); macOS 14 is from 2023
# Enumerated shapes on several inputs (the batched static package) need the iOS 18 opset (module docstring).
BATCHED_DEPLOYMENT_TARGET = "macOS15"
# The static package's batch sizes (scripts/convert.py --stream-batch): concurrent streams' chunks share one
# prediction of up to the largest; the Core ML backend pads a batch up to the next size with zero rows. The
# default is batch 1 only (no batch dimension: the package of every model converted before, macOS 14);
# SUGGESTED_STREAM_BATCH is the set. 1 is always included (a lone stream's chunk). The largest is at
# most the stream batcher's largest batch (app/speech/runtime/batching.py DEFAULT_MAX_BATCH).
DEFAULT_STREAM_BATCH = (1,)
SUGGESTED_STREAM_BATCH = (1, 2, 4, 8, 16)
MAX_STREAM_BATCH = 64


PRECISIONS = ("float16", "float32")
VALID_STEPS_NOTE = (
    "every step of input_node is valid (no input_lengths); the dynamic package takes its time_lengths only: a "
    "stream's tail (< 16 windows) at its exact length, a file's last window zero-padded up to the next length "
    "(drop the padded steps' probabilities; the state after them is not the state after the real steps)"
)


def dynamic_lengths(max_steps: int = DYNAMIC_MAX_STEPS) -> tuple[int, ...]:
    """The dynamic package's enumerated time lengths for a time bound: the tails, the window lengths below
    the bound, and the bound itself (the full windows of a long file), ascending."""
    if max_steps < STATIC_STEPS:
        raise ValueError(f"max_steps must be at least {STATIC_STEPS}, got {max_steps}")
    return tuple(sorted({*STREAM_TAIL_LENGTHS, *(n for n in WINDOW_LENGTHS if n < max_steps), max_steps}))


def _time_axis(lengths: Sequence[int]) -> ct.EnumeratedShapes:
    """input_node's shapes, one per length; the default (listed first by coremltools) is the static 16."""
    shapes = [(1, n, 2 * N_CONTEXT + 1, N_INPUT) for n in lengths]
    default = STATIC_STEPS if STATIC_STEPS in lengths else lengths[0]
    return ct.EnumeratedShapes(shapes=shapes, default=(1, default, 2 * N_CONTEXT + 1, N_INPUT))


def stream_batch_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """The static package's batch sizes: ascending, distinct, 1 included, each in 1..MAX_STREAM_BATCH."""
    checked = tuple(sorted({1, *(int(n) for n in sizes)}))
    if checked[0] < 1 or checked[-1] > MAX_STREAM_BATCH:
        raise ValueError(f"stream batch sizes must lie in 1..{MAX_STREAM_BATCH}, got {list(sizes)}")
    if len(checked) > MAX_ENUMERATED_SHAPES:
        raise ValueError(f"the static package takes at most {MAX_ENUMERATED_SHAPES} batch sizes")
    return checked


def _batch_axis(sizes: Sequence[int], n_cell: int) -> list[ct.TensorType]:
    """input_node and both states with the enumerated batch sizes, index for index (Core ML takes the k-th
    shape of each together); batch 1 is the default, listed first so coremltools keeps that order."""
    window = (STATIC_STEPS, 2 * N_CONTEXT + 1, N_INPUT)

    def enumerated(*rest: int) -> ct.EnumeratedShapes:
        return ct.EnumeratedShapes(shapes=[(b, *rest) for b in sizes], default=(sizes[0], *rest))

    return [
        ct.TensorType(name="input_node", shape=enumerated(*window), dtype=np.float32),
        ct.TensorType(name="previous_state_c", shape=enumerated(n_cell), dtype=np.float32),
        ct.TensorType(name="previous_state_h", shape=enumerated(n_cell), dtype=np.float32),
    ]


def _checked_lengths(lengths: Sequence[int], max_steps: int) -> tuple[int, ...]:
    checked = tuple(sorted(set(lengths)))
    if not 2 <= len(checked) <= MAX_ENUMERATED_SHAPES:
        raise ValueError(
            f"the dynamic package takes 2..{MAX_ENUMERATED_SHAPES} time lengths, got {len(checked)}"
        )
    if checked[0] < 1 or checked[-1] != max_steps:
        raise ValueError(f"time lengths must lie in 1..{max_steps} and include {max_steps}, got {checked}")
    return checked


def program_op_types(model: Any) -> set[str]:
    """The MIL op types of a converted model (nested blocks included), from the program coremltools kept."""
    return mil_eval.op_types(model._mil_program)


def lstm_dtype(model: Any) -> str | None:
    """The dtype the core `lstm` op computes in ("fp16" or "fp32"), None without one."""
    from coremltools.converters.mil.mil import types

    for op in mil_eval.walk_ops(model._mil_program.functions["main"]):
        if op.op_type == "lstm":
            return str(types.builtin_to_string(op.outputs[0].dtype))
    return None


def convert_to_mlpackage(
    frozen: FrozenGraph,
    n_cell: int,
    metadata: dict[str, str],
    max_steps: int = DYNAMIC_MAX_STEPS,
    precision: str = "float16",
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
    lengths: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_STREAM_BATCH,
) -> Any:
    """Convert one frozen graph (static or dynamic, `coreml` variant) to an ML Program with float32 I/O.

    The dynamic graph's time axis takes the enumerated `lengths` (default `dynamic_lengths(max_steps)`; the
    largest must be max_steps), recorded in the package's metadata as `time_lengths`.

    `batch_sizes` above 1 (static graph only, built with an open batch by
    `dsconvert.batched_graph.build_batched_static_graph`; macOS 15 target): input_node, previous_state_c and
    previous_state_h take those batch sizes (enumerated, index for index), recorded in the metadata as
    `batch_sizes`; `logits` is then (16, B, classes) and the states (B, n_cell). Batch 1 alone is the
    package as before, with fixed shapes.

    float16 compute (the default) halves the package and lets Core ML use the Neural Engine; it moves confident
    probabilities by up to ~3e-3 (fp16 spacing near 1 is 4.9e-4), never the best class of a decisive frame.
    float32 keeps probabilities within ~1e-6 of TensorFlow, at twice the size and GPU/CPU only. With the
    macOS 13 target the LSTM stays float32 either way (see the module docstring).
    """
    if frozen.variant != "coreml":
        raise ValueError(
            "convert the graph built with variant='coreml' (no length mask: coremltools maps it to the core "
            f"lstm op); the {frozen.variant!r} graph would become a CPU-only while_loop"
        )
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise ValueError(f"deployment target must be one of {', '.join(DEPLOYMENT_TARGETS)}")
    window = (2 * N_CONTEXT + 1, N_INPUT)
    time_lengths = None
    if frozen.n_steps is None:
        time_lengths = _checked_lengths(lengths or dynamic_lengths(max_steps), max_steps)
    batches = stream_batch_sizes(batch_sizes)
    batched = len(batches) > 1
    if batched:
        _check_batchable(frozen, deployment_target)
        inputs = _batch_axis(batches, n_cell)
    else:
        node_shape = (1, frozen.n_steps, *window) if time_lengths is None else _time_axis(time_lengths)
        inputs = [
            ct.TensorType(name="input_node", shape=node_shape, dtype=np.float32),
            ct.TensorType(name="previous_state_c", shape=(1, n_cell), dtype=np.float32),
            ct.TensorType(name="previous_state_h", shape=(1, n_cell), dtype=np.float32),
        ]
    outputs = [ct.TensorType(name=name, dtype=np.float32) for name in OUTPUT_NAMES]
    model = ct.convert(
        frozen.graph_def,
        source="tensorflow",
        inputs=inputs,
        outputs=outputs,
        convert_to="mlprogram",
        minimum_deployment_target=DEPLOYMENT_TARGETS[deployment_target],
        compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
    )
    model.author = "deepspeech-coreml-service (scripts/convert.py)"
    model.license = "MPL-2.0 (DeepSpeech architecture); weights: see the model's source"
    if time_lengths is not None:
        kind = f"dynamic, {len(time_lengths)} lengths 1..{max_steps}"
    elif batched:
        kind = f"static, 16 steps, batch {'/'.join(map(str, batches))}"
    else:
        kind = "static, 16 steps"
    rows = "B" if batched else "1"
    model.short_description = (
        f"Mozilla DeepSpeech acoustic model ({kind}): context windows ({rows},T,19,26), all T valid, + LSTM "
        f"state → softmax probabilities (T,{rows},classes), time-major, blank last"
    )
    model.input_description["input_node"] = (
        "MFCC context windows: 26 coefficients × 19 frames per 20 ms step; every step is computed as valid "
        "(no length mask)"
        + ("" if time_lengths is None else "; T is one of the metadata's time_lengths")
        + ("; one row per stream, B one of the metadata's batch_sizes" if batched else "")
    )
    model.input_description["previous_state_c"] = "LSTM cell state carried from the previous chunk" + (
        " (a row per stream)" if batched else ""
    )
    model.input_description["previous_state_h"] = "LSTM hidden state carried from the previous chunk" + (
        " (a row per stream)" if batched else ""
    )
    model.output_description["logits"] = (
        f"softmax probabilities (time, {'batch' if batched else '1'}, classes); blank is the last class"
    )
    model.output_description["new_state_c"] = "LSTM cell state after the last step"
    model.output_description["new_state_h"] = "LSTM hidden state after the last step"
    ops = program_op_types(model)
    if "lstm" not in ops or "while_loop" in ops:
        log.warning("the converted program has no core lstm op or has a while_loop: %s", sorted(ops))
    model.user_defined_metadata.update(metadata)
    model.user_defined_metadata.update(
        {
            "valid_steps": VALID_STEPS_NOTE,
            "lstm": f"core lstm op ({lstm_dtype(model) or 'absent'})",
            "deployment_target": deployment_target,
        }
    )
    if time_lengths is not None:
        model.user_defined_metadata["time_lengths"] = json.dumps(list(time_lengths))
    if batched:
        model.user_defined_metadata["batch_sizes"] = json.dumps(list(batches))
    return model


def _check_batchable(frozen: FrozenGraph, deployment_target: str) -> None:
    from dsconvert.batched_graph import has_open_batch

    if frozen.n_steps != STATIC_STEPS or not has_open_batch(frozen):
        raise ValueError(
            "batch sizes above 1 are for the static graph built with an open batch dimension "
            "(dsconvert.batched_graph.build_batched_static_graph)"
        )
    if DEPLOYMENT_TARGETS[deployment_target] < DEPLOYMENT_TARGETS[BATCHED_DEPLOYMENT_TARGET]:
        raise ValueError(
            f"a static package with batch sizes above 1 needs the {BATCHED_DEPLOYMENT_TARGET} deployment target: "
            "Core ML takes enumerated shapes on several inputs (the windows and both states) from macOS 15"
        )
