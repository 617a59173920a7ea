#!/usr/bin/env python3
"""Make a RANDOM-WEIGHT DeepSpeech-architecture model directory through the real conversion path.

For plumbing only (tests, a first `make serve` before a real model is converted): its transcripts are noise.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=64, help="hidden width (DeepSpeech releases use 2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    from app.speech.alphabet import ENGLISH
    from dsconvert.checkpoint_writer import write_checkpoint
    from dsconvert.cli import main as convert
    from dsconvert.weights import random_weights

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        write_checkpoint(random_weights(args.width, seed=args.seed), checkpoint)
        alphabet = Path(tmp) / "alphabet.txt"
        alphabet.write_text(ENGLISH.to_text(), encoding="utf-8")
        argv = ["--checkpoint", str(checkpoint), "--alphabet", str(alphabet), "--out", str(args.out)]
        argv += ["--name", f"random-width{args.width}-seed{args.seed}"]
        return convert([*argv, "--force"] if args.force else argv)


if __name__ == "__main__":
    sys.exit(main())
