"""The immutable route table and the pure function that builds it.

`build_table` merges the latest snapshot of every provider into one
`RouteTable`: names are claimed in source priority (config > docker >
kubernetes, then by origin so the result is deterministic), pinned IPs are
honoured first-come, and everything else gets a loopback IP from the pool,
preferring the IP the name had before (the persisted allocations) so a name
keeps its IP across restarts. Losers become `Conflict`s, never silent drops.

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
from maculad.routes.model import SOURCE_PRIORITY, Conflict, Route, RouteSpec, Source


@dataclass(frozen=True, slots=True)
class RouteTable:
    """One snapshot: routes by exact name, wildcard suffix and IP."""

    domain: str
    version: int
    routes: tuple[Route, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
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

    `allocations` maps names to the pool IPs they had; the returned mapping keeps
    every previous entry (a name that comes back gets its old IP) except those
    whose IP had to be handed to someone else because the pool was full.
    """
    ordered = sorted((s for seq in specs.values() for s in seq), key=_sort_key)
    conflicts: list[Conflict] = []

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

    # 2. pinned IPs: first pin wins; a losing or invalid pin falls back to the pool.
    ip_of: dict[str, str] = {}
    ip_owner: dict[str, RouteSpec] = {}
    unpinned: list[RouteSpec] = []
    for spec in winners.values():
        if spec.ip is None:
            unpinned.append(spec)
            continue
        problem = pin_problem(spec.ip, allow_non_loopback=allow_non_loopback)
        if problem is not None:
            problem = f"pinned IP {problem}"
        owner = ip_owner.get(spec.ip)
        if problem is None and owner is not None:
            problem = f"pinned IP {spec.ip} is already used by {owner.origin}"
        if problem is not None:
            conflicts.append(
                Conflict(
                    kind="ip",
                    name=spec.name,
                    loser=spec.origin,
                    winner=owner.origin if owner is not None else "",
                    reason=problem + "; allocated from the pool instead",
                )
            )
            unpinned.append(spec)
            continue
        ip_of[spec.name] = spec.ip
        ip_owner[spec.ip] = spec

    # 3. the pool: keep previous allocations, then hand out free IPs in order.
    new_alloc = dict(allocations)
    used = set(ip_owner)
    lo, hi = int(pool.network_address), int(pool.broadcast_address)
    needs: list[RouteSpec] = []
    for spec in sorted(unpinned, key=_sort_key):
        prev = allocations.get(spec.name)
        if prev is not None and prev not in used and _in_pool(prev, lo, hi):
            ip_of[spec.name] = prev
            used.add(prev)
        else:
            needs.append(spec)
    if needs:
        present = set(winners)
        reserved = {ip for n, ip in allocations.items() if n not in present}
        fresh = (ip for ip in _pool_hosts(pool) if ip not in used and ip not in reserved)
        reclaim = (ip for ip in _pool_hosts(pool) if ip not in used)
        for spec in needs:
            ip = next(fresh, None)
            if ip is None:
                ip = next((r for r in reclaim if r not in used), None)
                if ip is not None:
                    for n, old in list(new_alloc.items()):
                        if old == ip:
                            del new_alloc[n]
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
            used.add(ip)
            ip_of[spec.name] = ip
            new_alloc[spec.name] = ip

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
