"""Property-based and fuzz tests of everything that reads untrusted bytes (issue 8), all bounded to run in seconds.

- hypothesis: random bytes and random mutations of valid WAV/FLAC/Ogg Vorbis/Opus/WebM/MP3 files into
  `app.speech.audio.decode_audio`, and random chunks into the websocket inputs (`StreamAudio` push/finish): only the
  documented `AudioError`s ever escape, and what comes out is finite 16 kHz float32. Arbitrary JSON control
  messages and binary frames to /stream and /vosk never end a stream with 1011 or a traceback, and eof still gets
  the final.
- schemathesis: the app's own OpenAPI document, both valid and invalid requests for every operation: no 5xx,
  only declared statuses, content types and response bodies that match the schema.
- atheris (libFuzzer, coverage-guided; Linux x86_64 wheels only, skipped where it is not installed): a few
  thousand runs over `decode_audio` from a seed corpus, in a subprocess since `atheris.Fuzz` exits the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck, Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from app.speech.audio import SAMPLE_RATE, AudioError, decode_audio
from app.speech.engine import Engine
from app.speech.stream_audio import StreamAudio
from tests.support.audio import encode, tone, with_pyav
from tests.support.files import FLAC, OPUS, VORBIS, WAV
from tests.support.protocol import assert_no_leak, converse
from tests.support.redis import running_redis

BOUNDED = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

SEEDS = [
    WAV,
    FLAC,
    VORBIS,
    OPUS,
    encode(tone(22050, 0.5, channels=3), 22050, subtype="PCM_24"),
    encode(tone(8000, 0.5), 8000, subtype="PCM_U8"),
    encode(tone(44100, 0.5), 44100, "MP3", "MPEG_LAYER_III"),
    with_pyav(tone(48000, 0.5), 48000, "webm", "libopus"),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = SEEDS) -> bytes:
    """A valid file with a few bytes overwritten, inserted or cut: most of it still parses, so the damage reaches
    the decoders rather than failing the first magic number."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "word", "insert", "cut", "truncate"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "word":
            data[at : at + 4] = draw(
                st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"])
            )
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=32))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


untrusted_files = st.one_of(mutated(), st.binary(max_size=2048))


@BOUNDED
@given(untrusted_files)
def test_decode_audio_raises_only_audio_errors(data: bytes) -> None:
    try:
        samples, duration = decode_audio(data, max_seconds=30)
    except AudioError:
        return
    assert samples.dtype == np.float32 and samples.ndim == 1 and np.all(np.isfinite(samples))
    assert 0 < duration <= 30 and abs(len(samples) - duration * SAMPLE_RATE) <= 0.05 * SAMPLE_RATE + 64


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@BOUNDED
@given(
    st.sampled_from([("pcm", 16000), ("pcm", 8000), ("pcm", 44100), ("webm", 0), ("ogg", 0)]),
    st.one_of(mutated([SEEDS[2], SEEDS[3], SEEDS[7]]), st.binary(max_size=4096)),
    st.lists(st.integers(0, 10**6), max_size=6),
)
def test_stream_inputs_raise_only_audio_errors(spec: tuple[str, int], data: bytes, cuts: list[int]) -> None:
    audio_format, rate = spec
    audio = StreamAudio.open(audio_format, rate or SAMPLE_RATE, max_seconds=30)
    out = []
    try:
        for chunk in chunks_of(data, cuts):
            try:
                out.append(audio.push(chunk))
            except AudioError:
                pass  # a bad frame: the stream goes on
        try:
            out.append(audio.finish())
        except AudioError:
            pass
    finally:
        audio.close()
    for samples in out:
        assert samples.dtype == np.float32 and samples.ndim == 1 and np.all(np.isfinite(samples))
    assert sum(map(len, out)) <= 31 * SAMPLE_RATE


# --- the websockets ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(small_model_dir: Path, small_engine: Engine) -> Iterator[TestClient]:
    service = create_app(
        Settings(model_dir=small_model_dir, stream_idle_timeout=20, stream_max_seconds=20), small_engine
    )
    with TestClient(service) as test_client:
        yield test_client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
STREAM_KEYS = [
    "type",
    "format",
    "sample_rate",
    "hot_words",
    "phrase_list",
    "alternatives",
    "resumable",
    "stream_id",
]
VOSK_KEYS = ["sample_rate", "format", "words", "phrase_list", "max_alternatives", "hot_words"]


def objects(keys: list[str], types: list[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects that look like control messages: known keys with arbitrary values (and known types)."""
    optional: dict[str, st.SearchStrategy[Any]] = {key: json_values for key in keys}
    if types:
        optional["type"] = st.sampled_from(types) | json_values
    return st.fixed_dictionaries({}, optional=optional)


def frames(control: st.SearchStrategy[Any]) -> st.SearchStrategy[list[str | bytes]]:
    frame = st.one_of(
        control.map(json.dumps),
        st.text(max_size=50),
        st.binary(max_size=3201),
    )
    return st.lists(frame, max_size=6)


def not_an_end(message: Any) -> bool:
    """eof (and Vosk's reset) end or restart a stream: the property is about what comes before the end."""
    return not (
        isinstance(message, dict)
        and (message.get("type") == "eof" or message.get("eof") or message.get("reset"))
    )


@settings(BOUNDED, max_examples=50)
@given(frames(objects(STREAM_KEYS, ["config", "resume", "dance"]).filter(not_an_end)))
def test_stream_survives_arbitrary_messages(client: TestClient, messages: list[str | bytes]) -> None:
    replies, close = converse(client, "/stream", messages, '{"type": "eof"}')
    assert close == 1000, replies
    assert replies[-1]["type"] == "final"
    assert not any(r.get("code") in ("internal_error", "inference_failed") for r in replies), replies


@settings(BOUNDED, max_examples=50)
@given(
    frames(st.one_of(st.builds(lambda c: {"config": c}, objects(VOSK_KEYS)), json_values).filter(not_an_end))
)
def test_vosk_survives_arbitrary_messages(client: TestClient, messages: list[str | bytes]) -> None:
    replies, close = converse(client, "/vosk", messages, '{"eof": 1}')
    assert close == 1000, replies
    assert "text" in replies[-1] or "alternatives" in replies[-1]
    assert not any("internal error" in str(r.get("error", "")) for r in replies), replies


# --- the OpenAPI document, with schemathesis -------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(small_model_dir: Path, small_engine: Engine) -> Iterator[FastAPI]:
    """The app with batch jobs on (a real redis-server), so /jobs answers as declared rather than 503."""
    with running_redis() as redis:
        settings = Settings(
            model_dir=small_model_dir, max_audio_seconds=60, max_upload_bytes=1_000_000, redis_url=redis.url
        )
        yield create_app(settings, small_engine)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz_operation(operation: Any, mode: schemathesis.GenerationMode, failures: dict[str, str]) -> None:
    """20 generated requests to one operation; one failure of each kind (operation, status) is kept."""

    @settings(BOUNDED, max_examples=20, phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: schemathesis.Case) -> None:
        response = case.call()
        assert_no_leak(
            response.text if response.status_code != 200 else ""
        )  # /info's 200 names the model path
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as failure:
            failures.setdefault(f"{operation.label} -> {response.status_code}", str(failure)[:1500])

    call()


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_openapi_operations_answer_as_declared(service: FastAPI, mode: schemathesis.GenerationMode) -> None:
    """Valid requests, then invalid ones, to every operation: no 5xx, and every status, content type and JSON body
    is one the OpenAPI document declares."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", service)
    failures: dict[str, str] = {}
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz_operation(operation, mode, failures)
        except (Unsatisfiable, FailedHealthCheck):
            # Nothing invalid to send (no parameters, or a path parameter any string satisfies: GET and DELETE
            # /jobs/{job_id}).
            assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() in ("GET", "DELETE")
            continue
        tried.append(operation.label)
    print(mode.value, tried)
    assert "POST /transcribe" in tried and "POST /v1/audio/transcriptions" in tried
    assert not failures, "\n\n".join(f"{key}:\n{text}" for key, text in failures.items())


# --- atheris -------------------------------------------------------------------------------------------------

FUZZ_TARGET = """
import sys

import atheris

with atheris.instrument_imports():
    from app.speech.audio import AudioError, decode_audio


def one_input(data: bytes) -> None:
    try:
        decode_audio(data, max_seconds=30)
    except AudioError:
        pass


atheris.Setup(sys.argv, one_input)
atheris.Fuzz()
"""


def test_atheris_finds_nothing_in_decode_audio(tmp_path: Path) -> None:
    """libFuzzer mutating valid files for 4000 runs: any other exception, a crash or a 30 s hang fails it."""
    pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    target = tmp_path / "fuzz_decode.py"
    target.write_text(textwrap.dedent(FUZZ_TARGET))
    run = subprocess.run(
        [
            sys.executable,
            str(target),
            "-runs=4000",
            "-max_len=16384",
            "-timeout=30",
            "-rss_limit_mb=3072",
            str(corpus),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    print(output[-600:])
    assert run.returncode == 0 and "Done 4000 runs" in output, output[-4000:]
