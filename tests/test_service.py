"""The service in-process: POST /transcribe and the websocket /stream through the full path
(audio → features → runtime → decoder → HTTP/websocket) on a small random-weight model made by convert.py."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.speech.audio import decode_audio
from app.speech.decoding.greedy import greedy_decode
from app.speech.engine import Engine
from app.speech.features import features_for_file, frame_count
from app.speech.runtime import LstmState
from tests.support.audio import pcm16
from tests.support.lm import VOCABULARY_TEXT
from tests.support.protocol import stream_pcm


@pytest.fixture(scope="module")
def settings(small_model_dir: Path) -> Settings:
    return Settings(model_dir=small_model_dir, backend="numpy", beam_width=64, max_upload_bytes=2_000_000)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    return Engine.load(settings)


@pytest.fixture(scope="module")
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine)) as test_client:
        yield test_client


# --- POST /transcribe ----------------------------------------------------------------------------------------


def test_transcribe_wav(client: TestClient, engine: Engine, speech_wav: Path) -> None:
    response = client.post("/transcribe", files={"file": ("a.wav", speech_wav.read_bytes(), "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    samples, duration = decode_audio(speech_wav.read_bytes())
    assert body["duration"] == pytest.approx(duration, abs=1e-3)
    assert body["backend"] == "numpy" and body["model"] == "small" and body["decoder"] == "beam 64, no LM"
    # The HTTP answer is exactly what the pipeline computes for that audio.
    assert body["text"] == engine.transcribe(samples).transcript.text
    words = body["words"]
    assert " ".join(w["word"] for w in words) == body["text"]
    for word in words:
        assert 0 <= word["start"] < word["end"] <= duration + 0.2 and 0 <= word["confidence"] <= 1
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


def test_formats_and_rates_decode_to_the_same_audio(
    client: TestClient, speech_wav: Path, tmp_path: Path
) -> None:
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    wav_text = client.post("/transcribe", files={"file": speech_wav.read_bytes()}).json()["text"]
    flac = tmp_path / "a.flac"
    soundfile.write(flac, samples, 16000, subtype="PCM_16")
    assert client.post("/transcribe", files={"file": flac.read_bytes()}).json()["text"] == wav_text
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([samples, samples], axis=1), 16000, subtype="PCM_16")
    assert client.post("/transcribe", files={"file": stereo.read_bytes()}).json()["text"] == wav_text
    for name, rate, subtype in (
        ("b.ogg", 48000, "VORBIS"),
        ("c.wav", 44100, "FLOAT"),
        ("d.wav", 8000, "PCM_U8"),
    ):
        import soxr

        path = tmp_path / name
        soundfile.write(path, soxr.resample(samples, 16000, rate), rate, subtype=subtype)
        response = client.post("/transcribe", files={"file": path.read_bytes()})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["duration"] == pytest.approx(len(samples) / 16000, abs=0.01)


def test_long_audio_runs_in_windows_with_the_same_probabilities(engine: Engine, speech_wav: Path) -> None:
    """A file several times the dynamic bound: consecutive windows with state carried equal one pass."""
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    windows = features_for_file(np.tile(samples, 3))
    assert len(windows) > 3 * 37
    one_pass, _ = engine.model.run_window(windows, LstmState.zeros(engine.model.n_cell_dim))
    bounded = type(engine.model).__new__(type(engine.model))
    bounded.__dict__.update(engine.model.__dict__, max_steps=37)
    windowed, _ = bounded.run_long(windows, LstmState.zeros(engine.model.n_cell_dim))
    np.testing.assert_allclose(windowed, one_pass, atol=1e-6)


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        (b"", 400, "empty"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100), 415, "cannot decode the audio"),
        (b"\x89PNG\r\n\x1a\n" + bytes(500), 415, "no audio stream"),
    ],
)
def test_bad_uploads_get_clear_json_errors(
    client: TestClient, payload: bytes, status: int, detail: str
) -> None:
    response = client.post("/transcribe", files={"file": ("x.wav", payload, "audio/wav")})
    assert response.status_code == status
    assert detail in response.json()["detail"] and "Traceback" not in response.text


def test_wav_with_no_samples_is_400(client: TestClient) -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, np.float32), 16000, format="WAV")
    response = client.post("/transcribe", files={"file": buffer.getvalue()})
    assert response.status_code == 400 and "no samples" in response.json()["detail"]


def test_missing_file_field_is_422(client: TestClient) -> None:
    response = client.post("/transcribe", data={"something": "else"})
    assert response.status_code == 422


def test_upload_over_the_cap_is_413(client: TestClient, settings: Settings) -> None:
    too_big = bytes(settings.max_upload_bytes + 1)
    response = client.post("/transcribe", files={"file": ("big.wav", too_big, "audio/wav")})
    assert response.status_code == 413 and "DS_MAX_UPLOAD_BYTES" in response.json()["detail"]


async def test_upload_cap_counts_a_chunked_body(settings: Settings, engine: Engine) -> None:
    """No Content-Length (chunked transfer): the cap is enforced on the bytes as they arrive."""
    app = create_app(settings, engine)

    async def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
        for _ in range(30):
            yield bytes(100_000)
        yield b"\r\n--b--\r\n"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/transcribe", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 413


async def test_async_client_and_info(settings: Settings, engine: Engine, speech_wav: Path) -> None:
    transport = httpx.ASGITransport(app=create_app(settings, engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        info = (await http.get("/info")).json()
        assert info["runtime"]["backend"] == "numpy" and info["model"]["n_hidden"] == 48
        assert info["decoder"] == {"kind": "beam", "beam_width": 64}
        assert (await http.get("/health")).json() == {"status": "ok"}
        response = await http.post("/transcribe", files={"file": speech_wav.read_bytes()})
        assert response.status_code == 200


# --- websocket /stream ---------------------------------------------------------------------------------------


def test_stream_equals_the_whole_file_path_on_the_same_windows(
    client: TestClient, engine: Engine, speech_wav: Path
) -> None:
    """The stream buffers exactly like the native client, whose windows equal the whole-file windows of the audio
    zero-padded to 320·k + 512 samples (one extra tail frame). So static 16-step chunks (tail padded, state
    carried) and the dynamic whole-file pass must give the same transcript on that audio."""
    pcm = pcm16(speech_wav)
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    k = frame_count(len(samples))
    padded = np.zeros(320 * k + 512, np.float32)
    padded[: len(samples)] = samples
    messages = stream_pcm(client, pcm)
    final = messages[-1]
    assert final["text"] == engine.transcribe(padded).transcript.text
    assert final["duration"] == pytest.approx(len(samples) / 16000, abs=1e-3)
    partials = [m["text"] for m in messages[:-1]]
    assert all(m["type"] == "partial" for m in messages[:-1])
    assert partials and all(a != b for a, b in zip(partials, partials[1:], strict=False)), (
        "no duplicate partials"
    )


def test_stream_probabilities_match_whole_file_up_to_the_tail(engine: Engine, speech_wav: Path) -> None:
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    session = engine.open_stream()
    fed: list[np.ndarray] = []
    real_feed = session._decoder.feed
    session._decoder.feed = lambda probs: (fed.append(probs), real_feed(probs))  # type: ignore[method-assign]
    for start in range(0, len(samples), 1234):
        session.feed(samples[start : start + 1234])
    session.finish()
    streamed = np.concatenate(fed)
    whole, _ = engine.model.run_long(features_for_file(samples), LstmState.zeros(engine.model.n_cell_dim))
    k = len(whole)
    assert len(streamed) == k + 1, "the stream has one extra step: the tail frame"
    # Windows before the last 9 do not see the tail frame; the LSTM carries the same state through them.
    np.testing.assert_allclose(streamed[: k - 9], whole[: k - 9], atol=1e-5)
    assert greedy_decode(streamed[: k - 9]).text == greedy_decode(whole[: k - 9]).text


def test_the_last_partial_chunk_is_decoded(engine: Engine) -> None:
    """0.45 s = 21 MFCC frames + the tail frame = 22 windows: one 16-step chunk and a 6-step tail for the decoder."""
    session = engine.open_stream()
    steps: list[int] = []
    real_feed = session._decoder.feed
    session._decoder.feed = lambda probs: (steps.append(len(probs)), real_feed(probs))  # type: ignore[method-assign]
    session.feed(np.random.default_rng(0).normal(0, 0.1, 7200).astype(np.float32))
    session.finish()
    assert steps == [16, 6] and session.steps_decoded == 22


def test_partials_arrive_while_audio_streams(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    with client.websocket_connect("/stream") as ws:
        got_partial_before_eof = False
        for start in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[start : start + 6400])
        # Partials are sent as chunks complete, before eof: read one without sending eof.
        message = ws.receive_json()
        got_partial_before_eof = message["type"] == "partial"
        ws.send_text(json.dumps({"type": "eof"}))
        while message["type"] != "final":
            message = ws.receive_json()
    assert got_partial_before_eof


def test_two_concurrent_streams_keep_their_own_state(
    client: TestClient, speech_wav: Path, other_speech_wav: Path
) -> None:
    alone = {path: stream_pcm(client, pcm16(path))[-1]["text"] for path in (speech_wav, other_speech_wav)}
    assert alone[speech_wav] != alone[other_speech_wav]
    results: dict[Path, str] = {}

    def run(path: Path) -> None:
        results[path] = stream_pcm(client, pcm16(path), chunk=640)[-1]["text"]

    threads = [threading.Thread(target=run, args=(p,)) for p in (speech_wav, other_speech_wav)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == alone


def test_fifty_sequential_streams_leak_no_state(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)[: 16000 * 2 * 2]  # 2 s keeps 50 streams quick
    first = stream_pcm(client, pcm, chunk=8000)[-1]
    for _ in range(49):
        assert stream_pcm(client, pcm, chunk=8000)[-1] == first


def test_stream_at_another_sample_rate(client: TestClient, speech_wav: Path) -> None:
    import soxr

    samples, _ = soundfile.read(speech_wav, dtype="float32")
    pcm8k = (np.clip(soxr.resample(samples, 16000, 8000), -1, 1) * 32767).astype("<i2").tobytes()
    final = stream_pcm(client, pcm8k, chunk=1600, config={"type": "config", "sample_rate": 8000})[-1]
    assert final["duration"] == pytest.approx(len(samples) / 16000, abs=0.05)


def test_bad_messages_get_errors_and_the_stream_goes_on(client: TestClient, speech_wav: Path) -> None:
    pcm = pcm16(speech_wav)
    clean = stream_pcm(client, pcm)[-1]["text"]
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "config", "sample_rate": 3}))
        assert ws.receive_json() == {
            "type": "error",
            "code": "bad_config",
            "message": "sample_rate must be an integer from 8000 to 48000, got 3",
        }
        ws.send_text("{not json")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"type": "dance"}))
        assert "unknown message type 'dance'" in ws.receive_json()["message"]
        ws.send_bytes(b"\x01\x02\x03")
        assert ws.receive_json()["code"] == "bad_frame"
        for start in range(0, len(pcm), 3200):
            ws.send_bytes(pcm[start : start + 3200])
        ws.send_text(json.dumps({"type": "config", "sample_rate": 8000}))
        ws.send_text(json.dumps({"type": "eof"}))
        messages = []
        while not messages or messages[-1]["type"] != "final":
            messages.append(ws.receive_json())
    assert any(m.get("code") == "bad_config" and "before any audio" in m["message"] for m in messages)
    assert messages[-1]["text"] == clean, "rejected messages must not change the transcript"


def test_stream_with_no_audio_gives_an_empty_final(client: TestClient) -> None:
    final = stream_pcm(client, b"")[-1]
    assert final["type"] == "final" and final["duration"] == 0.0


# --- with a KenLM scorer built by the project's tooling ------------------------------------------------------

@pytest.fixture(scope="module")
def scorer_client(tmp_path_factory: pytest.TempPathFactory, small_model_dir: Path) -> Iterator[TestClient]:
    from app.speech.alphabet import ENGLISH
    from dsconvert.lm.build_scorer import build_scorer

    directory = tmp_path_factory.mktemp("scorer")
    (directory / "corpus.txt").write_text(VOCABULARY_TEXT)
    scorer = build_scorer(directory / "corpus.txt", ENGLISH, directory / "home.scorer")
    settings = Settings(
        model_dir=small_model_dir, backend="numpy", beam_width=64, scorer=scorer, lm_alpha=1.5
    )
    with TestClient(create_app(settings)) as test_client:  # loads through the lifespan, as uvicorn does
        yield test_client


def test_scorer_restricts_output_to_its_vocabulary(scorer_client: TestClient, speech_wav: Path) -> None:
    info = scorer_client.get("/info").json()["decoder"]
    assert info["scorer"]["alpha"] == 1.5 and info["scorer"]["vocabulary_size"] == len(
        set(VOCABULARY_TEXT.split())
    )
    body = scorer_client.post("/transcribe", files={"file": speech_wav.read_bytes()}).json()
    assert body["decoder"] == "beam 64, kenlm home.scorer"
    assert body["text"] and set(body["text"].split()) <= set(VOCABULARY_TEXT.split())
    final = stream_pcm(scorer_client, pcm16(speech_wav))[-1]
    assert set(final["text"].split()) <= set(VOCABULARY_TEXT.split())
