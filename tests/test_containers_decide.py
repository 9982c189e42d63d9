"""The container supervisor's decisions, table-tested without Docker, clocks or tasks.

Each test drives `decide(state, observation, now, wall)` with made-up container
snapshots and checks the actions it returns (the Docker calls, the events) and
the state it leaves. The executor that runs those actions against a real
engine is tested in test_docker_supervise.py, test_docker_compose.py and
test_docker_held.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from maculad.adapters.docker.model import COMPOSE_ONEOFF, ContainerEvent, ContainerInfo, Dependency
from maculad.config import BackoffConfig, DockerConfig, ServiceConfig
from maculad.supervise.containers_decide import (
    Action,
    Call,
    CallDone,
    Changed,
    Disconnected,
    Log,
    Observation,
    Publish,
    Relist,
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
)

EPOCH = 1_700_000_000.0
FAST = BackoffConfig(initial=0.2, factor=2.0, cap=1.0, reset_after=10.0, start_limit=4, start_limit_window=60.0)
CFG = DockerConfig(backoff=FAST)


def rfc(t: float | None) -> str:
    """A wall time as Docker writes it (RFC 3339, UTC, nanoseconds)."""
    if t is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(EPOCH + t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def box(name: str, state: str = "running", *, restart: str | None = "always", health: str | None = None,
        exit_code: int | None = None, started: float = 0.0, finished: float | None = None,
        project: str | None = None, depends: tuple[Dependency, ...] = (),
        labels: Mapping[str, str] | None = None) -> ContainerInfo:
    lab = dict(labels or {})
    if restart is not None:
        lab["macula.restart"] = restart
    return ContainerInfo(
        id=name, name=name, labels=lab, state=state, health=health,
        exit_code=exit_code if exit_code is not None else (None if state == "running" else 0),
        started_at=rfc(started), finished_at=rfc(finished) if state != "running" or finished is not None else rfc(None),
        compose_project=project, compose_service=name if project else None, depends_on=depends,
    )


def exited(c: ContainerInfo, code: int, at: float) -> ContainerInfo:
    return replace(c, state="exited", exit_code=code, finished_at=rfc(at))


def running(c: ContainerInfo, at: float, health: str | None = None) -> ContainerInfo:
    return replace(c, state="running", started_at=rfc(at), health=health)


class Sim:
    """One supervisor state, a clock, and the containers the inventory knows."""

    def __init__(self, cfg: DockerConfig = CFG) -> None:
        self.state = SupervisorState(config=cfg)
        self.now = 0.0
        self.containers: dict[str, ContainerInfo] = {}

    def feed(self, obs: Observation) -> tuple[Action, ...]:
        step = decide(self.state, obs, self.now, EPOCH + self.now)
        self.state = step.state
        return step.actions

    def relist(self, *infos: ContainerInfo) -> tuple[Action, ...]:
        self.containers = {c.id: c for c in infos}
        return self.feed(Relist(dict(self.containers)))

    def change(self, info: ContainerInfo, action: str, at: float | None = None) -> tuple[Action, ...]:
        self.containers[info.id] = info
        ev = ContainerEvent(info.id, action, name=info.name, time=EPOCH + (self.now if at is None else at))
        return self.feed(Changed(ev, info, dict(self.containers)))

    def tick(self, at: float | None = None) -> tuple[Action, ...]:
        if at is not None:
            self.now = at
        return self.feed(Tick())

    def unit(self, cid: str) -> Unit:
        return self.state.units[cid]

    def tracker_state(self, cid: str) -> str:
        t = self.unit(cid).tracker
        assert t is not None
        return t.state


def calls(actions: tuple[Action, ...]) -> list[tuple[str, str, str]]:
    return [(a.call, a.unit_id, a.reason) for a in actions if isinstance(a, Call)]


def events(actions: tuple[Action, ...], kind: str) -> list[dict[str, object]]:
    return [dict(a.fields) for a in actions if isinstance(a, Publish) and a.kind == kind]


# --------------------------------------------------------------------------- first sight


@pytest.mark.parametrize(("restart", "state", "code", "tracker", "pending"), [
    ("always", "exited", 1, "backoff", "start"),          # after a reboot: judged like an exit
    ("always", "exited", 0, "backoff", "start"),
    ("unless-stopped", "exited", 3, "backoff", "start"),
    ("on-failure", "exited", 0, "stopped", None),          # a clean exit is not restarted
    ("on-failure", "exited", 2, "backoff", "start"),
    ("no", "exited", 4, "failed", None),
    ("no", "exited", 0, "stopped", None),
    ("always", "created", None, "stopped", None),          # whoever created it (compose) starts it
    ("always", "running", None, "running", None),
    ("always", "restarting", None, "starting", None),
])
def test_a_container_first_seen_is_judged_by_its_policy(restart: str, state: str, code: int | None,
                                                        tracker: str, pending: str | None) -> None:
    s = Sim()
    s.relist(box("web", state, restart=restart, exit_code=code, finished=-5.0))
    u = s.unit("web")
    assert s.tracker_state("web") == tracker
    assert (u.pending.action if u.pending else None) == pending
    if pending is not None:
        assert u.pending is not None and u.pending.reason == "bring-up" and u.pending.due == pytest.approx(0.2)
        assert calls(s.tick(0.1)) == []
        assert calls(s.tick(0.2)) == [("start", "web", "bring-up")]
        assert s.tracker_state("web") == "starting" and s.unit("web").restarts == 1


def test_only_labelled_or_configured_non_oneoff_containers_are_supervised() -> None:
    s = Sim(replace(CFG, services={"db": ServiceConfig(restart="no")}))
    s.relist(box("plain", restart=None), box("db", restart=None),
             box("oneoff", labels={COMPOSE_ONEOFF: "True"}), box("web"))
    assert sorted(s.state.units) == ["db", "web"]
    assert s.unit("db").policy_source == "config" and s.unit("web").policy_source == "label"


def test_a_bad_restart_label_is_shown_failed_and_held_never_acted_on() -> None:
    s = Sim()
    acts = s.relist(box("bad", "exited", restart="sometimes", exit_code=1, finished=-1.0))
    assert events(acts, "service_error")[0]["service"] == "bad"
    assert s.unit("bad").tracker is None and calls(s.tick(30.0)) == []
    view = service_views(s.state)[0]
    assert view["state"] == "failed" and "sometimes" in str(view["error"])
    with pytest.raises(ValueError, match="not supervised"):
        find(s.state, "bad")


# --------------------------------------------------------------------------- exits


@pytest.mark.parametrize(("restart", "killed", "reason", "tracker", "pending"), [
    ("always", False, "exited", "backoff", "start"),
    ("always", True, "killed", "backoff", "start"),           # `always` restarts even a person's kill
    ("unless-stopped", True, "killed", "stopped", None),      # a person's stop is respected
    ("unless-stopped", False, "exited", "backoff", "start"),
    ("no", False, "exited", "failed", None),
])
def test_an_exit_is_judged_as_a_crash_or_a_persons_stop(restart: str, killed: bool, reason: str, tracker: str,
                                                        pending: str | None) -> None:
    s = Sim()
    c = box("web", restart=restart)
    s.relist(c)
    s.now = 5.0
    if killed:
        s.change(c, "kill")  # not inside any call of ours
    acts = s.change(exited(c, 137 if killed else 1, 5.0), "die")
    assert s.tracker_state("web") == tracker
    u = s.unit("web")
    assert (u.pending.action if u.pending else None) == pending
    if pending is not None:
        assert u.pending is not None and u.pending.reason == reason
        assert "restarting in 0.2s" in str(events(acts, "service_state")[0]["reason"])
        assert calls(s.tick(5.2)) == [("start", "web", reason)]


def test_a_crash_loop_backs_off_then_gives_up_visibly() -> None:
    s = Sim()
    c = box("crash")
    s.relist(c)
    delays = []
    for i in range(5):
        s.now = 10.0 * (i + 1)
        acts = s.change(exited(c, 3, s.now), "die")
        if s.unit("crash").pending is None:
            break
        delays.append(str(events(acts, "service_state")[0]["reason"]).split("restarting in ")[1])
        assert calls(s.tick(s.now + 1.0)) == [("start", "crash", "exited")]
        s.feed(CallDone("crash", "start", EPOCH + s.now))
        s.change(running(c, s.now), "start")
    assert delays == ["0.2s", "0.4s", "0.8s", "1s"]
    assert s.tracker_state("crash") == "failed"
    assert events(acts, "service_gave_up")[0]["reason"] == (
        "gave up: 4 restarts within 60s (start limit); last: exited with code 3")
    assert holds(s.state)["crash"].reason == "gave up after 5 starts: exited with code 3"
    assert not is_restarting(s.state, "crash") and s.unit("crash").restarts == 4


def test_a_stable_run_resets_the_backoff_on_a_tick() -> None:
    s = Sim()
    c = box("web")
    s.relist(c)
    s.now = 1.0
    s.change(exited(c, 1, 1.0), "die")
    s.tick(1.2)
    s.now = 1.3
    s.feed(CallDone("web", "start", EPOCH + 1.2))
    s.change(running(c, 1.3), "start")
    assert next_deadline(s.state, s.now) == pytest.approx(1.3 + 10.0 - s.now)  # the stable-run timer
    s.tick(11.4)
    t = s.unit("web").tracker
    assert t is not None and t.failures == 0
    s.now = 12.0
    s.change(exited(c, 1, 12.0), "die")
    u = s.unit("web")
    assert u.pending is not None and u.pending.due == pytest.approx(12.2)  # the initial delay again


def test_our_own_restart_is_not_judged_as_an_exit_and_its_kill_not_as_a_persons() -> None:
    s = Sim()
    c = box("web", restart="unless-stopped")
    s.relist(c)
    s.feed(StartRequested("web", "restart"))
    assert calls(s.tick(2.0)) == [("restart", "web", "manual")]
    s.change(c, "kill", at=2.1)                              # ours: a restart is in flight
    acts = s.change(exited(c, 137, 2.1), "die")
    assert not any(isinstance(a, Log) and a.event == "service_exited" for a in acts)
    s.now = 2.5
    s.feed(CallDone("web", "restart", EPOCH + 2.0))
    s.change(running(c, 2.4), "start")
    assert s.tracker_state("web") == "running" and s.unit("web").pending is None
    assert not s.unit("web").exits.user_kill


@pytest.mark.parametrize(("finished", "judged"), [
    (2.5, False),  # it died during our restart: ours
    (1.5, True),   # it died before our restart began (the event came late): a crash, judged after the call
])
def test_a_death_seen_during_our_restart_is_judged_after_it_unless_it_was_ours(finished: float,
                                                                              judged: bool) -> None:
    s = Sim()
    c = box("web")
    s.relist(c)
    s.feed(StartRequested("web", "restart"))
    s.tick(2.0)
    s.now = 2.6
    s.change(exited(c, 1, finished), "die")             # a restart is in flight: not judged now
    assert s.unit("web").pending is None and s.tracker_state("web") == "starting"
    s.now = 2.7
    s.feed(CallDone("web", "restart", EPOCH + 2.0))     # our window: [2.0, 2.7]
    assert next_deadline(s.state, s.now) == pytest.approx(1.05)
    s.tick(3.6)
    assert s.unit("web").pending is None                # not yet: a late event may still say more
    s.tick(3.75)
    u = s.unit("web")
    assert (u.pending is not None) == judged
    if judged:
        assert u.pending is not None and u.pending.reason == "exited"


# --------------------------------------------------------------------------- health


def test_unhealthy_is_restarted_unless_it_recovers_first() -> None:
    s = Sim()
    c = box("sick", health="healthy")
    s.relist(c)
    s.change(replace(c, health="unhealthy"), "health_status")
    u = s.unit("sick")
    assert u.pending is not None and (u.pending.action, u.pending.reason) == ("restart", "unhealthy")
    s.change(replace(c, health="healthy"), "health_status")  # healthy again before it came due
    assert s.unit("sick").pending is None and s.tracker_state("sick") == "running"
    s.change(replace(c, health="unhealthy"), "health_status")
    assert calls(s.tick(1.0)) == [("restart", "sick", "unhealthy")]


# --------------------------------------------------------------------------- requests and calls


def test_maculactl_stop_holds_the_service_until_a_start() -> None:
    s = Sim()
    c = box("web")
    s.relist(c)
    s.now = 1.0
    acts = s.feed(StopRequested("web"))
    assert calls(acts) == [("stop", "web", "request")] and events(acts, "service_stop")
    assert s.tracker_state("web") == "stopped" and is_restarting(s.state, "web")  # the stop is in flight
    s.change(c, "kill", at=1.1)
    s.change(exited(c, 0, 1.2), "die")
    s.now = 1.3
    s.feed(CallDone("web", "stop", EPOCH + 1.0))
    assert s.tracker_state("web") == "stopped" and s.unit("web").pending is None
    assert holds(s.state)["web"].reason == "stopped with maculactl stop"
    assert calls(s.tick(100.0)) == [] and next_deadline(s.state, s.now) is None  # held, even under always

    s.feed(StartRequested("web", "start"))
    assert calls(s.tick()) == [("start", "web", "manual")]


def test_a_start_clears_a_give_up() -> None:
    s = Sim()
    s.relist(box("web", "exited", restart="no", exit_code=1, finished=-1.0))
    assert s.tracker_state("web") == "failed"
    acts = s.feed(StartRequested("web", "start"))
    assert events(acts, "service_start") == [{"service": "web", "by": "request"}]
    assert calls(s.tick()) == [("start", "web", "manual")]


def test_a_refused_start_is_retried_with_backoff_and_its_error_kept() -> None:
    s = Sim()
    s.relist(box("web", "exited", exit_code=1, finished=-1.0))
    s.tick(0.2)
    s.now = 0.3
    s.feed(CallDone("web", "start", EPOCH + 0.2, error="port is already allocated"))
    u = s.unit("web")
    assert u.last_error == "port is already allocated" and u.in_flight is None
    assert u.pending is not None and (u.pending.action, u.pending.reason) == ("start", "start-failed")
    assert u.pending.due == pytest.approx(0.3 + 0.4)


def test_find_names_the_known_services() -> None:
    s = Sim()
    s.relist(box("web"))
    with pytest.raises(KeyError, match=r"known: web"):
        find(s.state, "nope")
    with pytest.raises(ValueError, match="required"):
        find(s.state, " ")


# --------------------------------------------------------------------------- dependencies


def test_a_due_start_waits_for_its_dependency_without_a_timer() -> None:
    s = Sim()
    db = box("db", "exited", project="p", exit_code=0, finished=-1.0, restart="no")
    app = box("app", "exited", project="p", exit_code=1, finished=-1.0,
              depends=(Dependency("db", "service_healthy"),))
    s.relist(db, app)
    acts = s.tick(0.5)
    assert calls(acts) == []
    pending = s.unit("app").pending
    assert pending is not None and pending.waiting_on == "db"
    assert [dict(a.fields) for a in acts if isinstance(a, Log) and a.event == "service_waiting_for_dependency"]
    assert s.tracker_state("app") == "backoff" and service_views(s.state)[0]["waiting_on"] == "db"
    assert holds(s.state)["app"].reason == "waiting for its dependency db"
    assert next_deadline(s.state, s.now) is None  # the dependency's change is an event
    s.change(running(db, 1.0, health="starting"), "start")
    assert calls(s.tick()) == []                   # started is not healthy
    s.change(running(db, 1.0, health="healthy"), "health_status")
    assert calls(s.tick()) == [("start", "app", "bring-up")]


def test_a_give_up_caused_by_a_down_dependency_is_retried_when_it_recovers() -> None:
    s = Sim()
    db = box("db", "exited", project="p", restart="no", finished=-1.0)
    app = box("app", project="p", restart="on-failure:0", depends=(Dependency("db"),))
    s.relist(db, app)
    s.now = 1.0
    acts = s.change(exited(app, 1, 1.0), "die")
    assert events(acts, "service_gave_up")[0]["dependency"] == "db"
    assert s.tracker_state("app") == "failed" and s.unit("app").failed_due_to == "db"
    s.change(running(db, 2.0), "start")
    acts = s.tick(2.0)
    assert calls(acts) == [("start", "app", "dependency-recovered")]


def test_dependents_with_restart_true_follow_a_dependency_maculad_restarted() -> None:
    s = Sim()
    db = box("db", project="p")
    app = box("app", project="p", depends=(Dependency("db", restart=True),))
    other = box("other", project="p", depends=(Dependency("db"),))
    s.relist(db, app, other)
    s.feed(StartRequested("db", "restart"))
    assert calls(s.tick(1.0)) == [("restart", "db", "manual"), ("restart", "app", "dependency-restarted")]


# --------------------------------------------------------------------------- the inventory


def test_a_relist_drops_vanished_containers_and_forgets_kills() -> None:
    s = Sim()
    a, b = box("a", restart="unless-stopped"), box("b", "exited", restart="no", exit_code=1, finished=-1.0)
    s.relist(a, b)
    assert "b" in holds(s.state)
    s.change(a, "kill")
    s.feed(Disconnected(dict(s.containers)))
    assert not s.unit("a").exits.user_kill
    acts = s.relist(a)
    assert sorted(s.state.units) == ["a"] and holds(s.state) == {}
    assert any(isinstance(x, Log) and x.event == "service_container_removed" for x in acts)
    s.change(exited(a, 137, 3.0), "die")  # the earlier kill was forgotten: judged as a crash
    assert s.tracker_state("a") == "backoff"


def test_decide_does_not_change_the_state_it_is_given() -> None:
    s = Sim()
    c = box("web")
    s.relist(c)
    before = s.state
    t = before.units["web"].tracker
    assert t is not None
    snap = t.snapshot()
    s.change(exited(c, 1, 1.0), "die")
    s.feed(StopRequested("web"))
    assert t.snapshot() == snap and before.units["web"].pending is None
    assert s.unit("web").tracker is not t
