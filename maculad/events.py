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


class EventBus:
    def __init__(self, *, history: int = 500, queue_size: int = 1000) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._subs: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    def publish(self, kind: str, **fields: Any) -> None:
        event: Event = {"time": round(time.time(), 3), "kind": kind, **fields}
        self._history.append(event)
        for q in self._subs:
            if q.full():
                q.get_nowait()
                dropped: Event = {"time": event["time"], "kind": "events_dropped", "count": 1}
                q.put_nowait(dropped)
                continue
            q.put_nowait(event)

    def recent(self, limit: int = 100) -> list[Event]:
        return list(self._history)[-limit:]

    async def follow(self, *, replay: int = 0) -> AsyncIterator[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=self._queue_size)
        for e in self.recent(replay) if replay else []:
            q.put_nowait(e)
        self._subs.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subs.discard(q)
