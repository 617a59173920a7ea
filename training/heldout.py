"""The held-out evaluation set: committed sentences (training/heldout_sentences.txt) spoken by espeak-ng.

Never in the training text (training/corpus.py removes them and their hash bucket), and half of the utterances
use voice variants never used in training (synth.HELDOUT_VARIANTS); the other half use trained voices at
new speeds/pitches. The audio is regenerated, not committed: `espeak-ng -w` writes the same 22050 Hz WAVs a user
would upload, and the CSV is DeepSpeech's (wav_filename, wav_filesize, transcript) plus a `voice` and a
`voice_group` column.

    python -m training.heldout --out .cache/heldout        # → .cache/heldout/heldout.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from training.corpus import HELDOUT_FILE, read_sentences
from training.synth import ACCENTS, HELDOUT_VARIANTS
from training.synth import TRAIN_VARIANTS_BASIC as HELDOUT_TRAINED_VARIANTS

CSV_NAME = "heldout.csv"


def heldout_plan(sentences: Sequence[str], seed: int = 99) -> list[dict[str, str | int]]:
    """Voice, speed and pitch per sentence: even rows an unseen variant, odd rows a trained voice."""
    rng = random.Random(seed)
    plan: list[dict[str, str | int]] = []
    for i, text in enumerate(sentences):
        accent = rng.choice(ACCENTS)
        if i % 2 == 0:
            variant = rng.choice(HELDOUT_VARIANTS)
            voice, group = f"{accent}+{variant}", f"unseen_variant_{variant}"
        else:
            variant = rng.choice(HELDOUT_TRAINED_VARIANTS)
            voice, group = accent + (f"+{variant}" if variant else ""), "trained_voice"
        plan.append(
            {
                "text": text,
                "voice": voice,
                "group": group,
                "speed": rng.randint(150, 190),
                "pitch": rng.randint(35, 65),
            }
        )
    return plan


def generate_heldout(
    out_dir: Path,
    sentences: Sequence[str] | None = None,
    seed: int = 99,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the WAVs and the CSV (skipped when the same plan was already generated); returns the CSV path."""
    sentences = list(sentences) if sentences is not None else read_sentences(HELDOUT_FILE)
    plan = heldout_plan(sentences, seed)
    stamp = hashlib.sha1(repr(plan).encode()).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    stamp_path = out_dir / ".plan"
    if csv_path.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return csv_path
    log(f"held-out: speaking {len(plan)} sentences into {out_dir}")
    rows = []
    for i, item in enumerate(plan):
        wav = out_dir / f"heldout-{i:04d}.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                str(item["voice"]),
                "-s",
                str(item["speed"]),
                "-p",
                str(item["pitch"]),
                "-w",
                str(wav),
                str(item["text"]),
            ],
            check=True,
            capture_output=True,
        )
        rows.append([wav.name, wav.stat().st_size, item["text"], item["voice"], item["group"]])
    tmp = csv_path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["wav_filename", "wav_filesize", "transcript", "voice", "voice_group"])
        writer.writerows(rows)
    tmp.replace(csv_path)
    stamp_path.write_text(stamp)
    return csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate the held-out evaluation set (WAVs + DeepSpeech CSV)."
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/heldout"))
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args(argv)
    print(generate_heldout(args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
