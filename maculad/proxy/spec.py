"""Pure listener planning: route table + proxy config → desired listeners → a diff.

A listener is keyed by a frozen `ListenerSpec` (ip, proto, port): that is what
a socket binds. What it relays to is a `Target` (route, service, backend, kind)
which may change without rebinding. `desired_listeners` turns a table into
spec → target, marking addresses the relay must refuse (wildcards, non-loopback
IPs unless allowed) with a reason instead of dropping them, so status can say
why. `plan` diffs the running listeners against the desired ones: remove
first, then add, and update targets in place. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from maculad.config import ProxyConfig
from maculad.core.net import Backend, bind_problem, format_hostport
from maculad.routes.model import Proto
from maculad.routes.table import RouteTable

#: by-host / by-sni: a listener that picks the route per connection (proxy/demux.py)
Kind = Literal["http", "https", "tcp", "udp", "by-host", "by-sni"]


@dataclass(frozen=True, slots=True, order=True)
class ListenerSpec:
    """What one relay socket binds."""

    ip: str
    proto: Proto
    port: int

    @property
    def address(self) -> str:
        return f"{format_hostport(self.ip, self.port)}/{self.proto}"

    @property
    def port_label(self) -> str:
        """The `port` metric label: `80` for TCP, `4433/udp` for UDP (one route may use both)."""
        return str(self.port) if self.proto == "tcp" else f"{self.port}/udp"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a listener relays to. Changing it affects new connections only."""

    route: str
    backend: Backend
    kind: Kind
    service: str | None = None
    #: Why this address must not be bound (wildcard, non-loopback); None when fine.
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    remove: tuple[ListenerSpec, ...]
    add: tuple[tuple[ListenerSpec, Target], ...]
    update: tuple[tuple[ListenerSpec, Target], ...]

    @property
    def empty(self) -> bool:
        return not (self.remove or self.add or self.update)


def refusal(ip: str, *, allow_non_loopback: bool) -> str | None:
    """Why the relay must not bind `ip`, or None (the loopback rule of core.net)."""
    return bind_problem(ip, allow_non_loopback=allow_non_loopback)


def kind_of(proto: Proto, port: int, config: ProxyConfig) -> Kind:
    if proto == "udp":
        return "udp"
    if port == config.http_port:
        return "http"
    if port == config.https_port:
        return "https"
    return "tcp"


def desired_listeners(table: RouteTable, config: ProxyConfig) -> dict[ListenerSpec, Target]:
    """Every (ip, proto, port) the table asks for and its target."""
    out: dict[ListenerSpec, Target] = {}
    for route in table.routes:
        why = refusal(route.ip, allow_non_loopback=config.allow_non_loopback)
        for pm in route.ports:
            spec = ListenerSpec(route.ip, pm.proto, pm.port)
            if spec in out:  # the table gives each route its own IP; a duplicate is a provider bug
                continue
            out[spec] = Target(
                route=route.name,
                backend=pm.backend,
                kind=kind_of(pm.proto, pm.port, config),
                service=route.service,
                refused=why,
            )
    return out


def plan(current: Mapping[ListenerSpec, Target], desired: Mapping[ListenerSpec, Target]) -> Plan:
    """The diff that takes `current` to `desired`; each part sorted for determinism."""
    # A listener whose refusal changed (allow_non_loopback toggled) must be rebound, not updated.
    rebind = {s for s, t in desired.items() if s in current and (current[s].refused is None) != (t.refused is None)}
    remove = tuple(sorted(s for s in current if s not in desired or s in rebind))
    add = tuple(
        sorted(((s, t) for s, t in desired.items() if s not in current or s in rebind), key=lambda st: st[0])
    )
    update = tuple(
        sorted(
            ((s, t) for s, t in desired.items() if s in current and s not in rebind and current[s] != t),
            key=lambda st: st[0],
        )
    )
    return Plan(remove=remove, add=add, update=update)
