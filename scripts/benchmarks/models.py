"""Model directories, the in-process engine on them, and a real uvicorn serving them (the tests' harness,
tests/support/server.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from tests.support.server import ServerUrl, running_server

from .common import BEAM_WIDTH, CACHE, ROOT, SAMPLE_RATE, BenchError, foreign_settings, log


def ensure_model(name: str) -> Path:
    """`default`, `2048` (random weights at width 2048, generated once into .cache/bench/random-2048) or a path."""
    if name == "default":
        path = ROOT / "models" / "default"
    elif name.isdigit():
        path = CACHE / f"random-{name}"
        if not (path / "manifest.json").exists():
            log(f"making a random-weight width-{name} model in {path} (convert.py; once, then cached)")
            started = time.monotonic()
            made = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "make_random_model.py"), "--width", name]
                + ["--out", str(path), "--force"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            if made.returncode != 0:
                raise BenchError(
                    f"making the width-{name} model failed (it needs the convert extra: pip install -e "
                    f"'.[convert]'):\n{made.stderr[-2000:]}"
                )
            log(f"made {path} in {time.monotonic() - started:.0f} s")
    else:
        path = Path(name)
    if not (path / "manifest.json").exists():
        raise BenchError(f"{path} is not a model directory (no manifest.json)")
    return path.resolve()


def engine_settings(model_dir: Path) -> Any:
    """Settings for an in-process Engine: the service's defaults (DS_* variables and .env ignored) with the
    NumPy backend, beam 500 and the model directory's scorer if it has one, and no utterance endpoints: the
    native client decodes a file as one utterance, and so do ours here (a cut at a pause restarts the LM's
    sentence, which changes a word here and there)."""
    from app.settings import Settings

    saved = {k: os.environ.pop(k) for k in foreign_settings()}
    try:
        return Settings(
            _env_file=None,
            model_dir=model_dir,
            backend="numpy",
            decoder="beam",
            beam_width=BEAM_WIDTH,
            endpoint_silence_ms=0,
            max_utterance_seconds=0,
        )
    finally:
        os.environ.update(saved)


def server_env(model_dir: Path, **extra: str) -> dict[str, str]:
    """The whole environment of a uvicorn subprocess: the caller's without its DS_* settings, then the same
    settings as `engine_settings`, plus limits that a benchmark must not hit."""
    inherited = {k: v for k, v in os.environ.items() if k not in foreign_settings()}
    return {
        **inherited,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DS_MODEL_DIR": str(model_dir),
        "DS_BACKEND": "numpy",
        "DS_DECODER": "beam",
        "DS_BEAM_WIDTH": str(BEAM_WIDTH),
        "DS_MAX_STREAMS": "512",
        "DS_STREAM_IDLE_TIMEOUT": "900",
        "DS_LOG_LEVEL": "warning",
        **extra,
    }


class NetworkTimer:
    """Adds up the seconds a model spends in its `run*` methods, wrapped on the instance (outermost call only)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self._depth = threading.local()
        self._names: list[str] = []

    def __enter__(self) -> NetworkTimer:
        for name in dir(type(self.model)):
            if name.startswith("run") and callable(getattr(self.model, name, None)):
                setattr(self.model, name, self._wrap(getattr(self.model, name)))
                self._names.append(name)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._names:
            with contextlib.suppress(AttributeError):
                delattr(self.model, name)
        self._names.clear()

    def _wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.value = depth
                if depth == 0:
                    self.seconds += time.perf_counter() - started

        return timed


@dataclass
class LoadedModel:
    name: str
    path: Path
    engine: Any
    width: int
    decoder: str  # the decoder's description, e.g. "beam 500, kenlm kenlm.scorer"
    scorer: Path | None

    @property
    def wide(self) -> bool:
        return self.width >= 1024


def load_model(name: str) -> LoadedModel:
    from app.speech.engine import Engine

    path = ensure_model(name)
    engine = Engine.load(engine_settings(path))
    warm = np.zeros(SAMPLE_RATE, np.float32)  # as the server's warm-up: weights faulted in, lazy init paid
    engine.transcribe(warm)
    session = engine.open_stream()
    session.feed(warm)
    session.finish()
    scorer = getattr(getattr(engine.decoder, "scorer", None), "path", None)
    return LoadedModel(name, path, engine, engine.model.n_cell_dim, engine.decoder.description, scorer)


def close_model(model: LoadedModel) -> None:
    close = getattr(model.engine, "close", None)  # a stream batcher's thread, where the engine has one
    if close is not None:
        close()


# uvicorn's own options, which `python -m app` does not take: streams of minutes must not be pinged away.
UVICORN_OPTIONS = ("--log-level", "warning", "--ws-ping-interval", "600", "--ws-ping-timeout", "600")
READY_WAIT_S = 600.0  # the width-2048 model takes minutes to load and warm up on a busy machine


def _server_failed(returncode: int | None, log_path: Path, wait_s: float) -> NoReturn:
    if returncode is not None:
        raise BenchError(f"the server exited with {returncode}:\n{_tail(log_path)}")
    raise BenchError(f"the server was not ready in {wait_s:g} s:\n{_tail(log_path)}")


@contextlib.contextmanager
def uvicorn_server(model_dir: Path, tag: str, **env: str) -> Iterator[ServerUrl]:
    """A real uvicorn (`python -m uvicorn app.main:app`) on a free loopback port, up once /ready answers 200: the
    tests' harness, with the environment of `server_env` alone and its log kept in .cache/bench/server-TAG.log."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with running_server(
        server_env(model_dir, **env),
        inherit_env=False,
        uvicorn_options=UVICORN_OPTIONS,
        log=CACHE / f"server-{tag}.log",
        ready="/ready",
        wait_s=READY_WAIT_S,
        on_failure=_server_failed,
    ) as server:
        yield server


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
