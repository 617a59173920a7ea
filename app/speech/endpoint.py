"""Endpoint detection: where a stream of model outputs ends one utterance, from the model's own frames.

A frame is speech when its most probable class is a character (not the CTC blank, not the space that separates
words): DeepSpeech emits a character every few frames while someone speaks, blank through silence, noise and
music, so the run of frames with no character since the last one is the pause the listener hears. An utterance
ends once that run reaches `silence_ms` after some speech (the cut falls at the frame that completes the run);
and, at the latest, at the first word boundary (a frame whose best class is the space) after
`max_utterance_seconds`, or `MAX_OVERRUN_SECONDS` later wherever it is, so a speaker who never pauses still gets
bounded utterances. Silence with no speech in it is cut after `max_utterance_seconds` too, without an utterance,
so an hour of silence before the first word costs no more than a short one.

Why the model's output and not the signal's energy: the run of non-character frames is measured the same way
whatever the microphone's gain and the room's noise (a fan or a TV is loud but blank), and whole files and
streams see the same frames (to float32 rounding), so both cut in the same places; the measurements that chose
the default (real pauses vs. mid-sentence breaths on the held-out set) are in the README's Utterances section.

Decisions depend only on the frames seen so far, one at a time, so any chunking of the same frames cuts at the
same places: a stream fed 16 frames at a time and a whole file fed at once agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.speech.decoding.timings import FRAME_SECONDS

MAX_OVERRUN_SECONDS = 2.0  # past max_utterance_seconds, how long a cut may wait for a word boundary


@dataclass(frozen=True)
class EndpointConfig:
    """When an utterance ends: `silence_ms` of pause after speech (0: never at a pause), and at the latest after
    `max_utterance_seconds` (0: no limit)."""

    silence_ms: int = 700
    max_utterance_seconds: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.silence_ms, int) or isinstance(self.silence_ms, bool) or self.silence_ms < 0:
            raise ValueError("endpoint_silence_ms must be an integer number of milliseconds >= 0 (0: off)")
        if self.max_utterance_seconds < 0:
            raise ValueError("max_utterance_seconds must be >= 0 (0: no limit)")

    @property
    def silence_frames(self) -> int:
        return round(self.silence_ms / 1000 / FRAME_SECONDS)

    @property
    def max_frames(self) -> int:
        return round(self.max_utterance_seconds / FRAME_SECONDS)


class Endpointer:
    """Finds the frames at which utterances end in a stream of (T, n_classes) probabilities, chunk by chunk."""

    def __init__(self, config: EndpointConfig, blank_index: int, space_index: int) -> None:
        self.config = config
        self._blank = blank_index
        self._space = space_index
        self._frames = 0  # frames seen
        self._start = 0  # the current utterance's first frame
        self._heard = False  # the current utterance has a speech frame
        self._silence = 0  # non-speech frames since the last speech frame (or the utterance's start)

    @property
    def utterance_start(self) -> int:
        """The first frame of the utterance in progress."""
        return self._start

    def push(self, probs: np.ndarray) -> list[int]:
        """Take the next frames; return the cut points among them (frame indices from the stream's start, each
        the first frame of the next utterance), in order."""
        best = np.asarray(probs).argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        cuts: list[int] = []
        for label in best.tolist():
            self._frames += 1
            if label != self._blank and label != self._space:
                self._heard = True
                self._silence = 0
            else:
                self._silence += 1
            if self._ends_here(label):
                cuts.append(self._frames)
                self._start, self._heard, self._silence = self._frames, False, 0
        return cuts

    def _ends_here(self, label: int) -> bool:
        config = self.config
        length = self._frames - self._start
        if config.silence_frames and self._heard and self._silence >= config.silence_frames:
            return True
        if not config.max_frames or length < config.max_frames:
            return False
        if not self._heard:
            return True  # silence only: dropped, so its frames are not held
        at_boundary = label == self._space or self._silence >= 3  # between words, or a 60 ms gap
        return at_boundary or length >= config.max_frames + round(MAX_OVERRUN_SECONDS / FRAME_SECONDS)
