"""The one owner of every long-lived task.

Parts never call `asyncio.create_task` for work that outlives a request: they
expose their loops, and the daemon spawns each here under a name and a `Stage`
(app/daemon.py `TASKS` lists them all). A task that returns or raises is logged
with its name, then either restarted with capped exponential backoff
(`restart=True`, the default) or reported to `on_fatal`, which stops the
daemon. Shutdown stops tasks stage by stage (`stop_stage`), each with a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypedDict, TypeVar

import structlog

from maculad.core.backoff import Backoff

log = structlog.get_logger("maculad.core.tasks")

TaskFactory = Callable[[], Awaitable[None]]


class Stage(StrEnum):
    """Which group of tasks a task stops with in the staged shutdown (the daemon says in which order)."""

    META = "meta"
    """The daemon's own: reload signal, watchdog, status line."""
    WEB = "web"
    PROXY = "proxy"
    """Listener reconcilers of the relays (host and containers horizon)."""
    SOURCES = "sources"
    SUPERVISORS = "supervisors"
    PUBLISHERS = "publishers"


P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class TaskSpec(Generic[P]):
    """One long-lived task of a part: its name, its stage, and which of the part's loops it runs."""

    name: str
    stage: Stage
    loop: Callable[[P], TaskFactory | None]
    """The loop, given the part; None when this part does not run it (say, no watchdog is asked for)."""
    stop_timeout: float = 5.0


class TaskStatus(TypedDict):
    """One task in `maculactl status --json` (`tasks`)."""

    name: str
    stage: str
    running: bool
    restarts: int
    last_error: str | None


#: A task that ran this long before dying restarts after the initial delay again.
STABLE_RUN = 60.0


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Labelled(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> _Inc: ...


class TaskMetrics(Protocol):
    """What the owner counts (observability.metrics.Metrics has it): restarts per task."""

    @property
    def task_restarts(self) -> _Labelled: ...


@dataclass(slots=True)
class TaskInfo:
    name: str
    stage: Stage
    restart: bool
    restarts: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None


class TaskOwner:
    def __init__(
        self,
        *,
        metrics: TaskMetrics,
        on_fatal: Callable[[str, BaseException | None], None],
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._initial = backoff_initial
        self._cap = backoff_cap
        self._tasks: dict[str, TaskInfo] = {}

    def spawn(self, name: str, factory: TaskFactory, *, stage: Stage, restart: bool = True) -> None:
        old = self._tasks.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise RuntimeError(f"task {name} is already running")
        info = TaskInfo(name=name, stage=stage, restart=restart)
        self._tasks[name] = info
        info.task = asyncio.create_task(self._guard(info, factory), name=f"maculad:{name}")

    def spawn_for(self, part: P, specs: Iterable[TaskSpec[P]]) -> None:
        """Spawn the tasks `specs` lists for `part` (right after the part started)."""
        for spec in specs:
            loop = spec.loop(part)
            if loop is not None:
                self.spawn(spec.name, loop, stage=spec.stage)

    async def stop_for(self, specs: Iterable[TaskSpec[Any]]) -> None:
        """Cancel the tasks `specs` lists (before their part stops), each within its timeout."""
        for spec in specs:
            await self.stop(spec.name, timeout=spec.stop_timeout)

    async def _guard(self, info: TaskInfo, factory: TaskFactory) -> None:
        backoff = Backoff(initial=self._initial, cap=self._cap)
        while True:
            started = time.monotonic()
            info.started_at = time.time()
            error: BaseException | None = None
            try:
                await factory()
                log.error("task_returned", task=info.name)
                info.last_error = "returned unexpectedly"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
                info.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("task_died", task=info.name)
            if not info.restart:
                self._on_fatal(info.name, error)
                return
            if time.monotonic() - started > STABLE_RUN:
                backoff.reset()
            delay = backoff.next()
            info.restarts += 1
            self._metrics.task_restarts.labels(task=info.name).inc()
            log.warning("task_restarting", task=info.name, delay=round(delay, 3), restarts=info.restarts)
            await asyncio.sleep(delay)

    async def stop_stage(self, stage: Stage, *, timeout: float = 5.0) -> None:
        """Cancel every task of `stage` and wait (at most `timeout`) for them to finish."""
        tasks = [i.task for i in self._tasks.values() if i.stage == stage and i.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.error("task_stop_timeout", task=t.get_name(), timeout=timeout)
        for name in [n for n, i in self._tasks.items() if i.stage == stage]:
            del self._tasks[name]

    async def stop(self, name: str, *, timeout: float = 5.0) -> None:
        info = self._tasks.pop(name, None)
        if info is None or info.task is None:
            return
        info.task.cancel()
        await asyncio.wait([info.task], timeout=timeout)

    def status(self) -> list[TaskStatus]:
        return [
            {
                "name": i.name,
                "stage": i.stage,
                "running": i.task is not None and not i.task.done(),
                "restarts": i.restarts,
                "last_error": i.last_error,
            }
            for i in sorted(self._tasks.values(), key=lambda i: i.name)
        ]
