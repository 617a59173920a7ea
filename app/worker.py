"""`python -m app.worker`: batch-job workers on any machine that has the model directory and DS_REDIS_URL.

Each runs jobs from the queue the service's POST /jobs fills, through the same engine and upload use case
(so a job's result does not depend on which machine ran it, up to float32 rounding between CPUs). SIGTERM
(launchd's stop): running jobs finish within DS_SHUTDOWN_GRACE_SECONDS, or go back to the queue for another
worker; SIGKILL or a lost machine: the job's heartbeat stops and another worker's sweep re-queues it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from pydantic import ValidationError

from app.main import STARTUP_ERRORS, settings_problems
from app.service.job_runner import JobRunner
from app.service.services import Services, warm_up
from app.settings import Settings
from app.speech.engine import Engine
from app.web.logs import configure_logging

log = logging.getLogger("app.worker")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="jobs run at once (default DS_JOB_WORKERS, or 1 if that is 0)")
    parser.add_argument("--model-dir", help="the model directory (default DS_MODEL_DIR)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = {"model_dir": args.model_dir} if args.model_dir else {}
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        configure_logging()
        log.critical("cannot start: %s", settings_problems(exc))
        return 1
    configure_logging(settings.log_format, settings.log_level.upper())
    if not settings.redis_url:
        log.critical("cannot start: set DS_REDIS_URL (e.g. redis://mac-mini.local:6379/0): workers take jobs from it")
        return 1
    try:
        engine = Engine.load(settings)
    except STARTUP_ERRORS as exc:
        log.critical("cannot start: %s", exc)
        return 1
    services = Services.create(settings, engine)
    services.mark_ready(warm_up(engine))
    concurrency = args.jobs or settings.job_workers or 1
    worker = JobRunner(services, services.jobs).worker(concurrency, in_process=False)
    log.info("worker: %d job(s) at once from %s", concurrency, settings.redis_url)
    asyncio.run(worker.start())  # SAQ takes SIGTERM/SIGINT: finish or re-queue, then return
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
