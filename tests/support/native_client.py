"""The official DeepSpeech 0.9.3 native client, in a throwaway venv, as a reference to check our graphs against.

`deepspeech==0.9.3` (libdeepspeech.so with its own TensorFlow 2.3 and the ctcdecode beam search) has wheels only
for CPython 3.5-3.9, so it cannot live in the service's 3.11 venv and is never a dependency of the service. This
module finds a Python <= 3.9, builds (once, cached, under a lock) a venv with the wheel plus `ds-ctcdecoder`
(the same decoder as a Python module) and runs `native_client_runner.py` inside it as a subprocess.

    client = ensure_native_client()
    if isinstance(client, str):
        pytest.skip(client)              # why it is unavailable: no Python <= 3.9, no wheel, pip failed, ...
    result = client.transcribe(graph_pb, wav_16k_s16_mono)
    decoded = client.beam_search(probs, alphabet_txt)

Cache: `<repo>/.cache/ds093-venv` (`/.cache/` is git-ignored); `DS_NATIVE_VENV` overrides the location and
`DS_NATIVE_PYTHON` the interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEEPSPEECH_VERSION = "0.9.3"
# The wheel's extension is built against NumPy 1.x (`_ARRAY_API not found` under NumPy 2).
REQUIREMENTS = (
    f"deepspeech=={DEEPSPEECH_VERSION}",
    f"ds-ctcdecoder=={DEEPSPEECH_VERSION}",
    "numpy>=1.14.5,<2",
)
PYTHON_VERSIONS = ("3.9", "3.8", "3.7")  # the wheels exist for cp35..cp39; newest first
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_VENV = REPO / ".cache" / "ds093-venv"
RUNNER = Path(__file__).resolve().with_name("native_client_runner.py")
MARKER = "native-client.json"  # written last: a venv without it is half-built and gets rebuilt
PIP_TIMEOUT_S = 900

_PROBE = (
    "import sys, venv, ensurepip, platform; "
    "print('%d.%d.%d %s' % (sys.version_info[:3] + (platform.machine(),)))"
)


class NativeClientError(RuntimeError):
    """The runner failed (load error, crash, bad output); the message carries its stderr."""


@dataclass(frozen=True)
class NativeClient:
    venv: Path
    python: Path
    python_version: str
    created_s: (
        float | None
    )  # seconds this call spent creating the venv; None when it was reused from the cache

    def transcribe(
        self,
        model: Path,
        audio: Path,
        scorer: Path | None = None,
        chunk: int = 1000,
        lm_alpha: float | None = None,
        lm_beta: float | None = None,
        timeout: float = 300,
    ) -> dict[str, Any]:
        """`deepspeech.Model(model)`: stt, sttWithMetadata and a stream fed `chunk` samples at a time.

        Returns text, metadata_text, confidence, tokens [{text, timestep, start_time}], stream_text,
        stream_tokens, sample_rate and beam_width (read by the client from the graph's metadata), seconds.
        """
        args = ["transcribe", "--model", str(model), "--audio", str(audio), "--chunk", str(chunk)]
        if scorer is not None:
            args += ["--scorer", str(scorer)]
        if lm_alpha is not None and lm_beta is not None:
            args += ["--lm-alpha", repr(lm_alpha), "--lm-beta", repr(lm_beta)]
        return self._run(args, timeout)

    def beam_search(
        self,
        probs: np.ndarray,
        alphabet: Path,
        beam_width: int = 500,
        cutoff_prob: float = 1.0,
        cutoff_top_n: int = 40,
        timeout: float = 300,
    ) -> dict[str, Any]:
        """ds_ctcdecoder's CTC beam search without a scorer over `probs` (T, classes), blank last.

        The same decoder code the native client runs on its own probabilities, so feeding it ours compares the
        acoustic models alone. Returns text, confidence, tokens [{text, timestep, start_time}].
        """
        probs = np.asarray(probs)
        if probs.ndim != 2:
            raise ValueError(f"probs must be (time, classes), got shape {probs.shape}")
        with tempfile.TemporaryDirectory(prefix="ds093-probs-") as tmp:
            path = Path(tmp) / "probs.npy"
            np.save(path, probs.astype(np.float32))
            args = ["decode", "--probs", str(path), "--alphabet", str(alphabet), "--beam", str(beam_width)]
            args += ["--cutoff-prob", repr(cutoff_prob), "--cutoff-top-n", str(cutoff_top_n)]
            return self._run(args, timeout)

    def _run(self, args: Sequence[str], timeout: float) -> dict[str, Any]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)  # never let the 3.11 tree's packages leak into the 3.9 interpreter
        completed = subprocess.run(
            [str(self.python), str(RUNNER), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        if completed.returncode != 0:
            raise NativeClientError(
                f"native client runner {args[0]} exited with {_describe_rc(completed.returncode)}:\n"
                f"{_tail(completed.stderr)}\n{_tail(completed.stdout)}"
            )
        lines = [line for line in completed.stdout.splitlines() if line.strip()]
        try:
            return json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise NativeClientError(
                f"native client runner printed no JSON result:\n{_tail(completed.stdout)}"
            ) from exc


def ensure_native_client(venv: Path | None = None) -> NativeClient | str:
    """The cached native-client venv, created on first use; or a string saying why it is unavailable."""
    venv = Path(os.environ.get("DS_NATIVE_VENV") or venv or DEFAULT_VENV)
    found = find_python()
    if isinstance(found, str):
        return found
    python, version = found
    spec = {"base_python": str(python), "python_version": version, "requirements": list(REQUIREMENTS)}
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _locked(venv.with_name(venv.name + ".lock")):
        client = _reuse(venv, spec)
        if client is not None:
            return client
        return _create(venv, python, spec)


def find_python() -> tuple[Path, str] | str:
    """A working CPython 3.7-3.9 with venv and ensurepip: (executable, 'X.Y.Z machine') or why there is none.

    pyenv's `python3.9` shim exists on PATH even when 3.9 is not the selected version (it then exits 127), so
    every candidate is run, and pyenv's install directory is searched directly as well.
    """
    candidates: list[Path] = []
    if os.environ.get("DS_NATIVE_PYTHON"):
        candidates.append(Path(os.environ["DS_NATIVE_PYTHON"]))
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for minor in PYTHON_VERSIONS:
        exe = shutil.which(f"python{minor}")
        if exe:
            candidates.append(Path(exe))
        installed = sorted((pyenv_root / "versions").glob(f"{minor}.*/bin/python{minor}"), key=_version_key)
        candidates.extend(reversed(installed))
    tried: list[str] = []
    for exe in candidates:
        try:
            probe = subprocess.run([str(exe), "-c", _PROBE], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{exe}: {exc}")
            continue
        if probe.returncode != 0:
            tried.append(f"{exe}: exit {probe.returncode} {_tail(probe.stderr, 1)}")
            continue
        version = probe.stdout.strip()
        if ".".join(version.split(".")[:2]) not in PYTHON_VERSIONS:
            tried.append(f"{exe}: Python {version}")
            continue
        return exe, version
    detail = "; ".join(tried) if tried else "none on PATH or under pyenv"
    return (
        f"deepspeech=={DEEPSPEECH_VERSION} needs CPython 3.5-3.9 with venv/ensurepip (tried "
        f"python{'/python'.join(PYTHON_VERSIONS)}: {detail}); set DS_NATIVE_PYTHON to one"
    )


def _reuse(venv: Path, spec: dict[str, Any]) -> NativeClient | None:
    marker = venv / MARKER
    python = _venv_python(venv)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if {key: recorded.get(key) for key in spec} != spec or not python.exists():
        return None
    check = subprocess.run(
        [str(python), "-c", "import deepspeech, ds_ctcdecoder, numpy"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    if check.returncode != 0:
        return None
    return NativeClient(venv, python, spec["python_version"], created_s=None)


def _create(venv: Path, base_python: Path, spec: dict[str, Any]) -> NativeClient | str:
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists() and any(venv.iterdir()):
            return f"{venv} exists and is not a venv; refusing to replace it (set DS_NATIVE_VENV elsewhere)"
        shutil.rmtree(venv)
    started = time.monotonic()
    made = subprocess.run(
        [str(base_python), "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    if made.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        return f"`{base_python} -m venv` failed: {_tail(made.stderr, 3)}"
    python = _venv_python(venv)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--retries", "2"]
    pip += ["--timeout", "30", *REQUIREMENTS]
    try:
        installed = subprocess.run(
            pip,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env={**os.environ, "PYTHONNOUSERSITE": "1"},
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        return f"pip install {' '.join(REQUIREMENTS)} took over {PIP_TIMEOUT_S} s (no index reachable?)"
    if installed.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        output = installed.stderr + installed.stdout
        hint = ""
        if "from versions: none" in output:
            hint = (
                f" (no wheel for CPython {spec['python_version']} on {sys.platform}; deepspeech 0.9.3 ships "
                "x86_64 Linux/macOS/Windows wheels only)"
            )
        lines = [
            line for line in output.splitlines() if "ERROR" in line or "error" in line
        ] or output.splitlines()
        return f"pip install {' '.join(REQUIREMENTS)} failed{hint}: {' | '.join(lines[-3:])}"
    created_s = time.monotonic() - started
    (venv / MARKER).write_text(
        json.dumps({**spec, "created_s": round(created_s, 1), "host": platform.platform()}, indent=1),
        encoding="utf-8",
    )
    return NativeClient(venv, python, spec["python_version"], created_s=created_s)


def _venv_python(venv: Path) -> Path:
    return venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so that concurrent test sessions build the venv once (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))


def _describe_rc(rc: int) -> str:
    return f"signal {-rc}" if rc < 0 else f"status {rc}"


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
