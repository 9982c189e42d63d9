"""Which answer and which listeners the container horizon's address G gets. Pure.

The answer depends on the address a query arrives at (see "Horizons" in
DESIGN.md). The host horizon is the per-IP relay (proxy/spec.py). The
container horizon lives on G, the Docker bridge network's gateway:

- `parse_networks` turns the Docker engine's `/networks` answer into
  `DockerNetwork`s; `choose_gateway` picks G from them (the default bridge's
  gateway, else a configured IP), or says why there is none;
- `client_allowed` is the open-resolver guard: forwarding only for clients
  inside the Docker networks' subnets;
- `horizon_listeners` is the relay plan on G: G:80 and G:443 demultiplex by
  Host header / SNI over the whole table (`DEMUX_HTTP` / `DEMUX_TLS` targets),
  and every extra TCP/UDP port that exactly one route claims (or several with
  the very same backend, like every Ingress host's QUIC port) is relayed on
  G:PORT; a port claimed by routes with different backends, or one G serves
  itself (53, 80, 443), is a `PortConflict` instead, never a silent pick.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from maculad.proxy.spec import ListenerSpec, Target
from maculad.core.net import Backend
from maculad.routes.model import Proto
from maculad.routes.table import RouteTable

#: The ports G serves itself (a container cannot be told another DNS port).
DNS_PORT = 53
HTTP_PORT = 80
HTTPS_PORT = 443

#: The demultiplexing listeners' target "backend": chosen per connection from the Host or SNI.
PER_NAME = Backend("per-name", 0)
HORIZON_HOST = "host"
HORIZON_CONTAINERS = "containers"


@dataclass(frozen=True, slots=True)
class DockerNetwork:
    name: str
    driver: str
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    gateways: tuple[str, ...]
    default_bridge: bool
    bridge_name: str | None


@dataclass(frozen=True, slots=True)
class Gateway:
    """The outcome of choosing G: an address, or why there is none."""

    address: str | None
    reason: str


@dataclass(frozen=True, slots=True, order=True)
class PortConflict:
    proto: Proto
    port: int
    routes: tuple[str, ...]
    reason: str


def parse_networks(docs: Iterable[Any]) -> tuple[DockerNetwork, ...]:
    """Docker's `GET /networks` items → networks; malformed items and subnets are skipped."""
    out: list[DockerNetwork] = []
    for doc in docs:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("Name"), str):
            continue
        ipam = doc.get("IPAM") if isinstance(doc.get("IPAM"), Mapping) else {}
        configs = ipam.get("Config") if isinstance(ipam, Mapping) else None
        subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        gateways: list[str] = []
        for cfg in configs if isinstance(configs, list) else []:
            if not isinstance(cfg, Mapping):
                continue
            try:
                net = ipaddress.ip_network(str(cfg.get("Subnet", "")), strict=False)
            except ValueError:
                continue
            subnets.append(net)
            gw = cfg.get("Gateway")
            try:
                gateways.append(str(ipaddress.ip_address(str(gw))) if gw else _first_host(net))
            except ValueError:
                gateways.append(_first_host(net))
        options = doc.get("Options") if isinstance(doc.get("Options"), Mapping) else {}
        assert isinstance(options, Mapping)
        out.append(DockerNetwork(
            name=doc["Name"],
            driver=str(doc.get("Driver") or ""),
            subnets=tuple(subnets),
            gateways=tuple(gateways),
            default_bridge=options.get("com.docker.network.bridge.default_bridge") == "true"
            or (doc["Name"] == "bridge" and doc.get("Driver") == "bridge"),
            bridge_name=str(options["com.docker.network.bridge.name"])
            if options.get("com.docker.network.bridge.name") else None,
        ))
    return tuple(out)


def _first_host(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """Docker's default gateway of a subnet (it leaves `Gateway` out for the default bridge)."""
    return str(net.network_address + 1) if net.num_addresses > 2 else str(net.network_address)


def choose_gateway(networks: Iterable[DockerNetwork], configured: str) -> Gateway:
    """G: `configured` when it is an IP, else the default bridge's IPv4 gateway."""
    if configured != "auto":
        return Gateway(configured, f"configured ([containers] address = {configured})")
    for net in networks:
        if net.default_bridge and net.driver == "bridge":
            for gw in net.gateways:
                if ipaddress.ip_address(gw).version == 4:
                    where = f" ({net.bridge_name})" if net.bridge_name else ""
                    return Gateway(gw, f"the gateway of Docker's default bridge network{where}")
            return Gateway(None, "Docker's default bridge network has no IPv4 subnet")
    return Gateway(None, "the Docker engine has no default bridge network")


def client_subnets(networks: Iterable[DockerNetwork]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The subnets whose clients may use G as their resolver (bridge-like local networks)."""
    return tuple(s for n in networks if n.driver in ("bridge", "macvlan", "ipvlan") for s in n.subnets)


def client_allowed(client: str, subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == s.version and ip in s for s in subnets)


def horizon_listeners(
    table: RouteTable, *, address: str, http_port: int, https_port: int,
    front: tuple[int, int, int] = (DNS_PORT, HTTP_PORT, HTTPS_PORT),
) -> tuple[dict[ListenerSpec, Target], tuple[PortConflict, ...]]:
    """The listeners on G and the ports that cannot be served there.

    `http_port`/`https_port` are the host horizon's front ports (`proxy.http_port`):
    a route's backends on those are what G:80 and G:443 reach by name. `front` is
    G's own (dns, http, https) ports: always 53, 80, 443 but in tests."""
    dns_port, g_http, g_https = front
    out: dict[ListenerSpec, Target] = {
        ListenerSpec(address, "tcp", g_http): Target(route="", backend=PER_NAME, kind="by-host"),
        ListenerSpec(address, "tcp", g_https): Target(route="", backend=PER_NAME, kind="by-sni"),
    }
    claims: dict[tuple[Proto, int], list[tuple[str, Backend, str | None]]] = {}
    holds = {r.name: r.hold for r in table.routes if r.hold is not None}
    for route in table.routes:
        for pm in route.ports:
            if pm.proto == "tcp" and pm.port in (http_port, https_port):
                continue
            claims.setdefault((pm.proto, pm.port), []).append((route.name, pm.backend, route.service))
    conflicts: list[PortConflict] = []
    for (proto, port), owners in sorted(claims.items()):
        names = tuple(sorted(n for n, _, _ in owners))
        if port == dns_port:
            conflicts.append(PortConflict(proto, port, names, f"{address}:{port} is the container horizon's DNS"))
        elif proto == "tcp" and port in (g_http, g_https):
            by = "Host header" if port == g_http else "TLS SNI"
            conflicts.append(PortConflict(proto, port, names, f"{address}:{port} routes by {by}"))
        elif len({b for _, b, _ in owners}) > 1:
            conflicts.append(PortConflict(proto, port, names, f"{len(owners)} routes claim {port}/{proto}"))
        else:
            # one claimant, or several with the very same backend (every Ingress → the controller's UDP port)
            name, backend, service = min(owners, key=lambda o: o[0])
            out[ListenerSpec(address, proto, port)] = Target(route=name, backend=backend,
                                                             kind="udp" if proto == "udp" else "tcp",
                                                             service=service, hold=holds.get(name))
    return out, tuple(conflicts)


class PortConflictView(TypedDict):
    proto: str
    port: int
    routes: list[str]
    reason: str


def conflict_view(c: PortConflict) -> PortConflictView:
    return {"proto": c.proto, "port": c.port, "routes": list(c.routes), "reason": c.reason}
