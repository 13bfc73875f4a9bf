"""Connections that never finish their headers (slow-loris) are cut, and idle ones cannot crowd out clients.

uvicorn bounds a stalled *body* (our upload timeout) and the idle time *between* requests (`timeout_keep_alive`),
but not the time to send a request line and headers: its h11 protocol arms no timer when a connection opens and
cancels the keep-alive timer as soon as any byte arrives, so `POST /api/predict HTTP/1.1\r\nHost: x\r\n` and
then silence holds a socket forever (measured: still open after 150 s). `h11_max_incomplete_event_size` caps
the *size* of unfinished headers, not their time, and `limit_concurrency` answers 503 to everyone once idle
sockets fill it. So this small protocol subclass (uvicorn has no option for it) adds two rules:

- **Header deadline.** From the moment a connection opens, or a keep-alive connection starts a new request with
  its first bytes, the request line and headers must be complete within `header_timeout` seconds, else the
  connection is closed (no answer: the client has not said what it wants; nginx's `client_header_timeout`).
- **Connection cap.** At most `max_connections` sockets are open; a new one beyond that closes the connection
  that has waited longest for its headers, so a flood of idle sockets is shed while clients that send whole
  requests are served. When every connection is busy with a request, the newcomer is the one closed.

It is independent of the ASGI app. Deployments facing the internet should still sit behind a reverse proxy
(nginx, Caddy, a cloud load balancer) that buffers requests, which is the usual slow-loris defence.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 256

log = logging.getLogger("medclf.serve")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (module docstring). Configure a
    subclass with `guarded_protocol`, which also gives it its own table of connections waiting for headers."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    waiting: dict[GuardedH11Protocol, None] = {}  # insertion-ordered, longest waiting first; own per subclass

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_deadline()
        if len(self.connections) > self.max_connections:
            self._shed_one()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a request started but its headers are not complete yet
            self._arm_header_deadline()
        else:
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
            self.waiting[self] = None

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.waiting.pop(self, None)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self.waiting.pop(self, None)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection whose request headers were not complete within %g s", self.header_timeout)
            self.transport.close()

    def _shed_one(self) -> None:
        """Close the connection that has waited longest for its headers (this new one when no other waits)."""
        oldest = next((p for p in self.waiting if p is not self), self)
        oldest._disarm_header_deadline()
        oldest.transport.close()
        log.warning("more than %d open connections: closed one still waiting for its request headers",
                    self.max_connections)


def guarded_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
                     max_connections: int = DEFAULT_MAX_CONNECTIONS) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` class with these bounds, for `uvicorn.run(..., http=...)`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections, "waiting": {}})
