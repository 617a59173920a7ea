"""Giving freed memory back to the system after a large transcription.

glibc's malloc keeps what a long stream or a large upload freed (the decoder frees millions of small objects,
NumPy frees large buffers in arenas) and the process's RSS stays at its peak; `malloc_trim(0)` returns the free
pages. macOS's allocator returns memory by itself, and other C libraries have no malloc_trim: there it is a no-op.
No library does this for Python (it is one libc call), hence a few lines here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Trim after transcriptions of at least this much audio, at most once per interval (a trim walks the heap).
TRIM_AFTER_AUDIO_SECONDS = 60.0
TRIM_INTERVAL_SECONDS = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


class MemoryReturn:
    """Trims the heap after large transcriptions; counts the trims (for the metrics)."""

    def __init__(self, threshold: float = TRIM_AFTER_AUDIO_SECONDS) -> None:
        self.threshold = threshold
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._last = 0.0
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def after(self, audio_seconds: float) -> bool:
        """Called when a transcription or stream of `audio_seconds` ended; True if it trimmed."""
        if self._trim is None or audio_seconds < self.threshold:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._last < TRIM_INTERVAL_SECONDS:
                return False
            self._last = now
            self._trim(0)
            self.trims += 1
        return True
