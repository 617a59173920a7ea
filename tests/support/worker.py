"""A real `python -m app.worker` (a batch-job worker) with its log in a file: for the jobs tests and the bench."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.server import ROOT, stop_server


def fail_test(message: str) -> None:
    import pytest

    pytest.fail(message)


class WorkerProcess:
    """One worker process; `inherit_env` as for the servers (the bench runs workers on `env` alone)."""

    def __init__(self, env: dict[str, str], log: Path, *, inherit_env: bool = True) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.worker"],
                cwd=ROOT,
                env={**os.environ, **env} if inherit_env else env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_started(
        self, timeout: float = 60.0, on_failure: Callable[[str], None] = fail_test
    ) -> WorkerProcess:
        """Until SAQ says it started; `on_failure` hears why not (the worker exited, or took too long)."""
        deadline = time.monotonic() + timeout
        while "Worker starting" not in self.text():
            if self.process.poll() is not None:
                on_failure(f"the job worker exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                on_failure(f"the job worker did not start in {timeout:g} s:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def saq_lines(self, what: str, job_id: str) -> list[str]:
        """SAQ's log lines `what` ("Processing", "Finished", ...) about one job."""
        return [
            line for line in self.text().splitlines() if f"{what} Job<" in line and f"key: {job_id}," in line
        ]

    def stop(self) -> None:
        stop_server(self.process)
