"""CTC training loop: length-bucketed batches, Adam, gradient clipping, a time box, best-so-far and resume.

The learning-rate schedule follows the fraction of the time box used (linear warm-up over the first steps,
then cosine decay to `final_lr_fraction`), so a run of any length ends annealed. Checkpoints (`last.pt`
every few minutes, `best.pt` whenever the dev greedy CER improves) hold the model, the optimiser, the step,
the training seconds used and the position in the epoch: rerunning continues where the run stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.speech.alphabet import ENGLISH
from training.model import DeepSpeechModel

BLANK = ENGLISH.blank_index  # 28: blank is the last class


@dataclass
class TrainConfig:
    n_hidden: int = 256
    minutes: float = 45.0  # training time box (wall seconds spent in the loop, across resumes)
    lr: float = 1e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.03
    max_batch_frames: int = 9000  # padded frames per batch (B * T_max)
    max_batch_size: int = 64
    clip_norm: float = 5.0
    dropout: float = 0.0
    seed: int = 1234
    threads: int = 2
    eval_every_s: float = 240.0
    checkpoint_every_s: float = 180.0
    log_every_s: float = 30.0
    max_steps: int | None = None  # stop after this many steps (smoke tests)


@dataclass
class Example:
    features: np.ndarray  # (T, 26) float16/32 raw MFCC
    labels: np.ndarray  # (L,) int64 alphabet indices
    text: str


def make_examples(features: Sequence[np.ndarray], texts: Sequence[str]) -> list[Example]:
    return [
        Example(f, np.asarray(ENGLISH.encode(t), np.int64), t) for f, t in zip(features, texts, strict=True)
    ]


def normalization_stats(
    examples: Sequence[Example], max_frames: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std over the training frames (a fixed-stride subsample when huge)."""
    total = sum(len(e.features) for e in examples)
    stride = max(1, total // max_frames)
    frames = np.concatenate([e.features[::stride] for e in examples]).astype(np.float64)
    return frames.mean(axis=0), frames.std(axis=0)


def make_batches(lengths: Sequence[int], config: TrainConfig, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length (sorted with jitter), each batch ≤ max_batch_frames padded frames."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] * (1.0 + 0.1 * rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and (
            new_longest * (len(current) + 1) > config.max_batch_frames
            or len(current) >= config.max_batch_size
        ):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = [len(e.features) for e in examples]
    frames = np.zeros((len(examples), max(lengths), examples[0].features.shape[1]), np.float32)
    for k, e in enumerate(examples):
        frames[k, : lengths[k]] = e.features
    targets = torch.from_numpy(np.concatenate([e.labels for e in examples]))
    return (
        torch.from_numpy(frames),
        torch.tensor(lengths, dtype=torch.long),
        targets,
        torch.tensor([len(e.labels) for e in examples], dtype=torch.long),
    )


def ctc_loss(model: DeepSpeechModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean per-utterance CTC loss (blank = last class)."""
    frames, lengths, targets, target_lengths = batch
    log_probs = F.log_softmax(model(frames), dim=-1)
    loss = F.ctc_loss(
        log_probs, targets, lengths, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True
    )
    return loss / frames.shape[0]


def greedy_texts(log_probs: torch.Tensor, lengths: Sequence[int]) -> list[str]:
    """Best path per frame, repeats collapsed, blanks dropped; log_probs (T, B, classes)."""
    best = log_probs.argmax(dim=-1).T.numpy()
    out = []
    for row, n in zip(best, lengths, strict=True):
        prev = -1
        chars = []
        for k in row[:n]:
            if k != prev and k != BLANK:
                chars.append(ENGLISH.labels[k])
            prev = k
        out.append("".join(chars))
    return out


def edit_distance(a: Sequence, b: Sequence) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def error_rates(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """(CER, WER) over a set, as totals of edits / totals of reference length."""
    char_edits = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    chars = sum(len(r) for r in references)
    word_edits = sum(edit_distance(h.split(), r.split()) for h, r in zip(hypotheses, references, strict=True))
    words = sum(len(r.split()) for r in references)
    return char_edits / max(1, chars), word_edits / max(1, words)


def evaluate_greedy(
    model: DeepSpeechModel, examples: Sequence[Example], batch_size: int = 32
) -> tuple[float, float]:
    model.eval()
    hyps = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start : start + batch_size]
            frames, lengths, _, _ = collate(part)
            hyps += greedy_texts(F.log_softmax(model(frames), -1), lengths.tolist())
    model.train()
    return error_rates(hyps, [e.text for e in examples])


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / config.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    floor = config.final_lr_fraction
    return config.lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: DeepSpeechModel,
    train_set: Sequence[Example],
    dev_set: Sequence[Example],
    config: TrainConfig,
    workdir: Path,
    log: Callable[[str], None] = lambda message: print(message, flush=True),
) -> dict:
    """Train in the time box; returns a summary. Resumes from workdir/last.pt when present."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state = {"step": 0, "epoch": 0, "batch": 0, "seconds": 0.0, "best_cer": float("inf"), "history": []}
    last = workdir / "last.pt"
    if last.exists():
        saved = torch.load(last, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log(f"resumed at step {state['step']}, {state['seconds'] / 60:.1f} min trained")

    def save(path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "config": asdict(config),
            },
            tmp,
        )
        tmp.replace(path)

    def run_eval() -> None:
        cer, wer = evaluate_greedy(model, dev_set) if dev_set else (float("nan"), float("nan"))
        state["history"].append(
            {
                "step": state["step"],
                "minutes": round(state["seconds"] / 60, 2),
                "dev_cer": cer,
                "dev_wer": wer,
            }
        )
        improved = cer < state["best_cer"]
        if improved:
            state["best_cer"] = cer
        log(
            f"step {state['step']} ({state['seconds'] / 60:.1f} min): dev greedy CER {cer:.3%} WER {wer:.3%}"
            + (" (best)" if improved else "")
        )
        save(last)
        if improved or not (workdir / "best.pt").exists():
            save(workdir / "best.pt")

    budget = config.minutes * 60.0
    lengths = [len(e.features) for e in train_set]
    model.train()
    last_eval = last_ckpt = last_log = state["seconds"]
    loss_sum, loss_n, frames_done = 0.0, 0, 0
    started = time.monotonic()
    base_seconds = state["seconds"]
    done = state["seconds"] >= budget or (config.max_steps is not None and state["step"] >= config.max_steps)
    batches: list[list[int]] = []
    while not done:
        batches = make_batches(lengths, config, random.Random(config.seed * 1000 + state["epoch"]))
        while state["batch"] < len(batches):
            indices = batches[state["batch"]]
            batch = collate([train_set[i] for i in indices])
            progress = state["seconds"] / budget
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state["step"], progress)
            loss = ctc_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            state["step"] += 1
            state["batch"] += 1
            state["seconds"] = base_seconds + time.monotonic() - started
            loss_sum += float(loss.detach())
            loss_n += 1
            frames_done += int(batch[1].sum())
            if state["seconds"] - last_log >= config.log_every_s:
                rate = frames_done / (state["seconds"] - last_log)
                log(
                    f"step {state['step']} epoch {state['epoch']} batch {state['batch']}/{len(batches)} "
                    f"loss {loss_sum / loss_n:.3f} lr {optimizer.param_groups[0]['lr']:.2e} {rate:.0f} frames/s"
                )
                last_log, loss_sum, loss_n, frames_done = state["seconds"], 0.0, 0, 0
            if state["seconds"] >= budget or (
                config.max_steps is not None and state["step"] >= config.max_steps
            ):
                done = True
                break
            if state["seconds"] - last_eval >= config.eval_every_s:
                run_eval()
                last_eval = state["seconds"]
            elif state["seconds"] - last_ckpt >= config.checkpoint_every_s:
                save(last)
                last_ckpt = state["seconds"]
        else:
            state["epoch"] += 1
            state["batch"] = 0
    run_eval()
    return {
        "steps": state["step"],
        "epochs": state["epoch"]
        + state["batch"] / max(1, len(batches) or len(make_batches(lengths, config, random.Random(0)))),
        "train_minutes": state["seconds"] / 60,
        "best_dev_cer": state["best_cer"],
        "history": state["history"],
    }


def load_best(model: DeepSpeechModel, workdir: Path) -> dict:
    saved = torch.load(workdir / "best.pt", weights_only=False)
    model.load_state_dict(saved["model"])
    return saved["state"]
