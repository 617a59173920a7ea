"""Graceful shutdown: on SIGTERM (launchd's stop, `kill`), stop taking new work, let what was accepted finish.

uvicorn's own shutdown waits for HTTP requests in flight but closes every websocket at once (1012), so an open
stream would lose the transcript of what it already sent. Draining comes first instead:
1. new HTTP requests get 503 + Retry-After and new websockets are refused (1001); `/health` still answers and
   `/ready` turns 503, so a load balancer stops sending work;
2. each open stream gets the final transcript of the audio it sent, then a close with 1001 (going away);
3. requests in flight (an upload still arriving included) run to completion;
4. once nothing is left, or after DS_SHUTDOWN_GRACE_SECONDS, uvicorn shuts down and the process exits 0.
`python -m app` wires it to SIGTERM (app/__main__.py); a second SIGTERM or a Ctrl-C skips the wait.
The refusals are the web layer's (app/web/drain.py); ending the streams is the stream controller's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.service.admission import Admission

log = logging.getLogger(__name__)


class ServerDraining(RuntimeError):
    """The service is shutting down: the stream ends with its final transcript."""


class Drain:
    """The shutdown state shared by the middleware, the stream controller and the signal handler."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # HTTP requests being handled (not streams, not ALWAYS_SERVED)
        self._event: asyncio.Event | None = None

    @property
    def event(self) -> asyncio.Event:
        """Set when draining begins; created on first use, inside the server's event loop."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.draining:
                self._event.set()
        return self._event

    def begin(self) -> None:
        if not self.draining:
            log.info("draining: no new requests or streams; finishing those in flight")
        self.draining = True
        self.event.set()

    async def wait_idle(self, admission: Admission, timeout: float) -> bool:
        """Wait until no request is in flight and no stream is open (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while self.in_flight or admission.active_streams:
            if time.monotonic() >= deadline:
                log.warning(
                    "shutdown grace of %.0f s is over with %d request(s) and %d stream(s) still open; "
                    "they are cut off (raise DS_SHUTDOWN_GRACE_SECONDS to give them longer)",
                    timeout,
                    self.in_flight,
                    admission.active_streams,
                )
                return False
            await asyncio.sleep(0.05)
        return True
