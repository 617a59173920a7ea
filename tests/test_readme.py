"""The README's examples, run as written against a real `python -m app` serving the shipped default model: the
espeak-ng + curl lines, the `curl` formats, the openai SDK, the websocket client and the Wyoming client. Only the addresses change
(free ports instead of 8000 and 10300), so what a newcomer pastes is what is tested."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerUrl, free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SENTENCE = "turn on the kitchen lights"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def block(language: str, marker: str) -> str:
    """The README's code block in `language` that contains `marker` (exactly one)."""
    found = [code for lang, code in BLOCKS if lang == language and marker in code]
    assert len(found) == 1, f"{len(found)} {language} blocks hold {marker!r}"
    return found[0]


WYOMING_PORT = free_port()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerUrl]:
    env = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_WYOMING_URI": f"tcp://127.0.0.1:{WYOMING_PORT}"}
    with running_server(env, ready="/ready") as url:
        yield url


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the README's hello.wav, made by its own espeak-ng line."""
    folder = tmp_path_factory.mktemp("readme")
    speak = next(line for line in block("sh", "espeak-ng -w hello.wav").splitlines() if "espeak-ng" in line)
    run_shell_lines(speak, folder)
    return folder


def on(server: ServerUrl, code: str) -> str:
    code = code.replace('"127.0.0.1", 10300', f'"127.0.0.1", {WYOMING_PORT}')
    return code.replace("127.0.0.1:8000", server.removeprefix("http://"))


def run_shell_lines(code: str, cwd: Path) -> list[str]:
    outputs = []
    for line in code.splitlines():
        line = line.split("  #")[0].strip()
        if line:
            result = subprocess.run(shlex.split(line), cwd=cwd, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{line}: {result.stderr}"
            outputs.append(result.stdout)
    return outputs


def run_python(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_first_example_espeak_and_curl(server: ServerUrl, workdir: Path) -> None:
    outputs = run_shell_lines(on(server, block("sh", "espeak-ng -w hello.wav")), workdir)
    answer = json.loads(outputs[-1])
    assert answer["text"] == SENTENCE
    assert answer["model"] == "default" and answer["words"][0]["word"] == "turn"


def test_curl_formats(server: ServerUrl, workdir: Path) -> None:
    code = block("sh", "format=srt")
    lines = [line for line in code.splitlines() if "hello.wav" in line]  # talk.m4a is the reader's own file
    assert lines, "the curl block transcribes hello.wav"
    (outputs,) = run_shell_lines(on(server, lines[0]), workdir)
    assert json.loads(outputs)["text"] == SENTENCE


def test_openai_sdk_example(server: ServerUrl, workdir: Path) -> None:
    out = run_python(on(server, block("python", "from openai import OpenAI")), workdir)
    first, *events = out.splitlines()
    assert first.startswith(SENTENCE + " ")
    assert "transcript.text.done" in events[-1] and SENTENCE in events[-1]


def test_websocket_example(server: ServerUrl, workdir: Path) -> None:
    out = run_python(on(server, block("python", "websockets.sync.client")), workdir)
    messages = [ast.literal_eval(line) for line in out.splitlines()]  # the example prints Python dicts
    assert messages[-1]["type"] == "final" and messages[-1]["text"] == SENTENCE
    assert any(m["type"] == "partial" for m in messages)


def test_wyoming_example(server: ServerUrl, workdir: Path) -> None:
    out = run_python(on(server, block("python", "AsyncTcpClient")), workdir)
    kinds = [line.split(" ", 1)[0] for line in out.splitlines()]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    assert f"'text': '{SENTENCE}'" in out.splitlines()[-2]
