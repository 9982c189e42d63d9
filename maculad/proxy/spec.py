"""Pure listener planning: route table + proxy config → desired listeners → a diff.

A listener is keyed by a frozen `ListenerSpec` (ip, proto, port): that is what
a socket binds. What it relays to is a `Target` (route, service, backend, kind, and the
service's hold while it is not running) which may change without rebinding. `desired_listeners` turns a table into
spec → target, marking addresses the relay must refuse (wildcards, non-loopback
IPs unless allowed) with a reason instead of dropping them, so status can say
why. `tls_mode` decides per route what the https port does: a route with only
an http backend gets TLS terminated there (kind "tls", relayed to the http
backend), a route with an https backend keeps plain passthrough; with
`redirect_http`, the http port of a route that serves HTTPS answers 308.
`plan` diffs the running listeners against the desired ones: remove first,
then add, and update targets in place. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from maculad.config import ProxyConfig
from maculad.core.net import Backend, bind_problem, format_hostport
from maculad.routes.model import Proto, Route, ServiceHold
from maculad.routes.table import RouteTable

#: by-host / by-sni: a listener that picks the route per connection (proxy/demux.py)
#: "tls": TLS terminated by the relay, the plaintext relayed to the route's http backend.
Kind = Literal["http", "https", "tls", "tcp", "udp", "by-host", "by-sni"]
Effective = Literal["terminate", "passthrough", "off"]


@dataclass(frozen=True, slots=True, order=True)
class ListenerSpec:
    """What one relay socket binds."""

    ip: str
    proto: Proto
    port: int

    @property
    def address(self) -> str:
        return f"{format_hostport(self.ip, self.port)}/{self.proto}"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a listener relays to. Changing it affects new connections only."""

    route: str
    backend: Backend
    kind: Kind
    service: str | None = None
    #: Why this address must not be bound (wildcard, non-loopback); None when fine.
    refused: str | None = None
    #: kind "tls": offer ALPN h2 as well (the backend speaks h2c).
    h2c: bool = False
    #: kind "http": answer every request with a 308 to https instead of relaying.
    redirect: bool = False
    #: The route's service is not running: answer from this (HTTP: a 503 page), never dial.
    hold: ServiceHold | None = None


@dataclass(frozen=True, slots=True)
class ListenerPlan:
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


def tls_mode(route: Route, config: ProxyConfig, *, terminating: bool) -> Effective:
    """What the route's https port does: TLS terminated by the relay, passed through to the
    route's https backend, or not served ("off"). `terminating` is False when the relay has no CA.

    `off` on a route with an https backend still relays it untouched (maculad does no TLS itself)."""
    https = route.backend_for("tcp", config.https_port)
    http = route.backend_for("tcp", config.http_port)
    if route.tls == "terminate" or (route.tls == "auto" and https is None):
        if http is not None and terminating:
            return "terminate"
    return "passthrough" if https is not None else "off"


def desired_listeners(
    table: RouteTable, config: ProxyConfig, *, terminating: bool = False, redirect_http: bool = False
) -> dict[ListenerSpec, Target]:
    """Every (ip, proto, port) the table asks for and its target."""
    out: dict[ListenerSpec, Target] = {}
    for route in table.routes:
        why = refusal(route.ip, allow_non_loopback=config.allow_non_loopback)
        mode = tls_mode(route, config, terminating=terminating)
        for pm in route.ports:
            spec = ListenerSpec(route.ip, pm.proto, pm.port)
            if spec in out:  # the table gives each route its own IP; a duplicate is a provider bug
                continue
            kind = kind_of(pm.proto, pm.port, config)
            if kind == "https" and mode == "terminate":
                continue  # served below by the relay's own TLS
            out[spec] = Target(
                route=route.name,
                backend=pm.backend,
                kind=kind,
                service=route.service,
                refused=why,
                redirect=kind == "http" and redirect_http and mode != "off",
                hold=route.hold,
            )
        http = route.backend_for("tcp", config.http_port)
        if mode == "terminate" and http is not None:
            spec = ListenerSpec(route.ip, "tcp", config.https_port)
            out.setdefault(spec, Target(route=route.name, backend=http, kind="tls", service=route.service,
                                        refused=why, h2c=route.h2c, hold=route.hold))
    return out


def plan(current: Mapping[ListenerSpec, Target], desired: Mapping[ListenerSpec, Target]) -> ListenerPlan:
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
    return ListenerPlan(remove=remove, add=add, update=update)
