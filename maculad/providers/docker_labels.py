"""Docker labels → route specs (pure).

`build_routes(containers, ...)` reads the `macula.*` labels of every container
that has `macula.host` and returns the complete list of `RouteSpec`s plus an
error per container whose labels are wrong. A wrong label costs that one
container its route (with the reason), never the others theirs.

    macula.host        name (qualified under the domain)
    macula.http        container port behind the route's :80   ("8080" or "8080/tcp")
    macula.https       container port behind the route's :443
    macula.tcp.<port>  container port behind extra TCP front port <port>
    macula.udp.<port>  container port behind extra UDP front port <port>
    macula.ip          pinned loopback IP
    macula.restart     restart policy (read by the supervisor, validated here too)
    macula.tls         auto | terminate | passthrough | off (TLS on the route's :443)
    macula.h2c         true: the http backend speaks HTTP/2 cleartext (terminated TLS offers h2)

The backend of a port is the container port's published host binding; a
binding on 0.0.0.0 (or ::) is reached on 127.0.0.1 (or ::1). IPv4 bindings
are preferred over IPv6 ones, loopback over others. A container on the host
network is reached on 127.0.0.1 at the container port itself.

A container that is not running keeps its route, held: it carries the
supervisor's `ServiceHold` (or, before the supervisor has judged, one saying
how the container ended), and the relay answers from it instead of dialing.
Its backends are its fixed host bindings, or, for a port published on a
dynamic host port (free while the container is down), the route it had
while it last ran (`remembered`, kept by the provider).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from maculad.core.names import qualify
from maculad.core.net import Backend, pin_problem
from maculad.core.restart import parse_restart
from maculad.adapters.docker.model import ContainerInfo, HostBinding, service_name
from maculad.providers.base import port_maps
from maculad.routes.model import TLS_MODES, RouteSpec, ServiceHold

PREFIX = "macula."
KNOWN = {"macula.host", "macula.http", "macula.https", "macula.ip", "macula.restart", "macula.tls", "macula.h2c"}


@dataclass(frozen=True, slots=True)
class LabelError:
    container: str
    reason: str


class _Bad(Exception):
    pass


def _front_port(text: str, label: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _Bad(f"{label}: {text!r} is not a port number 1..65535")
    return int(text)


def _container_port(value: str, label: str, proto: str) -> str:
    v = value.strip().lower()
    num, sep, p = v.partition("/")
    if sep and p != proto:
        raise _Bad(f"{label}={value!r}: the container port must be {proto}")
    if not num.isdigit() or not 1 <= int(num) <= 65535:
        raise _Bad(f"{label}={value!r} is not a container port (like \"8080\" or \"8080/{proto}\")")
    return f"{int(num)}/{proto}"


def pick_backend(bindings: Iterable[HostBinding]) -> Backend | None:
    """The address maculad dials for a published port (None when it is not published)."""
    best: tuple[int, Backend] | None = None
    for b in bindings:
        host = b.host_ip or "0.0.0.0"
        if host == "0.0.0.0":
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        rank = (0 if addr.version == 4 else 2) + (0 if addr.is_loopback else 1)
        cand = (rank, Backend(host, b.host_port))
        if best is None or cand < best:
            best = cand
    return best[1] if best else None


def _backend(info: ContainerInfo, port: str, label: str) -> Backend:
    if info.network_mode == "host":
        return Backend("127.0.0.1", int(port.partition("/")[0]))
    b = pick_backend(info.bindings(port))
    if b is None:
        raise _Bad(f"{label}: container port {port} is not published on the host (publish it: -p 127.0.0.1::"
                   f"{port})")
    return b


def container_route(
    info: ContainerInfo, *, domain: str, http_port: int, https_port: int, project: str,
    allow_non_loopback: bool = False,
) -> RouteSpec | None:
    """One container's route; None without `macula.host`; raises ValueError with the reason when wrong."""
    labels = info.labels
    host = labels.get("macula.host")
    if host is None:
        return None
    try:
        return _route(info, host, domain=domain, http_port=http_port, https_port=https_port, project=project,
                      allow_non_loopback=allow_non_loopback)
    except _Bad as exc:
        raise ValueError(str(exc)) from None


def _route(info: ContainerInfo, host: str, *, domain: str, http_port: int, https_port: int, project: str,
           allow_non_loopback: bool) -> RouteSpec:
    labels = info.labels
    try:
        name = qualify(host, domain)
    except ValueError as exc:
        raise _Bad(f"macula.host={host!r}: {exc}") from None
    tcp: list[tuple[int, Backend]] = []
    udp: list[tuple[int, Backend]] = []
    for key in sorted(labels):
        if not key.startswith(PREFIX) or key in KNOWN:
            continue
        rest = key[len(PREFIX):]
        kind, dot, port_s = rest.partition(".")
        if kind not in ("tcp", "udp") or not dot:
            raise _Bad(f"{key}: unknown label (known: {', '.join(sorted(KNOWN))}, macula.tcp.<port>, "
                       f"macula.udp.<port>)")
        front = _front_port(port_s, key)
        if kind == "tcp":
            if front in (http_port, https_port):
                raise _Bad(f"{key}: port {front} is the http/https port; use macula.http / macula.https")
            tcp.append((front, _backend(info, _container_port(labels[key], key, "tcp"), key)))
        else:
            udp.append((front, _backend(info, _container_port(labels[key], key, "udp"), key)))
    http = https = None
    if "macula.http" in labels:
        http = _backend(info, _container_port(labels["macula.http"], "macula.http", "tcp"), "macula.http")
    if "macula.https" in labels:
        https = _backend(info, _container_port(labels["macula.https"], "macula.https", "tcp"), "macula.https")
    if http is None and https is None and not tcp and not udp:
        raise _Bad("macula.host is set but no port is: add macula.http, macula.https, macula.tcp.<port> "
                   "or macula.udp.<port>")
    ip = labels.get("macula.ip")
    if ip is not None:
        ip = ip.strip()
        problem = pin_problem(ip, allow_non_loopback=allow_non_loopback)
        if problem is not None:
            raise _Bad(f"macula.ip: {problem}")
    restart = labels.get("macula.restart")
    if restart is not None:
        try:
            parse_restart(restart)
        except ValueError as exc:
            raise _Bad(f"macula.restart: {exc}") from None
    tls = labels.get("macula.tls", "auto").strip().lower()
    if tls not in TLS_MODES:
        raise _Bad(f"macula.tls={labels['macula.tls']!r} is not one of {', '.join(TLS_MODES)}")
    if tls == "terminate" and http is None:
        raise _Bad("macula.tls=terminate needs macula.http (TLS is terminated in front of it)")
    if tls == "passthrough" and https is None:
        raise _Bad("macula.tls=passthrough needs macula.https (TLS is passed through to it)")
    h2c_s = labels.get("macula.h2c", "false").strip().lower()
    if h2c_s not in ("true", "false", "1", "0", "yes", "no"):
        raise _Bad(f"macula.h2c={labels['macula.h2c']!r} is not true or false")
    return RouteSpec(
        tls=tls,
        h2c=h2c_s in ("true", "1", "yes"),
        name=name,
        source="docker",
        origin=origin_of(info),
        ports=port_maps(http_port=http_port, https_port=https_port, http=http, https=https, tcp=tcp, udp=udp),
        ip=ip,
        service=service_name(info, project),
    )


def origin_of(info: ContainerInfo) -> str:
    return f"docker:{info.name}"


def remember(containers: Mapping[str, ContainerInfo], specs: Iterable[RouteSpec],
             remembered: Mapping[str, RouteSpec]) -> dict[str, RouteSpec]:
    """Container id → the route it has while running (else the one remembered), for existing containers."""
    live = {s.origin: s for s in specs if s.hold is None}
    out: dict[str, RouteSpec] = {}
    for cid, info in containers.items():
        spec = live.get(origin_of(info)) if info.running else None
        if spec is None:
            spec = remembered.get(cid)
        if spec is not None:
            out[cid] = spec
    return out


def ended_hold(info: ContainerInfo, service: str) -> ServiceHold:
    """The hold of a container that is not running before the supervisor has said why."""
    what = info.state if info.exit_code is None else f"{info.state} with code {info.exit_code}"
    return ServiceHold(service, "stopped", f"the container {what}", f"maculactl start {service}")


def build_routes(
    containers: Iterable[ContainerInfo], *, domain: str, http_port: int, https_port: int, project: str,
    allow_non_loopback: bool = False, holds: Mapping[str, ServiceHold] = MappingProxyType({}),
    remembered: Mapping[str, RouteSpec] = MappingProxyType({}),
) -> tuple[list[RouteSpec], list[LabelError]]:
    """Every labelled container's route, and the containers whose labels are wrong.

    `holds` (container id → hold) and `remembered` (container id → the route it
    had while running) keep a container that is not running routed, held (see
    above). One that has never been seen running with its dynamic host port has
    no route but is no error either (its ports are bound again when it starts).
    """
    specs: list[RouteSpec] = []
    errors: list[LabelError] = []
    for info in sorted(containers, key=lambda c: (c.name, c.id)):
        if info.state in ("removing", "dead"):
            continue
        try:
            spec = container_route(info, domain=domain, http_port=http_port, https_port=https_port,
                                   project=project, allow_non_loopback=allow_non_loopback)
        except ValueError as exc:
            if info.running or "is not published" not in str(exc):
                errors.append(LabelError(info.name, str(exc)))
                continue
            spec = remembered.get(info.id)
        if spec is None:
            continue
        if not info.running:
            service = spec.service or info.name
            spec = replace(spec, hold=holds.get(info.id) or ended_hold(info, service))
        specs.append(spec)
    return specs, errors
