"""`python -m app` raises its soft open-file limit to the hard one at start (app/__main__.py).

A Terminal on macOS starts programs with a soft limit of 256 descriptors, and every websocket holds one; the
launchd job sets its own limits in the plist (tests/test_launchd.py), this covers everything else. Runs on macOS
too (the Mac workflow), where setrlimit's OPEN_MAX rule is the part that can go wrong.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.__main__ import DARWIN_OPEN_MAX, OPEN_FILES_CAP, darwin_max_files_per_process, open_file_target
from tests.support.server import ROOT, free_port, stop_server

INFINITY = resource.RLIM_INFINITY
# Enough for the interpreter and the imports before main() runs, well below what a server needs.
LOW_SOFT = 200


@pytest.mark.parametrize(
    ("soft", "hard", "platform", "per_process_max", "expected"),
    [
        (256, 20000, "linux", None, 20000),  # up to the hard limit
        (256, 2**20, "linux", None, OPEN_FILES_CAP),  # a systemd-sized hard limit is capped
        (256, INFINITY, "linux", None, OPEN_FILES_CAP),
        (100_000, 2**20, "linux", None, 100_000),  # never lowered
        (INFINITY, INFINITY, "linux", None, INFINITY),
        # macOS's default hard limit is unlimited; setrlimit then takes at most OPEN_MAX...
        (256, INFINITY, "darwin", None, DARWIN_OPEN_MAX),
        (256, INFINITY, "darwin", 4096, 4096),  # ...or kern.maxfilesperproc if that is lower
        (256, INFINITY, "darwin", 245760, DARWIN_OPEN_MAX),
        (256, 2048, "darwin", None, 2048),
        (4096, 10240, "darwin", 10240, 10240),  # the launchd plist's limits
    ],
)
def test_open_file_target(
    soft: int, hard: int, platform: str, per_process_max: int | None, expected: int
) -> None:
    assert open_file_target(soft, hard, platform, per_process_max) == expected


def test_max_files_per_process_is_read_on_macos_only() -> None:
    value = darwin_max_files_per_process()
    if sys.platform == "darwin":
        assert value is not None and value >= 1024  # read through sysctlbyname
    else:
        assert value is None


def soft_open_files(pid: int) -> int:
    """The soft 'Max open files' of a running process, from /proc/PID/limits (Linux)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def test_python_m_app_raises_a_low_soft_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != INFINITY and hard <= LOW_SOFT:
        pytest.skip(f"the hard open-file limit here ({hard}) leaves nothing to raise")
    expected = open_file_target(LOW_SOFT, hard, per_process_max=darwin_max_files_per_process())

    def low_soft_limit() -> None:  # in the child, before exec: what a Terminal's default does to it
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT, hard))

    log = tmp_path / "server.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    environment.update(
        DS_HOST="127.0.0.1", DS_PORT=str(free_port()), DS_MODEL_DIR=str(ROOT / "models" / "default")
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=low_soft_limit,
        )
    try:
        deadline = time.monotonic() + 60
        raised = re.compile(r"open files: raised the soft limit from (\d+) to (\d+)")
        while not (match := raised.search(log.read_text())):
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"no open-file line within 60 s: {log.read_text()}"
            time.sleep(0.1)
        assert (int(match.group(1)), int(match.group(2))) == (LOW_SOFT, expected)
        # Linux: what the kernel holds, not just what was logged.
        if Path(f"/proc/{process.pid}/limits").exists():
            assert soft_open_files(process.pid) == expected
    finally:
        stop_server(process)
