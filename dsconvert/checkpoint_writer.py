"""Write DeepSpeech-style training checkpoints (upstream variable names) for tests, tooling and training."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from dsconvert.weights import DeepSpeechWeights

tfv1 = tf.compat.v1


def write_checkpoint(weights: DeepSpeechWeights, directory: str | Path, step: int = 1) -> Path:
    """Save the weights as `best_dev-<step>` with a `checkpoint` index file, as upstream's training writes them."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tfv1.disable_resource_variables()
        variables = [tfv1.get_variable(name, initializer=value) for name, value in weights.arrays.items()]
        global_step = tfv1.train.get_or_create_global_step()
        saver = tfv1.train.Saver([*variables, global_step])
        with tfv1.Session(graph=graph) as session:
            session.run(tfv1.global_variables_initializer())
            global_step.load(step, session)
            prefix = saver.save(session, str(out / "best_dev"), global_step=step, write_meta_graph=False)
    return Path(prefix)
