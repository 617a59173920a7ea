"""Section 4: N websocket streams on a real uvicorn, fed as fast as the server accepts them; batching on and
off."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.speech.runtime.cores import available_cores, default_decoder_processes
from tests.support.server import ServerUrl

from .common import (
    BATCHED_STREAMS,
    PIECE_SAMPLES,
    SAMPLE_RATE,
    SYNC_MESSAGE,
    TARGET_BATCHED_RATIO,
    TARGET_PROCESSES_RATIO,
    BenchError,
    CpuMeter,
    RssSampler,
    completing_pieces,
    log,
    normalise,
    percentile,
    rss_kib,
)
from .models import LoadedModel, uvicorn_server

if TYPE_CHECKING:
    from .run import Bench


@dataclass
class StreamOutcome:
    latencies: list[float]
    text: str
    partials: int


# Messages a stream sends on its way: an utterance ends at each pause; a warning says a noise-like input (the
# random-weight model's) put the decoder under pressure.
PASSING = ("partial", "utterance", "warning")


async def _drive_stream(ws: Any, pieces: Sequence[bytes], completes: Sequence[bool]) -> StreamOutcome:
    """Closed loop: a 320 ms frame, then a message of unknown type whose error reply (the server answers a
    stream's messages in order) says the frame was taken; then the next frame. Latency of a frame that
    completes a chunk = from sending it to the first reply after it (its partial, or the ack if the text did
    not change)."""
    latencies: list[float] = []
    partials = 0
    for piece, completes_chunk in zip(pieces, completes, strict=True):
        started = time.perf_counter()
        await ws.send(piece)
        await ws.send(SYNC_MESSAGE)
        first: float | None = None
        while True:
            message = json.loads(await ws.recv())
            if first is None:
                first = time.perf_counter() - started
            if message.get("type") in PASSING:
                partials += message.get("type") == "partial"
                continue
            if message.get("type") == "error" and message.get("code") == "bad_message":
                break
            raise BenchError(f"unexpected message from /stream: {message}")
        if completes_chunk:
            latencies.append(first)
    await ws.send(json.dumps({"type": "eof"}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == "final":
            return StreamOutcome(latencies, message.get("text", ""), partials)
        if message.get("type") not in PASSING:
            raise BenchError(f"unexpected message from /stream after eof: {message}")


async def _run_streams(url: str, pcm: np.ndarray, n: int) -> tuple[float, list[StreamOutcome]]:
    from websockets.asyncio.client import connect

    data = pcm.astype("<i2").tobytes()
    step = PIECE_SAMPLES * 2
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    completes = completing_pieces(len(pcm))
    sockets = await asyncio.gather(
        *(
            connect(url, max_size=None, ping_interval=None, open_timeout=120, close_timeout=10)
            for _ in range(n)
        )
    )
    # Generous (20 s of wall time per second of audio, all streams together), but a hung server must not
    # hang the bench.
    timeout = 120 + 20 * n * len(pcm) / SAMPLE_RATE
    try:
        started = time.perf_counter()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(_drive_stream(ws, pieces, completes) for ws in sockets)), timeout
        )
        wall = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return wall, list(outcomes)


def concurrent_streams(server: ServerUrl, pcm: np.ndarray, n: int) -> dict[str, Any]:
    url = server.ws + "/stream"
    time.sleep(0.5)  # let the previous run's memory settle before the idle reading
    before = rss_kib(server.pid)
    with RssSampler(server.pid) as rss, CpuMeter(server.pid) as cpu:
        wall, outcomes = asyncio.run(_run_streams(url, pcm, n))
    audio = n * len(pcm) / SAMPLE_RATE
    latencies = [x for o in outcomes for x in o.latencies]
    texts = {o.text for o in outcomes}
    return {
        "streams": n,
        "audio_seconds": audio,
        "wall_seconds": wall,
        "audio_s_per_wall_s": audio / wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "rss_before_mib": before / 1024,
        "rss_peak_mib": rss.peak / 1024,
        "rss_per_stream_mib": max(0, rss.peak - before) / 1024 / n,
        "cpu_service_s": cpu.own,  # the service process
        "cpu_decoders_s": cpu.children,  # its decoder processes (0 when it decodes in-process)
        "text": outcomes[0].text,
        "all_finals_identical": len(texts) == 1,
        "partials_per_stream": statistics.mean(o.partials for o in outcomes),
    }


def section_concurrency(bench: Bench, model: LoadedModel) -> None:
    profile = bench.profile
    if not profile.concurrency:
        bench.skip_model_section("concurrency", model, "not in this profile")
        return
    seconds = profile.concurrency_seconds_wide if model.wide else profile.concurrency_seconds
    pcm = bench.clips[profile.longest].pcm[: int(seconds * SAMPLE_RATE)]
    results: dict[str, Any] = {
        "feeding": (
            "throughput: each stream sends its next 320 ms frame as soon as the server has taken the previous "
            "one (closed loop, acknowledged in order), not paced in real time; latency is measured under that load"
        ),
        "audio_per_stream_s": len(pcm) / SAMPLE_RATE,
        "batched": {},
    }
    processes = str(default_decoder_processes())  # the default, said explicitly: it is half of a headline
    with uvicorn_server(
        model.path, f"{model.name}-batched", DS_STREAM_BATCHING="true", DS_DECODER_PROCESSES=processes
    ) as server:
        results["server_start_s"] = server.start_seconds
        for n in profile.concurrency:
            log(f"4 concurrency: {model.name}, {n} streams, batching on")
            r = concurrent_streams(server, pcm, n)
            results["batched"][str(n)] = r
            bench.row(model, 4, f"{n} streams: audio s / wall s", r["audio_s_per_wall_s"])
            bench.row(model, 4, f"{n} streams: partial latency p95, s", r["latency_p95_s"])
            bench.row(model, 4, f"{n} streams: RSS per stream, MiB", r["rss_per_stream_mib"])
        batched = results["batched"].get(str(BATCHED_STREAMS))
        if batched is None:
            log(f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, batching on")
            batched = concurrent_streams(server, pcm, BATCHED_STREAMS)
            results["batched"][str(BATCHED_STREAMS)] = batched
    with uvicorn_server(
        model.path, f"{model.name}-unbatched", DS_STREAM_BATCHING="false", DS_DECODER_PROCESSES=processes
    ) as server:
        log(f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, batching off")
        unbatched = concurrent_streams(server, pcm, BATCHED_STREAMS)
    results["unbatched"] = {str(BATCHED_STREAMS): unbatched}
    ratio = batched["audio_s_per_wall_s"] / unbatched["audio_s_per_wall_s"]
    results["batched_over_unbatched_16_streams"] = ratio
    results["batched_same_text_as_unbatched"] = normalise(batched["text"]) == normalise(unbatched["text"])
    bench.row(
        model, 4, f"{BATCHED_STREAMS} streams unbatched: audio s / wall s", unbatched["audio_s_per_wall_s"]
    )
    bench.row(
        model,
        4,
        f"batched / unbatched throughput ({BATCHED_STREAMS} streams)",
        ratio,
        (">=", TARGET_BATCHED_RATIO),
    )
    bench.row(model, 4, "batched finals = unbatched finals", results["batched_same_text_as_unbatched"])
    # The same pair with greedy decoding: what batching does for the network alone, without the beam search
    # (which holds the GIL and, on the random model's flat probabilities, costs as much as the network).
    greedy: dict[str, Any] = {}
    for batching in ("true", "false"):
        tag = f"{model.name}-greedy-{'batched' if batching == 'true' else 'unbatched'}"
        with uvicorn_server(model.path, tag, DS_STREAM_BATCHING=batching, DS_DECODER="greedy") as server:
            log(
                f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, greedy decoder, batching {batching}"
            )
            greedy[batching] = concurrent_streams(server, pcm, BATCHED_STREAMS)
    greedy_ratio = greedy["true"]["audio_s_per_wall_s"] / greedy["false"]["audio_s_per_wall_s"]
    results["greedy"] = {"batched": greedy["true"], "unbatched": greedy["false"], "ratio": greedy_ratio}
    bench.row(model, 4, f"greedy decoder: batched / unbatched ({BATCHED_STREAMS} streams)", greedy_ratio)
    results["processes"] = decoder_processes(bench, model, pcm, batched)
    results["beam_streams_processes_over_one"] = results["processes"]["ratio"]
    bench.section_result("concurrency", model, results)


def decoder_processes(
    bench: Bench, model: LoadedModel, pcm: np.ndarray, default: dict[str, Any]
) -> dict[str, Any]:
    """16 beam-search streams with decoding in the service process (DS_DECODER_PROCESSES=0), against the same
    with a decoder process per core ("every core", the headline) and, measured above with batching on, with the
    default (the cores less one)."""
    runs = {"0": {}, str(available_cores()): {}}
    for processes in runs:
        with uvicorn_server(
            model.path, f"{model.name}-processes-{processes}", DS_DECODER_PROCESSES=processes
        ) as s:
            log(f"4 concurrency: {model.name}, {BATCHED_STREAMS} streams, DS_DECODER_PROCESSES={processes}")
            runs[processes] = concurrent_streams(s, pcm, BATCHED_STREAMS)
    one, every = runs["0"], runs[str(available_cores())]
    ratio = every["audio_s_per_wall_s"] / one["audio_s_per_wall_s"]
    default_ratio = default["audio_s_per_wall_s"] / one["audio_s_per_wall_s"]
    speed = f"{BATCHED_STREAMS} streams, decoding %s: audio s / wall s"
    bench.row(model, 4, speed % "in-process", one["audio_s_per_wall_s"])
    bench.row(model, 4, speed % f"in {available_cores()} processes", every["audio_s_per_wall_s"])
    bench.row(model, 4, "decoder processes, one per core / in-process", ratio, (">=", TARGET_PROCESSES_RATIO))
    bench.row(
        model, 4, f"default decoder processes ({default_decoder_processes()}) / in-process", default_ratio
    )
    modelled = cores_model(one, every)
    for cores, value in modelled.items():
        bench.row(model, 4, f"decoder processes / in-process, modelled for {cores} cores", value)
    return {
        "decoder_processes": available_cores(),
        "default_decoder_processes": default_decoder_processes(),
        "in_process": one,
        "every_core": every,
        "ratio": ratio,
        "default_ratio": default_ratio,
        "same_text": normalise(one["text"]) == normalise(every["text"]) == normalise(default["text"]),
        "modelled_ratio_by_cores": modelled,
        "model": CORES_MODEL,
    }


CORES_MODEL = (
    "From the runs above, in-process and a decoder process per core: in-process, the beam search holds the GIL, "
    "so its measured wall time W stands for any core count (the network's BLAS threads overlap it; more cores "
    "would add a little there, so the model errs high); with decoder processes the service process used S CPU "
    "seconds and the decoder processes D, so on C cores the run takes about max(S, (S+D)/C). Modelled ratio = "
    "W / that; at this machine's core count it can be checked against the measured ratio. S is taken as one "
    "core's work (its Python holds the GIL; the NumPy network's helper threads would shorten it, and on a Mac "
    "with Core ML the network leaves the CPU and S shrinks): for a Mac mini's 8-10 cores the model errs low."
)


def cores_model(
    one: dict[str, Any], every: dict[str, Any], cores: Sequence[int] = (1, 2, 8, 10)
) -> dict[str, float]:
    """`CORES_MODEL`: the ratio decoder processes / in-process for `cores` cores, from the measured CPU split."""
    service, decoders = every["cpu_service_s"], every["cpu_decoders_s"]
    modelled = {}
    for c in cores:
        wall = max(service, (service + decoders) / c)
        modelled[str(c)] = one["wall_seconds"] / wall if wall > 0 else 0.0
    return modelled
