"""Load-test helpers: many asyncio /stream clients paced at real time, and /proc readings of the server (RSS,
open file descriptors, threads). The server is `tests.support.server.running_server` (`python -m app`, its log
in a file, its pid at hand)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.server import ServerUrl, running_server

TRY_AGAIN_LATER = 1013  # the stream limit's close code (app/routes/stream.py)
PROBLEM_WORDS = ("Traceback", "ERROR", "CRITICAL", "WARNING", "Exception")


@dataclass
class Server:
    url: ServerUrl

    @property
    def base(self) -> str:
        return str(self.url)

    @property
    def ws(self) -> str:
        return self.url.ws

    @property
    def pid(self) -> int:
        return self.url.pid

    @property
    def problems(self) -> list[str]:
        """Every log line so far that looks like an error (tracebacks, ERROR, CRITICAL, WARNING)."""
        return [
            line for line in self.url.log.read_text().splitlines() if any(w in line for w in PROBLEM_WORDS)
        ]


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Server]:
    """`python -m app` on a free loopback port, up once /health answers; stopped on exit."""
    with running_server(env) as url:
        yield Server(url)


# --- /proc readings -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessUsage:
    rss_kib: int
    fds: int
    threads: int

    def __str__(self) -> str:
        return f"RSS {self.rss_kib / 1024:.1f} MiB, {self.fds} fds, {self.threads} threads"


def usage(pid: int) -> ProcessUsage:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = rest.split()
    return ProcessUsage(
        int(fields["VmRSS"][0]), len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"][0])
    )


# --- websocket streams ----------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    index: int
    outcome: str = "pending"  # final | refused | failed
    refusal: str | None = None  # how it was refused: "close 1013" or "HTTP 403" (a close before accept)
    text: str | None = None
    duration: float | None = None  # the final's audio seconds
    partials: int = 0
    utterances: int = 0
    eof_to_final: float | None = None  # seconds from sending eof to receiving the final
    send_lag: float = 0.0  # most a frame went out after its real-time slot (client side; backpressure shows)
    close_code: int | None = None
    error: str | None = None
    messages: list[str] = field(default_factory=list)  # unexpected ones, for the failure message


def _refusal(exc: BaseException) -> str | None:
    """The stream limit's refusal: close 1013 (what the app sends), which uvicorn turns into an HTTP 403 on the
    handshake when it comes before accept."""
    if isinstance(exc, InvalidStatus) and exc.response.status_code == 403:
        return "HTTP 403"
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == TRY_AGAIN_LATER:
        return "close 1013"
    return None


async def stream_once(
    url: str,
    pcm: bytes,
    index: int = 0,
    *,
    frame_bytes: int = 6400,
    hang_guard: float = 300.0,
    connected: asyncio.Event | None = None,
    start: asyncio.Future[float] | None = None,
    offset: float = 0.0,
) -> StreamResult:
    """One /stream client: connect (set `connected`), then send `pcm` in frames of `frame_bytes`, eof, and read
    to the final and the close. Never raises: the result's outcome says what happened.

    With `start` (a future resolved to a loop time), the frames go out at real-time pace: frame k at
    start + offset + its position in the audio, as a live source would have them; without, as fast as the
    connection takes them. `hang_guard` bounds the whole stream (a hang shows as outcome "failed", error "hang"):
    a guard against hanging forever, never a timing claim.
    """
    result = StreamResult(index)
    loop = asyncio.get_running_loop()

    async def body() -> None:
        try:
            ws = await connect(
                url, open_timeout=hang_guard, ping_interval=None, compression=None, proxy=None, max_size=None
            )
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal:
                result.outcome, result.refusal = "refused", refusal
            else:
                result.outcome, result.error = "failed", f"connect: {exc!r}"
            return
        finally:
            if connected is not None:
                connected.set()
        eof_sent: float | None = None

        async def reader() -> None:
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "partial":
                    result.partials += 1
                elif kind == "utterance":
                    result.utterances += 1
                elif kind == "final" and result.text is None:
                    result.eof_to_final = loop.time() - eof_sent if eof_sent is not None else None
                    result.text, result.duration = message["text"], message["duration"]
                else:
                    result.messages.append(str(raw)[:300])

        async with ws:
            reading = asyncio.ensure_future(reader())
            try:
                begin = (await start) + offset if start is not None else None
                for position in range(0, len(pcm), frame_bytes):
                    if begin is not None:
                        slot = begin + position / 32000.0
                        if slot > loop.time():
                            await asyncio.sleep(slot - loop.time())
                        result.send_lag = max(result.send_lag, loop.time() - slot)
                    await ws.send(pcm[position : position + frame_bytes])
                eof_sent = loop.time()
                await ws.send(json.dumps({"type": "eof"}))
                await reading
            except ConnectionClosed:
                pass
            finally:
                if not reading.done():
                    reading.cancel()
                try:
                    await reading
                except (ConnectionClosed, asyncio.CancelledError):
                    pass
        result.close_code = ws.close_code
        if result.text is not None and ws.close_code == 1000:
            result.outcome = "final"
        elif ws.close_code == TRY_AGAIN_LATER and result.text is None and eof_sent is None:
            result.outcome, result.refusal = "refused", "close 1013"
        else:
            result.outcome = "failed"
            result.error = f"closed {ws.close_code} {ws.close_reason!r}; final: {result.text is not None}"

    try:
        await asyncio.wait_for(body(), hang_guard)
    except TimeoutError:
        result.outcome, result.error = "failed", f"hang: no final and no close within {hang_guard:g} s"
    except Exception as exc:
        result.outcome, result.error = "failed", repr(exc)
    return result


@dataclass
class LoadRun:
    results: list[StreamResult]
    connect_seconds: float  # until every client was connected or refused
    feed_seconds: float  # from the common start until the last stream ended


async def simultaneous_streams(
    url: str, audios: list[bytes], *, frame_bytes: int, hang_guard: float, lead: float = 0.5
) -> LoadRun:
    """One client per audio, all connected first, then all fed at real-time pace from a common start (each
    offset by a fraction of a frame, so that the frames are spread evenly instead of arriving in bursts)."""
    loop = asyncio.get_running_loop()
    start: asyncio.Future[float] = loop.create_future()
    connected = [asyncio.Event() for _ in audios]
    frame_seconds = frame_bytes / 32000.0
    began = loop.time()
    tasks = [
        asyncio.ensure_future(
            stream_once(
                url,
                pcm,
                index,
                frame_bytes=frame_bytes,
                hang_guard=hang_guard,
                connected=connected[index],
                start=start,
                offset=frame_seconds * index / len(audios),
            )
        )
        for index, pcm in enumerate(audios)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), hang_guard)
    except TimeoutError:
        pass  # the streams still waiting to connect report it themselves
    connect_seconds = loop.time() - began
    start.set_result(loop.time() + lead)
    results = await asyncio.gather(*tasks)
    return LoadRun(results, connect_seconds, loop.time() - start.result())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float], unit: str = " s", digits: int = 3) -> str:
    """p50, p95, max and mean of `values`."""
    if not values:
        return "n/a"
    figures = {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
        "mean": statistics.fmean(values),
    }
    return ", ".join(f"{name} {figure:.{digits}f}{unit}" for name, figure in figures.items())
