"""Helpers for the DNS tests: real route tables, a real server on free ports, real clients,
and a small real upstream resolver (dnslib on UDP + TCP) to forward to."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import contextlib
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import dnslib

from maculad.config import DNSConfig
from maculad.dns.server import DNSServer
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import PortMap, RouteSpec
from maculad.core.net import Backend
from maculad.routes.store import AllocationStore

DOMAIN = "macula.local"


def spec(name: str, ip: str | None = None) -> RouteSpec:
    """A config route for `name` (qualified under the domain), optionally pinned."""
    full = name if name.endswith("." + DOMAIN) else f"{name}.{DOMAIN}"
    return RouteSpec(
        name=full, source="config", origin=f"config:{full}", ip=ip,
        ports=(PortMap("tcp", 80, Backend("127.0.0.1", 8080)),),
    )


def manager(tmp_path: Path, metrics: Metrics, routes: dict[str, str | None] | None = None) -> RouteTableManager:
    m = RouteTableManager(
        domain=DOMAIN, pool=ipaddress.IPv4Network("127.0.10.0/24"),
        store=AllocationStore(state_dir=tmp_path / "state"), metrics=metrics,
    )
    if routes:
        m.update("config", [spec(n, ip) for n, ip in routes.items()])
    return m


@contextlib.asynccontextmanager
async def serving(
    routes: RouteTableManager,
    metrics: Metrics,
    *,
    host: str = "127.0.0.1",
    ttl: int = 5,
    forwarders: tuple[Backend, ...] = (),
    forward_timeout: float = 2.0,
    max_tcp_clients: int = 64,
    tcp_idle_timeout: float = 10.0,
    listen: tuple[Backend, ...] | None = None,
    udp_batch: bool | None = None,
) -> AsyncIterator[DNSServer]:
    """A started DNSServer on a free port (UDP and TCP on the same port); stopped on exit.

    What goes wrong after start-up fails the test on exit: an exception the event loop reports
    (a callback or an unawaited task that raised), and the server's own count of exceptions that
    escaped its packet path. (The server runs no long-lived task of its own.)"""
    cfg = DNSConfig(listen=listen or (Backend(host, 0),), ttl=ttl, forwarders=forwarders,
                    forward_timeout=forward_timeout, max_tcp_clients=max_tcp_clients,
                    tcp_idle_timeout=tcp_idle_timeout)
    server = DNSServer(config=cfg, domain=DOMAIN, routes=routes, metrics=metrics, udp_batch=udp_batch)
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def on_loop_error(lp: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        problems.append(f"{context.get('message')}: {context.get('exception')!r}")
        lp.default_exception_handler(context)

    loop.set_exception_handler(on_loop_error)
    try:
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
        if server.status()["internal_errors"]:
            problems.append(f"{server.status()['internal_errors']} exceptions escaped the packet path")
    finally:
        loop.set_exception_handler(previous)
    if problems:
        raise AssertionError("the DNS server failed after start-up: " + "; ".join(problems))


@contextlib.contextmanager
def threaded_server(routes: RouteTableManager, metrics: Metrics, **kw: object) -> Iterator[tuple[DNSServer, int]]:
    """The server on its own thread running uvloop (the daemon's loop), for synchronous
    clients such as hypothesis tests and blocking sockets. Yields (server, port); what
    fails on that thread, at start-up or later (see `serving`), is raised here."""
    import uvloop

    loop = uvloop.new_event_loop()
    started: list[DNSServer] = []
    ready = threading.Event()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        try:
            async with serving(routes, metrics, **kw) as server:  # type: ignore[arg-type]
                started.append(server)
                ready.set()
                await stop.wait()
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise TimeoutError("the threaded DNS server did not start in 30 s")
    if errors:
        raise errors[0]
    try:
        yield started[0], port_of(started[0])
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        if thread.is_alive():
            raise TimeoutError("the threaded DNS server did not stop in 30 s")
        loop.close()
    if errors:
        raise errors[0]


def port_of(server: DNSServer, proto: str = "udp") -> int:
    return next(p for t, _, p in server.bound() if t == proto)


async def dig(port: int, *args: str, host: str = "127.0.0.1") -> str:
    """Run the real `dig` (with a short timeout and no retries) and return its stdout."""
    proc = await asyncio.create_subprocess_exec(
        "dig", "-p", str(port), f"@{host}", "+time=3", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode() + err.decode()


# --- raw clients ------------------------------------------------------------------


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client(host: str, port: int) -> AsyncIterator[tuple[Callable[[bytes], None], asyncio.Queue[bytes]]]:
    """A connected UDP socket: (send, queue of replies)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collect, remote_addr=(host, port))
    try:
        yield transport.sendto, proto.queue
    finally:
        transport.close()


async def udp_ask(host: str, port: int, packet: bytes, timeout: float = 5.0) -> bytes:
    async with udp_client(host, port) as (send, replies):
        send(packet)
        return await asyncio.wait_for(replies.get(), timeout)


async def tcp_ask(host: str, port: int, *packets: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send every packet on one TCP connection (pipelined), read as many replies."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(b"".join(struct.pack("!H", len(p)) + p for p in packets))
        await writer.drain()
        out = []
        for _ in packets:
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))
            out.append(await asyncio.wait_for(reader.readexactly(n), timeout))
        return out
    finally:
        writer.close()


# --- an upstream resolver to forward to ------------------------------------------------

BIG_COUNT = 60


def upstream_answer(query: bytes) -> bytes | None:
    """The upstream's zone `example.`: www → one A; big → 60 A (too big for 512 bytes);
    silent → no reply at all (a forwarder timeout); anything else NXDOMAIN."""
    q = dnslib.DNSRecord.parse(query)
    name = str(q.q.qname).lower()
    r = q.reply(ra=1, aa=1)
    if name == "silent.example.":
        return None
    if name == "www.example.":
        r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=60))
    elif name == "big.example.":
        for i in range(BIG_COUNT):
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(f"192.0.2.{i + 1}"), ttl=60))
    else:
        r.header.rcode = dnslib.RCODE.NXDOMAIN
    return bytes(r.pack())


class Upstream:
    """A real DNS server on UDP and TCP (same free port) answering `upstream_answer`.

    Over UDP it honours 512 bytes / the client's EDNS size and sets TC (keeping
    the question) when the answer does not fit, like a real server.
    """

    def __init__(self) -> None:
        self.port = 0
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> Upstream:
        loop = asyncio.get_running_loop()
        outer = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                outer.udp_queries += 1
                reply = upstream_answer(data)
                if reply is None:
                    return
                q = dnslib.DNSRecord.parse(data)
                limit = max(512, q.ar[0].edns_len) if q.ar and q.ar[0].rtype == dnslib.QTYPE.OPT else 512
                if len(reply) > limit:
                    tc = q.reply(ra=1, aa=1)
                    tc.header.tc = 1
                    reply = bytes(tc.pack())
                self.t.sendto(reply, addr)  # type: ignore[attr-defined]

        async def bind_udp() -> None:
            self._udp, _ = await loop.create_datagram_endpoint(UDP, local_addr=(host, 0))
            self.port = self._udp.get_extra_info("sockname")[1]

        await bind_udp()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(n)
                    outer.tcp_queries += 1
                    reply = upstream_answer(data)
                    if reply is not None:
                        writer.write(struct.pack("!H", len(reply)) + reply)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        for attempt in range(20):  # the free UDP port may be some TCP connection's port: pick another
            try:
                self._tcp = await asyncio.start_server(handle, host, self.port)
                return self
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
                assert self._udp is not None
                self._udp.close()
                await bind_udp()
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
