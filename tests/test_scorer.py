"""DeepSpeech `.scorer` files: reader/writer, OpenFST compatibility, and the KenLM tooling that builds them.

The first run compiles KenLM's build_binary into `.cache/kenlm/` (about 25 s on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from app.speech.alphabet import ENGLISH
from app.speech.decoding.scorer_file import (
    FST_ALIGNMENT,
    TRIE_MAGIC,
    ScorerError,
    _trie_arrays,
    encode_const_fst,
    read_scorer,
    vocabulary_labels,
    write_scorer,
)
from dsconvert.lm import arpa as arpa_mod
from dsconvert.lm.build_scorer import DEFAULT_ALPHA, DEFAULT_BETA
from dsconvert.lm.kenlm_build import KenLMBuildError, ensure_build_binary
from tests.support.lm import CORPUS, CorpusLM, build_corpus_lm


@pytest.fixture(scope="module")
def corpus_lm(tmp_path_factory: pytest.TempPathFactory) -> CorpusLM:
    return build_corpus_lm(tmp_path_factory.mktemp("corpus_lm"))


def corpus_words() -> list[str]:
    return list(dict.fromkeys(w for line in CORPUS for w in line.lower().split()))


def spellable(words: list[str]) -> list[str]:
    allowed = set(ENGLISH.labels) - {" "}
    return [w for w in words if set(w) <= allowed]


# ------------------------------------------------------------------------------------------- reader/writer


def test_round_trip_alpha_beta_vocabulary(tmp_path: Path) -> None:
    # An odd-sized stand-in for the KenLM part: the FST arrays must still land 16-aligned from the FILE start.
    lm = tmp_path / "fake.binary"
    lm.write_bytes(bytes(range(256)) * 3 + b"\x01\x02\x03")
    words = ["hello", "help", "world", "a", "don't", "hello", "café", "two words", "</s>"]
    out = write_scorer(lm, words, ENGLISH, 0.75, 1.85, tmp_path / "x.scorer")
    info = read_scorer(out)
    assert info.lm_end == 771
    assert (info.alpha, info.beta, info.utf8_mode) == (0.75, 1.85, False)
    # Duplicates, unspellable words and the sentence markers are left out, as upstream's fill_dictionary does.
    assert sorted(info.vocabulary) == sorted(["hello", "help", "world", "a", "don't"])
    assert info.fst.states_offset % FST_ALIGNMENT == 0 and info.fst.arcs_offset % FST_ALIGNMENT == 0
    assert info.fst.end_offset == out.stat().st_size
    raw = out.read_bytes()
    assert raw[:771] == lm.read_bytes()
    assert raw[771:775] == TRIE_MAGIC == struct.pack("<i", 0x54524945)  # 'TRIE' as a little-endian int32
    assert struct.unpack_from("<ib", raw, 775) == (6, 0)


@pytest.mark.parametrize("lm_size", range(16))
def test_alignment_is_measured_from_file_start(tmp_path: Path, lm_size: int) -> None:
    # Every residue mod 16 of the KenLM size: padding before the state and arc arrays changes with it.
    lm = tmp_path / "fake.binary"
    lm.write_bytes(b"\xff" * (1000 + lm_size))
    out = write_scorer(lm, ["hello", "world", "word"], ENGLISH, 0.5, 1.0, tmp_path / "a.scorer")
    info = read_scorer(out)
    assert info.lm_end == 1000 + lm_size and sorted(info.vocabulary) == ["hello", "word", "world"]
    assert info.fst.states_offset % 16 == 0 and info.fst.arcs_offset % 16 == 0
    header_end = info.lm_end + 25 + 65  # preamble + FstHeader("const", "standard")
    assert info.fst.states_offset - header_end in range(16)
    assert out.read_bytes()[header_end : info.fst.states_offset] == b"\0" * (
        info.fst.states_offset - header_end
    )


def test_utf8_flag_round_trip_and_refusal(tmp_path: Path) -> None:
    lm = tmp_path / "fake.binary"
    lm.write_bytes(b"\0" * 100)
    out = write_scorer(lm, ["naïve", "café", "ok"], ENGLISH, 1.0, 2.0, tmp_path / "u.scorer", utf8_mode=True)
    with pytest.raises(ScorerError, match="UTF-8"):
        read_scorer(out)
    info = read_scorer(out, allow_utf8=True)
    assert info.utf8_mode is True
    assert sorted(info.vocabulary) == ["café", "naïve", "ok"]


def test_empty_vocabulary_round_trips(tmp_path: Path) -> None:
    lm = tmp_path / "fake.binary"
    lm.write_bytes(b"\0" * 64)
    info = read_scorer(write_scorer(lm, [], ENGLISH, 0.5, 0.5, tmp_path / "e.scorer"))
    assert info.vocabulary == () and info.fst.num_states == 1


def _valid_scorer(tmp_path: Path) -> Path:
    lm = tmp_path / "fake.binary"
    lm.write_bytes(np.random.default_rng(1).bytes(5000))
    return write_scorer(lm, ["alpha", "beta", "gamma", "delta"], ENGLISH, 1.0, 1.0, tmp_path / "v.scorer")


def test_random_bytes_are_not_a_scorer(tmp_path: Path) -> None:
    junk = tmp_path / "junk.scorer"
    junk.write_bytes(np.random.default_rng(0).bytes(100_000))
    with pytest.raises(ScorerError, match="not a DeepSpeech scorer"):
        read_scorer(junk)
    # A bare KenLM binary (no trailer) is not a scorer either.
    tiny = tmp_path / "tiny.scorer"
    tiny.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0")
    with pytest.raises(ScorerError):
        read_scorer(tiny)
    with pytest.raises(ScorerError, match="cannot open"):
        read_scorer(tmp_path / "missing.scorer")


@pytest.mark.parametrize("keep", [-1, -200, 5000 + 30, 5000 + 5])
def test_truncated_scorer(tmp_path: Path, keep: int) -> None:
    good = _valid_scorer(tmp_path).read_bytes()
    cut = tmp_path / "cut.scorer"
    cut.write_bytes(good[:keep])
    with pytest.raises(ScorerError, match="truncated|not a DeepSpeech scorer"):
        read_scorer(cut)


def test_truncation_inside_arrays_says_truncated(tmp_path: Path) -> None:
    good = _valid_scorer(tmp_path).read_bytes()
    cut = tmp_path / "cut.scorer"
    cut.write_bytes(good[:-17])
    with pytest.raises(ScorerError, match="truncated"):
        read_scorer(cut)


def test_bytes_after_the_trailer_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "extra.scorer"
    bad.write_bytes(_valid_scorer(tmp_path).read_bytes() + b"\0" * 10)
    with pytest.raises(ScorerError, match="10 unexpected bytes"):
        read_scorer(bad)


@pytest.mark.parametrize("version", [5, 7])
def test_wrong_version(tmp_path: Path, version: int) -> None:
    raw = bytearray(_valid_scorer(tmp_path).read_bytes())
    at = raw.rfind(TRIE_MAGIC)
    struct.pack_into("<i", raw, at + 4, version)
    bad = tmp_path / "old.scorer"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ScorerError, match=f"version {version}"):
        read_scorer(bad)


# ----------------------------------------------------------------------------------------- OpenFST parity

# `fstconvert --fst_type=const --fst_align=true` (OpenFST 1.7.9, Debian libfst-tools) of the trie for
# hello, help, world, a (same state numbering as ours): our serializer must produce exactly these bytes.
OPENFST_CONST_ALIGNED_TRIE = base64.b64decode(
    "1v2yfgUAAABjb25zdAgAAABzdGFuZGFyZAEAAAAEAAAAAQCVWmqlAAAAAAAAAAAAABEAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAIB/AAAAAAMAAAAAAAAAAAAAAAAAgH8DAAAAAQAAAAAAAAAAAAAAAACAfwQAAAABAAAAAAAAAAAAAAAAAIB/BQAAAAEAAAAAAAAA"
    "AAAAAAAAAAAGAAAAAAAAAAAAAAAAAAAAAACAfwYAAAABAAAAAAAAAAAAAAAAAIB/BwAAAAEAAAAAAAAAAAAAAAAAgH8IAAAAAgAAAAAA"
    "AAAAAAAAAACAfwoAAAABAAAAAAAAAAAAAAAAAIB/CwAAAAEAAAAAAAAAAAAAAAAAgH8MAAAAAQAAAAAAAAAAAAAAAACAfw0AAAABAAAA"
    "AAAAAAAAAAAAAIB/DgAAAAEAAAAAAAAAAAAAAAAAAAAPAAAAAAAAAAAAAAAAAAAAAACAfw8AAAABAAAAAAAAAAAAAAAAAAAAEAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAIAAAAAAAAAAQAAAAkAAAAJAAAAAAAAAAIAAAAYAAAA"
    "GAAAAAAAAAADAAAAAQAAAAEAAAAAAAAABAAAAAYAAAAGAAAAAAAAAAUAAAAQAAAAEAAAAAAAAAAGAAAADQAAAA0AAAAAAAAABwAAABMA"
    "AAATAAAAAAAAAAgAAAANAAAADQAAAAAAAAAJAAAAEQAAABEAAAAAAAAACgAAAA0AAAANAAAAAAAAAAsAAAAQAAAAEAAAAAAAAAAMAAAA"
    "AQAAAAEAAAAAAAAADQAAAAUAAAAFAAAAAAAAAA4AAAABAAAAAQAAAAAAAAAPAAAAAQAAAAEAAAAAAAAAEAAAAA=="
)

# The upstream recipe (fstrmepsilon | fstdeterminize | fstminimize, then const + aligned) over the words
# hello help held hold world word a don't: a minimized FST with shared suffixes and a single final state.
OPENFST_MINIMIZED_TRIE = base64.b64decode(
    "1v2yfgUAAABjb25zdAgAAABzdGFuZGFyZAEAAAAEAAAAAQCVWmqlAAAAAAAAAAAAABAAAAAAAAAAFgAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAIB/AAAAAAQAAAAAAAAAAAAAAAAAgH8EAAAAAQAAAAAAAAAAAAAAAACAfwUAAAACAAAAAAAAAAAAAAAAAIB/BwAAAAEAAAAAAAAA"
    "AAAAAAAAgH8IAAAAAQAAAAAAAAAAAAAAAACAfwkAAAABAAAAAAAAAAAAAAAAAIB/CgAAAAEAAAAAAAAAAAAAAAAAgH8LAAAAAQAAAAAA"
    "AAAAAAAAAACAfwwAAAABAAAAAAAAAAAAAAAAAIB/DQAAAAMAAAAAAAAAAAAAAAAAgH8QAAAAAgAAAAAAAAAAAAAAAACAfxIAAAABAAAA"
    "AAAAAAAAAAAAAIB/EwAAAAEAAAAAAAAAAAAAAAAAgH8UAAAAAQAAAAAAAAAAAAAAAACAfxUAAAABAAAAAAAAAAAAAAAAAAAAFgAAAAAA"
    "AAAAAAAAAAAAAAIAAAACAAAAAAAAAA4AAAAFAAAABQAAAAAAAAABAAAACQAAAAkAAAAAAAAAAgAAABgAAAAYAAAAAAAAAAMAAAAQAAAA"
    "EAAAAAAAAAAEAAAABgAAAAYAAAAAAAAABQAAABAAAAAQAAAAAAAAAAYAAAAQAAAAEAAAAAAAAAAHAAAADwAAAA8AAAAAAAAACAAAAA0A"
    "AAANAAAAAAAAAAkAAAANAAAADQAAAAAAAAANAAAAEwAAABMAAAAAAAAACgAAABwAAAAcAAAAAAAAAAsAAAAFAAAABQAAAAAAAAAOAAAA"
    "DQAAAA0AAAAAAAAADAAAABEAAAARAAAAAAAAAA4AAAAFAAAABQAAAAAAAAAOAAAADQAAAA0AAAAAAAAADQAAABUAAAAVAAAAAAAAAA4A"
    "AAAQAAAAEAAAAAAAAAAOAAAABQAAAAUAAAAAAAAADgAAAAEAAAABAAAAAAAAAA8AAAA="
)


def test_const_fst_bytes_match_openfst() -> None:
    states, arcs, props = _trie_arrays(vocabulary_labels(["hello", "help", "world", "a"], ENGLISH))
    assert encode_const_fst(states, arcs, props, base_offset=0) == OPENFST_CONST_ALIGNED_TRIE


def test_reads_upstream_style_minimized_trie(tmp_path: Path) -> None:
    # Trailer at an offset where the FST header starts 16-aligned, so OpenFST's own (file-relative) padding
    # is what an appended trailer would carry.
    prefix = bytes(range(135))  # 135 + 25-byte preamble = 160
    preamble = struct.pack("<4sibdd", TRIE_MAGIC, 6, 0, 0.5, 1.5)
    path = tmp_path / "upstream.scorer"
    path.write_bytes(prefix + preamble + OPENFST_MINIMIZED_TRIE)
    info = read_scorer(path)
    assert (info.lm_end, info.alpha, info.beta) == (135, 0.5, 1.5)
    assert sorted(info.vocabulary) == sorted(["hello", "help", "held", "hold", "world", "word", "a", "don't"])
    assert info.fst.num_states == 16 and info.fst.num_arcs == 22


# -------------------------------------------------------------------------------------------- KenLM tooling


def test_build_binary_compile_is_cached() -> None:
    first = ensure_build_binary()
    built_at = first.stat().st_mtime_ns
    assert ensure_build_binary() == first and first.stat().st_mode & 0o111
    assert first.stat().st_mtime_ns == built_at, "a second call must reuse the cached binary, not rebuild it"


def test_missing_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-g++")
    with pytest.raises(
        KenLMBuildError, match="C\\+\\+ compiler 'no-such-g\\+\\+' not found.*apt-get install g\\+\\+"
    ):
        ensure_build_binary(tmp_path / "cache")


def test_scorer_from_corpus(corpus_lm: CorpusLM) -> None:
    info = read_scorer(corpus_lm.scorer)
    assert (info.alpha, info.beta, info.utf8_mode) == (DEFAULT_ALPHA, DEFAULT_BETA, False)
    assert sorted(info.vocabulary) == sorted(spellable(corpus_words()))
    assert {"naïve", "café", "x-ray"}.isdisjoint(info.vocabulary) and "don't" in info.vocabulary
    assert (
        info.lm_end == corpus_lm.binary.stat().st_size
    )  # the KenLM part is the build_binary output, unchanged
    assert corpus_lm.scorer.read_bytes()[: info.lm_end] == corpus_lm.binary.read_bytes()


def _arpa_entries(path: Path) -> dict[tuple[str, ...], float]:
    entries: dict[tuple[str, ...], float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and not line.startswith("ngram"):
            entries[tuple(parts[1].split(" "))] = float(parts[0])
    return entries


def test_kenlm_loads_scorer_as_is_and_scores_in_log10(corpus_lm: CorpusLM) -> None:
    vocab = [w for w in corpus_words()]
    words = Dictionary([*vocab, "<unk>"])
    from_scorer, from_binary = KenLM(str(corpus_lm.scorer), words), KenLM(str(corpus_lm.binary), words)
    arpa = _arpa_entries(corpus_lm.arpa)
    s1, s2 = from_scorer.start(False), from_binary.start(False)
    for word in ("hello", "the", "world", "naïve"):
        idx = words.get_index(word)
        score = from_scorer.score(s1, idx)[1]
        assert score == from_binary.score(s2, idx)[1]
        # p(word | <s>): the ARPA's log10 value when the bigram exists, else backoff(<s>) + log10 p(word).
        expected = arpa.get(("<s>", word))
        if expected is None:
            expected = _arpa_backoff(corpus_lm.arpa, "<s>") + arpa[(word,)]
        assert score == pytest.approx(expected, abs=1e-4)  # log10, not ln (which would be 2.3x larger)


def _arpa_backoff(path: Path, gram: str) -> float:
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == gram:
            return float(parts[2])
    return 0.0


@pytest.mark.parametrize("context", [(), ("hello",), ("the", "old"), ("a",), ("sea",), ("zebra",)])
def test_arpa_is_normalised_through_kenlm(corpus_lm: CorpusLM, context: tuple[str, ...]) -> None:
    # Interpolated modified Kneser-Ney with backoff = interpolation weight sums to one in every context.
    vocab = [w for w in corpus_words()] + ["<unk>"]
    words = Dictionary(vocab)
    lm = KenLM(str(corpus_lm.scorer), words)
    state = lm.start(False)
    for word in context:
        state, _ = lm.score(
            state, words.get_index(word) if words.contains(word) else words.get_index("<unk>")
        )
    total = sum(10 ** lm.score(state, i)[1] for i in range(len(vocab))) + 10 ** lm.finish(state)[1]
    assert total == pytest.approx(1.0, abs=1e-4)


def test_modified_kneser_ney_discounts() -> None:
    # Counts-of-counts t1..t4 = 10, 5, 3, 2: Y = 10 / 20, D(k) = k - (k + 1) Y t(k+1) / t(k).
    counts = [1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9]
    (d1, d2, d3), fell_back = arpa_mod.discounts(counts)
    assert not fell_back
    assert (d1, d2, d3) == pytest.approx((1 - 2 * 0.5 * 5 / 10, 2 - 3 * 0.5 * 3 / 5, 3 - 4 * 0.5 * 2 / 3))
    assert arpa_mod.discounts([1, 1, 2]) == (arpa_mod.FALLBACK_DISCOUNTS, True)


def test_arpa_adjusted_counts_and_structure(corpus_lm: CorpusLM) -> None:
    model = arpa_mod.estimate([["a", "b"], ["c", "b"], ["a", "b", "a"]], order=3)
    uni = model.ngrams[0]
    assert uni[("<s>",)][0] == -99.0 and ("<unk>",) in uni and ("</s>",) in uni
    # Continuation counts: "b" follows two distinct words, "a" follows <s> and "b".
    adj = arpa_mod.adjusted_counts(arpa_mod.count_ngrams([["a", "b"], ["c", "b"], ["a", "b", "a"]], 3))
    assert adj[0][("b",)] == 2 and adj[0][("a",)] == 2 and adj[1][("<s>", "a")] == 2
    text = corpus_lm.arpa.read_text(encoding="utf-8")
    assert text.startswith("\n\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    assert math.isclose(sum(10**p for (p, _bo) in uni.values() if p > -99), 1.0, abs_tol=1e-9)
