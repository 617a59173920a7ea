"""`python -m app`: serve with the host, port and log level from the DS_* settings (what `make serve` and the
launchd job run), so one set of variables configures everything. `uvicorn app.main:app --host ... --port ...`
works too, for those who want uvicorn's other options."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from app.main import settings_problems
from app.settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("app").critical("cannot start: %s", settings_problems(exc))
        return 1
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # SIGTERM (launchd's stop, `kill`): stop accepting, let requests in flight finish for this long.
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
