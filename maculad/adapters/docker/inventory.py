"""The one Docker inventory: list, then events; rebuilt from a fresh list on every reconnect.

`DockerInventory.run()` opens the engine's container event stream *first*,
then lists and inspects every container (so nothing that happens between the
two is lost), publishes that snapshot (`kind="relist"`), and then applies each
event by inspecting the one container it names (`kind="event"`; `destroy`
removes it). When the engine goes away (the stream ends, a call fails) it
publishes `kind="disconnected"` with the last snapshot kept, waits with
exponential backoff and starts over with a fresh list: the state is rebuilt,
never patched across a gap, which is how a dockerd restart is survived.

Consumers (the docker provider, the container supervisor, compose bring-up)
register a callback with `subscribe`; it is called synchronously with each
frozen `InventoryUpdate`, so consumers only enqueue or flag and never block
the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypedDict

import structlog

from maculad.core.backoff import Backoff
from maculad.adapters.docker.api import ContainerNotFound, DockerAPI, DockerAPIError, DockerUnavailable
from maculad.adapters.docker.model import ContainerEvent, ContainerInfo
from maculad.observability.metrics import Metrics

log = structlog.get_logger("maculad.adapters.docker.inventory")

UpdateKind = Literal["relist", "event", "disconnected"]


class InventoryStatus(TypedDict):
    endpoint: str
    connected: bool
    engine_version: str | None
    last_error: str | None
    containers: int
    generation: int
    events: int


@dataclass(frozen=True, slots=True)
class InventoryUpdate:
    kind: UpdateKind
    snapshot: Mapping[str, ContainerInfo]
    """Every known container by id, after this update."""
    event: ContainerEvent | None = None
    before: ContainerInfo | None = None
    """The container named by `event` as it was before (None when it was unknown)."""
    after: ContainerInfo | None = None
    """The container named by `event` as it is now (None once removed)."""
    generation: int = 0
    """Increases with every (re)connection."""


Subscriber = Callable[[InventoryUpdate], None]


class DockerInventory:
    def __init__(
        self,
        *,
        api: DockerAPI,
        metrics: Metrics,
        labels: Sequence[str] = (),
        backoff_initial: float = 0.1,
        backoff_cap: float = 5.0,
        call_timeout: float = 15.0,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._labels = tuple(labels)
        self._initial = backoff_initial
        self._cap = backoff_cap
        self._call_timeout = call_timeout
        self._snapshot: Mapping[str, ContainerInfo] = MappingProxyType({})
        self._subscribers: list[Subscriber] = []
        self.connected = False
        self.synced = asyncio.Event()
        self.last_error: str | None = None
        self.engine_version: str | None = None
        self.generation = 0
        self.events_seen = 0
        self.connected_since: float | None = None
        metrics.docker_connected.set(0)

    @property
    def snapshot(self) -> Mapping[str, ContainerInfo]:
        return self._snapshot

    @property
    def endpoint(self) -> str:
        return self._api.endpoint

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def _publish(self, update: InventoryUpdate) -> None:
        for cb in list(self._subscribers):
            try:
                cb(update)
            except Exception:
                log.exception("inventory_subscriber_failed", subscriber=getattr(cb, "__qualname__", repr(cb)))

    def status(self) -> InventoryStatus:
        return {
            "endpoint": self._api.endpoint,
            "connected": self.connected,
            "engine_version": self.engine_version,
            "last_error": self.last_error,
            "containers": len(self._snapshot),
            "generation": self.generation,
            "events": self.events_seen,
        }

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        backoff = Backoff(initial=self._initial, cap=self._cap)
        first = True
        while True:
            try:
                await self._session(reconnect=not first)
                self.last_error = "the Docker event stream ended (engine stopped?)"
            except DockerUnavailable as exc:
                self.last_error = str(exc)
            except DockerAPIError as exc:
                self.last_error = str(exc)
            except TimeoutError:
                self.last_error = f"the Docker engine at {self._api.endpoint} did not answer in time"
            first = False
            was_connected = self.connected
            if self.connected_since is not None and time.monotonic() - self.connected_since > 10:
                backoff.reset()
            delay = backoff.next()
            self.connected = False
            self.connected_since = None
            self.synced.clear()
            self._metrics.docker_connected.set(0)
            if was_connected:
                log.warning("docker_disconnected", endpoint=self._api.endpoint, error=self.last_error)
                self._publish(InventoryUpdate("disconnected", self._snapshot, generation=self.generation))
            else:
                log.info("docker_unavailable", endpoint=self._api.endpoint, error=self.last_error,
                         retry_in=round(delay, 3))
            await asyncio.sleep(delay)

    async def _session(self, *, reconnect: bool) -> None:
        async with asyncio.timeout(self._call_timeout):
            ver = await self._api.version()
        self.engine_version = str(ver.get("Version", "?"))
        stream = await self._api.events(labels=self._labels)
        try:
            async with asyncio.timeout(self._call_timeout * 4):
                snapshot = await self._list()
            self.generation += 1
            self._snapshot = MappingProxyType(snapshot)
            self.connected = True
            self.connected_since = time.monotonic()
            self.last_error = None
            self._metrics.docker_connected.set(1)
            if reconnect:
                self._metrics.docker_reconnects.inc()
            log.info("docker_connected", endpoint=self._api.endpoint, version=self.engine_version,
                     containers=len(snapshot), generation=self.generation)
            self._publish(InventoryUpdate("relist", self._snapshot, generation=self.generation))
            self.synced.set()
            async for ev in stream:
                self.events_seen += 1
                self._metrics.docker_events.labels(type=ev.action).inc()
                await self._apply(ev)
        finally:
            await stream.close()

    async def _list(self) -> dict[str, ContainerInfo]:
        ids = await self._api.list_ids(labels=self._labels)
        sem = asyncio.Semaphore(8)

        async def one(cid: str) -> ContainerInfo | None:
            async with sem:
                try:
                    return await self._api.inspect(cid)
                except ContainerNotFound:
                    return None

        infos = await asyncio.gather(*(one(i) for i in ids))
        return {i.id: i for i in infos if i is not None}

    async def _apply(self, ev: ContainerEvent) -> None:
        before = self._snapshot.get(ev.id)
        after: ContainerInfo | None
        if ev.action == "destroy":
            after = None
        else:
            try:
                async with asyncio.timeout(self._call_timeout):
                    after = await self._api.inspect(ev.id)
            except ContainerNotFound:
                after = None
        snap = dict(self._snapshot)
        if after is None:
            snap.pop(ev.id, None)
        else:
            snap[ev.id] = after
        self._snapshot = MappingProxyType(snap)
        self._publish(InventoryUpdate("event", self._snapshot, event=ev, before=before, after=after,
                                      generation=self.generation))
