"""`python -m app [--host H] [--port P] [--model-dir DIR]`: serve with the DS_* settings (what `make serve` and
the launchd job run), so one set of variables configures everything; a flag overrides its variable.
`uvicorn app.main:app --host ... --port ...` works too, for those who want uvicorn's other options."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from app.main import app_from_environment, settings_problems
from app.settings import Settings
from app.web.connections import UNLIMITED_FILES, guarded_protocol
from app.web.logs import configure_logging

log = logging.getLogger("app")

# After a spent grace, what uvicorn still waits before cancelling the requests left (they were told 503/1001).
GRACE_SPENT_WAIT = 0.2


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
        else:  # the grace is spent: uvicorn's own graceful wait would add its timeout on top of it
            self.config.timeout_graceful_shutdown = GRACE_SPENT_WAIT  # type: ignore[assignment]  # a float works: asyncio.wait_for
        self.should_exit = True


# Each websocket, upload and model file holds a descriptor, and a Terminal's default soft limit of 256 runs out
# under a few hundred streams; the hard limit is what the soft one may be raised to without privileges. On Linux it
# is often 2**20 or more: cap it, since some code (a child process closing inherited descriptors) walks them all.
OPEN_FILES_CAP = UNLIMITED_FILES  # one value with the connection cap's idea of "unlimited"
# macOS's setrlimit refuses a soft RLIMIT_NOFILE above min(OPEN_MAX, kern.maxfilesperproc) even when the hard
# limit is RLIM_INFINITY (its default for Terminal and launchd jobs): setrlimit(2), COMPATIBILITY.
DARWIN_OPEN_MAX = 10240


def open_file_target(
    soft: int, hard: int, platform: str = sys.platform, per_process_max: int | None = None
) -> int:
    """The soft open-file limit to ask for: the hard limit, capped, never below the current soft limit."""
    ceiling = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CAP)
    if platform == "darwin":
        ceiling = min(ceiling, DARWIN_OPEN_MAX, per_process_max or DARWIN_OPEN_MAX)
    if soft == resource.RLIM_INFINITY:
        return soft
    return max(soft, ceiling)


def darwin_max_files_per_process() -> int | None:
    """kern.maxfilesperproc, which an administrator may have set below OPEN_MAX; None where it cannot be read."""
    if sys.platform != "darwin":
        return None
    import ctypes

    try:
        sysctlbyname = ctypes.CDLL(None).sysctlbyname
    except (OSError, AttributeError):
        return None
    # Declared, so that the size_t arguments are passed as 64-bit values on arm64.
    sysctlbyname.argtypes = [
        ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p, ctypes.c_size_t
    ]
    sysctlbyname.restype = ctypes.c_int
    value, size = ctypes.c_int(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
    if sysctlbyname(b"kern.maxfilesperproc", ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return None
    return value.value if value.value > 0 else None


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one (see OPEN_FILES_CAP); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = open_file_target(soft, hard, per_process_max=darwin_max_files_per_process())
    if target == soft:
        log.info("open files: soft limit %s (hard %s)", soft, _limit_text(hard))
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files: could not raise the soft limit from %s to %s: %s", soft, target, exc)
        return soft
    log.info("open files: raised the soft limit from %s to %s (hard %s)", soft, target, _limit_text(hard))
    return target


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


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
    # Configured here as well as when uvicorn imports the app, so that the line below is in the service's format.
    configure_logging(settings.log_format, settings.log_level.upper())
    open_files = raise_open_file_limit()
    config = uvicorn.Config(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,  # after the drain, for whatever it left (its grace is over by then)
        # uvicorn reads a websocket only as fast as the app takes its messages; a stream takes them as they come,
        # but only DS_STREAM_BACKLOG_SECONDS ahead of the model (app/routes/websocket.py), so a client further
        # ahead has its pong wait behind the audio: with a ping timeout, a server running far behind under load
        # would close live streams (1011) without a word. Dead clients are caught by DS_STREAM_IDLE_TIMEOUT and
        # DS_STREAM_SEND_TIMEOUT instead.
        ws_ping_timeout=None,
        # httptools with a header deadline, a header size cap and a connection cap (app/web/connections.py)
        http=guarded_protocol(settings, open_files),
    )
    server = DrainingServer(config, settings.shutdown_grace_seconds)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
