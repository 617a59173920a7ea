"""Fakes around the real engine, and waiting on a condition from async tests."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from app.speech.engine import Engine


class BlockingEngine(Engine):
    """The real engine, except that each transcription waits for the test to release it."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.model_dir, engine.model, engine.decoder)
        self.release = threading.Event()
        self.started = 0

    def transcribe(self, samples: np.ndarray, **options):  # type: ignore[no-untyped-def, override]
        self.started += 1
        assert self.release.wait(30), "the test never released the transcription"
        return super().transcribe(samples, **options)


async def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
