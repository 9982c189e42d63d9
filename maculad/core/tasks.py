"""The one owner of every long-lived task.

Parts never call `asyncio.create_task` for work that outlives a request: the
daemon spawns it here under a name and a stage. A task that returns or raises
is logged with its name, then either restarted with capped exponential backoff
(`restart=True`, the default) or reported to `on_fatal`, which stops the
daemon. Shutdown stops tasks stage by stage (`stop_stage`), each with a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import structlog

from maculad.core.backoff import Backoff

log = structlog.get_logger("maculad.core.tasks")

TaskFactory = Callable[[], Awaitable[None]]

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
    stage: str
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

    def spawn(self, name: str, factory: TaskFactory, *, stage: str, restart: bool = True) -> None:
        old = self._tasks.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise RuntimeError(f"task {name} is already running")
        info = TaskInfo(name=name, stage=stage, restart=restart)
        self._tasks[name] = info
        info.task = asyncio.create_task(self._guard(info, factory), name=f"maculad:{name}")

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

    async def stop_stage(self, stage: str, *, timeout: float = 5.0) -> None:
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
