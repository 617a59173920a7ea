"""Section 1: real-time factor of /transcribe's stages in process, and end to end over HTTP."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from tests.support.server import ServerUrl

from .audio import Clip
from .common import TARGET_NETWORK_RTF, BenchError, best_of, log, normalise, repeats_for
from .models import LoadedModel, uvicorn_server

if TYPE_CHECKING:
    from .run import Bench


def whole_file_stages(model: LoadedModel, clip: Clip, with_engine: bool = False) -> dict[str, Any]:
    """/transcribe's pipeline stage by stage, with the service's own functions (and, with `with_engine`, the
    same audio through Engine.transcribe in one call, as a check that the stages add up to it)."""
    from app.speech.audio import decode_audio
    from app.speech.features import context_window_blocks, mfcc
    from app.speech.runtime import LstmState

    engine = model.engine
    data = clip.path.read_bytes()
    t0 = time.perf_counter()
    samples, duration = decode_audio(data)
    t1 = time.perf_counter()
    frames = mfcc(samples)
    features_s = time.perf_counter() - t1
    network_s = 0.0
    state = LstmState.zeros(engine.model.n_cell_dim)
    parts = [np.zeros((0, engine.model.n_classes), np.float32)]
    blocks = context_window_blocks(frames, engine.model.max_steps)
    while True:
        t = time.perf_counter()
        windows = next(blocks, None)
        features_s += time.perf_counter() - t
        if windows is None:
            break
        t = time.perf_counter()
        probs, state = engine.model.run_window(windows, state)
        network_s += time.perf_counter() - t
        parts.append(probs)
    probs = np.concatenate(parts)
    t = time.perf_counter()
    transcript = engine.decoder.decode(probs)
    decoder_s = time.perf_counter() - t
    result: dict[str, Any] = {}
    if with_engine:
        t = time.perf_counter()
        result["engine_text"] = engine.transcribe(samples).transcript.text
        result["engine_transcribe_s"] = time.perf_counter() - t
    return {
        **result,
        "audio_seconds": duration,
        "steps": int(len(probs)),
        "decode_audio_s": t1 - t0,
        "features_s": features_s,
        "network_s": network_s,
        "decoder_s": decoder_s,
        "seconds": features_s + network_s + decoder_s,  # what best_of compares
        "text": transcript.text,
    }


def http_transcribe(server: ServerUrl, clip: Clip) -> dict[str, Any]:
    import httpx

    data = clip.path.read_bytes()
    started = time.perf_counter()
    response = httpx.post(
        f"{server}/transcribe", files={"file": ("speech.wav", data, "audio/wav")}, timeout=3600
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"POST /transcribe answered {response.status_code}: {response.text[:300]}")
    body = response.json()
    return {
        "seconds": seconds,
        "processing_seconds": body.get("processing_seconds"),
        "text": body.get("text", ""),
        "decoder": body.get("decoder"),
    }


def section_whole_file(bench: Bench, model: LoadedModel) -> None:
    results: dict[str, Any] = {}
    for seconds in bench.profile.clips:
        clip = bench.clips[seconds]
        log(f"1 whole file: {model.name}, {clip.label}")
        r = best_of(repeats_for(seconds, model), partial(whole_file_stages, model, clip))
        audio = r["audio_seconds"]
        if seconds == bench.profile.short:
            engine = whole_file_stages(model, clip, with_engine=True)
            r["engine_transcribe_s"] = engine["engine_transcribe_s"]
            r["engine_transcribe_rtf"] = engine["engine_transcribe_s"] / audio
            r["engine_text"] = engine["engine_text"]
        for stage in ("decode_audio", "features", "network", "decoder"):
            r[f"{stage}_rtf"] = r[f"{stage}_s"] / audio
        r["in_process_rtf"] = (r["decode_audio_s"] + r["seconds"]) / audio
        results[clip.label] = r
        rtf = r["network_rtf"]
        target = ("<=", TARGET_NETWORK_RTF) if model.width == 2048 else None
        bench.row(model, 1, f"network RTF ({clip.label})", rtf, target)
        bench.row(model, 1, f"decode audio RTF ({clip.label})", r["decode_audio_rtf"])
        bench.row(model, 1, f"features RTF ({clip.label})", r["features_rtf"])
        bench.row(model, 1, f"decoder RTF ({clip.label})", r["decoder_rtf"])
        bench.row(model, 1, f"in-process total RTF ({clip.label})", r["in_process_rtf"])
    http_lengths = [s for s in bench.profile.http if s in bench.clips]
    if http_lengths:
        with uvicorn_server(model.path, f"{model.name}-http") as server:
            for seconds in http_lengths:
                clip = bench.clips[seconds]
                log(f"1 whole file over HTTP: {model.name}, {clip.label}")
                r = best_of(repeats_for(seconds, model), partial(http_transcribe, server, clip))
                r["rtf"] = r["seconds"] / seconds
                in_process = results[clip.label]
                r["http_over_in_process"] = r["seconds"] / (
                    in_process["decode_audio_s"] + in_process["seconds"]
                )
                r["text_equals_in_process"] = normalise(r["text"]) == normalise(in_process["text"])
                results[clip.label]["http"] = r
                bench.row(model, 1, f"HTTP end-to-end RTF ({clip.label})", r["rtf"])
                bench.row(model, 1, f"HTTP / in-process time ({clip.label})", r["http_over_in_process"])
    bench.section_result("whole_file", model, results)
