"""PowerDNS's DNS replies → maculad's answer for names it does not own (pure, untrusted input)."""

from __future__ import annotations

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maculad.dns.answer import AAAA, CNAME, RR, SOA, A, Question, ZoneSettings, ZoneView, answer
from maculad.dns.codes import NOERROR, NXDOMAIN, QTYPE_A, SERVFAIL
from maculad.dns.peer import decide
from maculad.routes.table import RouteTable

SOA_RR = RR("macula.local", 5, SOA("ns.macula.local", "hostmaster.macula.local", 1, 1, 1, 1, 5))


def reply(*rrs: str, rcode: int = 0) -> bytes:
    q = dnslib.DNSRecord.question("peer9.macula.local", "A")
    r = q.reply()
    r.header.rcode = rcode
    for text in rrs:
        for rr in dnslib.RR.fromZone(text):
            r.add_answer(rr)
    return bytes(r.pack())


def test_a_aaaa_cname_kept_ttl_capped() -> None:
    d = decide(reply("peer9.macula.local. 300 IN CNAME web.macula.local.", "web.macula.local. 2 IN A 10.1.2.3",
                     "web.macula.local. 300 IN AAAA fd00::9"), zone="macula.local", ttl_cap=5, soa=SOA_RR)
    assert d.rcode == NOERROR and d.aa
    assert d.answer == (RR("peer9.macula.local", 5, CNAME("web.macula.local")),
                        RR("web.macula.local", 2, A("10.1.2.3")), RR("web.macula.local", 5, AAAA("fd00::9")))


def test_other_types_and_out_of_zone_owners_dropped() -> None:
    d = decide(reply('peer9.macula.local. 60 IN TXT "x"', "peer9.example.org. 60 IN A 10.0.0.1",
                     "peer9.macula.local. 60 IN MX 10 mail.macula.local."), zone="macula.local", ttl_cap=5, soa=SOA_RR)
    assert d.rcode == NOERROR and d.answer == () and d.authority == (SOA_RR,)


@pytest.mark.parametrize(("rcode", "expected"), [(3, NXDOMAIN), (2, SERVFAIL), (5, SERVFAIL), (4, SERVFAIL)])
def test_rcodes(rcode: int, expected: int) -> None:
    d = decide(reply(rcode=rcode), zone="macula.local", ttl_cap=5, soa=SOA_RR)
    assert d.rcode == expected
    assert d.authority == ((SOA_RR,) if expected == NXDOMAIN else ())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    d = decide(data, zone="macula.local", ttl_cap=5, soa=SOA_RR)
    assert d.rcode in (NOERROR, NXDOMAIN, SERVFAIL)


def test_answer_sends_unknown_in_zone_names_to_the_peer_only_when_configured() -> None:
    table = RouteTable.empty("macula.local")
    q = Question(labels=(b"peer9", b"macula", b"local"), qtype=QTYPE_A)
    off = ZoneView.build(table, ZoneSettings(domain="macula.local", ttl=5))
    assert answer(q, off).rcode == NXDOMAIN and not answer(q, off).forward
    on = ZoneView.build(table, ZoneSettings(domain="macula.local", ttl=5, peer_zone="macula.local"))
    d = answer(q, on)
    assert d.forward and d.peer
    sub = ZoneView.build(table, ZoneSettings(domain="macula.local", ttl=5, peer_zone="team.macula.local"))
    assert not answer(q, sub).forward
    assert answer(Question(labels=(b"x", b"team", b"macula", b"local"), qtype=QTYPE_A), sub).peer
