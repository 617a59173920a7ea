"""The decoder's memory is bounded whatever it hears: noise-like probabilities (every hypothesis alive) at
DeepSpeech's widest beams, measured in spawned processes (scripts/decoder_memory.py), and streams admitted
only while their worst case fits DS_DECODER_MEMORY_MB."""

from __future__ import annotations

from app.service.services import stream_limit
from app.settings import Settings
from app.speech.decoding.beam import MIN_PRUNE_INTERVAL, BeamOptions
from scripts.benchmarks import decoder_memory


def test_the_default_beam_is_unchanged_and_wide_beams_prune_sooner() -> None:
    assert (
        BeamOptions(beam_width=500).stream_prune_interval == 200
    )  # the held-out WER/CER's decoder, as it was
    assert BeamOptions(beam_width=500).stream_prune_look_back == 100
    wide = BeamOptions(beam_width=2048)
    assert wide.stream_prune_interval * 2048 <= wide.max_hypothesis_frames
    assert BeamOptions(beam_width=100_000).stream_prune_interval == MIN_PRUNE_INTERVAL


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
