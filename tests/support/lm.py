"""Language-model material: a small real corpus run through the project's KenLM/scorer tooling (the first run
compiles KenLM's build_binary into `.cache/kenlm/`, about 25 s on 2 cores; later runs reuse it), the English
alphabet file, and a home-automation vocabulary for scorers that restrict the output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A small real corpus: English sentences, one per line, mixed case and a few words the alphabet cannot spell.
CORPUS = """\
Hello world
hello world again
The world is big and the sea is blue
Hello there my old friend
say hello to the world
A word is not a world
the whole world was watching
he held the word he had given
help the world
World peace is a big word
hello big world
we sail the blue sea at dawn
the old man and the sea
don't say a word
a naïve café owner said hello
x-ray vision is not a word
""".splitlines()

ALPHABET_TXT = "# DeepSpeech English alphabet\n \n" + "\n".join("abcdefghijklmnopqrstuvwxyz'") + "\n"

VOCABULARY_TEXT = """turn on the kitchen lights
turn off the lights in the living room
play some music in the kitchen
what is the weather like today
set a timer for ten minutes
"""


@dataclass(frozen=True)
class CorpusLM:
    """Artifacts of one pass of the tooling over CORPUS."""

    corpus: Path
    alphabet: Path
    arpa: Path
    binary: Path
    scorer: Path


def build_corpus_lm(directory: Path) -> CorpusLM:
    """Corpus -> ARPA -> KenLM binary (our tooling) and corpus -> .scorer (the CLI)."""
    from dsconvert.lm import arpa as arpa_mod
    from dsconvert.lm.build_scorer import main as build_scorer_main
    from dsconvert.lm.kenlm_build import build_binary

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    alphabet = directory / "alphabet.txt"
    alphabet.write_text(ALPHABET_TXT, encoding="utf-8")
    arpa = directory / "lm.arpa"
    arpa_mod.arpa_from_text(corpus, arpa, order=3)
    binary = build_binary(arpa, directory / "lm.binary")
    scorer = directory / "lm.scorer"
    assert build_scorer_main(["--text", str(corpus), "--alphabet", str(alphabet), "--out", str(scorer)]) == 0
    return CorpusLM(corpus, alphabet, arpa, binary, scorer)
