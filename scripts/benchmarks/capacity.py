"""Stream capacity with decoding in decoder processes against decoding in the service process: N concurrent
beam-search websocket streams on a real uvicorn, each pair measured back to back in one run.

    python -m scripts.benchmarks.capacity --streams 16 64 --seconds 20 [--model-dir models/default] [--json out]

A quick companion to section 4 of scripts/bench.py (which measures 16 streams this way for the headline
`beam_streams_processes_over_one`): this one also gives the 64-stream capacity before (DS_DECODER_PROCESSES=0)
and after (the default).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

from app.speech.runtime.cores import default_decoder_processes
from scripts.benchmarks.concurrency import concurrent_streams
from scripts.benchmarks.models import uvicorn_server
from tests.support.audio import speak

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = (
    "turn on the kitchen lights and play some music",
    "what is the weather like in the mountains today",
)


def speech(seconds: float, folder: Path) -> np.ndarray:
    """espeak-ng sentences with pauses, repeated to `seconds`, as int16 PCM samples."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [
        soundfile.read(speak(text, folder / f"{i}.wav"), dtype="int16")[0] for i, text in enumerate(SENTENCES)
    ]
    pause = np.zeros(12000, np.int16)
    one = np.concatenate([x for part in parts for x in (part, pause)])
    return np.tile(one, int(seconds * 16000 / len(one)) + 1)[: int(seconds * 16000)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    pcm = speech(args.seconds, ROOT / ".cache" / "bench" / "capacity")
    results: dict[str, dict[str, float]] = {}
    for processes in ("0", str(default_decoder_processes())):
        with uvicorn_server(
            args.model_dir, f"capacity-{processes}", DS_DECODER_PROCESSES=processes
        ) as server:
            for n in args.streams:
                r = concurrent_streams(server, pcm, n)
                results.setdefault(str(n), {})[processes] = r["audio_s_per_wall_s"]
                print(
                    f"{n} streams, DS_DECODER_PROCESSES={processes}: {r['audio_s_per_wall_s']:.1f} audio s / wall s"
                )
    for n, by in results.items():
        ratio = by[str(default_decoder_processes())] / by["0"]
        print(f"{n} streams: decoder processes / in-process = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
