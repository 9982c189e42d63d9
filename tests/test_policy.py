"""The restart state machine, driven with explicit times (no clocks, no Docker)."""

from __future__ import annotations

import pytest

from maculad.config import BackoffConfig
from maculad.core.restart import RestartPolicyName
from maculad.supervise.policy import RestartPolicy, RestartTracker

FAST = BackoffConfig(initial=0.1, factor=2.0, cap=1.0, reset_after=10.0, start_limit=5, start_limit_window=60.0)


def tracker(name: RestartPolicyName = "always", retries: int | None = None,
            backoff: BackoffConfig = FAST) -> RestartTracker:
    t = RestartTracker(RestartPolicy(name=name, max_retries=retries, backoff=backoff))
    t.on_start_requested(0.0)
    t.on_running(0.0)
    return t


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    t = tracker(backoff=BackoffConfig(initial=0.1, factor=2.0, cap=0.5, start_limit=0))
    delays = []
    for i in range(6):
        d = t.on_exit(1.0 + i, exit_code=1)
        assert d.action == "restart"
        assert t.state == "backoff"
        delays.append(d.delay)
        t.on_starting(1.0 + i)
        t.on_running(1.0 + i)
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


def test_a_stable_run_resets_the_backoff() -> None:
    t = tracker()
    assert t.on_exit(1.0, exit_code=1).delay == 0.1
    t.on_running(1.1)
    assert t.on_exit(2.0, exit_code=1).delay == 0.2
    t.on_running(2.2)
    # ran 10 s (reset_after) before dying: back to the initial delay
    d = t.on_exit(12.5, exit_code=1)
    assert d.delay == 0.1
    assert t.failures == 1


def test_tick_resets_while_running() -> None:
    t = tracker()
    t.on_exit(1.0, exit_code=1)
    t.on_running(1.1)
    t.tick(20.0)
    assert t.failures == 0
    assert t.on_exit(20.5, exit_code=1).delay == 0.1


def test_start_limit_ends_in_failed_with_the_reason() -> None:
    t = tracker()
    now = 1.0
    for _ in range(5):
        d = t.on_exit(now, exit_code=3)
        assert d.action == "restart"
        t.on_running(now + 0.01)
        now += 0.5
    d = t.on_exit(now, exit_code=3)
    assert d.action == "give_up"
    assert t.state == "failed"
    assert "start limit" in t.reason and "exited with code 3" in t.reason
    assert t.snapshot()["state"] == "failed"


def test_start_limit_window_slides() -> None:
    t = tracker(backoff=BackoffConfig(initial=0.1, factor=1.0, cap=0.1, reset_after=1000,
                                      start_limit=2, start_limit_window=10.0))
    assert t.on_exit(1.0, exit_code=1).action == "restart"
    assert t.on_exit(2.0, exit_code=1).action == "restart"
    assert t.on_exit(3.0, exit_code=1).action == "give_up"
    t.on_start_requested(4.0)
    assert t.state == "starting"
    t.on_running(4.0)
    assert t.on_exit(20.0, exit_code=1).action == "restart"


def test_start_limit_zero_means_unlimited() -> None:
    t = tracker(backoff=BackoffConfig(initial=0.1, cap=0.1, start_limit=0))
    for i in range(100):
        assert t.on_exit(float(i), exit_code=1).action == "restart"


@pytest.mark.parametrize(
    ("policy", "exit_code", "by_user", "action", "state"),
    [
        ("always", 0, False, "restart", "backoff"),
        ("always", 1, False, "restart", "backoff"),
        ("always", 137, True, "restart", "backoff"),
        ("unless-stopped", 0, False, "restart", "backoff"),
        ("unless-stopped", 1, False, "restart", "backoff"),
        ("unless-stopped", 143, True, "none", "stopped"),
        ("on-failure", 0, False, "none", "stopped"),
        ("on-failure", 2, False, "restart", "backoff"),
        ("on-failure", 2, True, "none", "stopped"),
        ("no", 0, False, "none", "stopped"),
        ("no", 1, False, "none", "failed"),
    ],
)
def test_policy_table(policy: RestartPolicyName, exit_code: int, by_user: bool, action: str, state: str) -> None:
    t = tracker(policy)
    d = t.on_exit(1.0, exit_code=exit_code, by_user=by_user)
    assert (d.action, t.state) == (action, state)
    assert t.reason


def test_on_failure_max_retries_gives_up() -> None:
    t = tracker("on-failure", retries=2)
    assert t.on_exit(1.0, exit_code=1).action == "restart"
    t.on_running(1.1)
    assert t.on_exit(2.0, exit_code=1).action == "restart"
    t.on_running(2.1)
    d = t.on_exit(3.0, exit_code=1)
    assert d.action == "give_up"
    assert t.state == "failed"
    assert "on-failure:2" in t.reason
    assert t.snapshot()["policy"] == "on-failure:2"


def test_unhealthy_restarts_except_under_no() -> None:
    t = tracker("unless-stopped")
    d = t.on_unhealthy(1.0)
    assert d.action == "restart" and d.reason == "unhealthy"
    n = tracker("no")
    assert n.on_unhealthy(1.0).action == "none"
    assert n.state == "failed"


def test_user_stop_is_forgotten_once_it_runs_again() -> None:
    t = tracker("unless-stopped")
    assert t.on_exit(1.0, exit_code=143, by_user=True).action == "none"
    assert t.stopped_by_user
    # a person starts it again with `docker start`: a later crash is restarted
    t.on_running(5.0)
    assert not t.stopped_by_user
    assert t.on_exit(6.0, exit_code=1).action == "restart"


def test_stop_requested_holds_under_always_until_start_requested() -> None:
    t = tracker("always")
    t.on_stop_requested(1.0)
    assert t.state == "stopped" and t.held
    d = t.on_exit(1.1, exit_code=137, by_user=True)
    assert d.action == "none"
    assert t.state == "stopped"
    assert t.on_unhealthy(1.2).action == "none"
    t.on_start_requested(2.0)
    assert not t.held and t.state == "starting"
    t.on_running(2.1)
    assert t.on_exit(3.0, exit_code=1).action == "restart"


def test_dependency_wait_is_a_backoff_state_with_the_reason() -> None:
    t = tracker()
    t.on_dependency_failed(1.0, "db")
    assert t.state == "backoff"
    assert "db" in t.reason


def test_backoff_seconds_only_shown_in_backoff() -> None:
    t = tracker()
    t.on_exit(1.0, exit_code=1)
    assert t.snapshot()["backoff_seconds"] == 0.1
    t.on_running(1.2)
    assert t.snapshot()["backoff_seconds"] == 0.0


def test_a_refused_start_backs_off_like_an_exit() -> None:
    t = tracker("on-failure")
    d = t.on_start_failed(1.0, "port is already allocated")
    assert d.action == "restart" and d.delay == 0.1
    assert "port is already allocated" in t.reason
    t.on_stop_requested(2.0)
    assert t.on_start_failed(3.0, "x").action == "none"


# --------------------------------------------------------------------------- what the relay tells a client


def _stopped_on_request() -> RestartTracker:
    t = tracker()
    t.on_stop_requested(1.0)
    t.on_exit(1.5, exit_code=137)
    return t


def _backing_off() -> RestartTracker:
    t = tracker()
    for i in range(3):
        t.on_exit(1.0 + i, exit_code=1)
        t.on_starting(1.0 + i)
    t.on_exit(4.0, exit_code=1)
    return t


def _gave_up() -> RestartTracker:
    t = tracker()
    for _ in range(FAST.start_limit):
        assert t.on_exit(1.0, exit_code=1).action == "restart"
        t.on_starting(1.0)
    assert t.on_exit(1.0, exit_code=1).action == "give_up"
    return t


def _on_failure_gave_up() -> RestartTracker:
    t = tracker("on-failure", retries=2)
    for _ in range(2):
        assert t.on_exit(1.0, exit_code=3).action == "restart"
    assert t.on_exit(1.0, exit_code=3).action == "give_up"
    return t


@pytest.mark.parametrize(("make", "waiting_on", "state", "reason", "retry_at"), [
    (_stopped_on_request, None, "stopped", "stopped with maculactl stop", None),
    (_backing_off, None, "backoff", "restarting: attempt 4", 9.5),
    (_backing_off, "db", "backoff", "waiting for its dependency db", None),
    (_gave_up, None, "failed", "gave up after 6 starts: exited with code 1", None),
    (_on_failure_gave_up, None, "failed", "gave up after 3 starts: exited with code 3", None),
])
def test_a_service_that_does_not_run_is_held_with_state_reason_and_fix(make, waiting_on, state, reason,
                                                                       retry_at) -> None:
    from maculad.supervise.containers_decide import service_hold

    hold = service_hold("grafana", make(), waiting_on=waiting_on, retry_at=9.5)
    assert hold is not None
    assert (hold.service, hold.state, hold.reason, hold.retry_at) == ("grafana", state, reason, retry_at)
    assert hold.fix == "maculactl start grafana"


def test_a_running_service_has_no_hold_and_a_start_clears_the_give_up() -> None:
    from maculad.supervise.containers_decide import service_hold

    assert service_hold("grafana", tracker()) is None
    t = _gave_up()
    t.on_start_requested(5.0)
    assert t.gave_up_after == 0
    hold = service_hold("grafana", t)
    assert hold is not None and hold.reason == "starting"
