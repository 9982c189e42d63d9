"""The route vocabulary shared by providers, the table, DNS and the relay.

Providers emit `RouteSpec`s (what a source wants: a name, an optional pinned IP,
backends per port). The table resolves them into `Route`s (a name with the
loopback IP it really got). Everything here is a frozen value object so a table
snapshot can be shared between DNS, proxy and status without copying or locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from maculad.core.net import TLS_MODES as TLS_MODES
from maculad.core.net import Backend
from maculad.core.net import TLSMode as TLSMode

Source = Literal["config", "docker", "kubernetes"]
Proto = Literal["tcp", "udp"]

#: When two providers claim one name, the lower number wins.
SOURCE_PRIORITY: dict[Source, int] = {"config": 0, "docker": 1, "kubernetes": 2}
SOURCES: tuple[Source, ...] = ("config", "docker", "kubernetes")


@dataclass(frozen=True, slots=True, order=True)
class PortMap:
    """One front port of a route's IP and the backend behind it."""

    proto: Proto
    port: int
    backend: Backend


@dataclass(frozen=True, slots=True)
class ServiceHold:
    """The supervised service behind a route is not running: its state, why, and what fixes it.

    A route with a hold stays in the table (same name, same IP) while its
    service is stopped, restarting, backing off or failed; the relay answers
    its HTTP port with a 503 page built from these fields instead of dialing.
    `retry_at` is the wall-clock time of the next automatic start, if any.
    """

    service: str
    state: str
    reason: str
    fix: str
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What one provider wants for one name.

    `name` is a fully qualified, lower-case name under the domain; a leading
    `*.` makes it a wildcard covering every name below it. `origin` says where
    the spec came from ("config:grafana", "docker:infra-grafana-1",
    "kubernetes:apps/console") so conflicts can name both sides. `service` names
    the supervised service that owns the backends, if any; `hold` says it is
    not running (the relay answers 503 from it instead of dialing).
    """

    name: str
    source: Source
    origin: str
    ports: tuple[PortMap, ...] = ()
    ip: str | None = None
    service: str | None = None
    #: `auto`: terminate when there is an http backend and no https one, else pass through.
    tls: TLSMode = "auto"
    #: The http backend speaks HTTP/2 without TLS (h2c): terminated TLS then offers ALPN h2 too.
    h2c: bool = False
    #: Set while the owning service is not running: the route is kept, its backends are not dialed.
    hold: ServiceHold | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved route: a spec that won its name and got its loopback IP."""

    name: str
    ip: str
    source: Source
    origin: str
    ports: tuple[PortMap, ...]
    service: str | None = None
    tls: TLSMode = "auto"
    h2c: bool = False
    hold: ServiceHold | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")

    def backend_for(self, proto: Proto, port: int) -> Backend | None:
        for pm in self.ports:
            if pm.proto == proto and pm.port == port:
                return pm.backend
        return None


ConflictKind = Literal["name", "ip", "pool"]
CONFLICT_KINDS: tuple[ConflictKind, ...] = ("name", "ip", "pool")


@dataclass(frozen=True, slots=True)
class Conflict:
    """A spec that lost: to another spec (name or pinned IP), or to an empty pool.

    The loser is never dropped silently: conflicts are logged, counted and shown
    in status. `same_backends` marks the harmless case of two sources describing
    the same service identically (a labelled container also listed in config).
    """

    kind: ConflictKind
    name: str
    loser: str
    winner: str
    reason: str
    same_backends: bool = False


@dataclass(frozen=True, slots=True)
class IPChange:
    """A name whose IP is not the one it last had (`allocations.json`).

    `new` is None when the name is not routed and its reserved IP went to
    another name (it gets a fresh one when it comes back). Every change is
    logged, counted and published as an event: a name never moves silently.
    """

    name: str
    old: str
    new: str | None
    reason: str

