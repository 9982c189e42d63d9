"""Restart policy as an explicit, pure state machine (supervisord, moby restartmanager).

A `RestartTracker` holds one supervised thing's state — starting, running,
backoff, failed, stopped — and is driven by events with the time passed in
(`on_exit(now, ...)`), so it is tested without clocks or Docker. Each event
returns a `RestartDecision`: do nothing, restart after `delay` seconds, or give up.

Backoff is exponential (initial × factor^n, capped) and resets once the thing
has run `reset_after` seconds; more than `start_limit` restarts inside
`start_limit_window` ends in `failed` with the reason kept for status. The
Docker tier and the kind cluster share this machine.
"""

from __future__ import annotations

from collections import deque
from copy import copy as shallow_copy
from dataclasses import dataclass, field, replace
from typing import Literal, NotRequired, TypedDict

from maculad.config import BackoffConfig
from maculad.core.backoff import Backoff
from maculad.core.restart import RestartPolicyName, State

Action = Literal["none", "restart", "give_up"]


class RestartSnapshot(TypedDict):
    """A tracker's state as the control socket shows it (part of each service and of the cluster)."""

    state: State
    reason: str
    backoff_seconds: float
    policy: str | None
    failures: NotRequired[int]
    held: NotRequired[bool]
    restarts_in_window: NotRequired[int]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    name: RestartPolicyName = "unless-stopped"
    max_retries: int | None = None
    backoff: BackoffConfig = field(default_factory=BackoffConfig)


@dataclass(frozen=True, slots=True)
class RestartDecision:
    action: Action
    delay: float = 0.0
    reason: str = ""


@dataclass(slots=True)
class RestartTracker:
    policy: RestartPolicy
    state: State = "stopped"
    reason: str = ""
    delay: float = 0.0
    failures: int = 0
    """Consecutive failed runs (for on-failure:N); reset by a stable run."""
    stopped_by_user: bool = False
    held: bool = False
    """Stopped on request (`maculactl stop`): nothing restarts it until a start is requested."""
    running_since: float | None = None
    last_cause: str = ""
    """What ended the last run ("exited with code 1", "unhealthy", "start failed: ...")."""
    gave_up_after: int = 0
    """Starts made before giving up (0 unless `failed` by the start limit or on-failure:N)."""
    _backoff: Backoff = field(init=False, repr=False)
    _restarts: deque[float] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        b = self.policy.backoff
        self._backoff = Backoff(initial=b.initial, cap=b.cap, factor=b.factor)

    # ------------------------------------------------------------------ events

    def on_start_requested(self, now: float) -> None:
        """A person (or bring-up) asked for a start: clears give-up and manual stop."""
        self.stopped_by_user = False
        self.held = False
        self.failures = 0
        self.gave_up_after = 0
        self._restarts.clear()
        self._backoff.reset()
        self.delay = 0.0
        self._set("starting", "start requested")

    def on_starting(self, now: float) -> None:
        """A restart this tracker decided on is being carried out."""
        self._set("starting", self.reason)

    def on_running(self, now: float) -> None:
        """The thing runs (and is healthy, where it has a health check)."""
        if self.state != "running":
            self.running_since = now
        # A container that runs again (started by a person, or by us) is no
        # longer "stopped by user": its next exit is judged by the policy.
        self.stopped_by_user = False
        self.held = False
        self._set("running", "")
        self.delay = 0.0

    def tick(self, now: float) -> None:
        """Called now and then: a run that has lasted `reset_after` resets the backoff."""
        if (self.state == "running" and self.running_since is not None
                and now - self.running_since >= self.policy.backoff.reset_after):
            self._backoff.reset()
            self.failures = 0

    def on_stopped_by_user(self, now: float) -> None:
        """`docker stop` or `maculactl stop`: not restarted unless the policy is `always`."""
        self.stopped_by_user = True
        self.running_since = None
        self._set("stopped", "stopped by user")

    def on_stop_requested(self, now: float) -> None:
        """`maculactl stop`: stopped and held under every policy until a start is requested."""
        self.held = True
        self.stopped_by_user = True
        self.running_since = None
        self.delay = 0.0
        self._set("stopped", "stopped on request")

    def on_exit(self, now: float, *, exit_code: int | None, by_user: bool = False) -> RestartDecision:
        """The thing stopped running. `by_user` marks a `docker stop` / `docker kill`."""
        self.tick(now)
        self.running_since = None
        what = "exited" if exit_code is None else f"exited with code {exit_code}"
        if self.held:
            self._set("stopped", f"stopped on request ({what})")
            return RestartDecision("none", reason=self.reason)
        if by_user:
            self.stopped_by_user = True
        failed = exit_code != 0
        p = self.policy.name
        if self.stopped_by_user and p != "always":
            self._set("stopped", f"stopped by user ({what})")
            return RestartDecision("none", reason=self.reason)
        if p == "no":
            self._set("failed" if failed else "stopped", f"{what}; restart policy is no")
            return RestartDecision("none", reason=self.reason)
        if p == "on-failure" and not failed:
            self._set("stopped", f"{what}; on-failure does not restart a clean exit")
            return RestartDecision("none", reason=self.reason)
        return self._restart(now, what)

    def on_unhealthy(self, now: float) -> RestartDecision:
        """The health check says unhealthy: restart under every policy but `no`."""
        self.tick(now)
        self.running_since = None
        if self.held:
            return RestartDecision("none", reason=self.reason)
        if self.policy.name == "no":
            self._set("failed", "unhealthy; restart policy is no")
            return RestartDecision("none", reason=self.reason)
        return self._restart(now, "unhealthy")

    def on_start_failed(self, now: float, error: str) -> RestartDecision:
        """A start this tracker asked for was refused (port taken, image gone, engine error)."""
        self.tick(now)
        self.running_since = None
        if self.held:
            return RestartDecision("none", reason=self.reason)
        return self._restart(now, f"start failed: {error}")

    def on_dependency_failed(self, now: float, dependency: str) -> None:
        self._set("backoff", f"waiting for dependency {dependency}")

    # ------------------------------------------------------------------ logic

    def _restart(self, now: float, why: str) -> RestartDecision:
        b = self.policy.backoff
        self.failures += 1
        self.last_cause = why
        retries = self.policy.max_retries
        if self.policy.name == "on-failure" and retries is not None and self.failures > retries:
            self.gave_up_after = retries + 1
            self._set("failed", f"gave up after {retries} retries (on-failure:{retries}); last: {why}")
            return RestartDecision("give_up", reason=self.reason)
        window_start = now - b.start_limit_window
        while self._restarts and self._restarts[0] < window_start:
            self._restarts.popleft()
        if b.start_limit and len(self._restarts) >= b.start_limit:
            self.gave_up_after = len(self._restarts) + 1
            self._set("failed", f"gave up: {len(self._restarts)} restarts within {b.start_limit_window:g}s "
                      f"(start limit); last: {why}")
            return RestartDecision("give_up", reason=self.reason)
        self._restarts.append(now)
        self.delay = self._backoff.next()
        self._set("backoff", f"{why}; restarting in {self.delay:g}s")
        return RestartDecision("restart", delay=self.delay, reason=why)

    def _set(self, state: State, reason: str) -> None:
        self.state = state
        self.reason = reason

    def copy(self) -> RestartTracker:
        """An independent copy: the container supervisor's pure `decide` feeds events to copies only."""
        c = shallow_copy(self)
        c._backoff = replace(self._backoff)
        c._restarts = deque(self._restarts)
        return c

    def snapshot(self) -> RestartSnapshot:
        return {
            "state": self.state,
            "reason": self.reason,
            "backoff_seconds": self.delay if self.state == "backoff" else 0.0,
            "failures": self.failures,
            "held": self.held,
            "restarts_in_window": len(self._restarts),
            "policy": self.policy.name if self.policy.max_retries is None
            else f"{self.policy.name}:{self.policy.max_retries}",
        }
