"""The container horizon's pure planning: G from Docker's networks, the resolver guard, G's listeners."""

from __future__ import annotations

import ipaddress
from typing import Any

from maculad.horizons.plan import (
    PER_NAME,
    Gateway,
    choose_gateway,
    client_allowed,
    client_subnets,
    horizon_listeners,
    parse_networks,
)
from maculad.proxy.spec import ListenerSpec
from maculad.core.net import Backend
from maculad.routes.model import PortMap, RouteSpec
from maculad.routes.table import build_table

# the shapes of Docker 20.10's GET /networks: the default bridge has no IPAM Gateway
NETWORKS: list[Any] = [
    {"Name": "bridge", "Driver": "bridge",
     "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "172.17.0.0/16"}]},
     "Options": {"com.docker.network.bridge.default_bridge": "true", "com.docker.network.bridge.name": "docker0"}},
    {"Name": "kind", "Driver": "bridge",
     "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"},
                                                            {"Subnet": "fc00:f853:ccd:e793::/64"}]},
     "Options": {}},
    {"Name": "host", "Driver": "host", "IPAM": {"Driver": "default", "Config": []}, "Options": {}},
    {"Name": "none", "Driver": "null", "IPAM": {"Driver": "default", "Config": []}, "Options": {}},
    {"Name": "broken", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "not-a-net"}, "x"]}, "Options": None},
    "garbage",
    {"Driver": "bridge"},
]


def test_gateway_of_the_default_bridge() -> None:
    nets = parse_networks(NETWORKS)
    assert [n.name for n in nets] == ["bridge", "kind", "host", "none", "broken"]
    assert choose_gateway(nets, "auto") == Gateway("172.17.0.1", "the gateway of Docker's default bridge network "
                                                   "(docker0)")
    assert choose_gateway(nets, "10.1.2.3").address == "10.1.2.3"
    assert choose_gateway(parse_networks(NETWORKS[1:]), "auto") == Gateway(
        None, "the Docker engine has no default bridge network")
    no_v4 = [{**NETWORKS[0], "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}]
    assert choose_gateway(parse_networks(no_v4), "auto").address is None


def test_only_docker_subnets_may_resolve_through_g() -> None:
    subnets = client_subnets(parse_networks(NETWORKS))
    assert ipaddress.ip_network("172.18.0.0/16") in subnets
    assert client_allowed("172.17.0.2", subnets)
    assert client_allowed("172.18.5.9", subnets)
    assert client_allowed("::ffff:172.17.0.3", subnets)
    assert client_allowed("fc00:f853:ccd:e793::5", subnets)
    for outsider in ("127.0.0.1", "192.0.2.2", "10.0.0.1", "::1", "nonsense", ""):
        assert not client_allowed(outsider, subnets), outsider


def spec(name: str, *ports: PortMap) -> RouteSpec:
    return RouteSpec(name=f"{name}.macula.local", source="config", origin=f"config:{name}", ports=ports)


def test_listeners_on_g() -> None:
    b = Backend("127.0.0.1", 1)
    table, _ = build_table(domain="macula.local", version=1, pool=ipaddress.IPv4Network("127.0.10.0/24"),
                           allocations={}, specs={"config": [spec("grafana", PortMap("tcp", 10080, b)),
                               spec("pg", PortMap("tcp", 5432, b)),
                               spec("boot", PortMap("udp", 4433, b), PortMap("tcp", 10443, b)),
                               spec("pg2", PortMap("tcp", 5432, Backend("127.0.0.1", 2))),
                               spec("dns", PortMap("udp", 53, b)),
                               spec("web", PortMap("tcp", 80, b)),
                               spec("app1", PortMap("udp", 4444, b)),
                               spec("app2", PortMap("udp", 4444, b))]})
    listeners, conflicts = horizon_listeners(table, address="172.17.0.1", http_port=10080, https_port=10443)
    assert listeners[ListenerSpec("172.17.0.1", "tcp", 80)].kind == "by-host"
    assert listeners[ListenerSpec("172.17.0.1", "tcp", 443)].kind == "by-sni"
    assert listeners[ListenerSpec("172.17.0.1", "tcp", 443)].backend == PER_NAME
    assert listeners[ListenerSpec("172.17.0.1", "udp", 4433)].route == "boot.macula.local"
    assert set(listeners) == {ListenerSpec("172.17.0.1", "tcp", 80), ListenerSpec("172.17.0.1", "tcp", 443),
                              ListenerSpec("172.17.0.1", "udp", 4433), ListenerSpec("172.17.0.1", "udp", 4444)}
    # two routes, one backend (every Ingress host → the ingress controller's QUIC port): served, no conflict
    assert listeners[ListenerSpec("172.17.0.1", "udp", 4444)].route == "app1.macula.local"
    assert [(c.proto, c.port, c.routes) for c in conflicts] == [
        ("tcp", 80, ("web.macula.local",)),
        ("tcp", 5432, ("pg.macula.local", "pg2.macula.local")),
        ("udp", 53, ("dns.macula.local",)),
    ]
    assert "DNS" in conflicts[2].reason and "Host header" in conflicts[0].reason
