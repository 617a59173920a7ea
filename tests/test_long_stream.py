"""An hour of dictation on one stream: utterances keep its memory, its per-chunk cost and its messages flat.

One test streams an hour of espeak-ng phrases with pauses (fed as fast as the server takes it) to a real
server (about 30 s on 2 cores) and reports, per ten minutes of audio, the server's RSS and CPU seconds and the
largest message; the other runs ten minutes through a session in-process.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.settings import Settings
from app.speech.engine import Engine
from tests.support.audio import speak
from tests.support.server import running_server

PHRASES = [
    "turn on the kitchen lights",
    "what is the weather like today",
    "set a timer for ten minutes",
    "remind me to call my mother",
    "play some music in the living room",
    "how long does it take to get to work",
    "add milk and bread to the shopping list",
    "what time is it",
]
WINDOW_SECONDS = 600.0


@pytest.fixture(scope="module")
def phrase_audio(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("dictation")
    return [soundfile.read(speak(text, folder / f"{i}.wav"), dtype="float32")[0] for i, text in enumerate(PHRASES)]


def dictation(phrases: list[np.ndarray], seconds: float, seed: int = 5) -> Iterator[tuple[int, np.ndarray]]:
    """Phrases in a seeded random order, each followed by a 0.8-1.6 s pause, until `seconds` of audio: (which
    phrase, its audio and pause)."""
    rng = random.Random(seed)
    total = 0
    while total < seconds * 16000:
        which = rng.randrange(len(phrases))
        pause = np.zeros(int(16000 * rng.uniform(0.8, 1.6)), np.float32)
        total += len(phrases[which]) + len(pause)
        yield which, np.concatenate([phrases[which], pause])


def test_ten_minutes_in_process_partials_stay_one_utterance_long(phrase_audio: list[np.ndarray]) -> None:
    engine = Engine.load(Settings(model_dir=Path("models/default"), backend="numpy"))
    session = engine.open_stream()
    longest_partial = 0
    pieces = list(dictation(phrase_audio, 600))
    for _, piece in pieces:
        for start in range(0, len(piece), 8000):
            partial = session.feed(piece[start : start + 8000])
            longest_partial = max(longest_partial, len(partial or ""))
    whole = session.finish()
    utterances = session.utterances
    assert len(utterances) == len(pieces)  # each phrase, and its pause, is one utterance
    assert whole.text == " ".join(u.text for u in utterances)
    # Each utterance is what the phrase alone transcribes to (the LSTM state carried over the pause before it
    # changes little), and a partial is at most one phrase long, not ten minutes of them.
    alone = [engine.transcribe(audio).transcript.text for audio in phrase_audio]
    expected = [alone[which] for which, _ in pieces]
    assert sum(u.text == text for u, text in zip(utterances, expected, strict=True)) >= 0.95 * len(pieces)
    assert longest_partial <= max(len(text) for text in alone)


@dataclass
class Window:
    """What one ten-minute window of audio cost the server."""

    rss_mb: float = 0.0
    cpu_seconds: float = 0.0
    largest_message: int = 0
    utterances: int = 0


def server_usage(pid: int) -> tuple[float, float]:
    """(RSS in MB, user + system CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def test_an_hour_on_one_stream_stays_flat(phrase_audio: list[np.ndarray]) -> None:
    from websockets.sync.client import connect

    env = {"DS_MODEL_DIR": "models/default", "DS_BACKEND": "numpy", "DS_STREAM_MAX_SECONDS": "4000"}
    with running_server(env) as server, connect(server.ws + "/stream", max_size=None) as ws:

        def send() -> None:
            for _, piece in dictation(phrase_audio, 3600):
                pcm = (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()
                for start in range(0, len(pcm), 16000):  # 0.5 s frames
                    ws.send(pcm[start : start + 16000])
            ws.send(json.dumps({"type": "eof"}))

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        windows, utterances, final = receive_windows(ws, server.pid)
        sender.join()
    for number, window in enumerate(windows):
        print(f"minutes {number * 10}-{number * 10 + 10}: {window}")
    assert len(windows) == 6
    assert final["text"] == " ".join(utterances + ([final["utterance"]["text"]] if final["utterance"] else []))
    first, last = windows[0], windows[-1]
    assert last.rss_mb - first.rss_mb < 25, "the server's memory grew with the stream"
    assert last.largest_message <= 2 * first.largest_message, "messages grew with the stream"


def receive_windows(ws, pid: int) -> tuple[list[Window], list[str], dict]:  # type: ignore[no-untyped-def]
    """Read until the final; close a window each time an utterance ends past the next ten-minute mark."""
    windows, utterances = [Window()], []
    _, cpu_at = server_usage(pid)
    while True:
        raw = ws.recv()
        message = json.loads(raw)
        if message["type"] == "final":
            return windows[:6], utterances, message
        window = windows[-1]
        window.largest_message = max(window.largest_message, len(raw))
        if message["type"] == "utterance":
            utterances.append(message["text"])
            window.utterances += 1
            if message["end"] >= WINDOW_SECONDS * len(windows):
                window.rss_mb, cpu = server_usage(pid)
                window.cpu_seconds, cpu_at = round(cpu - cpu_at, 2), cpu
                windows.append(Window())
