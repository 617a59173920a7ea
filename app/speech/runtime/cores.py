"""Spreading one NumPy forward pass over several cores, only while it is the only forward pass running.

Why by hand: the LSTM recurrence is a chain of matrix-vector products (one per time step, 67 MB of weights
read per step at width 2048), and one core cannot read memory fast enough to feed it: measured here (2-core
AMD EPYC, OpenBLAS 0.3.31) one core's gemv reached about 23 GB/s, two cores together about 50 GB/s.
OpenBLAS's own thread pool would use both cores, but it is process-wide: under load (streams, workers) it
oversubscribes the cores and spin-waits, which made small products 7-25x slower (issue 8's soak), so the
service pins BLAS to one thread (app/__init__.py). Instead the NumPy backend splits its products into column
shares itself and hands all but the first to helper threads here; each share is one BLAS call with its own
output columns, so nothing is reduced across threads and the result does not depend on the split.

The split is only taken while a pass is alone: `Cores.claim()` hands out the pool when no other forward pass
is in flight anywhere in the process, and `crowded()` tells a pass that holds it that another one has started
since, so it goes on in its own thread (two passes then get a core each instead of fighting over both).
Helper threads wait on locks, never spin; they start on first use and are daemons.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

Task = Callable[[], None]


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def default_threads() -> int:
    """Cores one pass may use by default: the cores this process may run on, at most 4 (beyond that a
    pass's share per step gets too small to pay for the hand-over)."""
    return max(1, min(available_cores(), 4))


def physical_memory_mb() -> int:
    """This machine's RAM in MiB (0 if the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def default_decoder_memory_mb() -> int:
    """The decoders' share of RAM by default: half of it (the model, the scorer and the system have the rest)."""
    return max(1024, physical_memory_mb() // 2)


def default_decoder_processes() -> int:
    """Decoder processes by default: a core each, but one left for the service's own process (the model, the
    event loop), and at least one."""
    return max(1, available_cores() - 1)


class _Helper:
    """One thread that runs a task each time `start` is called; `wait` blocks until it is done."""

    def __init__(self, name: str) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._task: Task | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def start(self, task: Task) -> None:
        self._task = task
        self._go.release()

    def wait(self) -> None:
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            try:
                assert self._task is not None
                self._task()
            except BaseException as exc:  # handed to the caller's wait(); the helper lives on
                self._error = exc
            finally:
                self._task = None
                self._done.release()


class CorePool:
    """`threads - 1` helper threads; `run(tasks)` runs tasks[0] in the caller and the rest on the helpers."""

    def __init__(self, threads: int) -> None:
        if threads < 2:
            raise ValueError(f"a core pool needs at least 2 threads, got {threads}")
        self.threads = threads
        self._helpers = [_Helper(f"numpy-core-{k}") for k in range(1, threads)]

    def run(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.threads:
            raise ValueError(f"expected {self.threads} tasks, got {len(tasks)}")
        for helper, task in zip(self._helpers, tasks[1:], strict=True):
            helper.start(task)
        errors: list[BaseException] = []
        try:
            tasks[0]()
        except BaseException as exc:
            errors.append(exc)
        for helper in self._helpers:  # always wait for every helper, so none is left running a share
            try:
                helper.wait()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class Cores:
    """Process-wide: how many forward passes are in flight, and the pools a lone pass may borrow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pools: dict[int, CorePool] = {}  # by size; only ever lent to the one pass in flight

    @contextmanager
    def claim(self, threads: int) -> Iterator[CorePool | None]:
        """Count a forward pass in flight; yield a pool of `threads` if it is the only one, else None."""
        pool: CorePool | None = None
        with self._lock:
            self._in_flight += 1
            if threads >= 2 and self._in_flight == 1:
                pool = self._pools.get(threads)
                if pool is None:
                    pool = self._pools[threads] = CorePool(threads)
        try:
            yield pool
        finally:
            with self._lock:
                self._in_flight -= 1

    def crowded(self) -> bool:
        """Another forward pass is in flight besides the caller's (read without the lock: a hint)."""
        return self._in_flight > 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _forget_after_fork(self) -> None:
        # A forked child has none of the parent's helper threads: a pool from before the fork would never answer.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pools.clear()


CORES = Cores()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CORES._forget_after_fork)
