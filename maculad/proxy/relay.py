"""The relay component: listeners reconciled to the route table.

`Relay` follows `RouteTableManager`: every published table (and every
`reconfigure`) bumps a generation and wakes the reconcile loop, which computes
the desired listeners (spec.py, pure), diffs them against the running ones and
applies the plan in order: removed listeners first (they stop accepting at
once and their open connections get `drain_grace` seconds before being
closed), then changed targets in place (new connections only), then new
listeners. Other listeners are never touched.

Sockets are bound synchronously here (so the errno is ours to report) and
then handed to the event loop. A bind that fails (EADDRINUSE, EACCES,
EADDRNOTAVAIL, an lo0 alias that cannot be added) marks the listener
`failed` with its address and reason in the log, metrics and status, and a
retry task rebinds it with exponential backoff capped at `bind_retry_max`,
while everything else keeps serving. Addresses that must never be bound
(wildcards, non-loopback IPs unless allowed) are shown as `failed` with the
reason and are not retried.

A reload binds the listeners a new table would add before anything changes
(`stage`: all or none, the OSError naming the address); once the new table is
published, `_bind` serves on the staged socket instead of binding again, and
staged sockets the reconcile did not use are closed.

Task ownership: the reconcile loop is `run()`, spawned by the daemon (or, for
the containers horizon's relay, run by the horizon's own task); byte counts
of open connections are folded into the metrics when they are read (a
`before_scrape` hook), not by a timer; bind retries and drain watchers are
short-lived tasks owned by the relay and cancelled in `stop()`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

import structlog

from maculad.config import ProxyConfig
from maculad.core.backoff import Backoff
from maculad.core.net import Backend
from maculad.observability.metrics import Metrics
from maculad.proxy.demux import DemuxListener
from maculad.proxy.platform import AliasError, LoopbackPlatform, default_platform
from maculad.proxy.spec import ListenerSpec, Target, desired_listeners, plan
from maculad.proxy.stats import Context, ListenerStats
from maculad.proxy.tcp import BACKLOG, TcpListener
from maculad.proxy.udp import UdpListener
from maculad.routes.manager import RouteTableManager
from maculad.routes.table import RouteTable

if TYPE_CHECKING:  # the terminator (and `cryptography` under it) is imported where it is built
    from maculad.proxy.tls import Terminator

log = structlog.get_logger("maculad.proxy")

State = Literal["starting", "serving", "failed", "draining"]
STATES: tuple[State, ...] = ("starting", "serving", "failed", "draining")


class ListenerStatus(TypedDict):
    """One listener (IP, protocol, port) of the relay."""

    route: str
    ip: str
    proto: str
    port: int
    kind: str
    backend: str  # host:port, or "per name" for a Host/SNI-routed listener
    service: str | None
    state: State
    last_error: str | None
    conns: int
    buffered_bytes: int
    retry_in: NotRequired[float]  # seconds until a failed bind is tried again


class RelayStatus(TypedDict):
    """The `proxy` component in `GET /v1/status` (also the container horizon's relay)."""

    table_version: int
    reconciled: bool
    listeners: list[ListenerStatus]
    starting: int
    serving: int
    failed: int
    draining: int
    aliases: list[str]

RETRY_INITIAL = 0.25

#: The listeners one horizon wants for a table (the host horizon: `spec.desired_listeners`).
Planner = Callable[[RouteTable, ProxyConfig], dict[ListenerSpec, Target]]

_BIND_HINTS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "address not available on this host (on macOS: is the lo0 alias there?)",
}


def bind_socket(spec: ListenerSpec) -> socket.socket:
    """Bind (and listen on) exactly `spec`'s address; raises OSError."""
    family = socket.AF_INET6 if ":" in spec.ip else socket.AF_INET
    kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        if spec.proto == "tcp":
            # Lets a relay restart rebind while old connections sit in TIME_WAIT; on Linux it
            # never lets two sockets listen on one address. (Not set for UDP, where it would.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.ip, spec.port))
        if spec.proto == "tcp":
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_reason(exc: OSError) -> tuple[str, str]:
    """(metric label, human reason) for a failed bind."""
    if isinstance(exc, AliasError):
        return "ALIAS", str(exc)
    code = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
    return code, _BIND_HINTS.get(exc.errno or 0, exc.strerror or str(exc))


class Entry:
    """One desired listener and what became of it."""

    __slots__ = ("attempts", "impl", "last_error", "retry", "retry_at", "spec", "state", "stats", "target")

    def __init__(self, spec: ListenerSpec, target: Target, stats: ListenerStats) -> None:
        self.spec = spec
        self.target = target
        self.stats = stats
        self.state: State = "starting"
        self.last_error: str | None = None
        self.impl: TcpListener | UdpListener | None = None
        self.retry: asyncio.Task[None] | None = None
        self.attempts = 0
        self.retry_at: float | None = None

    def status(self) -> ListenerStatus:
        out: ListenerStatus = {
            "route": self.target.route,
            "ip": self.spec.ip,
            "proto": self.spec.proto,
            "port": self.spec.port,
            "kind": self.target.kind,
            "backend": "per name" if self.target.kind in ("by-host", "by-sni") else str(self.target.backend),
            "service": self.target.service,
            "state": self.state,
            "last_error": self.last_error,
            "conns": len(self.impl.conns) if self.impl is not None else 0,
            "buffered_bytes": self.impl.buffered() if self.impl is not None else 0,
        }
        if self.retry_at is not None and self.state == "failed":
            out["retry_in"] = round(max(0.0, self.retry_at - time.monotonic()), 3)
        return out


class Relay:
    """The `proxy` component (maculad.core.component.Component)."""

    name = "proxy"

    def __init__(
        self,
        *,
        config: ProxyConfig,
        routes: RouteTableManager,
        metrics: Metrics,
        platform: LoopbackPlatform | None = None,
        horizon: str = "host",
        planner: Planner | None = None,
        tls: Terminator | None = None,
        redirect_http: bool = False,
        apex: tuple[str, Backend] | None = None,
    ) -> None:
        """`horizon` labels the metrics and names the tasks; `planner` chooses the listeners (default:
        `desired_listeners`, with TLS termination when `tls` is given)."""
        self.horizon = horizon
        self._planner = planner
        self._ctx = Context(config=config, metrics=metrics, tls=tls, redirect_http=redirect_http, apex=apex)
        self._routes = routes
        self._metrics = metrics
        self._platform = platform if platform is not None else default_platform()
        self._entries: dict[ListenerSpec, Entry] = {}
        self._draining: list[Entry] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._generation = 0
        self._applied = 0
        self._version = -1
        self._subscribed = False
        self._stopping = False
        self._staged: dict[ListenerSpec, socket.socket] = {}

    # -- Component

    async def start(self) -> None:
        """Bind what the current table wants; `run()` (a long-lived task) follows the table from then on."""
        self._started = True
        self._stopping = False
        self._routes.add_listener(self._on_table)
        self._subscribed = True
        self._bump()
        await self._reconcile_once()
        if self.flush_metrics not in self._metrics.before_scrape.hooks:
            self._metrics.before_scrape.hooks.append(self.flush_metrics)

    async def stop(self) -> None:
        self._stopping = True
        if self._subscribed:
            self._routes.remove_listener(self._on_table)
            self._subscribed = False
        if self.flush_metrics in self._metrics.before_scrape.hooks:
            self._metrics.before_scrape.hooks.remove(self.flush_metrics)
        for e in self._entries.values():
            if e.retry is not None:
                e.retry.cancel()
        grace = self._ctx.config.drain_grace
        entries, self._entries = list(self._entries.values()), {}
        for e in entries:
            self._retire(e, grace)
        pending = [e for e in self._draining if e.impl is not None]
        if pending:
            waits = [asyncio.ensure_future(e.impl.wait_drained()) for e in pending if e.impl is not None]
            _, late = await asyncio.wait(waits, timeout=grace + 1.0)
            for w in late:
                w.cancel()
        for e in list(self._draining):
            if e.impl is not None:
                e.impl.abort_all()
                e.impl.flush()
        self._draining.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._ctx.pumps.shutdown()  # every connection is closed by now; this closes the pump's epoll descriptor
        staged, self._staged = self._staged, {}
        self.discard(staged)
        await self._platform.remove_all()
        self._set_gauges()
        log.info("proxy_stopped")

    def status(self) -> RelayStatus:
        entries = sorted(
            [*self._entries.values(), *self._draining], key=lambda e: (e.spec.ip, e.spec.proto, e.spec.port)
        )
        counts: dict[State, int] = {s: 0 for s in STATES}
        for e in entries:
            counts[e.state] += 1
        return {
            "table_version": self._version,
            "reconciled": self._applied >= self._generation,
            "listeners": [e.status() for e in entries],
            "starting": counts["starting"],
            "serving": counts["serving"],
            "failed": counts["failed"],
            "draining": counts["draining"],
            "aliases": sorted(self._platform.managed()),
        }

    def health(self) -> str | None:
        """None while the relay runs and every listener it reports as serving still accepts; else
        what is wrong (the systemd watchdog's question, app/health.py). A listener that failed to
        bind is no sign of a wedged daemon (it is retried and shown in status): not counted here."""
        if not self._started or self._stopping:
            return "not running"
        for e in self._entries.values():
            if e.state == "serving" and e.impl is not None and not e.impl.serving():
                return f"{e.spec.address} no longer accepts"
        return None

    def reconfigure(self, config: ProxyConfig, *, redirect_http: bool | None = None) -> None:
        """Live reload: new timeouts apply to new connections; ports/permissions re-reconcile."""
        self._ctx.config = config
        if redirect_http is not None:
            self._ctx.redirect_http = redirect_http
        self._bump()

    async def stage(self, table: RouteTable, config: ProxyConfig, *,
                    redirect_http: bool) -> dict[ListenerSpec, socket.socket]:
        """Bind every listener `table` under `config` would add (not the running or retrying ones, those
        staged already — a table waiting for its state to be saved — nor those refused by rule);
        all or none: on a failure close them and raise OSError with the reason."""
        desired = self._desired(table, config, redirect_http=redirect_http)
        bound: dict[ListenerSpec, socket.socket] = {}
        try:
            for spec, target in desired.items():
                if spec in self._entries or spec in self._staged or target.refused is not None:
                    continue  # serving, retrying, staged by an earlier reload, or never bound
                try:
                    await self._platform.add(spec.ip)
                    bound[spec] = bind_socket(spec)
                except OSError as exc:
                    _code, reason = bind_reason(exc)
                    raise OSError(exc.errno, f"proxy: cannot bind {spec.address} for {target.route}: {reason}") \
                        from None
        except BaseException:
            self.discard(bound)
            await self._release_aliases()
            raise
        return bound

    def adopt(self, staged: dict[ListenerSpec, socket.socket]) -> None:
        """Serve the staged sockets once their listeners are reconciled (the next table or reconfigure)."""
        self._staged.update(staged)

    @staticmethod
    def discard(staged: dict[ListenerSpec, socket.socket]) -> None:
        for sock in staged.values():
            sock.close()

    def _desired(self, table: RouteTable, config: ProxyConfig, *, redirect_http: bool) -> dict[ListenerSpec, Target]:
        if self._planner is not None:
            return self._planner(table, config)
        return desired_listeners(table, config, terminating=self._ctx.tls is not None, redirect_http=redirect_http)

    def problems(self) -> list[str]:
        """One line per listener that should serve and does not (bind failed and retrying, or refused)."""
        return [e.last_error or f"{e.spec.address}: {e.state}" for e in self._entries.values()
                if e.state == "failed"]

    async def wait_reconciled(self) -> None:
        """Return once the listeners match the latest table (binds attempted; failures retrying)."""
        while self._applied < self._generation:
            await self._reconciled.wait()

    # -- following the table

    def _on_table(self, table: RouteTable) -> None:
        self._bump()

    def _bump(self) -> None:
        self._generation += 1
        self._reconciled.clear()
        self._wake.set()

    async def run(self, *, for_seconds: float | None = None) -> None:
        """The reconcile loop: converge on every table or config change. With `for_seconds` it returns
        after that long (between reconciles: only the wait is cut short), for a caller that runs it
        in turns with other work on one task."""
        if for_seconds is None:
            self._wake.set()  # after a restart by the TaskOwner, converge again
        deadline = None if for_seconds is None else asyncio.get_running_loop().time() + for_seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return
            await self._reconcile_once()

    async def _reconcile_once(self) -> None:
        self._wake.clear()
        generation = self._generation
        async with self._lock:
            if self._stopping:
                return
            await self._apply()
        self._applied = max(self._applied, generation)
        if self._applied >= self._generation:
            self._reconciled.set()

    async def _apply(self) -> None:
        table = self._routes.current
        config = self._ctx.config
        desired = self._desired(table, config, redirect_http=self._ctx.redirect_http)
        p = plan({s: e.target for s, e in self._entries.items()}, desired)
        for spec in p.remove:
            self._retire(self._entries.pop(spec), config.drain_grace)
        for spec, target in p.update:
            e = self._entries[spec]
            if target.route != e.target.route:
                e.stats = self._stats(spec, target)
            e.target = target
            if e.impl is not None:
                e.impl.target = target
                e.impl.stats = e.stats
            log.info("proxy_listener_updated", address=spec.address, route=target.route,
                     backend=str(target.backend))
        for spec, target in p.add:
            e = Entry(spec, target, self._stats(spec, target))
            self._entries[spec] = e
            await self._bind(e)
        self._version = table.version
        unused, self._staged = self._staged, {}  # staged for a table this one is not
        self.discard(unused)
        if not p.empty:
            await self._release_aliases()
        self._set_gauges()

    def _stats(self, spec: ListenerSpec, target: Target) -> ListenerStats:
        return ListenerStats(metrics=self._metrics, route=target.route, port=spec.port, proto=spec.proto,
                             horizon=self.horizon)

    # -- binding

    async def _bind(self, e: Entry) -> None:
        spec, target = e.spec, e.target
        if target.refused is not None:
            e.state = "failed"
            e.last_error = target.refused
            log.error("proxy_listener_refused", address=spec.address, route=target.route, reason=target.refused)
            return
        e.attempts += 1
        if target.kind == "tls" and self._ctx.tls is not None:
            try:  # mint the route's leaf now rather than inside the first handshake
                self._ctx.tls.premint(target.route, target.h2c)
            except (OSError, ValueError) as exc:
                e.state = "failed"
                e.last_error = f"no certificate for {target.route}: {exc}"
                log.error("tls_leaf_failed", name=target.route, error=str(exc))
                return
        try:
            await self._platform.add(spec.ip)
            sock = self._staged.pop(spec, None) or bind_socket(spec)
        except OSError as exc:
            self._bind_failed(e, exc)
            return
        impl: TcpListener | UdpListener
        if target.kind in ("by-host", "by-sni"):
            impl = DemuxListener(spec=spec, target=target, stats=e.stats, ctx=self._ctx,
                                 table=lambda: self._routes.current, horizon=self.horizon)
        elif spec.proto == "tcp":
            impl = TcpListener(spec=spec, target=target, stats=e.stats, ctx=self._ctx)
        else:
            impl = UdpListener(spec=spec, target=target, stats=e.stats, ctx=self._ctx)
        try:
            await impl.start(sock)
        except OSError as exc:
            sock.close()
            self._bind_failed(e, exc)
            return
        except BaseException:
            sock.close()
            raise
        if self._entries.get(spec) is not e or self._stopping:  # removed while we were starting it
            impl.abort_all()
            return
        e.impl = impl
        e.state = "serving"
        e.retry_at = None
        e.attempts = 0
        log.info("proxy_listening", address=spec.address, route=target.route, backend=str(target.backend),
                 kind=target.kind)
        self._set_gauges()

    def _bind_failed(self, e: Entry, exc: OSError) -> None:
        code, reason = bind_reason(exc)
        delay = Backoff(initial=RETRY_INITIAL, cap=self._ctx.config.bind_retry_max).delay(max(0, e.attempts - 1))
        e.state = "failed"
        e.last_error = f"cannot bind {e.spec.address}: {reason}"
        e.retry_at = time.monotonic() + delay
        self._metrics.proxy_listener_errors.labels(address=e.spec.address, reason=code).inc()
        log.error("proxy_bind_failed", address=e.spec.address, route=e.target.route, reason=reason, errno=code,
                  attempt=e.attempts, retry_in=round(delay, 3))
        e.retry = self._own(self._retry(e, delay), f"proxy.retry:{e.spec.address}")
        self._set_gauges()

    async def _retry(self, e: Entry, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if self._stopping or self._entries.get(e.spec) is not e or e.state == "serving":
                return
            e.retry = None
            await self._bind(e)

    # -- removal and draining

    def _retire(self, e: Entry, grace: float) -> None:
        if e.retry is not None:
            e.retry.cancel()
            e.retry = None
        impl = e.impl
        if impl is None:
            return
        e.state = "draining"
        impl.drain(grace)
        self._draining.append(e)
        log.info("proxy_listener_removed", address=e.spec.address, route=e.target.route,
                 open_connections=len(impl.conns), grace=grace)
        self._own(self._after_drain(e, impl), f"proxy.drain:{e.spec.address}")

    async def _after_drain(self, e: Entry, impl: TcpListener | UdpListener) -> None:
        await impl.wait_drained()
        impl.flush()
        if e in self._draining:
            self._draining.remove(e)
        self._set_gauges()
        await self._release_aliases()

    async def _release_aliases(self) -> None:
        if self._stopping:
            return
        used = {s.ip for s in self._entries} | {e.spec.ip for e in self._draining}
        for ip in sorted(self._platform.managed() - used):
            await self._platform.remove(ip)

    def _own(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- metrics

    def flush_metrics(self) -> None:
        """Export byte counts of open connections (closed ones flush themselves), and how many are piped."""
        for e in [*self._entries.values(), *self._draining]:
            if e.impl is not None:
                e.impl.flush()
        self._metrics.proxy_piped.labels(horizon=self.horizon).set(len(self._ctx.pumps))

    def _set_gauges(self) -> None:
        counts = {s: 0 for s in STATES}
        for e in [*self._entries.values(), *self._draining]:
            counts[e.state] += 1
        for state, n in counts.items():
            self._metrics.proxy_listeners.labels(horizon=self.horizon, state=state).set(n)
