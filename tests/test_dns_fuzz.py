"""Hypothesis against the DNS packet path: random bytes and mutated valid queries never
raise, every reply is well-formed and fits, the cache agrees with a fresh answer, and a
real server on uvloop keeps answering real queries in between."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maculad.dns.answer import ZoneSettings
from maculad.dns.fastpath import Forward, Responder
from maculad.dns.wire import WireError, parse_query, udp_limit
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from tests.support.dns import manager, threaded_server

ROUTES = {"grafana": "127.0.0.2", "*.apps": "127.0.0.9", "a.b": "127.0.0.10"}
SEEDS = [
    dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]
    for name, rdtype, kw in [
        ("grafana.macula.local", "A", {}),
        ("GrAfAnA.macula.local", "AAAA", {"use_edns": 0}),
        ("x.apps.macula.local", "ANY", {"use_edns": 0, "payload": 4096, "want_dnssec": True}),
        ("nope.macula.local", "A", {"use_edns": 0, "options": [dns.edns.GenericOption(10, b"12345678")]}),
        ("macula.local", "NS", {}),
        ("macula.local", "SOA", {"use_edns": 1}),
        ("example.com", "A", {}),
        ("b.macula.local", "TXT", {}),
    ]
]


def make(tmp: Path, *, forwarding: bool) -> tuple[RouteTableManager, Responder]:
    metrics = Metrics()
    routes = manager(tmp, metrics, ROUTES)
    settings_ = ZoneSettings.from_listen(domain="macula.local", ttl=5, listen_hosts=("127.0.0.153",),
                                         forwarding=forwarding)
    return routes, Responder(settings=settings_, routes=routes, counters=metrics.dns)


@pytest.fixture(scope="module")
def responders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Responder, Responder]]:
    _, cached = make(tmp_path_factory.mktemp("a"), forwarding=True)
    routes, _ = make(tmp_path_factory.mktemp("b"), forwarding=True)
    yield cached, Responder(settings=cached.settings, routes=routes, counters=Metrics().dns)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "pointer", "count", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "pointer" and len(data) > 13:
            # a compression pointer somewhere, often pointing at itself (a loop)
            target = draw(st.sampled_from([pos, 12, 0, len(data) + 5]))
            data[pos : pos + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))
        elif op == "count" and len(data) >= 12:
            off = draw(st.sampled_from([4, 6, 8, 10]))
            data[off : off + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        elif op == "dup":
            data += data[12:]
    return bytes(data)


packets = st.one_of(st.binary(max_size=600), mutated())


def check_reply(packet: bytes, out: bytes | Forward | None, *, tcp: bool) -> None:
    if out is None or isinstance(out, Forward):
        return
    assert len(out) >= 12 and out[:2] == packet[:2] and out[2] & 0x80  # same ID, QR set
    try:
        q = parse_query(packet)
    except WireError:
        return
    assert len(out) <= (65535 if tcp else udp_limit(q))
    reply = dns.message.from_wire(out, ignore_trailing=False)  # parses with an independent parser
    assert reply.question[0].name.to_wire() == packet[12 : q.question_end - 4]  # the client's own bytes


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet=packets, tcp=st.booleans())
def test_packet_path_never_raises(responders: tuple[Responder, Responder], packet: bytes, tcp: bool) -> None:
    cached, fresh = responders
    out = cached.respond(packet, tcp=tcp)
    check_reply(packet, out, tcp=tcp)
    # whatever the cache now holds for this packet is what a responder that never saw it says
    hit = cached.lookup(packet, tcp=tcp)
    if hit is not None:
        assert hit == fresh.respond(packet, tcp=tcp) == out


@settings(max_examples=1500, deadline=None)
@given(seed=st.sampled_from(SEEDS), ident=st.integers(0, 0xFFFF), case=st.lists(st.booleans(), min_size=40,
                                                                                 max_size=40))
def test_cached_and_fresh_answers_agree_for_any_id_and_case(
    responders: tuple[Responder, Responder], seed: bytes, ident: int, case: list[bool]
) -> None:
    """0x20: a query differing only in ID and letter case is served from the templates
    and must equal a fresh answer byte for byte."""
    cached, fresh = responders
    q = parse_query(seed)
    name = bytearray(seed[12 : q.question_end - 4])
    for i, flip in enumerate(case):
        if i < len(name) and flip and chr(name[i]).isalpha():
            name[i] ^= 0x20
    packet = struct.pack("!H", ident) + seed[2:12] + bytes(name) + seed[q.question_end - 4 :]
    a = cached.respond(packet, tcp=False)
    b = fresh.respond(packet, tcp=False)
    if isinstance(a, Forward):
        assert isinstance(b, Forward) and b.packet == packet
    else:
        assert a == b
        assert cached.lookup(packet, tcp=False) == a


# --- over the wire, on uvloop ---------------------------------------------------------------


@pytest.fixture(scope="module", params=["batch", "protocol"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, socket.socket]]:
    metrics = Metrics()
    routes = manager(tmp_path_factory.mktemp("live"), metrics, ROUTES)
    with threaded_server(routes, metrics, udp_batch=request.param == "batch") as (server, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(5)
        yield port, sock
        sock.close()
        assert server.status()["internal_errors"] == 0


_probe_id = 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=packets)
def test_server_keeps_answering_under_garbage(live: tuple[int, socket.socket], packet: bytes) -> None:
    global _probe_id
    _, sock = live
    if len(packet) >= 2:
        packet = b"\xff\xff" + packet[2:]  # probes never use this ID, so replies cannot be mixed up
    sock.send(packet)
    _probe_id = (_probe_id + 1) % 65535
    probe = dns.message.make_query("grafana.macula.local", "A")
    probe.id = _probe_id
    sock.send(probe.to_wire())
    while True:  # skip the reply to the garbage, if it got one
        data = sock.recv(65535)
        reply = dns.message.from_wire(data) if data[:2] == struct.pack("!H", probe.id) else None
        if reply is not None and reply.question and reply.question[0].name == probe.question[0].name:
            break
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "127.0.0.2"
