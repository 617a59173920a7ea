"""`python -m app [--host H] [--port P] [--model-dir DIR]`: serve with the DS_* settings (what `make serve` and
the launchd job run), so one set of variables configures everything; a flag overrides its variable.
`uvicorn app.main:app --host ... --port ...` works too, for those who want uvicorn's other options."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from app.main import app_from_environment, settings_problems
from app.settings import Settings

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains the app (app/service/drain.py) before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, grace_seconds: float) -> None:
        super().__init__(config)
        self.grace_seconds = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining is not None or self._loop is None:
            super().handle_exit(sig, frame)  # Ctrl-C, a second SIGTERM, or before startup: uvicorn's way
            return
        self._draining = self._loop.create_task(self._drain())  # a signal handler runs on the loop's thread

    async def _drain(self) -> None:
        services = app_from_environment().state.services
        services.drain.begin()
        idle = await services.drain.wait_idle(services.admission, self.grace_seconds)
        if idle:
            log.info("drained: every request and stream finished; shutting down")
        self.should_exit = True


# Flag -> the DS_* variable it overrides (the app reads its settings from the environment, also in uvicorn's
# import of app.main:app, so a flag is passed down as its variable).
FLAGS = {"host": "DS_HOST", "port": "DS_PORT", "model_dir": "DS_MODEL_DIR"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve the DeepSpeech transcription service. Every setting is a DS_* environment variable "
        "(or a line in .env; see the README's settings table); these flags override their variable.",
    )
    parser.add_argument("--host", help="address to listen on (DS_HOST, default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, help="port to listen on (DS_PORT, default 8000)")
    parser.add_argument(
        "--model-dir", help="model directory written by scripts/convert.py (DS_MODEL_DIR, default models/default)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, variable in FLAGS.items():
        if getattr(args, name) is not None:
            os.environ[variable] = str(getattr(args, name))
    try:
        settings = Settings()
    except ValidationError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("app").critical("cannot start: %s", settings_problems(exc))
        return 1
    config = uvicorn.Config(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,  # after the drain, for whatever it left (its grace is over by then)
        # uvicorn reads a websocket only as fast as the app takes its messages, so a client's pong waits behind
        # every audio frame not yet transcribed: with a ping timeout, a server running 20 s behind under load
        # would close live streams (1011) without a word. Dead clients are caught by DS_STREAM_IDLE_TIMEOUT and
        # DS_STREAM_SEND_TIMEOUT instead.
        ws_ping_timeout=None,
    )
    server = DrainingServer(config, settings.shutdown_grace_seconds)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
