"""The small random-weight model conftest converts, and reading its frozen TensorFlow graphs as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsconvert.graph import FrozenGraph

SMALL_WIDTH = 48


def frozen_graph(model_dir: Path, name: str, n_steps: int | None) -> FrozenGraph:
    """One of a model directory's frozen graphs, ready for `dsconvert.graph.run_graph` (needs TensorFlow)."""
    import tensorflow as tf

    from dsconvert.graph import FrozenGraph

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((model_dir / name).read_bytes())
    return FrozenGraph(graph_def, n_steps)
