"""The DNS decision logic: one question + the zone → a `AnswerDecision`. Pure.

maculad is authoritative for its domain. `ZoneView.build(table, settings)`
derives once per route table what every answer needs (SOA, NS and its
addresses, the empty non-terminals between route names and the apex); then
`answer(question, view)` decides, without I/O:

- A for a route's name (exact or covered by a `*.x` wildcard), AA set;
- AAAA or any other type on an existing name: NODATA (NOERROR, SOA in authority);
- a name in the zone that does not exist: NXDOMAIN with the SOA;
- SOA and NS at the apex, and A when the status page serves (`apex_a`); the NS
  target `ns.<domain>` has the listen addresses as A/AAAA records (a route of that name takes precedence);
- ANY: one RRset only (RFC 8482) — the A record, or the SOA at the apex;
- a name in the zone that no route has, with PowerDNS configured (`peer_zone`):
  a `peer` decision — the transport asks PowerDNS's DNS port (dns/peer.py);
- names outside the zone: forwarded when forwarders exist, else REFUSED
  (maculad is never an open resolver); zone transfers and other classes: REFUSED;
- on the container horizon (`answer_address` = G) every route's A is G, the
  address that relays every name by Host header / SNI.

Encoding to bytes lives in wire.py; caching of encoded replies in fastpath.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from maculad.core.names import check_domain
from maculad.dns.codes import (
    CLASS_ANY,
    CLASS_IN,
    NOERROR,
    NXDOMAIN,
    QTYPE_A,
    QTYPE_AAAA,
    QTYPE_ANY,
    QTYPE_AXFR,
    QTYPE_IXFR,
    QTYPE_NS,
    QTYPE_SOA,
    REFUSED,
)
from maculad.routes.table import RouteTable

# --- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class A:
    ip: str


@dataclass(frozen=True, slots=True)
class AAAA:
    ip: str


@dataclass(frozen=True, slots=True)
class NS:
    target: str


@dataclass(frozen=True, slots=True)
class CNAME:
    target: str


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


RData = A | AAAA | NS | SOA | CNAME


@dataclass(frozen=True, slots=True)
class RR:
    """A record; `name` is lower-case without the trailing dot ("" is the root)."""

    name: str
    ttl: int
    data: RData


@dataclass(frozen=True, slots=True)
class AnswerDecision:
    rcode: int
    aa: bool
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    forward: bool = False
    peer: bool = False   # with forward: ask PowerDNS's DNS port (an in-zone name maculad does not own)


@dataclass(frozen=True, slots=True)
class Question:
    """The question as `answer` sees it: labels lower-cased, as raw bytes."""

    labels: tuple[bytes, ...]
    qtype: int
    qclass: int = CLASS_IN


# --- the zone ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    """What the zone needs from the configuration."""

    domain: str
    ttl: int
    ns_addresses: tuple[str, ...] = ("127.0.0.1",)
    forwarding: bool = False
    #: names below this zone that maculad does not know are looked up in PowerDNS (None: NXDOMAIN)
    peer_zone: str | None = None
    #: The container horizon: every route answers this one address (G) instead of its own IP.
    answer_address: str | None = None
    apex_a: tuple[str, ...] = ()  # A records of the apex itself: where the status page answers

    @classmethod
    def from_listen(cls, *, domain: str, ttl: int, listen_hosts: tuple[str, ...], forwarding: bool,
                    peer_zone: str | None = None, apex_a: tuple[str, ...] = ()) -> ZoneSettings:
        """The NS addresses are the listen addresses; a wildcard bind answers as loopback.

        Raises ValueError for a domain that cannot be a DNS name on the wire."""
        d = check_domain(domain)
        addrs: list[str] = []
        for host in listen_hosts:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.is_unspecified:
                ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
            if str(ip) not in addrs:
                addrs.append(str(ip))
        apex = tuple(str(ip) for ip in map(ipaddress.ip_address, apex_a) if ip.version == 4)
        return cls(domain=d, ttl=ttl, ns_addresses=tuple(addrs) or ("127.0.0.1",),
                   forwarding=forwarding, peer_zone=peer_zone.lower().rstrip(".") if peer_zone else None,
                   apex_a=apex)


#: SOA timers; nothing transfers this zone, they are there to be well-formed.
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400


@dataclass(frozen=True, slots=True)
class ZoneView:
    """Everything `answer` needs, derived once per route table."""

    table: RouteTable
    settings: ZoneSettings
    domain_labels: tuple[bytes, ...]
    ns_name: str
    soa: RR
    ns: RR
    ns_a: tuple[RR, ...]
    ns_aaaa: tuple[RR, ...]
    apex_a: tuple[RR, ...]
    empty_non_terminals: frozenset[str]
    peer_suffix: str | None = None

    @classmethod
    def build(cls, table: RouteTable, settings: ZoneSettings) -> ZoneView:
        d = settings.domain
        ttl = settings.ttl
        ns_name = f"ns.{d}"
        soa = RR(d, ttl, SOA(mname=ns_name, rname=f"hostmaster.{d}", serial=table.version & 0xFFFFFFFF,
                             refresh=SOA_REFRESH, retry=SOA_RETRY, expire=SOA_EXPIRE, minimum=ttl))
        route = table.lookup(ns_name)
        if route is not None:
            ns_a: tuple[RR, ...] = (RR(ns_name, ttl, A(settings.answer_address or route.ip)),)
            ns_aaaa: tuple[RR, ...] = ()
        else:
            ips = [ipaddress.ip_address(a) for a in settings.ns_addresses]
            ns_a = tuple(RR(ns_name, ttl, A(str(ip))) for ip in ips if ip.version == 4)
            ns_aaaa = tuple(RR(ns_name, ttl, AAAA(str(ip))) for ip in ips if ip.version == 6)
        ents: set[str] = set()
        suffix = "." + d
        for r in table.routes:
            name = r.name[2:] if r.is_wildcard else r.name
            if r.is_wildcard:
                ents.add(name)  # `*.x` implies x exists
            while True:
                dot = name.find(".")
                if dot == -1:
                    break
                name = name[dot + 1 :]
                if not name.endswith(suffix):
                    break
                ents.add(name)
        return cls(
            table=table,
            settings=settings,
            domain_labels=tuple(lb.encode("ascii") for lb in d.split(".")),
            ns_name=ns_name,
            soa=soa,
            ns=RR(d, ttl, NS(ns_name)),
            ns_a=ns_a,
            ns_aaaa=ns_aaaa,
            apex_a=tuple(RR(d, ttl, A(ip)) for ip in settings.apex_a),
            empty_non_terminals=frozenset(ents),
            peer_suffix="." + settings.peer_zone if settings.peer_zone else None,
        )


# --- the decision ------------------------------------------------------------------

_REFUSED = AnswerDecision(rcode=REFUSED, aa=False)
_FORWARD = AnswerDecision(rcode=NOERROR, aa=False, forward=True)
_PEER = AnswerDecision(rcode=NOERROR, aa=True, forward=True, peer=True)


def in_zone(labels: tuple[bytes, ...], view: ZoneView) -> bool:
    n = len(view.domain_labels)
    return len(labels) >= n and labels[len(labels) - n :] == view.domain_labels


def answer(q: Question, view: ZoneView) -> AnswerDecision:
    """Decide the reply to one question. Never raises for any input."""
    if q.qclass not in (CLASS_IN, CLASS_ANY):
        return _REFUSED
    labels = q.labels
    if not in_zone(labels, view):
        return _FORWARD if view.settings.forwarding and q.qclass == CLASS_IN else _REFUSED
    if q.qtype in (QTYPE_AXFR, QTYPE_IXFR):
        return _REFUSED
    negative = (view.soa,)
    # A label holding a dot (or anything outside ASCII) cannot be any route's name.
    if any(b"." in lb or not lb.isascii() for lb in labels):
        return AnswerDecision(rcode=NXDOMAIN, aa=True, authority=negative)
    name = b".".join(labels).decode("ascii")
    qtype = q.qtype

    if len(labels) == len(view.domain_labels):  # the apex
        if qtype in (QTYPE_SOA, QTYPE_ANY):
            return AnswerDecision(rcode=NOERROR, aa=True, answer=(view.soa,))
        if qtype == QTYPE_NS:
            return AnswerDecision(rcode=NOERROR, aa=True, answer=(view.ns,), additional=view.ns_a + view.ns_aaaa)
        if qtype == QTYPE_A and view.apex_a:
            return AnswerDecision(rcode=NOERROR, aa=True, answer=view.apex_a)
        return AnswerDecision(rcode=NOERROR, aa=True, authority=negative)

    route = view.table.lookup(name)
    if route is not None:
        if qtype in (QTYPE_A, QTYPE_ANY):
            ip = view.settings.answer_address or route.ip
            return AnswerDecision(rcode=NOERROR, aa=True, answer=(RR(name, view.settings.ttl, A(ip)),))
        return AnswerDecision(rcode=NOERROR, aa=True, authority=negative)

    if name == view.ns_name:
        if qtype == QTYPE_A and view.ns_a:
            return AnswerDecision(rcode=NOERROR, aa=True, answer=view.ns_a)
        if qtype == QTYPE_AAAA and view.ns_aaaa:
            return AnswerDecision(rcode=NOERROR, aa=True, answer=view.ns_aaaa)
        if qtype == QTYPE_ANY:
            return AnswerDecision(rcode=NOERROR, aa=True, answer=view.ns_a or view.ns_aaaa)
        return AnswerDecision(rcode=NOERROR, aa=True, authority=negative)

    if name in view.empty_non_terminals:
        return AnswerDecision(rcode=NOERROR, aa=True, authority=negative)
    if view.peer_suffix is not None and ("." + name).endswith(view.peer_suffix):
        return _PEER  # published by someone else, perhaps: PowerDNS knows
    return AnswerDecision(rcode=NXDOMAIN, aa=True, authority=negative)
