"""StreamSession: one stream's feature buffers, batch buffer, LSTM state and decoder state (cut into utterances).

Follows the native client's `StreamingState` (deepspeech.cc): windows are batched 16 at a time through the
static model with the state carried between batches; the decoder is fed each batch's probabilities
incrementally (never re-decoding from the start); at the end the remaining windows (< 16) run zero-padded to 16
with `input_lengths` = their count — the coremltools guide's loop drops this tail, we must not.
Knows nothing about websockets: the transport layer feeds it samples and sends what it returns.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import numpy as np

from app.speech.decoding import Transcript
from app.speech.features import N_MFCC, WINDOW_FRAMES, StreamingFeatures
from app.speech.runtime import STATIC_STEPS, AcousticModel, LstmState
from app.speech.utterances import Utterance, UtteranceDecoder


class StreamFinished(RuntimeError):
    """Audio or finish() after the stream has ended."""


class StreamSession:
    def __init__(
        self,
        model: AcousticModel,
        decoder: UtteranceDecoder,
        on_utterances: Callable[[list[Utterance]], None] | None = None,
    ) -> None:
        self._model = model
        self._decoder = decoder
        self._features = StreamingFeatures()
        self._batch = np.zeros((STATIC_STEPS, WINDOW_FRAMES, N_MFCC), np.float32)
        self._batch_fill = 0
        self._state = LstmState.zeros(model.n_cell_dim)
        # Tell the model a stream is open (the batching wrapper counts them) until finish(), close() or, for a
        # session dropped without either (a client gone), garbage collection.
        self._detach = weakref.finalize(self, model.attach_stream())
        self._detach.atexit = False
        self._last_partial = ""
        self._ready: list[Utterance] = []  # finished utterances not yet taken
        self._on_utterances = on_utterances  # told of each utterance as it is found (metrics)
        self._finished = False
        self.samples_in = 0
        self.processing_seconds = 0.0  # in feed/finish (features, model, decoder): for the RTF metric
        self.steps_decoded = 0

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def partial_text(self) -> str:
        """The latest partial transcript of the utterance in progress (what `feed` last reported)."""
        return self._last_partial

    @property
    def utterances(self) -> list[Utterance]:
        """Every utterance finished so far (the last one too, after finish())."""
        return self._decoder.utterances

    def stable_words(self) -> list[str]:
        """The stream's words no later audio can change: finished utterances' and the current one's certain ones
        (what a protocol that sends text as it becomes final, like Wyoming's transcript chunks, may send)."""
        return self._decoder.stable_words()

    @property
    def decoder_limited(self) -> bool:
        """The beam search ran under pressure (its beam stayed full: noise, music or static to the model) and kept
        less history to bound its memory (app/speech/decoding/beam.py, BeamOptions.pressure_fill)."""
        return self._decoder.limited_prunes > 0

    @property
    def healthy(self) -> bool:
        """False once the stream cannot go on: its decoder process died (resuming it is refused)."""
        return self._decoder.healthy

    @property
    def has_utterances(self) -> bool:
        """Utterances are finished and not yet taken."""
        return bool(self._ready)

    def take_utterances(self) -> list[Utterance]:
        """The utterances finished since the last call, oldest first (the last one too, after finish())."""
        ready, self._ready = self._ready, []
        return ready

    @property
    def audio_seconds(self) -> float:
        return self.samples_in / 16000.0

    def feed(self, samples: np.ndarray) -> str | None:
        """Take 16 kHz float32 samples; return the new partial transcript if it changed, else None."""
        if self._finished:
            raise StreamFinished("the stream has ended; open a new one")
        started = time.perf_counter()
        self.samples_in += len(samples)
        self._add_windows(self._features.push(samples))
        text = self._decoder.partial_text()
        self.processing_seconds += time.perf_counter() - started
        if self._take_finished():
            self._last_partial = ""  # the utterance message says the live one starts afresh
        if text != self._last_partial:
            self._last_partial = text
            return text
        return None

    def finish(self) -> Transcript:
        """Flush the tail exactly as the native client's finishStream does and return the final transcript."""
        if self._finished:
            raise StreamFinished("finish() was already called")
        self._finished = True
        started = time.perf_counter()
        try:
            self._add_windows(self._features.finish())
            if self._batch_fill:
                self._run_batch(self._batch_fill)
        finally:
            self._detach()
        transcript = self._decoder.finish()
        self.processing_seconds += time.perf_counter() - started
        self._take_finished()
        self._last_partial = ""
        return transcript

    def _take_finished(self) -> bool:
        new = self._decoder.take_utterances()
        if new and self._on_utterances is not None:
            self._on_utterances(new)
        self._ready += new
        return bool(new)

    def close(self) -> None:
        """Stop counting as an open stream on the model without a final (idempotent; finish() does it too)."""
        self._detach()

    def _add_windows(self, windows: np.ndarray) -> None:
        taken = 0
        while taken < len(windows):
            n = min(STATIC_STEPS - self._batch_fill, len(windows) - taken)
            self._batch[self._batch_fill : self._batch_fill + n] = windows[taken : taken + n]
            self._batch_fill += n
            taken += n
            if self._batch_fill == STATIC_STEPS:
                self._run_batch(STATIC_STEPS)

    def _run_batch(self, length: int) -> None:
        if length < STATIC_STEPS:
            self._batch[length:] = 0.0  # the tail chunk is zero-padded, its length says what is real
        probs, self._state = self._model.run_chunk(self._batch, length, self._state)
        self._decoder.feed(probs)
        self.steps_decoded += length
        self._batch_fill = 0
