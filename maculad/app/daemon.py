"""The composition root: builds every part, owns every long-lived task.

`Daemon.run()` builds the route table and the components from the config,
starts them in dependency order (DNS first — it needs only the table, so it
answers before the HTTP, Docker and Kubernetes clients are even imported —
then metrics, relay, sources and supervisors, control), tells systemd READY=1
once DNS and the relay serve, and waits. Signal handlers only set events: TERM/INT request a stop (a second INT
forces exit), HUP requests a reload. A reload (maculad/app/reload.py) is a
transaction: the config is read in a thread, every new listener is bound
first, and only then is anything swapped; a refused reload changes nothing and
is recorded (`status.last_reload`, the `reload` event, the log) like a good one.
A config or state problem at start (a directory where allocations.json should
be, a full disk) is one log line and exit 2.
Readiness (`not_ready`, `/readyz`, `status.ready`) lists every configured
listener that is not serving.

Shutdown is staged, each stage with a timeout: STOPPING=1 → close the DNS and
relay listeners (the relay drains open connections up to `drain_grace`) →
stop sources and supervisors → stop the control and metrics endpoints.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from maculad import __version__
from maculad.app import reload as reloading
from maculad.app.reload import apex, own_addresses, peer_args
from maculad.config import Config, ConfigError
from maculad.control.api import ControlError
from maculad.control.views import config_view, conflict_view, route_view, table_view
from maculad.dns.server import DNSServer
from maculad.core.events import EventBus
from maculad.horizons.plan import conflict_view as port_conflict_view
from maculad.observability import sdnotify
from maculad.observability.metrics import Metrics
from maculad.providers.base import start_provider, stop_provider
from maculad.providers.static import config_routes
from maculad.proxy.platform import AliasPlatform
from maculad.proxy.relay import Relay
from maculad.routes.manager import RouteTableManager
from maculad.routes.store import AllocationStore
from maculad.routes.table import RouteTable
from maculad.core.fsutil import StateError, state_error
from maculad.app.health import Health, probe_dns, probe_target, verdict
from maculad.core.limits import LOW_NOFILE, NofileLimits, raise_nofile
from maculad.core.names import qualify
from maculad.core.tasks import TaskOwner

if TYPE_CHECKING:  # imported where they are built: DNS answers before aiohttp & co. are loaded
    import socket

    from maculad.control.protocol import (
        ClusterRecreated,
        ClusterStatus,
        ComponentError,
        Components,
        ContainerHorizonView,
        DNSLookup,
        Event,
        LastReload,
        PowerDNSStatus,
        ReloadAnswer,
        RoutesAnswer,
        ServiceAction,
        ServiceActionAnswer,
        ServiceView,
        Status,
    )
    from maculad.web.server import WebServer
    from maculad.horizons.containers import ContainerHorizon
    from maculad.publishers.coredns import CoreDNSPublisher
    from maculad.proxy.tls import Terminator
    from maculad.app.docker_tier import DockerTier
    from maculad.control.server import ControlServer
    from maculad.observability.http import MetricsServer
    from maculad.providers.kubernetes import KubernetesProvider
    from maculad.publishers.powerdns_sync import PowerDNSPublisher
    from maculad.supervise.cluster import ClusterSupervisor

log = structlog.get_logger("maculad")

STOP_TIMEOUT = 5.0


class Daemon:
    """Implements `maculad.control.api.ControlTarget` for the control socket."""

    def __init__(self, *, config: Config, metrics: Metrics | None = None,
                 own_aliases: AliasPlatform | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.events = EventBus()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._interrupts = 0
        self._fatal: str | None = None
        self.owner = TaskOwner(metrics=self.metrics, on_fatal=self._task_fatal)
        self.table = RouteTableManager(
            domain=config.domain,
            pool=config.proxy.pool,
            store=AllocationStore(state_dir=config.state_dir),
            metrics=self.metrics,
            events=self.events,
            allow_non_loopback=config.proxy.allow_non_loopback,
        )
        self.table.add_listener(self._on_table)
        self.own_aliases = own_aliases if own_aliases is not None else AliasPlatform()
        self.dns: DNSServer | None = None
        self.relay: Relay | None = None
        self.containers: ContainerHorizon | None = None
        self.tls: Terminator | None = None
        self.tls_error: str | None = None
        self.docker: DockerTier | None = None
        self.kubernetes: KubernetesProvider | None = None
        self.coredns: CoreDNSPublisher | None = None
        self.cluster: ClusterSupervisor | None = None
        self.powerdns: PowerDNSPublisher | None = None
        self.control: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.web: WebServer | None = None
        self._ready = False
        self._last_reload: LastReload | None = None
        self.limits: NofileLimits | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            await self.start()
        except BaseException as exc:
            from maculad.control.server import ControlSocketError

            log.error("startup_failed", error=str(exc))
            await self.shutdown()
            if isinstance(exc, StateError | ConfigError):
                return 2
            if isinstance(exc, OSError | ControlSocketError):
                return 1
            raise
        self.owner.spawn("reload-signal", self._reload_loop, stage="meta")
        await self._stop.wait()
        await self.shutdown()
        if self._fatal:
            log.error("stopped_after_fatal_error", task=self._fatal)
            return 1
        return 0

    async def start(self) -> None:
        cfg = self.config
        log.info("starting", version=__version__, config=str(cfg.path), domain=cfg.domain,
                 pid=os.getpid())
        self._raise_limits()
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_error(cfg.state_dir, exc) from None
        self.table.update("config", config_routes(cfg))
        if self.table.save_error is not None:  # at start a state that cannot be written is fatal
            raise self.table.save_error
        # macOS: lo0 aliases for the DNS, page and metrics addresses (the relay adds its routes' own)
        await self.own_aliases.keep_only(own_addresses(cfg))
        # DNS first: it answers from the table alone, before the rest is even imported.
        self.dns = DNSServer(config=cfg.dns, domain=cfg.domain, routes=self.table, metrics=self.metrics,
                             apex_a=apex(cfg), **peer_args(cfg.powerdns))
        await self.dns.start(self.owner)

        from maculad.control.server import ControlServer

        await self.start_metrics(cfg)
        from maculad.proxy.tls import load_terminator

        self.tls, self.tls_error = load_terminator(domain=cfg.domain, state_dir=cfg.state_dir, config=cfg.tls,
                                                   metrics=self.metrics)
        if self.tls_error is not None and cfg.tls.enabled:
            log.error("tls_unavailable", reason=self.tls_error,
                      effect="routes with only an http backend get no https port")
        self.relay = Relay(config=cfg.proxy, routes=self.table, metrics=self.metrics, tls=self.tls,
                           redirect_http=cfg.tls.redirect_http)
        await self.relay.start(self.owner)
        self.metrics.horizon_up.labels(horizon="host").set(1)
        await self.start_containers(cfg)
        await self.start_sources(cfg)
        await self.start_powerdns(cfg)
        self.control = ControlServer(config=cfg.control, target=self, metrics=self.metrics)
        await self.control.start(self.owner)
        await self.start_web(cfg)

        await self.relay.wait_reconciled()
        if self.containers is not None:
            await self.containers.wait_reconciled()
        self._ready = True
        self.metrics.up.set(1)
        sdnotify.ready()
        sdnotify.status(self._summary())
        notifier = sdnotify.default_notifier()
        if notifier.watchdog_interval is not None:
            self.owner.spawn("watchdog", lambda: notifier.run_watchdog(self.watchdog_check), stage="meta")
        if sdnotify.default_notifier().enabled:  # no systemd, nobody to tell: no timer
            self.owner.spawn("status-line", self._status_loop, stage="meta")
        log.info("ready", routes=len(self.table.current.routes), dns=[str(a) for a in cfg.dns.listen],
                 metrics=str(cfg.metrics.listen) if cfg.metrics.listen else None,
                 control=str(cfg.control.socket))
        self.events.publish("ready", routes=len(self.table.current.routes))

    def _raise_limits(self) -> None:
        """Soft RLIMIT_NOFILE up to the hard limit: every relayed connection holds two descriptors."""
        lim = self.limits = raise_nofile()
        self.metrics.open_files_limit.labels(limit="soft").set(lim.soft)
        self.metrics.open_files_limit.labels(limit="hard").set(lim.hard)
        if lim.error is not None:
            log.warning("open_files_limit", soft=lim.soft, hard=lim.hard, error=lim.error)
        elif lim.soft < LOW_NOFILE:
            log.warning("open_files_limit", soft=lim.soft, hard=lim.hard, raised_from=lim.before,
                        hint=f"below {LOW_NOFILE}: raise the hard limit (LimitNOFILE= in the systemd unit)")
        else:
            log.info("open_files_limit", soft=lim.soft, hard=lim.hard, raised_from=lim.before)

    async def _stop_sources(self) -> None:
        for section in ("coredns", "kind", "kubernetes", "docker"):
            await self.stop_source(section)

    async def stop_source(self, section: str) -> None:
        """Stop one source (its routes stay in the table)."""
        if section == "coredns" and self.coredns is not None:
            await bounded(self.coredns.stop(), what="coredns")
            self.coredns = None
        elif section == "kind" and self.cluster is not None:
            await bounded(self.cluster.stop(), what="cluster")
            self.cluster = None
        elif section == "kubernetes" and self.kubernetes is not None:
            await bounded(stop_provider(self.owner, self.kubernetes), what="kubernetes")
            self.kubernetes = None
        elif section == "docker" and self.docker is not None:
            await bounded(self.docker.stop(), what="docker")
            self.docker = None

    async def shutdown(self) -> None:
        """Staged: STOPPING → listeners closed and drained → sources stopped → endpoints closed."""
        sdnotify.stopping()
        self.metrics.up.set(0)
        self._ready = False
        log.info("stopping")
        await self.owner.stop_stage("meta", timeout=STOP_TIMEOUT)
        if self.web is not None:
            await bounded(self.web.stop(), what="web")
            self.web = None
        if self.dns is not None:
            await bounded(self.dns.stop(), what="dns")
        if self.relay is not None:
            grace = self.config.proxy.drain_grace
            await bounded(self.relay.stop(), what="proxy", timeout=grace + STOP_TIMEOUT)
            self.metrics.horizon_up.labels(horizon="host").set(0)
        if self.containers is not None:
            grace = self.config.proxy.drain_grace
            await bounded(self.containers.stop(), what="containers", timeout=grace + STOP_TIMEOUT)
        await self._stop_sources()
        await self.stop_powerdns()
        for stage in ("sources", "supervisors", "publishers", "proxy", "dns"):
            await self.owner.stop_stage(stage, timeout=STOP_TIMEOUT)
        if self.control is not None:
            await bounded(self.control.stop(), what="control")
        await self.owner.stop_stage("control", timeout=STOP_TIMEOUT)
        if self.metrics_server is not None:
            await bounded(self.metrics_server.stop(), what="metrics")
        await bounded(self.own_aliases.remove_all(), what="aliases")
        self.table.close()
        for leftover in sorted({str(t["stage"]) for t in self.owner.status()}):
            await self.owner.stop_stage(leftover, timeout=STOP_TIMEOUT)
        log.info("stopped")

    async def start_powerdns(self, cfg: Config) -> None:
        if cfg.powerdns.enabled and self.powerdns is None:
            from maculad.adapters.powerdns import PowerDNSAPI
            from maculad.publishers.powerdns_sync import PowerDNSPublisher

            p = cfg.powerdns
            api = PowerDNSAPI(api=p.api, api_key=p.api_key, server_id=p.server_id, timeout=p.timeout)
            self.powerdns = PowerDNSPublisher(config=p, ttl=cfg.dns.ttl, routes=self.table, api=api,
                                              metrics=self.metrics, address=self._containers_address)
            await self.powerdns.start(self.owner)

    def _containers_address(self) -> str | None:
        """G, for PowerDNS's A records when publish_address is not set."""
        return self.containers.address if self.containers is not None else None

    def _containers_changed(self) -> None:
        if self.powerdns is not None:
            self.powerdns.address_changed()

    async def stop_powerdns(self) -> None:
        if self.powerdns is not None:
            await self.owner.stop("powerdns-sync")
            await bounded(self.powerdns.stop(), what="powerdns")
            self.powerdns = None

    def request_stop(self) -> None:
        self._stop.set()

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            log.warning("forced_exit", reason="second SIGINT")
            os._exit(130)
        self._stop.set()

    def _task_fatal(self, name: str, error: BaseException | None) -> None:
        self._fatal = name
        self._stop.set()

    # ------------------------------------------------------------------ background

    async def watchdog_check(self, lag: float) -> str | None:
        """None while the loop turns, the first DNS listener answers a real query and the relay
        accepts (see app/health.py); else why systemd should not hear WATCHDOG=1."""
        interval = sdnotify.default_notifier().watchdog_interval or 1.0
        dns_problem: str | None = "not started"
        if self.dns is not None:
            udp = [(h, p) for proto, h, p in self.dns.bound() if proto == "udp"]
            dns_problem = "no UDP listener" if not udp else await probe_dns(
                probe_target(*udp[0]), self.config.domain, timeout=min(1.0, interval / 2))
        relay_problem = "not started" if self.relay is None else self.relay.health()
        problem = verdict(Health(loop_lag=lag, dns=dns_problem, relay=relay_problem), max_lag=2 * interval)
        if problem is not None:
            self.metrics.watchdog_withheld.inc()
        return problem

    async def _status_loop(self) -> None:
        last = ""
        while True:
            line = self._summary()
            if line != last:
                sdnotify.status(line)
                last = line
            await asyncio.sleep(5)

    def _summary(self) -> str:
        table = self.table.current
        parts = [f"{len(table.routes)} routes"]
        if table.conflicts:
            parts.append(f"{len(table.conflicts)} conflicts")
        if self.docker is not None:
            svcs = self.docker.services()
            up = sum(1 for s in svcs if s.get("state") == "running")
            parts.append(f"{up}/{len(svcs)} services running")
        if self.cluster is not None:
            parts.append(f"cluster {self.cluster.status().get('state', '?')}")
        if self.powerdns is not None:
            parts.append("PowerDNS " + ("in sync" if self.powerdns.last_error is None and self.powerdns.connected
                                        else "not in sync"))
        return ", ".join(parts)

    def _on_table(self, table: RouteTable) -> None:
        self.events.publish("routes", version=table.version, routes=len(table.routes),
                            conflicts=len(table.conflicts))

    def not_ready(self) -> list[str]:
        """Why the daemon is not ready: starting, or a configured listener that does not serve."""
        reasons: list[str] = []
        if self.dns is None:
            reasons.append("dns: not started")
        else:
            reasons += [f"dns: not serving on {a}" for a in self.dns.missing()]
        if self.relay is None:
            reasons.append("proxy: not started")
        else:
            failed = self.relay.problems()
            reasons += [f"proxy: {p}" for p in failed[:5]]
            if len(failed) > 5:
                reasons.append(f"proxy: and {len(failed) - 5} more listeners not serving")
        if self._ready and self.config.metrics.listen is not None and self.metrics_server is None:
            reasons.append(f"metrics: not serving on {self.config.metrics.listen}")
        if self.config.web.enabled and self.web is not None and self.web.problem is not None:
            reasons.append(f"web: {self.web.problem}")
        if not self._ready and not reasons:
            reasons.append("starting")
        return reasons

    # ------------------------------------------------------------------ reload

    async def _reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            try:
                await self.reload()
            except ControlError:
                pass  # recorded and logged by record_reload
            except Exception as exc:  # a bug: logged with its traceback, recorded, the loop goes on
                log.exception("reload_failed")
                self._last_reload = {"time": time.time(), "ok": False, "changed": [],
                                     "error": f"internal error: {type(exc).__name__}: {exc}"}

    async def reload(self) -> ReloadAnswer:
        sdnotify.reloading()
        try:
            return await reloading.reload(self)
        finally:
            sdnotify.ready()
            sdnotify.status(self._summary())

    def record_reload(self, result: str, *, error: str | None = None, changed: list[str] | None = None,
                      status: int = 400, state_error: str | None = None) -> ControlError:
        """Count, log, remember and publish a reload's outcome; the ControlError to raise when it failed."""
        ok = error is None
        self.metrics.reloads.labels(result=result).inc()
        last: LastReload = {"time": time.time(), "ok": ok, "error": error, "changed": changed or []}
        if state_error is not None:
            last["state_error"] = state_error
        self._last_reload = last
        self.events.publish("reload", ok=ok, error=error, changed=changed or [])
        if ok:
            log.info("reloaded", changed=changed or [], state_error=state_error)
        else:
            log.error("reload_refused", result=result, error=error)
        return ControlError(status, error or "")

    async def start_metrics(self, cfg: Config, *, sock: socket.socket | None = None) -> None:
        if cfg.metrics.listen is None:
            return
        from maculad.observability.http import MetricsServer

        server = MetricsServer(listen=cfg.metrics.listen, metrics=self.metrics, not_ready=self.not_ready)
        await server.start(self.owner, sock=sock)
        self.metrics_server = server

    async def start_containers(self, cfg: Config) -> None:
        """The container horizon on G; when it cannot serve it reports why and the host horizon goes on."""
        if cfg.containers.enabled and self.containers is None:
            from maculad.horizons.containers import ContainerHorizon

            self.containers = ContainerHorizon(config=cfg, routes=self.table, metrics=self.metrics,
                                               on_change=self._containers_changed, tls=self.tls)
            await self.containers.start(self.owner)
        if not cfg.containers.enabled:
            self.metrics.horizon_up.labels(horizon="containers").set(0)

    async def start_web(self, cfg: Config, *, sock: socket.socket | None = None) -> None:
        if not cfg.web.enabled:
            return
        from maculad.web.server import WebServer

        self.web = WebServer(source=self, domain=cfg.domain, listen=cfg.web_listen, metrics=self.metrics,
                             max_clients=cfg.web.max_clients, max_connections=cfg.web.max_connections,
                             check_interval=cfg.web.check_interval)
        await self.web.start(self.owner, sock=sock)

    async def start_sources(self, cfg: Config) -> None:
        """Start every enabled source that is not running; forget the routes of disabled ones."""
        if cfg.docker.enabled and self.docker is None:
            from maculad.app.docker_tier import DockerTier

            self.docker = DockerTier(config=cfg, routes=self.table, metrics=self.metrics, events=self.events)
            await self.docker.start(self.owner)
        if not cfg.docker.enabled and self.table.specs("docker"):
            self.table.update("docker", [])
        if cfg.kubernetes.enabled and self.kubernetes is None:
            from maculad.providers.kubernetes import KubernetesProvider

            self.kubernetes = KubernetesProvider(config=cfg, routes=self.table, metrics=self.metrics,
                                                 events=self.events)
            start_provider(self.owner, self.kubernetes, stage="sources")
        if not cfg.kubernetes.enabled and self.table.specs("kubernetes"):
            self.table.update("kubernetes", [])
        if cfg.kubernetes.enabled and self.coredns is None:
            from maculad.publishers.coredns import CoreDNSPublisher

            self.coredns = CoreDNSPublisher(
                config=cfg, metrics=self.metrics,
                address=lambda: self.containers.address if self.containers is not None and self.containers.serving
                else None)
            await self.coredns.start(self.owner)
        if cfg.kind.manage and self.cluster is None:
            from maculad.supervise.cluster import ClusterSupervisor

            self.cluster = ClusterSupervisor(config=cfg, metrics=self.metrics, events=self.events,
                                             tls=self.tls.store if self.tls is not None else None)
            await self.cluster.start(self.owner)

    # ------------------------------------------------------------------ ControlTarget

    def status(self) -> Status:
        cfg = self.config
        comps: Components = {}
        if self.metrics_server is not None:
            comps["metrics"] = _guarded(self.metrics_server.status)
        if self.dns is not None:
            comps["dns"] = _guarded(self.dns.status)
        if self.relay is not None:
            comps["proxy"] = _guarded(self.relay.status)
        if self.containers is not None:
            comps["containers"] = _guarded(self.containers.status)
        if self.docker is not None:
            comps["docker"] = _guarded(self.docker.status)
        if self.kubernetes is not None:
            comps["kubernetes"] = _guarded(self.kubernetes.status)
        if self.coredns is not None:
            comps["coredns"] = _guarded(self.coredns.status)
        if self.cluster is not None:
            comps["kind"] = _guarded(self.cluster.status)
        if self.powerdns is not None:
            comps["powerdns"] = _guarded(self.powerdns.status)
        if self.control is not None:
            comps["control"] = _guarded(self.control.status)
        if self.web is not None:
            comps["web"] = _guarded(self.web.status)
        table = self.table.current
        not_ready = self.not_ready()
        return {
            **config_view(cfg),
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ready": self._ready and not not_ready,
            "not_ready": not_ready,
            "summary": self._summary(),
            "routes": {"count": len(table.routes), "by_source": {k: n for k, n in table.by_source().items()},
                       "conflicts": len(table.conflicts), "version": table.version},
            "components": comps,
            "tls": self.tls.status() if self.tls is not None else {"enabled": False, "error": self.tls_error},
            "tasks": self.owner.status(),
            "limits": self.limits.as_dict() if self.limits is not None else None,
            "watchdog": sdnotify.default_notifier().watchdog_status(),
            "last_reload": self._last_reload,
            "state": self.table.state_status(),
        }

    def routes(self) -> RoutesAnswer:
        c = self.containers
        containers: ContainerHorizonView = (
            {"state": "off", "address": None, "reason": "[containers] enabled = false", "port_conflicts": []}
            if c is None else
            {"state": c.status()["state"], "address": c.address, "reason": c.status()["reason"],
             "port_conflicts": [port_conflict_view(p) for p in c.port_conflicts()]})
        table = table_view(self.table.current)
        view: RoutesAnswer = {
            "version": table["version"], "domain": table["domain"], "routes": table["routes"],
            "conflicts": table["conflicts"],
            "horizons": {"host": {"state": "on" if self.relay is not None else "off", "address": "per route"},
                         "containers": containers},
        }
        if self.powerdns is not None:
            view["powerdns_conflicts"] = self.powerdns.status()["conflicts"]
        return view

    def powerdns_status(self) -> PowerDNSStatus:
        if self.powerdns is None:
            raise ControlError(409, "PowerDNS is not enabled ([powerdns] enabled = false)")
        return self.powerdns.status()

    def services(self) -> list[ServiceView]:
        return self.docker.services() if self.docker is not None else []

    async def service_action(self, service: str, action: ServiceAction) -> ServiceActionAnswer:
        if self.docker is None:
            raise ControlError(409, "the Docker tier is not enabled ([docker] enabled = false)")
        sup = self.docker.supervisor
        try:
            if action == "start":
                await sup.start_service(service)
            elif action == "stop":
                await sup.stop_service(service)
            else:
                await sup.restart_service(service)
        except KeyError:
            raise ControlError(404, f"no supervised service named {service!r}") from None
        except ValueError as exc:
            raise ControlError(409, str(exc)) from None
        self.events.publish("service_action", service=service, action=action)
        return {"ok": True, "service": service, "action": action}

    def cluster_status(self) -> ClusterStatus:
        if self.cluster is None:
            raise ControlError(409, "kind cluster management is off ([kind] manage = false)")
        return self.cluster.status()

    async def cluster_recreate(self) -> ClusterRecreated:
        if self.cluster is None:
            raise ControlError(409, "kind cluster management is off ([kind] manage = false)")
        await self.cluster.recreate("requested with maculactl cluster recreate")
        return {"ok": True, "cluster": self.config.kind.cluster}

    def dns_lookup(self, name: str) -> DNSLookup:
        table = self.table.current
        n = name.strip().lower().rstrip(".")
        domain = self.config.domain
        if n != domain and not n.endswith("." + domain):
            try:
                n = qualify(n, domain)
            except ValueError as exc:
                raise ControlError(400, f"{name!r}: {exc}") from None
        route = table.lookup(n)
        if route is None:
            return {"name": n, "rcode": "NXDOMAIN", "answer": None, "route": None,
                    "conflicts": [conflict_view(c) for c in table.conflicts if c.name == n]}
        return {
            "name": n,
            "rcode": "NOERROR",
            "answer": route.ip,
            "ttl": self.config.dns.ttl,
            "route": route_view(route),
            "conflicts": [conflict_view(c) for c in table.conflicts if c.name == route.name],
        }

    async def follow_events(self, *, replay: int) -> AsyncIterator[Event]:
        async for event in self.events.follow(replay=replay):
            yield event


_T = TypeVar("_T")


def _guarded(status: Callable[[], _T]) -> _T | ComponentError:
    """A component's status, or what went wrong reading it: a status bug must not break the rest."""
    try:
        return status()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def bounded(coro: Any, *, what: str, timeout: float = STOP_TIMEOUT) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        log.error("stop_timeout", component=what, timeout=timeout)
    except Exception:
        log.exception("stop_failed", component=what)
