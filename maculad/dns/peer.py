"""In-zone names maculad does not own, answered from PowerDNS's DNS port.

A name under the PowerDNS zone that no route claims may have been published
by another cluster's ExternalDNS or another maculad. `PeerLookup.reply(job)`
sends the client's question to PowerDNS (through a `Forwarder`: fresh ID and
source port, reply checked against the question, TCP after TC, bounded in
flight, one deadline) and rebuilds the answer itself from what PowerDNS said —
PowerDNS's reply is untrusted input:

- only A, AAAA and CNAME records of class IN whose owner names lie inside the
  zone are kept, their TTL capped at `dns.ttl`; everything else is dropped;
- NOERROR → those records (or NODATA with maculad's SOA), NXDOMAIN → NXDOMAIN
  with maculad's SOA, both authoritative, encoded by maculad's own encoder;
- PowerDNS unreachable, a reply that does not parse, or any other rcode →
  SERVFAIL, so no client caches a negative answer for a name that may exist.

maculad's own names never come here: the table answers them first, fast path
and all, whether PowerDNS is up or not.
"""

from __future__ import annotations

from collections.abc import Callable

import dnslib

from maculad.dns.answer import AAAA, CNAME, RR, A, AnswerDecision
from maculad.dns.codes import NOERROR, NXDOMAIN, SERVFAIL
from maculad.dns.forward import Forwarder
from maculad.dns.wire import ParsedQuery, encode, simple_reply
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend

_KEEP = {1: "A", 28: "AAAA", 5: "CNAME"}


def _name(label: dnslib.DNSLabel) -> str | None:
    """A dnslib name as answer.py writes names (lower-case, no trailing dot), or None if it cannot be one."""
    parts = label.label
    if any(b"." in p or not p or not p.isascii() for p in parts):
        return None
    return b".".join(parts).decode("ascii").lower()


def decide(reply: bytes, *, zone: str, ttl_cap: int, soa: RR) -> AnswerDecision:
    """PowerDNS's reply → maculad's decision. Pure; never raises."""
    try:
        msg = dnslib.DNSRecord.parse(reply)
    except Exception:  # dnslib raises several types for malformed input
        return AnswerDecision(rcode=SERVFAIL, aa=False)
    rcode = msg.header.rcode
    if rcode == NXDOMAIN:
        return AnswerDecision(rcode=NXDOMAIN, aa=True, authority=(soa,))
    if rcode != NOERROR:
        return AnswerDecision(rcode=SERVFAIL, aa=False)
    suffix = "." + zone
    records: list[RR] = []
    for rr in msg.rr:
        if rr.rclass != 1 or rr.rtype not in _KEEP:
            continue
        name = _name(rr.rname)
        if name is None or not ("." + name).endswith(suffix):
            continue
        ttl = max(0, min(int(rr.ttl), ttl_cap))
        try:
            if rr.rtype == 1:
                records.append(RR(name, ttl, A(str(rr.rdata))))
            elif rr.rtype == 28:
                records.append(RR(name, ttl, AAAA(str(rr.rdata))))
            else:
                target = _name(rr.rdata.label)
                if target is not None:
                    records.append(RR(name, ttl, CNAME(target)))
        except (AttributeError, ValueError):
            continue
    if not records:
        return AnswerDecision(rcode=NOERROR, aa=True, authority=(soa,))
    return AnswerDecision(rcode=NOERROR, aa=True, answer=tuple(records))


class PeerLookup:
    def __init__(self, *, upstream: Backend, zone: str, timeout: float, ttl_cap: int, soa: Callable[[], RR],
                 metrics: Metrics, ra: Callable[[], bool]) -> None:
        self.upstream = upstream
        self.zone = zone.lower().rstrip(".")
        self.ttl_cap = ttl_cap
        self._soa = soa
        self._ra = ra
        self._bad = metrics.powerdns_lookups.labels(result="bad_reply")
        self.forwarder = Forwarder(upstreams=(upstream,), timeout=timeout, metrics=metrics,
                                   counter=metrics.powerdns_lookups)

    async def reply(self, q: ParsedQuery, packet: bytes, *, limit: int) -> bytes:
        upstream = await self.forwarder.resolve(packet)
        if upstream is None:
            return simple_reply(q, SERVFAIL, ra=self._ra())
        d = decide(upstream, zone=self.zone, ttl_cap=self.ttl_cap, soa=self._soa())
        if d.rcode == SERVFAIL:
            self._bad.inc()
            return simple_reply(q, SERVFAIL, ra=self._ra())
        out, _ = encode(q, d, limit=limit, ra=self._ra())
        return out
