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
"""

from __future__ import annotations

import logging
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
DEPLOYMENT_TARGETS = {"macOS13": ct.target.macOS13, "macOS14": ct.target.macOS14}
DEFAULT_DEPLOYMENT_TARGET = "macOS14"  # fp16 LSTM (Neural Engine); macOS 14 is from 2023


PRECISIONS = ("float16", "float32")
VALID_STEPS_NOTE = (
    "every step of input_node is valid (no input_lengths); run a stream's tail (< 16 windows) through the "
    "dynamic package at its exact length"
)


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
) -> Any:
    """Convert one frozen graph (static or dynamic, `coreml` variant) to an ML Program with float32 I/O.

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
    time_dim: int | ct.RangeDim = (
        frozen.n_steps if frozen.n_steps is not None else ct.RangeDim(1, max_steps, default=STATIC_STEPS)
    )
    inputs = [
        ct.TensorType(name="input_node", shape=(1, time_dim, *window), dtype=np.float32),
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
    kind = "static, 16 steps" if frozen.n_steps else f"dynamic, 1..{max_steps} steps"
    model.short_description = (
        f"Mozilla DeepSpeech acoustic model ({kind}): context windows (1,T,19,26), all T valid, + LSTM state → "
        "softmax probabilities (T,1,classes), time-major, blank last"
    )
    model.input_description["input_node"] = (
        "MFCC context windows: 26 coefficients × 19 frames per 20 ms step; every step is valid (no padding)"
    )
    model.input_description["previous_state_c"] = "LSTM cell state carried from the previous chunk"
    model.input_description["previous_state_h"] = "LSTM hidden state carried from the previous chunk"
    model.output_description["logits"] = "softmax probabilities (time, 1, classes); blank is the last class"
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
    return model
