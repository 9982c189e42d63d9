"""The PowerDNS diff, table-tested: ExternalDNS ownership, format rules, stale records, bad listings."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from maculad.publishers.powerdns import (
    Change,
    RRset,
    WILDCARD_REPLACEMENT,
    ZoneFormatError,
    guarded_name,
    owner_text,
    parse_owner,
    parse_zone,
    plan,
    txt_name,
    unquote_txt,
    wanted,
)
from maculad.core.net import Backend
from maculad.routes.model import PortMap, RouteSpec, Source
from maculad.routes.table import RouteTable, build_table

ZONE = "macula.local"
ME = "maculad-test"
ADDR = "172.17.0.1"


def table(*names: str, source: Source = "config") -> RouteTable:
    specs = tuple(RouteSpec(name=n, source=source, origin=f"{source}:{n.split('.')[0]}",
                            ports=(PortMap("tcp", 80, Backend("127.0.0.1", 8000)),)) for n in names)
    t, _ = build_table(domain=ZONE, version=1, specs={source: specs}, allocations={},
                       pool=ipaddress.IPv4Network("127.0.10.0/24"))
    return t


def want(*names: str) -> dict[str, Any]:
    return wanted(table(*names), zone=ZONE, owner_id=ME, address=ADDR, ttl=5)


def rr(name: str, rtype: str, *records: str, ttl: int = 5) -> RRset:
    return RRset(name, rtype, ttl, tuple(sorted(records)))


def ours(name: str, route: str | None = None) -> dict[tuple[str, str], RRset]:
    short = route or name.split(".")[0]
    return {(name + ".", "A"): rr(name + ".", "A", ADDR),
            (txt_name(name), "TXT"): rr(txt_name(name), "TXT", owner_text(ME, "config", short))}


def zone(*parts: dict[tuple[str, str], RRset]) -> dict[tuple[str, str], RRset]:
    out: dict[tuple[str, str], RRset] = {
        (ZONE + ".", "SOA"): rr(ZONE + ".", "SOA", "ns. h. 1 2 3 4 5"),
        (ZONE + ".", "NS"): rr(ZONE + ".", "NS", "ns.macula.local."),
    }
    for p in parts:
        out.update(p)
    return out


def actions(changes: tuple[Change, ...]) -> list[tuple[str, str, str]]:
    return [(c.action, c.rrset.name, c.rrset.type) for c in changes]


def test_wanted_records_follow_powerdns_format() -> None:
    w = want("grafana.macula.local")["grafana.macula.local."]
    assert w.a == RRset("grafana.macula.local.", "A", 5, (ADDR,))
    assert w.txt.name == "a-grafana.macula.local."
    assert w.txt.records == (
        '"heritage=external-dns,external-dns/owner=maculad-test,external-dns/resource=maculad/config/grafana"',)


def test_names_outside_the_zone_and_wildcards() -> None:
    w = wanted(table("grafana.macula.local", "*.apps.macula.local"), zone="apps.macula.local", owner_id=ME,
               address=ADDR, ttl=5)
    assert list(w) == ["*.apps.macula.local."]  # grafana.macula.local is outside the zone apps.macula.local
    w = want("*.apps.macula.local")
    assert w["*.apps.macula.local."].txt.name == "a-wildcard.apps.macula.local."
    assert guarded_name("a-wildcard.apps.macula.local.") == "*.apps.macula.local."
    assert guarded_name("a-grafana.macula.local.") == "grafana.macula.local."
    assert guarded_name("grafana.macula.local.") is None


CASES: list[tuple[str, dict[tuple[str, str], RRset], list[tuple[str, str, str]], list[str]]] = [
    ("empty zone: A and TXT created", zone(),
     [("REPLACE", "grafana.macula.local.", "A"), ("REPLACE", "a-grafana.macula.local.", "TXT")], []),
    ("already ours and equal: nothing", zone(ours("grafana.macula.local")), [], []),
    ("ours with another address: A replaced",
     zone(ours("grafana.macula.local"), {("grafana.macula.local.", "A"): rr("grafana.macula.local.", "A", "10.0.0.9")}),
     [("REPLACE", "grafana.macula.local.", "A")], []),
    ("ours, A missing: A created",
     zone({k: v for k, v in ours("grafana.macula.local").items() if k[1] == "TXT"}),
     [("REPLACE", "grafana.macula.local.", "A")], []),
    ("foreign owner TXT: conflict, untouched",
     zone({("grafana.macula.local.", "A"): rr("grafana.macula.local.", "A", "10.9.9.9"),
           ("a-grafana.macula.local.", "TXT"): rr("a-grafana.macula.local.", "TXT",
                                                  '"heritage=external-dns,external-dns/owner=kind-b"')}),
     [], ["grafana.macula.local"]),
    ("record without any owner TXT: conflict, untouched",
     zone({("grafana.macula.local.", "A"): rr("grafana.macula.local.", "A", "10.9.9.9")}),
     [], ["grafana.macula.local"]),
    ("a CNAME someone put there: conflict",
     zone({("grafana.macula.local.", "CNAME"): rr("grafana.macula.local.", "CNAME", "x.example.")}),
     [], ["grafana.macula.local"]),
    ("a TXT at a- that is no owner record: conflict",
     zone({("a-grafana.macula.local.", "TXT"): rr("a-grafana.macula.local.", "TXT", '"hello"')}),
     [], ["grafana.macula.local"]),
    ("a stale name of ours: A and TXT deleted; foreign names untouched",
     zone(ours("old.macula.local"),
          {("peer9.macula.local.", "A"): rr("peer9.macula.local.", "A", "10.1.2.3"),
           ("a-peer9.macula.local.", "TXT"): rr("a-peer9.macula.local.", "TXT",
                                                '"heritage=external-dns,external-dns/owner=kind-b"')},
          ours("grafana.macula.local")),
     [("DELETE", "old.macula.local.", "A"), ("DELETE", "a-old.macula.local.", "TXT")], []),
    ("resource label changed (route moved source): TXT replaced",
     zone(ours("grafana.macula.local", route="something-else")),
     [("REPLACE", "a-grafana.macula.local.", "TXT")], []),
]


@pytest.mark.parametrize(("what", "z", "expected", "conflicts"), CASES, ids=[c[0] for c in CASES])
def test_plan(what: str, z: dict[tuple[str, str], RRset], expected: list[tuple[str, str, str]],
              conflicts: list[str]) -> None:
    p = plan(want("grafana.macula.local"), z, owner_id=ME)
    assert actions(p.changes) == expected
    assert [c.name for c in p.conflicts] == conflicts
    assert p.owned == (() if conflicts else ("grafana.macula.local",))
    for c in p.changes:  # nothing the plan touches lacks our owner TXT
        guard = c.rrset.name if c.rrset.type == "TXT" else txt_name(c.rrset.name)
        existing = z.get((guard, "TXT"))
        assert existing is None or (parse_owner(existing.records[0]) or {}).get("external-dns/owner") == ME


def test_conflict_names_the_other_owner() -> None:
    z = zone({("a-grafana.macula.local.", "TXT"): rr("a-grafana.macula.local.", "TXT",
                                                     '"heritage=external-dns,external-dns/owner=kind-b,x=y"')})
    (c,) = plan(want("grafana.macula.local"), z, owner_id=ME).conflicts
    assert c.owner == "kind-b" and "kind-b" in c.reason and c.origin == "config:grafana"


def test_another_maculad_stale_names_are_not_ours_to_delete() -> None:
    other = {(txt_name("laptop2.macula.local"), "TXT"): rr(txt_name("laptop2.macula.local"), "TXT",
                                                          owner_text("maculad-laptop2", "config", "x")),
             ("laptop2.macula.local.", "A"): rr("laptop2.macula.local.", "A", "10.0.0.2")}
    assert plan({}, zone(other), owner_id=ME).changes == ()


def test_patch_body_shape() -> None:
    p = plan(want("grafana.macula.local"), zone(ours("old.macula.local")), owner_id=ME)
    body = p.body()["rrsets"]
    assert {"name": "grafana.macula.local.", "type": "A", "ttl": 5, "changetype": "REPLACE",
            "records": [{"content": ADDR, "disabled": False}]} in body
    assert {"name": "a-old.macula.local.", "type": "TXT", "changetype": "DELETE"} in body


@pytest.mark.parametrize(("content", "text"), [
    ('"a=b"', "a=b"), ('"a" "b"', "ab"), ('"say \\"hi\\""', 'say "hi"'), ("plain", "plain"),
])
def test_unquote(content: str, text: str) -> None:
    assert unquote_txt(content) == text


@pytest.mark.parametrize("content", ['"hello"', '"heritage=other,external-dns/owner=me"', '""', '"a=b,c"'])
def test_not_owner_records(content: str) -> None:
    assert parse_owner(content) is None


def test_parse_zone_reads_powerdns_listing() -> None:
    z = parse_zone({"rrsets": [
        {"name": "Grafana.Macula.Local.", "type": "A", "ttl": 60,
         "records": [{"content": "1.2.3.4", "disabled": False}],
         "comments": []},
        {"name": "commented.macula.local.", "type": "A", "ttl": 60, "records": [], "comments": [{"content": "x"}]},
    ]})
    assert z == {("grafana.macula.local.", "A"): RRset("grafana.macula.local.", "A", 60, ("1.2.3.4",))}


@pytest.mark.parametrize("data", [
    None, [], "zone", {"rrsets": "x"}, {"rrsets": [1]}, {"rrsets": [{"name": "a.", "type": "A"}]},
    {"rrsets": [{"name": "a.", "type": "A", "ttl": "5", "records": []}]},
    {"rrsets": [{"name": "a.", "type": "A", "ttl": 5, "records": [{"content": 5}]}]},
    {"rrsets": [{"name": "", "type": "A", "ttl": 5, "records": []}]},
    {"rrsets": [{"name": "a.", "type": "A", "ttl": True, "records": []}]},
    {"rrsets": [{"name": "a.", "type": "A", "ttl": 5, "records": ["1.2.3.4"]}]},
])
def test_parse_zone_refuses_bad_shapes(data: Any) -> None:
    with pytest.raises(ZoneFormatError):
        parse_zone(data)


def test_external_dns_manifest_has_its_own_owner_and_the_new_format() -> None:
    from pathlib import Path

    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "config/external-dns/external-dns.yaml")
                                   .read_text()))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    owner = [a.split("=", 1)[1] for a in args if a.startswith("--txt-owner-id=")]
    assert owner and not owner[0].startswith("maculad-")
    assert "--txt-new-format-only" in args and "--provider=pdns" in args and "--registry=txt" in args
    assert f"--txt-wildcard-replacement={WILDCARD_REPLACEMENT}" in args
