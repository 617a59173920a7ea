"""The Wyoming listener `python -m app` runs beside HTTP when DS_WYOMING_URI is set: same process, same engine,
same limits, metrics (route `wyoming`) and drain as the websockets.

Each connection is a StreamController over a WyomingChannel in the WyomingDialect. Draining (SIGTERM) closes the
listener at once, so new connections are refused, while open ones get their transcript (the controller ends
them as it ends websocket streams). Wyoming has no authentication: the default URI binds to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from app.service.services import Services
from app.service.streams import StreamController
from app.speech.decoding import parse_hot_words
from app.wyoming.address import WyomingAddress
from app.wyoming.channel import WyomingChannel
from app.wyoming.dialect import WyomingDialect
from app.wyoming.events import MAX_LINE_BYTES
from app.wyoming.zeroconf import Advertisement

log = logging.getLogger(__name__)

DEEPSPEECH = Attribution(name="Mozilla DeepSpeech", url="https://github.com/mozilla/DeepSpeech")


def info_event(services: Services) -> dict[str, Any]:
    """`describe`'s answer: one ASR program (this service) with one model (the loaded one)."""
    engine, settings = services.engine, services.settings
    source = engine.model_dir.manifest.source
    model = AsrModel(
        name=engine.model_dir.name,
        description=f"DeepSpeech ({source.get('name', engine.model_dir.name)}), {engine.decoder.description}",
        attribution=DEEPSPEECH,
        installed=True,
        languages=[settings.language],
        version=str(source.get("version", "")) or None,
    )
    program = AsrProgram(
        name="deepspeech-coreml",
        description="Private, on-premise speech-to-text: Mozilla DeepSpeech on Core ML, with streaming transcripts",
        attribution=DEEPSPEECH,
        installed=True,
        version=_version(),
        models=[model],
        supports_transcript_streaming=True,
    )
    described = Info(asr=[program]).event()
    return {"type": described.type, "data": described.data}


def _version() -> str | None:
    try:
        return version("deepspeech-coreml-service")
    except PackageNotFoundError:
        return None


class WyomingServer:
    """The listener and its connections."""

    def __init__(self, services: Services, address: WyomingAddress) -> None:
        self.services = services
        self.address = address
        self._info = info_event(services)
        hot = services.settings.wyoming_hot_words
        self._hot_words = parse_hot_words([hot]) if hot else None
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._advertisement: Advertisement | None = None

    async def start(self, listener: socket.socket | None = None) -> None:
        """Serve on `listener` (else bind the address now: OSError if it is taken), advertise if asked, and stop
        listening on drain."""
        a = self.address
        listener = listener or a.bind()
        if a.scheme == "tcp":
            self._server = await asyncio.start_server(self._serve, sock=listener, limit=MAX_LINE_BYTES)
        else:
            self._server = await asyncio.start_unix_server(self._serve, sock=listener, limit=MAX_LINE_BYTES)
        log.info(
            "Wyoming speech-to-text on %s (no authentication: bind to loopback unless the LAN is trusted)",
            self.uri,
        )
        name = self.services.settings.wyoming_zeroconf
        if name:
            self._advertisement = await Advertisement.register(name, a.host, self.port)
        self._watch = asyncio.ensure_future(self._stop_on_drain())

    @property
    def port(self) -> int:
        """The TCP port listened on (the real one when the URI said 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1]) if self.address.scheme == "tcp" else 0

    @property
    def uri(self) -> str:
        a = self.address
        return f"tcp://{a.host}:{self.port}" if a.scheme == "tcp" else f"unix://{a.path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialect = WyomingDialect(self._info, self.services.settings.language, self._hot_words)
        try:
            await StreamController(self.services, WyomingChannel(reader, writer), dialect).run()
        except Exception:  # the controller ends its own failures; anything else must not reach asyncio's loop
            log.exception("wyoming: a connection failed; the server goes on")
        finally:
            writer.close()

    async def _stop_on_drain(self) -> None:
        await self.services.drain.event.wait()
        self._stop_listening()

    def _stop_listening(self) -> None:
        if self._server is not None and self._server.is_serving():
            self._server.close()  # refuses new connections; the open ones go on to their transcript
            log.info("Wyoming: no new connections (draining)")

    async def close(self) -> None:
        """Stop listening and advertising (the lifespan's end; connections were drained before)."""
        self._stop_listening()
        if self._watch is not None:
            self._watch.cancel()
        if self._advertisement is not None:
            await self._advertisement.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
