#!/usr/bin/env python3
"""Endpoint quality: where the endpointer cuts long recordings made of held-out sentences with real pauses.

    python scripts/endpoint_quality.py [--heldout .cache/heldout/heldout.csv] [--limit N] [--per-recording 8]
        [--silence-ms 300 500 700 1000] [--energy-db -35] [--noise-dbfs -60 -30] [--seed 0]
        [--model-dir models/default] [--max-utterance-seconds 0] [--out endpoint_quality.json]

Each recording is `--per-recording` held-out sentences (decoded and resampled to 16 kHz as the service decodes
files, their own leading and trailing silence trimmed), in a seeded random order, each followed by a real pause
of `--pause` seconds (uniform); inside a share (`--breath-share`) of the sentences a "mid-sentence breath" of
`--breath` seconds of silence is inserted at a word boundary: a gap between two consecutive words of the
sentence's own decode, at its quietest 10 ms. White noise at each `--noise-dbfs` (RMS re full scale, seeded)
is added to the whole recording, so pauses and breaths hold the same background as the speech.

Two detectors of non-speech frames feed the same silence-run logic (app.speech.endpoint.Endpointer):
- `blank`: the service's, a 20 ms model frame whose best class is the CTC blank or the space;
- `energy`: a 20 ms frame whose RMS is more than `--energy-db` below the recording's 95th percentile frame.

A cut (the first frame of the next utterance) is correct when it falls inside a real pause, up to the pause's
end + 0.1 s; any other cut splits a sentence, and one whose silence run ([cut - silence_ms, cut]) overlaps an
inserted breath splits that breath. Precision = correct cuts / cuts; recall = real pauses with a correct cut /
real pauses (the one after a recording's last sentence included). The table also gives the delay of correct
cuts after the pause's start (median/max) and `gap`, the longest non-speech run a detector saw inside a sentence:
a silence_ms above it splits no sentence. `--max-utterance-seconds` is 0 by default, so only pauses cut (the service's forced cut at its
maximum length is not what is measured). The held-out set is made by `python -m training.heldout` (run when the
CSV is missing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the service runs, before NumPy's BLAS starts work

from app.speech.decoding.timings import FRAME_SECONDS  # noqa: E402
from app.speech.endpoint import EndpointConfig, Endpointer  # noqa: E402

if TYPE_CHECKING:
    from app.speech.engine import Engine

RATE = 16000
HOP = round(FRAME_SECONDS * RATE)  # 320 samples: one model frame
SLACK_SECONDS = 0.1  # a cut up to this long after a pause's end still counts as in the pause
LEAD_SECONDS = 0.3  # silence before the first sentence


@dataclass(frozen=True)
class Sentence:
    """One sentence's 16 kHz samples (silence trimmed) and the gaps between its decoded words (seconds)."""

    samples: np.ndarray
    text: str
    gaps: tuple[tuple[float, float], ...] = ()


@dataclass
class Recording:
    """Clean samples and the ground truth: real pauses, inserted breaths and sentences, in seconds."""

    samples: np.ndarray
    pauses: list[tuple[float, float]] = field(default_factory=list)
    breaths: list[tuple[float, float]] = field(default_factory=list)
    sentences: list[tuple[float, float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


@dataclass(frozen=True)
class BuildOptions:
    per_recording: int = 8
    pause: tuple[float, float] = (0.8, 2.0)
    breath: tuple[float, float] = (0.2, 0.5)
    breath_share: float = 0.5
    seed: int = 0


def trim(samples: np.ndarray, below_peak_db: float = -50.0) -> np.ndarray:
    """The samples from the first to the last 10 ms frame within `below_peak_db` of the loudest frame."""
    frame = RATE // 100
    n = len(samples) // frame
    if n == 0:
        return samples
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > below_peak_db)
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


def word_gaps(engine: Engine, samples: np.ndarray) -> tuple[tuple[float, float], ...]:
    """(end of a word, start of the next) for each pair of consecutive words of the sentence's decode."""
    words = engine.transcribe(samples).transcript.words
    return tuple((a.end, b.start) for a, b in zip(words, words[1:], strict=False))


def load_sentences(engine: Engine, csv_path: Path, limit: int | None = None) -> list[Sentence]:
    """The held-out CSV's sentences, decoded as the service decodes files, trimmed, with their word gaps."""
    from app.speech.audio import decode_audio

    if not csv_path.exists():
        from training.heldout import generate_heldout

        generate_heldout(csv_path.parent)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    sentences = []
    for row in rows[:limit]:
        samples, _ = decode_audio((csv_path.parent / row["wav_filename"]).read_bytes())
        samples = trim(samples)
        sentences.append(Sentence(samples, row["transcript"], word_gaps(engine, samples)))
    return sentences


def quietest(samples: np.ndarray, lo: int, hi: int, width: int = RATE // 100) -> int:
    """The centre of the quietest `width`-sample window in samples[lo:hi] (widened to one window)."""
    lo, hi = max(0, lo - width // 2), min(len(samples), max(hi, lo + width) + width // 2)
    power = np.convolve(samples[lo:hi].astype(np.float64) ** 2, np.ones(width), mode="valid")
    return lo + int(power.argmin()) + width // 2


def breath_point(sentence: Sentence, rng: random.Random) -> int | None:
    """The sample where a breath goes: the quietest point of a random gap between words (None: one word)."""
    if not sentence.gaps:
        return None
    end, start = rng.choice(sentence.gaps)
    lo, hi = round(end * RATE), round(start * RATE)
    return quietest(sentence.samples, lo, hi)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def build_recording(sentences: Sequence[Sentence], options: BuildOptions, rng: random.Random) -> Recording:
    """The sentences in order, each followed by a real pause, some with a breath inserted at a word gap."""
    parts = [silence(LEAD_SECONDS)]
    recording = Recording(np.zeros(0, np.float32))
    at = len(parts[0])
    for sentence in sentences:
        samples, start = sentence.samples, at
        point = breath_point(sentence, rng) if rng.random() < options.breath_share else None
        if point is not None:
            gap = silence(rng.uniform(*options.breath))
            samples = np.concatenate([samples[:point], gap, samples[point:]])
            recording.breaths.append(((start + point) / RATE, (start + point + len(gap)) / RATE))
        pause = silence(rng.uniform(*options.pause))
        parts += [samples, pause]
        at += len(samples)
        recording.sentences.append((start / RATE, at / RATE))
        recording.pauses.append((at / RATE, (at + len(pause)) / RATE))
        recording.texts.append(sentence.text)
        at += len(pause)
    recording.samples = np.concatenate(parts)
    return recording


def build_recordings(sentences: Sequence[Sentence], options: BuildOptions) -> list[Recording]:
    """The sentences shuffled (seeded) and grouped `per_recording` at a time (a shorter last group kept)."""
    rng = random.Random(options.seed)
    order = list(sentences)
    rng.shuffle(order)
    step = options.per_recording
    return [build_recording(order[i : i + step], options, rng) for i in range(0, len(order), step)]


def with_noise(samples: np.ndarray, dbfs: float, seed: int) -> np.ndarray:
    """The samples plus white noise of RMS `dbfs` re full scale (clipped to ±1)."""
    noise = np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), len(samples))
    return np.clip(samples + noise, -1.0, 1.0).astype(np.float32)


def model_probs(engine: Engine, samples: np.ndarray) -> np.ndarray:
    """The (T, n_classes) probabilities, computed as Engine.transcribe computes them."""
    return engine.probabilities(samples)


def blank_cuts(probs: np.ndarray, config: EndpointConfig, blank: int, space: int) -> list[int]:
    """The service's cuts: non-speech is a frame whose best class is the blank or the space."""
    return Endpointer(config, blank, space).push(probs)


def energy_speech(samples: np.ndarray, threshold_db: float) -> np.ndarray:
    """Per 20 ms frame: its RMS is within `threshold_db` of the recording's 95th percentile frame RMS."""
    n = len(samples) // HOP
    frames = samples[: n * HOP].astype(np.float64).reshape(n, HOP)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    return np.asarray(db - np.percentile(db, 95) > threshold_db)


def energy_cuts(speech: np.ndarray, config: EndpointConfig) -> list[int]:
    """The same silence-run logic over the energy detector's frames (speech as class 1, non-speech as 0)."""
    probs = np.stack([~speech, speech], axis=1).astype(np.float32)
    return Endpointer(config, blank_index=0, space_index=2).push(probs)


def longest_gap(speech: np.ndarray, recording: Recording, lag: float = 0.3) -> float:
    """The longest run of non-speech frames (s) between two speech frames of one sentence (its span plus `lag`,
    as the model emits characters late): the silence_ms below which some sentence would be split."""
    times = np.flatnonzero(speech) * FRAME_SECONDS
    longest = 0.0
    for start, end in recording.sentences:
        inside = times[(times >= start) & (times <= end + lag)]
        if len(inside) > 1:
            longest = max(longest, float(np.diff(inside).max()) - FRAME_SECONDS)
    return longest


def classify(cut_s: float, recording: Recording, silence_s: float) -> str:
    """`pause` (correct), `breath` (its silence run overlaps an inserted breath), `lead` or `sentence`."""
    if any(start <= cut_s <= end + SLACK_SECONDS for start, end in recording.pauses):
        return "pause"
    if any(start <= cut_s <= end + silence_s for start, end in recording.breaths):
        return "breath"
    return "lead" if cut_s <= LEAD_SECONDS else "sentence"


@dataclass
class Score:
    """Counts over recordings for one detector and setting; `delays` are cut - pause start (s) of correct cuts."""

    cuts: int = 0
    correct: int = 0
    pauses: int = 0
    pauses_cut: int = 0
    breaths: int = 0
    breaths_split: int = 0
    sentence_splits: int = 0
    delays: list[float] = field(default_factory=list)
    longest_gap: float = 0.0  # the longest non-speech run inside a sentence (s)

    def add(self, cuts: Sequence[int], recording: Recording, silence_s: float, gap: float = 0.0) -> None:
        self.longest_gap = max(self.longest_gap, gap)
        times = [cut * FRAME_SECONDS for cut in cuts]
        kinds = [classify(t, recording, silence_s) for t in times]
        self.cuts += len(times)
        self.correct += kinds.count("pause")
        self.sentence_splits += kinds.count("sentence") + kinds.count("lead")
        self.pauses += len(recording.pauses)
        self.breaths += len(recording.breaths)
        for start, end in recording.pauses:
            inside = [t - start for t in times if start <= t <= end + SLACK_SECONDS]
            self.pauses_cut += bool(inside)
            self.delays += inside[:1]
        in_breaths = [t for t, kind in zip(times, kinds, strict=True) if kind == "breath"]
        for start, end in recording.breaths:
            self.breaths_split += any(start <= t <= end + silence_s for t in in_breaths)

    def summary(self) -> dict[str, Any]:
        delays = np.asarray(self.delays) if self.delays else np.zeros(1) * np.nan
        return {
            "cuts": self.cuts,
            "correct": self.correct,
            "precision": self.correct / self.cuts if self.cuts else None,
            "recall": self.pauses_cut / self.pauses if self.pauses else None,
            "pauses": self.pauses,
            "breaths": self.breaths,
            "breaths_split": self.breaths_split,
            "sentence_splits": self.sentence_splits,
            "delay_median_s": _round(float(np.median(delays))),
            "delay_max_s": _round(float(np.max(delays))),
            "longest_gap_in_sentence_s": round(self.longest_gap, 3),
        }


def _round(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 3)


@dataclass(frozen=True)
class Detectors:
    silence_ms: tuple[int, ...] = (300, 500, 700, 1000)
    energy_db: tuple[float, ...] = (-35.0,)
    max_utterance_seconds: float = 0.0


def score_recordings(
    engine: Engine, recordings: Sequence[Recording], noise_dbfs: float, detectors: Detectors, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per detector and silence setting over the recordings with `noise_dbfs` noise."""
    alphabet = engine.model_dir.alphabet
    names = [("blank", None)] + [("energy", db) for db in detectors.energy_db]
    scores = {(name, db, ms): Score() for name, db in names for ms in detectors.silence_ms}
    for i, recording in enumerate(recordings):
        noisy = with_noise(recording.samples, noise_dbfs, seed + i)
        probs = model_probs(engine, noisy)
        best = probs.argmax(axis=1)
        speech: dict[float | None, np.ndarray] = {
            None: (best != alphabet.blank_index) & (best != alphabet.space_index)
        }
        speech |= {db: energy_speech(noisy, db) for db in detectors.energy_db}
        gaps = {db: longest_gap(frames, recording) for db, frames in speech.items()}
        for (_name, db, ms), score in scores.items():
            config = EndpointConfig(ms, detectors.max_utterance_seconds)
            if db is None:
                cuts = blank_cuts(probs, config, alphabet.blank_index, alphabet.space_index)
            else:
                cuts = energy_cuts(speech[db], config)
            score.add(cuts, recording, ms / 1000, gaps[db])
    return [
        {"noise_dbfs": noise_dbfs, "detector": name if db is None else f"energy {db:g} dB", "silence_ms": ms}
        | score.summary()
        for (name, db, ms), score in scores.items()
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the rows."""
    head = (
        f"{'noise':>6} {'detector':<16} {'ms':>5} {'P':>6} {'R':>6} {'breaths':>8} {'splits':>6} {'cuts':>5}"
    )
    head += f" {'delay med/max s':>16} {'gap s':>6}"
    lines = [head]
    for row in rows:
        p = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        r = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        breaths = f"{row['breaths_split']}/{row['breaths']}"
        delay = f"{row['delay_median_s']}/{row['delay_max_s']}"
        lines.append(
            f"{row['noise_dbfs']:>6g} {row['detector']:<16} {row['silence_ms']:>5} {p:>6} {r:>6} {breaths:>8} "
            f"{row['sentence_splits']:>6} {row['cuts']:>5} {delay:>16} {row['longest_gap_in_sentence_s']:>6}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--heldout", type=Path, default=ROOT / ".cache/heldout/heldout.csv")
    parser.add_argument("--limit", type=int, default=None, help="use the first N sentences")
    parser.add_argument("--per-recording", type=int, default=8)
    parser.add_argument("--pause", type=float, nargs=2, default=(0.8, 2.0), metavar=("MIN", "MAX"))
    parser.add_argument("--breath", type=float, nargs=2, default=(0.2, 0.5), metavar=("MIN", "MAX"))
    parser.add_argument("--breath-share", type=float, default=0.5)
    parser.add_argument("--silence-ms", type=int, nargs="+", default=[300, 500, 700, 1000])
    parser.add_argument("--energy-db", type=float, nargs="+", default=[-35.0])
    parser.add_argument("--noise-dbfs", type=float, nargs="+", default=[-60.0, -30.0])
    parser.add_argument("--max-utterance-seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and the recordings as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from app.settings import Settings
    from app.speech.engine import Engine

    started = time.monotonic()
    engine = Engine.load(Settings(model_dir=str(args.model_dir), backend="numpy"))
    sentences = load_sentences(engine, args.heldout, args.limit)
    options = BuildOptions(
        args.per_recording, tuple(args.pause), tuple(args.breath), args.breath_share, args.seed
    )
    recordings = build_recordings(sentences, options)
    detectors = Detectors(tuple(args.silence_ms), tuple(args.energy_db), args.max_utterance_seconds)
    rows = [
        row
        for noise in args.noise_dbfs
        for row in score_recordings(engine, recordings, noise, detectors, args.seed)
    ]
    audio = sum(r.seconds for r in recordings)
    print(
        f"{len(sentences)} sentences in {len(recordings)} recordings, {audio / 60:.1f} min of audio each noise"
    )
    print(format_table(rows))
    elapsed = time.monotonic() - started
    print(f"{elapsed:.1f} s")
    if args.out is not None:
        truth = [
            {"seconds": r.seconds, "pauses": r.pauses, "breaths": r.breaths, "sentences": r.sentences}
            for r in recordings
        ]
        body = {"options": asdict(options), "detectors": asdict(detectors), "rows": rows, "recordings": truth}
        args.out.write_text(json.dumps(body | {"seconds": round(elapsed, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
