"""Synthetic speech: espeak-ng voices, speeds and pitches → 16 kHz audio → augmentation → cached features.

The audio goes through the service's own path: espeak-ng's 22050 Hz int16 WAV, read as int16 / 32768,
resampled with `app.speech.audio.to_model_rate` (soxr HQ), augmented in NumPy (gain, noise, reverb, silence), rounded
back to the int16 grid, then `app.speech.features.mfcc`: exactly the features the service computes.

Shards are generated independently (a shard's content depends only on its utterance specs), written atomically
(temporary file + rename), so generation is parallel-safe and resumable: existing shards are skipped.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from app.speech.audio import to_model_rate
from app.speech.features import mfcc

# espeak-ng English accents (gmw voices; the mbrola ones need the mbrola binary and are not used).
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Voice variants (espeak-ng 1.51's espeak-ng-data/voices/!v) used in training; "" is the accent's own voice.
# All variants except the held-out ones and the novelty voices (robots, whispers, "Demonic", the Half-Life
# announcer, "fast"); a first run with only the first 31 of these generalised poorly to a far-off voice.
TRAIN_VARIANTS = (
    "",
    *(
        "m1 m2 m3 m4 m5 m6 m7 f1 f2 f4 f5 klatt klatt2 klatt3 Andy Annie belinda david john linda steph max".split()
    ),
    *("paul robert Alex edward iven Mike norbert quincy".split()),
    *("klatt4 klatt5 klatt6 Andrea AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco".split()),
    *(
        "Mario Michael Nguyen RicishayMax RicishayMax2 RicishayMax3 Storm Tweaky adam anika antonio aunty".split()
    ),
    *("benjamin boris caleb croak ed edward2 grandma grandpa gustave iven2 iven3 iven4 kaukovalta".split()),
    *("marcelo michel miguel pablo pedro rob sandro shelby steph2 steph3 travis victor zac".split()),
)
# The first run's smaller set (pitch 25-75): `--voices basic` of scripts/train_default.py. The held-out half
# with trained voices draws from it, so the held-out set does not change when the training list grows.
TRAIN_VARIANTS_BASIC = TRAIN_VARIANTS[:31]
# --voices name -> (variants, espeak-ng pitch range)
VOICE_SETS = {"basic": (TRAIN_VARIANTS_BASIC, (25, 75)), "all": (TRAIN_VARIANTS, (15, 85))}
# Never used in training: the held-out set speaks with these (plus trained ones, reported separately).
HELDOUT_VARIANTS = ("f3", "m8", "Alicia")


@dataclass(frozen=True)
class Utterance:
    """Everything that determines one generated example."""

    text: str
    voice: str  # espeak-ng -v, e.g. "en-us+f3"
    speed: int  # words per minute (espeak default 175)
    pitch: int  # 0-99 (default 50)
    seed: int  # augmentation randomness
    augment: bool = True


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = "en", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """espeak-ng → 16 kHz mono float32 (int16 / 32768 scale), as the service decodes an uploaded WAV."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return to_model_rate(samples, rate)


def to_int16_grid(x: np.ndarray) -> np.ndarray:
    """Round to what a 16-bit WAV can hold (the service only ever sees int16 / 32768 samples)."""
    return (np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def _colored_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power ∝ f^-exponent (0 white, 1 pink, 2 brown), unit RMS."""
    white = rng.standard_normal(n)
    if exponent == 0:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: direct path + exponentially decaying noise tail (RT60 0.1-0.6 s)."""
    rt60 = rng.uniform(0.1, 0.6)
    n = int(rt60 * 16000)
    t = np.arange(n) / 16000.0
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[: int(0.002 * 16000)] = 0.0  # pre-delay
    ir *= rng.uniform(0.1, 0.5) / (np.sqrt(np.sum(ir**2)) + 1e-12)
    ir[0] = 1.0
    size = x.size + n - 1
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)  # linear convolution
    return wet[: x.size + n // 2]


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Silence padding, reverb, noise at 5-40 dB SNR, gain; about 30 % of examples stay clean."""
    x = x.astype(np.float64)
    if rng.random() < 0.3:
        return to_int16_grid(x)  # clean, exactly as espeak-ng wrote it
    lead, tail = (int(rng.uniform(0, 0.4) * 16000) for _ in range(2))
    x = np.concatenate([np.zeros(lead), x, np.zeros(tail)])
    if rng.random() < 0.35:
        x = _reverb(x, rng)
    speech_rms = np.sqrt(np.mean(x**2)) + 1e-9
    if rng.random() < 0.75:
        snr_db = rng.uniform(5, 40)
        noise = _colored_noise(x.size, rng, float(rng.choice([0.0, 1.0, 2.0])))
        x = x + noise * speech_rms / (10 ** (snr_db / 20))
    peak = np.max(np.abs(x)) + 1e-9
    x = x * (10 ** (rng.uniform(-30, -1) / 20) / peak)  # peak level -30..-1 dBFS
    return to_int16_grid(x)


def utterance_features(u: Utterance) -> np.ndarray:
    """MFCC frames (T, 26) float32 for one utterance spec."""
    samples = speak(u.text, u.voice, u.speed, u.pitch)
    samples = augment(samples, np.random.default_rng(u.seed)) if u.augment else to_int16_grid(samples)
    return mfcc(samples)


def plan_utterances(
    texts: Sequence[str],
    seed: int,
    accents: Sequence[str] = ACCENTS,
    variants: Sequence[str] = TRAIN_VARIANTS,
    speed_range: tuple[int, int] = (125, 215),
    pitch_range: tuple[int, int] = (15, 85),
    augment_audio: bool = True,
    default_voice_share: float = 0.1,
) -> list[Utterance]:
    """One Utterance per text with a random voice, speed and pitch (a share spoken exactly as `espeak-ng`
    speaks by default: voice en, speed 175, pitch 50, as in the README's curl example)."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        if rng.random() < default_voice_share:
            voice, speed, pitch = "en", 175, 50
        else:
            accent = rng.choice(accents)
            variant = rng.choice(variants)
            voice = accent + (f"+{variant}" if variant else "")
            speed = rng.randint(*speed_range)
            pitch = rng.randint(*pitch_range)
        out.append(Utterance(text, voice, speed, pitch, rng.getrandbits(32), augment_audio))
    return out


def _write_shard(args: tuple[Path, list[Utterance]]) -> Path:
    path, utterances = args
    feats = [utterance_features(u) for u in utterances]
    lengths = np.array([f.shape[0] for f in feats], np.int64)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        features=np.concatenate(feats).astype(np.float16),
        lengths=lengths,
        texts=np.array([u.text for u in utterances]),
        specs=np.array([json.dumps(asdict(u)) for u in utterances]),
    )
    os.replace(tmp, path)  # atomic: a shard is either complete or absent
    return path


def generate_shards(
    utterances: Sequence[Utterance], directory: Path, shard_size: int = 500, workers: int = 2, log=print
) -> list[Path]:
    """Write `directory/shard-00000.npz`...; shards already present are kept (resume)."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = []
    paths = []
    for k, start in enumerate(range(0, len(utterances), shard_size)):
        path = directory / f"shard-{k:05d}.npz"
        paths.append(path)
        if not path.exists():
            jobs.append((path, list(utterances[start : start + shard_size])))
    if jobs:
        log(f"generating {len(jobs)} of {len(paths)} shards in {directory} with {workers} workers")
        if workers <= 1:
            for job in jobs:
                _write_shard(job)
        else:
            with ProcessPoolExecutor(workers) as pool:
                for done, _ in enumerate(pool.map(_write_shard, jobs), 1):
                    if done % 10 == 0 or done == len(jobs):
                        log(f"  {done}/{len(jobs)} shards")
    return paths


def load_shards(paths: Sequence[Path]) -> tuple[list[np.ndarray], list[str]]:
    """All utterances of the shards: per-utterance float16 feature arrays and their transcripts."""
    features: list[np.ndarray] = []
    texts: list[str] = []
    for path in paths:
        with np.load(path) as shard:
            feats = shard["features"]
            offsets = np.concatenate([[0], np.cumsum(shard["lengths"])])
            features += [feats[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            texts += [str(t) for t in shard["texts"]]
    return features, texts
