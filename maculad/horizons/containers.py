"""The container horizon: DNS and the name-routed relay on G, the Docker bridge gateway.

`ContainerHorizon` is a component. Its one task (`run()`, the daemon's
`containers.networks`) runs the reconcile loop of G's relay, and in turns
asks the Docker engine for its networks every `network_interval` seconds: that gives
G (`plan.choose_gateway`, or the configured address) and the subnets whose
clients may resolve other names through G. When G is known and nothing serves
it yet, it starts

- a `DNSServer` on G:53 (UDP+TCP) answering every route with G (same zone
  rules as the host horizon) and forwarding other names to the host's
  upstream resolvers, for Docker clients only (`client_allowed`; a client from
  an unknown address triggers one rate-limited re-read of the networks first,
  so a compose network created a moment ago is not refused);
- a `Relay` (horizon "containers") whose planner is `plan.horizon_listeners`:
  G:80 by Host header, G:443 by SNI, G:PORT for ports exactly one route claims.
  It follows the route table like the host relay (reconciled, drained).

When it cannot — Docker is off or unreachable, there is no bridge, G:53 cannot
be bound (no privilege, address in use) — the horizon is *off* with that
reason in `status()`, `maculad_horizon_up{horizon="containers"}` and
`maculad_horizon_info`, the loop keeps trying quietly, and the host horizon is
not affected. A changed G (Docker restarted on another subnet) restarts both.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NotRequired, TypedDict

import structlog

from maculad.config import Config, DNSConfig, ProxyConfig
from maculad.dns.server import DNSServer
from maculad.adapters.docker.api import EngineAPI, DockerAPI, DockerAPIError, DockerUnavailable, resolve_endpoint
from maculad.horizons.plan import (
    DNS_PORT,
    HORIZON_CONTAINERS,
    HTTP_PORT,
    HTTPS_PORT,
    DockerNetwork,
    PortConflict,
    PortConflictView,
    choose_gateway,
    client_allowed,
    client_subnets,
    conflict_view,
    horizon_listeners,
    parse_networks,
)
from maculad.horizons.upstreams import host_upstreams
from maculad.observability.metrics import Metrics
from maculad.proxy.relay import Relay, RelayStatus
from maculad.proxy.spec import ListenerSpec, Target

if TYPE_CHECKING:
    from maculad.proxy.tls import Terminator
from maculad.routes.manager import RouteTableManager
from maculad.core.net import Backend
from maculad.routes.table import RouteTable

log = structlog.get_logger("maculad.horizons")

#: the least time between two network re-reads caused by clients from unknown addresses
REFRESH_MIN = 0.5


class HorizonDNSStatus(TypedDict):
    listen: list[str]
    forwards_in_flight: int


class ContainerHorizonStatus(TypedDict):
    """The `containers` component in `GET /v1/status`: the horizon on G."""

    state: str  # "on", "off", "starting"
    address: str | None  # G
    reason: str
    subnets: list[str]
    upstreams: list[str]
    port_conflicts: list[PortConflictView]
    dns: NotRequired[HorizonDNSStatus]
    relay: NotRequired[RelayStatus]


class ContainerHorizon:
    name = HORIZON_CONTAINERS

    def __init__(
        self,
        *,
        config: Config,
        routes: RouteTableManager,
        metrics: Metrics,
        api: DockerAPI | None = None,
        upstreams: Callable[[], tuple[Backend, ...]] = host_upstreams,
        front: tuple[int, int, int] = (DNS_PORT, HTTP_PORT, HTTPS_PORT),
        on_change: Callable[[], None] | None = None,
        tls: Terminator | None = None,
    ) -> None:
        """`front`: G's (dns, http, https) ports; the standard ones but in tests of the pieces.
        `on_change`: called when the state or the address changes (PowerDNS publishes G).
        `tls`: the host relay's terminator: G:443 terminates TLS for a route with only an http backend."""
        self._cfg = config
        self._on_change = on_change
        self._tls = tls
        self._routes = routes
        self._metrics = metrics
        self._own_api = api is None and config.docker.enabled
        self._api: DockerAPI | None = api if api is not None else (
            EngineAPI(endpoint=resolve_endpoint(config.docker.host)) if config.docker.enabled else None)
        self._upstreams_of = upstreams
        self._front = front
        self.address: str | None = None
        self._why = "starting"
        self._state = "off"
        self.dns: DNSServer | None = None
        self.relay: Relay | None = None
        self._networks: tuple[DockerNetwork, ...] = ()
        self._subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._last_read = 0.0
        self._reading: asyncio.Future[str | None] | None = None
        self._conflicts: tuple[PortConflict, ...] = ()
        self._upstreams: tuple[Backend, ...] = ()
        self._info_labels: tuple[str, str, str] | None = None
        self._publish()

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """Serve on G if it can now; `run()` (a long-lived task) keeps it converged."""
        await self._converge()

    async def stop(self) -> None:
        await self._stop_serving()
        self._set("off", "stopped")
        if self._own_api and self._api is not None:
            await self._api.close()

    def status(self) -> ContainerHorizonStatus:
        out: ContainerHorizonStatus = {
            "state": self._state,
            "address": self.address,
            "reason": self._why,
            "subnets": [str(s) for s in self._subnets],
            "upstreams": [str(b) for b in self._upstreams],
            "port_conflicts": [conflict_view(c) for c in self._conflicts],
        }
        if self.dns is not None:
            out["dns"] = {"listen": [f"{p}://{h}:{n}" for p, h, n in self.dns.bound()],
                          "forwards_in_flight": self.dns.forwarder.in_flight}
        if self.relay is not None:
            out["relay"] = self.relay.status()
        return out

    @property
    def serving(self) -> bool:
        return self._state == "on"

    def port_conflicts(self) -> tuple[PortConflict, ...]:
        return self._conflicts

    async def wait_reconciled(self) -> None:
        if self.relay is not None:
            await self.relay.wait_reconciled()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """The horizon's one task, in turns: G's relay follows the table for `network_interval`
        seconds (or the task sleeps while G is not served), then the networks are read again."""
        while True:
            interval = self._cfg.containers.network_interval
            if self.relay is not None:
                await self.relay.run(for_seconds=interval)
            else:
                await asyncio.sleep(interval)
            await self._converge()

    async def _read_networks(self) -> str | None:
        """Refresh the networks; returns why they could not be read (None when fine)."""
        self._last_read = time.monotonic()
        if self._api is None:
            return "Docker is not enabled ([docker] enabled = false)"
        try:
            docs = await asyncio.wait_for(self._api.networks(), 10.0)
        except (DockerUnavailable, DockerAPIError, TimeoutError) as exc:
            return f"the Docker engine cannot be asked for its networks: {exc}"
        self._networks = parse_networks(docs)
        self._subnets = client_subnets(self._networks)
        return None

    async def _converge(self) -> None:
        problem = await self._read_networks()
        cfg = self._cfg.containers
        if problem is not None and cfg.address == "auto":
            if self.address is None:
                self._set("off", problem)
            return  # a serving horizon keeps serving through an engine hiccup
        gw = choose_gateway(self._networks, cfg.address)
        if gw.address is None:
            await self._stop_serving()
            self._set("off", gw.reason)
            return
        if self.address == gw.address and self._state == "on":
            return
        await self._stop_serving()
        await self._serve(gw.address, gw.reason)

    async def _serve(self, address: str, why: str) -> None:
        own = {b.host for b in self._cfg.dns.listen} | {address}
        chosen = self._cfg.containers.forwarders
        self._upstreams = tuple(b for b in (chosen if chosen is not None else self._upstreams_of())
                                if b.host not in own)
        dns_port, _, _ = self._front
        dcfg: DNSConfig = self._cfg.dns
        dns = DNSServer(
            config=DNSConfig(listen=(Backend(address, dns_port),), ttl=dcfg.ttl, forwarders=self._upstreams,
                             forward_timeout=dcfg.forward_timeout, max_tcp_clients=dcfg.max_tcp_clients,
                             tcp_idle_timeout=dcfg.tcp_idle_timeout),
            domain=self._cfg.domain, routes=self._routes, metrics=self._metrics, horizon=HORIZON_CONTAINERS,
            answer_address=address, client_allowed=self._allowed,
            apex_a=(address,) if self._cfg.web.enabled else (),
        )
        try:
            await dns.start()
        except OSError as exc:
            await dns.stop()
            reason = str(exc)
            if exc.errno == errno.EACCES:
                reason += " (ports 53/80/443 on G need root or CAP_NET_BIND_SERVICE)"
            if self._state != "off" or self._why != reason:
                log.warning("containers_horizon_off", address=address, reason=reason)
            self.address = address
            self._set("off", reason)
            return
        self.dns = dns
        self.address = address
        page = (self._cfg.domain, self._cfg.web_listen) if self._cfg.web.enabled else None
        self.relay = Relay(config=self._cfg.proxy, routes=self._routes, metrics=self._metrics, tls=self._tls,
                           apex=page,
                           horizon=HORIZON_CONTAINERS, planner=self._plan)
        await self.relay.start()
        self._set("on", why)
        log.info("containers_horizon_on", address=address, why=why, upstreams=[str(b) for b in self._upstreams],
                 subnets=[str(s) for s in self._subnets])

    async def _stop_serving(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.stop()
        dns, self.dns = self.dns, None
        if dns is not None:
            await dns.stop()

    def _plan(self, table: RouteTable, proxy: ProxyConfig) -> dict[ListenerSpec, Target]:
        assert self.address is not None
        listeners, conflicts = horizon_listeners(table, address=self.address, http_port=proxy.http_port,
                                                 https_port=proxy.https_port, front=self._front)
        if conflicts != self._conflicts:
            for c in conflicts:
                if c not in self._conflicts:
                    log.warning("containers_port_conflict", port=f"{c.port}/{c.proto}", routes=list(c.routes),
                                reason=c.reason)
            self._conflicts = conflicts
        self._metrics.horizon_port_conflicts.labels(horizon=HORIZON_CONTAINERS).set(len(conflicts))
        return listeners

    # ------------------------------------------------------------------ the resolver guard

    async def _allowed(self, client: str) -> bool:
        if client_allowed(client, self._subnets):
            return True
        if time.monotonic() - self._last_read < REFRESH_MIN:
            return False
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_networks())
        try:
            await asyncio.shield(self._reading)
        except Exception:  # a failed read leaves the old subnets in place
            return False
        return client_allowed(client, self._subnets)

    # ------------------------------------------------------------------ reporting

    def _set(self, state: str, why: str) -> None:
        self._state, self._why = state, why
        self._publish()
        if self._on_change is not None:
            self._on_change()

    def _publish(self) -> None:
        m = self._metrics
        m.horizon_up.labels(horizon=HORIZON_CONTAINERS).set(1 if self._state == "on" else 0)
        labels = (self.address or "", self._state, "" if self._state == "on" else self._why[:200])
        if labels != self._info_labels:
            if self._info_labels is not None:
                try:
                    m.horizon_info.remove(HORIZON_CONTAINERS, *self._info_labels)
                except KeyError:
                    pass
            m.horizon_info.labels(HORIZON_CONTAINERS, *labels).set(1)
            self._info_labels = labels
