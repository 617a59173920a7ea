"""Build a DeepSpeech `.scorer` from a text corpus: ARPA (modified Kneser-Ney) -> KenLM binary -> + trailer.

    python -m dsconvert.lm.build_scorer --text corpus.txt --alphabet alphabet.txt --out x.scorer \
        [--order 3] [--alpha A] [--beta B] [--arpa lmplz.arpa] [--quantize-bits 8] [--keep-arpa x.arpa]

The vocabulary (the trie the decoder may spell) is every corpus word whose characters are all in the
alphabet, as upstream's generate_scorer_package does with its --vocab file. The LM itself is estimated on
all words, like DeepSpeech's generate_lm.py. Build-time only: needs a C++ compiler (Debian `g++`) once, to
compile KenLM's build_binary into `.cache/kenlm/`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from app.speech.alphabet import Alphabet
from app.speech.decoding.scorer_file import read_scorer, write_scorer
from dsconvert.lm.arpa import arpa_from_text, tokenize
from dsconvert.lm.kenlm_build import build_binary

# DeepSpeech 0.9.3's released defaults (export metadata), used when the caller does not tune alpha/beta.
DEFAULT_ALPHA = 0.931289039105002
DEFAULT_BETA = 1.1834137581510284


def corpus_vocabulary(text_path: Path, alphabet: Alphabet) -> list[str]:
    """Distinct corpus words (same normalisation as the LM) that the alphabet can spell, in first-seen order."""
    allowed = set(alphabet.labels) - {" "}
    words: dict[str, None] = {}
    with open(text_path, encoding="utf-8") as fh:
        for line in fh:
            for word in tokenize(line):
                if word not in words and all(ch in allowed for ch in word):
                    words[word] = None
    return list(words)


def build_scorer(
    text_path: Path,
    alphabet: Alphabet,
    out_path: Path,
    *,
    order: int = 3,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    arpa_path: Path | None = None,
    quantize_bits: int | None = None,
    keep_arpa: Path | None = None,
) -> Path:
    """Corpus -> `.scorer` (optionally from an existing ARPA, e.g. one lmplz made); returns the output path."""
    vocabulary = corpus_vocabulary(text_path, alphabet)
    if not vocabulary:
        raise ValueError(f"no word of {text_path} can be spelled with the alphabet")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".scorer-build-") as tmp:
        arpa = arpa_path
        if arpa is None:
            arpa = keep_arpa or Path(tmp) / "lm.arpa"
            arpa_from_text(text_path, arpa, order)
        binary = build_binary(arpa, Path(tmp) / "lm.binary", quantize_bits=quantize_bits)
        write_scorer(binary, vocabulary, alphabet, alpha, beta, out_path)
    read_scorer(out_path, alphabet, with_vocabulary=False)  # fail here, not at serving time
    return out_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, required=True, help="corpus, one sentence per line")
    parser.add_argument("--alphabet", type=Path, required=True, help="DeepSpeech alphabet.txt")
    parser.add_argument("--out", type=Path, required=True, help="output .scorer")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="default LM weight stored in the file"
    )
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA, help="default word insertion bonus")
    parser.add_argument("--arpa", type=Path, help="use this ARPA (e.g. from lmplz) instead of estimating one")
    parser.add_argument("--quantize-bits", type=int, help="KenLM -q bits (upstream release: 8)")
    parser.add_argument("--keep-arpa", type=Path, help="also write the estimated ARPA here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    alphabet = Alphabet.from_file(args.alphabet)
    out = build_scorer(
        args.text,
        alphabet,
        args.out,
        order=args.order,
        alpha=args.alpha,
        beta=args.beta,
        arpa_path=args.arpa,
        quantize_bits=args.quantize_bits,
        keep_arpa=args.keep_arpa,
    )
    info = read_scorer(out, alphabet)
    print(
        f"{out}: {out.stat().st_size} bytes, KenLM part {info.lm_end} bytes, {len(info.vocabulary)} words, "
        f"alpha={info.alpha} beta={info.beta}, {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
