"""Frozen DeepSpeech graph → Core ML ML Program (`.mlpackage`) with coremltools.

Facts measured with coremltools 9.0 + TensorFlow 2.21 that shape this module:
- `ct.convert("x.pb")` fails with TF 2 installed; a parsed GraphDef with `source="tensorflow"` works.
- A dynamic graph converted without an explicit `ct.RangeDim` gets a time range of 1..2.
- With a macOS 13+ deployment target the I/O silently becomes FLOAT16 unless the TensorTypes say float32.
"""

from __future__ import annotations

import logging
from typing import Any

import coremltools as ct
import numpy as np

from dsconvert.graph import OUTPUT_NAMES, FrozenGraph
from dsconvert.weights import N_CONTEXT, N_INPUT

log = logging.getLogger(__name__)

STATIC_STEPS = 16
# Upper bound of the dynamic package's time axis: 1000 steps = 20 s of audio per prediction. Longer audio runs
# in consecutive windows with the LSTM state carried across (the service does this), so the bound only caps
# the memory of one prediction.
DYNAMIC_MAX_STEPS = 1000
DEPLOYMENT_TARGET = ct.target.macOS13


PRECISIONS = ("float16", "float32")


def convert_to_mlpackage(
    frozen: FrozenGraph,
    n_cell: int,
    metadata: dict[str, str],
    max_steps: int = DYNAMIC_MAX_STEPS,
    precision: str = "float16",
) -> Any:
    """Convert one frozen graph (static or dynamic) to an ML Program with float32 I/O.

    float16 compute (the default) halves the package and lets Core ML use the Neural Engine; it moves confident
    probabilities by up to ~3e-3 (fp16 spacing near 1 is 4.9e-4), never the best class of a decisive frame.
    float32 keeps probabilities within ~1e-6 of TensorFlow, at twice the size and GPU/CPU only.
    """
    window = (2 * N_CONTEXT + 1, N_INPUT)
    time_dim: int | ct.RangeDim = (
        frozen.n_steps if frozen.n_steps is not None else ct.RangeDim(1, max_steps, default=STATIC_STEPS)
    )
    inputs = [
        ct.TensorType(name="input_node", shape=(1, time_dim, *window), dtype=np.float32),
        ct.TensorType(name="input_lengths", shape=(1,), dtype=np.int32),
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
        minimum_deployment_target=DEPLOYMENT_TARGET,
        compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
    )
    model.author = "deepspeech-coreml-service (scripts/convert.py)"
    model.license = "MPL-2.0 (DeepSpeech architecture); weights: see the model's source"
    kind = "static, 16 steps" if frozen.n_steps else f"dynamic, 1..{max_steps} steps"
    model.short_description = (
        f"Mozilla DeepSpeech acoustic model ({kind}): context windows (1,T,19,26) + LSTM state → "
        "softmax probabilities (T,1,classes), time-major, blank last"
    )
    model.input_description["input_node"] = "MFCC context windows: 26 coefficients × 19 frames per 20 ms step"
    model.input_description["input_lengths"] = "valid steps in this chunk; the rest is zero padding"
    model.input_description["previous_state_c"] = "LSTM cell state carried from the previous chunk"
    model.input_description["previous_state_h"] = "LSTM hidden state carried from the previous chunk"
    model.output_description["logits"] = "softmax probabilities (time, 1, classes); blank is the last class"
    model.output_description["new_state_c"] = "LSTM cell state after step input_lengths-1"
    model.output_description["new_state_h"] = "LSTM hidden state after step input_lengths-1"
    model.user_defined_metadata.update(metadata)
    return model
