"""Privacy and hygiene: audio never touches the disk, transcripts and keys never reach the logs, and nothing a
request says can point the service at a file."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from websockets.sync.client import connect

from app.main import create_app
from app.settings import Settings
from app.speech.engine import Engine
from tests.support.audio import speak
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def big_wav(speech_wav: Path) -> bytes:
    """About 2.5 MB: over Starlette's 1 MB spooling threshold."""
    samples, rate = soundfile.read(speech_wav, dtype="int16")
    repeated = np.tile(samples, int(np.ceil(80 * rate / len(samples))))[: 80 * rate]
    buffer = io.BytesIO()
    soundfile.write(buffer, repeated, rate, format="WAV", subtype="PCM_16")
    assert len(buffer.getvalue()) > 2_000_000
    return buffer.getvalue()


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
async def test_uploads_never_touch_the_disk(
    small_model_dir: Path, big_wav: bytes, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.load(Settings(model_dir=small_model_dir, backend="numpy", beam_width=16))
    app = create_app(Settings(model_dir=small_model_dir), engine)
    created: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        original = getattr(tempfile, name)

        def recording(*args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            created.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, recording)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.post(
            route, files={"file": ("long.wav", big_wav, "audio/wav")}, data={"model": "x"}
        )
    assert response.status_code == 200, response.text
    assert created == [], f"the upload went through a temporary file: {created}"


def test_transcripts_and_keys_stay_out_of_the_logs(tmp_path: Path) -> None:
    sentence = "turn on the kitchen lights"
    wav = speak(sentence, tmp_path / "speech.wav")
    key = "s3cret-key-for-the-log-test"
    env = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_BEAM_WIDTH": "64", "DS_API_KEY": key}
    with running_server(env) as base:
        headers = {"Authorization": f"Bearer {key}"}
        upload = httpx.post(
            f"{base}/transcribe", files={"file": ("a.wav", wav.read_bytes())}, headers=headers
        )
        assert (
            upload.status_code == 200 and upload.json()["text"] == sentence
        )  # there is a transcript to leak
        pcm = soundfile.read(wav, dtype="int16")[0].tobytes()
        with connect(base.replace("http", "ws") + f"/stream?api_key={key}") as ws:
            ws.send(pcm)
            ws.send(json.dumps({"type": "eof"}))
            final = [json.loads(m) for m in ws][-1]
        assert final["text"] == sentence
        logs = base.log.read_text()
    assert "/transcribe" in logs and "/stream" in logs  # the requests were logged...
    assert "kitchen" not in logs  # ...without what was said
    assert key not in logs  # uvicorn's websocket line had ?api_key=: redacted


async def test_no_request_field_chooses_a_model_file(small_model_dir: Path, speech_wav: Path) -> None:
    """`model` (OpenAI) is a label, and stray fields or query parameters are ignored: the service serves the model
    of DS_MODEL_DIR and opens no path a client names."""
    engine = Engine.load(Settings(model_dir=small_model_dir, backend="numpy", beam_width=16))
    app = create_app(Settings(model_dir=small_model_dir), engine)
    schema = app.openapi()
    for path in ("/transcribe", "/v1/audio/transcriptions"):
        params = {p["name"] for p in schema["paths"][path]["post"].get("parameters", [])}
        assert not params & {"model_dir", "scorer", "path", "file", "alphabet"}, params
    stray = {"model_dir": "/etc", "scorer": "/etc/passwd", "alphabet": "/etc/passwd"}
    audio = {"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        plain = (await http.post("/transcribe", files=audio)).json()
        tampered = await http.post("/transcribe", params=stray, files=audio, data=stray)
        assert tampered.status_code == 200
        assert {**tampered.json(), "processing_seconds": 0} == {**plain, "processing_seconds": 0}
        openai = await http.post(
            "/v1/audio/transcriptions", files=audio, data={**stray, "model": "/etc/passwd"}
        )
        assert openai.status_code == 200 and openai.json()["text"] == plain["text"]
