"""Decoder memory on noise: what N streams' beam searches hold at a width, with and without the memory bound.

Noise-like probabilities (random logits: what music, static or a random-weight model gives the decoder) keep
every hypothesis of the beam alive, the worst case for memory. Each configuration runs in its own spawned
process, so its RSS is its own: the peak while N streams decode, and the idle RSS after they finished and the
heap was trimmed (app/speech/memory.py).

    python scripts/decoder_memory.py                     # widths 500 and 2048, 4 streams, 30 s of noise each
    python scripts/decoder_memory.py --widths 2048 --streams 16 --seconds 60 --json memory.json

The measuring function lives in this importable module (scripts/decoder_memory.py is its command line) because a
spawned process imports the function it runs by its module's name.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCORER = ROOT / "models" / "default" / "kenlm.scorer"
UNBOUNDED = 10**12


@dataclass(frozen=True)
class Measurement:
    width: int
    bounded: bool
    streams: int
    prune_interval: int
    peak_mib_per_stream: float
    idle_mib: float  # RSS growth left after the streams finished and the heap was trimmed
    bound_mib_per_stream: float


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _measure(width: int, bounded: bool, streams: int, seconds: float, queue: multiprocessing.Queue) -> None:
    import numpy as np

    from app.speech.alphabet import ENGLISH
    from app.speech.decoding.beam import BeamDecoder, BeamOptions
    from app.speech.decoding.lm import Scorer
    from app.speech.memory import MemoryReturn

    options = BeamOptions(
        beam_width=width, max_hypothesis_frames=BeamOptions().max_hypothesis_frames if bounded else UNBOUNDED
    )
    decoder = BeamDecoder(ENGLISH, Scorer(SCORER, ENGLISH), options)
    frames = int(seconds / 0.02)
    logits = np.random.default_rng(0).normal(size=(frames, ENGLISH.n_classes)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    base = _rss_mib()
    peak = 0.0
    live = [decoder.stream() for _ in range(streams)]
    for start in range(0, frames, 16):  # 320 ms at a time, as a stream's chunks come
        for stream in live:
            stream.feed(probs[start : start + 16])
        peak = max(peak, _rss_mib() - base)
    for stream in live:
        stream.finish()
    del live, stream
    gc.collect()
    MemoryReturn(threshold=0).after(1.0)
    queue.put(
        Measurement(
            width,
            bounded,
            streams,
            options.stream_prune_interval,
            round(peak / streams, 1),
            round(_rss_mib() - base, 1),
            round(options.stream_memory_bytes / 2**20, 1),
        )
    )


def measure(width: int, bounded: bool, streams: int, seconds: float) -> Measurement:
    """One configuration, in a fresh spawned process."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    process = context.Process(target=_measure, args=(width, bounded, streams, seconds, queue))
    process.start()
    result: Measurement = queue.get(timeout=600)
    process.join()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[500, 2048])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [measure(w, bounded, args.streams, args.seconds) for w in args.widths for bounded in (False, True)]
    print(
        f"{'width':>5} {'bound':>5} {'interval':>8} {'peak MiB/stream':>15} {'bound MiB':>9} {'idle MiB':>8}"
    )
    for r in rows:
        print(
            f"{r.width:>5} {'on' if r.bounded else 'off':>5} {r.prune_interval:>8} {r.peak_mib_per_stream:>15} "
            f"{r.bound_mib_per_stream:>9} {r.idle_mib:>8}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
