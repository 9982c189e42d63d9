"""The container supervisor's executor: observations in, Docker calls out.

All decisions live in containers_decide.py (`decide(state, observation, now,
wall)`, pure, table-tested). This class only feeds it: the inventory's
updates (it never polls the engine), `maculactl` requests, the results of its
own Docker calls and the passing of time (`next_deadline`, no polling loop);
and carries out the actions it returns: each `Call` runs as a short task
tracked here and cancelled by `close()`, `Publish` goes to the event bus,
`Log` to the log. The loop itself is `run()`, spawned by the tier.

What the route layer needs of all this is data: `holds()` gives, per
container that is not running, a `ServiceHold` (state, the reason in a few
words, the command that fixes it, when the next automatic start is due);
`on_holds_changed` is called whenever they change, so the label provider
rebuilds and the route stays in the table, answered with a 503 page by the
relay, instead of vanishing from DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

import structlog

from maculad.adapters.docker.api import ContainerNotFound, DockerAPI, DockerAPIError, DockerUnavailable
from maculad.adapters.docker.inventory import DockerInventory, InventoryUpdate
from maculad.config import DockerConfig
from maculad.core.events import EventBus
from maculad.core.restart import STATES
from maculad.observability.metrics import Metrics
from maculad.routes.model import ServiceHold
from maculad.supervise.containers_decide import (
    TIER,
    ActionKind,
    Call,
    CallDone,
    Changed,
    Disconnected,
    Log,
    Observation,
    Publish,
    Relist,
    ServiceView,
    StartRequested,
    StopRequested,
    SupervisorState,
    Tick,
    Unit,
    decide,
    find,
    holds,
    is_restarting,
    next_deadline,
    service_views,
    unit_state,
)

log = structlog.get_logger("maculad.supervise.containers")

__all__ = ["ContainerSupervisor", "ServiceView", "SupervisorStatus"]


class SupervisorStatus(TypedDict):
    services: int
    states: dict[str, int]
    actions_running: int


@dataclass(slots=True)
class _Exported:
    services: set[str] = field(default_factory=set)


class ContainerSupervisor:
    def __init__(
        self,
        *,
        inventory: DockerInventory,
        api: DockerAPI,
        config: DockerConfig,
        metrics: Metrics,
        events: EventBus,
        stop_timeout: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._inventory = inventory
        self._api = api
        self._metrics = metrics
        self._events = events
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._wall = wall
        self._state = SupervisorState(config=config)
        self._queue: asyncio.Queue[Observation | None] = asyncio.Queue()
        """Observations for the loop; None only wakes it (to recompute its deadline)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._exported = _Exported()
        #: Called (synchronously) whenever `holds()` changed.
        self.on_holds_changed: Callable[[], None] | None = None
        inventory.subscribe(self._on_update)

    # ------------------------------------------------------------------ public

    def is_restarting(self, service: str) -> bool:
        """True while maculad is bringing the service back (what clients see comes from `holds()`)."""
        return is_restarting(self._state, service)

    def holds(self) -> dict[str, ServiceHold]:
        """Container id → its service's hold, for every supervised container maculad does not see running."""
        return holds(self._state)

    def services(self) -> list[ServiceView]:
        return service_views(self._state)

    def status(self) -> SupervisorStatus:
        states: dict[str, int] = {}
        for u in self._state.units.values():
            s = unit_state(u)
            states[s] = states.get(s, 0) + 1
        return {"services": len(self._state.units), "states": states, "actions_running": len(self._tasks)}

    async def stop_service(self, name: str) -> list[ServiceView]:
        """`maculactl stop`: stop the service's container(s); nothing restarts them until a start."""
        find(self._state, name)
        calls = self._step(StopRequested(name))
        self._wake()
        await asyncio.gather(*calls)  # an engine error reaches the caller
        return self._summary(name)

    async def start_service(self, name: str) -> list[ServiceView]:
        """`maculactl start`: clear a stop or give-up and start (after the dependencies are ready)."""
        return await self._request(name, "start")  # a running container answers 304

    async def restart_service(self, name: str) -> list[ServiceView]:
        """`maculactl restart`: restart now (a stopped service is started)."""
        return await self._request(name, "restart")

    async def _request(self, name: str, action: ActionKind) -> list[ServiceView]:
        find(self._state, name)
        self._step(StartRequested(name, action))
        calls = self._step(Tick())
        self._wake()
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)
        return self._summary(name)

    async def close(self) -> None:
        self._inventory.unsubscribe(self._on_update)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # ------------------------------------------------------------------ loop

    def _on_update(self, update: InventoryUpdate) -> None:
        if update.kind == "relist":
            self._queue.put_nowait(Relist(update.snapshot))
        elif update.kind == "disconnected":
            self._queue.put_nowait(Disconnected(update.snapshot))
        elif update.event is not None:
            self._queue.put_nowait(Changed(update.event, update.after, update.snapshot))

    def _wake(self) -> None:
        self._queue.put_nowait(None)

    async def run(self) -> None:
        if self._inventory.connected:
            self._step(Relist(self._inventory.snapshot))
        while True:
            timeout = next_deadline(self._state, self._clock())
            items: list[Observation | None] = []
            try:
                items.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                pass
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            for item in items:
                if item is not None:
                    self._step(item)
            self._step(Tick())
            self._export()

    # ------------------------------------------------------------------ acting

    def _step(self, obs: Observation) -> list[asyncio.Task[None]]:
        """Decide on one observation and carry out the actions; the Docker calls started are returned."""
        before = self._state
        step = decide(before, obs, self._clock(), self._wall())
        self._state = step.state
        calls: list[asyncio.Task[None]] = []
        for a in step.actions:
            if isinstance(a, Call):
                calls.append(self._launch(a))
            elif isinstance(a, Publish):
                self._events.publish(a.kind, **dict(a.fields))
            elif isinstance(a, Log):
                (log.error if a.level == "error" else log.info)(a.event, **dict(a.fields))
        if self.on_holds_changed is not None and _holds_changed(before, step.state):
            self.on_holds_changed()
        return calls

    def _launch(self, a: Call) -> asyncio.Task[None]:
        if a.call != "stop":
            self._metrics.service_restarts.labels(service=a.service, reason=a.reason).inc()
        task = asyncio.create_task(self._call(a), name=f"maculad:docker:{a.call}:{a.service}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, a: Call) -> None:
        """One Docker call; its result is decided on at once (`CallDone`), also when cancelled."""
        started, error = self._wall(), None
        try:
            if a.call == "start":
                await self._api.start(a.unit_id)
            elif a.call == "restart":
                await self._api.restart(a.unit_id, timeout=self._stop_timeout)
            else:
                await self._api.stop(a.unit_id, timeout=self._stop_timeout)
        except ContainerNotFound:
            pass
        except (DockerUnavailable, DockerAPIError, TimeoutError) as exc:
            error = str(exc)
            log.warning("service_action_failed", service=a.service, action=a.call, error=error)
            if a.call == "stop":
                raise
        finally:
            self._step(CallDone(a.unit_id, a.call, started, error))
            self._wake()

    # ------------------------------------------------------------------ reporting

    def _summary(self, name: str) -> list[ServiceView]:
        return [s for s in self.services() if s["service"] == name]

    def _export(self) -> None:
        m = self._metrics
        current: dict[str, Unit] = {}
        for u in self._state.units.values():
            prev = current.get(u.service)
            if prev is None or (u.info.running and not prev.info.running):
                current[u.service] = u
        for svc, u in current.items():
            state = unit_state(u)
            m.service_up.labels(service=svc, tier=TIER).set(1 if u.info.ready else 0)
            for s in STATES:
                m.service_state.labels(service=svc, state=s).set(1 if s == state else 0)
            delay = u.tracker.delay if u.tracker is not None and state == "backoff" else 0.0
            m.service_backoff.labels(service=svc).set(delay)
        for svc in self._exported.services - set(current):
            with contextlib.suppress(KeyError):
                m.service_up.remove(svc, TIER)
            for s in STATES:
                with contextlib.suppress(KeyError):
                    m.service_state.remove(svc, s)
            with contextlib.suppress(KeyError):
                m.service_backoff.remove(svc)
        self._exported.services = set(current)


def _holds_changed(before: SupervisorState, after: SupervisorState) -> bool:
    return holds(before) != holds(after)
