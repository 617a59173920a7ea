"""Bad input (issue 8): every kind of broken, lying or merely odd audio and every malformed websocket message gets a
clear 4xx or protocol error, never a 500 or a 1011 close, no traceback or file path in what the client sees, the
process alive and its memory back where it was.

Uploads go through POST /transcribe and POST /v1/audio/transcriptions in-process (httpx's ASGITransport) and over
the network to a real server; the websocket dialects /stream and /vosk through Starlette's TestClient. The files
are made here: soundfile writes valid WAV/FLAC/OGG, `struct` patches their header fields to lie (Ogg pages get
their CRCs recomputed so the lie reaches the codec rather than failing the page check), and `flac_bomb` writes a
FLAC of constant 65535-sample blocks by hand: 13 bytes a block, so a few KB decode to hours.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app.speech.stream_audio
from app.main import create_app
from app.settings import Settings
from app.speech.audio import SAMPLE_RATE, AudioTooLong, decode_audio
from app.speech.engine import Engine
from tests.support.audio import encode, tone
from tests.support.files import FLAC, OPUS, VORBIS, WAV
from tests.support.protocol import Message, assert_no_leak, converse
from tests.support.server import running_server

MAX_AUDIO_SECONDS = 60.0  # the duration cap of the app under test: the bombs below decode to hours
ROUTES = ("/transcribe", "/v1/audio/transcriptions")

# --- building good, odd and lying files ----------------------------------------------------------------------


def square(rate: int = SAMPLE_RATE, seconds: float = 1.0) -> np.ndarray:
    """Full scale: every sample at +1 or -1."""
    return np.where(np.sin(2 * np.pi * 100 * np.arange(int(rate * seconds)) / rate) >= 0, 1.0, -1.0)


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# The reference files (tests/support/files.py): WAV has the canonical 44-byte header.
assert WAV[12:16] == b"fmt " and WAV[36:40] == b"data", "soundfile's WAV header layout changed"
# WAV header fields: fmt chunk size @16, format tag @20, channels @22, rate @24, byte rate @28, block align @32,
# bits per sample @34, data size @40; RIFF size @4.

assert FLAC[:4] == b"fLaC" and FLAC[4] & 0x7F == 0, "STREAMINFO must be the first metadata block"


def flac_streaminfo(
    data: bytes,
    rate: int | None = None,
    channels: int | None = None,
    bits: int | None = None,
    total: int | None = None,
) -> bytes:
    """Rewrite STREAMINFO's packed fields (20-bit rate, 3-bit channels-1, 5-bit bits-1, 36-bit total samples)."""
    out = bytearray(data)
    packed = int.from_bytes(out[18:26], "big")
    fields = [packed >> 44, (packed >> 41) & 7, (packed >> 36) & 31, packed & (2**36 - 1)]
    for i, value in enumerate(
        (rate, None if channels is None else channels - 1, None if bits is None else bits - 1)
    ):
        if value is not None:
            fields[i] = value
    if total is not None:
        fields[3] = total
    out[18:26] = ((fields[0] << 44) | (fields[1] << 41) | (fields[2] << 36) | fields[3]).to_bytes(8, "big")
    return bytes(out)


def _crc_table(poly: int, bits: int) -> list[int]:
    table = []
    top, mask = 1 << (bits - 1), (1 << bits) - 1
    for byte in range(256):
        crc = byte << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else crc << 1
        table.append(crc & mask)
    return table


_OGG_CRC, _CRC8, _CRC16 = _crc_table(0x04C11DB7, 32), _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _crc(table: list[int], bits: int, data: bytes) -> int:
    crc, shift, mask = 0, bits - 8, (1 << bits) - 1
    for byte in data:
        crc = ((crc << 8) & mask) ^ table[((crc >> shift) ^ byte) & 0xFF]
    return crc


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each whole Ogg page."""
    pages, offset = [], 0
    while offset + 27 <= len(data) and data[offset : offset + 4] == b"OggS":
        count = data[offset + 26]
        size = 27 + count + sum(data[offset + 27 : offset + 27 + count])
        pages.append((offset, size))
        offset += size
    return pages


def ogg_fix_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    for offset, size in ogg_pages(data):
        if offset + size <= len(out):
            out[offset + 22 : offset + 26] = bytes(4)
            struct.pack_into("<I", out, offset + 22, _crc(_OGG_CRC, 32, bytes(out[offset : offset + size])))
    return bytes(out)


def ogg_patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A lying Ogg field that still passes the page CRC check."""
    return ogg_fix_crcs(patch(data, offset, fmt, value))


def ogg_page(packets: list[bytes], sequence: int, granule: int, flags: int = 0) -> bytes:
    lacing = b"".join(b"\xff" * (len(p) // 255) + bytes([len(p) % 255]) for p in packets)
    assert len(lacing) <= 255
    header = b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, 1, sequence, 0, len(lacing)) + lacing
    return ogg_fix_crcs(header + b"".join(packets))


VORBIS_HEADER = 27 + VORBIS[26]  # the identification packet: 0x01 "vorbis" version(4) channels(1) rate(4)
assert VORBIS[VORBIS_HEADER : VORBIS_HEADER + 7] == b"\x01vorbis"
OPUS_HEAD = 27 + OPUS[26]  # "OpusHead" version(1) channels(1) pre-skip(2) rate(4) gain(2) mapping(1)
assert OPUS[OPUS_HEAD : OPUS_HEAD + 8] == b"OpusHead"
VORBIS_PAGES = ogg_pages(VORBIS)

BLOCK = 65535  # FLAC's largest block: one constant subframe of 1 byte stands for 65535 samples


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | (n >> 12) & 0x3F, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


def _flac_frame(number: int) -> bytes:
    """A 65535-sample frame of 8-bit mono silence: header (16-bit block size, rate from STREAMINFO), CRC-8, one
    CONSTANT subframe, CRC-16: 13 to 15 bytes."""
    header = bytes([0xFF, 0xF8, 0x70, 0x02]) + _utf8_number(number) + struct.pack(">H", BLOCK - 1)
    frame = header + bytes([_crc(_CRC8, 8, header), 0x00, 0x00])
    return frame + struct.pack(">H", _crc(_CRC16, 16, frame))


def _streaminfo(rate: int, frames: int) -> bytes:
    packed = (rate << 44) | (0 << 41) | (7 << 36) | frames * BLOCK
    return struct.pack(">HH", BLOCK, BLOCK) + bytes(6) + packed.to_bytes(8, "big") + bytes(16)


def flac_bomb(rate: int, seconds: float) -> bytes:
    """A valid FLAC of `seconds` of silence at `rate`: about 13.5 bytes per 65535 samples."""
    frames = -(-int(rate * seconds) // BLOCK)
    info = _streaminfo(rate, frames)
    return (
        b"fLaC"
        + bytes([0x80])
        + len(info).to_bytes(3, "big")
        + info
        + b"".join(map(_flac_frame, range(frames)))
    )


def ogg_flac_bomb(rate: int, seconds: float) -> bytes:
    """The same frames in Ogg (FLAC-in-Ogg mapping), which the websocket's `ogg` input demuxes."""
    frames = -(-int(rate * seconds) // BLOCK)
    info = _streaminfo(rate, frames)
    head = (
        b"\x7fFLAC\x01\x00"
        + struct.pack(">H", 0)
        + b"fLaC"
        + bytes([0x00])
        + len(info).to_bytes(3, "big")
        + info
    )
    pages = [ogg_page([head], 0, 0, flags=2)]
    for sequence, first in enumerate(range(0, frames, 200), start=1):
        last = min(first + 200, frames)
        packets = [_flac_frame(n) for n in range(first, last)]
        pages.append(ogg_page(packets, sequence, last * BLOCK, flags=4 if last == frames else 0))
    return b"".join(pages)


def random_bytes(seed: int, size: int, prefix: bytes = b"") -> bytes:
    return prefix + np.random.default_rng(seed).bytes(size)


def with_nan(value: float, subtype: str = "FLOAT") -> bytes:
    samples = tone(SAMPLE_RATE).astype(np.float64)
    samples[100:110] = value
    return encode(samples, SAMPLE_RATE, subtype=subtype)


OK = 200
# name: (file, expected status on both routes). 200: valid but odd audio, transcribed (maybe to ""); the
# documented errors: 400 empty (no bytes, or no samples), 415 undecodable, 413 over the duration cap. Lies the
# decoder sees through (FFmpeg trusts the frame headers over FLAC's STREAMINFO, reads a WAV's data to the end of
# the file whatever its size field says) decode: a truncated file keeps what decoded, as players do.
CASES: dict[str, tuple[bytes, int]] = {
    # valid but odd
    "pcm24-44k": (encode(tone(44100), 44100, subtype="PCM_24"), OK),
    "pcm32-48k": (encode(tone(48000), 48000, subtype="PCM_32"), OK),
    "pcm-u8-8k": (encode(tone(8000), 8000, subtype="PCM_U8"), OK),
    "pcm16-8k": (encode(tone(8000), 8000), OK),
    "pcm16-192k": (encode(tone(192000), 192000), OK),
    "float-22k": (encode(tone(22050), 22050, subtype="FLOAT"), OK),
    "wav-6-channels": (encode(tone(SAMPLE_RATE, channels=6), SAMPLE_RATE), OK),
    "flac-6-channels-24bit": (encode(tone(SAMPLE_RATE, channels=6), SAMPLE_RATE, "FLAC", "PCM_24"), OK),
    # planar decoders with 8+ channels: PyAV's frame.planes read past FFmpeg's pointer array (a segfault)
    "vorbis-8-channels": (encode(tone(SAMPLE_RATE, channels=8), SAMPLE_RATE, "OGG", "VORBIS"), OK),
    "vorbis-12-channels": (encode(tone(SAMPLE_RATE, channels=12), SAMPLE_RATE, "OGG", "VORBIS"), OK),
    "opus-8-channels": (encode(tone(48000, channels=8), 48000, "OGG", "OPUS"), OK),
    "square-full-scale-float": (encode(square(), SAMPLE_RATE, subtype="FLOAT"), OK),
    "square-full-scale-int16": (encode(square(), SAMPLE_RATE), OK),
    "float-over-full-scale": (encode(4 * square(), SAMPLE_RATE, subtype="FLOAT"), OK),
    "one-sample": (encode(np.full(1, 0.25), SAMPLE_RATE), OK),
    "one-sample-8k": (encode(np.full(1, 0.25), 8000), OK),
    "zero-samples": (encode(np.zeros(0), SAMPLE_RATE), 400),
    "empty-file": (b"", 400),
    "nan-floats": (with_nan(np.nan), 415),
    "inf-floats": (with_nan(np.inf), 415),
    "minus-inf-doubles": (with_nan(-np.inf, "DOUBLE"), 415),
    # random bytes, bare and behind each container's magic
    "random-1": (random_bytes(1, 1), 415),
    "random-4k": (random_bytes(2, 4096), 415),
    "random-riff": (random_bytes(3, 2000, b"RIFF\x00\x10\x00\x00WAVE"), 415),
    "random-flac": (random_bytes(4, 2000, b"fLaC"), 415),
    "random-ogg": (random_bytes(5, 2000, b"OggS\x00\x02"), 415),
    # lying WAV headers
    "wav-channels-0": (patch(WAV, 22, "<H", 0), 415),
    "wav-channels-65535": (patch(WAV, 22, "<H", 65535), 415),
    "wav-rate-0": (patch(WAV, 24, "<I", 0), 415),
    "wav-rate-4294967295": (patch(WAV, 24, "<I", 0xFFFFFFFF), 415),
    "wav-bits-0": (patch(WAV, 34, "<H", 0), 415),
    "wav-bits-65535": (patch(WAV, 34, "<H", 65535), 415),
    "wav-format-tag-unknown": (patch(WAV, 20, "<H", 0x1234), 415),
    "wav-fmt-size-huge": (patch(WAV, 16, "<I", 0xFFFFFFF0), 415),
    "wav-fmt-size-4": (patch(WAV, 16, "<I", 4), 415),
    "wav-fmt-truncated": (WAV[:30], 415),
    "wav-header-only": (WAV[:44], 400),
    "wav-data-size-beyond-file": (patch(WAV, 40, "<I", 0xFFFFFFFF), OK),
    "wav-riff-size-beyond-file": (patch(WAV, 4, "<I", 0xFFFFFFFF), OK),
    "wav-truncated-in-data": (WAV[: len(WAV) // 2 + 1], OK),
    "wav-byte-rate-0": (patch(WAV, 28, "<I", 0), OK),
    "wav-block-align-0": (patch(WAV, 32, "<H", 0), OK),
    # lying FLAC STREAMINFO (rate, channels, bits, total samples, block sizes, metadata length)
    "flac-rate-0": (flac_streaminfo(FLAC, rate=0), OK),
    "flac-rate-1048575": (flac_streaminfo(FLAC, rate=2**20 - 1), OK),
    "flac-channels-8": (flac_streaminfo(FLAC, channels=8), OK),
    "flac-bits-32": (flac_streaminfo(FLAC, bits=32), 415),
    "flac-bits-1": (flac_streaminfo(FLAC, bits=1), 415),
    "flac-total-samples-huge": (flac_streaminfo(FLAC, total=2**36 - 1), OK),
    "flac-total-samples-0": (flac_streaminfo(FLAC, total=0), OK),
    "flac-block-size-0": (patch(patch(FLAC, 8, ">H", 0), 10, ">H", 0), 415),
    "flac-block-size-65535": (patch(patch(FLAC, 8, ">H", 65535), 10, ">H", 65535), OK),
    "flac-metadata-length-huge": (FLAC[:5] + b"\xff\xff\xff" + FLAC[8:], 415),
    "flac-streaminfo-truncated": (FLAC[:20], 415),
    "flac-header-only": (FLAC[:42], 415),
    "flac-truncated-in-frames": (FLAC[: len(FLAC) // 2], OK),
    # lying Ogg pages and codec headers (CRCs recomputed unless the CRC is the lie)
    "ogg-version-1": (ogg_patch(VORBIS, 4, "B", 1), 415),
    "ogg-crc-wrong": (patch(VORBIS, 22, "<I", 0), 415),
    "ogg-serial-changes": (ogg_patch(VORBIS, VORBIS_PAGES[-1][0] + 14, "<I", 12345), 415),
    "ogg-granule-huge": (ogg_patch(VORBIS, VORBIS_PAGES[-1][0] + 6, "<q", 2**63 - 1), OK),
    "ogg-segment-count-255": (ogg_patch(VORBIS, 26, "B", 255), 415),
    "ogg-truncated-page": (VORBIS[:20], 415),
    "ogg-cut-in-setup-header": (VORBIS[: VORBIS_PAGES[1][0] + VORBIS_PAGES[1][1] // 2], 415),
    "vorbis-channels-0": (ogg_patch(VORBIS, VORBIS_HEADER + 11, "B", 0), 415),
    "vorbis-channels-255": (ogg_patch(VORBIS, VORBIS_HEADER + 11, "B", 255), OK),
    "vorbis-rate-0": (ogg_patch(VORBIS, VORBIS_HEADER + 12, "<I", 0), 415),
    "vorbis-rate-4294967295": (ogg_patch(VORBIS, VORBIS_HEADER + 12, "<I", 0xFFFFFFFF), 415),
    "opus-channels-0": (ogg_patch(OPUS, OPUS_HEAD + 9, "B", 0), 415),
    "opus-channels-255": (ogg_patch(OPUS, OPUS_HEAD + 9, "B", 255), 415),
    "opus-rate-0": (ogg_patch(OPUS, OPUS_HEAD + 12, "<I", 0), OK),  # informational: Opus decodes at 48 kHz
    "opus-pre-skip-65535": (ogg_patch(OPUS, OPUS_HEAD + 10, "<H", 0xFFFF), OK),
    "opus-mapping-family-255": (ogg_patch(OPUS, OPUS_HEAD + 18, "B", 255), 415),
    "opus-truncated-in-audio": (OPUS[: len(OPUS) // 2], OK),
    # decompression bombs: stopped by the duration cap while decoding
    "flac-bomb-1h-8k": (flac_bomb(8000, 3600), 413),
    "flac-bomb-18h-1hz": (flac_bomb(1, 18 * 3600), 413),
    "flac-bomb-1h-192k": (flac_bomb(192000, 3600), 413),
}

def check_upload(route: str, response: httpx.Response, expected: int) -> None:
    assert response.status_code == expected, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert_no_leak(response.text)
    body = response.json()
    if expected == OK:
        assert isinstance(body["text"], str)
        return
    message = body["detail"] if route == "/transcribe" else body["error"]["message"]
    assert isinstance(message, str) and message


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(small_model_dir: Path, small_engine: Engine) -> FastAPI:
    settings = Settings(
        model_dir=small_model_dir,
        max_audio_seconds=MAX_AUDIO_SECONDS,
        stream_idle_timeout=20,  # a server that ignored eof would close the stream rather than hang the test
        stream_max_seconds=20,
    )
    return create_app(settings, small_engine)


@pytest.fixture(scope="module")
def client(service: FastAPI) -> Iterator[TestClient]:
    with TestClient(service) as test_client:
        yield test_client


async def post(http: httpx.AsyncClient, route: str, data: bytes) -> httpx.Response:
    return await http.post(route, files={"file": ("upload.bin", data, "application/octet-stream")})


async def run_table(service: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url="http://t") as http:
        for data, expected in CASES.values():
            for route in ROUTES:
                check_upload(route, await post(http, route, data), expected)


# --- uploads ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
async def test_bad_upload_gets_a_clear_answer(service: FastAPI, case: str, route: str) -> None:
    data, expected = CASES[case]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url="http://t") as http:
        check_upload(route, await post(http, route, data), expected)


async def test_one_sample_is_an_empty_transcript(service: FastAPI) -> None:
    """Shorter than one feature window: 200 with an empty transcript (not an error: the audio is valid)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service), base_url="http://t") as http:
        body = (await post(http, "/transcribe", CASES["one-sample"][0])).json()
    assert body["text"] == "" and body["words"] == [] and body["duration"] == 0.0


def test_the_bombs_are_small() -> None:
    """What the table's bombs are: a few KB for an hour, 54 bytes for 18 hours (at 1 Hz)."""
    sizes = {
        name: len(CASES[name][0]) for name in ("flac-bomb-1h-8k", "flac-bomb-18h-1hz", "flac-bomb-1h-192k")
    }
    print("bomb sizes (bytes):", sizes)
    assert sizes["flac-bomb-1h-8k"] < 6_000 and sizes["flac-bomb-18h-1hz"] < 100
    assert len(flac_bomb(2000, 3600)) < 2048, "a 2 KB file that decodes to an hour"
    samples, duration = decode_audio(flac_bomb(8000, 30))  # under the cap it is ordinary silence
    assert duration == pytest.approx(30, abs=BLOCK / 8000) and not samples.any()


@pytest.mark.parametrize("rate", [8000, 192000])
def test_the_duration_cap_stops_a_bomb_while_decoding(rate: int) -> None:
    """The cap is checked frame by frame and the audio is kept at 16 kHz as it decodes: the memory a refused bomb
    took is about the cap's worth of 16 kHz audio, whatever the file's rate, not the hour it decodes to."""
    bomb = flac_bomb(rate, 3600)
    cap = 30.0
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match="longer than 30 s"):
            decode_audio(bomb, max_seconds=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    at_cap = cap * SAMPLE_RATE * 4  # float32 at 16 kHz
    print(
        f"{rate} Hz bomb: {len(bomb)} bytes, peak {peak / 1e6:.1f} MB (cap: {at_cap / 1e6:.1f} MB of audio)"
    )
    assert peak < 3 * at_cap, "decoding went on past the cap, or held the audio at its own rate"
    assert peak < 3600 * SAMPLE_RATE * 4 / 20


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas; give them back before measuring
    except (OSError, AttributeError):
        pass
    return rss_bytes()


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Drop INFO records of these loggers: pytest's log capture keeps every record of a test in memory (the access
    log and httpx's log a line per request), which would count against the service's RSS."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def test_memory_returns_to_baseline_after_the_table(service: FastAPI) -> None:
    """Every case through both routes, again and again: the process's resident memory stays where it was, to the
    allocator's noise (a few MB either way), and Python's heap (NumPy's arrays included) to a few KB. One run of the table decodes about
    20 MB of audio: holding on to any of it would show. The first runs warm up what is allocated once (the thread
    pool's threads and their malloc arenas, codec tables): RSS grows by about 10 MB over two runs, then is flat."""
    if not Path("/proc/self/status").exists():
        pytest.skip("VmRSS is read from /proc (Linux)")
    with quiet("app.access", "httpx"):
        for _ in range(3):
            await run_table(service)
        before = settle()
        for _ in range(3):
            await run_table(service)
        after = settle()
        tracemalloc.start()
        try:
            await run_table(
                service
            )  # what the last requests leave referenced (until the next ones) is traced now
            gc.collect()
            heap_before = tracemalloc.get_traced_memory()[0]
            await run_table(service)
            gc.collect()
            heap_growth = tracemalloc.get_traced_memory()[0] - heap_before
        finally:
            tracemalloc.stop()
    print(
        f"RSS before {before / 2**20:.1f} MiB, after three more runs of the table {after / 2**20:.1f} MiB; "
        f"Python heap growth over one more run {heap_growth / 1024:.0f} KiB"
    )
    assert after - before < 8 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
    assert heap_growth < 128 * 1024, f"Python's heap grew by {heap_growth / 1024:.0f} KiB"


def test_a_real_server_survives_every_bad_upload(small_model_dir: Path) -> None:
    """Over the network: every case, then the process still answers and logged no traceback or crash."""
    env = {"DS_MODEL_DIR": str(small_model_dir), "DS_BEAM_WIDTH": "16", "DS_MAX_AUDIO_SECONDS": "60"}
    with running_server(env) as base, httpx.Client(base_url=base, timeout=60) as http:
        for data, expected in CASES.values():
            response = http.post("/transcribe", files={"file": ("upload.bin", data)})
            check_upload("/transcribe", response, expected)
        assert http.get("/health").status_code == 200
        log = base.log.read_text()
    assert "Traceback" not in log and "Segmentation fault" not in log and "Fatal Python error" not in log


# --- websockets ----------------------------------------------------------------------------------------------

PCM = (tone(SAMPLE_RATE) * 32767).astype("<i2").tobytes()  # 1 s of s16le at 16 kHz
STREAM_EOF, VOSK_EOF = '{"type": "eof"}', '{"eof": 1}'


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


MEGABYTE_OBJECT = json.dumps({"type": "dance", "padding": "a" * 2**20})
STREAM_CASES: dict[str, tuple[list[Message], str]] = {
    # name: (messages, the error code one of them gets; "bad_frame|bad_audio": the decoder may need more bytes
    # before it can tell, so the error comes with the frame or with eof)
    "odd-frame": ([b"\x01\x02\x03"], "bad_frame"),
    "odd-frame-between-audio": ([PCM[:3200], b"\x00", PCM[3200:6400]], "bad_frame"),
    "malformed-json": (["{not json"], "bad_message"),
    "empty-text": ([""], "bad_message"),
    "json-array": (["[1, 2]"], "bad_message"),
    "json-number": (["3"], "bad_message"),
    "json-string": (['"eof"'], "bad_message"),
    "json-null": (["null"], "bad_message"),
    "unknown-type": (['{"type": "dance"}'], "bad_message"),
    "no-type": (["{}"], "bad_message"),
    "type-not-a-string": (['{"type": ["eof"]}'], "bad_message"),
    "garbage-text": (["\x00\x01\x7f garbage \u2603\ufffd"], "bad_message"),
    "megabyte-json-object": ([MEGABYTE_OBJECT], "bad_message"),
    "audio-sent-as-text": ([PCM[:3200].decode("latin-1")], "bad_message"),
    "control-sent-as-binary": ([b'{"type": "eof"}'], "bad_frame"),  # binary is audio: 15 bytes, odd
    "config-after-audio": ([PCM[:3200], '{"type": "config", "sample_rate": 8000}'], "bad_config"),
    "config-format-not-a-string": (['{"type": "config", "format": ["webm"]}'], "bad_config"),
    "config-format-object": (['{"type": "config", "format": {}}'], "bad_config"),
    "config-rate-string": (['{"type": "config", "sample_rate": "16000"}'], "bad_config"),
    "config-rate-huge": (['{"type": "config", "sample_rate": 1e308}'], "bad_config"),
    "config-rate-zero": (['{"type": "config", "sample_rate": 0}'], "bad_config"),
    "config-hot-word-boost-not-a-number": (['{"type": "config", "hot_words": {"a": "b"}}'], "bad_config"),
    "config-alternatives-huge": (['{"type": "config", "alternatives": 1000000000}'], "bad_config"),
    "webm-garbage": (['{"type": "config", "format": "webm"}', b"garbage!" * 100], "bad_frame|bad_audio"),
    "ogg-garbage": (
        ['{"type": "config", "format": "ogg"}', random_bytes(6, 4000, b"OggS")],
        "bad_frame|bad_audio",
    ),
    "resume-junk": (
        ['{"type": "resume", "stream_id": {}, "resume_token": [], "bytes": -1}'],
        "resume_refused",
    ),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_stream_bad_message_gets_an_error_and_the_stream_goes_on(client: TestClient, case: str) -> None:
    messages, code = STREAM_CASES[case]
    replies, close = converse(client, "/stream", messages, STREAM_EOF)
    errors = [r for r in replies if r["type"] == "error"]
    assert set(code.split("|")) & {e["code"] for e in errors}, replies
    assert all(e["code"] not in ("internal_error", "inference_failed") for e in errors), errors
    assert replies[-1]["type"] == "final" and close == 1000


def test_refused_frames_and_messages_do_not_change_the_audio(client: TestClient) -> None:
    """A refused odd frame is not counted; a control message sent as binary is taken as audio, not as eof."""
    replies, _ = converse(client, "/stream", [PCM[:3200], b"\x00", PCM[3200:6400]], STREAM_EOF)
    assert replies[-1]["duration"] == pytest.approx(0.2, abs=1e-3)
    replies, _ = converse(client, "/stream", [b'{"type": "eof"} '], STREAM_EOF)  # 16 bytes: 8 samples
    assert replies[-1]["duration"] == pytest.approx(8 / SAMPLE_RATE, abs=1e-3)


VOSK_CASES: dict[str, list[Message]] = {
    "odd-frame": [b"\x01\x02\x03"],
    "malformed-json": ["{not json"],
    "json-array": ["[1, 2]"],
    "json-number": ["3"],
    "unknown-message": ['{"dance": 1}'],
    "garbage-text": ["\x00\x01\x7f garbage \u2603"],
    "megabyte-json-object": [json.dumps({"padding": "a" * 2**20})],
    "audio-sent-as-text": [PCM[:3200].decode("latin-1")],
    "control-sent-as-binary": [b'{"eof" : 1}'],
    "config-not-an-object": ['{"config": []}'],
    "config-rate-string": ['{"config": {"sample_rate": "x"}}'],
    "config-rate-infinite": ['{"config": {"sample_rate": Infinity}}'],
    "config-format-list": ['{"config": {"format": ["x"]}}'],
    "config-phrase-list-not-a-list": ['{"config": {"phrase_list": "abc"}}'],
    # Enough garbage that the demuxer gives up on the frame itself: Vosk's eof reply is always the result, and
    # the input's undecodable tail is dropped there without an error of its own.
    "webm-garbage": ['{"config": {"format": "webm"}}', random_bytes(7, 70_000)],
}


@pytest.mark.parametrize("case", list(VOSK_CASES))
def test_vosk_bad_message_gets_an_error_and_the_stream_goes_on(client: TestClient, case: str) -> None:
    replies, close = converse(client, "/vosk", VOSK_CASES[case], VOSK_EOF)
    assert any("error" in r for r in replies[:-1]), replies
    assert "text" in replies[-1] and "error" not in replies[-1] and close == 1000


def test_encoded_stream_bomb_stops_at_the_length_cap(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 KB of FLAC-in-Ogg that decodes to an hour, sent in one frame: the decoder stops at the stream's length
    (app.speech.stream_audio.MAX_SECONDS, DS_STREAM_MAX_SECONDS once the route passes it) instead of handing the
    session an hour of audio; the client gets an error and the final of what was decoded."""
    monkeypatch.setattr(app.speech.stream_audio, "MAX_SECONDS", 20.0)
    bomb = ogg_flac_bomb(8000, 3600)
    assert len(bomb) < 7_000
    replies, close = converse(client, "/stream", ['{"type": "config", "format": "ogg"}', bomb], STREAM_EOF)
    assert any(r["type"] == "error" and "20 s" in r["message"] for r in replies), replies
    assert replies[-1]["type"] == "final" and replies[-1]["duration"] <= 20.0 + 1e-3 and close == 1000
    replies, close = converse(client, "/vosk", ['{"config": {"format": "ogg"}}', bomb], VOSK_EOF)
    assert "text" in replies[-1] and close == 1000


# Needs the hunks for app/routes/stream.py and app/routes/vosk.py in the issue-8 report.
HUGE_CONFIG = json.dumps({"type": "config", "sample_rate": 16000, "padding": "a" * 2**20})


@pytest.mark.parametrize(
    ("path", "message", "end"),
    [
        ("/stream", HUGE_CONFIG, STREAM_EOF),
        ("/vosk", json.dumps({"config": {"sample_rate": 16000, "padding": "a" * 2**20}}), VOSK_EOF),
    ],
    ids=["stream", "vosk"],
)
def test_control_messages_over_64_kb_are_refused(
    client: TestClient, path: str, message: str, end: str
) -> None:
    replies, close = converse(client, path, [message], end)
    errors = [
        r.get("message") or r.get("error") or "" for r in replies if r.get("type") == "error" or "error" in r
    ]
    assert any("64" in e and "KB" in e for e in errors), replies
    assert close == 1000


@pytest.mark.parametrize(
    ("path", "message", "end"),
    [
        ("/stream", nested(100_000), STREAM_EOF),
        ("/vosk", nested(100_000), VOSK_EOF),
        ("/stream", '{"type": "config", "hot_words": [1, 2]}', STREAM_EOF),
        ("/vosk", '{"config": {"hot_words": [1, 2]}}', VOSK_EOF),
        ("/vosk", '{"config": {"max_alternatives": Infinity}}', VOSK_EOF),
    ],
    ids=[
        "stream-nested",
        "vosk-nested",
        "stream-hot-words-not-strings",
        "vosk-hot-words-not-strings",
        "vosk-inf",
    ],
)
def test_messages_that_end_the_stream_with_1011_today(
    client: TestClient, path: str, message: str, end: str
) -> None:
    replies, close = converse(client, path, [message], end)
    assert close == 1000, replies
    assert not any("internal_error" in json.dumps(r) or "internal error" in json.dumps(r) for r in replies)
