"""Beam search in spawned decoder processes: every core decodes, not only the one that holds the GIL.

flashlight-text's bindings keep the GIL for the whole of every call (decode_step, prune, the hypotheses), so in
one process all streams' beam searches share one core. Here each of DS_DECODER_PROCESSES processes builds its own
decoder (and scorer) once and serves decoder streams: a stream's state lives in one process for its life
(`RemoteDecoderStream`), probabilities go there (about 6 KB a second of audio), partials and finals come back.
Whole files go to the least busy process. Processes are spawned, never forked: forking a process that has loaded
Core ML is unsafe on macOS, and spawn is the one start method that behaves the same on Linux and macOS.

A process that dies fails only the streams it held (DecoderProcessFailed, a RuntimeError); the pool replaces it
in the background, and the next streams go to the live ones. Calls are synchronous request/reply over a pipe,
one at a time per process (a lock): they run in the transports' worker threads, which wait on the pipe without
the GIL, so N processes decode N streams at once.

Hand-written rather than a `concurrent.futures` pool: a stream must reach the same process on every call (its
decoder state is there), which executor pools do not offer.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from app.speech.alphabet import Alphabet
from app.speech.decoding.grammar import Grammar, check_beam_options
from app.speech.decoding.hotwords import HotWords
from app.speech.decoding.timings import FRAME_SECONDS, Transcript
from app.speech.memory import MemoryReturn

log = logging.getLogger(__name__)

START_SECONDS = 120.0  # a process builds its decoder (the 0.9.3 scorer's trie: tens of seconds on a Mac mini)


class DecoderProcessFailed(RuntimeError):
    """The decoder process holding this stream died; the stream cannot go on (its decoder state is lost)."""


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder process builds: picklable, so it crosses to a spawned process."""

    alphabet: Alphabet
    scorer_path: Path | None
    alpha: float | None
    beta: float | None
    beam_width: int

    def build(self) -> Any:
        from app.speech.decoding import BeamSearchDecoder
        from app.speech.decoding.lm import Scorer

        scorer = None
        if self.scorer_path is not None:
            scorer = Scorer(self.scorer_path, self.alphabet, alpha=self.alpha, beta=self.beta)
        return BeamSearchDecoder(self.alphabet, scorer, self.beam_width)


def serve(connection: Connection, spec: DecoderSpec) -> None:
    """A decoder process's life: build the decoder, say so, then answer requests until the pipe closes."""
    try:
        decoder = spec.build()
    except Exception as exc:  # tell the pool why (a bad scorer), then end
        connection.send(("error", exc))
        return
    connection.send(("ready", (decoder.description, decoder.describe())))
    streams: dict[int, Any] = {}
    memory = MemoryReturn()  # long streams' decoders free millions of objects: give the pages back
    decoded = 0.0  # audio seconds decoded since the last trim
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        op, key, args = request
        try:
            result = _handle(decoder, streams, op, key, args)
        except Exception as exc:
            if op in REPLIED:
                connection.send(("error", exc))
            else:  # nobody waits for a reply: log it here, the stream's next call reports it
                streams.pop(key, None)
                log.error("decoder process: %s failed: %s", op, "".join(traceback.format_exception(exc)))
            continue
        if op in REPLIED:
            connection.send(("ok", result))
        if op in ("feed", "decode"):
            decoded += len(args[0]) * FRAME_SECONDS
        elif op == "finish" and memory.after(decoded):
            decoded = 0.0


REPLIED = frozenset({"decode", "partial", "partial_text", "stable_words", "finish"})


def _handle(decoder: Any, streams: dict[int, Any], op: str, key: int, args: tuple[Any, ...]) -> Any:
    if op == "open":
        hot_words, alternatives, grammar = args
        streams[key] = decoder.stream(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        return None
    if op == "decode":
        probs, hot_words, alternatives, grammar = args
        return decoder.decode(probs, hot_words=hot_words, alternatives=alternatives, grammar=grammar)
    if op == "close":
        streams.pop(key, None)
        return None
    stream = streams.get(key)
    if stream is None:
        raise DecoderProcessFailed("this stream's decoder state is gone (an earlier call on it failed)")
    if op == "feed":
        stream.feed(*args)
        return None
    if op == "finish":
        return streams.pop(key).finish()
    if op == "partial_text":  # what a stream's partial message needs: not every word's timings, pickled
        return stream.partial().text, stream.limited_prunes
    return getattr(stream, op)()  # partial, stable_words


class DecoderProcess:
    """One spawned decoder process and the pipe to it."""

    def __init__(self, spec: DecoderSpec, number: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.number = number
        self.process = context.Process(
            target=serve, args=(child, spec), name=f"decoder-{number}", daemon=True
        )
        self.process.start()
        child.close()
        self._lock = threading.Lock()
        self._abandoned: collections.deque[int] = collections.deque()  # streams dropped unfinished: to close
        self.open_streams = 0
        self.alive = True
        self.ready = False  # its decoder is built (wait_ready returned)
        self.description: str = ""
        self.info: dict[str, object] = {}

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        """Block until the process built its decoder (raises what building raised, or DecoderProcessFailed)."""
        if not self._connection.poll(timeout):
            self.stop()
            raise DecoderProcessFailed(f"decoder process {self.number} did not start within {timeout:g} s")
        try:
            kind, payload = self._connection.recv()
        except (EOFError, OSError):
            self.stop()
            raise DecoderProcessFailed(
                f"decoder process {self.number} exited while starting (exit code {self.process.exitcode}); "
                "its output above says why"
            ) from None
        if kind == "error":
            self.stop()
            raise payload
        self.description, self.info = payload
        self.ready = True

    def call(self, op: str, key: int, *args: Any) -> Any:
        """A request and its reply (re-raising the process's exception)."""
        with self._lock:
            self._send(op, key, args)
            try:
                kind, payload = self._connection.recv()
            except (EOFError, OSError):
                raise self._died() from None
        if kind == "error":
            raise payload
        return payload

    def send(self, op: str, key: int, *args: Any) -> None:
        """A request nobody waits for (feed, close)."""
        with self._lock:
            self._send(op, key, args)

    def abandon(self, key: int) -> None:
        """Free a stream's state with the next request: safe from a finalizer, which may run in a thread that
        holds the lock, mid-request (so it must neither take the lock nor write to the pipe)."""
        self._abandoned.append(key)

    def _send(self, op: str, key: int, args: tuple[Any, ...]) -> None:
        if not self.alive:
            raise self._died()
        try:
            while self._abandoned:
                self._connection.send(("close", self._abandoned.popleft(), ()))
            self._connection.send((op, key, args))
        except (BrokenPipeError, EOFError, OSError):
            raise self._died() from None

    def _died(self) -> DecoderProcessFailed:
        self.alive = False
        code = self.process.exitcode
        return DecoderProcessFailed(
            f"decoder process {self.number} died (exit code {code}); its streams are lost: open a new stream"
        )

    def stop(self) -> None:
        self.alive = False
        self._connection.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


class DecoderPool:
    """DS_DECODER_PROCESSES decoder processes; dead ones are replaced, streams go to the least busy live one."""

    def __init__(
        self, spec: DecoderSpec, processes: int, on_failure: Callable[[], None] | None = None
    ) -> None:
        self.spec = spec
        self.on_failure = on_failure
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._any_ready = threading.Event()
        self._processes = [DecoderProcess(spec, next(self._numbers)) for _ in range(processes)]
        for process in self._processes:
            process.wait_ready()
        self._any_ready.set()
        self.description = self._processes[0].description
        self.info = self._processes[0].info
        self._closed = False

    @property
    def processes(self) -> list[DecoderProcess]:
        return list(self._processes)

    def pick(self) -> DecoderProcess:
        """The ready process with the fewest open streams. Never waits for a replacement to start (it may run on
        the event loop) unless no process is ready at all."""
        with self._lock:
            self._replace_dead()
            ready = [p for p in self._processes if p.ready and p.alive]
        if ready:
            return min(ready, key=lambda p: p.open_streams)
        self._any_ready.wait(START_SECONDS)
        with self._lock:
            ready = [p for p in self._processes if p.ready and p.alive]
        if not ready:
            raise DecoderProcessFailed("no decoder process is running (they keep dying: see the log)")
        return ready[0]

    def _replace_dead(self) -> None:
        """Start a replacement for each dead process; it joins the pool once its decoder is built."""
        for i, process in enumerate(self._processes):
            if not process.ready or (process.alive and process.process.is_alive()):
                continue
            process.alive = False
            log.error(
                "decoder process %d died (exit code %s); its streams failed; starting another",
                process.number,
                process.process.exitcode,
            )
            if self.on_failure is not None:
                self.on_failure()
            replacement = DecoderProcess(self.spec, next(self._numbers))
            self._processes[i] = replacement
            self._any_ready.clear()
            threading.Thread(target=self._start, args=(replacement,), daemon=True).start()

    def _start(self, process: DecoderProcess) -> None:
        try:
            process.wait_ready()
        except Exception:
            log.exception("decoder process %d did not start", process.number)
            process.ready = True  # so the next pick sees it dead and starts another
            return
        self._any_ready.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for process in self._processes:
            process.stop()


class RemoteDecoderStream:
    """A DecoderStream whose state lives in one decoder process."""

    _keys = itertools.count()

    def __init__(
        self, process: DecoderProcess, hot_words: Any, alternatives: int, grammar: Grammar | None
    ) -> None:
        self._process = process
        self._key = next(self._keys)
        # Opened with the first request, in the caller's worker thread: a stream is made on the event loop,
        # which must not wait for a process busy with another stream. The options were checked already.
        self._options: tuple[Any, int, Grammar | None] | None = (hot_words, alternatives, grammar)
        process.open_streams += 1
        self._open = True
        self.limited_prunes = 0  # as of the last partial_text (the count lives with the stream over there)

    @property
    def healthy(self) -> bool:
        """False once its process died: the stream cannot go on."""
        return self._process.alive and self._process.process.is_alive()

    def _opened(self) -> DecoderProcess:
        if self._options is not None:
            self._process.send("open", self._key, *self._options)
            self._options = None
        return self._process

    def feed(self, probs: np.ndarray) -> None:
        self._opened().send("feed", self._key, np.ascontiguousarray(probs, dtype=np.float32))

    def partial(self) -> Transcript:
        return self._opened().call("partial", self._key)  # type: ignore[no-any-return]

    def partial_text(self) -> str:
        text, self.limited_prunes = self._opened().call("partial_text", self._key)
        return text  # type: ignore[no-any-return]

    def stable_words(self) -> list[str]:
        return self._opened().call("stable_words", self._key)  # type: ignore[no-any-return]

    def finish(self) -> Transcript:
        try:
            return self._opened().call("finish", self._key)  # type: ignore[no-any-return]
        finally:
            self._closed()

    def _closed(self) -> None:
        if self._open:
            self._open = False
            self._process.open_streams -= 1

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self._closed()
            if self._options is None:  # it was opened over there
                self._process.abandon(self._key)


class RemoteDecoder:
    """The Decoder protocol over a DecoderPool: options are checked here, decoding happens in the processes."""

    def __init__(self, pool: DecoderPool) -> None:
        self.pool = pool
        self.alphabet = pool.spec.alphabet
        self.description = f"{pool.description}, in {len(pool.processes)} decoder process(es)"

    def check_options(
        self, *, hot_words: Any = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> HotWords:
        return check_beam_options(self.alphabet, hot_words, alternatives, grammar)

    def decode(
        self,
        probs: np.ndarray,
        *,
        hot_words: Any = None,
        alternatives: int = 1,
        grammar: Grammar | None = None,
    ) -> Transcript:
        hot = self.check_options(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        return self.pool.pick().call("decode", -1, probs, hot, alternatives, grammar)  # type: ignore[no-any-return]

    def stream(
        self, *, hot_words: Any = None, alternatives: int = 1, grammar: Grammar | None = None
    ) -> RemoteDecoderStream:
        hot = self.check_options(hot_words=hot_words, alternatives=alternatives, grammar=grammar)
        return RemoteDecoderStream(self.pool.pick(), hot, alternatives, grammar)

    def describe(self) -> dict[str, object]:
        return {**self.pool.info, "processes": len(self.pool.processes)}

    def close(self) -> None:
        self.pool.close()
