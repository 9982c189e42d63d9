"""Packet in → reply out, with pre-encoded answers in front. No sockets.

`Responder.respond(packet, tcp=...)` is the whole packet path: parse
(wire.py), decide (answer.py), encode, cache. It returns the reply bytes,
`None` (drop), or a `Forward` for the transport to resolve upstream.

Two caches per transport (UDP replies are fitted to the client's UDP size,
TCP ones are not, so they never share entries):

- `exact`: the query minus its 2-byte ID → the reply minus its ID. The key is
  the *whole* rest of the query (flags, counts, question with its letter case,
  EDNS record and options, trailing bytes), and the reply is a deterministic
  function of exactly that plus the table and settings, so an entry can never
  answer a differently-shaped query. A hit is one dict lookup and one
  concatenation (`id + reply`); the transport does it inline.
- `normalized`: the same key with the question name lower-cased → a reply
  template. A query differing only in letter case (0x20 randomisation) gets
  the template with its own ID and question spliced in — the answer records
  point at the question by compression pointer, so they follow its case — and
  then lands in `exact` too.

Only answers decided from the zone are cached (not forwards, not PowerDNS lookups, not FORMERR for
garbage). Both caches are bounded (oldest entry evicted) and cleared when the
route table or the settings change: `invalidate()` runs as a route-table
listener, synchronously with the swap, and the slow path and `lookup` also
compare `routes.current.version`, so a swap is visible to the next query.

Metrics stay off the hot path: an exact entry counts its own hits; `flush()`
folds them into `DNSCounters` (registered as its flusher, so before every
scrape) and whenever entries are evicted or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from maculad.config import DNSConfig
from maculad.dns.answer import AnswerDecision, Question, ZoneSettings, ZoneView, answer
from maculad.dns.codes import BADVERS, MAX_TCP_SIZE, NOTAUTH, NOTIMP, qtype_label, rcode_label
from maculad.dns.wire import ParsedQuery, WireError, encode, error_reply, parse_query, udp_limit
from maculad.observability.metrics import DNSCounters
from maculad.routes.table import RouteTable

CounterKey = tuple[str, str]
#: normalized-cache value: (reply template without its ID, metrics key)
Template = tuple[bytes, CounterKey]


class Entry:
    """An exact-cache value: the reply without its ID, and the hits not yet in the counters."""

    __slots__ = ("hits", "key", "reply")

    def __init__(self, reply: bytes, key: CounterKey) -> None:
        self.reply = reply
        self.key = key
        self.hits = 0


class TableSource(Protocol):
    @property
    def current(self) -> RouteTable: ...


@dataclass(frozen=True, slots=True)
class Forward:
    """A question for the forwarders; `limit` is the most the client takes back."""

    query: ParsedQuery
    packet: bytes
    limit: int
    tcp: bool
    peer: bool = False   # an in-zone name for PowerDNS, not a name for the forwarders


class AnswerCache:
    """The two caches of one transport; see the module docstring."""

    __slots__ = ("counters", "exact", "max_entries", "normalized")

    def __init__(self, *, max_entries: int, counters: DNSCounters) -> None:
        self.exact: dict[bytes, Entry] = {}
        self.normalized: dict[bytes, Template] = {}
        self.max_entries = max_entries
        self.counters = counters

    def flush(self) -> None:
        """Fold the entries' hit counts into the counters."""
        queries = self.counters.queries
        total = 0
        for e in self.exact.values():
            if e.hits:
                queries[e.key] += e.hits
                total += e.hits
                e.hits = 0
        self.counters.fastpath_hits += total

    def clear(self) -> None:
        self.flush()
        self.exact.clear()
        self.normalized.clear()

    def put_exact(self, key: bytes, entry: Entry) -> None:
        exact = self.exact
        if len(exact) >= self.max_entries:
            old = exact.pop(next(iter(exact)))  # dicts keep insertion order: the oldest goes
            if old.hits:
                self.counters.queries[old.key] += old.hits
                self.counters.fastpath_hits += old.hits
        exact[key] = entry

    def put_normalized(self, key: bytes, template: Template) -> None:
        normalized = self.normalized
        if len(normalized) >= self.max_entries:
            del normalized[next(iter(normalized))]
        normalized[key] = template

    def __len__(self) -> int:
        return len(self.exact) + len(self.normalized)


def settings_from(config: DNSConfig, domain: str, *, peer_zone: str | None = None,
                  apex_a: tuple[str, ...] = ()) -> ZoneSettings:
    return ZoneSettings.from_listen(
        domain=domain,
        ttl=config.ttl,
        listen_hosts=tuple(a.host for a in config.listen),
        forwarding=bool(config.forwarders),
        peer_zone=peer_zone,
        apex_a=apex_a,
    )


class Responder:
    def __init__(
        self,
        *,
        settings: ZoneSettings,
        routes: TableSource,
        counters: DNSCounters,
        cache_entries: int = 8192,
    ) -> None:
        self.routes = routes
        self.counters = counters
        self.udp = AnswerCache(max_entries=cache_entries, counters=counters)
        self.tcp = AnswerCache(max_entries=cache_entries, counters=counters)
        self._settings = settings
        table = routes.current
        self.version = table.version
        self.view = ZoneView.build(table, settings)

    @property
    def settings(self) -> ZoneSettings:
        return self._settings

    def configure(self, settings: ZoneSettings) -> None:
        """New TTL / forwarding / NS addresses: rebuild the view, drop every cached answer."""
        self._settings = settings
        self.version = -1
        self.refresh()

    def invalidate(self) -> None:
        """Drop every cached answer now; the next query re-reads the table. A route-table listener."""
        self.udp.clear()
        self.tcp.clear()
        self.version = -1

    def flush(self) -> None:
        self.udp.flush()
        self.tcp.flush()

    def refresh(self) -> None:
        """Take the current table (call when `routes.current.version != self.version`)."""
        table = self.routes.current
        self.view = ZoneView.build(table, self._settings)
        self.udp.clear()
        self.tcp.clear()
        self.version = table.version

    def lookup(self, packet: bytes, *, tcp: bool) -> bytes | None:
        """The fast path as one call (transports inline it): a cached reply or None."""
        if self.routes.current.version != self.version:
            self.refresh()
        hit = (self.tcp if tcp else self.udp).exact.get(packet[2:])
        if hit is None:
            return None
        hit.hits += 1
        return packet[:2] + hit.reply

    def respond(self, packet: bytes, *, tcp: bool) -> bytes | Forward | None:
        """The slow path: reply bytes, None to drop, or a Forward. Never raises on bad input."""
        if self.routes.current.version != self.version:
            self.refresh()
        cache = self.tcp if tcp else self.udp
        counters = self.counters
        try:
            q = parse_query(packet)
        except WireError as exc:
            if exc.rcode != NOTIMP and exc.rcode != NOTAUTH:  # well-formed, just not served (UPDATE, TSIG)
                counters.malformed += 1
            if exc.rcode is None:
                return None
            reply = error_reply(packet, exc.rcode)
            if reply is not None:
                counters.queries[("other", rcode_label(exc.rcode))] += 1
            return reply

        qend = q.question_end
        nkey = packet[2:12] + q.question[:-4].lower() + packet[qend - 4 :]
        tpl = cache.normalized.get(nkey)
        if tpl is not None:
            reply = packet[:2] + tpl[0][:10] + packet[12:qend] + tpl[0][qend - 2 :]
            cache.put_exact(packet[2:], Entry(reply[2:], tpl[1]))
            counters.queries[tpl[1]] += 1
            counters.fastpath_hits += 1
            return reply

        limit = MAX_TCP_SIZE if tcp else udp_limit(q)
        if q.edns is not None and q.edns.version > 0:
            decision = AnswerDecision(rcode=BADVERS, aa=False)
        else:
            decision = answer(Question(labels=q.labels, qtype=q.qtype, qclass=q.qclass), self.view)
            if decision.forward:
                return Forward(query=q, packet=packet, limit=limit, tcp=tcp, peer=decision.peer)
        reply, truncated = encode(q, decision, limit=limit, ra=self._settings.forwarding)
        if truncated:
            counters.truncated += 1
        key: CounterKey = (qtype_label(q.qtype), rcode_label(decision.rcode))
        counters.queries[key] += 1
        cache.put_normalized(nkey, (reply[2:], key))
        cache.put_exact(packet[2:], Entry(reply[2:], key))
        return reply
