"""What the container supervisor does next, decided from one observation (pure).

`decide(state, observation, now, wall)` returns a `Step`: the next
`SupervisorState` and the actions that carry it out (`Call` a Docker
start/restart/stop, `Publish` an event, `Log` a line). Nothing here does I/O
or reads a clock; `ContainerSupervisor` (containers.py) is the thin executor
that feeds observations in and runs the actions. `now` is monotonic (delays,
deadlines), `wall` is epoch seconds (Docker's event and exit times).

State is explicit and frozen. Each supervised container is a `Unit`: its
latest `ContainerInfo`, a `RestartTracker` (the restart state machine of
policy.py), the start or restart maculad will make (`Pending`: due when, why,
and the dependency it waits for), the Docker call in flight (`InFlight`), and
what judging the next exit needs (`ExitWatch`: our own stop/restart windows,
a kill that was not ours). Trackers are mutable, so `decide` feeds events
only to copies it made in this step: the state passed in is never changed.

Rules (see the tests in tests/test_containers_decide.py):

- Exits are judged by *state transitions* between two snapshots of a
  container (running → exited, a new StartedAt, health → unhealthy), not by
  single events, so a late event, a missed one or a relist after the engine
  came back all lead to the same answer. A `kill`/`stop` event outside our
  own call windows marks the next exit as a person's.
- A container first seen exited (after a reboot, a dockerd restart) is
  judged like an exit; one seen `created` is left to whoever created it.
- A pending start waits for the unit's compose dependencies
  (`service_healthy`, `service_started`, `service_completed_successfully`);
  meanwhile the unit shows `backoff`, waiting. A unit that gave up while a
  dependency was down is retried when it recovers; dependents declared with
  `restart: true` are restarted after maculad restarted their dependency.
- `Tick` (time passed) does the timed jobs one by one: reset the backoff
  after a stable run, judge a death no observation judged (it happened while
  our own call was in flight), retry after a dependency recovered, launch
  what is due. `next_deadline` says when the next one is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from maculad.adapters.docker.model import (
    COMPOSE_ONEOFF,
    ContainerEvent,
    ContainerInfo,
    Dependency,
    parse_time,
    service_name,
)
from maculad.config import DockerConfig
from maculad.core.restart import State, parse_restart
from maculad.routes.model import ServiceHold
from maculad.supervise.policy import RestartDecision, RestartPolicy, RestartSnapshot, RestartTracker

ActionKind = Literal["start", "restart"]
CallKind = Literal["start", "restart", "stop"]
TIER = "docker"

_EXITED = ("exited", "dead")
_OWN_SLACK = 0.05
"""Seconds around an own-call window in which a kill or death still counts as ours."""
_UNJUDGED_AFTER = 1.0
"""Seconds after the last sighting or call before a stopped container no observation judged is judged."""


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Pending:
    """A start or restart maculad will make once `due` has passed and the dependencies are ready."""

    action: ActionKind
    due: float
    """Monotonic time."""
    due_wall: float
    """The same instant as epoch seconds (what a held route's page shows)."""
    reason: str
    waiting_on: str | None = None
    """The dependency that was not ready when it came due (no timer then: its change is an event)."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """A Docker call of maculad's own on the container is running."""

    call: CallKind


@dataclass(frozen=True, slots=True)
class ExitWatch:
    """What judging the container's next exit needs: was it ours, a person's, or a crash?"""

    exited_seen_at: float | None = None
    """Monotonic time the container was first seen exited or dead in this stop (None while it runs)."""
    call_ended_at: float = 0.0
    """Monotonic time our last start or restart call returned."""
    own: tuple[tuple[float, float], ...] = ()
    """Wall-clock windows of maculad's last few stops and restarts: kills and deaths inside them are ours."""
    user_kill: bool = False
    """A kill or stop event that was not ours was seen: the next exit is a person's."""


@dataclass(frozen=True, slots=True)
class Unit:
    """One supervised container."""

    id: str
    service: str
    info: ContainerInfo
    tracker: RestartTracker | None
    """None when its restart policy could not be read (`error` says why): shown, never acted on."""
    policy_source: str
    error: str | None = None
    pending: Pending | None = None
    in_flight: InFlight | None = None
    exits: ExitWatch = ExitWatch()
    failed_due_to: str | None = None
    """It gave up while this dependency was not ready: retried once the dependency is."""
    last_error: str | None = None
    restarts: int = 0
    """Starts and restarts maculad made."""
    published_state: str = ""
    """The state last announced (a `service_state` event is published when it changes)."""
    hold: ServiceHold | None = None
    """What the relay tells clients while the container does not run (None while it runs)."""


@dataclass(frozen=True, slots=True)
class SupervisorState:
    config: DockerConfig
    units: Mapping[str, Unit] = field(default_factory=lambda: MappingProxyType({}))
    """Supervised containers by id."""
    containers: Mapping[str, ContainerInfo] = field(default_factory=lambda: MappingProxyType({}))
    """Every container the inventory knows (dependencies need not be supervised)."""


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class Relist:
    """The inventory listed every container afresh (start, reconnect)."""

    containers: Mapping[str, ContainerInfo]


@dataclass(frozen=True, slots=True)
class Changed:
    """One engine event and the container it names as inspected after it (None once removed)."""

    event: ContainerEvent
    after: ContainerInfo | None
    containers: Mapping[str, ContainerInfo]


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The engine went away; the last snapshot is kept."""

    containers: Mapping[str, ContainerInfo]


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: do what is due."""


@dataclass(frozen=True, slots=True)
class StopRequested:
    """`maculactl stop SERVICE`."""

    service: str


@dataclass(frozen=True, slots=True)
class StartRequested:
    """`maculactl start|restart SERVICE`."""

    service: str
    action: ActionKind


@dataclass(frozen=True, slots=True)
class CallDone:
    """A `Call` returned; `error` is the engine's refusal (a container already gone is not an error)."""

    unit_id: str
    call: CallKind
    started_wall: float
    error: str | None = None


Observation = Relist | Changed | Disconnected | Tick | StopRequested | StartRequested | CallDone


# --------------------------------------------------------------------------- actions

Fields = tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class Call:
    """Make a Docker call on a container; the executor reports `CallDone` when it returns."""

    call: CallKind
    unit_id: str
    service: str
    container: str
    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """An event for the event bus (`maculactl events`)."""

    kind: str
    fields: Fields


@dataclass(frozen=True, slots=True)
class Log:
    event: str
    level: Literal["info", "error"]
    fields: Fields


Action = Call | Publish | Log


@dataclass(frozen=True, slots=True)
class Step:
    state: SupervisorState
    actions: tuple[Action, ...]


# --------------------------------------------------------------------------- pure helpers


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


def dependency_ready(dep: Dependency, candidates: Iterable[ContainerInfo]) -> bool:
    if dep.condition == "service_completed_successfully":
        return any(c.state == "exited" and c.exit_code == 0 for c in candidates)
    if dep.condition == "service_healthy":
        return any(c.ready for c in candidates)
    return any(c.running for c in candidates)


def unready_dependency(info: ContainerInfo, containers: Mapping[str, ContainerInfo]) -> str | None:
    """The first compose dependency of `info` whose condition does not hold, or None."""
    project = info.compose_project
    if project is None:
        return None
    for dep in info.depends_on:
        candidates = (c for c in containers.values()
                      if c.compose_project == project and c.compose_service == dep.service
                      and c.labels.get(COMPOSE_ONEOFF, "").lower() != "true")
        if not dependency_ready(dep, candidates):
            return dep.service
    return None


def unit_state(u: Unit) -> State:
    return u.tracker.state if u.tracker is not None else "failed"


def holds(state: SupervisorState) -> dict[str, ServiceHold]:
    """Container id → its service's hold, for every supervised container maculad does not see running."""
    return {cid: u.hold for cid, u in state.units.items() if u.hold is not None}


def is_restarting(state: SupervisorState, service: str) -> bool:
    """True while maculad is bringing the service back."""
    for u in state.units.values():
        if u.service != service:
            continue
        if u.info.state == "restarting" or u.in_flight is not None:
            return True
        if u.tracker is not None and u.tracker.state in ("starting", "backoff"):
            return True
    return False


def find(state: SupervisorState, name: str) -> list[Unit]:
    """The units a `maculactl start|stop|restart NAME` acts on; KeyError/ValueError say why there are none."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a service name is required")
    units = [u for u in state.units.values() if u.service == name]
    if not units:
        known = sorted({u.service for u in state.units.values()})
        raise KeyError(f"no supervised Docker service {name!r} (known: {', '.join(known) or 'none'})")
    bad = [u for u in units if u.tracker is None]
    if bad:
        raise ValueError(f"service {name!r} is not supervised: {bad[0].error}")
    return units


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


def service_views(state: SupervisorState) -> list[ServiceView]:
    out: list[ServiceView] = []
    for u in sorted(state.units.values(), key=lambda u: (u.service, u.info.name)):
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
            "waiting_on": u.pending.waiting_on if u.pending is not None else None,
            "pending": u.pending.action if u.pending is not None else None,
            "error": u.error,
            "last_error": u.last_error,
            "compose_project": u.info.compose_project,
            **snap,
        })
    return out


def next_deadline(state: SupervisorState, now: float) -> float | None:
    """Seconds until the next timed decision (an action due, a death still to be judged, a stable run
    resetting the backoff), or None: nothing is due until the next observation."""
    deadlines: list[float] = []
    for u in state.units.values():
        p = u.pending
        if p is not None and u.in_flight is None and p.waiting_on is None:
            deadlines.append(p.due)  # a past one acts at once
        later: list[float] = []
        x, t = u.exits, u.tracker
        if (x.exited_seen_at is not None and p is None and u.in_flight is None and t is not None
                and t.state in ("starting", "running")):  # what `_judge_unseen_death` acts on
            later.append(max(x.exited_seen_at, x.call_ended_at) + _UNJUDGED_AFTER + _OWN_SLACK)
        if t is not None and t.state == "running" and t.running_since is not None and t.failures:
            later.append(t.running_since + t.policy.backoff.reset_after)
        deadlines += [d for d in later if d > now]
    return max(0.0, min(deadlines) - now) if deadlines else None


# --------------------------------------------------------------------------- decide


def decide(state: SupervisorState, obs: Observation, now: float, wall: float) -> Step:
    """The next state and the actions that carry it out. `state` is not changed."""
    d = _Draft(state, now, wall)
    if isinstance(obs, Relist):
        d.containers = obs.containers
        d.forget_kills()
        for cid in [cid for cid in d.units if cid not in obs.containers]:
            d.remove(cid)
        for info in obs.containers.values():
            _observe(d, info, None)
    elif isinstance(obs, Changed):
        d.containers = obs.containers
        _changed(d, obs.event, obs.after)
    elif isinstance(obs, Disconnected):
        d.containers = obs.containers
        d.forget_kills()
    elif isinstance(obs, Tick):
        for cid in list(d.units):
            _tick(d, cid)
    elif isinstance(obs, StopRequested):
        _stop(d, obs.service)
    elif isinstance(obs, StartRequested):
        _start(d, obs.service, obs.action)
    else:
        _call_done(d, obs)
    return d.finish()


class _Draft:
    """The state being built by one `decide` call.

    Units are replaced whole, always from the latest version by id (`put(cid, field=...)`), so a rule
    never writes back a stale copy; a unit's tracker is copied on first use (`tracker(cid)`).
    """

    def __init__(self, state: SupervisorState, now: float, wall: float) -> None:
        self.state = state
        self.now = now
        self.wall = wall
        self.units: dict[str, Unit] = dict(state.units)
        self.containers = state.containers
        self.actions: list[Action] = []
        self._owned: set[str] = set()

    def finish(self) -> Step:
        new = replace(self.state, units=MappingProxyType(self.units), containers=self.containers)
        return Step(new, tuple(self.actions))

    def get(self, cid: str) -> Unit:
        return self.units[cid]

    def put(self, cid: str, **changes: Any) -> Unit:
        u = replace(self.units[cid], **changes)
        self.units[cid] = u
        return u

    def add(self, u: Unit) -> None:
        """A unit first seen in this step (its tracker is new, so this step's already)."""
        self.units[u.id] = u
        self._owned.add(u.id)

    def remove(self, cid: str) -> None:
        u = self.units.pop(cid, None)
        if u is not None:
            self.log("service_container_removed", service=u.service, container=u.info.name)

    def tracker(self, cid: str) -> RestartTracker:
        """The unit's tracker, safe to feed events: a copy owned by this step."""
        t = self.units[cid].tracker
        assert t is not None
        if cid not in self._owned:
            t = t.copy()
            self._owned.add(cid)
            self.put(cid, tracker=t)
        return t

    def log(self, event: str, level: Literal["info", "error"] = "info", **fields: object) -> None:
        self.actions.append(Log(event, level, tuple(fields.items())))

    def publish(self, kind: str, **fields: object) -> None:
        self.actions.append(Publish(kind, tuple(fields.items())))

    def forget_kills(self) -> None:
        """Across a relist or a disconnect an earlier kill no longer says who ends the next run."""
        for cid, u in list(self.units.items()):
            if u.exits.user_kill:
                self.put(cid, exits=replace(u.exits, user_kill=False))


# --------------------------------------------------------------------------- observing


def _changed(d: _Draft, ev: ContainerEvent, after: ContainerInfo | None) -> None:
    u = d.units.get(ev.id)
    if u is not None and ev.action in ("kill", "stop") and not _own(u, ev.time):
        d.put(u.id, exits=replace(u.exits, user_kill=True))
    if after is None:
        d.remove(ev.id)
    else:
        _observe(d, after, ev)


def _observe(d: _Draft, info: ContainerInfo, ev: ContainerEvent | None) -> None:
    svc = service_name(info, d.state.config.compose_project)
    cid = info.id
    if cid not in d.units:
        _first_sight(d, info, svc)
        return
    old = d.get(cid).info
    u = d.put(cid, info=info, service=svc)
    if u.tracker is None:
        return
    exited = info.state in _EXITED
    seen = (u.exits.exited_seen_at if u.exits.exited_seen_at is not None else d.now) if exited else None
    if seen != u.exits.exited_seen_at:
        d.put(cid, exits=replace(u.exits, exited_seen_at=seen))
    if info.running:
        _observe_running(d, cid, old)
    elif exited:
        died = old.state in ("running", "restarting", "paused") or info.finished_at != old.finished_at
        when = ev.time if ev is not None and ev.action == "die" and ev.time else parse_time(info.finished_at)
        if died and not _own(d.get(cid), when):
            _died(d, cid)
    _publish_state(d, cid)


def _observe_running(d: _Draft, cid: str, old: ContainerInfo) -> None:
    u = d.get(cid)
    info = u.info
    restarted = not old.running or info.started_at != old.started_at
    if restarted:
        u = d.put(cid, exits=replace(u.exits, user_kill=False))
        if u.pending is not None and u.pending.action == "start":
            u = d.put(cid, pending=None)  # it runs: the start we meant to make is moot
    t = d.tracker(cid)
    if info.health == "unhealthy":
        if (restarted or old.health != "unhealthy") and u.pending is None and u.in_flight is None:
            _apply(d, cid, t.on_unhealthy(d.now), "unhealthy", "restart")
    elif info.health == "starting":
        if t.state not in ("starting", "backoff"):
            t.on_starting(d.now)
    else:
        if u.pending is not None and u.pending.action == "restart" and u.pending.reason == "unhealthy":
            d.put(cid, pending=None)  # healthy again before the restart came due
        if t.state != "running" and (restarted or not t.held):
            t.on_running(d.now)
        d.put(cid, failed_due_to=None)


def _first_sight(d: _Draft, info: ContainerInfo, svc: str) -> None:
    cfg = d.state.config
    if not is_supervised(info, svc, cfg):
        return
    policy, source, error = resolve_policy(info, svc, cfg)
    cid = info.id
    d.add(Unit(id=cid, service=svc, info=info, tracker=RestartTracker(policy) if policy is not None else None,
               policy_source=source, error=error,
               exits=ExitWatch(exited_seen_at=d.now if info.state in _EXITED else None)))
    if error is not None:
        d.log("service_bad_policy", "error", service=svc, container=info.name, error=error)
        d.publish("service_error", service=svc, container=info.name, error=error)
        return
    t = d.tracker(cid)
    if info.running:
        if info.health == "unhealthy":
            t.on_running(d.now)
            _apply(d, cid, t.on_unhealthy(d.now), "unhealthy", "restart")
        elif info.health == "starting":
            t.on_starting(d.now)
        else:
            t.on_running(d.now)
    elif info.state in _EXITED:
        # Not running when maculad (re)starts: after a reboot, a dockerd
        # restart or a crash while nobody watched. Judge it like an exit.
        # ("created" is left alone: whoever created it — compose — starts it.)
        _apply(d, cid, t.on_exit(d.now, exit_code=info.exit_code), "bring-up", "start")
    elif info.state == "restarting":
        t.on_starting(d.now)
    _publish_state(d, cid)


def _own(u: Unit, when: float | None) -> bool:
    """Did a kill or death at wall time `when` come from maculad's own restart or stop?"""
    if u.in_flight is not None and u.in_flight.call != "start":
        return True
    if when is None:
        return False
    return any(a - _OWN_SLACK <= when <= b + _OWN_SLACK for a, b in u.exits.own)


def _died(d: _Draft, cid: str) -> None:
    u = d.get(cid)
    by_user = u.exits.user_kill
    u = d.put(cid, pending=None, exits=replace(u.exits, user_kill=False))
    decision = d.tracker(cid).on_exit(d.now, exit_code=u.info.exit_code, by_user=by_user)
    reason = "oom" if u.info.oom_killed else ("killed" if by_user else "exited")
    d.log("service_exited", service=u.service, container=u.info.name, exit_code=u.info.exit_code,
          by_user=by_user, decision=decision.action, delay=decision.delay)
    _apply(d, cid, decision, reason, "start")


def _apply(d: _Draft, cid: str, decision: RestartDecision, reason: str, action: ActionKind | None) -> None:
    """Carry a tracker's decision into the unit: schedule the restart, or record the give-up."""
    if decision.action == "restart":
        _schedule(d, cid, action or "start", d.now + decision.delay, reason)
    elif decision.action == "give_up":
        u = d.get(cid)
        dep = unready_dependency(u.info, d.containers)
        u = d.put(cid, pending=None, failed_due_to=dep)
        why = u.tracker.reason if u.tracker is not None else ""
        d.log("service_gave_up", "error", service=u.service, container=u.info.name, reason=why, dependency=dep)
        d.publish("service_gave_up", service=u.service, container=u.info.name, reason=why, dependency=dep)
    _publish_state(d, cid)


def _schedule(d: _Draft, cid: str, action: ActionKind, due: float, reason: str) -> None:
    d.put(cid, pending=Pending(action, due, d.wall + max(0.0, due - d.now), reason))


def _publish_state(d: _Draft, cid: str) -> None:
    u = d.get(cid)
    p = u.pending
    hold = service_hold(u.service, u.tracker, error=u.error, waiting_on=p.waiting_on if p is not None else None,
                        retry_at=p.due_wall if p is not None else None)
    if hold != u.hold:
        u = d.put(cid, hold=hold)
    state = unit_state(u)
    if state == u.published_state:
        return
    d.put(cid, published_state=state)
    reason = u.tracker.reason if u.tracker is not None else u.error
    d.publish("service_state", service=u.service, container=u.info.name, state=state, reason=reason)
    d.log("service_state", service=u.service, state=state, reason=reason)


# --------------------------------------------------------------------------- requests and calls


def _supervised(d: _Draft, service: str) -> list[str]:
    return [cid for cid, u in d.units.items() if u.service == service and u.tracker is not None]


def _stop(d: _Draft, service: str) -> None:
    cids = _supervised(d, service)
    for cid in cids:
        d.tracker(cid).on_stop_requested(d.now)
        d.put(cid, pending=None)
        _publish_state(d, cid)
    for cid in cids:
        u = d.put(cid, in_flight=InFlight("stop"))
        d.actions.append(Call("stop", cid, u.service, u.info.name, "request"))
    d.publish("service_stop", service=service, by="request")
    d.log("service_stop_requested", service=service)


def _start(d: _Draft, service: str, action: ActionKind) -> None:
    for cid in _supervised(d, service):
        d.tracker(cid).on_start_requested(d.now)
        d.put(cid, failed_due_to=None)
        _schedule(d, cid, action, d.now, "manual")
    d.publish("service_start" if action == "start" else "service_restart_requested", service=service, by="request")


def _call_done(d: _Draft, done: CallDone) -> None:
    u = d.units.get(done.unit_id)
    if u is None:
        return
    cid = u.id
    x = u.exits
    if done.call != "stop":
        x = replace(x, call_ended_at=d.now)
    if done.call != "start":
        x = replace(x, own=(*x.own[-4:], (done.started_wall, d.wall)))
    u = d.put(cid, in_flight=None, exits=x)
    if done.error is not None and done.call != "stop" and u.tracker is not None:
        d.put(cid, last_error=done.error)
        _apply(d, cid, d.tracker(cid).on_start_failed(d.now, done.error), "start-failed", None)


# --------------------------------------------------------------------------- time passed


def _tick(d: _Draft, cid: str) -> None:
    """The timed jobs, one at a time, for one unit."""
    if d.get(cid).tracker is None:
        return
    _reset_after_stable_run(d, cid)
    _judge_unseen_death(d, cid)
    _retry_after_dependency(d, cid)
    _launch_if_due(d, cid)


def _reset_after_stable_run(d: _Draft, cid: str) -> None:
    t = d.get(cid).tracker
    assert t is not None
    if (t.failures and t.state == "running" and t.running_since is not None
            and d.now - t.running_since >= t.policy.backoff.reset_after):
        d.tracker(cid).tick(d.now)


def _judge_unseen_death(d: _Draft, cid: str) -> None:
    """A stop no observation judged: it happened while our own call was in flight."""
    u = d.get(cid)
    x = u.exits
    if (u.pending is None and u.in_flight is None and u.tracker is not None
            and u.tracker.state in ("starting", "running") and x.exited_seen_at is not None
            and d.now - max(x.exited_seen_at, x.call_ended_at) > _UNJUDGED_AFTER
            and not _own(u, parse_time(u.info.finished_at))):
        _died(d, cid)


def _retry_after_dependency(d: _Draft, cid: str) -> None:
    """A unit that gave up while a dependency was down is started again once the dependency is ready."""
    u = d.get(cid)
    if u.tracker is None or u.tracker.state != "failed" or u.failed_due_to is None:
        return
    if unready_dependency(u.info, d.containers) is not None:
        return
    d.put(cid, failed_due_to=None)
    d.tracker(cid).on_start_requested(d.now)
    d.log("service_retry_after_dependency", service=u.service, dependency=u.failed_due_to)
    _schedule(d, cid, "restart" if u.info.running else "start", d.now, "dependency-recovered")


def _launch_if_due(d: _Draft, cid: str) -> None:
    """A pending start or restart that came due: wait for an unready dependency, or make the call."""
    u = d.get(cid)
    p = u.pending
    if p is None or u.in_flight is not None or p.due > d.now:
        return
    dep = unready_dependency(u.info, d.containers)
    if dep is not None:
        if p.waiting_on != dep:
            d.put(cid, pending=replace(p, waiting_on=dep))
            d.tracker(cid).on_dependency_failed(d.now, dep)
            d.log("service_waiting_for_dependency", service=u.service, dependency=dep)
            _publish_state(d, cid)
        return
    d.put(cid, pending=None, in_flight=InFlight(p.action), restarts=u.restarts + 1)
    d.tracker(cid).on_starting(d.now)
    d.actions.append(Call(p.action, cid, u.service, u.info.name, p.reason))
    d.publish("service_restart", service=u.service, container=u.info.name, action=p.action, reason=p.reason)
    d.log("service_" + p.action, service=u.service, container=u.info.name, reason=p.reason)
    _publish_state(d, cid)
    if p.reason not in ("bring-up", "dependency-restarted"):
        _restart_dependents(d, cid)


def _restart_dependents(d: _Draft, dep_id: str) -> None:
    """Dependents declared with `restart: true` follow a dependency maculad restarted."""
    dep_info = d.get(dep_id).info
    svc = dep_info.compose_service
    if svc is None:
        return
    for cid, u in list(d.units.items()):
        if (cid == dep_id or u.tracker is None or u.tracker.held
                or u.info.compose_project != dep_info.compose_project):
            continue
        if (any(dep.service == svc and dep.restart for dep in u.info.depends_on) and u.info.running
                and u.pending is None):
            _schedule(d, cid, "restart", d.now, "dependency-restarted")
