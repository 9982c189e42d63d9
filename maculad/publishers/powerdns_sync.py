"""Keeping the PowerDNS zone in step with the route table.

One task, one loop: a route-table listener only sets a flag; the loop takes
the *latest* table, lists the zone, diffs (publishers/powerdns.py) and sends
the difference as one PATCH — so each table change costs at most one PATCH,
a burst of changes while a PATCH is in flight collapses into the next one, and
a change that does not alter the zone (a new backend) sends none. Listing the
zone before each PATCH is what keeps the promise never to touch a name
someone else owns, even one they created a moment ago.

Every round is therefore a full reconcile: after PowerDNS was down, or the key
was wrong, the next successful round repairs everything that was missed. A
failed round keeps the desired state, waits with exponential backoff (capped,
reset on success), and tries again; a table change during the wait does not
cut it short. A missing zone is created (Native, NS `ns.<zone>`). Every
`resync_interval` a round runs without a table change, to repair edits made
behind maculad's back.

The A records' address is `publish_address`, or else G, the container
horizon's address, asked for each round (`address`); until G is known nothing
is published and status says why. `address_changed()` wakes the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import structlog

from maculad.adapters.powerdns import PowerDNSError, ZoneMissing
from maculad.config import PowerDNSConfig
from maculad.observability.metrics import Metrics
from maculad.publishers.powerdns import ZonePlan, ZoneConflict, ZoneFormatError, parse_zone, plan, wanted
from maculad.routes.table import RouteTable

log = structlog.get_logger("maculad.powerdns")


class ZoneConflictView(TypedDict):
    name: str
    route: str
    reason: str
    owner: str | None


class PowerDNSStatus(TypedDict):
    """`GET /v1/powerdns` and the `powerdns` component: the shared zone as maculad keeps it."""

    api: str
    server_id: str
    zone: str
    owner_id: str
    publish: bool
    publish_address: str | None
    publish_address_from: str  # "config" or "containers"
    dns: str | None
    connected: bool
    last_sync: float | None  # epoch seconds
    last_attempt: float | None  # epoch seconds
    synced_table_version: int | None
    records_owned: int
    conflicts: list[ZoneConflictView]
    patches_sent: int
    rounds: int
    zone_created: bool
    retry_in_seconds: float | None
    last_error: str | None
    last_error_kind: str | None


class ZoneAPI(Protocol):
    """What the loop needs of PowerDNS (adapters/powerdns.py implements it)."""

    async def get_zone(self, zone: str) -> Any: ...

    async def create_zone(self, zone: str, *, nameservers: tuple[str, ...]) -> None: ...

    async def patch_zone(self, zone: str, body: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class TableSource(Protocol):
    @property
    def current(self) -> RouteTable: ...

    def add_listener(self, listener: Callable[[RouteTable], None]) -> None: ...

    def remove_listener(self, listener: Callable[[RouteTable], None]) -> None: ...


class PowerDNSPublisher:
    name = "powerdns"

    def __init__(self, *, config: PowerDNSConfig, ttl: int, routes: TableSource, api: ZoneAPI,
                 metrics: Metrics, address: Callable[[], str | None] | None = None) -> None:
        self.config = config
        self._address_of = address
        self.ttl = ttl
        self._routes = routes
        self._api = api
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._hooked = False
        self.connected = False
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        self.last_sync: float | None = None
        self.last_attempt: float | None = None
        self.synced_version: int | None = None
        self.owned: tuple[str, ...] = ()
        self.conflicts: tuple[ZoneConflict, ...] = ()
        self.patches = 0
        self.rounds = 0
        self.zone_created = False
        self.retry_in: float | None = None
        self._reported: set[ZoneConflict] = set()

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """Follow the table; `run()` (a long-lived task) syncs the zone."""
        self._routes.add_listener(self._on_table)
        self._hooked = True
        self._wake.set()

    async def stop(self) -> None:
        if self._hooked:
            self._hooked = False
            self._routes.remove_listener(self._on_table)
        await self._api.close()
        self._metrics.powerdns_connected.set(0)

    def _on_table(self, table: RouteTable) -> None:
        self._wake.set()

    def address_changed(self) -> None:
        """The container horizon's address changed: publish with the new one."""
        self._wake.set()

    @property
    def publish_address(self) -> str | None:
        c = self.config
        if c.publish_address is not None:
            return c.publish_address
        return self._address_of() if self._address_of is not None else None

    def status(self) -> PowerDNSStatus:
        c = self.config
        return {
            "api": c.api,
            "server_id": c.server_id,
            "zone": c.zone,
            "owner_id": c.owner_id,
            "publish": c.publish,
            "publish_address": self.publish_address,
            "publish_address_from": "config" if c.publish_address is not None else "containers",
            "dns": str(c.dns) if c.dns is not None else None,
            "connected": self.connected,
            "last_sync": self.last_sync,
            "last_attempt": self.last_attempt,
            "synced_table_version": self.synced_version,
            "records_owned": len(self.owned),
            "conflicts": [conflict_view(x) for x in self.conflicts],
            "patches_sent": self.patches,
            "rounds": self.rounds,
            "zone_created": self.zone_created,
            "retry_in_seconds": round(self.retry_in, 3) if self.retry_in is not None else None,
            "last_error": self.last_error,
            "last_error_kind": self.last_error_kind,
        }

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        b = self.config.backoff
        delay = b.initial
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.resync_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if await self.sync_once():
                delay = b.initial
                continue
            self.retry_in = delay
            self._metrics.powerdns_backoff.set(delay)
            await asyncio.sleep(delay)
            self.retry_in = None
            self._metrics.powerdns_backoff.set(0)
            delay = min(delay * b.factor, b.cap)
            self._wake.set()  # retry with whatever the table is now

    async def sync_once(self) -> bool:
        """One full round (list, diff, patch); True when the zone now holds the latest table."""
        c = self.config
        table = self._routes.current
        address = self.publish_address
        if c.publish and address is None:
            # G is not known yet; publishing nothing would delete what an earlier run published, so wait
            # for address_changed() (no retry loop: nothing here can fail faster by trying again)
            msg = ("not publishing yet: the container horizon has no address (see maculactl status, "
                   "or set [powerdns] publish_address)")
            if self.last_error != msg:
                log.warning("powerdns_waiting", reason=msg)
            self.last_error, self.last_error_kind = msg, "waiting"
            return True
        self.rounds += 1
        self.last_attempt = time.time()
        started = time.perf_counter()
        try:
            try:
                listing = await self._api.get_zone(c.zone)
            except ZoneMissing:
                await self._api.create_zone(c.zone, nameservers=(f"ns.{c.zone}",))
                self.zone_created = True
                log.info("powerdns_zone_created", zone=c.zone, kind="Native")
                listing = await self._api.get_zone(c.zone)
            zone = parse_zone(listing)
            want = wanted(table, zone=c.zone, owner_id=c.owner_id, address=address or "",
                          ttl=self.ttl) if c.publish else {}
            p = plan(want, zone, owner_id=c.owner_id)
            if p.changes:
                await self._api.patch_zone(c.zone, p.body())
                self.patches += 1
                self._metrics.powerdns_patches.inc()
                self._metrics.powerdns_rrset_changes.inc(len(p.changes))
        except (PowerDNSError, ZoneFormatError) as exc:
            kind = exc.kind if isinstance(exc, PowerDNSError) else "format"
            msg = exc.message if isinstance(exc, PowerDNSError) else f"PowerDNS sent a zone maculad cannot read: {exc}"
            first = self.connected or self.last_error != msg
            self.connected = kind not in ("unreachable", "auth")
            self.last_error, self.last_error_kind = msg, kind
            self._metrics.powerdns_connected.set(1 if self.connected else 0)
            self._metrics.powerdns_syncs.labels(result=kind).inc()
            (log.warning if first else log.debug)("powerdns_sync_failed", kind=kind, error=msg)
            return False
        self._metrics.powerdns_sync_duration.observe(time.perf_counter() - started)
        self._metrics.powerdns_syncs.labels(result="ok").inc()
        self._applied(p, table)
        return True

    def _applied(self, p: ZonePlan, table: RouteTable) -> None:
        if not self.connected or self.last_error:
            log.info("powerdns_connected", api=self.config.api, zone=self.config.zone)
        self.connected = True
        self.last_error = self.last_error_kind = None
        self.last_sync = time.time()
        self.synced_version = table.version
        self.owned = p.owned
        self.conflicts = p.conflicts
        m = self._metrics
        m.powerdns_connected.set(1)
        m.powerdns_records_owned.set(len(p.owned))
        m.powerdns_conflicts.set(len(p.conflicts))
        m.powerdns_last_sync.set(self.last_sync)
        for x in p.conflicts:
            if x not in self._reported:
                log.warning("powerdns_conflict", name=x.name, route=x.origin, reason=x.reason, owner=x.owner)
        self._reported = set(p.conflicts)
        if p.changes:
            log.info("powerdns_patched", zone=self.config.zone, changes=len(p.changes), owned=len(p.owned),
                     table_version=table.version)


def conflict_view(c: ZoneConflict) -> ZoneConflictView:
    return {"name": c.name, "route": c.origin, "reason": c.reason, "owner": c.owner}
