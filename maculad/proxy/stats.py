"""What the listeners share: the relay context, cached metric children, byte accounting.

`Context` carries the live `ProxyConfig` (replaced on reload, read per
connection); what a route's service is doing comes with the route (`Target.hold`).

Labelled children are looked up once per listener (and again only when its
route changes), never per connection or chunk. The data path only adds to
plain integers on the connection object; `flush` moves the deltas into the
Prometheus counters at connection close and when the metrics are read (the
relay's before-scrape hook).
"""

from __future__ import annotations

import errno
import socket
import time
from typing import TYPE_CHECKING, Any

from maculad.config import ProxyConfig
from maculad.core.net import Backend
from maculad.observability.metrics import Metrics
from maculad.proxy.pump import Pumps

if TYPE_CHECKING:
    from maculad.proxy.tls import Terminator


#: Seconds between two logs of the same backend failure on one listener.
LOG_EVERY = 10.0


class Context:
    """Read by every listener per connection or session; the relay swaps `config` on reload."""

    __slots__ = ("apex", "config", "metrics", "pumps", "redirect_http", "tls")

    def __init__(self, *, config: ProxyConfig, metrics: Metrics, tls: Terminator | None = None,
                 redirect_http: bool = False, apex: tuple[str, Backend] | None = None) -> None:
        self.config = config
        #: (the domain, the status page's address): where a Host-routed listener sends the apex
        self.apex = apex
        self.metrics = metrics
        #: TLS termination (None: no CA, routes with only an http backend get no https port).
        self.tls = tls
        self.redirect_http = redirect_http
        #: the relay's piped connections (pump.py), shut down by the relay's stop
        self.pumps = Pumps()

class _Null:
    """A metric child that records nothing (a listener that routes per connection has no route)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NULL = _Null()


class ListenerStats:
    """The metric children of one listener (and route): `port` and `proto` are labels of their own
    (`port="4433", proto="udp"`), and each listener exports only the series that mean something
    for it: TCP listeners `active_connections`, UDP listeners `udp_sessions`."""

    __slots__ = (
        "_closed",
        "_errors",
        "_logged",
        "active",
        "bytes_in",
        "bytes_out",
        "connections",
        "horizon",
        "latency",
        "metrics",
        "port",
        "proto",
        "route",
        "udp_sessions",
    )

    def __init__(self, *, metrics: Metrics, route: str, port: int, proto: str, horizon: str = "host") -> None:
        self.metrics = metrics
        self.route = route
        self.port = str(port)
        self.proto = proto
        self.horizon = horizon
        self._errors: dict[str, Any] = {}
        self._closed: dict[tuple[str, str], Any] = {}
        self._logged: dict[str, tuple[float, int]] = {}
        self.connections: Any = _NULL
        self.active: Any = _NULL
        self.bytes_in: Any = _NULL
        self.bytes_out: Any = _NULL
        self.latency: Any = _NULL
        self.udp_sessions: Any = _NULL
        if not route:  # see _Null
            return
        labels = {"horizon": horizon, "route": route, "port": self.port, "proto": proto}
        self.connections = metrics.proxy_connections.labels(**labels)
        self.bytes_in = metrics.proxy_bytes.labels(**labels, direction="in")
        self.bytes_out = metrics.proxy_bytes.labels(**labels, direction="out")
        self.latency = metrics.proxy_connect_latency.labels(horizon=horizon, route=route)
        if proto == "tcp":
            self.active = metrics.proxy_active.labels(**labels)
        else:
            self.udp_sessions = metrics.proxy_udp_sessions.labels(**labels)

    def log_allowed(self, reason: str) -> int | None:
        """Rate-limit backend-failure logs: the first per reason, then one per LOG_EVERY seconds.

        Returns how many were suppressed since the last one logged, or None to stay quiet."""
        now = time.monotonic()
        last, suppressed = self._logged.get(reason, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._logged[reason] = (last, suppressed + 1)
            return None
        self._logged[reason] = (now, 0)
        return suppressed

    def upstream_error(self, reason: str) -> None:
        child = self._errors.get(reason)
        if child is None:
            child = self.metrics.proxy_upstream_errors.labels(horizon=self.horizon, route=self.route, port=self.port,
                                                              proto=self.proto, reason=reason)
            self._errors[reason] = child
        child.inc()

    def closed_by_relay(self, what: str, reason: str) -> None:
        """Count a connection the relay refused (`what` = "rejected", reason "limit") or timed out
        (`what` = "timeout", reason "idle" or "first_byte"). Counted on a name-routed listener too
        (its route label is then empty)."""
        child = self._closed.get((what, reason))
        if child is None:
            family = self.metrics.proxy_rejected if what == "rejected" else self.metrics.proxy_timeouts
            child = family.labels(horizon=self.horizon, route=self.route, port=self.port, proto=self.proto,
                                  reason=reason)
            self._closed[(what, reason)] = child
        child.inc()


def classify(exc: BaseException) -> tuple[str, str]:
    """(metric reason, human reason) for a failed backend connect.

    Metric reasons: refused, timeout, unreachable, reset, dns, error (and `held`, counted by the
    listeners: not dialed, the route's service is not running).
    """
    if isinstance(exc, TimeoutError):
        return "timeout", "connect timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset"
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve the backend host ({exc.strerror or exc})"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            return "unreachable", exc.strerror or "unreachable"
        if exc.errno == errno.ETIMEDOUT:
            return "timeout", "connect timed out"
        return "error", exc.strerror or str(exc) or type(exc).__name__
    return "error", str(exc) or type(exc).__name__

