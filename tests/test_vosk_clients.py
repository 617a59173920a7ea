"""Vosk's own websocket clients against /vosk on a real server: alphacep/vosk-server's websocket/test.py,
test_srt.py and test_words.py, run as they are (only their URI differs) on three spoken phrases with pauses, get
a result per phrase, as from vosk-server, where each pause ends an utterance (AcceptWaveform returns true).

The three scripts are embedded below exactly as upstream has them (a test checks their SHA-256 against the
upstream files), and a module fixture writes them to a temporary directory; they are not vendored as files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import soxr
from websockets.sync.client import connect

from tests.support.audio import speak
from tests.support.server import ROOT, ServerUrl, running_server

srt = pytest.importorskip("srt")  # the `test` extra has it: test_srt.py imports it, and so does this module

PHRASES = ("turn on the kitchen lights", "what is the weather like today", "set a timer for ten minutes")
LEAD_S, GAP_S, TAIL_S = 0.5, 1.2, 1.0  # silence before, between and after the phrases
FRAME_S = 0.2  # what each of Vosk's scripts sends per message
SLACK_S = 0.1  # how far a word's time may fall outside its phrase's clip (the model's frames are 20 ms)

# --- Vosk's client scripts ---------------------------------------------------------------------------------
# alphacep/vosk-server, websocket/test.py, websocket/test_srt.py and websocket/test_words.py, last changed
# upstream in 1ef2052 (2022-04-01), as of c2e82f0 (2025-05-25): byte for byte (`\x20` spells the trailing
# spaces four lines have upstream, so that no editor strips them). Only the URI line changes, when the fixture
# writes them: 'ws://localhost:2700' becomes this module's server's ws://127.0.0.1:PORT/vosk.
UPSTREAM_URI = "'ws://localhost:2700'"
UPSTREAM_SHA256 = {
    "test.py": "65d371ee8d71bfa2116386e9fbc6fd82d72dfb0036e7cdfed3e8c07a6d72741a",
    "test_srt.py": "6afbd68daeafe83f8f5c9a6a6a608e2272c12bd77ff5586039bd5320dd08fd94",
    "test_words.py": "7c41d26c90e4e5d01489e2dba26193f7305613c8f66b41e00f9e7bcb825821d0",
}
# test_words.py's phrase_list, a grammar in Vosk (only these words, or "[unk]", may be recognized).
UPSTREAM_PHRASE_LIST = ["zero one two three four five", "six seven eight nine oh"]

TEST_PY = """#!/usr/bin/env python3

import asyncio
import websockets
import sys
import wave

async def run_test(uri):
    async with websockets.connect(uri) as websocket:

        wf = wave.open(sys.argv[1], "rb")
        await websocket.send('{ "config" : { "sample_rate" : %d } }' % (wf.getframerate()))
        buffer_size = int(wf.getframerate() * 0.2) # 0.2 seconds of audio
        while True:
            data = wf.readframes(buffer_size)

            if len(data) == 0:
                break

            await websocket.send(data)
            print (await websocket.recv())

        await websocket.send('{"eof" : 1}')
        print (await websocket.recv())

asyncio.run(run_test('ws://localhost:2700'))
"""

TEST_SRT_PY = """#!/usr/bin/env python3

import asyncio
import websockets
import sys
import srt
import json
import datetime
import wave

WORDS_PER_LINE = 7

async def run_test(uri):
    async with websockets.connect(uri) as websocket:
        wf = wave.open(sys.argv[1], "rb")
        await websocket.send('{ "config" : { "sample_rate" : %d } }' % (wf.getframerate()))

        results = []
        buffer_size = int(wf.getframerate() * 0.2) # 0.2 seconds of audio
        while True:
            data = wf.readframes(buffer_size)

            if len(data) == 0:
                break

            await websocket.send(data)
            results.append(await websocket.recv())

        await websocket.send('{"eof" : 1}')
        results.append(await websocket.recv())

        subs = []
        for i, res in enumerate(results):
           jres = json.loads(res)
           if not 'result' in jres:
               continue
           words = jres['result']
           for j in range(0, len(words), WORDS_PER_LINE):
               line = words[j : j + WORDS_PER_LINE]\x20
               s = srt.Subtitle(index=len(subs),\x20
                   content=" ".join([l['word'] for l in line]),
                   start=datetime.timedelta(seconds=line[0]['start']),\x20
                   end=datetime.timedelta(seconds=line[-1]['end']))
               subs.append(s)

        print(srt.compose(subs))


asyncio.run(run_test('ws://localhost:2700'))
"""

TEST_WORDS_PY = """#!/usr/bin/env python3

import asyncio
import websockets
import sys
import wave

async def run_test(uri):
    async with websockets.connect(uri) as websocket:
        wf = wave.open(sys.argv[1], "rb")
        await websocket.send('''{"config" :\x20
                    { "phrase_list" : ["zero one two three four five", "six seven eight nine oh"],
                      "sample_rate" : %d,
                      "words" : 0}}''' % (wf.getframerate()))
        buffer_size = int(wf.getframerate() * 0.2) # 0.2 seconds of audio
        while True:
            data = wf.readframes(buffer_size)

            if len(data) == 0:
                break

            await websocket.send(data)
            print (await websocket.recv())

        await websocket.send('{"eof" : 1}')
        print (await websocket.recv())

asyncio.run(run_test('ws://localhost:2700'))
"""

UPSTREAM = {"test.py": TEST_PY, "test_srt.py": TEST_SRT_PY, "test_words.py": TEST_WORDS_PY}


# --- fixtures ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phrases:
    """The three phrases as one recording: a 16 kHz WAV, its 8 kHz copy, and where each phrase's clip lies."""

    wav16k: Path
    wav8k: Path
    spans: list[tuple[float, float]]  # each espeak-ng clip's (start, end) in seconds (its own edges included)
    duration: float


@pytest.fixture(scope="module")
def phrases(tmp_path_factory: pytest.TempPathFactory) -> Phrases:
    directory = tmp_path_factory.mktemp("phrases")
    rate = 16000
    pieces, spans, at = [np.zeros(int(LEAD_S * rate), np.int16)], [], int(LEAD_S * rate)
    for i, text in enumerate(PHRASES):
        clip, clip_rate = soundfile.read(speak(text, directory / f"phrase{i}.wav"), dtype="int16")
        assert clip_rate == rate
        spans.append((at / rate, (at + len(clip)) / rate))
        pause = np.zeros(int((GAP_S if i < len(PHRASES) - 1 else TAIL_S) * rate), np.int16)
        pieces += [clip, pause]
        at += len(clip) + len(pause)
    samples = np.concatenate(pieces)
    wav16k, wav8k = directory / "three_phrases.wav", directory / "three_phrases_8k.wav"
    soundfile.write(wav16k, samples, rate, subtype="PCM_16")
    narrow = soxr.resample(samples.astype(np.float32) / 32768, rate, 8000)
    soundfile.write(wav8k, np.clip(narrow, -1.0, 1.0), 8000, subtype="PCM_16")
    return Phrases(wav16k, wav8k, spans, len(samples) / rate)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerUrl]:
    """`python -m app` with the shipped model (models/default, its default) on the NumPy backend."""
    with running_server({"DS_MODEL_DIR": str(ROOT / "models" / "default"), "DS_BACKEND": "numpy"}) as base:
        yield base


@pytest.fixture(scope="module")
def scripts(server: ServerUrl, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Vosk's three scripts, written to a temporary directory with this server's URI in place of upstream's."""
    directory = tmp_path_factory.mktemp("vosk-clients")
    written = {}
    for name, text in UPSTREAM.items():
        assert text.count(UPSTREAM_URI) == 1
        path = directory / name
        path.write_text(text.replace(UPSTREAM_URI, repr(f"{server.ws}/vosk")), encoding="utf-8")
        written[name] = path
    return written


@pytest.fixture(scope="module")
def transcribed(server: ServerUrl, phrases: Phrases) -> dict[int, dict[str, Any]]:
    """The server's own /transcribe of each recording (JSON): its `utterances` are the same endpointer's cuts."""
    bodies = {}
    for rate, wav in ((16000, phrases.wav16k), (8000, phrases.wav8k)):
        response = httpx.post(
            f"{server}/transcribe", files={"file": (wav.name, wav.read_bytes(), "audio/wav")}, timeout=60
        )
        assert response.status_code == 200, response.text
        bodies[rate] = response.json()
    return bodies


def run_script(script: Path, wav: Path) -> str:
    """One of Vosk's scripts, run with this venv's Python as its README says (`python3 test.py file.wav`)."""
    done = subprocess.run(
        [sys.executable, str(script), str(wav)], capture_output=True, text=True, timeout=60, cwd=script.parent
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def replies_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def frames_of(wav: Path) -> int:
    info = soundfile.info(wav)
    return -(-info.frames // int(info.samplerate * FRAME_S))


def phrase_of(phrases: Phrases, start: float, end: float) -> int:
    """Which phrase's clip [start, end] lies in (within SLACK_S); fails if none."""
    for i, (clip_start, clip_end) in enumerate(phrases.spans):
        if clip_start - SLACK_S <= start <= end <= clip_end + SLACK_S:
            return i
    raise AssertionError(f"{start}-{end} s lies in no phrase's clip: {phrases.spans}")


# --- the tests ---------------------------------------------------------------------------------------------


def test_the_embedded_scripts_are_upstreams_byte_for_byte() -> None:
    for name, text in UPSTREAM.items():
        assert hashlib.sha256(text.encode()).hexdigest() == UPSTREAM_SHA256[name], name
    assert json.dumps(UPSTREAM_PHRASE_LIST) in TEST_WORDS_PY


@pytest.mark.parametrize("rate", [16000, 8000])
def test_test_py_gets_a_result_per_phrase(
    scripts: dict[str, Path], phrases: Phrases, transcribed: dict[int, dict[str, Any]], rate: int
) -> None:
    """test.py: a reply per 0.2 s frame and one for eof; a result at each pause (each one of /transcribe's
    utterances of the same file, in order), words timed inside its phrase; partials start afresh after each."""
    wav = phrases.wav16k if rate == 16000 else phrases.wav8k
    replies = replies_of(run_script(scripts["test.py"], wav))
    body = transcribed[rate]
    assert len(replies) == frames_of(wav) + 1
    *per_frame, final = replies
    assert all(set(r) in ({"partial"}, {"result", "text"}) for r in per_frame), per_frame
    results = [r for r in per_frame if "result" in r]
    assert len(results) >= 2, f"a result at each pause before eof: {per_frame}"
    texts = [r["text"] for r in results] + ([final["text"]] if final.get("text") else [])
    assert texts == [u["text"] for u in body["utterances"]]
    assert " ".join(texts) == body["text"]
    assert len(texts) == len(PHRASES), f"one utterance per phrase: {texts}"
    for i, result in enumerate([*results, final][: len(texts)]):
        words = result["result"]
        assert [w["word"] for w in words] == result["text"].split()
        assert all(w["start"] <= w["end"] for w in words)
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        assert phrase_of(phrases, words[0]["start"], words[-1]["end"]) == i, (i, result["text"])
    if len(results) == len(PHRASES):
        assert final == {"text": ""}, "eof after the last result: nothing left to say"
    # After each result the recognizer starts afresh: the next reply is an empty partial (each pause lasts
    # longer than the endpoint's 0.7 s by a frame or more), and no later partial repeats an earlier result.
    heard: list[str] = []
    for before, reply in zip(per_frame, per_frame[1:], strict=False):
        if "result" in before:
            heard.append(before["text"])
            assert reply == {"partial": ""}, reply
        if "partial" in reply and reply["partial"]:
            assert not any(text in reply["partial"] for text in heard), (reply, heard)


def test_test_srt_py_subtitles_each_phrase(
    scripts: dict[str, Path], phrases: Phrases, transcribed: dict[int, dict[str, Any]]
) -> None:
    """test_srt.py: the SRT it writes from the results' words has a group of subtitles per phrase (7 words a
    line), timed inside the audio, in order, and their words are the transcript."""
    subtitles = list(srt.parse(run_script(scripts["test_srt.py"], phrases.wav16k)))
    body = transcribed[16000]
    assert subtitles, "no subtitles"
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1))
    for sub in subtitles:
        assert timedelta(0) <= sub.start < sub.end <= timedelta(seconds=phrases.duration), sub
    assert [s.start for s in subtitles] == sorted(s.start for s in subtitles)
    assert all(a.end <= b.start for a, b in zip(subtitles, subtitles[1:], strict=False))
    assert [w for s in subtitles for w in s.content.split()] == body["text"].split()
    groups: dict[int, list[Any]] = {}
    for sub in subtitles:
        phrase = phrase_of(phrases, sub.start.total_seconds(), sub.end.total_seconds())
        groups.setdefault(phrase, []).append(sub)
    assert sorted(groups) == list(range(len(PHRASES))), "a group of subtitles for each phrase"
    for utterance, group in zip(body["utterances"], (groups[i] for i in sorted(groups)), strict=True):
        assert [w for s in group for w in s.content.split()] == utterance["text"].split()
        assert group[0].start.total_seconds() == pytest.approx(utterance["start"], abs=1e-3)
        assert group[-1].end.total_seconds() == pytest.approx(utterance["end"], abs=1e-3)


@pytest.fixture(scope="module")
def words_replies(scripts: dict[str, Path], phrases: Phrases) -> list[dict[str, Any]]:
    """test_words.py's replies on the three phrases: phrase_list of digits and "words": 0."""
    return replies_of(run_script(scripts["test_words.py"], phrases.wav16k))


def test_test_words_py_words_0_sends_text_only(words_replies: list[dict[str, Any]], phrases: Phrases) -> None:
    """ "words": 0: results carry only their text, never a "result" array (the eof reply included)."""
    assert len(words_replies) == frames_of(phrases.wav16k) + 1
    assert all(set(r) in ({"partial"}, {"text"}) for r in words_replies), words_replies
    assert "partial" not in words_replies[-1]


def test_test_words_py_phrase_list_is_a_grammar(words_replies: list[dict[str, Any]]) -> None:
    """Vosk recognizes only the phrase list's words (or "[unk]") once it is sent: not "kitchen" or "weather"."""
    allowed = {word for phrase in UPSTREAM_PHRASE_LIST for word in phrase.split()} | {"[unk]"}
    said = [word for r in words_replies for word in r.get("text", r.get("partial", "")).split()]
    assert said, "something was recognized"
    assert set(said) <= allowed, sorted(set(said) - allowed)


def test_endpoint_silence_0_keeps_one_utterance_to_eof(
    server: ServerUrl, phrases: Phrases, transcribed: dict[int, dict[str, Any]]
) -> None:
    """`endpoint_silence_ms: 0` in the config: no endpoint at the pauses, so only partials until eof, whose
    result is the whole recording's text, timed from the first phrase to the last."""
    pcm = soundfile.read(phrases.wav16k, dtype="int16")[0].tobytes()
    frame = int(16000 * FRAME_S) * 2
    replies = []
    with connect(f"{server.ws}/vosk") as ws:  # as test.py drives it: a reply per message
        ws.send(json.dumps({"config": {"sample_rate": 16000, "endpoint_silence_ms": 0}}))
        for start in range(0, len(pcm), frame):
            ws.send(pcm[start : start + frame])
            replies.append(json.loads(ws.recv()))
        ws.send('{"eof" : 1}')
        replies.append(json.loads(ws.recv()))
    *per_frame, final = replies
    assert all(set(r) == {"partial"} for r in per_frame), [r for r in per_frame if "partial" not in r]
    assert final["text"] == transcribed[16000]["text"]
    words = final["result"]
    assert [w["word"] for w in words] == final["text"].split()
    assert phrase_of(phrases, words[0]["start"], words[0]["end"]) == 0
    assert phrase_of(phrases, words[-1]["start"], words[-1]["end"]) == len(PHRASES) - 1


def test_the_clients_leave_no_error_in_the_server_log(server: ServerUrl) -> None:
    """Last in the module: Vosk's clients, which close the connection as soon as they have the final, are the
    ordinary case, so the log holds no error for any of the sessions above."""
    problems = [
        line for line in server.log.read_text().splitlines() if "ERROR" in line or "Traceback" in line
    ]
    assert not problems, problems
