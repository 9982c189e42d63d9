"""The TCP relay: layer 4, asyncio Protocols, bytes untouched both ways.

Each accepted connection is a `ClientProtocol`; once its backend connection
(`BackendProtocol`) is up, each side's `data_received` writes the chunk
straight into the other side's transport (no queues, no copies in Python;
uvloop sends immediately and buffers only what the kernel refuses). The
client's socket is not read until the backend is connected, so nothing is
buffered meanwhile (uvloop starts reading right after `connection_made`
whatever the protocol asked, so a first chunk that arrives anyway is kept and
reading is paused again; that is at most one chunk).

The pipe: a plain connection (not TLS terminated here) is piped
(`ClientProtocol.pipe`) once it has relayed `PIPE_AFTER` chunks, at a chunk
when it is open both ways and neither transport holds unsent bytes: its two
sockets go to the relay's C pump (pump.py, `_pump.c`), the transports let go
of their descriptors, and from then on the pump moves and counts its bytes on
the loop's own thread, with no Python frame per batch of ready sockets instead
of one per chunk (that per-chunk machinery was most of the relay's own CPU per
request). The counts (`sample`), the unsent bytes and every close go through
the pump; timeouts, drain and the listener's bounds treat a piped connection
like any other. A short connection (a request or two) never gets there and so
pays nothing for it; one whose transports hold unsent bytes (a stream faster
than its reader) tries again every `PIPE_AFTER` chunks and meanwhile stays on
the Python path; where the pump is not built, no connection pipes.

Flow control: both transports have a bounded write buffer (`HIGH_WATER`);
when one fills, its protocol's `pause_writing` pauses *reading* on the other
side, and `resume_writing` resumes it. A slow reader therefore costs at most
one buffer per direction, the rest stays in kernel socket buffers and
ultimately throttles the sender. The pump keeps the same bound (one read of
`HIGH_WATER` at most per direction).

Half-close: EOF from one side becomes `write_eof` on the other while the other
direction stays open; the connection closes when both sides have sent EOF or
either side goes away. Connect failures on an HTTP front port get the
dead-backend page (errorpage.py); on other ports the client's connection is
closed cleanly (FIN, input drained briefly so the kernel does not answer with
a reset). Byte counts are plain integers, exported by `flush`.

Bounds, per listener: at most `proxy.max_connections` open (a new one beyond is
aborted at accept and counted as rejected, reason `limit`), and one sweep timer,
armed only while the listener has connections (an idle relay has no timer at
all), every min(timeouts)/4 and at most `SWEEP_MAX` seconds. The sweep reads the
byte counts the data path keeps anyway, so the data path pays nothing for it: a
connection whose counts did not move for `proxy.idle_timeout` is closed, and on
a port where the client speaks first (HTTP, terminated TLS, Host/SNI routing; not
plain TCP ports, where the server may speak first) a client that sent nothing
for `proxy.first_byte_timeout` is closed. A connection with unsent bytes (a
peer that does not read) is aborted, as a graceful close would wait for it
forever. The listen backlog is `BACKLOG` (passed to `create_server` too, which
calls listen() again).

A route whose service is not running (`Target.hold`) is never dialed: its HTTP
port answers the 503 page of the hold (errorpage.held), other ports are closed
cleanly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, ClassVar

import structlog

from maculad.proxy import errorpage, pump
from maculad.proxy.spec import ListenerSpec, Target
from maculad.proxy.stats import Context, ListenerStats, classify

log = structlog.get_logger("maculad.proxy")

#: Bytes a transport may buffer before the opposite side stops reading.
HIGH_WATER = pump.BUFFER
LOW_WATER = 128 * 1024
#: Seconds a refused client has to read our answer / FIN before the socket is closed.
LINGER = 2.0
#: Seconds the dead-backend page waits for the request head.
HEAD_WAIT = 2.0
#: listen() backlog of every relay listener (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
#: Longest gap between two sweeps of a listener's connections (idle and first-byte timeouts).
SWEEP_MAX = 2.0
#: Target kinds on which the client speaks first, so the first-byte timeout applies.
CLIENT_FIRST = frozenset({"http", "tls", "by-host", "by-sni"})

_CONNECTING, _RELAY, _PAGE, _LINGER, _CLOSED, _HANDSHAKE, _PIPED = range(7)
#: `reason` while the connect timer has fired and the connect is being cancelled
_TIMED_OUT = "connect timed out"


#: Chunks (both ways) a connection relays through Python before it is piped.
PIPE_AFTER = 64


def _dup(transport: Any) -> int | None:
    """A descriptor of its own for `transport`'s socket (the pump's), None when there is none to have."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return os.dup(sock.fileno())
    except OSError:  # out of descriptors: stay on the Python path
        return None


def _tune(transport: asyncio.BaseTransport) -> None:
    """Bounded write buffers. (uvloop and asyncio already set TCP_NODELAY on every TCP transport;
    asking for the socket object here would cost extra system calls on every connection.)"""
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)


class BackendProtocol(asyncio.Protocol):
    """The backend side of one relayed connection."""

    __slots__ = ("bytes_out", "client", "eof", "peer_write", "transport")

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self.transport: Any = None
        self.peer_write = client.client_writer()
        self.bytes_out = 0
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _tune(transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_out += len(data)
        try:
            self.peer_write(data)
        except RuntimeError:  # the client transport closed in this very loop iteration
            self.transport.close()
            return
        c = self.client
        c.budget -= 1
        if not c.budget:
            c.pipe()

    def eof_received(self) -> bool:
        self.eof = True
        client = self.client
        if client.state == _CLOSED:
            return False
        if client.client_eof:
            client.close_both()
            return True
        try:
            client.send_eof()
        except (RuntimeError, OSError):
            client.close_both()
        return True

    def pause_writing(self) -> None:  # backend is slow: stop reading the client
        try:
            self.client.transport.pause_reading()
        except RuntimeError:
            pass

    def resume_writing(self) -> None:
        c = self.client
        if c.state == _RELAY:
            try:
                c.transport.resume_reading()
            except RuntimeError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        c = self.client
        if c.state != _CLOSED and c.state != _PIPED and c.transport is not None and not c.transport.is_closing():
            c.transport.close()


class ClientProtocol(asyncio.Protocol):
    """The client side of one relayed connection, accepted on a listener."""

    __slots__ = (
        "_f_in",
        "_f_out",
        "active_at",
        "backend",
        "budget",
        "bytes_in",
        "client_eof",
        "head",
        "listener",
        "peer_write",
        "pending",
        "piped_at",
        "pump_id",
        "reason",
        "seen",
        "state",
        "stats",
        "target",
        "task",
        "timer",
        "transport",
    )

    #: whether this kind of connection pipes where the kernel counts (TLS terminated here does not)
    PIPES: ClassVar[bool] = True

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        #: the pump's id for this connection once piped, else -1
        self.pump_id = -1
        #: (bytes_in, bytes_out) when it was piped: the pump counts from there
        self.piped_at = (0, 0)
        #: chunks left before `pipe` (never reaches 0 where the connection does not pipe)
        self.budget = PIPE_AFTER if pump.AVAILABLE and self.PIPES else -1
        self.stats = listener.stats
        self.target = listener.target  # a changed backend only affects new connections
        self.transport: Any = None
        self.backend: BackendProtocol | None = None
        self.peer_write: Any = None
        self.bytes_in = 0
        self.state = _CONNECTING
        self.client_eof = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head: bytearray | None = None
        self.pending: bytearray | None = None
        self.reason = ""
        self._f_in = 0
        self._f_out = 0
        #: the byte count the listener's last sweep saw, and when it last moved (loop time)
        self.seen = 0
        self.active_at = 0.0

    @property
    def piped(self) -> bool:
        """Whether the connection was handed to the pump (it may have closed since)."""
        return self.pump_id >= 0

    # -- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admit(transport):
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        _tune(transport)
        self.task = self.listener.loop.create_task(self._connect())

    def _connect_timeout(self) -> None:
        self.reason = _TIMED_OUT
        if self.task is not None:
            self.task.cancel()

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        """Join the listener, or be aborted at once when it holds `proxy.max_connections`."""
        self.transport = transport
        if self.listener.opened(self):
            return True
        self.state = _CLOSED
        transport.abort()  # type: ignore[attr-defined]
        return False

    async def _connect(self) -> None:
        # The running loop is the listener's (asyncio.get_running_loop() and asyncio.timeout() would
        # each cost a getpid() system call per connection); the timeout is a plain timer.
        loop = self.listener.loop
        target = self.target
        if target.hold is not None:  # the service is not running: answer from its hold, never dial
            self.task = None
            if self.state != _CLOSED:
                self.stats.upstream_error("held")
                self._backend_failed(target.hold.reason)
            return
        started = time.perf_counter()  # not loop.time(): uvloop's is a cached millisecond clock
        timer = loop.call_later(self.listener.ctx.config.connect_timeout, self._connect_timeout)
        try:
            try:
                transport, backend = await loop.create_connection(
                    lambda: BackendProtocol(self), target.backend.host, target.backend.port
                )
            finally:
                timer.cancel()
        except asyncio.CancelledError:
            if self.reason is not _TIMED_OUT:
                raise
            self.reason = ""
            self._connect_failed(TimeoutError())
            return
        except Exception as exc:  # OSError, or a bad backend name (idna)
            self._connect_failed(exc)
            return
        self.task = None
        self.stats.latency.observe(time.perf_counter() - started)
        if self.state == _CLOSED:
            transport.abort()
            return
        self.backend = backend
        self.peer_write = transport.write
        self.state = _RELAY
        pending, self.pending = self.pending, None
        if pending:
            self.bytes_in += len(pending)
            transport.write(bytes(pending))
        if self.client_eof:
            try:
                transport.write_eof()
            except (RuntimeError, OSError):
                self.close_both()
            return
        self.transport.resume_reading()

    def _connect_failed(self, exc: BaseException) -> None:
        self.task = None
        if self.state == _CLOSED:
            return
        target = self.target
        reason, human = classify(exc)
        self.stats.upstream_error(reason)
        suppressed = self.stats.log_allowed(reason)
        if suppressed is not None:
            log.warning("proxy_backend_unreachable", route=target.route, listener=self.listener.spec.address,
                        backend=str(target.backend), reason=human, suppressed=suppressed)
        self._backend_failed(human)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _CLOSED or self.state == _PIPED:  # piped: the transport gave its socket to the pump
            return
        self.state = _CLOSED
        if self.task is not None:
            self.task.cancel()
            self.task = None
        b = self.backend
        if b is not None and b.transport is not None and not b.transport.is_closing():
            b.transport.close()
        self._closed()

    def _closed(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.closed(self)

    # -- the client side's byte stream (TlsClientProtocol encrypts it)

    def client_writer(self) -> Any:
        """The callable the backend side writes the client's bytes with."""
        return self.transport.write

    def send_eof(self) -> None:
        self.transport.write_eof()

    def close_both(self) -> None:
        if self.state == _PIPED:
            self._unpipe()
            return
        b = self.backend
        if b is not None and not b.transport.is_closing():
            b.transport.close()
        if not self.transport.is_closing():
            self.transport.close()

    def pipe(self) -> None:
        """Relayed `PIPE_AFTER` chunks: hand both sockets to the relay's pump (pump.py), which moves their
        bytes from now on. Only between chunks of a connection open both ways with nothing queued in
        either transport; otherwise it is tried again `PIPE_AFTER` chunks later (or never, half-closed)."""
        b = self.backend
        t = self.transport
        if self.state != _RELAY or b is None or self.client_eof or b.eof or t.is_closing() or b.transport.is_closing():
            self.budget = -1
            return
        if t.get_write_buffer_size() or b.transport.get_write_buffer_size():
            self.budget = PIPE_AFTER
            return
        client_fd = _dup(t)
        backend_fd = _dup(b.transport) if client_fd is not None else None
        if client_fd is None or backend_fd is None:
            if client_fd is not None:
                os.close(client_fd)
            self.budget = -1
            return
        try:
            self.pump_id = self.listener.ctx.pumps.take(self.listener.loop, client_fd, backend_fd, self._pipe_ended)
        except (OSError, RuntimeError) as exc:
            log.warning("proxy_pipe_failed", listener=self.listener.spec.address, error=str(exc))
            self.budget = -1
            return
        self.state = _PIPED
        self.piped_at = (self.bytes_in, b.bytes_out)
        # the transports close their own descriptors; the sockets stay open through the pump's
        t.abort()
        b.transport.abort()

    def _pipe_ended(self, err: int) -> None:
        """The pump finished the connection: both ways at EOF (0) or a socket's error."""
        if err:
            log.debug("proxy_piped_connection_error", listener=self.listener.spec.address, error=os.strerror(err))
        self._unpipe()

    def _unpipe(self) -> None:
        """Close a piped connection: its sockets, and its place in the listener."""
        if self.state != _PIPED:
            return
        self._count(self.listener.ctx.pumps.close(self.pump_id))
        self.state = _CLOSED
        self._closed()

    def _count(self, counts: tuple[int, int] | None) -> None:
        if counts is None:  # the pump has let it go already: the counts stay as last read
            return
        base_in, base_out = self.piped_at
        self.bytes_in = base_in + counts[0]
        assert self.backend is not None
        self.backend.bytes_out = base_out + counts[1]

    def sample(self) -> None:
        """A piped connection: bring the byte counts up to what the pump has moved."""
        if self.state == _PIPED:
            self._count(self.listener.ctx.pumps.counts(self.pump_id))

    def traffic(self) -> int:
        """Bytes relayed so far, both ways (what the listener's sweep watches)."""
        self.sample()
        b = self.backend
        return self.bytes_in + (b.bytes_out if b is not None else 0)

    def heard(self) -> bool:
        """Whether the client has sent anything yet."""
        self.sample()
        return self.bytes_in > 0 or bool(self.pending) or bool(self.head)

    def time_out(self) -> None:
        """Idle or silent too long: close both sides (abort when bytes wait for a peer that does not read)."""
        if self.buffered():
            self.abort()
        else:
            self.close_both()

    def abort(self) -> None:
        """Drain grace over (or the relay stops): drop both sides now."""
        if self.state == _PIPED:
            self._unpipe()
            return
        b = self.backend
        if b is not None and b.transport is not None:
            b.transport.abort()
        if self.transport is not None:
            self.transport.abort()

    # -- data path

    def data_received(self, data: bytes) -> None:
        if self.state == _RELAY:
            self.bytes_in += len(data)
            try:
                self.peer_write(data)
            except RuntimeError:  # the backend transport closed in this very loop iteration
                self.transport.close()
                return
            self.budget -= 1
            if not self.budget:
                self.pipe()
            return
        if self.state == _CONNECTING:  # see the module docstring: keep it, stop reading
            if self.pending is None:
                self.pending = bytearray()
            self.pending += data
            self.transport.pause_reading()
            return
        if self.state == _PAGE:
            head = self.head
            assert head is not None
            head += data[: errorpage.MAX_HEAD - len(head)]
            if errorpage.request_complete(head):
                self._send_page()
        # _LINGER: discard what the refused client still sends

    def eof_received(self) -> bool:
        state = self.state
        if state == _RELAY:
            self.client_eof = True
            b = self.backend
            assert b is not None
            if b.eof:
                self.close_both()
                return True
            try:
                b.transport.write_eof()
            except (RuntimeError, OSError):
                self.close_both()
            return True
        if state == _CONNECTING:
            self.client_eof = True
            return True
        if state == _PAGE:
            self._send_page()
            return True
        self.transport.close()
        return True

    def pause_writing(self) -> None:  # client is slow: stop reading the backend
        b = self.backend
        if b is not None:
            try:
                b.transport.pause_reading()
            except RuntimeError:
                pass

    def resume_writing(self) -> None:
        b = self.backend
        if b is not None:
            try:
                b.transport.resume_reading()
            except RuntimeError:
                pass

    # -- a backend that cannot be reached

    def _backend_failed(self, reason: str) -> None:
        if self.target.kind == "http":
            self.state = _PAGE
            self.head = self.pending[: errorpage.MAX_HEAD] if self.pending else bytearray()
            self.pending = None
            self.reason = reason
            if self.client_eof or errorpage.request_complete(self.head):
                self._send_page()
                return
            self.timer = self.listener.loop.call_later(HEAD_WAIT, self._send_page)
            self.transport.resume_reading()
        else:
            self._linger()

    def _send_page(self) -> None:
        if self.state != _PAGE:
            return
        t = self.target
        head = self.head or b""
        host = errorpage.host_header(head) or t.route
        if t.hold is not None:
            page = errorpage.held(t.hold, host=host, head=head, now=time.time())
        else:
            page = errorpage.for_request(errorpage.render(host=host, backend=str(t.backend), reason=self.reason),
                                         head)
        self.client_writer()(page)
        self._linger()

    def _linger(self) -> None:
        """Close cleanly: FIN now, discard input until the client closes or LINGER passes."""
        self.state = _LINGER
        self.head = None
        self.pending = None
        if self.timer is not None:
            self.timer.cancel()
        tr = self.transport
        try:
            if tr.can_write_eof():
                self.send_eof()
        except (RuntimeError, OSError):
            tr.close()
            return
        tr.resume_reading()
        self.timer = self.listener.loop.call_later(LINGER, tr.close)

    # -- accounting

    def flush(self) -> None:
        self.sample()
        stats = self.stats
        d = self.bytes_in - self._f_in
        if d:
            stats.bytes_in.inc(d)
            self._f_in = self.bytes_in
        b = self.backend
        if b is not None:
            d = b.bytes_out - self._f_out
            if d:
                stats.bytes_out.inc(d)
                self._f_out = b.bytes_out

    def buffered(self) -> int:
        if self.state == _PIPED:
            return self.listener.ctx.pumps.pending(self.pump_id)
        n = 0
        if self.transport is not None and not self.transport.is_closing():
            n += self.transport.get_write_buffer_size()
        b = self.backend
        if b is not None and b.transport is not None and not b.transport.is_closing():
            n += b.transport.get_write_buffer_size()
        return n


class TcpListener:
    """One bound TCP socket and the connections accepted on it."""

    def __init__(self, *, spec: ListenerSpec, target: Target, stats: ListenerStats, ctx: Context) -> None:
        self.spec = spec
        self.target = target
        self.stats = stats
        self.ctx = ctx
        self.conns: set[ClientProtocol] = set()
        #: the loop the listener serves on (built inside it); connections use it instead of asking
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.AbstractServer | None = None
        self._drained: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, sock: socket.socket) -> None:
        from maculad.proxy.tls import RedirectProtocol, TlsClientProtocol  # tls.py builds on this module

        def factory() -> asyncio.Protocol:
            t = self.target  # read per connection: a target updated in place applies to new ones
            if t.kind == "tls":
                return TlsClientProtocol(self)
            if t.redirect:
                return RedirectProtocol(self)
            return ClientProtocol(self)

        # create_server calls listen() again: without `backlog` it would be asyncio's 100
        self._server = await self.loop.create_server(factory, sock=sock, backlog=BACKLOG)

    def opened(self, conn: ClientProtocol) -> bool:
        """A connection was accepted: False when the listener is full (the caller aborts it)."""
        if not self.admit(conn):
            return False
        conn.stats.connections.inc()
        conn.stats.active.inc()
        return True

    def admit(self, conn: ClientProtocol) -> bool:
        """Take `conn` under `proxy.max_connections`, arm the sweep; False (counted) when full."""
        cap = self.ctx.config.max_connections
        if len(self.conns) >= cap:
            self.stats.closed_by_relay("rejected", "limit")
            suppressed = self.stats.log_allowed("limit")
            if suppressed is not None:
                log.warning("proxy_connection_limit", listener=self.spec.address, max_connections=cap,
                            suppressed=suppressed)
            return False
        self.conns.add(conn)
        conn.active_at = self.loop.time()
        if self._sweeper is None:
            self._arm()
        return True

    def closed(self, conn: ClientProtocol) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            conn.flush()
            conn.stats.active.dec()
        self._after_close()

    def _after_close(self) -> None:
        if self.conns:
            return
        if self._sweeper is not None:  # no connections, no timer
            self._sweeper.cancel()
            self._sweeper = None
        if self._drained is not None:
            self._drained.set()

    # -- timeouts

    def _arm(self) -> None:
        if not self.conns or self.loop is None:
            return
        cfg = self.ctx.config
        every = max(0.05, min(SWEEP_MAX, cfg.idle_timeout / 4, cfg.first_byte_timeout / 4))
        self._sweeper = self.loop.call_later(every, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        assert self.loop is not None
        now = self.loop.time()
        cfg = self.ctx.config
        idle_before = now - cfg.idle_timeout
        silent_before = now - cfg.first_byte_timeout
        for c in list(self.conns):
            state = c.state
            if state == _PAGE or state == _LINGER or state == _CLOSED:
                continue  # answering or closing, each on its own timer
            moved = c.traffic()
            if moved != c.seen:
                c.seen = moved
                c.active_at = now
            elif (c.active_at <= silent_before and (c.target.kind in CLIENT_FIRST or c.target.redirect)
                  and not c.heard()):
                self._time_out(c, "first_byte")
            elif c.active_at <= idle_before:
                self._time_out(c, "idle")
        self._arm()

    def _time_out(self, conn: ClientProtocol, reason: str) -> None:
        conn.stats.closed_by_relay("timeout", reason)
        log.debug("proxy_timeout", listener=self.spec.address, route=conn.target.route, reason=reason)
        conn.time_out()

    def serving(self) -> bool:
        """Whether the listening socket still accepts (the watchdog's question)."""
        return self._server is not None and self._server.is_serving()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def drain(self, grace: float) -> None:
        """Stop accepting; give open connections `grace` seconds, then abort them."""
        self.stop_accepting()
        if self._drained is None:
            self._drained = asyncio.Event()
        if not self.conns:
            self._drained.set()
            return
        loop = asyncio.get_running_loop()
        for c in list(self.conns):
            if c.state == _PAGE or c.state == _LINGER or c.state == _HANDSHAKE:  # nothing to wait for
                c.abort()
            elif c.timer is None:
                c.timer = loop.call_later(grace, c.abort)

    async def wait_drained(self) -> None:
        if self._drained is None:
            self._drained = asyncio.Event()
            if not self.conns:
                self._drained.set()
        await self._drained.wait()

    def abort_all(self) -> None:
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for c in list(self.conns):
            c.abort()

    def flush(self) -> None:
        for c in self.conns:
            c.flush()

    def buffered(self) -> int:
        return sum(c.buffered() for c in self.conns)
