"""DeepSpeech weights by their upstream names: read from a checkpoint or a frozen graph, checked, and made up.

Variable names follow `create_model` in DeepSpeech 0.7.x–0.9.x (`training/deepspeech_training/train.py`): five
dense layers `layer_{1,2,3,5,6}/{weights,bias}` and the LSTM exported as `LSTMBlockFusedCell` under
`cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/{kernel,bias}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from tensorflow.core.framework import graph_pb2, node_def_pb2

LSTM_SCOPE = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
LSTM_KERNEL = f"{LSTM_SCOPE}/kernel"
LSTM_BIAS = f"{LSTM_SCOPE}/bias"
DENSE_LAYERS = ("layer_1", "layer_2", "layer_3", "layer_5", "layer_6")
WEIGHT_NAMES = tuple(f"{layer}/{part}" for layer in DENSE_LAYERS for part in ("weights", "bias")) + (
    LSTM_KERNEL,
    LSTM_BIAS,
)

N_INPUT = 26
N_CONTEXT = 9
INPUT_WIDTH = (2 * N_CONTEXT + 1) * N_INPUT  # 494

GraphKind = Literal["graph", "pbmm"]  # output_graph.pb, or the memory-mapped output_graph.pbmm


class WeightsError(ValueError):
    """The checkpoint or graph does not hold a usable DeepSpeech model."""


@dataclass(frozen=True)
class DeepSpeechWeights:
    """The eleven float32 arrays of a DeepSpeech acoustic model, keyed by upstream variable name."""

    arrays: dict[str, np.ndarray]

    @property
    def n_hidden(self) -> int:
        return int(self.arrays["layer_1/weights"].shape[1])

    @property
    def n_cell_dim(self) -> int:
        return int(self.arrays[LSTM_BIAS].shape[0] // 4)

    @property
    def n_classes(self) -> int:
        return int(self.arrays["layer_6/bias"].shape[0])

    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))

    @classmethod
    def checked(cls, found: dict[str, np.ndarray], source: str) -> DeepSpeechWeights:
        """Keep the eleven model arrays (Adam slots, global_step… are ignored) and check their shapes agree."""
        missing = [name for name in WEIGHT_NAMES if name not in found]
        if missing:
            raise WeightsError(f"{source} lacks DeepSpeech variables: {', '.join(missing)}")
        arrays = {name: np.asarray(found[name], dtype=np.float32) for name in WEIGHT_NAMES}
        weights = cls(arrays)
        weights._check_shapes(source)
        return weights

    def _check_shapes(self, source: str) -> None:
        a = self.arrays
        h1 = a["layer_1/weights"].shape[1]
        h2 = a["layer_2/weights"].shape[1]
        h3 = a["layer_3/weights"].shape[1]
        cell = a[LSTM_BIAS].shape[0] // 4
        h5 = a["layer_5/weights"].shape[1]
        classes = a["layer_6/weights"].shape[1]
        expected = {
            "layer_1/weights": (INPUT_WIDTH, h1),
            "layer_1/bias": (h1,),
            "layer_2/weights": (h1, h2),
            "layer_2/bias": (h2,),
            "layer_3/weights": (h2, h3),
            "layer_3/bias": (h3,),
            LSTM_KERNEL: (h3 + cell, 4 * cell),
            LSTM_BIAS: (4 * cell,),
            "layer_5/weights": (cell, h5),
            "layer_5/bias": (h5,),
            "layer_6/weights": (h5, classes),
            "layer_6/bias": (classes,),
        }
        wrong = [
            f"{name} is {a[name].shape}, expected {shape}"
            for name, shape in expected.items()
            if tuple(a[name].shape) != shape
        ]
        if wrong:
            raise WeightsError(f"{source} has inconsistent shapes: {'; '.join(wrong)}")
        bad = [name for name, arr in a.items() if not np.all(np.isfinite(arr))]
        if bad:
            raise WeightsError(f"{source} has non-finite values in: {', '.join(bad)}")


def read_checkpoint(directory: str | Path) -> DeepSpeechWeights:
    """Read a DeepSpeech training checkpoint directory (or a checkpoint prefix) with TensorFlow's reader."""
    import tensorflow as tf

    path = Path(directory)
    if not path.exists() and not Path(f"{path}.index").exists():
        raise WeightsError(f"no checkpoint found in {path}: it does not exist")
    prefix = tf.train.latest_checkpoint(str(path)) if path.is_dir() else str(path)
    if not prefix:
        raise WeightsError(
            f"no checkpoint found in {path} (expected a 'checkpoint' index file and *.index/*.data)"
        )
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        found = {name: reader.get_tensor(name) for name in WEIGHT_NAMES if name in names}
    except (tf.errors.OpError, ValueError) as exc:
        raise WeightsError(f"cannot read checkpoint {prefix}: {exc}") from exc
    return DeepSpeechWeights.checked(found, f"checkpoint {prefix}")


def read_frozen_graph(path: str | Path) -> DeepSpeechWeights:
    """Read weights from upstream's frozen graph: `output_graph.pb` (variables frozen to Const) or the
    memory-mapped `output_graph.pbmm` / `deepspeech-0.9.3-models.pbmm`, by the same upstream node names."""
    return read_graph_file(path)[0]


def read_graph_file(path: str | Path) -> tuple[DeepSpeechWeights, GraphKind]:
    """`read_frozen_graph`, also saying which kind of file it was ("graph" or "pbmm") for the manifest."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read graph {path}: {exc.strerror}") from exc
    graph_def, kind = _parse_graph(data, path)
    found = {
        node.name: _const_array(node)
        for node in graph_def.node
        if node.op == "Const" and node.name in WEIGHT_NAMES
    }
    return DeepSpeechWeights.checked(found, f"graph {path}"), kind


def _parse_graph(data: bytes, path: Path) -> tuple[graph_pb2.GraphDef, GraphKind]:
    """Content decides: a memory-mapped package is recognised by its footer and directory, a plain GraphDef by
    parsing, whatever the file is called. The name only picks the message for a file that is neither: one
    called `.pbmm` gets the package's own fault (truncated, bad directory...), as the native client, which maps
    every `.pbmm` path, would fail on it; so does a damaged package under another name that still names its
    `memmapped_package://` regions."""
    from dsconvert import pbmm

    fault = pbmm.package_fault(data, str(path))
    if fault is None:
        return pbmm.parse_memmapped_graph(data, str(path)), "pbmm"
    graph_def = pbmm.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        if path.suffix == ".pbmm" or pbmm.names_regions(data):
            raise fault from exc
        raise WeightsError(f"{path} is not a TensorFlow GraphDef: {exc}") from exc
    if path.suffix == ".pbmm" and not graph_def.node:
        raise fault
    if any(node.op == pbmm.IMMUTABLE_CONST for node in graph_def.node):
        raise WeightsError(
            f"{path} holds ImmutableConst nodes but not their memory-mapped regions (no .pbmm directory); "
            "pass the whole .pbmm, the plain output_graph.pb or the checkpoint"
        )
    return graph_def, "graph"


def _const_array(node: node_def_pb2.NodeDef) -> np.ndarray:
    import tensorflow as tf

    return tf.make_ndarray(node.attr["value"].tensor)


def random_weights(n_hidden: int, n_classes: int = 29, seed: int = 0) -> DeepSpeechWeights:
    """Random weights in DeepSpeech's shapes (Glorot-uniform like upstream's VarianceScaling fan_avg)."""
    rng = np.random.default_rng(seed)

    def glorot(rows: int, cols: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (rows + cols))
        return rng.uniform(-limit, limit, size=(rows, cols)).astype(np.float32)

    def small(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.1, size=n).astype(np.float32)

    h = n_hidden
    return DeepSpeechWeights.checked(
        {
            "layer_1/weights": glorot(INPUT_WIDTH, h),
            "layer_1/bias": small(h),
            "layer_2/weights": glorot(h, h),
            "layer_2/bias": small(h),
            "layer_3/weights": glorot(h, h),
            "layer_3/bias": small(h),
            LSTM_KERNEL: glorot(2 * h, 4 * h),
            LSTM_BIAS: small(4 * h),
            "layer_5/weights": glorot(h, h),
            "layer_5/bias": small(h),
            "layer_6/weights": glorot(h, n_classes),
            "layer_6/bias": small(n_classes),
        },
        "random weights",
    )
