"""The real-server harness: the service in a subprocess on a free loopback port, up once it answers, stopped
(terminate, then kill) on exit. The end-to-end tests run it as `python -m app`; scripts/bench.py runs the same
harness with uvicorn's own command line, its log kept in its cache and /ready as the sign that it is up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent

# How a start that went wrong is reported: the server's exit status (None: it was not up within `wait_s`), its
# log, and `wait_s`. The default fails the test; the bench raises its own error.
OnFailure = Callable[[int | None, Path, float], NoReturn]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    env: dict[str, str],
    port: int,
    log: Path | None = None,
    *,
    uvicorn_options: Sequence[str] | None = None,
    inherit_env: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """`python -m app`, as `make serve` and the launchd job run it: host and port from DS_HOST/DS_PORT. With
    `uvicorn_options`, `python -m uvicorn app.main:app --host 127.0.0.1 --port PORT` followed by them instead (for
    uvicorn's own settings, which `python -m app` does not take).

    The environment is the caller's with `env` over it, or without `inherit_env` `env` alone (plus DS_HOST and
    DS_PORT). Its output goes to `log` if given (a pipe nobody reads would fill up and block the server), else to
    a pipe. `preexec_fn` runs in the child before exec (resource limits)."""
    command = [sys.executable, "-m", "app"]
    if uvicorn_options is not None:
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), *uvicorn_options]
    base = os.environ if inherit_env else {}
    environment = {**base, "DS_HOST": "127.0.0.1", "DS_PORT": str(port), **env}
    if log is None:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,
        )
    with log.open("w") as out:  # the child has its own copy of the file
        return subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn
        )


def stop_server(process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """SIGTERM (the service drains first), and SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ServerUrl(str):
    """The base URL of a running server, with its process id, the file its log goes to and the seconds it took
    from starting the process to being up."""

    log: Path
    pid: int
    process: subprocess.Popen[str]  # to signal it and read its exit status
    start_seconds: float

    @property
    def ws(self) -> str:
        return self.replace("http://", "ws://", 1)


def fail_test(returncode: int | None, log: Path, wait_s: float) -> NoReturn:
    import pytest

    if returncode is not None:
        pytest.fail(f"server exited: {log.read_text()}")
    pytest.fail(f"server did not come up in {wait_s:g} s: {log.read_text()}")


@contextmanager
def running_server(
    env: dict[str, str],
    *,
    log: Path | None = None,
    ready: str = "/health",
    wait_s: float = 60.0,
    on_failure: OnFailure = fail_test,
    uvicorn_options: Sequence[str] | None = None,
    inherit_env: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[ServerUrl]:
    """A real server (`start_server`) on a free loopback port, up once `ready` answers 200; stopped on exit.

    Its log goes to `log`, which is kept, or else to a temporary file removed on exit. If it exits or is not up
    within `wait_s` (it is killed then), `on_failure` says so: by default the test fails."""
    port = free_port()
    temporary = log is None
    log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1]) if log is None else log
    started = time.monotonic()
    process = start_server(
        env, port, log_path, uvicorn_options=uvicorn_options, inherit_env=inherit_env, preexec_fn=preexec_fn
    )
    base = ServerUrl(f"http://127.0.0.1:{port}")
    base.log, base.pid, base.process = log_path, process.pid, process
    deadline = started + wait_s
    try:
        while True:
            if process.poll() is not None:
                on_failure(process.returncode, log_path, wait_s)
            if time.monotonic() > deadline:
                process.kill()
                on_failure(None, log_path, wait_s)
            try:
                if httpx.get(f"{base}{ready}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        base.start_seconds = time.monotonic() - started
        yield base
    finally:
        stop_server(process)
        if temporary:
            log_path.unlink(missing_ok=True)
