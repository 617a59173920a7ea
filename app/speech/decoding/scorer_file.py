"""Read and write DeepSpeech `.scorer` packages: a KenLM binary followed by a trailer with alpha, beta and a
vocabulary trie stored as an OpenFST ConstFst.

Layout, as DeepSpeech's `native_client/ctcdecode/scorer.cpp` writes it (`Scorer::save_dictionary`, appended by
`generate_scorer_package` right after the KenLM bytes) and reads it (`Scorer::load_trie`, seeked to KenLM's
`GetEndOfSearchOffset()`), all little-endian:

    int32   magic    'TRIE' (a multichar constant, 0x54524945: the bytes b"EIRT" on disk)
    int32   version  6 (FILE_VERSION)
    uint8   utf8     is_utf8_mode_ (a C++ bool)
    float64 alpha, float64 beta
    ConstFst<StdArc> written with FstWriteOptions.align = true

The ConstFst part follows OpenFST 1.6.7 (`fst/fst.h` FstHeader, `lib/fst.cc` FstHeader::Write, `fst/const-fst.h`
WriteFst, `lib/util.cc` AlignOutput):

    int32 magic 2125659606; string fsttype "const"; string arctype "standard"  (string = int32 length + bytes)
    int32 version (1 = aligned file version, 2 = unaligned); int32 flags (HAS_ISYMBOLS 1, HAS_OSYMBOLS 2,
    IS_ALIGNED 4); uint64 properties; int64 start; int64 numstates; int64 numarcs
    [zero padding to a multiple of 16 bytes, measured as the stream position, i.e. from the FILE start]
    numstates x ConstState {float final weight; uint32 pos, narcs, niepsilons, noepsilons}   (20 bytes)
    [zero padding to 16 from the file start]
    numarcs x StdArc {int32 ilabel; int32 olabel; float weight; int32 nextstate}               (16 bytes)

Trie labels (`Scorer::setup_char_map`, `add_word_to_dictionary`): alphabet index + 1 (0 is epsilon), each word's
path followed by the space label, then a final state (weight One = 0.0; non-final states weigh Zero = +inf).
In UTF-8 ("bytes output") mode the alphabet is upstream's UTF8Alphabet (index n = byte n+1), so labels are the
raw byte values.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.speech.alphabet import ENGLISH, Alphabet

TRIE_MAGIC = b"EIRT"  # int32 'TRIE' == 0x54524945, little-endian
TRIE_VERSION = 6
FST_MAGIC = 2125659606  # kFstMagicNumber, lib/fst.cc
FST_ALIGNMENT = 16  # MappedFile::kArchAlignment
CONST_ALIGNED_VERSION = 1  # ConstFstImpl::kAlignedFileVersion
CONST_UNALIGNED_VERSION = 2  # ConstFstImpl::kFileVersion
FLAG_HAS_ISYMBOLS, FLAG_HAS_OSYMBOLS, FLAG_IS_ALIGNED = 0x1, 0x2, 0x4

_PREAMBLE = struct.Struct("<4sibdd")  # magic, version, utf8 flag, alpha, beta (25 bytes)
assert _PREAMBLE.size == 25  # no padding: "<" packs like the sequential fstream writes upstream
STATE_DTYPE = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("nie", "<u4"), ("noe", "<u4")])
# FstHeader after the two strings: int32 version, int32 flags, uint64 properties, int64 start/numstates/numarcs.
_FST_FIELDS = struct.Struct("<iiQqqq")
_FST_HEADER_SIZE = 4 + (4 + 5) + (4 + 8) + _FST_FIELDS.size  # 65 bytes for "const"/"standard"
ARC_DTYPE = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("next", "<i4")])

# OpenFST property bits (fst/properties.h) that hold for the trie we write.
_K_EXPANDED = 0x1
_K_ACCEPTOR, _K_IDETERMINISTIC, _K_ODETERMINISTIC = 0x10000, 0x40000, 0x100000
_K_NO_EPSILONS, _K_NO_IEPSILONS, _K_NO_OEPSILONS = 0x800000, 0x2000000, 0x8000000
_K_ILABEL_SORTED, _K_OLABEL_SORTED, _K_UNWEIGHTED = 0x10000000, 0x40000000, 0x200000000
_K_ACYCLIC, _K_INITIAL_ACYCLIC, _K_TOP_SORTED = 0x800000000, 0x2000000000, 0x4000000000
_K_ACCESSIBLE, _K_COACCESSIBLE, _K_STRING, _K_NOT_STRING = (
    0x10000000000,
    0x40000000000,
    0x100000000000,
    0x200000000000,
)
_K_UNWEIGHTED_CYCLES = 0x800000000000
_TRIE_PROPERTIES = (
    (_K_EXPANDED | _K_ACCEPTOR | _K_IDETERMINISTIC | _K_ODETERMINISTIC | _K_NO_EPSILONS | _K_NO_IEPSILONS)
    | (
        _K_NO_OEPSILONS
        | _K_ILABEL_SORTED
        | _K_OLABEL_SORTED
        | _K_UNWEIGHTED
        | _K_ACYCLIC
        | _K_INITIAL_ACYCLIC
    )
    | (_K_TOP_SORTED | _K_ACCESSIBLE | _K_COACCESSIBLE | _K_UNWEIGHTED_CYCLES)
)

_MAX_WORD_LABELS = 4096  # guard for a corrupt (cyclic) trie while enumerating


class ScorerError(ValueError):
    """The file is not a DeepSpeech scorer we can use; the message says why."""


@dataclass(frozen=True)
class FstHeader:
    """OpenFST's FstHeader fields (plus where the header sits and where the arrays start)."""

    fst_type: str
    arc_type: str
    version: int
    flags: int
    properties: int
    start: int
    num_states: int
    num_arcs: int
    states_offset: int
    arcs_offset: int
    end_offset: int


@dataclass(frozen=True)
class ScorerInfo:
    """What a `.scorer` holds besides the KenLM model: where that model ends, its defaults and its vocabulary."""

    path: Path
    lm_end: int  # byte offset where the KenLM binary ends and the trailer begins
    alpha: float
    beta: float
    utf8_mode: bool
    vocabulary: tuple[str, ...]
    fst: FstHeader


def _read_string(buf: mmap.mmap | bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<i", buf, pos)
    if length < 0 or length > 64:  # the only strings here are short type names
        raise ScorerError("bad FST header string")
    raw = bytes(buf[pos + 4 : pos + 4 + length])
    if len(raw) != length:
        raise ScorerError("truncated FST header")
    return raw.decode("ascii", errors="replace"), pos + 4 + length


def _align(pos: int) -> int:
    return -(-pos // FST_ALIGNMENT) * FST_ALIGNMENT


def parse_fst_header(buf: mmap.mmap | bytes, pos: int) -> FstHeader:
    """Parse a ConstFst header at absolute offset `pos` and compute where its arrays lie (no bounds check)."""
    if len(buf) < pos + 4 or struct.unpack_from("<i", buf, pos)[0] != FST_MAGIC:
        raise ScorerError("no OpenFST header")
    fst_type, p = _read_string(buf, pos + 4)
    arc_type, p = _read_string(buf, p)
    if len(buf) < p + _FST_FIELDS.size:
        raise ScorerError("truncated FST header")
    version, flags, properties, start, nstates, narcs = _FST_FIELDS.unpack_from(buf, p)
    p += _FST_FIELDS.size
    if fst_type != "const" or arc_type != "standard":
        raise ScorerError(f"vocabulary FST is {fst_type!r}/{arc_type!r}, expected 'const'/'standard'")
    if flags & (FLAG_HAS_ISYMBOLS | FLAG_HAS_OSYMBOLS):
        raise ScorerError("vocabulary FST carries symbol tables, which DeepSpeech never writes")
    if nstates < 0 or narcs < 0 or not (-1 <= start < max(nstates, 1)):
        raise ScorerError("FST header has impossible counts")
    # const-fst.h Read(): version 1 (kAlignedFileVersion) implies IS_ALIGNED; AlignInput pads by tellg().
    aligned = version == CONST_ALIGNED_VERSION or bool(flags & FLAG_IS_ALIGNED)
    states_at = _align(p) if aligned else p
    arcs_at = states_at + nstates * STATE_DTYPE.itemsize
    arcs_at = _align(arcs_at) if aligned else arcs_at
    end = arcs_at + narcs * ARC_DTYPE.itemsize
    return FstHeader(
        fst_type, arc_type, version, flags, properties, start, nstates, narcs, states_at, arcs_at, end
    )


def _locate_trailer(buf: mmap.mmap) -> tuple[int, FstHeader]:
    """Find the trailer by content, from the end of the file backwards.

    Why scan: the exact end of the KenLM part is only known to KenLM (`GetEndOfSearchOffset()` depends on the
    model type, order, quantisation and pointer-compression settings in its header), and re-deriving KenLM's
    size arithmetic here would be fragile. The trailer instead is self-validating: b"EIRT", version 6, a
    ConstFst header 25 bytes later, and arrays that end exactly at end of file. A false match inside the KenLM
    bytes would have to satisfy all of that, so the last position that does is the trailer.
    """
    size = len(buf)
    wrong_version: int | None = None
    truncated = False
    extra: int | None = None
    end = size
    while (pos := buf.rfind(TRIE_MAGIC, 0, end)) >= 0:
        end = pos  # b"EIRT" cannot overlap itself, so the next candidate ends at or before this one's start
        if pos + 8 > size:
            continue
        (version,) = struct.unpack_from("<i", buf, pos + 4)
        try:
            hdr = parse_fst_header(buf, pos + _PREAMBLE.size)
        except (ScorerError, struct.error):
            # A version-6 preamble whose FST header is cut off by the end of file: truncated.
            truncated = truncated or (
                version == TRIE_VERSION and pos + _PREAMBLE.size + _FST_HEADER_SIZE > size
            )
            if 0 < version < 100 and version != TRIE_VERSION and wrong_version is None:
                wrong_version = version
            continue
        if version != TRIE_VERSION:
            raise ScorerError(
                f"scorer trailer version {version}, this reader supports {TRIE_VERSION} "
                "(scorer.cpp FILE_VERSION); regenerate the scorer"
            )
        if hdr.end_offset == size:
            return pos, hdr
        if hdr.end_offset > size:
            raise ScorerError(
                f"scorer is truncated: its vocabulary FST needs {hdr.end_offset} bytes, the file has {size}"
            )
        # Upstream writes the FST last; bytes after it mean a damaged file (or a false match: keep looking).
        extra = extra if extra is not None else size - hdr.end_offset
    if truncated:
        raise ScorerError("scorer is truncated inside its trailer")
    if extra is not None:
        raise ScorerError(f"scorer has {extra} unexpected bytes after its vocabulary FST")
    if wrong_version is not None:
        raise ScorerError(f"scorer trailer version {wrong_version}, this reader supports {TRIE_VERSION}")
    raise ScorerError("not a DeepSpeech scorer: no 'TRIE' trailer with a vocabulary FST found")


def _enumerate_words(
    states: np.ndarray, arcs: np.ndarray, start: int, label_text: dict[int, bytes], space_label: int
) -> list[str]:
    """Depth-first walk of the acyclic trie; every path to a final state spells one word (+ trailing space)."""
    n_states = len(states)
    finals = (states["final"] != math.inf).tolist()
    pos, narcs = states["pos"].tolist(), states["narcs"].tolist()
    ilabels, nexts = arcs["ilabel"].tolist(), arcs["next"].tolist()
    if any(p + n > len(ilabels) for p, n in zip(pos, narcs, strict=True)):
        raise ScorerError("vocabulary FST arc ranges exceed its arc array (corrupt file)")
    words: list[str] = []
    stack: list[tuple[int, tuple[int, ...]]] = [(start, ())] if 0 <= start < n_states else []
    while stack:
        state, path = stack.pop()
        if finals[state] and path:
            labels = path[:-1] if path[-1] == space_label else path
            try:
                raw = b"".join(label_text[label] for label in labels)
            except KeyError as exc:
                raise ScorerError(f"vocabulary uses label {exc.args[0]}, which the alphabet lacks") from None
            words.append(raw.decode("utf-8", errors="replace"))
        if len(path) > _MAX_WORD_LABELS:
            raise ScorerError("vocabulary FST has a cycle or an absurdly long word (corrupt file)")
        first = pos[state]
        for i in range(first + narcs[state] - 1, first - 1, -1):
            nxt = nexts[i]
            if not 0 <= nxt < n_states:
                raise ScorerError("vocabulary FST arc points past its states (corrupt file)")
            stack.append((nxt, (*path, ilabels[i])))
    return words


def read_scorer(
    path: str | os.PathLike[str],
    alphabet: Alphabet = ENGLISH,
    *,
    allow_utf8: bool = False,
    with_vocabulary: bool = True,
) -> ScorerInfo:
    """Read a `.scorer`'s trailer: where KenLM ends, default alpha/beta, UTF-8 flag and the word list."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ScorerError(f"cannot open scorer {path}: {exc.strerror}") from exc
    with fh:
        if os.fstat(fh.fileno()).st_size < _PREAMBLE.size + _FST_HEADER_SIZE:
            raise ScorerError(f"{path} is too small to be a DeepSpeech scorer (truncated?)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            offset, hdr = _locate_trailer(buf)
            _magic, _version, utf8_flag, alpha, beta = _PREAMBLE.unpack_from(buf, offset)
            utf8_mode = utf8_flag != 0
            if utf8_mode and not allow_utf8:
                raise ScorerError(
                    "scorer is in UTF-8 (bytes output) mode, which this service does not support: it scores "
                    "per codepoint with a character-level LM; use a word-level scorer built for the alphabet"
                )
            vocabulary: list[str] = []
            if with_vocabulary:
                states = np.frombuffer(buf, STATE_DTYPE, hdr.num_states, hdr.states_offset).copy()
                arcs = np.frombuffer(buf, ARC_DTYPE, hdr.num_arcs, hdr.arcs_offset).copy()
                if utf8_mode:
                    label_text = {b: bytes([b]) for b in range(1, 256)}
                    space_label = ord(" ")
                else:
                    label_text = {i + 1: lab.encode("utf-8") for i, lab in enumerate(alphabet.labels)}
                    space_label = alphabet.space_index + 1
                vocabulary = _enumerate_words(states, arcs, hdr.start, label_text, space_label)
    return ScorerInfo(path, offset, float(alpha), float(beta), utf8_mode, tuple(vocabulary), hdr)


# ---------------------------------------------------------------------------------------------------- writer


def _trie_arrays(label_paths: Iterable[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Build a deterministic prefix trie, numbered breadth-first with label-sorted arcs.

    Upstream (`Scorer::fill_dictionary`) also runs fst::RmEpsilon, Determinize and Minimize, which shares common
    suffixes and makes the file smaller; a plain trie accepts exactly the same set of strings, and is what a
    decoder walking it (DeepSpeech's PathTrie, or our reader) needs, so we do not hand-write minimisation.
    """
    children: list[dict[int, int]] = [{}]
    final: list[bool] = [False]
    for labels in label_paths:
        node = 0
        for label in labels:
            nxt = children[node].get(label)
            if nxt is None:
                nxt = len(children)
                children[node][label] = nxt
                children.append({})
                final.append(False)
            node = nxt
        final[node] = True
    # Renumber breadth-first so every arc goes to a higher state id (kTopSorted) and the start state is 0.
    order, index = [0], {0: 0}
    for node in order:
        for label in sorted(children[node]):
            child = children[node][label]
            index[child] = len(order)
            order.append(child)
    final_w: list[float] = []
    first_arc: list[int] = []
    n_arcs: list[int] = []
    ilabels: list[int] = []
    nexts: list[int] = []
    for node in order:
        final_w.append(0.0 if final[node] else math.inf)
        first_arc.append(len(ilabels))
        n_arcs.append(len(children[node]))
        for label in sorted(children[node]):
            ilabels.append(label)
            nexts.append(index[children[node][label]])
    states = np.zeros(len(order), STATE_DTYPE)
    states["final"], states["pos"], states["narcs"] = final_w, first_arc, n_arcs
    arcs = np.zeros(len(ilabels), ARC_DTYPE)
    arcs["ilabel"] = arcs["olabel"] = ilabels
    arcs["next"] = nexts
    is_string = bool((states["narcs"] <= 1).all())
    props = _TRIE_PROPERTIES | (_K_STRING if is_string else _K_NOT_STRING)
    return states, arcs, props


def encode_const_fst(states: np.ndarray, arcs: np.ndarray, properties: int, base_offset: int) -> bytes:
    """Serialize a ConstFst exactly like OpenFST with align=true, given its absolute offset in the file."""

    def string(s: str) -> bytes:
        raw = s.encode("ascii")
        return struct.pack("<i", len(raw)) + raw

    header = struct.pack("<i", FST_MAGIC) + string("const") + string("standard")
    header += struct.pack(
        "<iiQqqq",
        CONST_ALIGNED_VERSION,
        FLAG_IS_ALIGNED,
        properties,
        0 if len(states) else -1,
        len(states),
        len(arcs),
    )
    out = bytearray(header)

    def pad() -> None:
        out.extend(b"\0" * (_align(base_offset + len(out)) - (base_offset + len(out))))

    pad()
    out += states.astype(STATE_DTYPE, copy=False).tobytes()
    pad()
    out += arcs.astype(ARC_DTYPE, copy=False).tobytes()
    return bytes(out)


def vocabulary_labels(words: Iterable[str], alphabet: Alphabet) -> list[tuple[int, ...]]:
    """Label paths for the trie: alphabet index + 1 per character, then the space label (words we cannot spell
    with the alphabet are skipped, as upstream's add_word_to_dictionary does)."""
    if alphabet.space_index < 0:
        raise ScorerError("the alphabet has no space label, which word-level scorers need")
    index = {label: i + 1 for i, label in enumerate(alphabet.labels)}
    space = alphabet.space_index + 1
    paths: list[tuple[int, ...]] = []
    for word in dict.fromkeys(words):  # de-duplicate, keep order
        if word in ("<s>", "</s>", "<unk>") or not word or " " in word:
            continue
        try:
            paths.append((*(index[ch] for ch in word), space))
        except KeyError:
            continue
    return paths


def encode_trailer(
    words: Iterable[str],
    alphabet: Alphabet,
    alpha: float,
    beta: float,
    base_offset: int,
    *,
    utf8_mode: bool = False,
) -> bytes:
    """The bytes DeepSpeech's Scorer::save_dictionary appends at `base_offset` (the end of the KenLM binary)."""
    if utf8_mode:
        paths = [(*w.encode("utf-8"), ord(" ")) for w in dict.fromkeys(words) if w and " " not in w]
    else:
        paths = vocabulary_labels(words, alphabet)
    states, arcs, props = _trie_arrays(paths)
    preamble = _PREAMBLE.pack(TRIE_MAGIC, TRIE_VERSION, 1 if utf8_mode else 0, float(alpha), float(beta))
    return preamble + encode_const_fst(states, arcs, props, base_offset + len(preamble))


def write_scorer(
    kenlm_binary_path: str | os.PathLike[str],
    words: Iterable[str],
    alphabet: Alphabet,
    alpha: float,
    beta: float,
    out_path: str | os.PathLike[str],
    *,
    utf8_mode: bool = False,
) -> Path:
    """Write a `.scorer`: the KenLM binary's bytes, then the trailer (what generate_scorer_package does)."""
    lm = Path(kenlm_binary_path).read_bytes()
    if TRIE_MAGIC + struct.pack("<i", TRIE_VERSION) in lm[-4096:]:
        raise ScorerError(
            f"{kenlm_binary_path} already ends with a scorer trailer; pass the bare KenLM binary"
        )
    trailer = encode_trailer(words, alphabet, alpha, beta, len(lm), utf8_mode=utf8_mode)
    out = Path(out_path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(lm)
            fh.write(trailer)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
