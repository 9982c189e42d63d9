"""The owner of the current route table.

Providers call `update(source, specs)` with their complete snapshot. Equal
snapshots are dropped; otherwise the table is rebuilt from every provider's
latest snapshot (never patched), allocations are persisted *before* the new
table is published (so an IP that DNS ever answered survives `kill -9`), and
listeners are told. Readers just take `manager.current`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import structlog

from maculad.observability.metrics import Metrics
from maculad.routes.model import SOURCES, Conflict, RouteSpec, Source
from maculad.routes.store import AllocationStore
from maculad.routes.table import RouteTable, build_table

log = structlog.get_logger("maculad.routes")

Listener = Callable[[RouteTable], None]


class RouteTableManager:
    def __init__(
        self,
        *,
        domain: str,
        pool: ipaddress.IPv4Network,
        store: AllocationStore,
        metrics: Metrics,
        allow_non_loopback: bool = False,
    ) -> None:
        self._domain = domain
        self._pool = pool
        self._store = store
        self._metrics = metrics
        self._allow_non_loopback = allow_non_loopback
        self._specs: dict[Source, tuple[RouteSpec, ...]] = {}
        self._allocations = store.load()
        self._current = RouteTable.empty(domain)
        self._listeners: list[Listener] = []
        self._reported: set[Conflict] = set()

    @property
    def current(self) -> RouteTable:
        return self._current

    def specs(self, source: Source) -> tuple[RouteSpec, ...]:
        return self._specs.get(source, ())

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def update(self, source: Source, specs: Sequence[RouteSpec]) -> bool:
        """Replace `source`'s snapshot; rebuild and publish when it changed."""
        snapshot = tuple(sorted(specs, key=lambda s: (s.name, s.origin)))
        if self._specs.get(source) == snapshot:
            return False
        self._specs[source] = snapshot
        self._rebuild(reason=source)
        return True

    def set_pool(self, pool: ipaddress.IPv4Network, *, allow_non_loopback: bool) -> None:
        """Used by reload: a new pool rebuilds the table (names keep IPs that still fit)."""
        if pool == self._pool and allow_non_loopback == self._allow_non_loopback:
            return
        self._pool = pool
        self._allow_non_loopback = allow_non_loopback
        self._rebuild(reason="pool")

    def _rebuild(self, *, reason: str) -> None:
        table, allocations = build_table(
            domain=self._domain,
            version=self._current.version + 1,
            specs=self._specs,
            allocations=self._allocations,
            pool=self._pool,
            allow_non_loopback=self._allow_non_loopback,
        )
        if allocations != self._allocations:
            self._store.save(allocations)
            self._allocations = allocations
        self._current = table
        counts = table.by_source()
        for src in SOURCES:
            self._metrics.routes.labels(source=src).set(counts[src])
        self._metrics.route_conflicts.set(len(table.conflicts))
        self._metrics.route_table_updates.inc()
        fresh = set(table.conflicts) - self._reported
        for c in sorted(fresh, key=lambda c: (c.name, c.loser)):
            level = log.debug if c.same_backends else log.warning
            level("route_conflict", kind=c.kind, name=c.name, loser=c.loser, winner=c.winner, reason=c.reason)
        self._reported = set(table.conflicts)
        log.info("route_table", version=table.version, routes=len(table.routes), reason=reason,
                 conflicts=len(table.conflicts))
        for listener in list(self._listeners):
            try:
                listener(table)
            except Exception:
                log.exception("route_listener_failed", listener=getattr(listener, "__qualname__", repr(listener)))
