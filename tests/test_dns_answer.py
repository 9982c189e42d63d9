"""The DNS packet path without sockets: decisions, encoding (checked by dnspython's
independent parser), the caches, and malformed input."""

from __future__ import annotations

from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.name
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from maculad.dns.answer import RR, A, Question, ZoneSettings, ZoneView, answer
from maculad.dns.codes import NOERROR, NXDOMAIN, QTYPE_A, QTYPE_AAAA, QTYPE_ANY, QTYPE_NS, QTYPE_SOA, REFUSED
from maculad.dns.fastpath import Forward, Responder
from maculad.dns.wire import WireError, parse_query
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from tests.support.dns import manager, spec

ROUTES = {"grafana": "127.0.0.2", "*.apps": "127.0.0.9", "a.b": "127.0.0.10", "loki": "127.0.0.3"}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def routes(tmp_path: Path, metrics: Metrics) -> RouteTableManager:
    return manager(tmp_path, metrics, ROUTES)


def responder(routes: RouteTableManager, metrics: Metrics, *, ttl: int = 5, forwarding: bool = False) -> Responder:
    settings = ZoneSettings.from_listen(domain="macula.local", ttl=ttl, listen_hosts=("127.0.0.153",),
                                        forwarding=forwarding)
    r = Responder(settings=settings, routes=routes, counters=metrics.dns)
    routes.add_listener(lambda table: r.invalidate())
    return r


def ask(r: Responder, name: str, rdtype: str = "A", *, tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    out = r.respond(q.to_wire(), tcp=tcp)
    assert isinstance(out, bytes)
    reply = dns.message.from_wire(out)
    assert reply.id == q.id
    return reply


def view(routes: RouteTableManager, *, forwarding: bool = False) -> ZoneView:
    return ZoneView.build(routes.current, ZoneSettings(domain="macula.local", ttl=7, forwarding=forwarding))


def q(name: str, qtype: int = QTYPE_A, qclass: int = 1) -> Question:
    return Question(labels=tuple(lb.encode() for lb in name.lower().split(".")), qtype=qtype, qclass=qclass)


# --- the pure decision --------------------------------------------------------------


def test_answer_known_name_wildcard_nodata_nxdomain(routes: RouteTableManager) -> None:
    v = view(routes)
    d = answer(q("grafana.macula.local"), v)
    assert (d.rcode, d.aa, d.answer) == (NOERROR, True, (RR("grafana.macula.local", 7, A("127.0.0.2")),))

    d = answer(q("deep.er.apps.macula.local"), v)
    assert d.answer == (RR("deep.er.apps.macula.local", 7, A("127.0.0.9")),)

    d = answer(q("grafana.macula.local", QTYPE_AAAA), v)
    assert (d.rcode, d.answer, d.authority) == (NOERROR, (), (v.soa,))

    d = answer(q("nope.macula.local"), v)
    assert (d.rcode, d.aa, d.authority) == (NXDOMAIN, True, (v.soa,))

    # b.macula.local exists as an empty non-terminal (a.b has a route), apps as a wildcard's parent
    for ent in ("b.macula.local", "apps.macula.local"):
        d = answer(q(ent), v)
        assert (d.rcode, d.answer, d.authority) == (NOERROR, (), (v.soa,))


def test_answer_apex_ns_any_and_refusals(routes: RouteTableManager) -> None:
    v = view(routes)
    assert answer(q("macula.local", QTYPE_SOA), v).answer == (v.soa,)
    ns = answer(q("macula.local", QTYPE_NS), v)
    assert ns.answer == (v.ns,) and ns.additional == v.ns_a
    assert answer(q("ns.macula.local"), v).answer == v.ns_a
    assert answer(q("macula.local"), v).rcode == NOERROR  # NODATA at the apex for A
    # RFC 8482: one RRset
    assert [rr.data for rr in answer(q("loki.macula.local", QTYPE_ANY), v).answer] == \
        [answer(q("loki.macula.local"), v).answer[0].data]
    assert answer(q("example.com"), v).rcode == REFUSED
    assert answer(q("example.com"), view(routes, forwarding=True)).forward
    assert answer(q("grafana.macula.local", qclass=3), v).rcode == REFUSED  # CHAOS
    assert answer(q("macula.local", 252), v).rcode == REFUSED  # AXFR
    # a label that holds a dot can never match a route
    d = answer(Question(labels=(b"grafana.macula", b"macula", b"local"), qtype=QTYPE_A), v)
    assert d.rcode == NXDOMAIN


# --- encoding, checked with dnspython ---------------------------------------------------


def test_replies_parse_with_dnspython(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics, ttl=9)
    a = ask(r, "grafana.macula.local")
    assert a.flags & dns.flags.AA and a.flags & dns.flags.QR and a.flags & dns.flags.RD
    assert a.rcode() == dns.rcode.NOERROR
    assert [(rr.name.to_text(), rr.ttl, [x.address for x in rr]) for rr in a.answer] == \
        [("grafana.macula.local.", 9, ["127.0.0.2"])]

    nx = ask(r, "missing.macula.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.answer == []
    soa = nx.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "macula.local."
    assert soa[0].mname.to_text() == "ns.macula.local." and soa[0].minimum == 9

    ns = ask(r, "macula.local", "NS")
    assert ns.answer[0][0].target.to_text() == "ns.macula.local."
    assert ns.additional[0][0].address == "127.0.0.153"

    nodata = ask(r, "grafana.macula.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == [] and nodata.authority[0].rdtype == 6


def test_case_is_preserved_and_edns_echoed(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics)
    for name in ("GrAfAnA.MaCuLa.LoCaL", "grafana.macula.local", "GRAFANA.MACULA.LOCAL", "gRaFaNa.mAcUlA.lOcAl"):
        for _ in range(2):  # second time from the exact cache
            a = ask(r, name, use_edns=0, payload=1400, want_dnssec=True)
            assert a.question[0].name.to_text(omit_final_dot=True) == name  # byte-exact, not just equal
            assert str(a.answer[0].name) == name + "."
            assert a.answer[0][0].address == "127.0.0.2"
            assert a.edns == 0 and a.payload == 1232 and a.ednsflags & dns.flags.DO
    plain = ask(r, "grafana.macula.local", use_edns=False)
    assert plain.edns == -1  # no OPT when the client sent none


def test_badvers_formerr_notimp_and_drops(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics)
    bad = ask(r, "grafana.macula.local", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0

    query = dns.message.make_query("grafana.macula.local", "A")
    wire = bytearray(query.to_wire())
    wire[4:6] = b"\x00\x02"  # qdcount 2
    out = r.respond(bytes(wire), tcp=False)
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR

    notify = dns.message.make_query("macula.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    out = r.respond(notify.to_wire(), tcp=False)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out)
    assert m.rcode() == dns.rcode.NOTIMP and m.opcode() == dns.opcode.NOTIFY and m.id == notify.id

    response = dns.message.make_response(query).to_wire()
    assert r.respond(response, tcp=False) is None  # QR=1: never answer a response
    assert r.respond(b"\x12\x34\x01", tcp=False) is None  # shorter than a header
    assert metrics.dns.malformed == 3


def test_notimp_and_formerr_keep_the_question_and_the_opt_record(routes: RouteTableManager,
                                                                   metrics: Metrics) -> None:
    r = responder(routes, metrics)
    notify = dns.message.make_query("macula.local", "SOA", use_edns=0, payload=1232, want_dnssec=True)
    notify.set_opcode(dns.opcode.NOTIFY)
    out = r.respond(notify.to_wire(), tcp=False)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out)
    assert m.rcode() == dns.rcode.NOTIMP and m.id == notify.id
    assert m.edns == 0 and m.ednsflags & dns.flags.DO  # RFC 6891 §7: an EDNS query gets an OPT back
    assert [str(x.name) for x in m.question] == ["macula.local."]
    # FORMERR for a second OPT record: the question parsed, so it is kept, and one OPT is sent back
    query = dns.message.make_query("Grafana.macula.local", "A", use_edns=0)
    wire = bytearray(query.to_wire())
    opt = bytes(wire[-11:])
    wire[10:12] = b"\x00\x02"
    out = r.respond(bytes(wire) + opt, tcp=False)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out)
    assert m.rcode() == dns.rcode.FORMERR and m.edns == 0
    assert [str(x.name) for x in m.question] == ["Grafana.macula.local."]  # the client's own case
    # without EDNS in the query there is none in the reply; garbage keeps no question
    plain = dns.message.make_query("macula.local", "SOA")
    plain.set_opcode(dns.opcode.NOTIFY)
    out = r.respond(plain.to_wire(), tcp=False)
    assert isinstance(out, bytes) and dns.message.from_wire(out).edns == -1
    out = r.respond(bytes.fromhex("abcd0100000100000000000" "0c00c00010001"), tcp=False)
    assert isinstance(out, bytes) and out[4:6] == b"\x00\x00" and out[3] & 0xF == dns.rcode.FORMERR


def _keyring() -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({"deploy-key.": ("hmac-sha256", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")})


def test_a_tsig_signed_query_is_notauth_badkey(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics)
    keyring = _keyring()
    q = dns.message.make_query("grafana.macula.local", "A", use_edns=0)
    q.use_tsig(keyring)
    out = r.respond(q.to_wire(), tcp=False)
    assert isinstance(out, bytes)
    with pytest.raises(dns.tsig.PeerBadKey):  # what a real TSIG client concludes
        dns.message.from_wire(out, keyring=keyring, request_mac=q.mac)
    m = dns.message.from_wire(out, keyring=False)
    assert m.rcode() == dns.rcode.NOTAUTH and m.id == q.id and m.edns == 0
    assert [str(x.name) for x in m.question] == ["grafana.macula.local."]
    assert not m.answer
    assert m.tsig is not None
    tsig = m.tsig[0]
    assert str(m.tsig.name) == "deploy-key." and str(tsig.algorithm) == "hmac-sha256."
    assert tsig.error == dns.rcode.BADKEY and tsig.mac == b"" and tsig.original_id == q.id
    assert metrics.dns.queries[("other", "NOTAUTH")] == 1 and metrics.dns.malformed == 0
    # not cached: every signed query is refused the same way, and an unsigned one is answered
    assert r.respond(q.to_wire(), tcp=False) == out
    assert ask(r, "grafana.macula.local").answer[0][0].address == "127.0.0.2"

    # a signed UPDATE (nsupdate -y) gets the same answer rather than NOTIMP
    update = dns.update.UpdateMessage("macula.local", keyring=keyring)
    update.add("x", 60, "A", "127.0.0.9")
    out = r.respond(update.to_wire(), tcp=False)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out, keyring=False)
    assert m.rcode() == dns.rcode.NOTAUTH and m.tsig is not None and m.tsig[0].error == dns.rcode.BADKEY

    # a TSIG record that is not the last one is malformed (RFC 8945 §5.1)
    wire = bytearray(q.to_wire())
    wire[10:12] = (int.from_bytes(wire[10:12], "big") + 1).to_bytes(2, "big")
    wire += b"\x00" + bytes.fromhex("0001000100000000" "0004") + bytes(4)  # root A 0.0.0.0 after the TSIG
    with pytest.raises(WireError, match="not the last"):
        parse_query(bytes(wire))
    out = r.respond(bytes(wire), tcp=False)
    assert isinstance(out, bytes) and out[3] & 0xF == dns.rcode.FORMERR


_HDR1 = bytes.fromhex("abcd01000001000000000001")  # one question, one additional record
_QUESTION = b"\x00\x00\x01\x00\x01"  # root, A, IN
_OPT = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # root, OPT, 4096, no options


@pytest.mark.parametrize("packet, reason", [
    # compression pointer in the question (to itself: a loop)
    (bytes.fromhex("abcd0100000100000000000" "0c00c00010001"), "compressed"),
    # label runs past the end
    (bytes.fromhex("abcd010000010000000000003f6162"), "runs past"),
    # name longer than 255 bytes
    (bytes.fromhex("abcd01000001000000000000") + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "255"),
    # additional record whose data runs past the end
    (_HDR1 + _QUESTION + _OPT[:-1] + b"\x10", "past the end"),
    # two OPT records
    (bytes.fromhex("abcd01000001000000000002") + _QUESTION + _OPT * 2, "more than one OPT"),
])
def test_parse_rejects_hostile_packets(packet: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason) as exc:
        parse_query(packet)
    assert exc.value.rcode == 1  # FORMERR


def test_forwarding_decision_and_refused(routes: RouteTableManager, metrics: Metrics) -> None:
    closed = responder(routes, metrics)
    assert ask(closed, "example.com").rcode() == dns.rcode.REFUSED
    open_ = responder(routes, metrics, forwarding=True)
    out = open_.respond(dns.message.make_query("example.com", "A").to_wire(), tcp=False)
    assert isinstance(out, Forward) and out.limit == 512
    out = open_.respond(dns.message.make_query("example.com", "A", use_edns=0, payload=4000).to_wire(), tcp=False)
    assert isinstance(out, Forward) and out.limit == 4000
    out = open_.respond(dns.message.make_query("example.com", "A", use_edns=0, payload=100).to_wire(), tcp=False)
    assert isinstance(out, Forward) and out.limit == 512  # never below 512


# --- the caches -------------------------------------------------------------------------


def test_table_swap_is_visible_to_the_next_query(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics)
    wire = dns.message.make_query("grafana.macula.local", "A").to_wire()
    first = r.respond(wire, tcp=False)
    assert r.lookup(wire, tcp=False) == first  # cached
    routes.update("config", [spec("grafana", "127.0.0.42")])
    assert r.lookup(wire, tcp=False) is None  # dropped at the swap
    again = r.respond(wire, tcp=False)
    assert isinstance(again, bytes)
    assert dns.message.from_wire(again).answer[0][0].address == "127.0.0.42"
    nx = dns.message.from_wire(r.respond(dns.message.make_query("loki.macula.local", "A").to_wire(),  # type: ignore
                                         tcp=False))
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0][0].serial == routes.current.version


def test_hits_are_counted_at_scrape_time(routes: RouteTableManager, metrics: Metrics) -> None:
    r = responder(routes, metrics)
    metrics.dns.flushers.append(r.flush)
    wire = dns.message.make_query("grafana.macula.local", "A").to_wire()
    r.respond(wire, tcp=False)
    for _ in range(5):
        assert r.lookup(wire, tcp=False) is not None
    from prometheus_client import generate_latest
    text = generate_latest(metrics.registry).decode()
    assert 'maculad_dns_queries_total{qtype="A",rcode="NOERROR"} 6.0' in text
    assert "maculad_dns_fastpath_hits_total 5.0" in text


def test_cache_never_answers_a_different_question(routes: RouteTableManager, metrics: Metrics) -> None:
    """Queries that differ in anything but ID and case get their own answers, cached or not."""
    r = responder(routes, metrics)
    fresh = responder(routes, Metrics())
    variants = [
        dns.message.make_query("grafana.macula.local", "A"),
        dns.message.make_query("grafana.macula.local", "AAAA"),
        dns.message.make_query("loki.macula.local", "A"),
        dns.message.make_query("grafana.macula.local", "A", use_edns=0),
        dns.message.make_query("grafana.macula.local", "A", use_edns=0, want_dnssec=True),
        dns.message.make_query("grafana.macula.local", "A", use_edns=0, payload=600),
        dns.message.make_query("grafana.macula.local", "A", use_edns=1),
        dns.message.make_query("grafana.macula.local", "ANY"),
        dns.message.make_query("GRAFANA.macula.local", "A"),
        dns.message.make_query("nope.macula.local", "A"),
    ]
    variants[3].flags &= ~dns.flags.RD
    for _ in range(3):
        for m in variants:
            m.id = (m.id + 1) % 65536
            wire = m.to_wire()
            assert r.respond(wire, tcp=False) == fresh.respond(wire, tcp=False) == \
                responder(routes, Metrics()).respond(wire, tcp=False)
            cached = r.lookup(wire, tcp=False)
            assert cached == responder(routes, Metrics()).respond(wire, tcp=False)


@pytest.mark.parametrize("domain", ["mácula.local", "a..local", "x" * 64 + ".local"])
def test_domain_that_cannot_be_on_the_wire_is_a_clear_error(domain: str) -> None:
    with pytest.raises(ValueError, match="not a valid DNS name"):
        ZoneSettings.from_listen(domain=domain, ttl=5, listen_hosts=(), forwarding=False)
