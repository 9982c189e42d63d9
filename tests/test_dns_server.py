"""The DNS server over real sockets on free ports: dig, dnspython, raw packets,
a real upstream resolver for forwarding, and the server on uvloop."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from prometheus_client import generate_latest

from maculad.config import DNSConfig
from maculad.dns.server import DNSServer
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.core.net import Backend
from tests.conftest import require
from tests.support.dns import (
    BIG_COUNT,
    DOMAIN,
    Upstream,
    dig,
    manager,
    port_of,
    serving,
    spec,
    tcp_ask,
    threaded_server,
    udp_ask,
)

ROUTES = {"grafana": "127.0.0.2", "loki": "127.0.0.3", "*.apps": "127.0.0.9"}
HOST = "127.0.0.1"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture(params=["batch", "protocol"])
def udp_batch(request: pytest.FixtureRequest) -> bool:
    """Every test runs against both UDP transports (recvmmsg batches and the datagram protocol)."""
    return bool(request.param == "batch")


@pytest.fixture
def routes(tmp_path: Path, metrics: Metrics) -> RouteTableManager:
    return manager(tmp_path, metrics, ROUTES)


def records(dig_output: str) -> list[list[str]]:
    """The resource records dig printed (answer, authority, additional), as whitespace-split fields."""
    return [line.split() for line in dig_output.splitlines() if line and not line.startswith(";")]


def need_dig() -> None:
    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")


def query(name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


async def udp(port: int, msg: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(msg, HOST, port=port, timeout=5, ignore_trailing=False)


async def tcp(port: int, msg: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(msg, HOST, port=port, timeout=5)


# --- dig ---------------------------------------------------------------------------


async def test_dig_udp_and_tcp(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    need_dig()
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        assert port_of(server, "tcp") == port
        for transport in ([], ["+tcp"]):
            out = await dig(port, *transport, "grafana.macula.local")
            assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
            assert records(out) == [["grafana.macula.local.", "5", "IN", "A", "127.0.0.2"]]
            short = await dig(port, *transport, "+short", "x.y.apps.macula.local")
            assert short.strip() == "127.0.0.9"
        out = await dig(port, "MiXeD.ApPs.MaCuLa.LoCaL")
        assert records(out) == [["MiXeD.ApPs.MaCuLa.LoCaL.", "5", "IN", "A", "127.0.0.9"]]
        out = await dig(port, "missing.macula.local")
        assert "status: NXDOMAIN" in out
        soa = ["macula.local.", "5", "IN", "SOA", "ns.macula.local.", "hostmaster.macula.local."]
        assert records(out)[0][:6] == soa
        out = await dig(port, "grafana.macula.local", "AAAA")
        assert "status: NOERROR" in out and "ANSWER: 0, AUTHORITY: 1" in out
        assert (await dig(port, "+short", "macula.local", "NS")).strip() == "ns.macula.local."
        assert (await dig(port, "+short", "ns.macula.local")).strip() == HOST
        assert "status: REFUSED" in await dig(port, "example.com")


# --- dnspython ---------------------------------------------------------------------


async def test_dnspython_answers(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch, ttl=30) as server:
        port = port_of(server)
        for ask in (udp, tcp):
            a = await ask(port, query("loki.macula.local"))
            assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
            assert [(r.ttl, [x.address for x in r]) for r in a.answer] == [(30, ["127.0.0.3"])]
            soa = await ask(port, query("macula.local", "SOA"))
            assert soa.answer[0][0].rname.to_text() == "hostmaster.macula.local."
            anyq = await ask(port, query("loki.macula.local", "ANY"))
            assert [r.rdtype for r in anyq.answer] == [dns.rdatatype.A]  # RFC 8482: one RRset
            mx = await ask(port, query("loki.macula.local", "MX"))
            assert mx.rcode() == dns.rcode.NOERROR and not mx.answer and mx.authority[0].rdtype == 6


async def test_case_preserved_on_every_path(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        for name in ("GrAfAnA.MaCuLa.LoCaL", "grafana.MACULA.local", "GrAfAnA.MaCuLa.LoCaL", "nOpE.macula.local"):
            for ask in (udp, tcp, udp):
                a = await ask(port, query(name))
                assert a.question[0].name.to_text() == name + "."
                for section in (a.answer, a.authority):
                    for rrset in section:
                        assert rrset.name.to_text().lower() in (name.lower() + ".", DOMAIN + ".")


async def test_table_swap_visible_to_the_next_query(
    routes: RouteTableManager, metrics: Metrics, udp_batch: bool,
) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        msg = query("grafana.macula.local")
        for _ in range(3):  # warm the fast path
            assert (await udp(port, msg)).answer[0][0].address == "127.0.0.2"
        routes.update("config", [spec("grafana", "127.0.0.50"), spec("new", "127.0.0.51")])
        assert (await udp(port, msg)).answer[0][0].address == "127.0.0.50"
        assert (await tcp(port, msg)).answer[0][0].address == "127.0.0.50"
        assert (await udp(port, query("new.macula.local"))).answer[0][0].address == "127.0.0.51"
        assert (await udp(port, query("loki.macula.local"))).rcode() == dns.rcode.NXDOMAIN


# --- EDNS and truncation -------------------------------------------------------------------


async def test_edns_echo_and_badvers(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        a = await udp(port, query("grafana.macula.local", use_edns=0, payload=4096, want_dnssec=True))
        assert a.edns == 0 and a.payload == 1232 and a.ednsflags & dns.flags.DO
        plain = await udp(port, query("grafana.macula.local", use_edns=False))
        assert plain.edns == -1
        bad = await udp(port, query("grafana.macula.local", use_edns=1))
        assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0 and not bad.answer


async def test_forwarding_truncation_and_tcp_retry(
    routes: RouteTableManager, metrics: Metrics, udp_batch: bool,
) -> None:
    upstream = await Upstream().start()
    try:
        async with serving(routes, metrics, udp_batch=udp_batch, forwarders=(Backend(HOST, upstream.port),)) as server:
            port = port_of(server)
            www = await udp(port, query("www.example"))
            assert www.rcode() == dns.rcode.NOERROR and www.answer[0][0].address == "192.0.2.1"
            assert (await udp(port, query("nothing.example"))).rcode() == dns.rcode.NXDOMAIN

            # too big for 512 bytes: maculad fetched it over TCP from upstream, the client gets TC
            before_tcp = upstream.tcp_queries
            small = await udp(port, query("big.example", use_edns=False))
            assert small.flags & dns.flags.TC and not small.answer
            assert small.question[0].name.to_text() == "big.example."
            assert upstream.tcp_queries > before_tcp
            # ... and retries over TCP, as dig and every stub do
            full = await tcp(port, query("big.example", use_edns=False))
            assert not full.flags & dns.flags.TC and len(full.answer[0]) == BIG_COUNT
            # with a big enough EDNS buffer it fits in UDP
            edns = await udp(port, query("big.example", use_edns=0, payload=4096))
            assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == BIG_COUNT
            # and dig does the TC → TCP dance on its own
            if shutil.which("dig"):
                out = await dig(port, "+noedns", "big.example")
                assert "Truncated, retrying in TCP mode" in out and f"ANSWER: {BIG_COUNT}" in out
            text = generate_latest(metrics.registry).decode()
            assert 'maculad_dns_forwarded_total{result="ok"}' in text
            assert "maculad_dns_truncated_responses_total 1.0" in text or "truncated_responses_total 2.0" in text
    finally:
        await upstream.stop()


async def test_forward_timeout_is_servfail(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    upstream = await Upstream().start()
    try:
        async with serving(routes, metrics, udp_batch=udp_batch, forwarders=(Backend(HOST, upstream.port),),
                           forward_timeout=0.3) as server:
            a = await udp(port_of(server), query("silent.example"))
            assert a.rcode() == dns.rcode.SERVFAIL and a.flags & dns.flags.RA
            text = generate_latest(metrics.registry).decode()
            assert 'maculad_dns_forwarded_total{result="timeout"} 1.0' in text
    finally:
        await upstream.stop()


async def test_dead_forwarder_then_live_one(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    upstream = await Upstream().start()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((HOST, 0))  # bound, never answers
    try:
        fwd = (Backend(HOST, dead.getsockname()[1]), Backend(HOST, upstream.port))
        async with serving(routes, metrics, udp_batch=udp_batch, forwarders=fwd, forward_timeout=2.0) as server:
            a = await udp(port_of(server), query("www.example"))
            assert a.answer[0][0].address == "192.0.2.1"
    finally:
        dead.close()
        await upstream.stop()


# --- malformed input over the wire ------------------------------------------------------------


async def test_hostile_packets_get_formerr_notimp_or_nothing(
    routes: RouteTableManager, metrics: Metrics, udp_batch: bool,
) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        wire = bytearray(query("grafana.macula.local").to_wire())
        wire[5] = 2  # two questions
        reply = await udp_ask(HOST, port, bytes(wire))
        assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
        loop_ptr = bytes.fromhex("beef0100000100000000000" "0c00c00010001")
        reply = await udp_ask(HOST, port, loop_ptr)
        assert reply[:2] == b"\xbe\xef" and reply[3] & 0xF == dns.rcode.FORMERR
        update = bytes.fromhex("cafe2800000100000000000" "0066d6163756c61056c6f63616c0000060001")
        reply = await udp_ask(HOST, port, update)
        assert reply[:2] == b"\xca\xfe" and reply[3] & 0xF == dns.rcode.NOTIMP
        # a response, garbage and an empty datagram: dropped, and the server keeps answering
        for junk in (dns.message.make_response(query("x.macula.local")).to_wire(), b"\xff" * 7, b""):
            with pytest.raises(TimeoutError):
                await udp_ask(HOST, port, junk, timeout=0.3)
        assert (await udp(port, query("grafana.macula.local"))).answer[0][0].address == "127.0.0.2"
        assert server.status()["internal_errors"] == 0


# --- TCP ------------------------------------------------------------------------------------


async def test_tcp_pipelining(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    upstream = await Upstream().start()
    try:
        async with serving(routes, metrics, udp_batch=udp_batch, forwarders=(Backend(HOST, upstream.port),)) as server:
            names = ("grafana.macula.local", "www.example", "loki.macula.local", "no.macula.local",
                     "GRAFANA.macula.local")
            msgs = [query(n) for _ in range(4) for n in names]
            for i, m in enumerate(msgs):
                m.id = 1000 + i
            replies = await tcp_ask(HOST, port_of(server), *(m.to_wire() for m in msgs))
            by_id = {r.id: r for r in (dns.message.from_wire(x) for x in replies)}
            assert sorted(by_id) == [m.id for m in msgs]  # every one answered (forwards may overtake)
            for m in msgs:
                r = by_id[m.id]
                assert r.question[0].name == m.question[0].name
                expected = {"grafana": "127.0.0.2", "www": "192.0.2.1", "loki": "127.0.0.3"}.get(
                    m.question[0].name.labels[0].decode().lower())
                assert (r.answer[0][0].address if r.answer else None) == expected
    finally:
        await upstream.stop()


async def test_tcp_idle_timeout_and_client_cap(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch, max_tcp_clients=2, tcp_idle_timeout=0.5) as server:
        port = port_of(server)
        conns = [await asyncio.open_connection(HOST, port) for _ in range(2)]
        await _until(lambda: server.status()["tcp_clients"] == 2)
        # at the cap a new client is served: the oldest idle one is evicted to make room
        r3, w3 = await asyncio.open_connection(HOST, port)
        assert await asyncio.wait_for(conns[0][0].read(), 10) == b""
        conns[0][1].close()
        closed = "maculad_dns_tcp_closed_total"
        assert metrics.registry.get_sample_value(closed, {"horizon": "host", "reason": "evicted"}) == 1
        ask = query("grafana.macula.local").to_wire()
        w3.write(struct.pack("!H", len(ask)) + ask)
        n = struct.unpack("!H", await asyncio.wait_for(r3.readexactly(2), 10))[0]
        assert dns.message.from_wire(await r3.readexactly(n)).answer[0][0].address == "127.0.0.2"
        # the other two are closed by the server after the idle timeout
        for r, w in (conns[1], (r3, w3)):
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
        await _until(lambda: server.status()["tcp_clients"] == 0)
        assert metrics.registry.get_sample_value(closed, {"horizon": "host", "reason": "idle"}) == 2
        # a half-sent message does not keep a connection forever either
        r, w = await asyncio.open_connection(HOST, port)
        w.write(struct.pack("!H", 40) + b"\x00\x01")
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        # a zero-length frame is a protocol error: closed
        r, w = await asyncio.open_connection(HOST, port)
        w.write(b"\x00\x00")
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        # and it still serves
        assert (await tcp(port, query("grafana.macula.local"))).answer[0][0].address == "127.0.0.2"


async def _until(cond: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# --- lifecycle --------------------------------------------------------------------------------


async def test_every_listen_address_and_bind_errors(
    routes: RouteTableManager, metrics: Metrics, udp_batch: bool,
) -> None:
    listen = (Backend("127.0.0.1", 0), Backend("127.0.0.2", 0))
    async with serving(routes, metrics, udp_batch=udp_batch, listen=listen) as server:
        bound = server.bound()
        assert {(t, h) for t, h, _ in bound} == {(t, h) for t in ("udp", "tcp") for h in ("127.0.0.1", "127.0.0.2")}
        for _, host, port in bound:
            assert (await udp_ask(host, port, query("loki.macula.local").to_wire()))[:2]
            assert (await tcp_ask(host, port, query("loki.macula.local").to_wire()))[0][:2]
        status = server.status()
        assert status["listen"] and status["table_version"] == routes.current.version

        busy = next(p for t, h, p in bound if t == "udp" and h == "127.0.0.1")
        taken = DNSServer(config=DNSConfig(listen=(Backend("127.0.0.3", 0), Backend("127.0.0.1", busy))),
                          domain=DOMAIN, routes=routes, metrics=Metrics())
        with pytest.raises(OSError, match=f"udp 127.0.0.1:{busy}"):
            await taken.start()
        assert taken.bound() == []  # the first address it had bound was released


async def test_ipv6_listen_and_forwarder(
    routes: RouteTableManager, metrics: Metrics, udp_batch: bool
) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        has_ipv6 = True
    except OSError:
        has_ipv6 = False
    require(has_ipv6, "no IPv6 loopback (::1) on this machine")
    upstream = await Upstream().start("::1")
    try:
        async with serving(routes, metrics, udp_batch=udp_batch, listen=(Backend("::1", 0),),
                           forwarders=(Backend("::1", upstream.port),)) as server:
            port = port_of(server)
            a = await dns.asyncquery.udp(query("grafana.macula.local"), "::1", port=port, timeout=5)
            assert a.answer[0][0].address == "127.0.0.2"
            ns = await dns.asyncquery.tcp(query("ns.macula.local", "AAAA"), "::1", port=port, timeout=5)
            assert ns.answer[0][0].address == "::1"  # the NS name has the listen address
            fwd = await dns.asyncquery.udp(query("www.example"), "::1", port=port, timeout=5)
            assert fwd.answer[0][0].address == "192.0.2.1"
            assert server.status()["listen"] == [f"udp://[::1]:{port}", f"tcp://[::1]:{port}"]
    finally:
        await upstream.stop()


async def test_metrics_and_reconfigure(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    async with serving(routes, metrics, udp_batch=udp_batch) as server:
        port = port_of(server)
        for _ in range(5):
            await udp(port, query("grafana.macula.local"))
        await udp(port, query("nope.macula.local"))
        text = generate_latest(metrics.registry).decode()
        assert 'maculad_dns_queries_total{qtype="A",rcode="NOERROR"} 5.0' in text
        assert 'maculad_dns_queries_total{qtype="A",rcode="NXDOMAIN"} 1.0' in text
        assert 'maculad_dns_query_duration_seconds_count{transport="udp"}' in text
        assert 'maculad_dns_listeners{horizon="host",transport="udp"} 1.0' in text
        # a live TTL change is visible at once, cached answers included
        restart = server.reconfigure(DNSConfig(listen=server._config.listen, ttl=77))
        assert restart == []
        assert (await udp(port, query("grafana.macula.local"))).answer[0].ttl == 77
        assert server.reconfigure(DNSConfig(listen=(Backend("127.0.0.9", 53),))) == ["dns.listen"]


# --- on uvloop, as the daemon runs it ----------------------------------------------------------


def test_on_uvloop_with_dig(routes: RouteTableManager, metrics: Metrics, udp_batch: bool) -> None:
    need_dig()
    with threaded_server(routes, metrics, udp_batch=udp_batch) as (server, port):
        for args in ([], ["+tcp"]):
            out = subprocess.run(["dig", "-p", str(port), f"@{HOST}", "+time=3", "+tries=1", "+short", *args,
                                  "GrAfAnA.macula.local"], capture_output=True, text=True, timeout=30)
            assert out.stdout.strip() == "127.0.0.2"
        assert server.status()["queries"] == 2


# --------------------------------------------------------------------------- the helpers report late failures


async def test_serving_fails_the_test_on_errors_after_start_up(routes: RouteTableManager, metrics: Metrics) -> None:
    def boom() -> None:
        raise RuntimeError("a callback failed")

    with pytest.raises(AssertionError, match="a callback failed"):
        async with serving(routes, metrics) as server:
            asyncio.get_running_loop().call_soon(boom)
            assert (await udp(port_of(server), query("grafana.macula.local"))).answer  # the loop ran it
    with pytest.raises(AssertionError, match="1 exceptions escaped the packet path"):
        async with serving(routes, metrics) as server:
            try:
                raise ValueError("in the packet path")
            except ValueError:
                server.bug("test")


def test_threaded_server_raises_what_failed_on_its_thread(routes: RouteTableManager, metrics: Metrics) -> None:
    with pytest.raises(AssertionError, match="1 exceptions escaped the packet path"), \
            threaded_server(routes, metrics) as (server, _port):
        try:
            raise ValueError("in the packet path")
        except ValueError:
            server.bug("test")
