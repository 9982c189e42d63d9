"""The task owner restarts dying tasks with backoff, reports fatal ones, stops by stage;
the event bus fans out without letting a slow subscriber grow memory."""

from __future__ import annotations

import asyncio

from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.core.tasks import Stage, TaskOwner


async def test_a_dying_task_is_restarted_and_counted() -> None:
    metrics = Metrics()
    fatal: list[str] = []
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: fatal.append(n), backoff_initial=0.01)
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        done.set()
        await asyncio.Event().wait()

    owner.spawn("flaky", flaky, stage=Stage.META)
    await asyncio.wait_for(done.wait(), 5)
    [info] = owner.status()
    assert info["restarts"] == 2 and info["last_error"] == "RuntimeError: boom 2" and info["running"]
    assert metrics.registry.get_sample_value("maculad_task_restarts_total", {"task": "flaky"}) == 2
    await owner.stop_stage(Stage.META)
    assert owner.status() == [] and fatal == []


async def test_a_fatal_task_reports_its_name() -> None:
    fatal: list[tuple[str, str]] = []
    owner = TaskOwner(metrics=Metrics(), on_fatal=lambda n, e: fatal.append((n, str(e))))

    async def broken() -> None:
        raise ValueError("bad")

    owner.spawn("broken", broken, stage=Stage.META, restart=False)
    for _ in range(100):
        if fatal:
            break
        await asyncio.sleep(0.01)
    assert fatal == [("broken", "bad")]


async def test_stop_stage_cancels_only_that_stage() -> None:
    owner = TaskOwner(metrics=Metrics(), on_fatal=lambda n, e: None)

    async def forever() -> None:
        await asyncio.Event().wait()

    owner.spawn("a", forever, stage=Stage.SOURCES)
    owner.spawn("b", forever, stage=Stage.PROXY)
    await asyncio.sleep(0)
    await owner.stop_stage(Stage.SOURCES)
    assert [t["name"] for t in owner.status()] == ["b"]
    await owner.stop_stage(Stage.PROXY)


async def test_event_bus_replays_and_bounds_slow_subscribers() -> None:
    bus = EventBus(history=3, queue_size=2)
    for i in range(5):
        bus.publish("e", i=i)
    assert [e["i"] for e in bus.recent()] == [2, 3, 4]
    stream = bus.follow(replay=2)
    first = await asyncio.wait_for(anext(stream), 1)
    assert first["i"] == 3
    for i in range(10):
        bus.publish("e", i=100 + i)
    seen = [await asyncio.wait_for(anext(stream), 1) for _ in range(3)]
    # bounded at 2: the subscriber is told how many it lost, then gets the newest two
    assert seen == [
        {"time": seen[0]["time"], "kind": "events_dropped", "count": 9},
        {"time": seen[1]["time"], "kind": "e", "i": 108},
        {"time": seen[2]["time"], "kind": "e", "i": 109},
    ]
    await stream.aclose()
