"""The upload use case every HTTP transport shares: decode under the worker limit, transcribe, observe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from anyio.to_thread import run_sync

from app.service.admission import Ticket
from app.service.incremental import transcribe_in_pieces, transcript_events
from app.service.services import Services
from app.speech.audio import SAMPLE_RATE, decode_audio
from app.speech.decoding import HotWords
from app.speech.engine import Transcription


@dataclass(frozen=True)
class UploadTranscription:
    result: Transcription
    duration: float  # seconds of decoded audio


async def transcribe_upload(
    services: Services,
    route: str,
    data: bytes,
    *,
    hot_words: Mapping[str, float] | HotWords | None = None,
    alternatives: int = 1,
    ticket: Ticket | None = None,
    progress: Callable[[float], None] | None = None,
) -> UploadTranscription:
    """A whole file: decoding counts against the workers too (a compressed upload can take long to decode).
    `ticket`: the queue place taken before the upload was read (else one is taken now). With `progress`, the
    same transcription a piece at a time, telling it the share done (a batch job)."""
    async with ticket if ticket is not None else services.admission.reserve():
        samples, duration = await run_sync(decode_audio, data, services.settings.max_audio_seconds)
        engine = services.engine
        if progress is not None:
            result = await transcribe_in_pieces(engine, samples, progress, hot_words, alternatives)
        else:
            result = await run_sync(lambda: engine.transcribe(samples, hot_words=hot_words, alternatives=alternatives))
    services.metrics.observe(route, result.duration, result.processing_seconds)
    services.metrics.observe_utterances(route, result.utterances)
    await services.return_memory(result.duration)
    return UploadTranscription(result, duration)


class StreamedTranscription:
    """An upload transcribed as events: its queue place is taken (and the audio decoded) before the response
    starts, so a full queue is refused before a status line goes out; its worker slot is taken in `events`."""

    def __init__(
        self, services: Services, route: str, samples: np.ndarray, hot_words: HotWords | None, ticket: Ticket
    ) -> None:
        self._services = services
        self._route = route
        self._samples = samples
        self._hot_words = hot_words
        self._ticket = ticket

    @classmethod
    async def start(
        cls,
        services: Services,
        route: str,
        data: bytes,
        hot_words: HotWords | None,
        ticket: Ticket | None = None,
    ) -> StreamedTranscription:
        if ticket is None:  # else taken before the upload was read
            ticket = services.admission.reserve()  # ServiceBusy now, while an error status can still be sent
        try:
            samples, _ = await run_sync(decode_audio, data, services.settings.max_audio_seconds)
        except BaseException:
            ticket.release()
            raise
        return cls(services, route, samples, hot_words, ticket)

    def release(self) -> None:
        """Give the queue place or worker back (idempotent; also when the events never ran: client gone)."""
        self._ticket.release()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """`transcript.text.delta` events as words become certain, then `transcript.text.done`."""
        computing = [0.0]  # seconds spent computing, not waiting on the client: for the RTF metric
        async with self._ticket:
            engine = self._services.engine
            async for event in transcript_events(engine, self._samples, self._hot_words, computing.append):
                yield event
        self._services.metrics.observe(self._route, len(self._samples) / SAMPLE_RATE, sum(computing))
        await self._services.return_memory(len(self._samples) / SAMPLE_RATE)
