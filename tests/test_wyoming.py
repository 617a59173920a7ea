"""Wyoming speech-to-text (Home Assistant) against a real `python -m app` with DS_WYOMING_URI, spoken to by the
official `wyoming` package's own client: describe, transcripts equal to /transcribe's, streamed chunks, several
clients, vanishing clients, bad events and garbage, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info

from tests.support.audio import DEMO_PHRASES, speak
from tests.support.metrics import scrape, value
from tests.support.server import ServerUrl, free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
PHRASES = DEMO_PHRASES
CHUNK_SECONDS = 0.064  # what Home Assistant's pipelines send (1024 samples at 16 kHz)


@pytest.fixture(scope="module")
def wyoming_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(wyoming_port: int) -> Iterator[ServerUrl]:
    env = {
        "DS_MODEL_DIR": str(ROOT / "models" / "default"),
        "DS_BACKEND": "numpy",
        "DS_WYOMING_URI": f"tcp://127.0.0.1:{wyoming_port}",
        "DS_MAX_STREAMS": "4",
        "DS_STREAM_IDLE_TIMEOUT": "3",
    }
    with running_server(env) as url:
        yield url


@pytest.fixture(scope="module")
def phrases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("wyoming")
    return [speak(text, folder / f"{i}.wav") for i, text in enumerate(PHRASES)]


def pcm_of(path: Path, rate: int = 16000) -> bytes:
    samples, file_rate = soundfile.read(path, dtype="int16")
    assert file_rate == rate
    return samples.tobytes()


async def transcribe(
    port: int, pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1, **transcribe: object
) -> list[Event]:
    """One Home Assistant-style conversation; every event the server sent, up to transcript-stop."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en", **transcribe).event())  # type: ignore[arg-type]
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = int(rate * CHUNK_SECONDS) * width * channels
        for start in range(0, len(pcm), step):
            chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[start : start + step])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        return await events_until(client, "transcript-stop")


async def events_until(client: AsyncTcpClient, kind: str) -> list[Event]:
    received = []
    while True:
        event = await asyncio.wait_for(client.read_event(), 30)
        assert event is not None, f"the server closed before {kind}: {[e.type for e in received]}"
        received.append(event)
        if event.type == kind:
            return received


def http_text(server: ServerUrl, path: Path) -> str:
    response = httpx.post(f"{server}/transcribe", files={"file": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 200
    return str(response.json()["text"])


async def test_describe_answers_an_asr_program_that_streams(server: ServerUrl, wyoming_port: int) -> None:
    async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 10)
    assert event is not None and Info.is_type(event.type)
    (program,) = Info.from_event(event).asr
    assert program.supports_transcript_streaming and program.installed
    assert program.attribution.name == "Mozilla DeepSpeech"
    (model,) = program.models
    assert model.name == "default" and model.languages == ["en"]


async def test_transcripts_stream_and_equal_the_http_transcript(
    server: ServerUrl, wyoming_port: int, phrases: list[Path]
) -> None:
    events = await transcribe(wyoming_port, pcm_of(phrases[0]))
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    assert set(kinds[1:-2]) == {"transcript-chunk"} and len(kinds) >= 4  # words streamed as they became final
    text = events[-2].data["text"]
    assert text == http_text(server, phrases[0]) == PHRASES[0]
    assert "".join(e.data["text"] for e in events if e.type == "transcript-chunk") == text
    assert events[-2].data["language"] == "en"


async def test_22050_hz_and_stereo_are_converted(
    server: ServerUrl, wyoming_port: int, tmp_path: Path, phrases: list[Path]
) -> None:
    """espeak-ng's own 22.05 kHz output, and the same as 32-bit stereo: the transcript /transcribe gives it."""
    import subprocess

    raw = tmp_path / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), PHRASES[1]], check=True)
    samples, rate = soundfile.read(raw, dtype="int16")
    assert rate == 22050
    events = await transcribe(wyoming_port, samples.tobytes(), rate=rate)
    expected = http_text(server, raw)
    assert events[-2].data["text"] == expected and expected == PHRASES[1]
    wide = (samples.astype(np.int32) << 16).repeat(2)  # the same audio, 4-byte samples, two channels
    events = await transcribe(wyoming_port, wide.astype("<i4").tobytes(), rate=rate, width=4, channels=2)
    assert events[-2].data["text"] == expected


async def test_several_clients_at_once_each_get_their_own_text(
    server: ServerUrl, wyoming_port: int, phrases: list[Path]
) -> None:
    results = await asyncio.gather(*(transcribe(wyoming_port, pcm_of(path)) for path in phrases))
    assert [events[-2].data["text"] for events in results] == PHRASES
    samples = scrape(httpx.get(f"{server}/metrics"))
    assert value(samples, "ds_audio_seconds_total", route="wyoming") > 5
    assert value(samples, "ds_active_streams", route="wyoming") == 0


async def test_transcript_names_are_hot_words(
    server: ServerUrl, wyoming_port: int, phrases: list[Path]
) -> None:
    events = await transcribe(wyoming_port, pcm_of(phrases[0]), transcript_names=["kitchen"])
    assert events[-2].data["text"] == PHRASES[0]
    async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
        await client.write_event(Transcribe(transcript_names=["naïve"]).event())
        error = await asyncio.wait_for(client.read_event(), 10)
    assert error is not None and error.type == "error" and error.data["code"] == "bad_hot_words"


async def test_a_client_that_vanishes_mid_audio_frees_its_slot(
    server: ServerUrl, wyoming_port: int, phrases: list[Path]
) -> None:
    pcm = pcm_of(phrases[0])
    for _ in range(6):  # more than DS_MAX_STREAMS (4): a slot that leaked would refuse the last ones
        client = AsyncTcpClient("127.0.0.1", wyoming_port)
        await client.connect()
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:16000]).event())
        await client.disconnect()
    await asyncio.sleep(0.5)
    assert value(scrape(httpx.get(f"{server}/metrics")), "ds_active_streams", route="wyoming") == 0
    events = await transcribe(wyoming_port, pcm)
    assert events[-2].data["text"] == PHRASES[0]


async def test_the_stream_limit_and_the_idle_timeout_apply(server: ServerUrl, wyoming_port: int) -> None:
    holders = []
    for _ in range(4):  # DS_MAX_STREAMS: every slot taken
        client = AsyncTcpClient("127.0.0.1", wyoming_port)
        await client.connect()
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        assert (await asyncio.wait_for(client.read_event(), 10)).type == "transcript-start"  # type: ignore[union-attr]
        holders.append(client)
    async with AsyncTcpClient("127.0.0.1", wyoming_port) as refused:
        event = await asyncio.wait_for(refused.read_event(), 10)
        assert event is not None and event.type == "error" and event.data["code"] == "too_many_streams"
        assert await asyncio.wait_for(refused.read_event(), 10) is None  # then closed
    for client in holders:  # silent for DS_STREAM_IDLE_TIMEOUT (3 s): told so, then closed
        event = await asyncio.wait_for(client.read_event(), 10)
        assert event is not None and event.type == "error" and event.data["code"] == "idle_timeout"
        assert await asyncio.wait_for(client.read_event(), 10) is None
        await client.disconnect()


async def test_bad_events_get_errors_and_the_conversation_goes_on(
    server: ServerUrl, wyoming_port: int, phrases: list[Path]
) -> None:
    async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
        for bad in (
            AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event(),  # before audio-start
            Event(type="audio-start", data={"rate": "fast", "width": 2, "channels": 1}),
            Event(type="audio-start", data={"rate": 16000, "width": 7, "channels": 1}),
            Event(type="synthesize", data={"text": "hello"}),  # text-to-speech: not this server's
        ):
            await client.write_event(bad)
            error = await asyncio.wait_for(client.read_event(), 10)
            assert error is not None and error.type == "error" and error.data["text"], bad
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=8000, width=2, channels=1, audio=b"\0\0").event())
        events = await events_until(client, "error")
        assert "8000 Hz" in events[-1].data["text"]
        pcm = pcm_of(phrases[2])
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        await client.write_event(AudioStop().event())
        events = await events_until(client, "transcript-stop")
    assert events[-2].data["text"] == PHRASES[2]


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes on a plain socket; what comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_garbage_and_oversized_payloads_close_the_connection_not_the_server(
    server: ServerUrl, wyoming_port: int
) -> None:
    assert raw_exchange(wyoming_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert raw_exchange(wyoming_port, bytes(range(256)) * 300) == b""  # binary noise, no newline for 76 KB
    header = json.dumps({"type": "audio-chunk", "data": {"rate": 16000}, "payload_length": 10**10})
    reply = raw_exchange(wyoming_port, header.encode() + b"\n")
    error = json.loads(reply.split(b"\n", 1)[0])
    assert error["type"] == "error"
    assert httpx.get(f"{server}/health").status_code == 200
    log = server.log.read_text()
    assert "not a Wyoming event stream" in log and "the limit is 1048576 bytes" in log
    assert "Traceback" not in log


async def test_sigterm_gives_an_open_session_its_transcript_then_exits_0(phrases: list[Path]) -> None:
    port = free_port()
    env = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_WYOMING_URI": f"tcp://127.0.0.1:{port}"}
    with running_server(env) as server:
        client = AsyncTcpClient("127.0.0.1", port)
        await client.connect()
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        pcm = pcm_of(phrases[0])
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        events = await events_until(client, "transcript-stop")
        await client.disconnect()
        assert events[-2].data["text"] == PHRASES[0]  # what it sent, though audio-stop never came
        with pytest.raises(OSError):
            await AsyncTcpClient("127.0.0.1", port).connect()  # new connections are refused
        assert server.process.wait(timeout=30) == 0


async def test_zeroconf_advertises_the_listener_until_shutdown(tmp_path: Path) -> None:
    """Home Assistant's discovery: `_wyoming._tcp` resolved over mDNS on loopback (zeroconf's own client)."""
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    port = free_port()
    name = f"stt-test-{port}"
    env = {
        "DS_MODEL_DIR": str(ROOT / "models" / "default"),
        "DS_WYOMING_URI": f"tcp://127.0.0.1:{port}",
        "DS_WYOMING_ZEROCONF": name,
    }
    browser = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        with running_server(env) as server:
            info = AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
            assert await info.async_request(browser.zeroconf, 5000)
            assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
            log = server.log
            keep = log.with_suffix(".kept")
            server.process.terminate()
            assert server.process.wait(timeout=30) == 0
            keep.write_text(log.read_text())
    finally:
        await browser.async_close()
    assert "zeroconf advertisement withdrawn" in keep.read_text()
    fresh = AsyncZeroconf(interfaces=["127.0.0.1"])  # no cache: asks the network
    try:
        gone = AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
        assert not await gone.async_request(fresh.zeroconf, 1500)
    finally:
        await fresh.async_close()


async def test_a_unix_socket_and_a_taken_port(tmp_path: Path) -> None:
    from wyoming.client import AsyncUnixClient

    path = tmp_path / "stt.sock"
    env = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_WYOMING_URI": f"unix://{path}"}
    with running_server(env):
        async with AsyncUnixClient(str(path)) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 10)
        assert event is not None and Info.is_type(event.type)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["DS_WYOMING_URI"] = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(pytest.fail.Exception, match="cannot listen there"):
            with running_server(env):
                pass
