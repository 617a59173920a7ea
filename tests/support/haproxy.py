"""A real HAProxy (Debian's; `.ci/run` installs it) running the repository's deploy/haproxy/haproxy.cfg on free
loopback ports, in front of replicas the test started: only the addresses (and the check interval) come from the
environment, as the config's own header says an operator sets them."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.server import ROOT, free_port, stop_server

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "replicas"
SERVERS = ("r1", "r2")  # the config's server names, which are the replicas' DS_REPLICA_ID values


def haproxy_binary() -> str | None:
    """`haproxy` on PATH, or Debian's /usr/sbin/haproxy (sbin is not on every user's PATH)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


class Balancer(str):
    """HAProxy's base URL (http://127.0.0.1:PORT), its stats page and its log."""

    stats: str  # base URL of the stats frontend
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def ws(self) -> str:
        return self.replace("http://", "ws://", 1)

    def server_status(self) -> dict[str, str]:
        """HAProxy's view of each replica: UP, DOWN, or a transition such as "UP 1/2" (from /stats;csv)."""
        text = httpx.get(f"{self.stats}/stats;csv", timeout=5).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] in SERVERS
        }

    def wait_for_status(self, wanted: Mapping[str, str], wait_s: float = 15.0) -> None:
        """Until HAProxy's checks have brought each named replica to the wanted status."""
        deadline = time.monotonic() + wait_s
        while True:
            status = self.server_status()
            if all(status.get(name) == state for name, state in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"HAProxy's replicas are {status}, not {dict(wanted)}: {self.log.read_text()}"
                )
            time.sleep(0.05)


@contextmanager
def running_haproxy(
    replicas: Mapping[str, str], *, check_inter: str = "500ms", wait_s: float = 15.0
) -> Iterator[Balancer]:
    """HAProxy with deploy/haproxy/haproxy.cfg in front of `replicas` ({"r1": "http://127.0.0.1:PORT", ...}),
    up once both its frontends answer and its checks see every replica UP; stopped on exit. Skips the test when
    HAProxy is not installed."""
    import pytest

    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (make test installs it: apt-get install haproxy)")
    assert set(replicas) == set(SERVERS), f"the config names replicas {SERVERS}"
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "LB_BIND": f"127.0.0.1:{port}",
        "LB_STATS_BIND": f"127.0.0.1:{stats_port}",
        "LB_CHECK_INTER": check_inter,
        **{f"LB_{name.upper()}": url.removeprefix("http://") for name, url in replicas.items()},
    }
    log = Path(tempfile.mkstemp(prefix="haproxy-", suffix=".log")[1])
    with log.open("w") as out:  # -db: stay in the foreground, logs (the config's `log stdout`) to the file
        process = subprocess.Popen(
            [binary, "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    balancer = Balancer(f"http://127.0.0.1:{port}")
    balancer.stats, balancer.log, balancer.process = f"http://127.0.0.1:{stats_port}", log, process
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"haproxy exited with {process.returncode}: {log.read_text()}")
            try:
                balancer.server_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"haproxy did not answer in {wait_s:g} s: {log.read_text()}")
                time.sleep(0.05)
        balancer.wait_for_status(dict.fromkeys(replicas, "UP"), wait_s)
        yield balancer
    finally:
        stop_server(process, timeout=10)
        log.unlink(missing_ok=True)
