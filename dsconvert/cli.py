"""`scripts/convert.py`: DeepSpeech checkpoint or frozen graph → a model directory the service loads.

python scripts/convert.py (--checkpoint DIR | --graph output_graph.pb|.pbmm) --alphabet alphabet.txt --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MAX_STREAM_BATCH = 64  # = coreml_export.MAX_STREAM_BATCH (not imported here: it loads coremltools)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert a Mozilla DeepSpeech model (0.7.x-0.9.x) to Core ML packages plus a NumPy weight "
        "file, written as one model directory for the transcription service.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="DeepSpeech training checkpoint directory")
    source.add_argument(
        "--graph",
        type=Path,
        help="frozen graph exported by upstream DeepSpeech.py: output_graph.pb, or the memory-mapped "
        "output_graph.pbmm / deepspeech-0.9.3-models.pbmm of a release",
    )
    parser.add_argument(
        "--alphabet", type=Path, required=True, help="alphabet.txt the model was trained with"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--scorer", type=Path, help="optional DeepSpeech .scorer to ship with the model")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="upper bound of the dynamic package's time axis (default 1000): its largest enumerated length",
    )
    parser.add_argument(
        "--precision",
        choices=("float16", "float32"),
        default="float16",
        help="Core ML compute precision (float16: half size, Neural Engine; float32: closest to TensorFlow)",
    )
    parser.add_argument(
        "--deployment-target",
        choices=("macOS13", "macOS14", "macOS15"),
        default=None,  # macOS14 = coreml_export.DEFAULT_DEPLOYMENT_TARGET (not imported here: it loads coremltools)
        help="oldest macOS the packages load on (default macOS14, or macOS15 with --stream-batch sizes above 1: "
        "the LSTM runs in float16, the Neural Engine's precision); macOS13 keeps the LSTM in float32 (GPU/CPU) "
        "and the packages larger",
    )
    parser.add_argument(
        "--stream-batch",
        type=_batch_sizes,
        default=(1,),  # = coreml_export.DEFAULT_STREAM_BATCH
        metavar="SIZES",
        help="batch sizes of static.mlpackage, comma-separated, e.g. 1,2,4,8,16: concurrent streams' chunks then "
        "share one Core ML prediction (padded up to the next size). Default 1: no batch dimension, the package "
        "as before. Sizes above 1 need macOS 15 (the default target then; Core ML takes enumerated shapes on "
        "several inputs from macOS 15)",
    )
    parser.add_argument(
        "--source-info",
        type=_json_object,
        default={},
        help="a JSON object added to the manifest's `source` (scripts/get_model.py records the release and "
        "each downloaded file's URL, size and sha256)",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--name", default=None, help="model name recorded in the manifest (default: --out's name)"
    )
    return parser.parse_args(argv)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of batch sizes: {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_STREAM_BATCH:
        raise argparse.ArgumentTypeError(f"batch sizes must lie in 1..{MAX_STREAM_BATCH}, got {text!r}")
    return tuple(sorted({1, *sizes}))  # 1 always: a lone stream's chunk


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _fail(message: str) -> int:
    print(f"convert.py: error: {message}", file=sys.stderr)
    return 2


def _step(message: str) -> None:
    print(f"[convert] {message}", flush=True)


def describe_ops(mlmodel: object) -> str:
    """One line for the log: the package's MIL op types and whether its LSTM is the core op (GPU/ANE) or a
    while_loop (CPU only)."""
    from dsconvert import coreml_export

    ops = coreml_export.program_op_types(mlmodel)
    if "lstm" in ops and "while_loop" not in ops:
        verdict = f"core lstm op in {coreml_export.lstm_dtype(mlmodel)}, no while_loop"
    else:
        verdict = "WARNING: " + ("while_loop (CPU only)" if "while_loop" in ops else "no lstm op")
    return f"{', '.join(sorted(ops))} ({verdict})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # coremltools warns on every import on Linux that its prediction library is absent: expected here.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    # Imported here so that --help and argument errors are instant (TensorFlow takes seconds to import).
    from app.speech.alphabet import Alphabet, AlphabetError
    from dsconvert import coreml_export, graph, weights
    from dsconvert.model_writer import OutputDirectoryError, write_model_directory

    max_steps = args.max_steps or coreml_export.DYNAMIC_MAX_STEPS
    if max_steps < coreml_export.STATIC_STEPS:
        return _fail(f"--max-steps must be at least {coreml_export.STATIC_STEPS}")
    lengths = coreml_export.dynamic_lengths(max_steps)
    batch_sizes = coreml_export.stream_batch_sizes(args.stream_batch)
    batched = len(batch_sizes) > 1
    target = args.deployment_target or (
        coreml_export.BATCHED_DEPLOYMENT_TARGET if batched else coreml_export.DEFAULT_DEPLOYMENT_TARGET
    )
    if batched and args.deployment_target not in (None, coreml_export.BATCHED_DEPLOYMENT_TARGET):
        return _fail(
            f"--stream-batch sizes above 1 need --deployment-target {coreml_export.BATCHED_DEPLOYMENT_TARGET} "
            "(Core ML takes enumerated shapes on several inputs, the windows and both states, from macOS 15)"
        )
    if args.scorer is not None and not args.scorer.is_file():
        return _fail(f"scorer {args.scorer} does not exist")
    started = time.monotonic()
    try:
        alphabet = Alphabet.from_file(args.alphabet)
        if args.checkpoint is not None:
            _step(f"reading checkpoint {args.checkpoint}")
            model = weights.read_checkpoint(args.checkpoint)
            source: dict[str, object] = {"kind": "checkpoint", "file": args.checkpoint.name}
        else:
            _step(f"reading frozen graph {args.graph}")
            model, kind = weights.read_graph_file(args.graph)
            if kind == "pbmm":
                _step("the graph is memory-mapped (.pbmm): weights read from its regions")
            source = {"kind": kind, "file": args.graph.name}
    except (AlphabetError, weights.WeightsError) as exc:
        return _fail(str(exc))
    if model.n_classes != alphabet.n_classes:
        return _fail(
            f"alphabet {args.alphabet} has {alphabet.size} labels (+1 blank = {alphabet.n_classes} classes) but the "
            f"model's output layer has {model.n_classes} classes; pass the alphabet the model was trained with"
        )
    _step(
        f"model: width {model.n_hidden}, LSTM {model.n_cell_dim}, {model.n_classes} classes, "
        f"{model.n_parameters() / 1e6:.2f} M parameters"
    )
    name = args.name or args.out.resolve().name
    essentials = {
        "name": name,
        "n_hidden": str(model.n_hidden),
        "n_cell_dim": str(model.n_cell_dim),
        "n_classes": str(model.n_classes),
        "alphabet": json.dumps(list(alphabet.labels)),
        "sample_rate": str(graph.SAMPLE_RATE),
        "feature_win_len_ms": str(graph.FEATURE_WIN_LEN_MS),
        "feature_win_step_ms": str(graph.FEATURE_WIN_STEP_MS),
        "n_input": "26",
        "n_context": "9",
        "precision": args.precision,
        "outputs": "logits are softmax probabilities, time-major (T,1,classes), blank last",
    }

    def write_artifacts(staging: Path) -> None:
        from app.speech import model_dir as md
        from dsconvert.batched_graph import build_batched_static_graph

        for n_steps, package, graph_file in (
            (coreml_export.STATIC_STEPS, md.STATIC_PACKAGE, md.STATIC_GRAPH),
            (None, md.DYNAMIC_PACKAGE, md.DYNAMIC_GRAPH),
        ):
            kind = "static" if n_steps else "dynamic"
            _step(f"building and freezing the {kind} TensorFlow graphs (native client's, Core ML's)")
            # The .pb keeps upstream's exact graph (length mask, state at input_lengths-1) for the native
            # client; Core ML gets the variant without the mask, which coremltools maps to its core lstm op.
            native = graph.build_frozen_graph(model, alphabet, n_steps)
            (staging / graph_file).write_bytes(native.graph_def.SerializeToString())
            # The static package with a batch dimension (--stream-batch) comes from the same network with an
            # open batch axis (dsconvert/batched_graph.py); batch 1 alone is the graph as before.
            rows = batch_sizes if n_steps else coreml_export.DEFAULT_STREAM_BATCH
            if len(rows) > 1:
                frozen = build_batched_static_graph(model)
            else:
                frozen = graph.build_frozen_graph(model, alphabet, n_steps, variant="coreml")
            batch_note = f", batch sizes {'/'.join(map(str, rows))}" if len(rows) > 1 else ""
            _step(f"converting the {kind} graph to Core ML ({package}{batch_note})")
            meta = {
                **essentials,
                "kind": kind,
                "n_steps": str(n_steps or 0),
                "max_steps": str(n_steps or max_steps),
            }
            mlmodel = coreml_export.convert_to_mlpackage(
                frozen,
                model.n_cell_dim,
                meta,
                max_steps=max_steps,
                precision=args.precision,
                deployment_target=target,
                lengths=lengths,
                batch_sizes=rows,
            )
            _step(f"{package} MIL ops: {describe_ops(mlmodel)}")
            mlmodel.save(str(staging / package))

    try:
        write_model_directory(
            args.out,
            model,
            alphabet,
            write_artifacts,
            manifest_extra={
                "n_steps": coreml_export.STATIC_STEPS,
                "dynamic_max_steps": max_steps,
                # The time lengths the dynamic package accepts (EnumeratedShapes): the service plans its
                # pieces from them (app/speech/runtime/windows.py).
                "dynamic_lengths": list(lengths),
                # The batch sizes static.mlpackage accepts (enumerated, --stream-batch; [1]: no batch
                # dimension). The package's own `batch_sizes` metadata and input shapes say the same.
                "stream_batch_sizes": list(batch_sizes),
                "source": {**source, **args.source_info, "name": name},
                "precision": args.precision,
            },
            scorer=args.scorer,
            force=args.force,
        )
    except OutputDirectoryError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc}")
    _step(f"wrote {args.out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
