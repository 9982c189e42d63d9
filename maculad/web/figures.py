"""Headline figures for the page, from the status view's counters. Pure.

`RateMeter` turns a growing counter (DNS queries answered) into a rate over
the last `window` seconds from the samples it was given; it keeps one sample
per `resolution` seconds, so its memory is bounded whatever the ask rate.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from maculad.control.protocol import is_error

if TYPE_CHECKING:
    from maculad.control.protocol import Status


class RateMeter:
    def __init__(self, *, window: float = 10.0, resolution: float = 1.0) -> None:
        self.window = window
        self.resolution = resolution
        self._samples: deque[tuple[float, int]] = deque(maxlen=max(2, int(window / resolution) + 2))

    def add(self, t: float, total: int) -> float | None:
        """Record `total` at time `t` (monotonic); the rate per second, or None before two samples."""
        s = self._samples
        if s and total < s[-1][1]:  # the counter was reset
            s.clear()
        if not s or t - s[-1][0] >= self.resolution:
            s.append((t, total))
        else:
            s[-1] = (s[-1][0], total)
        while len(s) > 2 and t - s[1][0] >= self.window:
            s.popleft()
        t0, n0 = s[0]
        if t - t0 <= 0:
            return None
        return (total - n0) / (t - t0)


def relay_connections(status: Status) -> int:
    """Open relayed connections: the sum over the relay's listeners in the status view."""
    proxy = status["components"].get("proxy")
    if proxy is None or is_error(proxy):
        return 0
    return sum(listener["conns"] for listener in proxy["listeners"])


def dns_queries(status: Status) -> int:
    dns = status["components"].get("dns")
    return 0 if dns is None or is_error(dns) else dns["queries"]
