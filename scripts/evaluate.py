#!/usr/bin/env python3
"""WER and CER of the service's own pipeline over a labelled set: greedy and beam+LM, whole-file and streamed.

    python scripts/evaluate.py DATA [--model-dir models/default] [--json out.json] [--beam-width 500]
        [--modes greedy,beam] [--paths whole,stream] [--chunk-ms 320] [--limit N]

DATA is a DeepSpeech-style CSV (`wav_filename,wav_filesize,transcript`; relative paths are relative to the
CSV; an optional `voice_group` column adds per-group rows) or a folder of `name.wav` + `name.txt` pairs.
Audio is decoded by `app.speech.audio.decode_audio` (any rate, resampled as the service does) and run through
`app.speech.engine.Engine` with the NumPy backend: `transcribe` for whole files, `open_stream` / `feed` / `finish`
(chunks of --chunk-ms) for streams. Errors are counted with jiwer over the whole set (total edits / total
reference words or characters).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(frozen=True)
class Item:
    wav: Path
    transcript: str
    group: str = ""


def load_dataset(path: Path) -> list[Item]:
    """Items of a DeepSpeech CSV or of a folder of wav + txt pairs."""
    path = Path(path)
    if path.is_dir():
        items = []
        for wav in sorted(path.glob("*.wav")):
            txt = wav.with_suffix(".txt")
            if txt.exists():
                items.append(Item(wav, txt.read_text(encoding="utf-8").strip()))
        if not items:
            raise SystemExit(f"{path}: no name.wav + name.txt pairs found")
        return items
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"wav_filename", "transcript"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: not a DeepSpeech CSV (missing columns {', '.join(sorted(missing))})")
        items = []
        for row in reader:
            wav = Path(row["wav_filename"])
            if not wav.is_absolute():
                wav = path.parent / wav
            items.append(Item(wav, row["transcript"].strip(), row.get("voice_group") or ""))
    return items


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER (jiwer), as fractions; empty references are skipped."""
    import jiwer

    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), "n": 0}
    refs = [r for r, _ in pairs]
    hyps = [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "n": len(pairs)}


def _engine(model_dir: Path, decoder: str, beam_width: int, scorer: bool = True):
    from app.settings import Settings
    from app.speech.engine import Engine

    return Engine.load(
        Settings(
            model_dir=model_dir, backend="numpy", decoder=decoder, beam_width=beam_width, use_scorer=scorer
        )
    )


def transcribe_stream(engine, samples, chunk: int) -> str:
    session = engine.open_stream()
    for start in range(0, len(samples), chunk):
        session.feed(samples[start : start + chunk])
    return session.finish().text


def evaluate_dataset(
    items: Sequence[Item],
    model_dir: Path,
    *,
    beam_width: int = 500,
    modes: Sequence[str] = ("greedy", "beam"),
    paths: Sequence[str] = ("whole", "stream"),
    chunk_ms: int = 320,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every (decoder, path) over the items; returns {"rows": [...], "samples": [...], ...}."""
    import numpy as np

    from app.speech.audio import decode_audio

    audio = [decode_audio(item.wav.read_bytes())[0] for item in items]
    seconds = sum(len(a) for a in audio) / 16000.0
    refs = [item.transcript for item in items]
    groups = sorted({item.group for item in items if item.group})
    chunk = max(1, int(16000 * chunk_ms / 1000))
    rows = []
    hyps_by_config: dict[str, list[str]] = {}
    for mode in modes:
        engine = _engine(model_dir, mode, beam_width)
        label = "greedy" if mode == "greedy" else engine.decoder.description
        for path in paths:
            started = time.monotonic()
            if path == "whole":
                hyps = [engine.transcribe(a).transcript.text for a in audio]
            else:
                hyps = [transcribe_stream(engine, a, chunk) for a in audio]
            elapsed = time.monotonic() - started
            key = f"{mode}/{path}"
            hyps_by_config[key] = hyps
            row = {
                "decoder": mode,
                "decoder_detail": label,
                "path": path,
                "group": "all",
                **error_rates(refs, hyps),
                "seconds": round(elapsed, 2),
                "rtf": elapsed / max(seconds, 1e-9),
            }
            rows.append(row)
            for group in groups:
                idx = [i for i, item in enumerate(items) if item.group == group]
                rows.append(
                    {
                        "decoder": mode,
                        "decoder_detail": label,
                        "path": path,
                        "group": group,
                        **error_rates([refs[i] for i in idx], [hyps[i] for i in idx]),
                    }
                )
            log(f"{key}: WER {row['wer']:.2%} CER {row['cer']:.2%} ({elapsed:.1f} s)")
    samples = [
        {
            "wav": str(item.wav.name),
            "group": item.group,
            "reference": item.transcript,
            **{key: hyps[i] for key, hyps in hyps_by_config.items()},
        }
        for i, item in enumerate(items)
    ]
    return {
        "model_dir": str(model_dir),
        "utterances": len(items),
        "audio_seconds": round(seconds, 1),
        "beam_width": beam_width,
        "chunk_ms": chunk_ms,
        "rows": rows,
        "samples": samples,
        "audio_mean_abs": float(np.mean([np.mean(np.abs(a)) for a in audio])) if audio else 0.0,
    }


def format_table(results: dict) -> str:
    lines = ["| decoder | path | voices | WER | CER | n |", "|---|---|---|---:|---:|---:|"]
    for row in results["rows"]:
        lines.append(
            f"| {row['decoder_detail']} | {row['path']} | {row['group']} | {row['wer']:.2%} | "
            f"{row['cer']:.2%} | {row['n']} |"
        )
    return "\n".join(lines)


def write_report(
    results: dict, md_path: Path | None, json_path: Path | None, extra: dict | None = None
) -> None:
    """Markdown summary (table + the worst examples) and/or the full JSON (with every transcript)."""
    if json_path is not None:
        json_path.write_text(json.dumps({**results, **({"build": extra} if extra else {})}, indent=1) + "\n")
    if md_path is None:
        return
    lines = ["# Evaluation of this model directory", ""]
    if extra:
        lines += _build_section(extra)
    lines += [
        f"## Held-out set: {results['utterances']} utterances, {results['audio_seconds'] / 60:.1f} min of audio",
        "",
        f"Beam width {results['beam_width']}; streamed in chunks of {results['chunk_ms']} ms.",
        "",
        format_table(results),
        "",
    ]
    keys = [k for k in results["samples"][0] if "/" in k] if results["samples"] else []
    if keys:
        worst_key = "beam/whole" if "beam/whole" in keys else keys[0]
        import jiwer

        scored = sorted(results["samples"], key=lambda s: -jiwer.wer(s["reference"], s[worst_key] or "-"))
        lines += [
            f"Examples with the most word errors ({worst_key}):",
            "",
            "| reference | hypothesis |",
            "|---|---|",
        ]
        lines += [f"| {s['reference']} | {s[worst_key]} |" for s in scored[:10]]
        lines.append("")
    md_path.write_text("\n".join(lines) + "\n")


def _build_section(extra: dict) -> list[str]:
    out = ["## How it was built", ""]
    t = extra.get("training", {})
    a = extra.get("audio", {})
    s = extra.get("scorer", {})
    if t:
        out.append(
            f"- width {t.get('width')}, {t.get('parameters', 0) / 1e6:.2f} M parameters; "
            f"{t.get('steps')} steps ({t.get('epochs', 0):.1f} epochs) in {t.get('train_minutes', 0):.1f} "
            f"min; best dev greedy CER {t.get('best_dev_cer', float('nan')):.2%} at step {t.get('best_step')}"
        )
    if a:
        out.append(
            f"- training audio: {a.get('utterances')} utterances, {a.get('hours')} h (espeak-ng, augmented)"
        )
    if "text" in extra:
        out.append(f"- text spoken: {json.dumps(extra['text'].get('spoken'))}")
    if s:
        out.append(
            f"- scorer: order {s.get('order')}, {s.get('bytes', 0) / 1e6:.1f} MB, alpha {s.get('alpha')}, "
            f"beta {s.get('beta')} (tuned on the dev set)"
        )
    if "stages" in extra:
        note = ""
        if extra.get("resumed"):
            note = " (this invocation resumed a finished training run: the data and training time are the first's)"
        out.append(
            f"- stage times (s): {json.dumps(extra['stages'])}; total {extra.get('total_minutes')} min{note}"
        )
    if "first_invocation" in extra:
        out.append(
            f"- the invocation that made the data and trained: {json.dumps(extra['first_invocation'])}"
        )
    if "machine" in extra:
        out.append(f"- machine: {json.dumps(extra['machine'])}")
    if "packages" in extra:
        out.append(f"- Debian packages: {json.dumps(extra['packages'])}")
    out.append("")
    return out


def tune_lm_weights(
    probs: Sequence,
    references: Sequence[str],
    scorer_path: Path,
    alphas: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0),
    betas: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
    beam_width: int = 64,
) -> tuple[float, float, list[dict]]:
    """Grid-search the scorer's alpha/beta on dev probabilities (beam+LM WER); returns (alpha, beta, grid)."""
    from app.speech.alphabet import ENGLISH
    from app.speech.decoding.beam import BeamDecoder, BeamOptions
    from app.speech.decoding.lm import Scorer

    grid = []
    for alpha in alphas:
        for beta in betas:
            decoder = BeamDecoder(
                ENGLISH,
                Scorer(scorer_path, ENGLISH, alpha=alpha, beta=beta),
                BeamOptions(beam_width=beam_width),
            )
            hyps = [decoder.decode(p).text for p in probs]
            grid.append({"alpha": alpha, "beta": beta, **error_rates(references, hyps)})
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    return best["alpha"], best["beta"], grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="DeepSpeech CSV or folder of wav + txt")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--beam-width", type=int, default=500)
    parser.add_argument("--modes", default="greedy,beam", help="comma list of greedy, beam")
    parser.add_argument("--paths", default="whole,stream", help="comma list of whole, stream")
    parser.add_argument("--chunk-ms", type=int, default=320, help="stream chunk size")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--json", type=Path, help="write all numbers and transcripts here")
    parser.add_argument("--markdown", type=Path, help="write a Markdown report here")
    args = parser.parse_args(argv)
    items = load_dataset(args.data)[: args.limit]
    results = evaluate_dataset(
        items,
        args.model_dir,
        beam_width=args.beam_width,
        modes=[m for m in args.modes.split(",") if m],
        paths=[p for p in args.paths.split(",") if p],
        chunk_ms=args.chunk_ms,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(format_table(results))
    write_report(results, args.markdown, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
