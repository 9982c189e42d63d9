"""One address, many names: the Host-header / SNI routed TCP listener (G:80, G:443).

A `DemuxListener` accepts like `TcpListener`, but its connections start in a
peek state: they read (and keep) the first bytes until `peek.py` finds the
name — the HTTP Host header on a `by-host` listener, the TLS SNI on a
`by-sni` one — within `MAX_PEEK` bytes and `PEEK_TIMEOUT` seconds. The name
is looked up in the current route table (exact name, then wildcards) and the
route's backend for the host horizon's http (or https) front port becomes the
connection's target; from there it is the ordinary L4 relay of tcp.py: the
peeked bytes are written to the backend first, then both directions are
relayed untouched, with the same flow control, half-close, dead-backend page,
held-service page (503 while the route's service is not running) and metrics
(counted under the route it reached).

On a `by-host` listener the domain itself (`Context.apex`, set by the
container horizon when the page is on) goes to the status page, so
`http://macula.local` works from a container too.

On a `by-sni` listener the route's https port rule of the host horizon holds
too (`spec.tls_mode`): a route with only an http backend gets its TLS
terminated here with the local CA's leaf for the name — the connection is
handed, with the ClientHello read so far, to `tls.DemuxedTlsProtocol` — so
`https://name` works from a container as it does on the host.

A name no route answers (or a route without that kind of backend) gets, on
HTTP, a short 404 page naming it (400 when the request names no host); a TLS
client gets a closed connection (FIN), as no certificate could be right.
Those connections are counted in `maculad_proxy_unrouted_connections_total`. At most
`MAX_PEEKING` connections per listener may be peeking at once (each holding at most
`MAX_PEEK` bytes); more are closed at once and counted as `overload`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from maculad.proxy import errorpage
from maculad.proxy.peek import MAX_PEEK, Found, NeedMore, NoName, Peek, peek_http_host, peek_sni
from maculad.proxy.spec import Target, tls_mode
from maculad.proxy.stats import ListenerStats
from maculad.proxy.tcp import _CLOSED, _CONNECTING, _LINGER, BACKLOG, ClientProtocol, TcpListener, _tune
from maculad.routes.table import RouteTable

log = structlog.get_logger("maculad.proxy")

#: Seconds a connection may take to name its host.
PEEK_TIMEOUT = 10.0
#: Connections one listener lets peek at once (each holds at most MAX_PEEK bytes); beyond, closed at once.
MAX_PEEKING = 1024
_PEEK = 10
_MAX_STATS = 4096


class DemuxProtocol(ClientProtocol):
    __slots__ = ("counted",)

    listener: DemuxListener

    def __init__(self, listener: DemuxListener) -> None:
        super().__init__(listener)
        self.state = _PEEK
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.listener.peeking >= MAX_PEEKING:
            self.state = _CLOSED
            self.listener.unrouted("overload")
            transport.abort()  # type: ignore[attr-defined]
            return
        if not self._admit(transport):
            return
        _tune(transport)
        self.listener.peeking += 1
        self.head = bytearray()
        self.timer = self.listener.loop.call_later(PEEK_TIMEOUT, self._peek_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state != _PEEK:
            super().data_received(data)
            return
        head = self.head
        assert head is not None
        head += data
        result = self.listener.peek(head)
        if not isinstance(result, NeedMore):
            self._decide(result)

    def eof_received(self) -> bool:
        if self.state != _PEEK:
            return super().eof_received()
        self.client_eof = True
        result = self.listener.peek(self.head or b"")
        self._decide(NoName("the client closed before naming a host") if isinstance(result, NeedMore) else result)
        return True

    def _peek_timeout(self) -> None:
        self.timer = None
        if self.state == _PEEK:
            self.listener.peeking -= 1
            self.listener.unrouted("timeout")
            self._refuse(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _PEEK:
            self.listener.peeking -= 1
        super().connection_lost(exc)

    def _decide(self, result: Peek) -> None:
        self.listener.peeking -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        head = bytes(self.head or b"")
        if isinstance(result, NoName):
            self.listener.unrouted("no-name")
            self._refuse(errorpage.bad_request(reason=result.reason, address=self.listener.spec.address)
                         if self.listener.http else None)
            return
        assert isinstance(result, Found)
        target, why = self.listener.route_for(result.name)
        if target is None:
            self.listener.unrouted("unknown-host")
            self._refuse(errorpage.not_found(host=result.name, address=self.listener.spec.address, why=why)
                         if self.listener.http else None)
            return
        self.target = target
        self.stats = self.listener.stats_for(target.route)
        self.stats.connections.inc()
        self.stats.active.inc()
        self.counted = True
        self.head = None
        if target.kind == "tls":
            self._terminate(head)
            return
        self.pending = bytearray(head)
        self.state = _CONNECTING
        self.transport.pause_reading()
        self.task = self.listener.loop.create_task(self._connect())

    def _terminate(self, hello: bytes) -> None:
        """Hand the connection to a TLS-terminating protocol (a route with only an http backend, as on
        the host horizon's https port): it takes the transport, the counts and the ClientHello read so far."""
        from maculad.proxy.tls import DemuxedTlsProtocol  # TLS (and its CA) only where it is used

        p = DemuxedTlsProtocol(self.listener)
        p.target, p.stats, p.counted = self.target, self.stats, True
        self.counted = False
        self.state = _CLOSED  # retired: the transport now reports to `p`
        self.listener.conns.discard(self)
        transport = self.transport
        transport.set_protocol(p)
        p.connection_made(transport)
        if p.state == _CLOSED or p.state == _LINGER:
            return
        p.data_received(hello)
        if self.client_eof:
            p.eof_received()

    def _refuse(self, page: bytes | None) -> None:
        if self.state == _CLOSED:
            return
        if page is not None:
            self.transport.write(errorpage.for_request(page, self.head or b""))
        self._linger()


class DemuxListener(TcpListener):
    """A TCP listener whose connections pick their route by name (kind `by-host` or `by-sni`)."""

    def __init__(self, *, table: Callable[[], RouteTable], horizon: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._table = table
        self.horizon = horizon
        self.http = self.target.kind == "by-host"
        self.peek: Callable[[bytes | bytearray], Peek] = peek_http_host if self.http else peek_sni
        self._stats: dict[str, ListenerStats] = {}
        self._unrouted = {r: self.ctx.metrics.proxy_unrouted.labels(horizon=horizon, port=str(self.spec.port),
                                                                    proto="tcp", reason=r)
                          for r in ("unknown-host", "no-name", "timeout", "overload")}
        self.peeking = 0
        assert MAX_PEEK > 0

    async def start(self, sock: Any) -> None:
        self._server = await self.loop.create_server(lambda: DemuxProtocol(self), sock=sock, backlog=BACKLOG)

    def route_for(self, name: str) -> tuple[Target | None, str]:
        """The target for `name`, or None and why not."""
        apex = self.ctx.apex
        if self.http and apex is not None and name == apex[0]:  # the domain itself: the status page
            return Target(route=name, backend=apex[1], kind="http"), ""
        route = self._table().lookup(name)
        if route is None:
            return None, "no route has this name"
        cfg = self.ctx.config
        if not self.http:  # the host horizon's rule for the route's https port (spec.tls_mode)
            mode = tls_mode(route, cfg, terminating=self.ctx.tls is not None)
            http = route.backend_for("tcp", cfg.http_port)
            if mode == "terminate" and http is not None:
                return Target(route=route.name, backend=http, kind="tls", service=route.service,
                              h2c=route.h2c, hold=route.hold), ""
        port = cfg.http_port if self.http else cfg.https_port
        backend = route.backend_for("tcp", port)
        if backend is None:
            return None, f"the route {route.name} has no {'HTTP' if self.http else 'TLS'} backend"
        return Target(route=route.name, backend=backend, kind="http" if self.http else "https",
                      service=route.service, hold=route.hold), ""

    def stats_for(self, route: str) -> ListenerStats:
        stats = self._stats.get(route)
        if stats is None:
            if len(self._stats) >= _MAX_STATS:
                self._stats.clear()
            stats = ListenerStats(metrics=self.ctx.metrics, route=route, port=self.spec.port, proto="tcp",
                                  horizon=self.horizon)
            self._stats[route] = stats
        return stats

    def unrouted(self, reason: str) -> None:
        self._unrouted[reason].inc()

    def opened(self, conn: ClientProtocol) -> bool:
        return self.admit(conn)  # counted under a route once it has one (`_decide`)

    def closed(self, conn: ClientProtocol) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            if getattr(conn, "counted", False):  # a DemuxProtocol, or the TLS one it handed over to
                conn.flush()
                conn.stats.active.dec()
        self._after_close()
