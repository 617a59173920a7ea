"""The headline ratios, the table on stdout and the JSON report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BEAM_WIDTH,
    BLAS_THREAD_VARS,
    HEADLINE_MODEL,
    HEADLINE_SECTIONS,
    HEADLINES,
    LONG_SECONDS,
    PIECE_SAMPLES,
    ROOT,
    SAMPLE_RATE,
    SECTION_IDS,
    SECTION_NAMES,
    TARGET_BATCHED_RATIO,
    TARGET_NATIVE_RATIO,
    TARGET_NETWORK_RTF,
    TARGET_PROCESSES_RATIO,
    TARGET_SEED_RATIO,
    TARGET_SGEMM_FRACTION,
    TARGET_STREAM_OVER_WHOLE,
    TINY,
    clip_label,
    foreign_settings,
    log,
)
from .run import Bench


def _pick(bench: Bench, section: str) -> tuple[str, dict[str, Any]] | None:
    """The headline model's result in a section, else the widest model's that has one."""
    results = bench.sections.get(section, {})
    if HEADLINE_MODEL in results:
        return HEADLINE_MODEL, results[HEADLINE_MODEL]
    ranked = sorted(results, key=lambda name: -bench.models[name].width)
    return (ranked[0], results[ranked[0]]) if ranked else None


def _missing_reason(bench: Bench, section: str) -> str:
    reasons = [reason for key, reason in bench.skipped.items() if key.split("/")[0] == section]
    if reasons:
        return "; ".join(sorted(set(reasons)))
    if SECTION_IDS[section] not in bench.wanted_sections:
        return f"section {SECTION_IDS[section]} was not selected (--sections)"
    return "not measured"


def headlines(bench: Bench) -> tuple[dict[str, float | None], dict[str, Any], dict[str, str]]:
    """The four headline ratios, how each was measured, and which are estimates rather than the full figure."""
    values: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    estimates: dict[str, str] = {}
    tiny = bench.profile is TINY

    def put(
        key: str, section: str, value_of: Callable[[dict[str, Any]], float], info: dict[str, Any]
    ) -> None:
        picked = _pick(bench, section)
        if picked is None:
            values[key] = None
            details[key] = {"value": None, "reason": _missing_reason(bench, section)}
            return
        name, result = picked
        values[key] = value_of(result)
        info = {"value": values[key], "model": name, "width": bench.models[name].width, **info}
        info["per_model"] = {m: value_of(r) for m, r in bench.sections[section].items()}
        if name != HEADLINE_MODEL:
            info["substitute"] = (
                f"measured on {name} (width {info['width']}): {HEADLINE_MODEL} was not in --models"
            )
            estimates[key] = info["substitute"]
        details[key] = info

    # Section results hold one entry per clip, shortest first: the headline uses the longest.
    put("whole_file_network_rtf_2048", "whole_file", lambda r: r[list(r)[-1]]["network_rtf"], {})
    whole = _pick(bench, "whole_file")
    if whole:
        label = list(whole[1])[-1]
        details["whole_file_network_rtf_2048"].update(
            audio=label, how="network seconds / audio seconds, NumPy backend, dynamic model in windows"
        )
        if label != clip_label(LONG_SECONDS):
            estimates.setdefault("whole_file_network_rtf_2048", f"measured on {label} of audio, not 10 min")

    put("seed_loop_over_stream_10min", "streaming", lambda r: r["seed_over_stream_10min"]["value"], {})
    stream = _pick(bench, "streaming")
    if stream:
        info = stream[1]["seed_over_stream_10min"]
        details["seed_loop_over_stream_10min"].update(
            {k: v for k, v in info.items() if k != "value"}, decoder=bench.models[stream[0]].decoder
        )
        if info["stream_extrapolated"]:
            longest = clip_label(bench.profile.longest)
            estimates.setdefault(
                "seed_loop_over_stream_10min",
                f"our stream's 10 min time extrapolated linearly from {longest} (the seed's is always fitted)",
            )

    put("native_client_over_ours", "native_client", lambda r: r["native_client_over_ours"], {})
    native = _pick(bench, "native_client")
    if native:
        label = list(native[1]["clips"])[-1]
        r = native[1]["clips"][label]
        details["native_client_over_ours"].update(
            audio=label,
            how="native client seconds / ours, the smaller of whole file and stream",
            whole_ratio=r["whole_ratio"],
            stream_ratio=r["stream_ratio"],
            same_text_whole=r["whole_same_text"],
            same_text_stream=r["stream_same_text"],
            decoder=native[1]["decoder"],
        )

    put(
        "batched_over_unbatched_16_streams",
        "concurrency",
        lambda r: r["batched_over_unbatched_16_streams"],
        {},
    )
    conc = _pick(bench, "concurrency")
    if conc:
        details["batched_over_unbatched_16_streams"].update(
            how="aggregate audio seconds per wall second, 16 streams, DS_STREAM_BATCHING=true / =false",
            feeding=conc[1]["feeding"],
            audio_per_stream_s=conc[1]["audio_per_stream_s"],
            greedy_decoder_ratio=conc[1].get("greedy", {}).get("ratio"),
        )
    put("beam_streams_processes_over_one", "concurrency", lambda r: r["beam_streams_processes_over_one"], {})
    if conc:
        details["beam_streams_processes_over_one"].update(
            how="aggregate audio seconds per wall second, 16 beam-search streams, a decoder process per core / "
            "DS_DECODER_PROCESSES=0, batching on; default_ratio: the default DS_DECODER_PROCESSES (the cores less "
            "one) / 0",
            decoder_processes=conc[1]["processes"]["decoder_processes"],
            default_ratio=conc[1]["processes"]["default_ratio"],
            same_text=conc[1]["processes"]["same_text"],
            modelled_by_cores=conc[1]["processes"]["modelled_ratio_by_cores"],
            model=conc[1]["processes"]["model"],
        )
    if tiny:
        for key in HEADLINES:
            if values.get(key) is not None:
                note = "tiny profile (tests): seconds of audio, not a figure to quote"
                estimates[key] = f"{note}; {estimates[key]}" if key in estimates else note
    return values, details, estimates


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def print_table(bench: Bench, values: dict[str, float | None], estimates: dict[str, str], out: Any) -> None:
    header = ("model", "section", "metric", "value", "target", "ok")
    rows = [
        (
            r["model"],
            f"{r['section']} {SECTION_NAMES[r['section']].replace('_', ' ')}",
            r["metric"],
            _format(r["value"]),
            r["target"] or "",
            "" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL"),
        )
        for r in bench.rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:{'>' if i in (3,) else '<'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    previous = None
    for row in rows:
        if previous is not None and row[1] != previous:
            print(file=out)
        previous = row[1]
        print(line.format(*row).rstrip(), file=out)
    print(file=out)
    print("headline ratios (each measured within this one run):", file=out)
    for key in HEADLINES:
        value = values.get(key)
        note = estimates.get(key, "")
        text = (
            _format(value)
            if value is not None
            else "null (" + _missing_reason(bench, HEADLINE_SECTIONS[key]) + ")"
        )
        print(f"  {key:36s} {text}" + (f"   [estimate: {note}]" if note else ""), file=out)
    if bench.skipped:
        print("skipped:", file=out)
        for key, reason in bench.skipped.items():
            print(f"  {key}: {reason}", file=out)
    notes = [
        "times are the best of 2-3 runs for clips up to 15 s, else one run; ratios compare runs of this process",
        "RTF = seconds / audio seconds; latency = until the partial of the piece that completes a 16-step chunk",
    ]
    for result in bench.sections.get("concurrency", {}).values():
        notes.append("section 4 feeding: " + result["feeding"])
        break
    if "limit" in bench.sections and "note" in bench.sections["limit"]:
        notes.append("section 5: " + bench.sections["limit"]["note"])
    print("notes:", file=out)
    for note in notes:
        print("  - " + note, file=out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    blas = ""
    with contextlib.suppress(Exception):
        config = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = f"{config['Build Dependencies']['blas']['name']} {config['Build Dependencies']['blas']['version']}"
    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "git_commit": commit,
        "git_dirty": dirty,
        # BLAS threads change small products' speed a lot on a loaded machine: what this run had (after
        # `import app`, which sets the service's default).
        "ignored_ds_settings": foreign_settings(),
        "dotenv_present": (ROOT / ".env").exists(),  # the server subprocesses would read it
        "blas_thread_env": {k: os.environ[k] for k in BLAS_THREAD_VARS if k in os.environ},
    }


def write_json(
    path: Path,
    bench: Bench,
    values: dict[str, float | None],
    details: dict[str, Any],
    estimates: dict[str, str],
    wall: float,
    load_start: tuple[float, float, float],
    argv: list[str],
) -> None:
    """Every number of the run: the headline ratios first, then how each was measured, the sections' results,
    the table's rows and what was skipped."""
    report = {
        **values,
        "quick_estimates": estimates,
        "headline_details": details,
        "profile": bench.profile.name,
        "wall_seconds": wall,
        "targets": {
            "whole_file_network_rtf_2048": f"<= {TARGET_NETWORK_RTF}",
            "stream_compute_over_whole_file": f"<= {TARGET_STREAM_OVER_WHOLE}",
            "seed_loop_over_stream_10min": f">= {TARGET_SEED_RATIO}",
            "native_client_over_ours": f">= {TARGET_NATIVE_RATIO}, same transcripts",
            "batched_over_unbatched_16_streams": f">= {TARGET_BATCHED_RATIO}",
            "beam_streams_processes_over_one": f">= {TARGET_PROCESSES_RATIO} on 2 cores",
            "dense_batched_fraction_of_sgemm": f">= {TARGET_SGEMM_FRACTION}",
        },
        "meta": {
            **machine_info(),
            "argv": argv,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "beam_width": BEAM_WIDTH,
            "piece_seconds": PIECE_SAMPLES / SAMPLE_RATE,
        },
        "models": {
            name: {"path": m.path, "width": m.width, "decoder": m.decoder, "scorer": m.scorer}
            for name, m in bench.models.items()
        },
        "audio": {c.label: {"path": c.path, "seconds": c.seconds} for c in bench.clips.values()},
        "sections": bench.sections,
        "rows": bench.rows,
        "skipped": bench.skipped,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(report), indent=1) + "\n", encoding="utf-8")
    log(f"wrote {path}")
