"""CTC decoding behind one small interface: whole-input `decode` and incremental `stream`, greedy or beam+LM.

Per-request options, on both: `hot_words` ({word: boost}, see hotwords.py and beam.py), `grammar` (Vosk's
phrase_list as the only vocabulary, parsed by `parse_grammar`; beam search only, see grammar.py) and, for
`decode` and `stream`, `alternatives` (N-best); hot words and a grammar exclude each other. Invalid options raise `HotWordError` / `DecodeOptionError` (ValueErrors with
a message for the client; the web layer answers 422), before any audio is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.speech.alphabet import Alphabet
from app.speech.decoding.beam import BeamDecoder, BeamOptions
from app.speech.decoding.grammar import (
    Grammar,
    GrammarError,
    check_beam_options,
    check_grammar,
    parse_grammar,
)
from app.speech.decoding.greedy import GreedyStream, greedy_decode
from app.speech.decoding.hotwords import (
    DEFAULT_BOOST,
    MAX_ALTERNATIVES,
    MAX_BOOST,
    MAX_HOT_WORDS,
    DecodeOptionError,
    HotWordError,
    HotWords,
    parse_hot_words,
    phrase_list_hot_words,
    validate_alternatives,
    validate_hot_words,
)
from app.speech.decoding.lm import Scorer
from app.speech.decoding.processes import DecoderPool, DecoderProcessFailed, DecoderSpec, RemoteDecoder
from app.speech.decoding.scorer_file import ScorerError
from app.speech.decoding.timings import Alternative, Transcript, Word

if TYPE_CHECKING:
    from app.settings import Settings
    from app.speech.model_dir import ModelDirectory

__all__ = [
    "DEFAULT_BOOST",
    "MAX_ALTERNATIVES",
    "MAX_BOOST",
    "MAX_HOT_WORDS",
    "Alternative",
    "DecodeOptionError",
    "Decoder",
    "DecoderProcessFailed",
    "DecoderStream",
    "Grammar",
    "GrammarError",
    "HotWordError",
    "HotWords",
    "ScorerError",
    "Transcript",
    "Word",
    "build_decoder",
    "parse_grammar",
    "parse_hot_words",
    "phrase_list_hot_words",
]

HotWordsArg = Mapping[str, float] | HotWords | None


class DecoderStream(Protocol):
    """One stream's decoder state: probabilities in chunk by chunk, never re-decoded from the start."""

    def feed(self, probs: np.ndarray) -> None: ...
    def partial(self) -> Transcript: ...
    def stable_words(self) -> list[str]:
        """The leading words no later frame can change (what a streamed transcript may send as certain)."""
        ...

    def finish(self) -> Transcript: ...


class Decoder(Protocol):
    description: str
    alphabet: Alphabet  # its labels: which index is the blank and which the space (the endpointer needs both)

    def check_options(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> HotWords:
        """Validate per-request options (raise HotWordError / DecodeOptionError); cheap, no decoding."""
        ...

    def decode(
        self,
        probs: np.ndarray,
        *,
        hot_words: HotWordsArg = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> Transcript: ...

    def stream(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> DecoderStream: ...
    def describe(self) -> dict[str, object]: ...


def _single_alternative(transcript: Transcript, alternatives: int) -> Transcript:
    # Greedy decoding has one candidate: asked for N-best, it answers that one (share of the beam: all of it).
    if alternatives == 1:
        return transcript
    return replace(transcript, alternatives=(Alternative(transcript.text, 1.0, transcript.words),))


class _GreedyDecoderStream:
    def __init__(self, alphabet: Alphabet, alternatives: int = 1) -> None:
        self._stream = GreedyStream(alphabet)
        self._alternatives = alternatives

    def feed(self, probs: np.ndarray) -> None:
        self._stream.feed(probs)

    def partial(self) -> Transcript:
        return self._stream.partial()

    def stable_words(self) -> list[str]:
        # Greedy decoding never revises a frame: every word but the last (which may still grow) is final.
        return [word.word for word in self._stream.partial().words[:-1]]

    def finish(self) -> Transcript:
        return _single_alternative(self._stream.result().transcript, self._alternatives)


class GreedyDecoder:
    """Best class per frame, repeats collapsed, blanks dropped: always available, no vocabulary."""

    description = "greedy"

    def __init__(self, alphabet: Alphabet) -> None:
        self.alphabet = alphabet

    def check_options(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> HotWords:
        hot = validate_hot_words(hot_words, self.alphabet)
        validate_alternatives(alternatives)
        check_grammar(grammar, hot, self.alphabet)
        if hot:
            raise HotWordError(
                "hot words need the beam-search decoder; this server decodes greedily (DS_DECODER=greedy)"
            )
        if grammar is not None:
            raise GrammarError(
                "a grammar (phrase_list) needs the beam-search decoder; this server decodes greedily "
                "(DS_DECODER=greedy)"
            )
        return hot

    def decode(
        self,
        probs: np.ndarray,
        *,
        hot_words: HotWordsArg = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> Transcript:
        self.check_options(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        return _single_alternative(greedy_decode(probs, self.alphabet).transcript, alternatives)

    def stream(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> DecoderStream:
        self.check_options(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        return _GreedyDecoderStream(self.alphabet, alternatives)

    def describe(self) -> dict[str, object]:
        return {"kind": "greedy"}


class BeamSearchDecoder:
    """flashlight-text beam search, with the KenLM scorer's vocabulary and weights when one is loaded."""

    def __init__(self, alphabet: Alphabet, scorer: Scorer | None, beam_width: int) -> None:
        self.alphabet = alphabet
        self.scorer = scorer
        self.beam = BeamDecoder(alphabet, scorer, BeamOptions(beam_width=beam_width))
        lm = f"kenlm {scorer.path.name}" if scorer is not None else "no LM"
        self.description = f"beam {beam_width}, {lm}"

    def check_options(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> HotWords:
        return check_beam_options(self.alphabet, hot_words, alternatives, grammar)

    def decode(
        self,
        probs: np.ndarray,
        *,
        hot_words: HotWordsArg = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> Transcript:
        return self.beam.decode(probs, hot_words=hot_words, alternatives=alternatives, grammar=grammar)

    def stream(
        self, *, hot_words: HotWordsArg = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> DecoderStream:
        return self.beam.stream(hot_words=hot_words, alternatives=alternatives, grammar=grammar)

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"kind": "beam", "beam_width": self.beam.options.beam_width}
        if self.scorer is not None:
            info["scorer"] = {
                "name": self.scorer.path.name,
                "alpha": self.scorer.alpha,
                "beta": self.scorer.beta,
                "vocabulary_size": len(self.scorer.vocabulary),
            }
        return info


def build_decoder(model: ModelDirectory, settings: Settings) -> Decoder:
    """The decoder the settings ask for; the scorer is DS_SCORER, else the model directory's kenlm.scorer.
    Beam search runs in DS_DECODER_PROCESSES spawned processes (processes.py), or here with 0."""
    if settings.decoder == "greedy":
        return GreedyDecoder(model.alphabet)
    scorer_path: Path | None = settings.scorer or model.scorer_path
    spec = DecoderSpec(
        model.alphabet,
        scorer_path if settings.use_scorer else None,
        settings.lm_alpha,
        settings.lm_beta,
        settings.beam_width,
    )
    if settings.decoder_processes:
        return RemoteDecoder(DecoderPool(spec, settings.decoder_processes))
    built: Decoder = spec.build()
    return built
