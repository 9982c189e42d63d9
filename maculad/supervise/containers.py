"""Supervision of the Docker tier: restart policies, health and dependency order.

The supervisor consumes the inventory's updates (never polls the engine) and
keeps one unit per supervised container: a container with any `macula.` label
or named in `[docker.services]`. Each unit owns a pure `RestartTracker`; the
supervisor only translates what it observes into tracker events and carries
out the tracker's decisions.

Decisions are driven by *state transitions* between two inspected snapshots
of a container (running → exited, a new StartedAt, health → unhealthy), not
by single events, so a late event, a missed event or a relist after the
engine came back all lead to the same answer. Events only add what a
snapshot cannot tell: a `kill` that was not ours marks the next exit as a
person's (`docker stop` / `docker kill`).

A pending start or restart waits for the unit's compose dependencies
(`com.docker.compose.depends_on`): `service_healthy` needs the dependency
running and healthy, `service_started` running, `service_completed_successfully`
exited with 0. While it waits the unit is in `backoff` with the reason shown.
A unit that gave up while a dependency was down is retried when it recovers;
dependents declared with `restart: true` are restarted after maculad restarted
their dependency.

All Docker calls of the decisions run in short tasks tracked here and
cancelled by `close()`; the loop itself is `run()`, spawned by the tier.

What the route layer needs of all this is data: `holds()` gives, per
container that is not running, a `ServiceHold` (state, the reason in a few
words, the command that fixes it, when the next automatic start is due);
`on_holds_changed` is called whenever one changes, so the label provider
rebuilds and the route stays in the table, answered with a 503 page by the
relay, instead of vanishing from DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import structlog

from maculad.config import DockerConfig
from maculad.core.restart import parse_restart
from maculad.adapters.docker.api import ContainerNotFound, DockerAPI, DockerAPIError, DockerUnavailable
from maculad.adapters.docker.inventory import DockerInventory, InventoryUpdate
from maculad.adapters.docker.model import (
    COMPOSE_ONEOFF,
    ContainerEvent,
    ContainerInfo,
    Dependency,
    parse_time,
    service_name,
)
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.routes.model import ServiceHold
from maculad.supervise.policy import RestartDecision, RestartPolicy, RestartSnapshot, RestartTracker
from maculad.core.restart import STATES

log = structlog.get_logger("maculad.supervise.containers")

ActionKind = Literal["start", "restart"]
TIER = "docker"


class ServiceView(RestartSnapshot):
    """One supervised container in `GET /v1/services`: who it is, Docker's view, and the restart state."""

    service: str
    tier: str
    container: str
    container_id: str
    docker_state: str
    health: str | None
    exit_code: int | None
    policy_source: str
    up: bool
    restarts: int
    waiting_on: str | None
    pending: ActionKind | None
    error: str | None
    last_error: str | None
    compose_project: str | None


class SupervisorStatus(TypedDict):
    services: int
    states: dict[str, int]
    actions_running: int


@dataclass(slots=True)
class _Unit:
    id: str
    service: str
    info: ContainerInfo
    tracker: RestartTracker | None
    policy_source: str
    error: str | None = None
    action: ActionKind | None = None
    action_reason: str = ""
    due: float | None = None
    due_wall: float | None = None
    waiting_on: str | None = None
    failed_due_to: str | None = None
    busy: bool = False
    busy_action: str = ""
    own: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock windows of maculad's own stops and restarts: kills and deaths inside them are ours."""
    exited_seen_at: float | None = None
    action_end: float = 0.0
    user_kill: bool = False
    last_error: str | None = None
    published_state: str = ""
    published_hold: ServiceHold | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class _ActionFailed:
    unit_id: str
    error: str


@dataclass(frozen=True, slots=True)
class _Wake:
    pass


_Item = InventoryUpdate | _ActionFailed | _Wake


@dataclass(slots=True)
class _Exported:
    services: set[str] = field(default_factory=set)


def resolve_policy(info: ContainerInfo, service: str, cfg: DockerConfig
                   ) -> tuple[RestartPolicy | None, str, str | None]:
    """(policy, where it came from, error). Config wins over the label, the label over the default."""
    sc = cfg.services.get(service)
    if sc is not None and sc.restart is not None:
        return RestartPolicy(sc.restart, sc.max_retries, cfg.backoff), "config", None
    label = info.labels.get("macula.restart")
    if label is not None:
        try:
            name, retries = parse_restart(label)
        except ValueError as exc:
            return None, "label", f"macula.restart: {exc}"
        return RestartPolicy(name, retries, cfg.backoff), "label", None
    return RestartPolicy(cfg.default_restart, None, cfg.backoff), "default", None


def is_supervised(info: ContainerInfo, service: str, cfg: DockerConfig) -> bool:
    if info.labels.get(COMPOSE_ONEOFF, "").lower() == "true":
        return False
    return service in cfg.services or any(k.startswith("macula.") for k in info.labels)


def service_hold(service: str, tracker: RestartTracker | None, *, error: str | None = None,
                 waiting_on: str | None = None, retry_at: float | None = None) -> ServiceHold | None:
    """What the relay tells a client of `service` while it does not run (None while it runs)."""
    if tracker is None:
        return ServiceHold(service, "failed", f"not supervised: {error}",
                           "fix the macula.restart label, then recreate the container")
    fix = f"maculactl start {service}"
    state = tracker.state
    if state == "running":
        return None
    if state == "stopped":
        reason = "stopped with maculactl stop" if tracker.held else tracker.reason
    elif state == "failed":
        reason = (f"gave up after {tracker.gave_up_after} starts: {tracker.last_cause}" if tracker.gave_up_after
                  else tracker.reason)
    elif waiting_on is not None:
        reason = f"waiting for its dependency {waiting_on}"
    elif tracker.failures:
        reason = f"restarting: attempt {tracker.failures}"
    else:
        reason = "starting"
    return ServiceHold(service, state, reason, fix, retry_at if state == "backoff" and waiting_on is None else None)


def dependency_ready(dep: Dependency, candidates: list[ContainerInfo]) -> bool:
    if dep.condition == "service_completed_successfully":
        return any(c.state == "exited" and c.exit_code == 0 for c in candidates)
    if dep.condition == "service_healthy":
        return any(c.ready for c in candidates)
    return any(c.running for c in candidates)


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
        self._wall = wall
        self._inventory = inventory
        self._api = api
        self._cfg = config
        self._metrics = metrics
        self._events = events
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._units: dict[str, _Unit] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._exported = _Exported()
        #: Called (synchronously) whenever `holds()` changed.
        self.on_holds_changed: Callable[[], None] | None = None
        inventory.subscribe(self._on_update)

    # ------------------------------------------------------------------ public

    def is_restarting(self, service: str) -> bool:
        """True while maculad is bringing the service back (what clients see comes from `holds()`)."""
        for u in self._units.values():
            if u.service != service:
                continue
            if u.info.state == "restarting" or u.busy:
                return True
            if u.tracker is not None and u.tracker.state in ("starting", "backoff"):
                return True
        return False

    def holds(self) -> dict[str, ServiceHold]:
        """Container id → its service's hold, for every supervised container maculad does not see running."""
        return {cid: u.published_hold for cid, u in self._units.items() if u.published_hold is not None}

    def services(self) -> list[ServiceView]:
        out: list[ServiceView] = []
        for u in sorted(self._units.values(), key=lambda u: (u.service, u.info.name)):
            snap: RestartSnapshot = u.tracker.snapshot() if u.tracker is not None else {
                "state": "failed", "reason": u.error or "", "backoff_seconds": 0.0, "policy": None,
            }
            out.append({
                "service": u.service,
                "tier": TIER,
                "container": u.info.name,
                "container_id": u.id[:12],
                "docker_state": u.info.state,
                "health": u.info.health,
                "exit_code": u.info.exit_code,
                "policy_source": u.policy_source,
                "up": u.info.ready,
                "restarts": u.restarts,
                "waiting_on": u.waiting_on,
                "pending": u.action,
                "error": u.error,
                "last_error": u.last_error,
                "compose_project": u.info.compose_project,
                **snap,
            })
        return out

    def status(self) -> SupervisorStatus:
        states: dict[str, int] = {}
        for u in self._units.values():
            s = u.tracker.state if u.tracker is not None else "failed"
            states[s] = states.get(s, 0) + 1
        return {"services": len(self._units), "states": states, "actions_running": len(self._tasks)}

    async def stop_service(self, name: str) -> list[ServiceView]:
        """`maculactl stop`: stop the service's container(s); nothing restarts them until a start."""
        units = self._find(name)
        now = self._clock()
        for u in units:
            assert u.tracker is not None
            u.tracker.on_stop_requested(now)
            self._cancel(u)
            self._publish_state(u)
        for u in units:
            u.busy, u.busy_action = True, "stop"
            t0 = self._wall()
            try:
                await self._api.stop(u.id, timeout=self._stop_timeout)
            except ContainerNotFound:
                pass
            finally:
                u.busy = False
                self._own_window(u, t0)
        self._events.publish("service_stop", service=name, by="request")
        log.info("service_stop_requested", service=name)
        self._wake()
        return self._summary(name)

    async def start_service(self, name: str) -> list[ServiceView]:
        """`maculactl start`: clear a stop or give-up and start (after the dependencies are ready)."""
        return await self._request(name, "start", "service_start")  # a running container answers 304

    async def restart_service(self, name: str) -> list[ServiceView]:
        """`maculactl restart`: restart now (a stopped service is started)."""
        return await self._request(name, "restart", "service_restart_requested")

    async def _request(self, name: str, action: ActionKind, event: str) -> list[ServiceView]:
        units = self._find(name)
        now = self._clock()
        for u in units:
            assert u.tracker is not None
            u.tracker.on_start_requested(now)
            u.failed_due_to = None
            self._schedule(u, action, now, "manual")
        self._events.publish(event, service=name, by="request")
        await self._run_due(now, wait=True)
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
        self._queue.put_nowait(update)

    def _wake(self) -> None:
        self._queue.put_nowait(_Wake())

    async def run(self) -> None:
        if self._inventory.connected:
            self._handle(InventoryUpdate("relist", self._inventory.snapshot), self._clock())
        while True:
            timeout = self._next_timeout(self._clock())
            items: list[_Item] = []
            try:
                items.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                pass
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            now = self._clock()
            for item in items:
                self._handle(item, now)
            await self._run_due(now, wait=False)
            self._export()

    def _next_timeout(self, now: float) -> float | None:
        """Seconds until the next timed decision (an action due, a death still to be judged, a
        stable run resetting the backoff), or None: nothing is due until the next event."""
        deadlines: list[float] = []
        for u in self._units.values():
            if u.due is not None and not u.busy and u.waiting_on is None:
                deadlines.append(u.due)  # a past one acts at once
            later: list[float] = []
            if u.exited_seen_at is not None and u.action is None and not u.busy:
                later.append(max(u.exited_seen_at, u.action_end) + 1.05)
            t = u.tracker
            if t is not None and t.state == "running" and t.running_since is not None and t.failures:
                later.append(t.running_since + t.policy.backoff.reset_after)
            deadlines += [d for d in later if d > now]
        return max(0.0, min(deadlines) - now) if deadlines else None

    # ------------------------------------------------------------------ observing

    def _handle(self, item: _Item, now: float) -> None:
        if isinstance(item, _Wake):
            return
        if isinstance(item, _ActionFailed):
            u = self._units.get(item.unit_id)
            if u is not None and u.tracker is not None:
                u.last_error = item.error
                self._decide(u, u.tracker.on_start_failed(now, item.error), now, "start-failed", None)
            return
        if item.kind == "disconnected":
            for u in self._units.values():
                u.user_kill = False
            return
        if item.kind == "relist":
            for u in self._units.values():
                u.user_kill = False
            for cid in [cid for cid in self._units if cid not in item.snapshot]:
                self._remove(cid)
            for info in item.snapshot.values():
                self._observe(info, now)
            return
        ev = item.event
        if ev is None:
            return
        u = self._units.get(ev.id)
        if u is not None and ev.action in ("kill", "stop") and not self._own(u, ev.time):
            u.user_kill = True
        if item.after is None:
            self._remove(ev.id)
        else:
            self._observe(item.after, now, ev)

    def _observe(self, info: ContainerInfo, now: float, ev: ContainerEvent | None = None) -> None:
        u = self._units.get(info.id)
        svc = service_name(info, self._cfg.compose_project)
        if u is None:
            if not is_supervised(info, svc, self._cfg):
                return
            policy, source, error = resolve_policy(info, svc, self._cfg)
            u = _Unit(id=info.id, service=svc, info=info,
                      tracker=RestartTracker(policy) if policy is not None else None,
                      policy_source=source, error=error)
            self._units[info.id] = u
            if error is not None:
                log.error("service_bad_policy", service=svc, container=info.name, error=error)
                self._events.publish("service_error", service=svc, container=info.name, error=error)
                return
            self._first_sight(u, now)
            self._publish_state(u)
            return
        old, u.info, u.service = u.info, info, svc
        t = u.tracker
        if t is None:
            return
        if info.state in ("exited", "dead"):
            if u.exited_seen_at is None:
                u.exited_seen_at = now
        else:
            u.exited_seen_at = None
        if info.running:
            restarted = not old.running or info.started_at != old.started_at
            if restarted:
                u.user_kill = False
                if u.action == "start":
                    self._cancel(u)
            if info.health == "unhealthy":
                if (restarted or old.health != "unhealthy") and u.action is None and not u.busy:
                    self._decide(u, t.on_unhealthy(now), now, "unhealthy", "restart")
            elif info.health == "starting":
                if t.state not in ("starting", "backoff"):
                    t.on_starting(now)
            else:
                if u.action == "restart" and u.action_reason == "unhealthy":
                    self._cancel(u)  # healthy again before the restart came due
                if t.state != "running" and (restarted or not t.held):
                    t.on_running(now)
                u.failed_due_to = None
        elif info.state in ("exited", "dead"):
            died = old.state in ("running", "restarting", "paused") or info.finished_at != old.finished_at
            when = ev.time if ev is not None and ev.action == "die" and ev.time else parse_time(info.finished_at)
            if died and not self._own(u, when):
                self._died(u, now)
        self._publish_state(u)

    def _own(self, u: _Unit, when: float | None) -> bool:
        """Did a kill or death at wall time `when` come from maculad's own restart or stop?"""
        if u.busy and u.busy_action != "start":
            return True
        if when is None:
            return False
        return any(a - 0.05 <= when <= b + 0.05 for a, b in u.own)

    def _own_window(self, u: _Unit, t0: float) -> None:
        u.own = [*u.own[-4:], (t0, self._wall())]

    def _first_sight(self, u: _Unit, now: float) -> None:
        t, info = u.tracker, u.info
        assert t is not None
        if info.state in ("exited", "dead"):
            u.exited_seen_at = now
        if info.running:
            if info.health == "unhealthy":
                t.on_running(now)
                self._decide(u, t.on_unhealthy(now), now, "unhealthy", "restart")
            elif info.health == "starting":
                t.on_starting(now)
            else:
                t.on_running(now)
        elif info.state in ("exited", "dead"):
            # Not running when maculad (re)starts: after a reboot, a dockerd
            # restart or a crash while nobody watched. Judge it like an exit.
            # ("created" is left alone: whoever created it — compose — starts it.)
            self._decide(u, t.on_exit(now, exit_code=info.exit_code), now, "bring-up", "start")
        elif info.state == "restarting":
            t.on_starting(now)

    def _died(self, u: _Unit, now: float) -> None:
        t = u.tracker
        assert t is not None
        self._cancel(u)
        by_user = u.user_kill
        u.user_kill = False
        d = t.on_exit(now, exit_code=u.info.exit_code, by_user=by_user)
        reason = "oom" if u.info.oom_killed else ("killed" if by_user else "exited")
        log.info("service_exited", service=u.service, container=u.info.name, exit_code=u.info.exit_code,
                 by_user=by_user, decision=d.action, delay=d.delay)
        self._decide(u, d, now, reason, "start")

    def _decide(self, u: _Unit, d: RestartDecision, now: float, reason: str, action: ActionKind | None) -> None:
        if d.action == "restart":
            self._schedule(u, action or "start", now + d.delay, reason)
        elif d.action == "give_up":
            self._cancel(u)
            u.failed_due_to = self._unready_dependency(u)
            assert u.tracker is not None
            log.error("service_gave_up", service=u.service, container=u.info.name, reason=u.tracker.reason,
                      dependency=u.failed_due_to)
            self._events.publish("service_gave_up", service=u.service, container=u.info.name,
                                 reason=u.tracker.reason, dependency=u.failed_due_to)
        self._publish_state(u)

    def _schedule(self, u: _Unit, action: ActionKind, due: float, reason: str) -> None:
        u.action, u.due, u.action_reason = action, due, reason
        u.due_wall = self._wall() + max(0.0, due - self._clock())

    def _cancel(self, u: _Unit) -> None:
        u.action, u.due, u.due_wall, u.action_reason, u.waiting_on = None, None, None, "", None

    def _remove(self, cid: str) -> None:
        u = self._units.pop(cid, None)
        if u is not None:
            log.info("service_container_removed", service=u.service, container=u.info.name)
            if u.published_hold is not None:
                self._holds_changed()

    # ------------------------------------------------------------------ dependencies

    def _dependency_candidates(self, u: _Unit, dep: Dependency) -> list[ContainerInfo]:
        project = u.info.compose_project
        return [c for c in self._inventory.snapshot.values()
                if c.compose_project == project and c.compose_service == dep.service
                and c.labels.get(COMPOSE_ONEOFF, "").lower() != "true"]

    def _unready_dependency(self, u: _Unit) -> str | None:
        if u.info.compose_project is None:
            return None
        for dep in u.info.depends_on:
            if not dependency_ready(dep, self._dependency_candidates(u, dep)):
                return dep.service
        return None

    # ------------------------------------------------------------------ acting

    async def _run_due(self, now: float, *, wait: bool) -> None:
        launched: list[asyncio.Task[None]] = []
        for u in list(self._units.values()):
            t = u.tracker
            if t is None:
                continue
            t.tick(now)
            if (u.action is None and not u.busy and t.state in ("starting", "running")
                    and u.exited_seen_at is not None and now - max(u.exited_seen_at, u.action_end) > 1.0
                    and not self._own(u, parse_time(u.info.finished_at))):
                # a death no observation judged (it happened while our own call was in flight)
                self._died(u, now)
            if t.state == "failed" and u.failed_due_to is not None and self._unready_dependency(u) is None:
                dep = u.failed_due_to
                u.failed_due_to = None
                t.on_start_requested(now)
                log.info("service_retry_after_dependency", service=u.service, dependency=dep)
                self._schedule(u, "restart" if u.info.running else "start", now, "dependency-recovered")
            if u.action is None or u.due is None or u.busy or u.due > now:
                continue
            dep_name = self._unready_dependency(u)
            if dep_name is not None:
                if u.waiting_on != dep_name:
                    u.waiting_on = dep_name
                    t.on_dependency_failed(now, dep_name)
                    log.info("service_waiting_for_dependency", service=u.service, dependency=dep_name)
                    self._publish_state(u)
                continue
            u.waiting_on = None
            action, reason = u.action, u.action_reason
            self._cancel(u)
            task = asyncio.create_task(self._act(u, action, reason), name=f"maculad:docker:{action}:{u.service}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            launched.append(task)
            if reason not in ("bring-up", "dependency-restarted"):
                self._restart_dependents(u, now)
        if wait and launched:
            await asyncio.gather(*launched, return_exceptions=True)

    def _restart_dependents(self, dep_unit: _Unit, now: float) -> None:
        svc = dep_unit.info.compose_service
        if svc is None:
            return
        for u in self._units.values():
            if u is dep_unit or u.tracker is None or u.tracker.held or u.info.compose_project != \
                    dep_unit.info.compose_project:
                continue
            if any(d.service == svc and d.restart for d in u.info.depends_on) and u.info.running and u.action is None:
                self._schedule(u, "restart", now, "dependency-restarted")

    async def _act(self, u: _Unit, action: ActionKind, reason: str) -> None:
        assert u.tracker is not None
        u.busy, u.busy_action = True, action
        t0 = self._wall()
        u.restarts += 1
        u.tracker.on_starting(self._clock())
        self._metrics.service_restarts.labels(service=u.service, reason=reason).inc()
        self._events.publish("service_restart", service=u.service, container=u.info.name, action=action,
                             reason=reason)
        log.info("service_" + action, service=u.service, container=u.info.name, reason=reason)
        self._publish_state(u)
        try:
            if action == "start":
                await self._api.start(u.id)
            else:
                await self._api.restart(u.id, timeout=self._stop_timeout)
        except ContainerNotFound:
            pass
        except (DockerUnavailable, DockerAPIError, TimeoutError) as exc:
            log.warning("service_action_failed", service=u.service, action=action, error=str(exc))
            self._queue.put_nowait(_ActionFailed(u.id, str(exc)))
        finally:
            u.busy = False
            u.action_end = self._clock()
            if action == "restart":
                self._own_window(u, t0)
            self._wake()

    # ------------------------------------------------------------------ reporting

    def _find(self, name: str) -> list[_Unit]:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a service name is required")
        units = [u for u in self._units.values() if u.service == name]
        if not units:
            known = sorted({u.service for u in self._units.values()})
            raise KeyError(f"no supervised Docker service {name!r} (known: {', '.join(known) or 'none'})")
        bad = [u for u in units if u.tracker is None]
        if bad:
            raise ValueError(f"service {name!r} is not supervised: {bad[0].error}")
        return units

    def _summary(self, name: str) -> list[ServiceView]:
        return [s for s in self.services() if s["service"] == name]

    def _publish_state(self, u: _Unit) -> None:
        hold = service_hold(u.service, u.tracker, error=u.error, waiting_on=u.waiting_on, retry_at=u.due_wall)
        if hold != u.published_hold:
            u.published_hold = hold
            self._holds_changed()
        state = u.tracker.state if u.tracker is not None else "failed"
        if state == u.published_state:
            return
        u.published_state = state
        reason = u.tracker.reason if u.tracker is not None else u.error
        self._events.publish("service_state", service=u.service, container=u.info.name, state=state,
                             reason=reason)
        log.info("service_state", service=u.service, state=state, reason=reason)

    def _holds_changed(self) -> None:
        if self.on_holds_changed is not None:
            self.on_holds_changed()

    def _export(self) -> None:
        m = self._metrics
        current: dict[str, _Unit] = {}
        for u in self._units.values():
            prev = current.get(u.service)
            if prev is None or (u.info.running and not prev.info.running):
                current[u.service] = u
        for svc, u in current.items():
            state = u.tracker.state if u.tracker is not None else "failed"
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
