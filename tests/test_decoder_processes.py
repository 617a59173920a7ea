"""Beam search in spawned decoder processes (DS_DECODER_PROCESSES): the same transcripts as in the service
process, streams at once, and a process that dies failing only its own streams, on the trained default model."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.settings import Settings
from app.speech.decoding import DecoderProcessFailed, parse_grammar
from app.speech.engine import Engine
from tests.support.audio import DEMO_PHRASES, pcm16, spoken_phrases
from tests.support.metrics import scrape, value
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parent.parent
PHRASES = DEMO_PHRASES


def engine_with(processes: int) -> Engine:
    return Engine.load(
        Settings(model_dir=ROOT / "models" / "default", backend="numpy", decoder_processes=processes)
    )


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Engine, Engine]]:
    here, there = engine_with(0), engine_with(2)
    yield here, there
    there.close()


@pytest.fixture(scope="module")
def phrases(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = spoken_phrases(PHRASES, tmp_path_factory.mktemp("decoders") / "three.wav")
    return soundfile.read(path, dtype="float32")[0]


def streamed(engine: Engine, samples: np.ndarray, **options: object) -> tuple[str, list[str]]:
    session = engine.open_stream(**options)  # type: ignore[arg-type]
    for start in range(0, len(samples), 1600):
        session.feed(samples[start : start + 1600])
    return session.finish().text, [u.text for u in session.take_utterances()]


def test_processes_are_spawned_and_decode_as_the_service_process_does(
    engines: tuple[Engine, Engine], phrases: np.ndarray
) -> None:
    here, there = engines
    assert "in 2 decoder process(es)" in there.decoder.description
    for process in there.decoder.pool.processes:  # type: ignore[attr-defined]
        with open(f"/proc/{process.process.pid}/cmdline", "rb") as cmdline:
            assert b"multiprocessing.spawn" in cmdline.read()  # spawned, never forked
    assert there.transcribe(phrases).transcript == here.transcribe(phrases).transcript
    assert (
        there.transcribe(phrases, alternatives=3).transcript
        == here.transcribe(phrases, alternatives=3).transcript
    )
    hot = {"kitchen": 6.0}
    assert (
        there.transcribe(phrases, hot_words=hot).transcript
        == here.transcribe(phrases, hot_words=hot).transcript
    )
    assert streamed(there, phrases) == streamed(here, phrases)
    grammar = parse_grammar(PHRASES[:2])
    assert streamed(there, phrases, grammar=grammar) == streamed(here, phrases, grammar=grammar)


def test_concurrent_streams_each_get_their_own_transcript(
    engines: tuple[Engine, Engine], tmp_path: Path
) -> None:
    _, there = engines
    audio = [
        soundfile.read(spoken_phrases([text], tmp_path / f"{i}.wav"), dtype="float32")[0]
        for i, text in enumerate(PHRASES)
    ]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = streamed(there, audio[i % 3])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(6)] == PHRASES * 2


def test_a_decoder_process_that_dies_fails_only_its_own_streams(phrases: np.ndarray) -> None:
    engine = engine_with(2)
    try:
        pool = engine.decoder.pool  # type: ignore[attr-defined]
        doomed, spared = engine.open_stream(), engine.open_stream()  # the least busy process each: one apiece
        half = len(phrases) // 2
        doomed.feed(phrases[:half])
        spared.feed(phrases[:half])
        victim = next(p for p in pool.processes if p.open_streams)  # the one holding `doomed` (or `spared`)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.join(timeout=10)
        outcomes = []
        for session in (doomed, spared):
            try:
                session.feed(phrases[half:])
                outcomes.append(session.finish().text)
            except DecoderProcessFailed as exc:
                outcomes.append(f"failed: {exc}")
        assert sorted(o.startswith("failed") for o in outcomes) == [False, True]
        assert next(o for o in outcomes if not o.startswith("failed")) == " ".join(PHRASES)
        assert "died" in next(o for o in outcomes if o.startswith("failed"))
        assert streamed(engine, phrases)[0] == " ".join(PHRASES)  # the pool replaced it
        assert all(p.process.is_alive() for p in pool.processes) and victim not in pool.processes
    finally:
        engine.close()


def decoder_pids(server_pid: int) -> list[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return [
        int(pid) for pid in children if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_over_the_wire_a_dead_decoder_is_decoder_failed_and_its_resume_is_refused(tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    pcm = pcm16(spoken_phrases(PHRASES[:1], tmp_path / "one.wav"))
    half = len(pcm) // 4 * 2  # whole samples
    env = {"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_DECODER_PROCESSES": "1"}
    with running_server(env) as server:
        ws = server.ws + "/stream"
        with connect(ws) as stream:
            stream.send(pcm[:half])
            time.sleep(0.5)
            (pid,) = decoder_pids(server.pid)
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            stream.send(pcm[half:])
            stream.send(json.dumps({"type": "eof"}))
            messages = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(stream.recv(timeout=30)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert messages[-1]["type"] == "error" and messages[-1]["code"] == "decoder_failed"
        samples = scrape(__import__("httpx").get(f"{server}/metrics"))
        assert value(samples, "ds_stream_errors_total", route="/stream", code="decoder_failed") == 1

        # A resumable stream parked (its client dropped) when its decoder process dies: resuming is refused.
        with connect(ws) as first:
            first.send(json.dumps({"type": "config", "resumable": True}))
            resumable = json.loads(first.recv(timeout=10))
            assert resumable["type"] == "resumable", resumable
            first.send(pcm[:half])
            got = json.loads(first.recv(timeout=10))
            assert got["type"] in ("ack", "partial"), got
        time.sleep(0.5)
        for pid in decoder_pids(server.pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        with connect(ws) as second:
            claim = {
                "type": "resume",
                "stream_id": resumable["stream_id"],
                "resume_token": resumable["resume_token"],
            }
            second.send(json.dumps({**claim, "bytes": 0}))
            reply = json.loads(second.recv(timeout=30))
        assert (
            reply["type"] == "error" and reply["code"] == "resume_refused" and "decoder" in reply["message"]
        )
        with connect(ws) as fresh:  # and the service goes on with a new decoder process
            fresh.send(pcm)
            fresh.send(json.dumps({"type": "eof"}))
            final = next(
                m for m in map(json.loads, iter(lambda: fresh.recv(timeout=30), None)) if m["type"] == "final"
            )
        assert final["text"] == PHRASES[0]
