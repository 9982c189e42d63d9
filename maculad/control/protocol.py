"""The control socket's contract: every JSON shape it carries, as TypedDicts.

The daemon's side builds these types — the views (control/views.py), the server
(control/server.py), the facade (app/daemon.py) and the status page, which serves the
same views (web/server.py) — and `maculactl` (maculad/ctl) reads them, so mypy checks
both ends against one definition. A shape produced by a part below this layer (a
component's status, a supervised service, the cluster) is declared beside the code
that fills it, because the layering forbids that code to import this module; it is
named here, and here is where the socket's shapes are put together. Those names are
imported for the type checker only: at run time this module is the standard library,
so `maculactl` loads none of the daemon's dependencies through it.

Conventions: times are epoch seconds (float), durations seconds; every error answer is
`ErrorAnswer` with a status of 400 (bad input), 403, 404, 405, 409 (not enabled or not
possible now) or 500. An event is a flat object with `time` and `kind` plus the fields
of its kind (see `maculad.core.events`); Python 3.11's TypedDict cannot say "and more
keys", so `Event` is that mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from maculad.adapters.docker.compose import ComposeStatus
    from maculad.core.limits import LimitsStatus
    from maculad.core.tasks import TaskStatus
    from maculad.dns.server import DNSStatus
    from maculad.horizons.containers import ContainerHorizonStatus
    from maculad.horizons.plan import PortConflictView
    from maculad.observability.http import MetricsEndpointStatus
    from maculad.observability.sdnotify import WatchdogStatus
    from maculad.providers.docker import DockerProviderStatus
    from maculad.providers.kubernetes import KubernetesStatus
    from maculad.proxy.relay import ListenerStatus, RelayStatus
    from maculad.proxy.tls import TLSStatus
    from maculad.publishers.coredns import CoreDNSStatus
    from maculad.publishers.powerdns_sync import PowerDNSStatus, ZoneConflictView
    from maculad.routes.manager import StateStatus
    from maculad.supervise.cluster import ClusterStatus
    from maculad.supervise.containers import ServiceView, SupervisorStatus

__all__ = [
    "ClusterRecreated",
    "ClusterStatus",
    "ComponentError",
    "Components",
    "ComposeStatus",
    "ConfigView",
    "ConflictView",
    "ContainerHorizonStatus",
    "ContainerHorizonView",
    "ControlStatus",
    "CoreDNSStatus",
    "DNSLookup",
    "DNSStatus",
    "DockerProviderStatus",
    "DockerStatus",
    "ErrorAnswer",
    "Event",
    "Horizons",
    "HostHorizonView",
    "KubernetesStatus",
    "LastReload",
    "ListenerStatus",
    "MetricsEndpointStatus",
    "Ping",
    "PortConflictView",
    "PortView",
    "PowerDNSStatus",
    "RelayStatus",
    "ReloadAnswer",
    "RouteView",
    "RoutesAnswer",
    "RoutesSummary",
    "ServiceAction",
    "ServiceActionAnswer",
    "ServiceView",
    "ServicesAnswer",
    "Status",
    "SupervisorStatus",
    "TLSStatus",
    "TableView",
    "TaskStatus",
    "WebStatus",
    "ZoneConflictView",
    "is_error",
]

ServiceAction = Literal["start", "stop", "restart"]
Event = dict[str, Any]


class ErrorAnswer(TypedDict):
    """Every answer with an error status."""

    error: str


class Ping(TypedDict):
    """`GET /v1/ping`."""

    ok: bool
    pid: int
    version: str


# --------------------------------------------------------------------------- routes


class PortView(TypedDict):
    proto: Literal["tcp", "udp"]
    port: int
    backend: str  # host:port


class RouteView(TypedDict):
    name: str
    ip: str
    source: str
    origin: str
    service: str | None
    ports: list[PortView]


class ConflictView(TypedDict):
    kind: str
    name: str
    loser: str
    winner: str
    reason: str
    same_backends: bool


class TableView(TypedDict):
    """The route table: what `maculactl routes` and `hosts`/`resolver --config` read."""

    version: int
    domain: str
    routes: list[RouteView]
    conflicts: list[ConflictView]


class HostHorizonView(TypedDict):
    state: Literal["on", "off"]
    address: str  # "per route": every route has its own loopback IP


class ContainerHorizonView(TypedDict):
    state: str  # "on", "off", "starting"
    address: str | None  # G
    reason: str
    port_conflicts: list[PortConflictView]


class Horizons(TypedDict):
    host: HostHorizonView
    containers: ContainerHorizonView


class RoutesAnswer(TableView):
    """`GET /v1/routes`."""

    horizons: Horizons
    powerdns_conflicts: NotRequired[list[ZoneConflictView]]  # only with [powerdns] enabled


# --------------------------------------------------------------------------- status


class ConfigView(TypedDict):
    """The settings a client needs to find and check the daemon (part of `Status`)."""

    config_path: str
    domain: str
    dns_listen: list[str]  # host:port
    metrics_listen: str | None
    control_socket: str
    http_port: int
    https_port: int
    docker_enabled: bool
    kind_manage: bool
    kind_cluster: str


class RoutesSummary(TypedDict):
    count: int
    by_source: dict[str, int]
    conflicts: int
    version: int


class LastReload(TypedDict):
    time: float
    ok: bool
    error: str | None  # why it was refused (None when applied)
    changed: list[str]  # when applied: the config sections that changed
    state_error: NotRequired[str]  # applied, but the state save failed (retrying)


class ComponentError(TypedDict):
    """A component whose status could not be read (a bug there must not hide the rest)."""

    error: str


def is_error(part: Mapping[str, object]) -> TypeIs[ComponentError]:
    """Is this entry of `Components` a `ComponentError` rather than the component's status?"""
    return "error" in part


class ControlStatus(TypedDict):
    """The `control` component: this socket."""

    socket: str
    group: str | None
    mode: str  # octal, "0o660"
    serving: bool
    requests: int
    denied: int
    last_error: str | None


class WebStatus(TypedDict):
    """The `web` component: the status page, its address and its limits."""

    listen: str
    bound: tuple[str, int] | None
    url: str
    address_url: str | None
    serving: bool
    connections: int
    max_connections: int
    connections_refused: int
    live_clients: int
    max_clients: int
    requests: int
    last_error: str | None


class DockerStatus(TypedDict):
    """The `docker` component: the engine connection (only `enabled` when it is off) and its parts."""

    enabled: bool
    endpoint: NotRequired[str]
    connected: NotRequired[bool]
    engine_version: NotRequired[str | None]
    last_error: NotRequired[str | None]
    containers: NotRequired[int]
    generation: NotRequired[int]
    events: NotRequired[int]
    reason: NotRequired[str | None]  # why it is not connected
    provider: NotRequired[DockerProviderStatus]
    supervisor: NotRequired[SupervisorStatus]
    compose: NotRequired[ComposeStatus]


class Components(TypedDict, total=False):
    """Each running component under its name; one that is not running is absent."""

    metrics: MetricsEndpointStatus | ComponentError
    dns: DNSStatus | ComponentError
    proxy: RelayStatus | ComponentError
    containers: ContainerHorizonStatus | ComponentError
    docker: DockerStatus | ComponentError
    kubernetes: KubernetesStatus | ComponentError
    coredns: CoreDNSStatus | ComponentError
    kind: ClusterStatus | ComponentError
    powerdns: PowerDNSStatus | ComponentError
    control: ControlStatus | ComponentError
    web: WebStatus | ComponentError


class Status(ConfigView):
    """`GET /v1/status`: everything at a glance."""

    version: str
    pid: int
    uptime_seconds: float
    ready: bool
    summary: str
    routes: RoutesSummary
    components: Components
    tls: TLSStatus
    tasks: list[TaskStatus]
    last_reload: LastReload | None
    not_ready: list[str]  # why ready is false: a configured listener that does not serve
    state: StateStatus
    limits: LimitsStatus | None
    watchdog: WatchdogStatus | None


# --------------------------------------------------------------------------- the rest


class ServicesAnswer(TypedDict):
    """`GET /v1/services` (empty when the Docker tier is off)."""

    services: list[ServiceView]


class ServiceActionAnswer(TypedDict):
    """`POST /v1/services/{name}/{start|stop|restart}`, once the action is done."""

    ok: bool
    service: str
    action: ServiceAction


class ClusterRecreated(TypedDict):
    """`POST /v1/cluster/recreate` (`GET /v1/cluster` is `ClusterStatus`)."""

    ok: bool
    cluster: str


class DNSLookup(TypedDict):
    """`GET /v1/dns?name=NAME`: what maculad answers and which route (source) owns the name."""

    name: str
    rcode: str  # "NOERROR", "NXDOMAIN"
    answer: str | None
    ttl: NotRequired[int]
    route: RouteView | None
    conflicts: list[ConflictView]


class ReloadAnswer(TypedDict):
    """`POST /v1/reload` when the config was applied (a refused one is a 400 `ErrorAnswer`)."""

    ok: bool
    changed: list[str]
    state_error: NotRequired[str]  # applied, but the new routes wait for the state save (retrying)
