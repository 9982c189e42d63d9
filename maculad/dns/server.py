"""The DNS transports: UDP and TCP on every `dns.listen` address.

Thin adapters around `Responder` (fastpath.py). UDP is served by one of two
transports, both doing the same thing per datagram in the common case — one
dict lookup keyed by the packet minus its ID, the ID patched in front of the
pre-encoded reply, the entry's hit count bumped — and handing misses to the
slow path:

- `batch.BatchUDP` (Linux): recvmmsg/sendmmsg, many datagrams per syscall and
  no Python object per sender address; the default where available;
- `_UDPProtocol`: an asyncio datagram protocol whose `datagram_received` is
  exactly that lookup + `sendto`; used elsewhere or with `udp_batch=False`.

The caches are cleared by a route-table listener the moment a table is swapped
in. A sample flag is raised and the next query (or batch) is timed for the latency
histogram: a bool test per query, no clock reads. The flag is raised again
`SAMPLE_INTERVAL` after a sample was taken, so an idle server has no timer at all.

TCP: 2-byte length framing, any number of pipelined queries per connection
(forwarded ones may be answered out of order, as RFC 7766 allows), and
back-pressure: a client that does not read its replies fills the transport's
bounded write buffer (`TCP_WRITE_HIGH`) and stops being read (`pause_writing`).
A client that sends nothing and reads nothing for `dns.tcp_idle_timeout` is
closed — aborted when replies it never read are still buffered, since a
graceful close would wait for them forever. At `dns.max_tcp_clients` a new
client is never refused: the least recently active client is evicted (RST),
one with no forwarded query outstanding if there is one, so idle or stuck
clients cannot lock new ones out. Both closes are counted in
`maculad_dns_tcp_closed_total{reason}`.

Listeners are per configured address: `stage` binds new addresses beside the
serving ones (all or none), `commit` takes the new config and closes the
addresses it dropped, so a reload never closes a listener before its
replacement is bound, and `missing()` tells readiness what is not served.

No packet can stop the server: the packet path returns FORMERR/NOTIMP or drops
for bad input, and an unexpected exception (a bug) is logged, rate-limited,
and the packet dropped.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypedDict, cast

import structlog

from maculad.config import DNSConfig
from maculad.core.net import format_hostport as _fmt
from maculad.dns import batch
from maculad.dns.codes import REFUSED, SERVFAIL, qtype_label, rcode_label
from maculad.dns.answer import ZoneSettings
from maculad.dns.fastpath import Forward, Responder, settings_from
from maculad.dns.forward import Forwarder
from maculad.dns.peer import PeerLookup
from maculad.dns.wire import fit_forwarded, reply_rcode, simple_reply
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend
from maculad.routes.manager import RouteTableManager
from maculad.routes.table import RouteTable

log = structlog.get_logger("maculad.dns")

#: how often the next query is timed for `maculad_dns_query_duration_seconds`
SAMPLE_INTERVAL = 0.05
#: bytes of unread replies a TCP client may have buffered here before it stops being read
TCP_WRITE_HIGH = 64 * 1024
TCP_WRITE_LOW = 16 * 1024
#: forwarded queries one TCP connection may have outstanding before it stops being read
TCP_MAX_PENDING = 32
_BUG_LOG_INTERVAL = 10.0


class PeerStatus(TypedDict):
    dns: str
    zone: str
    in_flight: int


class CacheEntries(TypedDict):
    udp: int
    tcp: int


class DNSStatus(TypedDict):
    """The `dns` component in `GET /v1/status`."""

    listen: list[str]  # "udp://127.0.0.153:53", "tcp://…"
    horizon: str
    answer_address: str | None
    udp_transport: str
    domain: str
    ttl: int
    forwarders: list[str]
    powerdns: PeerStatus | None
    table_version: int
    queries: int
    fastpath_hits: int
    malformed: int
    truncated: int
    cache_entries: CacheEntries
    tcp_clients: int
    forwards_in_flight: int
    internal_errors: int


class DNSServer:
    name = "dns"

    def __init__(
        self,
        *,
        config: DNSConfig,
        domain: str,
        routes: RouteTableManager,
        metrics: Metrics,
        udp_batch: bool | None = None,
        peer: Backend | None = None,
        peer_zone: str | None = None,
        horizon: str = "host",
        answer_address: str | None = None,
        client_allowed: Callable[[str], Awaitable[bool]] | None = None,
        apex_a: tuple[str, ...] = (),
    ) -> None:
        """`udp_batch`: serve UDP with recvmmsg/sendmmsg (batch.py); None = wherever available.
        `peer`, `peer_zone`: PowerDNS's DNS listener and zone, for in-zone names no route has.

        A horizon other than the host's answers every route with `answer_address` and
        forwards only for clients `client_allowed` accepts (REFUSED for the others). `apex_a`: the
        host horizon's A answer for the domain itself (the status page's address), if any."""
        self.horizon = horizon
        self._answer_address = answer_address
        self._client_allowed = client_allowed
        self._apex_a = apex_a
        self._config = config
        self._domain = domain
        self._routes = routes
        self._metrics = metrics
        self.peer: PeerLookup | None = None
        self._peer_zone: str | None = None
        self.responder = Responder(settings=self._settings(config), routes=routes, counters=metrics.dns)
        self.set_peer(peer, peer_zone)
        self.forwarder = Forwarder(upstreams=config.forwarders, timeout=config.forward_timeout, metrics=metrics)
        self._udp: list[tuple[_UDPListener, str, int]] = []
        self.udp_batch = batch.available() if udp_batch is None else udp_batch and batch.available()
        self._sampler: asyncio.TimerHandle | None = None
        self._hooked = False
        self._tcp: list[tuple[asyncio.Server, str, int]] = []
        self._pairs: dict[Backend, tuple[_UDPListener, asyncio.Server]] = {}  # by configured address
        self.tcp_conns: set[_TCPProtocol] = set()
        self._forwards: set[asyncio.Task[None]] = set()
        self._last_bug_log = 0.0
        self._bugs = 0
        self._latency_udp = metrics.dns_latency.labels(transport="udp")
        self._latency_tcp = metrics.dns_latency.labels(transport="tcp")
        self._tcp_idle_closed = metrics.dns_tcp_closed.labels(horizon=horizon, reason="idle")
        self._tcp_evicted = metrics.dns_tcp_closed.labels(horizon=horizon, reason="evicted")

    # --- Component ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on every listen address (port 0: both on the same free port)."""
        self._routes.add_listener(self._on_table)
        self._metrics.dns.flushers.append(self.responder.flush)
        self._hooked = True
        try:
            self._adopt(await self.stage(self._config.listen))
        except BaseException:
            await self.stop()
            raise
        log.info("dns_listening", listen=[f"{p}://{h}:{n}" for p, h, n in self.bound()],
                 forwarders=[f"{f.host}:{f.port}" for f in self._config.forwarders])

    async def stage(self, addresses: Sequence[Backend]) -> list[StagedListener]:
        """Bind (and serve) `addresses` besides the listeners there are; all or none: on a failure what
        was bound here is closed and the OSError (naming the address) raised. Reload binds the new
        addresses this way before it changes anything, then `commit`s or `discard`s."""
        staged: list[StagedListener] = []
        try:
            for addr in addresses:
                udp, tcp, actual = await self._bind(addr.host, addr.port)
                staged.append(StagedListener(addr, udp, tcp, actual))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def discard(self, staged: Sequence[StagedListener]) -> None:
        for s in staged:
            s.udp.close()
            s.tcp.close()

    def commit(self, staged: Sequence[StagedListener], config: DNSConfig, *,
               apex_a: tuple[str, ...] | None = None) -> None:
        """Take `config` with the listeners `stage` bound for it; close those it no longer lists."""
        keep = set(config.listen)
        for addr in [a for a in self._pairs if a not in keep]:
            udp, tcp = self._pairs.pop(addr)
            self._udp = [e for e in self._udp if e[0] is not udp]
            self._tcp = [e for e in self._tcp if e[0] is not tcp]
            udp.close()
            tcp.close()
            log.info("dns_listener_closed", address=str(addr))
        self._adopt(staged)
        self.reconfigure(config, apex_a=apex_a)
        log.info("dns_listening", listen=[f"{p}://{h}:{n}" for p, h, n in self.bound()])

    def missing(self) -> list[Backend]:
        """Configured addresses no listener serves (empty while DNS is healthy)."""
        return [a for a in self._config.listen if a not in self._pairs]

    def _adopt(self, staged: Sequence[StagedListener]) -> None:
        for s in staged:
            self._udp.append((s.udp, s.address.host, s.port))
            self._tcp.append((s.tcp, s.address.host, s.port))
            self._pairs[s.address] = (s.udp, s.tcp)
            s.udp.sample = True
        self._metrics.dns_listeners.labels(horizon=self.horizon, transport="udp").set(len(self._udp))
        self._metrics.dns_listeners.labels(horizon=self.horizon, transport="tcp").set(len(self._tcp))

    def _on_table(self, table: RouteTable) -> None:
        self.responder.invalidate()

    def sample_taken(self) -> None:
        """A listener timed a query: raise the flags again in `SAMPLE_INTERVAL` (one timer at most)."""
        if self._sampler is None and self._hooked:
            self._sampler = asyncio.get_running_loop().call_later(SAMPLE_INTERVAL, self._sample_tick)

    def _sample_tick(self) -> None:
        self._sampler = None
        for udp, _, _ in self._udp:
            udp.sample = True

    async def _bind(self, host: str, port: int) -> tuple[_UDPListener, asyncio.Server, int]:
        loop = asyncio.get_running_loop()
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            udp: _UDPListener
            try:
                if self.udp_batch:
                    udp = batch.BatchUDP.open(host, port, responder=self.responder, forward=self.forward,
                                              bug=self.bug, latency=self._latency_udp,
                                              sampled=self.sample_taken)
                    udp.start(loop)
                else:
                    _, udp = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self),
                                                                 local_addr=(host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"DNS cannot listen on udp {_fmt(host, port)}: {exc.strerror or exc}") from exc
            actual = udp.sockname()[1]
            try:
                tcp = await loop.create_server(lambda: _TCPProtocol(self), host, actual, backlog=256)
            except OSError as exc:
                udp.close()
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # the free UDP port is taken on TCP: pick another
                raise OSError(exc.errno, f"DNS cannot listen on tcp {_fmt(host, actual)}: {exc.strerror or exc}") \
                    from exc
            return udp, tcp, actual
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self._hooked:
            self._hooked = False
            self._routes.remove_listener(self._on_table)
            self.responder.flush()
            self._metrics.dns.flushers.remove(self.responder.flush)
        for udp, _, _ in self._udp:
            udp.close()
        for server, _, _ in self._tcp:
            server.close()
        for conn in list(self.tcp_conns):
            conn.abort()
        for task in list(self._forwards):
            task.cancel()
        if self._forwards:
            await asyncio.wait(list(self._forwards), timeout=2.0)
        for server, _, _ in self._tcp:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("dns_tcp_close_timeout")
        if self._udp or self._tcp:
            log.info("dns_stopped")
        self._udp.clear()
        self._tcp.clear()
        self._pairs.clear()
        self._metrics.dns_listeners.labels(horizon=self.horizon, transport="udp").set(0)
        self._metrics.dns_listeners.labels(horizon=self.horizon, transport="tcp").set(0)

    def status(self) -> DNSStatus:
        self.responder.flush()
        c = self._metrics.dns
        return {
            "listen": [f"{p}://{_fmt(h, n)}" for p, h, n in self.bound()],
            "horizon": self.horizon,
            "answer_address": self._answer_address,
            "udp_transport": "recvmmsg" if self.udp_batch else "datagram-protocol",
            "domain": self._domain,
            "ttl": self._config.ttl,
            "forwarders": [_fmt(f.host, f.port) for f in self._config.forwarders],
            "powerdns": ({"dns": _fmt(self.peer.upstream.host, self.peer.upstream.port), "zone": self.peer.zone,
                          "in_flight": self.peer.forwarder.in_flight} if self.peer is not None else None),
            "table_version": self.responder.version,
            "queries": sum(c.queries.values()),
            "fastpath_hits": c.fastpath_hits,
            "malformed": c.malformed,
            "truncated": c.truncated,
            "cache_entries": {"udp": len(self.responder.udp), "tcp": len(self.responder.tcp)},
            "tcp_clients": len(self.tcp_conns),
            "forwards_in_flight": self.forwarder.in_flight,
            "internal_errors": self._bugs,
        }

    def bound(self) -> list[tuple[str, str, int]]:
        return [("udp", h, p) for _, h, p in self._udp] + [("tcp", h, p) for _, h, p in self._tcp]

    def reconfigure(self, config: DNSConfig, *, apex_a: tuple[str, ...] | None = None) -> list[str]:
        """Apply ttl, forwarders, timeouts, the TCP cap and the apex answer live; returns the keys that
        need a restart."""
        needs_restart = ["dns.listen"] if any(a not in self._pairs for a in config.listen) else []
        self._config = config
        if apex_a is not None:
            self._apex_a = apex_a
        self.forwarder.upstreams = config.forwarders
        self.forwarder.timeout = config.forward_timeout
        self.responder.configure(self._settings(config))
        if self.peer is not None:
            self.peer.ttl_cap = config.ttl
            self.peer.forwarder.timeout = config.forward_timeout
        log.info("dns_reconfigured", ttl=config.ttl, forwarders=len(config.forwarders),
                 needs_restart=needs_restart)
        return needs_restart

    def set_peer(self, upstream: Backend | None, zone: str | None) -> None:
        """Answer in-zone names no route has from PowerDNS at `upstream` (None: NXDOMAIN as before)."""
        if upstream is None or not zone:
            self.peer, self._peer_zone = None, None
        else:
            self._peer_zone = zone
            self.peer = PeerLookup(upstream=upstream, zone=zone, timeout=self._config.forward_timeout,
                                   ttl_cap=self._config.ttl, soa=lambda: self.responder.view.soa,
                                   metrics=self._metrics, ra=lambda: self.responder.settings.forwarding)
        self.responder.configure(self._settings(self._config))

    def _settings(self, config: DNSConfig) -> ZoneSettings:
        if self._answer_address is None:
            return settings_from(config, self._domain, peer_zone=self._peer_zone, apex_a=self._apex_a)
        # on another horizon the apex answers where that horizon relays the page (G), if anywhere
        s = settings_from(config, self._domain, peer_zone=self._peer_zone, apex_a=self._apex_a)
        return replace(s, ns_addresses=(self._answer_address,), answer_address=self._answer_address)

    # --- shared by the transports ---------------------------------------------------

    @property
    def tcp_idle_timeout(self) -> float:
        return self._config.tcp_idle_timeout

    def admit_tcp(self, conn: _TCPProtocol) -> None:
        """Take a new TCP client; at `dns.max_tcp_clients`, evict the least recently active one first."""
        conns = self.tcp_conns
        while len(conns) >= self._config.max_tcp_clients:
            # the oldest of the clients with nothing in flight, else the oldest of all
            victim = min(conns, key=lambda c: (c.pending > 0, c.last_active))
            conns.discard(victim)
            self._tcp_evicted.inc()
            log.debug("dns_tcp_client_evicted", cap=self._config.max_tcp_clients, client=victim.peer)
            victim.abort()
        conns.add(conn)

    def tcp_idle_closed(self) -> None:
        self._tcp_idle_closed.inc()

    def bug(self, where: str) -> None:
        """An exception escaped the packet path: count it, log it (at most every few seconds), carry on."""
        self._bugs += 1
        now = time.monotonic()
        if now - self._last_bug_log >= _BUG_LOG_INTERVAL:
            self._last_bug_log = now
            log.exception("dns_internal_error", where=where, total=self._bugs)

    def forward(self, job: Forward, send: Callable[[bytes], None], client: str) -> None:
        """Resolve `job` upstream and `send` the reply; REFUSED for a client the guard does not allow."""
        task = asyncio.get_running_loop().create_task(self._forward(job, send, client))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _forward(self, job: Forward, send: Callable[[bytes], None], client: str) -> None:
        q = job.query
        if job.peer:
            peer = self.peer
            if peer is None:  # switched off between decision and now
                reply = simple_reply(q, SERVFAIL, ra=True)
            else:
                reply = await peer.reply(q, job.packet, limit=job.limit)
            self._metrics.dns.queries[(qtype_label(q.qtype), rcode_label(reply_rcode(reply)))] += 1
            try:
                send(reply)
            except Exception:
                self.bug("peer_send")
            return
        if self._client_allowed is not None and not await self._client_allowed(client):
            self._metrics.dns.queries[(qtype_label(q.qtype), "REFUSED")] += 1
            try:
                send(simple_reply(q, REFUSED, ra=False))
            except Exception:
                self.bug("refused_send")
            return
        upstream = await self.forwarder.resolve(job.packet)
        if upstream is None:
            reply = simple_reply(q, SERVFAIL, ra=True)
        else:
            reply, truncated = fit_forwarded(q, upstream, limit=job.limit)
            if truncated:
                self._metrics.dns.truncated += 1
        self._metrics.dns.queries[(qtype_label(q.qtype), rcode_label(reply_rcode(reply)))] += 1
        try:
            send(reply)
        except Exception:
            self.bug("forward_send")

    def latency(self, tcp: bool) -> Any:
        return self._latency_tcp if tcp else self._latency_udp




@dataclass(frozen=True, slots=True)
class StagedListener:
    """A configured address bound by `DNSServer.stage` and not yet committed."""

    address: Backend
    udp: _UDPListener
    tcp: asyncio.Server
    port: int


class _UDPListener(Protocol):
    """A UDP socket being served: BatchUDP, or the datagram protocol below."""

    sample: bool

    def sockname(self) -> tuple[str, int]: ...

    def close(self) -> None: ...


class _UDPProtocol(asyncio.DatagramProtocol):
    """The portable UDP transport: one callback per datagram."""

    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._responder = server.responder
        self._exact = server.responder.udp.exact  # cleared in place, never replaced
        self._latency = server.latency(False)
        self.sample = False
        self._sendto: Callable[[bytes, Any], None] = lambda data, addr: None
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto

    def sockname(self) -> tuple[str, int]:
        assert self._transport is not None
        name = self._transport.get_extra_info("sockname")
        return name[0], name[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        hit = self._exact.get(data[2:])
        if hit is not None and not self.sample:
            self._sendto(data[:2] + hit.reply, addr)
            hit.hits += 1
            return
        if self.sample:
            self.sample = False
            self._server.sample_taken()
            started = time.perf_counter()
            self._serve(data, addr)
            self._latency.observe(time.perf_counter() - started)
        else:
            self._slow(data, addr)

    def _serve(self, data: bytes, addr: Any) -> None:
        try:
            reply = self._responder.lookup(data, tcp=False)
        except Exception:
            self._server.bug("udp_lookup")
            return
        if reply is not None:
            self._sendto(reply, addr)
        else:
            self._slow(data, addr)

    def _slow(self, data: bytes, addr: Any) -> None:
        try:
            out = self._responder.respond(data, tcp=False)
        except Exception:
            self._server.bug("udp")
            return
        if out is None:
            return
        if isinstance(out, bytes):
            self._sendto(out, addr)
            return
        sendto = self._sendto
        self._server.forward(out, lambda reply: sendto(reply, addr), addr[0])

    def error_received(self, exc: Exception) -> None:
        log.debug("dns_udp_error", error=str(exc))


class _TCPProtocol(asyncio.Protocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._responder = server.responder
        self._latency = server.latency(True)
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        self._buf = bytearray()
        self.pending = 0
        self._closed = False
        self._paused_writing = False
        self._paused_reading = False
        self._eof = False
        #: loop time of the client's last sign of life: a query read, replies read (or sent)
        self.last_active = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        self._transport.set_write_buffer_limits(high=TCP_WRITE_HIGH, low=TCP_WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self._server.admit_tcp(self)
        self._timer = loop.call_later(self._server.tcp_idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self.last_active
        limit = self._server.tcp_idle_timeout
        if idle >= limit and self.pending == 0:
            self._server.tcp_idle_closed()
            t = self._transport
            if t is not None and t.get_write_buffer_size():  # replies it never read: close() would wait
                self.abort()
            else:
                self.close()
            return
        self._timer = loop.call_later(max(limit - idle, limit / 10), self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_active = asyncio.get_running_loop().time()
        buf = self._buf
        buf += data
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if n == 0:
                self.close()  # a zero-length message is not DNS
                return
            if len(buf) < n + 2:
                break
            msg = bytes(buf[2 : n + 2])
            del buf[: n + 2]
            self._handle(msg)
            if self._closed:
                return

    def _handle(self, msg: bytes) -> None:
        started = time.perf_counter()
        try:
            out: bytes | Forward | None = self._responder.lookup(msg, tcp=True)
            if out is None:
                out = self._responder.respond(msg, tcp=True)
        except Exception:
            self._server.bug("tcp")
            return
        if out is None:
            return
        if isinstance(out, bytes):
            self.send(out)
            self._latency.observe(time.perf_counter() - started)
            return
        self.pending += 1
        if self.pending >= TCP_MAX_PENDING:
            self._pause_reading()
        self._server.forward(out, self._forwarded, self.peer)

    def _forwarded(self, reply: bytes) -> None:
        self.pending -= 1
        self.send(reply)
        if self._eof and self.pending == 0:
            self.close()
            return
        if self.pending < TCP_MAX_PENDING and not self._paused_writing:
            self._resume_reading()

    def send(self, reply: bytes) -> None:
        if self._closed or self._transport is None:
            return
        self._transport.write(struct.pack("!H", len(reply)) + reply)
        if not self._paused_writing:  # a reply queued behind unread ones is no sign of life
            self.last_active = asyncio.get_running_loop().time()

    def _pause_reading(self) -> None:
        if not self._paused_reading and self._transport is not None and not self._closed:
            self._paused_reading = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and self._transport is not None and not self._closed:
            self._paused_reading = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self.last_active = asyncio.get_running_loop().time()  # the client read its replies
        if self.pending < TCP_MAX_PENDING:
            self._resume_reading()

    def eof_received(self) -> bool | None:
        # the client is done sending; let pending forwarded replies go out, then close
        self._eof = True
        if self.pending == 0:
            self.close()
        return True

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._closed = True
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.tcp_conns.discard(self)
