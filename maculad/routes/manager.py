"""The owner of the current route table.

Providers call `update(source, specs)` with their complete snapshot. Equal
snapshots are dropped; otherwise the table is rebuilt from every provider's
latest snapshot (never patched), allocations are persisted *before* the new
table is published (so an IP that DNS ever answered survives `kill -9`), and
listeners are told. Readers just take `manager.current`.

A save that fails (a full disk) neither publishes nor forgets: the snapshot is
kept, the last good table goes on serving, and the rebuild is retried on a timer
with `Backoff` (an equal snapshot arriving meanwhile retries at once). The first
save that succeeds publishes the latest table. Failures are counted
(`maculad_state_save_failures_total`) and shown by `state_status()`.
`preview()` builds the table a change would give, without saving or publishing
(reload binds its new listeners from it before anything changes).

What a rebuild changed is told where a user looks: a new conflict is one log
line and a `route_conflict` event, a name whose IP changed (`table.changes`)
one `route_ip_changed` warning and event; both are counted in metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

import structlog

from maculad.core.backoff import Backoff
from maculad.core.fsutil import StateError
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.routes.model import CONFLICT_KINDS, SOURCES, Conflict, RouteSpec, Source
from maculad.routes.store import AllocationStore
from maculad.routes.table import RouteTable, build_table

log = structlog.get_logger("maculad.routes")

Listener = Callable[[RouteTable], None]

#: a failed state save is retried after this, doubling up to SAVE_RETRY_CAP
SAVE_RETRY_INITIAL = 0.25
SAVE_RETRY_CAP = 5.0



class StateStatus(TypedDict):
    """`status.state`: where the allocations are saved and whether the last save failed."""

    path: str
    save_error: str | None
    consecutive_failures: int
    failing_since: float | None  # epoch seconds
    retry_in: float | None  # seconds until the next attempt

class RouteTableManager:
    def __init__(
        self,
        *,
        domain: str,
        pool: ipaddress.IPv4Network,
        store: AllocationStore,
        metrics: Metrics,
        events: EventBus | None = None,
        allow_non_loopback: bool = False,
    ) -> None:
        self._events = events
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
        self._save_error: StateError | None = None
        self._save_failures = 0
        self._failing_since: float | None = None
        self._save_backoff = Backoff(initial=SAVE_RETRY_INITIAL, cap=SAVE_RETRY_CAP)
        self._retry: asyncio.TimerHandle | None = None

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
            if self._save_error is not None:
                self._rebuild(reason="save retry")
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

    def preview(self, changes: Mapping[Source, Sequence[RouteSpec]], *,
                pool: ipaddress.IPv4Network | None = None, allow_non_loopback: bool | None = None) -> RouteTable:
        """The table `update`s with `changes` (and `set_pool`) would publish; nothing is saved or published."""
        specs = dict(self._specs)
        for source, snapshot in changes.items():
            specs[source] = tuple(sorted(snapshot, key=lambda s: (s.name, s.origin)))
        table, _ = build_table(
            domain=self._domain, version=self._current.version + 1, specs=specs, allocations=self._allocations,
            pool=self._pool if pool is None else pool,
            allow_non_loopback=self._allow_non_loopback if allow_non_loopback is None else allow_non_loopback)
        return table

    @property
    def save_error(self) -> StateError | None:
        """Why the latest table is not published yet (its allocations could not be saved), or None."""
        return self._save_error

    def state_status(self) -> StateStatus:
        retry_in = None
        if self._retry is not None:
            retry_in = round(max(0.0, self._retry.when() - asyncio.get_running_loop().time()), 3)
        return {"path": str(self._store.path),
                "save_error": str(self._save_error) if self._save_error is not None else None,
                "consecutive_failures": self._save_failures, "failing_since": self._failing_since,
                "retry_in": retry_in}

    def close(self) -> None:
        """Stop retrying a failed save (shutdown)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _rebuild(self, *, reason: str) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        table, allocations = build_table(
            domain=self._domain,
            version=self._current.version + 1,
            specs=self._specs,
            allocations=self._allocations,
            pool=self._pool,
            allow_non_loopback=self._allow_non_loopback,
        )
        if allocations != self._allocations:
            try:
                self._store.save(allocations)
            except StateError as exc:
                self._save_failed(exc, reason)
                return
            self._allocations = allocations
        if self._save_error is not None:
            log.info("state_saved", path=str(self._store.path), after_failures=self._save_failures)
            self._save_error, self._save_failures, self._failing_since = None, 0, None
            self._save_backoff.reset()
        self._current = table
        counts = table.by_source()
        for src in SOURCES:
            self._metrics.routes.labels(source=src).set(counts[src])
        for kind in CONFLICT_KINDS:
            self._metrics.route_conflicts.labels(kind=kind).set(sum(1 for c in table.conflicts if c.kind == kind))
        self._metrics.route_table_updates.inc()
        fresh = set(table.conflicts) - self._reported
        for c in sorted(fresh, key=lambda c: (c.name, c.loser)):
            level = log.debug if c.same_backends else log.warning
            level("route_conflict", kind=c.kind, name=c.name, loser=c.loser, winner=c.winner, reason=c.reason)
            self._publish("route_conflict", conflict=c.kind, name=c.name, loser=c.loser, winner=c.winner,
                          reason=c.reason)
        self._reported = set(table.conflicts)
        for ch in table.changes:
            log.warning("route_ip_changed", name=ch.name, old=ch.old, new=ch.new, reason=ch.reason)
            self._publish("route_ip_changed", name=ch.name, old=ch.old, new=ch.new, reason=ch.reason)
            self._metrics.route_ip_changes.inc()
        log.info("route_table", version=table.version, routes=len(table.routes), reason=reason,
                 conflicts=len(table.conflicts))
        for listener in list(self._listeners):
            try:
                listener(table)
            except Exception:
                log.exception("route_listener_failed", listener=getattr(listener, "__qualname__", repr(listener)))

    def _save_failed(self, exc: StateError, reason: str) -> None:
        """Keep the snapshot and the serving table; retry the rebuild on a timer."""
        self._save_error = exc
        self._save_failures += 1
        if self._failing_since is None:
            self._failing_since = time.time()
        self._metrics.state_save_failures.inc()
        delay = self._save_backoff.next()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next update retries
            loop = None
        if loop is not None:
            self._retry = loop.call_later(delay, self._rebuild_later)
        log.error("state_save_failed", path=str(exc.path), error=exc.reason, reason=reason,
                  failures=self._save_failures, retry_in=round(delay, 3) if loop is not None else None,
                  effect="the last saved table keeps serving")

    def _rebuild_later(self) -> None:
        self._retry = None
        self._rebuild(reason="save retry")

    def _publish(self, event: str, **fields: object) -> None:
        if self._events is not None:
            self._events.publish(event, **fields)
