"""The composition root: builds every part, lists every long-lived task, stops them in stages.

`Daemon.run()` builds the route table and the parts from the config, starts
them in dependency order (DNS first — it needs only the table, so it answers
before the HTTP, Docker and Kubernetes clients are even imported — then
metrics, relay, sources and supervisors, control), tells systemd READY=1 once
DNS and the relay serve, and waits. Parts never spawn tasks: each exposes its
loops, and the `*_TASKS` lists below name every long-lived task, the part that
runs it and its `Stage`; a part's tasks are spawned right after it started
and cancelled right before it stops.

Signal handlers only set events: TERM/INT request a stop (a second INT forces
exit), HUP requests a reload. A reload (app/reload.py) is a transaction; what
the control socket and the status page see is app/facade.py. A config or state
problem at start (a directory where allocations.json should be, a full disk)
is one log line and exit 2. Readiness (`not_ready`, `/readyz`, `status.ready`)
lists every configured listener that is not serving.

Shutdown is one sequence (`shutdown`), each step bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from maculad import __version__
from maculad.app import reload as reloading
from maculad.app.health import Health, probe_dns, probe_target, verdict
from maculad.app.reload import apex, own_addresses, peer_args
from maculad.config import Config, ConfigError
from maculad.control.api import ControlError
from maculad.core.events import EventBus
from maculad.core.fsutil import StateError, state_error
from maculad.core.limits import LOW_NOFILE, NofileLimits, raise_nofile
from maculad.core.tasks import Stage, TaskFactory, TaskOwner, TaskSpec
from maculad.dns.server import DNSServer
from maculad.observability import sdnotify
from maculad.observability.metrics import Metrics
from maculad.providers.static import config_routes
from maculad.proxy.platform import AliasPlatform
from maculad.routes.manager import RouteTableManager
from maculad.routes.store import AllocationStore
from maculad.routes.table import RouteTable

if TYPE_CHECKING:  # imported where they are built: DNS answers before the rest is loaded
    import socket

    from maculad.app.docker_tier import DockerTier
    from maculad.control.protocol import LastReload, ReloadAnswer
    from maculad.control.server import ControlServer
    from maculad.horizons.containers import ContainerHorizon
    from maculad.observability.http import MetricsServer
    from maculad.pki.signer import Signer
    from maculad.providers.kubernetes import KubernetesProvider
    from maculad.proxy.relay import Relay
    from maculad.proxy.tls import Terminator
    from maculad.publishers.coredns import CoreDNSPublisher
    from maculad.publishers.powerdns_sync import PowerDNSPublisher
    from maculad.supervise.cluster import ClusterSupervisor
    from maculad.web.server import WebServer

log = structlog.get_logger("maculad")

STOP_TIMEOUT = 5.0

# --------------------------------------------------------------------------- every long-lived task
# By the part that runs it: name, stage, loop. DNS, the control socket and the metrics endpoint have
# none (their servers run on the event loop); the stages stop in the order `Daemon.shutdown` gives.

DAEMON_TASKS: Final[tuple[TaskSpec[Daemon], ...]] = (
    TaskSpec("reload-signal", Stage.META, lambda d: d.reload_loop),
    TaskSpec("watchdog", Stage.META, lambda d: d.watchdog_loop()),
    TaskSpec("status-line", Stage.META, lambda d: d.status_loop if sdnotify.default_notifier().enabled else None),
)
WEB_TASKS: Final[tuple[TaskSpec[WebServer], ...]] = (
    TaskSpec("web.invalidate", Stage.WEB, lambda w: w.invalidate_on_events),
    TaskSpec("web.bind", Stage.WEB, lambda w: w.bind_retry),
)
RELAY_TASKS: Final[tuple[TaskSpec[Relay], ...]] = (
    TaskSpec("proxy.reconcile", Stage.PROXY, lambda r: r.run),
)
SIGNER_TASKS: Final[tuple[TaskSpec[Signer], ...]] = (
    TaskSpec("tls.signer", Stage.PROXY, lambda s: s.run),  # leaves signed in a child (pki/signer.py)
)
CONTAINERS_TASKS: Final[tuple[TaskSpec[ContainerHorizon], ...]] = (
    TaskSpec("containers.networks", Stage.PROXY, lambda h: h.run),  # also runs the relay on G
)
DOCKER_TASKS: Final[tuple[TaskSpec[DockerTier], ...]] = (
    TaskSpec("docker.inventory", Stage.SOURCES, lambda t: t.inventory.run),
    TaskSpec("docker.provider", Stage.SOURCES, lambda t: t.provider.run),
    TaskSpec("docker.supervisor", Stage.SOURCES, lambda t: t.supervisor.run),
    TaskSpec("docker.compose", Stage.SOURCES, lambda t: t.compose.run),
)
KUBERNETES_TASKS: Final[tuple[TaskSpec[KubernetesProvider], ...]] = (
    TaskSpec("kubernetes.provider", Stage.SOURCES, lambda p: p.run),
)
CLUSTER_TASKS: Final[tuple[TaskSpec[ClusterSupervisor], ...]] = (
    TaskSpec("kind.cluster", Stage.SUPERVISORS, lambda c: c.run, stop_timeout=10.0),
)
COREDNS_TASKS: Final[tuple[TaskSpec[CoreDNSPublisher], ...]] = (
    TaskSpec("publishers.coredns", Stage.PUBLISHERS, lambda c: c.run),
)
POWERDNS_TASKS: Final[tuple[TaskSpec[PowerDNSPublisher], ...]] = (
    TaskSpec("powerdns-sync", Stage.PUBLISHERS, lambda p: p.run),
)


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


async def _breathe() -> None:
    """One pass of the event loop (its ready callbacks and a poll of the sockets without waiting)."""
    await asyncio.sleep(0)


class Daemon:
    """Builds the parts, spawns and stops their tasks; `ControlFacade(daemon)` answers the control socket."""

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
        self.signer: Signer | None = None
        self.docker: DockerTier | None = None
        self.kubernetes: KubernetesProvider | None = None
        self.coredns: CoreDNSPublisher | None = None
        self.cluster: ClusterSupervisor | None = None
        self.powerdns: PowerDNSPublisher | None = None
        self.control: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.web: WebServer | None = None
        self.ready = False
        self.last_reload: LastReload | None = None
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
        await self.dns.start()
        # From here every step imports and builds a part in one go, without waiting on anything: a
        # `_breathe()` between them lets the loop answer the DNS queries that arrived meanwhile.
        await _breathe()
        await self.start_metrics(cfg)
        await _breathe()
        self.tls, self.tls_error = None, "disabled (tls.enabled = false)"
        if cfg.tls.enabled:  # the CA only for TLS; `cryptography` only in the signer's child (pki/signer.py)
            await self.start_tls(cfg)
            await _breathe()
        from maculad.proxy.relay import Relay  # the data paths, after DNS answers

        self.relay = Relay(config=cfg.proxy, routes=self.table, metrics=self.metrics, tls=self.tls,
                           redirect_http=cfg.tls.redirect_http)
        await self.relay.start()
        self.owner.spawn_for(self.relay, RELAY_TASKS)
        self.metrics.horizon_up.labels(horizon="host").set(1)
        await _breathe()
        await self.start_containers(cfg)
        await _breathe()
        await self.start_sources(cfg)
        await _breathe()
        await self.start_powerdns(cfg)
        await _breathe()
        from maculad.app.facade import ControlFacade
        from maculad.control.server import ControlServer

        self.control = ControlServer(config=cfg.control, target=ControlFacade(self), metrics=self.metrics)
        await self.control.start()
        await _breathe()
        await self.start_web(cfg)

        await self.relay.wait_reconciled()
        if self.containers is not None:
            await self.containers.wait_reconciled()
        self.ready = True
        self.metrics.up.set(1)
        sdnotify.ready()
        sdnotify.status(self.summary())
        self.owner.spawn_for(self, DAEMON_TASKS)  # the status line only when systemd listens: no idle timer
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

    async def _stop_part(self, part: _Stoppable | None, tasks: tuple[TaskSpec[Any], ...], what: str, *,
                         timeout: float = STOP_TIMEOUT) -> None:
        """A part's tasks first (so no loop touches it while it closes), then the part."""
        await self.owner.stop_for(tasks)
        if part is not None:
            await bounded(part.stop(), what=what, timeout=timeout)

    async def stop_source(self, section: str) -> None:
        """Stop one source (its routes stay in the table)."""
        if section == "coredns":
            await self._stop_part(self.coredns, COREDNS_TASKS, "coredns")
            self.coredns = None
        elif section == "kind":
            await self._stop_part(self.cluster, CLUSTER_TASKS, "cluster")
            self.cluster = None
        elif section == "kubernetes":
            await self.owner.stop_for(KUBERNETES_TASKS)
            if self.kubernetes is not None:
                self.kubernetes.close()
            self.kubernetes = None
        elif section == "docker":
            await self._stop_part(self.docker, DOCKER_TASKS, "docker")
            self.docker = None

    async def stop_web(self) -> None:
        await self._stop_part(self.web, WEB_TASKS, "web")
        self.web = None

    async def stop_metrics(self) -> None:
        await self._stop_part(self.metrics_server, (), "metrics")
        self.metrics_server = None

    async def stop_containers(self, *, grace: float | None = None) -> None:
        grace = self.config.proxy.drain_grace if grace is None else grace
        await self._stop_part(self.containers, CONTAINERS_TASKS, "containers", timeout=grace + STOP_TIMEOUT)
        self.containers = None

    async def shutdown(self) -> None:
        """Staged, each step bounded by a timeout; a part that never started is skipped."""
        # 1. Tell systemd and readiness probes first.
        sdnotify.stopping()
        self.metrics.up.set(0)
        self.ready = False
        log.info("stopping")
        # 2. The daemon's own tasks: no reload or status line from here on.
        await self.owner.stop_stage(Stage.META, timeout=STOP_TIMEOUT)
        # 3. The listeners clients use: the page, DNS, the relay (open connections drain for drain_grace).
        await self.stop_web()
        await self._stop_part(self.dns, (), "dns")
        grace = self.config.proxy.drain_grace
        await self._stop_part(self.relay, RELAY_TASKS, "proxy", timeout=grace + STOP_TIMEOUT)
        await self.owner.stop_for(SIGNER_TASKS)  # a running child is killed
        if self.relay is not None:
            self.metrics.horizon_up.labels(horizon="host").set(0)
        await self.stop_containers()
        # 4. Sources, supervisors and publishers (routes and containers stay as they are).
        for section in ("coredns", "kind", "kubernetes", "docker"):
            await self.stop_source(section)
        await self.stop_powerdns()
        # 5. The control socket, then the metrics endpoint (scraped to the end).
        await self._stop_part(self.control, (), "control")
        await self.stop_metrics()
        await bounded(self.own_aliases.remove_all(), what="aliases")
        # 6. The table's last save; then whatever a failed start left running.
        self.table.close()
        for stage in Stage:
            await self.owner.stop_stage(stage, timeout=STOP_TIMEOUT)
        log.info("stopped")

    async def start_powerdns(self, cfg: Config) -> None:
        if cfg.powerdns.enabled and self.powerdns is None:
            from maculad.adapters.powerdns import PowerDNSAPI
            from maculad.publishers.powerdns_sync import PowerDNSPublisher

            p = cfg.powerdns
            api = PowerDNSAPI(api=p.api, api_key=p.api_key, server_id=p.server_id, timeout=p.timeout)
            self.powerdns = PowerDNSPublisher(config=p, ttl=cfg.dns.ttl, routes=self.table, api=api,
                                              metrics=self.metrics, address=self._containers_address)
            await self.powerdns.start()
            self.owner.spawn_for(self.powerdns, POWERDNS_TASKS)

    def _containers_address(self) -> str | None:
        """G, for PowerDNS's A records when publish_address is not set."""
        return self.containers.address if self.containers is not None else None

    def _containers_changed(self) -> None:
        if self.powerdns is not None:
            self.powerdns.address_changed()

    async def stop_powerdns(self) -> None:
        await self._stop_part(self.powerdns, POWERDNS_TASKS, "powerdns")
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

    def watchdog_loop(self) -> TaskFactory | None:
        """The watchdog's task when systemd asks for one (WATCHDOG_USEC), else None."""
        notifier = sdnotify.default_notifier()
        if notifier.watchdog_interval is None:
            return None
        return lambda: notifier.run_watchdog(self.watchdog_check)

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

    async def status_loop(self) -> None:
        last = ""
        while True:
            line = self.summary()
            if line != last:
                sdnotify.status(line)
                last = line
            await asyncio.sleep(5)

    def summary(self) -> str:
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
        if self.signer is not None:  # before the relay binds: its listeners leave these leaves to the child
            from maculad.proxy.tls import leaf_names

            self.signer.want(leaf_names(table, self.config.proxy, self.config.domain))
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
        if self.ready and self.config.metrics.listen is not None and self.metrics_server is None:
            reasons.append(f"metrics: not serving on {self.config.metrics.listen}")
        if self.config.web.enabled and self.web is not None and self.web.problem is not None:
            reasons.append(f"web: {self.web.problem}")
        if not self.ready and not reasons:
            reasons.append("starting")
        return reasons

    # ------------------------------------------------------------------ reload

    async def reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            try:
                await self.reload()
            except ControlError:
                pass  # recorded and logged by record_reload
            except Exception as exc:  # a bug: logged with its traceback, recorded, the loop goes on
                log.exception("reload_failed")
                self.last_reload = {"time": time.time(), "ok": False, "changed": [],
                                     "error": f"internal error: {type(exc).__name__}: {exc}"}

    async def reload(self) -> ReloadAnswer:
        sdnotify.reloading()
        try:
            return await reloading.reload(self)
        finally:
            sdnotify.ready()
            sdnotify.status(self.summary())

    def record_reload(self, result: str, *, error: str | None = None, changed: list[str] | None = None,
                      status: int = 400, state_error: str | None = None) -> ControlError:
        """Count, log, remember and publish a reload's outcome; the ControlError to raise when it failed."""
        ok = error is None
        self.metrics.reloads.labels(result=result).inc()
        last: LastReload = {"time": time.time(), "ok": ok, "error": error, "changed": changed or []}
        if state_error is not None:
            last["state_error"] = state_error
        self.last_reload = last
        self.events.publish("reload", ok=ok, error=error, changed=changed or [])
        if ok:
            log.info("reloaded", changed=changed or [], state_error=state_error)
        else:
            log.error("reload_refused", result=result, error=error)
        return ControlError(status, error or "")

    async def start_tls(self, cfg: Config) -> None:
        """The CA and the terminator. A CA the root manifest does not vouch for (a first start, files changed)
        is made or checked by the signer's child first, with the table's leaves (awaited: DNS answers
        meanwhile); when the child fails, `open_ca` does it in-process as it always did."""
        from maculad.pki.signer import Signer
        from maculad.proxy.tls import leaf_names, load_terminator

        signer = Signer(ca_dir=cfg.state_dir / "ca", domain=cfg.domain, metrics=self.metrics,
                        timeout=cfg.tls.signer_timeout)
        await signer.prepare(leaf_names(self.table.current, cfg.proxy, cfg.domain))
        self.tls, self.tls_error = load_terminator(domain=cfg.domain, state_dir=cfg.state_dir, config=cfg.tls,
                                                   metrics=self.metrics, signer=signer)
        if self.tls_error is not None:
            log.error("tls_unavailable", reason=self.tls_error,
                      effect="routes with only an http backend get no https port")
            return
        self.signer = signer
        self.owner.spawn_for(signer, SIGNER_TASKS)

    async def start_metrics(self, cfg: Config, *, sock: socket.socket | None = None) -> None:
        if cfg.metrics.listen is None:
            return
        from maculad.observability.http import MetricsServer

        server = MetricsServer(listen=cfg.metrics.listen, metrics=self.metrics, not_ready=self.not_ready)
        await server.start(sock=sock)
        self.metrics_server = server

    async def start_containers(self, cfg: Config) -> None:
        """The container horizon on G; when it cannot serve it reports why and the host horizon goes on."""
        if cfg.containers.enabled and self.containers is None:
            from maculad.horizons.containers import ContainerHorizon

            self.containers = ContainerHorizon(config=cfg, routes=self.table, metrics=self.metrics,
                                               on_change=self._containers_changed, tls=self.tls)
            await self.containers.start()
            self.owner.spawn_for(self.containers, CONTAINERS_TASKS)
        if not cfg.containers.enabled:
            self.metrics.horizon_up.labels(horizon="containers").set(0)

    async def start_web(self, cfg: Config, *, sock: socket.socket | None = None) -> None:
        if not cfg.web.enabled:
            return
        from maculad.app.facade import ControlFacade
        from maculad.horizons.plan import HTTP_PORT as G_HTTP_PORT
        from maculad.web.server import WebServer

        self.web = WebServer(source=ControlFacade(self), domain=cfg.domain, listen=cfg.web_listen, metrics=self.metrics,
                             max_clients=cfg.web.max_clients, max_connections=cfg.web.max_connections,
                             check_interval=cfg.web.check_interval,
                             via=frozenset({G_HTTP_PORT}) if cfg.containers.enabled else frozenset())
        await self.web.start(sock=sock)
        self.owner.spawn_for(self.web, WEB_TASKS)

    async def start_sources(self, cfg: Config) -> None:
        """Start every enabled source that is not running; forget the routes of disabled ones."""
        if cfg.docker.enabled and self.docker is None:
            from maculad.app.docker_tier import DockerTier

            self.docker = DockerTier(config=cfg, routes=self.table, metrics=self.metrics, events=self.events)
            self.owner.spawn_for(self.docker, DOCKER_TASKS)
        if not cfg.docker.enabled and self.table.specs("docker"):
            self.table.update("docker", [])
        if cfg.kubernetes.enabled and self.kubernetes is None:
            from maculad.providers.kubernetes import KubernetesProvider

            self.kubernetes = KubernetesProvider(config=cfg, routes=self.table, metrics=self.metrics,
                                                 events=self.events)
            self.owner.spawn_for(self.kubernetes, KUBERNETES_TASKS)
        if not cfg.kubernetes.enabled and self.table.specs("kubernetes"):
            self.table.update("kubernetes", [])
        if cfg.kubernetes.enabled and self.coredns is None:
            from maculad.publishers.coredns import CoreDNSPublisher

            self.coredns = CoreDNSPublisher(
                config=cfg, metrics=self.metrics,
                address=lambda: self.containers.address if self.containers is not None and self.containers.serving
                else None)
            await self.coredns.start()
            self.owner.spawn_for(self.coredns, COREDNS_TASKS)
        if cfg.kind.manage and self.cluster is None:
            from maculad.supervise.cluster import ClusterSupervisor

            self.cluster = ClusterSupervisor(config=cfg, metrics=self.metrics, events=self.events,
                                             tls=self.tls.store if self.tls is not None else None)
            await self.cluster.start()
            self.owner.spawn_for(self.cluster, CLUSTER_TASKS)

async def bounded(coro: Any, *, what: str, timeout: float = STOP_TIMEOUT) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        log.error("stop_timeout", component=what, timeout=timeout)
    except Exception:
        log.exception("stop_failed", component=what)
