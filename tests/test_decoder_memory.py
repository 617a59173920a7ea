"""The decoder's memory is bounded whatever it hears: noise-like probabilities (every hypothesis alive) at
DeepSpeech's widest beams, measured in spawned processes (scripts/decoder_memory.py), streams admitted only
while their worst case fits DS_DECODER_MEMORY_MB, and a stream whose beam stays full (music, to the default
model) pruning more often under that pressure, warned and counted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from app.main import create_app
from app.service.services import stream_limit
from app.settings import Settings
from app.speech.alphabet import ENGLISH
from app.speech.decoding.beam import MIN_PRUNE_INTERVAL, BeamDecoder, BeamOptions
from app.speech.decoding.lm import Scorer
from app.speech.engine import Engine
from app.speech.session import StreamSession
from scripts.benchmarks import decoder_memory
from tests.support.audio import DEMO_PHRASES, pcm16, spoken_phrases
from tests.support.metrics import scrape, value
from tests.support.protocol import stream_pcm

ROOT = Path(__file__).resolve().parent.parent
PHRASES = DEMO_PHRASES


def test_the_default_beam_is_unchanged_and_wide_beams_prune_sooner() -> None:
    assert (
        BeamOptions(beam_width=500).stream_prune_interval == 200
    )  # the held-out WER/CER's decoder, as it was
    assert BeamOptions(beam_width=500).stream_prune_look_back == 100
    wide = BeamOptions(beam_width=2048)
    assert wide.stream_prune_interval * 2048 <= wide.max_hypothesis_frames
    assert BeamOptions(beam_width=100_000).stream_prune_interval == MIN_PRUNE_INTERVAL


@pytest.mark.slow  # 20 s of beam search at width 2048; the pressure tests below run in the suite
def test_noise_at_width_2048_stays_within_the_bound() -> None:
    bounded = decoder_memory.measure(2048, True, streams=4, seconds=12.0)
    unbounded = decoder_memory.measure(2048, False, streams=4, seconds=12.0)
    print(bounded, unbounded, sep="\n")
    assert bounded.peak_mib_per_stream <= bounded.bound_mib_per_stream
    assert unbounded.peak_mib_per_stream > 1.5 * bounded.peak_mib_per_stream  # the bound is what holds it


def test_streams_are_admitted_while_their_worst_case_fits() -> None:
    per_stream = BeamOptions(beam_width=2048).stream_memory_bytes
    settings = Settings(beam_width=2048, max_streams=64, decoder_memory_mb=per_stream * 10 // 2**20 + 1)
    assert stream_limit(settings) == 10
    assert stream_limit(Settings(beam_width=500, max_streams=64, decoder_memory_mb=8192)) == 64
    assert stream_limit(Settings(decoder="greedy", max_streams=64, decoder_memory_mb=64)) == 64


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of plucked C-E-G chords, four a second (sox): a sound the default model hears as noise."""
    path = tmp_path_factory.mktemp("pressure") / "pluck.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-b", "16", "-c", "1", str(path), "synth", "0.25"]
        + ["pluck", "C4", "pluck", "E4", "pluck", "G4", "remix", "-", "repeat", "47", "vol", "0.6"],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spoken_phrases(PHRASES, tmp_path_factory.mktemp("pressure") / "phrases.wav")


@pytest.fixture(scope="module")
def default_settings() -> Settings:
    return Settings(model_dir=ROOT / "models" / "default", backend="numpy", decoder_processes=0)


def streamed(engine: Engine, wav: Path) -> StreamSession:
    samples = soundfile.read(wav, dtype="float32")[0]
    session = engine.open_stream()
    for start in range(0, len(samples), 3200):
        session.feed(samples[start : start + 3200])
    session.finish()
    return session


@pytest.mark.parametrize("processes", [0, 1])
def test_music_puts_the_decoder_under_pressure_and_speech_does_not(
    default_settings: Settings, music: Path, speech: Path, processes: int
) -> None:
    engine = Engine.load(default_settings.model_copy(update={"decoder_processes": processes}))
    try:
        assert streamed(engine, music).decoder_limited  # across the pipe too, with a decoder process
        quiet = streamed(engine, speech)
        assert not quiet.decoder_limited
        assert quiet.utterances[0].text == PHRASES[0]
    finally:
        engine.close()


def test_pressure_is_decided_at_the_same_frames_however_the_audio_is_chunked() -> None:
    """Noise-like probabilities at width 500: whole at once and in 16-frame chunks, the same prunes under
    pressure and the same text (a prune point that depended on the chunking would change the search)."""
    logits = np.random.default_rng(1).normal(size=(1500, ENGLISH.n_classes)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    decoder = BeamDecoder(ENGLISH, Scorer(ROOT / "models" / "default" / "kenlm.scorer", ENGLISH))
    whole = decoder.stream()
    whole.feed(probs)
    chunked = decoder.stream()
    for start in range(0, len(probs), 16):
        chunked.feed(probs[start : start + 16])
    assert whole.limited_prunes == chunked.limited_prunes > 0
    assert whole.finish().text == chunked.finish().text


def test_a_stream_under_pressure_is_warned_once_and_counted(
    default_settings: Settings, music: Path, speech: Path
) -> None:
    with TestClient(create_app(default_settings, Engine.load(default_settings))) as client:
        warned = [m for m in stream_pcm(client, pcm16(music)) if m["type"] == "warning"]
        assert [m["code"] for m in warned] == ["decoder_limited"]
        assert "noise" in warned[0]["message"]
        assert not [m for m in stream_pcm(client, pcm16(speech)) if m["type"] == "warning"]
        assert value(scrape(client), "ds_decoder_limited_streams_total", route="/stream") == 1
