"""The immutable route table and the pure function that builds it.

`build_table` merges the latest snapshot of every provider into one
`RouteTable`: names are claimed in source priority (config > docker >
kubernetes, then by origin so the result is deterministic); a routed name
keeps the IP it last had (the persisted allocations, pins included) so it
keeps its IP across restarts; a pin is honoured exactly or not at all — a pin
onto an IP another routed name holds loses (the holder keeps it, the pinned
route is not served), between two new pins the first wins; everything else
gets a free loopback IP from the pool. Losers become `Conflict`s, never silent
drops, and every name whose IP differs from the one it last had is listed in
`changes`, so nothing moves without a log line and an event.

Readers (DNS, relay, status) take `manager.current` once per query or
connection; a table is never mutated after it is built.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from maculad.core.net import pin_problem
from maculad.routes.model import SOURCE_PRIORITY, Conflict, IPChange, Route, RouteSpec, Source


@dataclass(frozen=True, slots=True)
class RouteTable:
    """One snapshot: routes by exact name, wildcard suffix and IP."""

    domain: str
    version: int
    routes: tuple[Route, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    #: Names whose IP this build changed from the one they last had (see `IPChange`).
    changes: tuple[IPChange, ...] = ()
    _exact: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    _wild: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    _by_ip: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @classmethod
    def empty(cls, domain: str) -> RouteTable:
        return cls(domain=domain, version=0)

    def lookup(self, name: str) -> Route | None:
        """The route answering `name` (lower-case, no trailing dot): exact first,
        then the most specific `*.suffix` wildcard strictly above it."""
        route = self._exact.get(name)
        if route is not None:
            return route
        if not self._wild:
            return None
        dot = name.find(".")
        while dot != -1:
            suffix = name[dot + 1 :]
            route = self._wild.get(suffix)
            if route is not None:
                return route
            dot = name.find(".", dot + 1)
        return None

    def by_ip(self, ip: str) -> Route | None:
        return self._by_ip.get(ip)

    def by_source(self) -> dict[Source, int]:
        counts: dict[Source, int] = {"config": 0, "docker": 0, "kubernetes": 0}
        for r in self.routes:
            counts[r.source] += 1
        return counts


def _sort_key(spec: RouteSpec) -> tuple[int, str, str]:
    return (SOURCE_PRIORITY[spec.source], spec.origin, spec.name)


def _pool_hosts(pool: ipaddress.IPv4Network) -> Iterator[str]:
    if pool.num_addresses <= 2:
        yield from (str(a) for a in pool)
    else:
        yield from (str(a) for a in pool.hosts())


def build_table(
    *,
    domain: str,
    version: int,
    specs: Mapping[Source, Sequence[RouteSpec]],
    allocations: Mapping[str, str],
    pool: ipaddress.IPv4Network,
    allow_non_loopback: bool = False,
) -> tuple[RouteTable, dict[str, str]]:
    """Merge provider snapshots into a table; return it and the new allocations.

    `allocations` maps names to the IPs they last had (from the pool or pinned);
    the returned mapping keeps every previous entry (a name that comes back gets
    its old IP) and never gives one IP to two names: an entry whose IP went to
    someone else (a pin, or a full pool) is dropped, and reported as an `IPChange`.
    """
    ordered = sorted((s for seq in specs.values() for s in seq), key=_sort_key)
    conflicts: list[Conflict] = []
    changes: list[IPChange] = []
    lo, hi = int(pool.network_address), int(pool.broadcast_address)

    # 1. names: first claim (by priority) wins.
    winners: dict[str, RouteSpec] = {}
    for spec in ordered:
        held = winners.get(spec.name)
        if held is None:
            winners[spec.name] = spec
            continue
        conflicts.append(
            Conflict(
                kind="name",
                name=spec.name,
                loser=spec.origin,
                winner=held.origin,
                reason=f"{spec.name} is already routed by {held.origin}",
                same_backends=held.ports == spec.ports,
            )
        )
    present = sorted(winners.values(), key=_sort_key)

    # 2. holders: a routed name keeps the IP it last had, if it may still have it.
    pin_problems: dict[str, str] = {}
    for spec in present:
        if spec.ip is not None:
            problem = pin_problem(spec.ip, allow_non_loopback=allow_non_loopback)
            if problem is not None:
                pin_problems[spec.name] = f"pinned IP {problem}"
    holder: dict[str, RouteSpec] = {}
    for spec in present:
        prev = allocations.get(spec.name)
        if prev is None or prev in holder or spec.name in pin_problems:
            continue
        if spec.ip == prev or (spec.ip is None and _in_pool(prev, lo, hi)):
            holder[prev] = spec

    new_alloc = dict(allocations)
    names_at: dict[str, set[str]] = {}  # IP → names whose entry has it (one, unless the file was edited)
    for n, a in allocations.items():
        names_at.setdefault(a, set()).add(n)
    ip_of: dict[str, str] = {}
    taken: dict[str, RouteSpec] = {}
    released: dict[str, IPChange] = {}

    def assign(spec: RouteSpec, ip: str, why: str, taking: str) -> None:
        for other in sorted(names_at.pop(ip, set()) - {spec.name}):
            del new_alloc[other]  # not served at `ip` (that IP is free): its reservation goes
            released[other] = IPChange(other, ip, None, f"its reserved IP went to {spec.name} ({taking})")
        prev = allocations.get(spec.name)
        if prev is not None and prev != ip:
            changes.append(IPChange(spec.name, prev, ip, why))
            names_at.get(prev, set()).discard(spec.name)
        names_at[ip] = {spec.name}
        new_alloc[spec.name] = ip
        ip_of[spec.name] = ip
        taken[ip] = spec

    # 3. pinned IPs: honoured exactly, or the route is not served. An IP another
    #    routed name holds stays with it; between two new pins the first wins.
    unpinned: list[RouteSpec] = []
    for spec in present:
        if spec.ip is None:
            unpinned.append(spec)
            continue
        problem = pin_problems.get(spec.name)
        winner: RouteSpec | None = None
        if problem is None:
            owner = holder.get(spec.ip)
            if owner is not None and owner is not spec:
                winner = owner
                problem = f"pinned IP {spec.ip} is held by {owner.name} ({owner.origin})"
            elif spec.ip in taken:
                winner = taken[spec.ip]
                problem = f"pinned IP {spec.ip} is already used by {winner.origin}"
        if problem is not None:
            conflicts.append(
                Conflict(
                    kind="ip",
                    name=spec.name,
                    loser=spec.origin,
                    winner=winner.origin if winner is not None else "",
                    reason=problem + "; not served until the pin changes",
                )
            )
            continue
        assign(spec, spec.ip, f"pinned to {spec.ip}", "pinned there")

    # 4. the pool: keep previous IPs, then hand out free ones in order
    #    (reservations of names not routed now are reclaimed only when nothing else is free).
    needs: list[RouteSpec] = []
    for spec in unpinned:
        prev = allocations.get(spec.name)
        if prev is not None and prev not in taken and _in_pool(prev, lo, hi):
            ip_of[spec.name] = prev
            taken[prev] = spec
        else:
            needs.append(spec)
    if needs:
        reserved = {ip for n, ip in new_alloc.items() if ip_of.get(n) != ip}  # names not served there now
        fresh = (ip for ip in _pool_hosts(pool) if ip not in taken and ip not in reserved)
        reclaim = (ip for ip in _pool_hosts(pool) if ip not in taken)
        for spec in needs:
            ip = next(fresh, None)
            if ip is None:
                ip = next((r for r in reclaim if r not in taken), None)
            if ip is None:
                conflicts.append(
                    Conflict(
                        kind="pool",
                        name=spec.name,
                        loser=spec.origin,
                        winner="",
                        reason=f"the pool {pool} is exhausted: no loopback IP left for {spec.name}",
                    )
                )
                continue
            prev = allocations.get(spec.name)
            if prev is not None and prev in taken:
                why = f"its IP {prev} is used by {taken[prev].name}"
            else:
                why = f"its IP {prev} is outside the pool {pool}"
            assign(spec, ip, why, f"the pool {pool} is full")

    changes += [c for n, c in sorted(released.items()) if n not in ip_of]  # not served elsewhere either
    routes = tuple(
        Route(
            name=spec.name,
            ip=ip_of[spec.name],
            source=spec.source,
            origin=spec.origin,
            ports=spec.ports,
            service=spec.service,
            tls=spec.tls,
            h2c=spec.h2c,
            hold=spec.hold,
        )
        for spec in sorted(winners.values(), key=lambda s: s.name)
        if spec.name in ip_of
    )
    exact = {r.name: r for r in routes if not r.is_wildcard}
    wild = {r.name[2:]: r for r in routes if r.is_wildcard}
    by_ip = {r.ip: r for r in routes}
    table = RouteTable(
        domain=domain,
        version=version,
        routes=routes,
        conflicts=tuple(conflicts),
        changes=tuple(changes),
        _exact=MappingProxyType(exact),
        _wild=MappingProxyType(wild),
        _by_ip=MappingProxyType(by_ip),
    )
    return table, new_alloc


@functools.lru_cache(maxsize=65536)
def _ip_int(ip: str) -> int | None:
    """Dotted quad → int, cached: rebuilds check every remembered IP against the pool."""
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return None


def _in_pool(ip: str, lo: int, hi: int) -> bool:
    n = _ip_int(ip)
    return n is not None and lo <= n <= hi
