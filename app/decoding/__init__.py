"""CTC decoding behind one small interface: whole-input `decode` and incremental `stream`, greedy or beam+LM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.alphabet import Alphabet
from app.decoding.beam import BeamDecoder, BeamOptions, Scorer
from app.decoding.greedy import GreedyStream, greedy_decode
from app.decoding.scorer_file import ScorerError
from app.decoding.timings import Transcript, Word

if TYPE_CHECKING:
    from app.model_dir import ModelDirectory
    from app.settings import Settings

__all__ = ["Decoder", "DecoderStream", "ScorerError", "Transcript", "Word", "build_decoder"]


class DecoderStream(Protocol):
    """One stream's decoder state: probabilities in chunk by chunk, never re-decoded from the start."""

    def feed(self, probs: np.ndarray) -> None: ...
    def partial(self) -> Transcript: ...
    def finish(self) -> Transcript: ...


class Decoder(Protocol):
    description: str

    def decode(self, probs: np.ndarray) -> Transcript: ...
    def stream(self) -> DecoderStream: ...
    def describe(self) -> dict[str, object]: ...


class _GreedyDecoderStream:
    def __init__(self, alphabet: Alphabet) -> None:
        self._stream = GreedyStream(alphabet)

    def feed(self, probs: np.ndarray) -> None:
        self._stream.feed(probs)

    def partial(self) -> Transcript:
        return self._stream.result().transcript

    def finish(self) -> Transcript:
        return self._stream.result().transcript


class GreedyDecoder:
    """Best class per frame, repeats collapsed, blanks dropped: always available, no vocabulary."""

    description = "greedy"

    def __init__(self, alphabet: Alphabet) -> None:
        self.alphabet = alphabet

    def decode(self, probs: np.ndarray) -> Transcript:
        return greedy_decode(probs, self.alphabet).transcript

    def stream(self) -> DecoderStream:
        return _GreedyDecoderStream(self.alphabet)

    def describe(self) -> dict[str, object]:
        return {"kind": "greedy"}


class BeamSearchDecoder:
    """flashlight-text beam search, with the KenLM scorer's vocabulary and weights when one is loaded."""

    def __init__(self, alphabet: Alphabet, scorer: Scorer | None, beam_width: int) -> None:
        self.scorer = scorer
        self.beam = BeamDecoder(alphabet, scorer, BeamOptions(beam_width=beam_width))
        lm = f"kenlm {scorer.path.name}" if scorer is not None else "no LM"
        self.description = f"beam {beam_width}, {lm}"

    def decode(self, probs: np.ndarray) -> Transcript:
        return self.beam.decode(probs)

    def stream(self) -> DecoderStream:
        return self.beam.stream()

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"kind": "beam", "beam_width": self.beam.options.beam_width}
        if self.scorer is not None:
            info["scorer"] = {
                "path": str(self.scorer.path),
                "alpha": self.scorer.alpha,
                "beta": self.scorer.beta,
                "vocabulary_size": len(self.scorer.vocabulary),
            }
        return info


def build_decoder(model: ModelDirectory, settings: Settings) -> Decoder:
    """The decoder the settings ask for; the scorer is DS_SCORER, else the model directory's kenlm.scorer."""
    if settings.decoder == "greedy":
        return GreedyDecoder(model.alphabet)
    scorer_path: Path | None = settings.scorer or model.scorer_path
    scorer = None
    if settings.use_scorer and scorer_path is not None:
        scorer = Scorer(scorer_path, model.alphabet, alpha=settings.lm_alpha, beta=settings.lm_beta)
    return BeamSearchDecoder(model.alphabet, scorer, settings.beam_width)
