"""Pure parts of the Docker tier: inspect/event parsing and the labels → routes builder (no engine)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from maculad.adapters.docker.model import (
    ContainerInfo,
    Dependency,
    HostBinding,
    parse_depends_on,
    parse_event,
    parse_inspect,
    service_name,
)
from maculad.providers.docker_labels import build_routes, pick_backend, remember
from maculad.routes.model import PortMap, ServiceHold
from maculad.core.net import Backend

DOMAIN = "macula.local"


def inspect_doc(*, name: str = "web", labels: dict[str, str] | None = None, status: str = "running",
                ports: dict[str, Any] | None = None, bindings: dict[str, Any] | None = None,
                health: str | None = None, exit_code: int = 0) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "Running": status == "running", "ExitCode": exit_code,
                             "StartedAt": "2024-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}
    if health:
        state["Health"] = {"Status": health}
    return {
        "Id": "c" * 64,
        "Name": "/" + name,
        "State": state,
        "Config": {"Labels": labels or {}, "Image": "maculad-test/busybox"},
        "HostConfig": {"PortBindings": bindings or {}, "RestartPolicy": {"Name": "no"}},
        "NetworkSettings": {"Ports": ports or {}},
    }


def info(labels: dict[str, str], *, ports: dict[str, list[tuple[str, int]]] | None = None,
         state: str = "running", name: str = "web", project: str | None = None,
         service: str | None = None) -> ContainerInfo:
    return ContainerInfo(
        id=name + "-id", name=name, labels=labels, state=state,
        ports=tuple(sorted((k, tuple(HostBinding(h, p) for h, p in v)) for k, v in (ports or {}).items())),
        compose_project=project, compose_service=service,
    )


def build(*containers: ContainerInfo) -> tuple[list[Any], list[Any]]:
    return build_routes(containers, domain=DOMAIN, http_port=80, https_port=443, project="macula")


# --------------------------------------------------------------------------- parsing


def test_parse_inspect_running_uses_actual_bindings() -> None:
    doc = inspect_doc(
        name="macula-web-1",
        labels={"macula.host": "web", "com.docker.compose.project": "macula",
                "com.docker.compose.service": "web",
                "com.docker.compose.depends_on": "db:service_healthy:false,cache:service_started:true"},
        ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostIp": "::", "HostPort": "49153"}],
               "81/tcp": None},
        bindings={"80/tcp": [{"HostIp": "", "HostPort": ""}]},
        health="healthy",
    )
    c = parse_inspect(doc)
    assert c.name == "macula-web-1" and c.state == "running" and c.health == "healthy" and c.ready
    assert c.bindings("80/tcp") == (HostBinding("0.0.0.0", 49153), HostBinding("::", 49153))
    assert c.bindings("81/tcp") == ()
    assert c.exit_code is None
    assert c.compose_project == "macula" and c.compose_service == "web"
    assert c.depends_on == (Dependency("db", "service_healthy", False), Dependency("cache", "service_started", True))
    assert service_name(c, "macula") == "web"
    assert service_name(c, "other") == "macula-web-1"


def test_parse_inspect_exited_uses_fixed_bindings_and_exit_code() -> None:
    c = parse_inspect(inspect_doc(status="exited", exit_code=3, health="unhealthy",
                                  bindings={"80/tcp": [{"HostIp": "127.0.0.2", "HostPort": "3000"}],
                                            "81/tcp": [{"HostIp": "", "HostPort": ""}]}))
    assert c.exit_code == 3
    assert c.health is None  # a stopped container has no current health
    assert c.bindings("80/tcp") == (HostBinding("127.0.0.2", 3000),)
    assert c.bindings("81/tcp") == ()
    assert not c.ready


@pytest.mark.parametrize("doc", [{}, {"Id": 5, "State": "x", "Config": [], "HostConfig": None},
                                 {"Config": {"Labels": {"a": 1}}, "NetworkSettings": {"Ports": {"80/tcp": "x"}}}])
def test_parse_inspect_never_raises_on_odd_input(doc: dict[str, Any]) -> None:
    c = parse_inspect(doc)
    assert c.id == "" and c.labels == {} and c.ports == ()


def test_parse_event() -> None:
    ev = parse_event({"Type": "container", "Action": "health_status: unhealthy", "timeNano": 1_500_000_000,
                      "Actor": {"ID": "abc", "Attributes": {"name": "web"}}})
    assert ev is not None and ev.action == "health_status" and ev.health == "unhealthy" and ev.time == 1.5
    die = parse_event({"Type": "container", "Action": "die", "time": 7,
                       "Actor": {"ID": "abc", "Attributes": {"exitCode": "137"}}})
    assert die is not None and die.exit_code == 137 and die.time == 7.0
    assert parse_event({"Type": "network", "Action": "connect", "Actor": {"ID": "n"}}) is None
    assert parse_event({"Type": "container", "Actor": {}}) is None


def test_parse_depends_on_reports_bad_entries() -> None:
    deps, err = parse_depends_on("db, cache:service_healthy ,x:bogus:true,a:b:c:d,")
    assert deps == (Dependency("db"), Dependency("cache", "service_healthy"))
    assert err is not None and "bogus" in err and "a:b:c:d" in err
    assert parse_depends_on("") == ((), None)


# --------------------------------------------------------------------------- labels → routes


def test_http_https_tcp_udp_and_pin() -> None:
    c = info(
        {"macula.host": "Grafana", "macula.http": "3000", "macula.https": "3443/tcp", "macula.tcp.5432": "5432",
         "macula.udp.4433": "4433/udp", "macula.ip": "127.0.0.2", "macula.restart": "on-failure:3"},
        ports={"3000/tcp": [("0.0.0.0", 40000), ("::", 40000)], "3443/tcp": [("127.0.0.2", 3443)],
               "5432/tcp": [("127.0.0.1", 15432)], "4433/udp": [("", 14433)]},
        project="macula", service="grafana",
    )
    specs, errors = build(c)
    assert errors == []
    (s,) = specs
    assert s.name == "grafana.macula.local" and s.source == "docker" and s.origin == "docker:web"
    assert s.ip == "127.0.0.2" and s.service == "grafana"
    assert s.ports == (
        PortMap("tcp", 80, Backend("127.0.0.1", 40000)),
        PortMap("tcp", 443, Backend("127.0.0.2", 3443)),
        PortMap("tcp", 5432, Backend("127.0.0.1", 15432)),
        PortMap("udp", 4433, Backend("127.0.0.1", 14433)),
    )


@pytest.mark.parametrize(
    ("labels", "ports", "needle"),
    [
        ({"macula.host": "bad name!", "macula.http": "80"}, {"80/tcp": [("", 1)]}, "macula.host"),
        ({"macula.host": "web.example.com.", "macula.http": "80"}, {"80/tcp": [("", 1)]}, ""),
        ({"macula.host": "web"}, {}, "no port"),
        ({"macula.host": "web", "macula.http": "http"}, {}, "not a container port"),
        ({"macula.host": "web", "macula.http": "80/udp"}, {}, "must be tcp"),
        ({"macula.host": "web", "macula.http": "81"}, {"80/tcp": [("", 1)]}, "81/tcp is not published"),
        ({"macula.host": "web", "macula.http": "80", "macula.ip": "10.0.0.1"}, {"80/tcp": [("", 1)]}, "loopback"),
        ({"macula.host": "web", "macula.http": "80", "macula.ip": "nope"}, {"80/tcp": [("", 1)]}, "IPv4"),
        ({"macula.host": "web", "macula.http": "80", "macula.restart": "sometimes"}, {"80/tcp": [("", 1)]},
         "restart"),
        ({"macula.host": "web", "macula.htpp": "80"}, {"80/tcp": [("", 1)]}, "unknown label"),
        ({"macula.host": "web", "macula.tcp.x": "80"}, {"80/tcp": [("", 1)]}, "not a port number"),
        ({"macula.host": "web", "macula.tcp.80": "80"}, {"80/tcp": [("", 1)]}, "http/https port"),
        ({"macula.host": "web", "macula.udp.99999": "53"}, {"53/udp": [("", 1)]}, "not a port number"),
    ],
)
def test_bad_labels_cost_only_that_container_its_route(labels: dict[str, str], ports: dict[str, Any],
                                                       needle: str) -> None:
    good = info({"macula.host": "ok", "macula.http": "80"}, ports={"80/tcp": [("0.0.0.0", 8080)]}, name="good")
    bad = info(labels, ports=ports, name="bad")
    specs, errors = build(good, bad)
    if needle == "":
        # a name outside the domain is qualified under it: not an error
        assert {s.name for s in specs} == {"ok.macula.local", "web.example.com.macula.local"}
        return
    assert [s.name for s in specs] == ["ok.macula.local"]
    assert len(errors) == 1 and errors[0].container == "bad"
    assert needle in errors[0].reason


def test_unlabelled_and_stopped_unpublished_containers_have_no_route_and_no_error() -> None:
    plain = info({"app": "x"}, ports={"80/tcp": [("", 1)]}, name="plain")
    stopped = info({"macula.host": "s", "macula.http": "80"}, state="exited", name="stopped")
    specs, errors = build(plain, stopped)
    assert specs == [] and errors == []


def test_stopped_container_with_fixed_binding_keeps_its_route_held() -> None:
    c = info({"macula.host": "reg", "macula.http": "5000"}, ports={"5000/tcp": [("127.0.0.1", 5001)]},
             state="exited")
    specs, _ = build(c)
    assert [s.ports for s in specs] == [(PortMap("tcp", 80, Backend("127.0.0.1", 5001)),)]
    assert specs[0].hold == ServiceHold("web", "stopped", "the container exited", "maculactl start web")


def test_a_stopped_container_keeps_the_route_it_had_running_with_the_supervisors_hold() -> None:
    labels = {"macula.host": "app", "macula.http": "8080"}
    running = info(labels, ports={"8080/tcp": [("127.0.0.1", 32768)]})
    specs, _ = build(running)
    remembered = remember({running.id: running}, specs, {})
    assert remembered == {running.id: specs[0]} and specs[0].hold is None
    stopped = info(labels, state="exited")  # a dynamic host port: nothing published while down
    hold = ServiceHold("web", "stopped", "stopped with maculactl stop", "maculactl start web")
    held, errors = build_routes([stopped], domain=DOMAIN, http_port=80, https_port=443, project="macula",
                                holds={stopped.id: hold}, remembered=remembered)
    assert errors == [] and [replace(s, hold=None) for s in held] == specs and held[0].hold == hold
    assert remember({stopped.id: stopped}, held, remembered) == remembered  # kept while it is down
    assert remember({}, held, remembered) == {}  # forgotten once the container is removed
    again, _ = build_routes([running], domain=DOMAIN, http_port=80, https_port=443, project="macula",
                            holds={running.id: hold}, remembered=remembered)
    assert again == specs  # running: a stale hold is ignored, the container is served


def test_service_name_is_the_compose_service_only_in_the_platform_project() -> None:
    a = info({"macula.host": "a", "macula.http": "80"}, ports={"80/tcp": [("", 1)]}, name="macula-a-1",
             project="macula", service="a")
    b = info({"macula.host": "b", "macula.http": "80"}, ports={"80/tcp": [("", 2)]}, name="other-b-1",
             project="other", service="b")
    specs, _ = build(a, b)
    assert {s.name: s.service for s in specs} == {"a.macula.local": "a", "b.macula.local": "other-b-1"}


@pytest.mark.parametrize(
    ("bindings", "expected"),
    [
        ([("0.0.0.0", 1), ("::", 1)], Backend("127.0.0.1", 1)),
        ([("::", 2)], Backend("::1", 2)),
        ([("192.168.1.5", 3), ("127.0.0.5", 4)], Backend("127.0.0.5", 4)),
        ([("", 5)], Backend("127.0.0.1", 5)),
        ([("not-an-ip", 6)], None),
        ([], None),
    ],
)
def test_pick_backend(bindings: list[tuple[str, int]], expected: Backend | None) -> None:
    assert pick_backend(HostBinding(h, p) for h, p in bindings) == expected


def test_host_network_container_is_reached_on_loopback() -> None:
    c = ContainerInfo(id="p", name="prom", labels={"macula.host": "prometheus", "macula.http": "9090"},
                      network_mode="host")
    specs, errors = build(c)
    assert errors == []
    assert specs[0].ports == (PortMap("tcp", 80, Backend("127.0.0.1", 9090)),)
