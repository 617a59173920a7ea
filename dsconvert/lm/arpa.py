"""Estimate a word n-gram model with interpolated modified Kneser-Ney smoothing and write it as ARPA text.

Why hand-written: the reference estimator is KenLM's `lmplz`, but it cannot be built without Boost
(`lm/builder` and `util/stream` include boost/program_options, boost/thread; its CMake build also requires
Boost's unit_test_framework), which would add four Debian -dev packages to every machine that builds a scorer,
for corpora that (for this project) fit in memory. No maintained PyPI package writes a correctly smoothed ARPA
file without lmplz: `kenlm` on PyPI is query-only; NLTK's `nltk.lm` computes KN probabilities but exports no
ARPA/backoff weights; `arpabo`'s "Kneser-Ney" discounts without interpolating and writes backoff weights of 1,
so its distributions do not sum to one. What follows is the same model lmplz estimates (Heafield et al. 2013,
"Scalable Modified Kneser-Ney Language Model Estimation"; Chen & Goodman 1998), in memory:

- adjusted counts: the highest order uses raw counts; a lower-order n-gram uses its continuation count
  N1+(. w1..wn) (distinct left extensions), except n-grams that start with <s>, which keep raw counts;
- three discounts per order from counts-of-counts t1..t4 of the adjusted counts:
  Y = t1 / (t1 + 2 t2), D(k) = k - (k + 1) Y t(k+1) / t(k) for k = 1, 2, 3+; when the corpus is too small for
  those to be valid (a t is zero, or D(k) falls outside [0, k]) we use lmplz's --discount_fallback values
  0.5, 1, 1.5;
- u(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x);
  gamma(h) = (D(1) N1(h .) + D(2) N2(h .) + D(3+) N3+(h .)) / sum_x a(h x);
- p(w | h) = u(w | h) + gamma(h) p(w | h without its first word), bottoming out in the uniform distribution
  over the vocabulary (words, </s> and <unk>; <s> is never predicted and gets log10 p = -99 by convention).

For an interpolated model the ARPA backoff weight of a context is exactly gamma(h): an unseen h w has
u = 0, so p(w | h) = gamma(h) p(w | h'), which is what ARPA back-off computes. So the written model is
normalised (tests check sum_w p(w | h) = 1 through KenLM).

Corpora at DeepSpeech's scale (LibriSpeech's 800 M words) need lmplz; feed its ARPA to `build_scorer --arpa`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback defaults
Ngram = tuple[str, ...]


@dataclass
class ArpaModel:
    """Per order: n-gram -> (log10 probability, log10 backoff weight or None)."""

    order: int
    ngrams: list[dict[Ngram, tuple[float, float | None]]] = field(default_factory=list)
    discounts: list[tuple[float, float, float]] = field(default_factory=list)
    fallback_orders: list[int] = field(default_factory=list)  # orders whose discounts fell back


def tokenize(line: str) -> list[str]:
    """Corpus normalisation: lower-case and split on whitespace (what DeepSpeech's generate_lm.py does)."""
    return line.lower().split()


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[Ngram]]:
    """Raw counts of all 1..order-grams of each sentence padded with <s> and </s>."""
    counts: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    for sentence in sentences:
        if not sentence:
            continue
        padded = (BOS, *sentence, EOS)
        for n in range(1, order + 1):
            counter = counts[n - 1]
            for i in range(len(padded) - n + 1):
                counter[padded[i : i + n]] += 1
    return counts


def adjusted_counts(raw: list[Counter[Ngram]]) -> list[dict[Ngram, int]]:
    """Kneser-Ney adjusted counts (continuation counts below the highest order, raw for <s>-initial n-grams)."""
    order = len(raw)
    adjusted: list[dict[Ngram, int]] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(raw[order - 1])
    for n in range(order - 1, 0, -1):  # n = length of the n-grams being adjusted
        continuation: Counter[Ngram] = Counter(gram[1:] for gram in raw[n])
        adjusted[n - 1] = {
            gram: (count if gram[0] == BOS else continuation[gram]) for gram, count in raw[n - 1].items()
        }
    return adjusted


def discounts(counts: Iterable[int]) -> tuple[tuple[float, float, float], bool]:
    """Modified KN discounts D(1), D(2), D(3+) from counts-of-counts; (fallback, True) when not estimable."""
    t = Counter(c for c in counts if 1 <= c <= 4)
    if any(t[k] == 0 for k in (1, 2, 3, 4)):
        return FALLBACK_DISCOUNTS, True
    y = t[1] / (t[1] + 2 * t[2])
    d = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    if any(not (0.0 < d[k - 1] < k) for k in (1, 2, 3)):
        return FALLBACK_DISCOUNTS, True
    return (d[0], d[1], d[2]), False


def estimate(sentences: Iterable[Sequence[str]], order: int = 3) -> ArpaModel:
    """Interpolated modified Kneser-Ney estimate of an `order`-gram model over tokenised sentences."""
    if order < 1:
        raise ValueError("order must be >= 1")
    raw = count_ngrams(sentences, order)
    if not raw[0]:
        raise ValueError("the corpus has no words")
    while not raw[-1]:  # sentences too short for the requested order: drop the empty top orders
        raw.pop()
    order = len(raw)
    adj = adjusted_counts(raw)
    model = ArpaModel(order=order)

    probs: list[dict[Ngram, float]] = []  # interpolated probabilities per order (natural, not log)
    gammas: list[dict[Ngram, float]] = []  # interpolation weight per context, for contexts of order n-1
    vocab = {gram for gram in adj[0] if gram != (BOS,)} | {(UNK,)}
    for n in range(1, order + 1):
        grams = {g: a for g, a in adj[n - 1].items() if g != (BOS,)}
        disc, fell_back = discounts(grams.values())
        model.discounts.append(disc)
        if fell_back:
            model.fallback_orders.append(n)
        totals: dict[Ngram, float] = defaultdict(float)
        kinds: dict[Ngram, list[int]] = defaultdict(lambda: [0, 0, 0])
        for gram, a in grams.items():
            totals[gram[:-1]] += a
            kinds[gram[:-1]][min(a, 3) - 1] += 1
        gamma = {
            ctx: (disc[0] * k[0] + disc[1] * k[1] + disc[2] * k[2]) / totals[ctx] for ctx, k in kinds.items()
        }
        p: dict[Ngram, float] = {}
        for gram, a in grams.items():
            u = (a - disc[min(a, 3) - 1]) / totals[gram[:-1]]
            lower = 1.0 / len(vocab) if n == 1 else probs[n - 2][gram[1:]]
            p[gram] = u + gamma[gram[:-1]] * lower
        if n == 1:
            p[(UNK,)] = p.get((UNK,), 0.0) + (gamma[()] / len(vocab) if (UNK,) not in grams else 0.0)
        probs.append(p)
        gammas.append(gamma)

    for n in range(1, order + 1):
        backoff = gammas[n] if n < order else {}
        entries: dict[Ngram, tuple[float, float | None]] = {}
        if n == 1:
            entries[(BOS,)] = (-99.0, math.log10(backoff[(BOS,)]) if (BOS,) in backoff else None)
        for gram, prob in probs[n - 1].items():
            entries[gram] = (math.log10(prob), math.log10(backoff[gram]) if gram in backoff else None)
        model.ngrams.append(entries)
    return model


def write_arpa(model: ArpaModel, path: str | Path) -> Path:
    """Write the model in the ARPA text format KenLM's build_binary reads (sorted for reproducible files)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n\\data\\\n")
        for n, entries in enumerate(model.ngrams, start=1):
            out.write(f"ngram {n}={len(entries)}\n")
        for n, entries in enumerate(model.ngrams, start=1):
            out.write(f"\n\\{n}-grams:\n")
            for gram in sorted(entries):
                logp, bo = entries[gram]
                line = f"{logp:.7g}\t{' '.join(gram)}"
                out.write(line + (f"\t{bo:.7g}\n" if bo is not None else "\n"))
        out.write("\n\\end\\\n")
    return path


def arpa_from_text(text_path: str | Path, arpa_path: str | Path, order: int = 3) -> ArpaModel:
    """Read a corpus (one sentence per line), estimate the model and write it as ARPA."""
    with open(text_path, encoding="utf-8") as fh:
        sentences = [tokens for tokens in map(tokenize, fh) if tokens]
    model = estimate(sentences, order)
    write_arpa(model, arpa_path)
    return model
