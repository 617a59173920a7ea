"""A whole file transcribed in pieces, sending words as they become certain (OpenAI's `stream=true`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import numpy as np
from anyio.to_thread import run_sync

from app.speech.decoding import HotWords, Transcript
from app.speech.engine import Engine, Transcription
from app.speech.features import context_window_blocks, mfcc
from app.speech.runtime import LstmState
from app.speech.utterances import Utterance

log = logging.getLogger(__name__)

PIECE_STEPS = 50  # model time steps per piece (1 s of audio)


class IncrementalTranscription:
    """`Engine.transcribe` in pieces: the same feature windows, the dynamic model over `piece_steps` windows at a
    time with the LSTM state carried (the probabilities of its ≤ max_steps windows), and the decoder fed piece by
    piece, as `Decoder.decode` runs it; so the final transcript is the non-streamed one. After a piece,
    `step` returns the words that became certain (the decoder stream's `stable_words`); `finished` after the
    last piece, with `transcript` set.

    The certainty check costs O(beam x frames) for the beam search, so it runs after every piece at first and
    then at least every tenth of the audio so far (bounded total cost on long files).
    """

    def __init__(
        self,
        engine: Engine,
        samples: np.ndarray,
        piece_steps: int = PIECE_STEPS,
        hot_words: Mapping[str, float] | HotWords | None = None,
        alternatives: int = 1,
    ) -> None:
        self._model = engine.model
        self._samples: np.ndarray | None = samples
        self._blocks: Iterator[np.ndarray] = iter(())
        self._total = 0
        self._state = LstmState.zeros(engine.model.n_cell_dim)
        # Cut where Engine.transcribe cuts, decoded as it decodes.
        self._decoder = engine.utterance_decoder(hot_words=hot_words, alternatives=alternatives)
        self._piece = piece_steps
        self._steps = 0
        self._checked_at = 0
        self.stable: list[str] = []
        self.transcript: Transcript | None = None

    @property
    def finished(self) -> bool:
        return self.transcript is not None

    @property
    def progress(self) -> float:
        """The share of the audio's model steps done (0 before the first piece, 1 once finished)."""
        if self.transcript is not None:
            return 1.0
        return self._steps / self._total if self._total else 0.0

    @property
    def utterances(self) -> list[Utterance]:
        """Where the audio was cut so far (all of it once finished), as Engine.transcribe cuts it."""
        return self._decoder.utterances

    def step(self) -> list[str]:
        """Run the next piece (the first call also computes the features); return the newly certain words."""
        if self.transcript is not None:
            return []
        if self._samples is not None:  # MFCCs once; context windows one piece at a time, as Engine.transcribe
            frames = mfcc(self._samples)
            self._total = len(frames)
            self._blocks = context_window_blocks(frames, self._piece)
            self._samples = None
        piece = next(self._blocks, None)
        if piece is not None and len(piece):
            if self._steps + len(piece) >= self._total:  # the last piece: its state is not needed
                probs = self._model.run_last_window(piece, self._state)
            else:
                probs, self._state = self._model.run_window(piece, self._state)
            self._decoder.feed(probs)
            self._steps += len(piece)
        if piece is None or self._steps >= self._total:
            return self._finish()
        if self._steps - self._checked_at < max(self._piece, self._steps // 10):
            return []
        self._checked_at = self._steps
        return self._extend(self._decoder.stable_words())

    def _extend(self, words: list[str]) -> list[str]:
        n = len(self.stable)
        if len(words) <= n or words[:n] != self.stable:
            return []
        self.stable = words
        return words[n:]

    def _finish(self) -> list[str]:
        self.transcript = self._decoder.finish()
        final = [word.word for word in self.transcript.words]
        n = len(self.stable)
        if final[:n] != self.stable:  # cannot happen with the decoders above; never hide it if it does
            log.error("streamed words %r are not a prefix of the final transcript %r", self.stable, final)
        self.stable = final
        return final[n:]


async def transcript_events(
    engine: Engine,
    samples: np.ndarray,
    hot_words: HotWords | None = None,
    on_compute: Callable[[float], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """`transcript.text.delta` events as words become certain, then `transcript.text.done`; the seconds spent
    computing each piece (not waiting on the client) go to `on_compute`, for the RTF metric."""
    job = IncrementalTranscription(engine, samples, hot_words=hot_words)
    sent = False
    while not job.finished:
        started = time.perf_counter()
        words = await run_sync(job.step)
        if on_compute is not None:
            on_compute(time.perf_counter() - started)
        if words:
            yield {"type": "transcript.text.delta", "delta": (" " if sent else "") + " ".join(words)}
            sent = True
    assert job.transcript is not None
    yield {"type": "transcript.text.done", "text": job.transcript.text}


async def transcribe_in_pieces(
    engine: Engine,
    samples: np.ndarray,
    progress: Callable[[float], None],
    hot_words: Mapping[str, float] | HotWords | None = None,
    alternatives: int = 1,
) -> Transcription:
    """`Engine.transcribe`'s result, computed a piece at a time off the event loop, telling `progress` the share
    done after each piece (a batch job's progress and heartbeat)."""
    job = IncrementalTranscription(engine, samples, hot_words=hot_words, alternatives=alternatives)
    started = time.monotonic()
    while not job.finished:
        await run_sync(job.step)
        progress(job.progress)
    assert job.transcript is not None
    elapsed = time.monotonic() - started
    return Transcription(job.transcript, len(samples) / 16000.0, elapsed, tuple(job.utterances))
