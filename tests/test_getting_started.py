"""What a newcomer meets first: `python -m app`'s command line, /info without host paths, /docs that works
offline, OpenAI-shaped answers for what /v1 does not offer, and `make system-deps` waiting for dpkg's lock."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import NotFoundError, OpenAI

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.server import free_port, stop_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(small_engine: Engine) -> Iterator[TestClient]:
    settings = Settings(model_dir=small_engine.model_dir.path, api_key="k3y")
    with TestClient(create_app(settings, small_engine)) as test_client:
        yield test_client


def test_help_describes_the_flags_and_serves_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in ("--host", "--port", "--model-dir"):
        assert flag in result.stdout
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_flags_override_the_environment(small_model_dir: Path) -> None:
    port = free_port()
    env = {"DS_PORT": "1", "DS_MODEL_DIR": "/nonexistent", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "app", "--port", str(port), "--model-dir", str(small_model_dir)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"python -m app --port {port} did not answer (exit {process.poll()})")
        assert info.json()["model"]["name"] == small_model_dir.name
    finally:
        stop_server(process)  # type: ignore[arg-type]


def test_bad_flag_value_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--port", "http"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "invalid int value: 'http'" in result.stderr


def test_info_names_no_paths(client: TestClient) -> None:
    body = client.get("/info", headers={"Authorization": "Bearer k3y"}).text
    assert str(ROOT) not in body and "/tmp/" not in body and '"path"' not in body, body


def test_info_of_the_shipped_model_hides_the_build_machine(small_engine: Engine) -> None:
    shipped = Engine.load(Settings(model_dir=ROOT / "models" / "default", backend="numpy", beam_width=8))
    info = shipped.info()
    source = info["model"]["source"]  # type: ignore[index]
    assert not [v for v in source.values() if str(v).startswith(("/", "~")) or str(ROOT) in str(v)], source
    assert info["decoder"]["scorer"]["name"] == "kenlm.scorer"  # type: ignore[index]


def test_docs_load_their_assets_from_the_service(client: TestClient) -> None:
    page = client.get("/docs").text  # public, no key
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 200


def test_translations_answer_in_openais_shape(client: TestClient, small_engine: Engine) -> None:
    sdk = OpenAI(base_url="http://testserver/v1", api_key="k3y", http_client=client, max_retries=0)
    with pytest.raises(NotFoundError) as raised:
        sdk.audio.translations.create(file=("a.wav", b"RIFF"), model="whisper-1")
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "translation_not_supported"
    assert "/v1/audio/transcriptions" in error["message"]
    unknown = client.get("/v1/nothing-here", headers={"Authorization": "Bearer k3y"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    elsewhere = client.get("/nothing-here", headers={"Authorization": "Bearer k3y"})
    assert elsewhere.json() == {"detail": "Not Found"}  # the rest keeps FastAPI's shape


def test_system_deps_waits_for_the_dpkg_lock() -> None:
    result = subprocess.run(
        ["make", "-n", "system-deps", "SYSTEM_PACKAGES=no-such-package-for-this-test"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    commands = result.stdout
    assert commands.count("-o DPkg::Lock::Timeout=") >= 2, commands  # update and install


def test_make_serve_installs_the_service_alone(tmp_path: Path) -> None:
    """What `make serve` would run on a fresh clone: a venv with the service alone, no convert/train/test extras
    (TensorFlow, torch, playwright); `make test` adds them to the same venv."""
    fresh = f"VENV={tmp_path / 'venv'}"
    serve = subprocess.run(["make", "-n", "serve", fresh], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 0, serve.stderr
    installs = [line for line in serve.stdout.splitlines() if "pip install" in line and " -e " in line]
    assert installs and all("[convert" not in line and "test]" not in line for line in installs), installs
    assert "python -m app" in serve.stdout
    test = subprocess.run(["make", "-n", "test", fresh], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "-e '.[convert,train,test,download]'" in test.stdout


def test_readme_names_every_package_make_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^SYSTEM_PACKAGES := (.+)$", makefile, flags=re.M)
    assert packages is not None
    readme = (ROOT / "README.md").read_text()
    assert f"`{packages[1].strip()}`" in readme, "README's list of the Debian packages `make` installs"
