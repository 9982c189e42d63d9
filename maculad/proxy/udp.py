"""The UDP relay: one session per client address, each with its own connected socket.

A datagram from a new client address opens a session: a UDP socket connected
to the backend, so the backend's replies arrive on that socket and go back to
exactly that client (from the listener's socket, so the client sees the
address it sent to). Datagrams that arrive while the session's socket is being
set up wait in a short queue (at most `MAX_PENDING`, beyond that dropped, as
UDP may).

Sessions are kept in least-recently-active order. A session idle for
`udp_idle_timeout` is closed by a sweep timer, which runs only while there
are sessions. At `udp_max_sessions`, a new client is never refused: the least recently active session is evicted
(closed) to make room, so a flood of one-off clients cannot lock out the
active ones for the idle timeout. Write buffers are bounded: when a socket's
buffer exceeds `MAX_BUFFER`, further datagrams are dropped and counted.

UDP has no connections to drain: when a listener is removed, its socket and
sessions close at once (replies could not be delivered without the socket).
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from typing import Any

import structlog

from maculad.proxy.spec import ListenerSpec, Target
from maculad.proxy.stats import Context, ListenerStats, classify

log = structlog.get_logger("maculad.proxy")

MAX_PENDING = 64
MAX_BUFFER = 1024 * 1024

Addr = tuple[Any, ...]


class UdpSession(asyncio.DatagramProtocol):
    """One client address and its socket connected to the backend."""

    __slots__ = (
        "_f_in",
        "_f_out",
        "addr",
        "bytes_in",
        "bytes_out",
        "closed",
        "last",
        "listener",
        "pending",
        "target",
        "transport",
    )

    def __init__(self, listener: UdpListener, addr: Addr, target: Target, now: float) -> None:
        self.listener = listener
        self.addr = addr
        self.target = target
        self.transport: Any = None
        self.pending: list[bytes] | None = []
        self.last = now
        self.bytes_in = 0
        self.bytes_out = 0
        self._f_in = 0
        self._f_out = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        pending, self.pending = self.pending, None
        for data in pending or ():
            transport.sendto(data)  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.bytes_out += len(data)
        self.listener.reply(self, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the backend is not there (yet); keep the session.
        self.listener.stats.upstream_error(classify(exc)[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.drop(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def flush(self, stats: ListenerStats) -> None:
        d = self.bytes_in - self._f_in
        if d:
            stats.bytes_in.inc(d)
            self._f_in = self.bytes_in
        d = self.bytes_out - self._f_out
        if d:
            stats.bytes_out.inc(d)
            self._f_out = self.bytes_out


class UdpListener(asyncio.DatagramProtocol):
    """One bound UDP socket and its sessions."""

    def __init__(self, *, spec: ListenerSpec, target: Target, stats: ListenerStats, ctx: Context) -> None:
        self.spec = spec
        self.target = target
        self.stats = stats
        self.ctx = ctx
        self.sessions: OrderedDict[Addr, UdpSession] = OrderedDict()
        self.dropped = 0
        self.evicted = 0
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def conns(self) -> OrderedDict[Addr, UdpSession]:
        return self.sessions

    async def start(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def error_received(self, exc: Exception) -> None:
        log.debug("proxy_udp_error", listener=self.spec.address, error=str(exc))

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self._closed:
            return
        assert self._loop is not None
        s = self.sessions.get(addr)
        if s is None:
            s = self._open(addr)
        else:
            self.sessions.move_to_end(addr)
        s.last = self._loop.time()
        s.bytes_in += len(data)
        t = s.transport
        if t is not None:
            if t.get_write_buffer_size() > MAX_BUFFER:
                self.dropped += 1
                return
            t.sendto(data)
        elif s.pending is not None and len(s.pending) < MAX_PENDING:
            s.pending.append(data)
        else:
            self.dropped += 1

    def reply(self, session: UdpSession, data: bytes) -> None:
        t = self._transport
        if t is None or self._closed or session.closed:
            return
        assert self._loop is not None
        session.last = self._loop.time()
        if t.get_write_buffer_size() > MAX_BUFFER:
            self.dropped += 1
            return
        t.sendto(data, session.addr)

    def _open(self, addr: Addr) -> UdpSession:
        assert self._loop is not None
        limit = self.ctx.config.udp_max_sessions
        while len(self.sessions) >= limit:
            _, oldest = self.sessions.popitem(last=False)
            self.evicted += 1
            self._forget(oldest)
        s = UdpSession(self, addr, self.target, self._loop.time())
        self.sessions[addr] = s
        if self._sweeper is None:
            self._schedule_sweep()
        self.stats.connections.inc()
        self.stats.udp_sessions.inc()
        task = self._loop.create_task(self._connect(s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return s

    async def _connect(self, s: UdpSession) -> None:
        loop = asyncio.get_running_loop()
        if s.target.hold is not None:  # the service is not running: its backend is not dialed
            self.stats.upstream_error("held")
            self.drop(s)
            return
        b = s.target.backend
        try:
            async with asyncio.timeout(self.ctx.config.connect_timeout):
                transport, _ = await loop.create_datagram_endpoint(lambda: s, remote_addr=(b.host, b.port))
        except Exception as exc:  # OSError, TimeoutError, or a bad backend name (idna)
            reason, human = classify(exc)
            self.stats.upstream_error(reason)
            suppressed = self.stats.log_allowed(reason)
            if suppressed is not None:
                log.warning("proxy_backend_unreachable", route=s.target.route, listener=self.spec.address,
                            backend=str(b), reason=human, suppressed=suppressed)
            self.drop(s)
            return
        if s.closed:
            transport.close()

    def drop(self, s: UdpSession) -> None:
        """Forget a session (closed, failed or expired)."""
        if self.sessions.get(s.addr) is s:
            del self.sessions[s.addr]
            self._forget(s)

    def _forget(self, s: UdpSession) -> None:
        if s.closed:
            return
        s.close()
        s.flush(self.stats)
        self.stats.udp_sessions.dec()

    def _schedule_sweep(self) -> None:
        self._sweeper = None
        if self._closed or self._loop is None or not self.sessions:
            return  # no sessions, no timer: the next one re-arms it
        idle = self.ctx.config.udp_idle_timeout
        self._sweeper = self._loop.call_later(max(0.05, min(1.0, idle / 4)), self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        deadline = self._loop.time() - self.ctx.config.udp_idle_timeout
        # Sessions are in least-recently-*received* order; replies refresh `last` too, so check all.
        for s in [s for s in self.sessions.values() if s.last < deadline]:
            self.drop(s)
        self._schedule_sweep()

    def serving(self) -> bool:
        """Whether the socket is still open and read (the watchdog's question)."""
        return not self._closed and self._transport is not None and not self._transport.is_closing()

    def drain(self, grace: float) -> None:
        self.abort_all()

    async def wait_drained(self) -> None:
        return None

    def stop_accepting(self) -> None:
        self.abort_all()

    def abort_all(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for t in list(self._tasks):
            t.cancel()
        for s in list(self.sessions.values()):
            self.drop(s)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def flush(self) -> None:
        for s in self.sessions.values():
            s.flush(self.stats)

    def buffered(self) -> int:
        n = self._transport.get_write_buffer_size() if self._transport is not None else 0
        for s in self.sessions.values():
            if s.transport is not None:
                n += s.transport.get_write_buffer_size()
        return n
