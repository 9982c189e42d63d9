"""Does a backend accept connections now? A bounded, cached TCP connect check.

Checks run only when someone asks (a page fetching `/api/status`), never on a
timer. Each backend's answer is kept `interval` seconds; an event that may
change it (a route swap, a service changing state) marks the answers stale,
but no backend is connected to more often than every `min_interval` seconds.
Askers at the same time share the one check in flight, at most `concurrency`
connects run at once, each with a `timeout`, and at most `max_backends`
answers are kept (the oldest go). An asker waits at most `wait` seconds: a
check still running then is reported as "checking" with its last answer.
So any number of open pages costs at most one connect per backend per
`min_interval`, and an unreachable host costs a page load at most `wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TypedDict

from maculad.observability.metrics import Metrics
from maculad.core.net import Backend, parse_hostport

Connect = Callable[[Backend, float], Awaitable[None]]


class CheckView(TypedDict):
    accepts: bool | None  # None: never checked yet
    error: str | None
    latency_ms: float | None
    age_seconds: float | None
    checking: bool


@dataclass(frozen=True, slots=True)
class Check:
    accepts: bool
    error: str | None
    latency_ms: float
    at: float  # monotonic
    stale: bool = False


def parse_backend(text: str) -> Backend | None:
    """A route view's backend text back into a Backend; None when it is not host:port."""
    try:
        b = parse_hostport(text)
    except ValueError:
        return None
    return b if b.port else None


async def tcp_connect(backend: Backend, timeout: float) -> None:
    """Open and close one TCP connection; raises OSError or TimeoutError."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(backend.host, backend.port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class BackendProbe:
    def __init__(
        self,
        *,
        metrics: Metrics,
        interval: float = 5.0,
        min_interval: float = 0.5,
        timeout: float = 1.0,
        wait: float = 0.3,
        concurrency: int = 16,
        max_backends: int = 1024,
        connect: Connect = tcp_connect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.min_interval = min(min_interval, interval)
        self.timeout = timeout
        self.wait = wait
        self.max_backends = max_backends
        self._metrics = metrics
        self._connect = connect
        self._clock = clock
        self._sem = asyncio.Semaphore(concurrency)
        self._results: dict[Backend, Check] = {}
        self._inflight: dict[Backend, asyncio.Task[Check]] = {}

    def invalidate(self) -> None:
        """Something changed: recheck on the next ask (within `min_interval`)."""
        self._results = {b: replace(c, stale=True) for b, c in self._results.items()}

    def _due(self, backend: Backend, now: float) -> bool:
        c = self._results.get(backend)
        if c is None:
            return True
        age = now - c.at
        return age >= self.interval or (c.stale and age >= self.min_interval)

    async def check(self, backends: Iterable[Backend]) -> dict[str, CheckView]:
        wanted = list(dict.fromkeys(backends))[: self.max_backends]
        now = self._clock()
        for b in wanted:
            if b not in self._inflight and self._due(b, now):
                self._inflight[b] = asyncio.get_running_loop().create_task(self._run(b))
        pending = [self._inflight[b] for b in wanted if b in self._inflight]
        if pending:
            await asyncio.wait(pending, timeout=self.wait)
        now = self._clock()
        out: dict[str, CheckView] = {}
        for b in wanted:
            c = self._results.get(b)
            out[str(b)] = {
                "accepts": c.accepts if c else None,
                "error": c.error if c else None,
                "latency_ms": round(c.latency_ms, 2) if c else None,
                "age_seconds": round(now - c.at, 1) if c else None,
                "checking": b in self._inflight,
            }
        return out

    async def _run(self, backend: Backend) -> Check:
        try:
            async with self._sem:
                t0 = self._clock()
                try:
                    await self._connect(backend, self.timeout)
                except TimeoutError:
                    result = Check(False, f"no answer within {self.timeout:g}s", 0.0, self._clock())
                except OSError as exc:
                    result = Check(False, exc.strerror or str(exc) or type(exc).__name__, 0.0, self._clock())
                else:
                    t1 = self._clock()
                    result = Check(True, None, (t1 - t0) * 1000, t1)
            self._metrics.web_backend_checks.labels(result="accepts" if result.accepts else "refused").inc()
            self._results.pop(backend, None)
            self._results[backend] = result
            while len(self._results) > self.max_backends:
                del self._results[next(iter(self._results))]
            return result
        finally:
            self._inflight.pop(backend, None)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
