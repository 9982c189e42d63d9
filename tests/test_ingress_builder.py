"""The pure Ingress → route builder: hosts, wildcards, classes, conflicts, malformed input."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from maculad.providers.base import port_maps
from maculad.adapters.kube.client import object_key as ingress_key
from maculad.providers.ingress import build_ingress_routes, ingress_class_of
from maculad.routes.model import RouteSpec
from maculad.core.net import Backend
from maculad.routes.table import build_table
from tests.support.fake_k8s import FakeKubeAPI

DOMAIN = "macula.local"
PORTS = port_maps(http_port=80, https_port=443, http=Backend("127.0.0.1", 8080),
                  https=Backend("127.0.0.1", 8443), udp=((4433, Backend("127.0.0.1", 4433)),))


def ing(ns: str, name: str, *hosts: str, **kw: Any) -> dict[str, Any]:
    return FakeKubeAPI.ingress_object(ns, name, hosts, **kw)


def build(*objs: Any, ingress_class: str | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    r = build_ingress_routes(objs, domain=DOMAIN, ports=PORTS, ingress_class=ingress_class)
    return [(s.name, s.origin) for s in r.specs], [(s.origin, s.host, s.kind) for s in r.skipped]


def test_every_rule_host_under_the_domain_routes_to_the_controller_ports() -> None:
    r = build_ingress_routes([ing("apps", "console", "console.macula.local", "Bootstrap.Macula.Local.")],
                             domain=DOMAIN, ports=PORTS)
    assert r.specs == (
        RouteSpec(name="bootstrap.macula.local", source="kubernetes", origin="kubernetes:apps/console", ports=PORTS),
        RouteSpec(name="console.macula.local", source="kubernetes", origin="kubernetes:apps/console", ports=PORTS),
    )
    assert r.skipped == ()
    backends = {(p.proto, p.port): str(p.backend) for p in r.specs[0].ports}
    assert backends == {("tcp", 80): "127.0.0.1:8080", ("tcp", 443): "127.0.0.1:8443",
                        ("udp", 4433): "127.0.0.1:4433"}


def test_multi_namespace_and_duplicate_rules() -> None:
    specs, skipped = build(
        ing("a", "one", "x.macula.local", "x.macula.local"),
        ing("b", "one", "y.macula.local"),
    )
    assert specs == [("x.macula.local", "kubernetes:a/one"), ("y.macula.local", "kubernetes:b/one")]
    assert skipped == []


def test_wildcard_hosts() -> None:
    specs, skipped = build(ing("a", "w", "*.apps.macula.local", "*.macula.local", "a.*.macula.local",
                               "*x.macula.local"))
    assert specs == [("*.apps.macula.local", "kubernetes:a/w"), ("*.macula.local", "kubernetes:a/w")]
    assert [(h, k) for _, h, k in skipped] == [("a.*.macula.local", "invalid-host"),
                                               ("*x.macula.local", "invalid-host")]


def test_hosts_outside_the_domain_and_the_apex_are_skipped_with_a_reason() -> None:
    specs, skipped = build(ing("a", "m", "ok.macula.local", "grafana.example.com", "macula.local",
                               "evilmacula.local"))
    assert specs == [("ok.macula.local", "kubernetes:a/m")]
    assert skipped == [
        ("kubernetes:a/m", "grafana.example.com", "outside-domain"),
        ("kubernetes:a/m", "macula.local", "invalid-host"),
        ("kubernetes:a/m", "evilmacula.local", "outside-domain"),
    ]


def test_bad_characters_skip_only_that_host() -> None:
    specs, skipped = build(ing("a", "m", "bad_ok.macula.local", "sp ace.macula.local", "-x.macula.local",
                               "ünï.macula.local", "good.macula.local"))
    assert specs == [("bad_ok.macula.local", "kubernetes:a/m"), ("good.macula.local", "kubernetes:a/m")]
    assert {h for _, h, k in skipped if k == "invalid-host"} == {"sp ace.macula.local", "-x.macula.local",
                                                                  "ünï.macula.local"}


def test_tls_hosts_do_not_route_on_their_own() -> None:
    specs, skipped = build(ing("a", "t", "web.macula.local", tls_hosts=["web.macula.local", "only-tls.macula.local"]))
    assert specs == [("web.macula.local", "kubernetes:a/t")]
    assert skipped == [("kubernetes:a/t", "only-tls.macula.local", "tls-only")]


def test_ingress_class_filter_uses_the_field_then_the_legacy_annotation() -> None:
    by_field = ing("a", "f", "f.macula.local", ingress_class="nginx")
    by_annotation = ing("a", "l", "l.macula.local", annotations={"kubernetes.io/ingress.class": "nginx"})
    other = ing("a", "o", "o.macula.local", ingress_class="traefik")
    none = ing("a", "n", "n.macula.local")
    assert ingress_class_of(by_field) == "nginx" and ingress_class_of(by_annotation) == "nginx"
    assert ingress_class_of(none) is None
    specs, skipped = build(by_field, by_annotation, other, none, ingress_class="nginx")
    assert specs == [("f.macula.local", "kubernetes:a/f"), ("l.macula.local", "kubernetes:a/l")]
    assert sorted((o, k) for o, _, k in skipped) == [("kubernetes:a/n", "class"), ("kubernetes:a/o", "class")]
    specs, _ = build(by_field, by_annotation, other, none)  # no filter: every class routes
    assert len(specs) == 4


def test_malformed_objects_are_skipped_never_raised() -> None:
    objs: list[Any] = [
        None, 42, "x", [], {}, {"metadata": None}, {"metadata": {"name": 7}},
        {"metadata": {"name": "nospec", "namespace": "a"}},
        {"metadata": {"name": "specstr", "namespace": "a"}, "spec": "nope"},
        {"metadata": {"name": "rulesdict", "namespace": "a"}, "spec": {"rules": {"host": "x.macula.local"}}},
        {"metadata": {"name": "mixed", "namespace": "a"}, "spec": {"rules": [
            "str", None, {"host": 5}, {"http": {}}, {"host": "fine.macula.local"}],
            "tls": [None, {"hosts": "nolist"}, {"hosts": [3]}]}},
        {"metadata": {"name": "nullrules", "namespace": "a"}, "spec": {"rules": None}},
    ]
    specs, skipped = build(*objs)
    assert specs == [("fine.macula.local", "kubernetes:a/mixed")]
    kinds = [(o, k) for o, _, k in skipped]
    assert kinds.count(("kubernetes:?", "malformed")) == 7
    assert ("kubernetes:a/nospec", "malformed") in kinds
    assert ("kubernetes:a/specstr", "malformed") in kinds
    assert ("kubernetes:a/rulesdict", "malformed") in kinds
    assert kinds.count(("kubernetes:a/mixed", "malformed")) == 2
    assert ("kubernetes:a/mixed", "invalid-host") in kinds
    assert ("kubernetes:a/mixed", "no-host") in kinds
    assert ingress_key({"metadata": {"name": "n"}}) == ("default", "n")


def test_same_host_in_two_ingresses_is_a_reported_conflict_and_config_wins() -> None:
    r = build_ingress_routes([ing("b", "second", "dup.macula.local"), ing("a", "first", "dup.macula.local")],
                             domain=DOMAIN, ports=PORTS)
    assert [s.origin for s in r.specs] == ["kubernetes:a/first", "kubernetes:b/second"]
    config = RouteSpec(name="dup.macula.local", source="config", origin="config:dup", ports=())
    pool = ipaddress.IPv4Network("127.0.10.0/24")
    table, _ = build_table(domain=DOMAIN, version=1, specs={"kubernetes": r.specs}, allocations={}, pool=pool)
    route = table.lookup("dup.macula.local")
    assert route is not None and route.origin == "kubernetes:a/first"
    assert [(c.loser, c.winner) for c in table.conflicts] == [("kubernetes:b/second", "kubernetes:a/first")]
    table, _ = build_table(domain=DOMAIN, version=2, specs={"kubernetes": r.specs, "config": [config]},
                           allocations={}, pool=pool)
    route = table.lookup("dup.macula.local")
    assert route is not None and route.origin == "config:dup"
    assert {c.loser for c in table.conflicts} == {"kubernetes:a/first", "kubernetes:b/second"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.sampled_from(["a.macula.local", "*.x.macula.local", "macula.local", "b.example.com"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["metadata", "spec", "rules", "host", "tls", "hosts", "name",
                                       "namespace", "ingressClassName", "annotations", "x"]), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=5), st.sampled_from([None, "nginx"]))
def test_builder_never_raises_on_arbitrary_json(objs: list[Any], cls: str | None) -> None:
    r = build_ingress_routes(objs, domain=DOMAIN, ports=PORTS, ingress_class=cls)
    for s in r.specs:
        assert s.source == "kubernetes" and s.name.endswith(".macula.local") and s.ports == PORTS
