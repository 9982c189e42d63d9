"""A small in-process event bus for `maculactl events --follow`.

Parts publish what happened (a route table swap, a restart, a give-up, a
cluster recreation) as flat dictionaries. The bus keeps the last few hundred
for late subscribers and fans out to bounded per-subscriber queues: a slow
subscriber loses its oldest events (and is told how many), it never slows a
publisher or grows memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

Event = dict[str, Any]


class _Subscriber:
    __slots__ = ("dropped", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class EventBus:
    def __init__(self, *, history: int = 500, queue_size: int = 1000) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._subs: set[_Subscriber] = set()
        self._queue_size = queue_size

    def publish(self, kind: str, **fields: Any) -> None:
        event: Event = {"time": round(time.time(), 3), "kind": kind, **fields}
        self._history.append(event)
        for sub in self._subs:
            sub.offer(event)

    def recent(self, limit: int = 100) -> list[Event]:
        return list(self._history)[-limit:] if limit > 0 else []

    async def follow(self, *, replay: int = 0) -> AsyncIterator[Event]:
        sub = _Subscriber(self._queue_size)
        for e in self.recent(replay):
            sub.offer(e)
        self._subs.add(sub)
        try:
            while True:
                event = await sub.queue.get()
                if sub.dropped:
                    yield {"time": event["time"], "kind": "events_dropped", "count": sub.dropped}
                    sub.dropped = 0
                yield event
        finally:
            self._subs.discard(sub)
