"""Route merging, stable allocation, wildcards and conflicts — pure, no sockets."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import PortMap, RouteSpec, Source
from maculad.core.net import Backend
from maculad.routes.store import AllocationStore
from maculad.routes.table import build_table
from maculad.core.names import qualify

POOL = ipaddress.IPv4Network("127.0.10.0/24")
D = "macula.local"


def spec(name: str, source: Source = "config", *, ip: str | None = None, port: int = 3000,
         origin: str | None = None) -> RouteSpec:
    return RouteSpec(name=f"{name}.{D}" if not name.endswith(D) else name, source=source,
                     origin=origin or f"{source}:{name}", ip=ip,
                     ports=(PortMap("tcp", 80, Backend("127.0.0.1", port)),))


def build(specs: list[RouteSpec], allocations: dict[str, str] | None = None,
          pool: ipaddress.IPv4Network = POOL):
    by: dict[Source, list[RouteSpec]] = {}
    for s in specs:
        by.setdefault(s.source, []).append(s)
    return build_table(domain=D, version=1, specs=by, allocations=allocations or {}, pool=pool)


def test_pinned_and_allocated() -> None:
    table, alloc = build([spec("grafana", ip="127.0.0.2"), spec("loki"), spec("tempo")])
    assert table.lookup("grafana.macula.local").ip == "127.0.0.2"  # type: ignore[union-attr]
    assert table.lookup("loki.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert table.lookup("tempo.macula.local").ip == "127.0.10.2"  # type: ignore[union-attr]
    assert alloc == {"loki.macula.local": "127.0.10.1", "tempo.macula.local": "127.0.10.2"}
    assert table.by_ip("127.0.0.2").name == "grafana.macula.local"  # type: ignore[union-attr]
    assert table.lookup("nope.macula.local") is None


def test_previous_allocations_are_kept_even_when_order_changes() -> None:
    _, alloc = build([spec("b"), spec("c")])
    table, _alloc2 = build([spec("a"), spec("b"), spec("c")], alloc)
    assert table.lookup("b.macula.local").ip == alloc["b.macula.local"]  # type: ignore[union-attr]
    assert table.lookup("c.macula.local").ip == alloc["c.macula.local"]  # type: ignore[union-attr]
    assert table.lookup("a.macula.local").ip == "127.0.10.3"  # type: ignore[union-attr]


def test_a_name_that_leaves_keeps_its_reservation() -> None:
    _, alloc = build([spec("a"), spec("b")])
    _, alloc2 = build([spec("b"), spec("c")], alloc)
    assert alloc2["c.macula.local"] not in (alloc["a.macula.local"], alloc["b.macula.local"])
    table, _ = build([spec("a"), spec("b"), spec("c")], alloc2)
    assert table.lookup("a.macula.local").ip == alloc["a.macula.local"]  # type: ignore[union-attr]


def test_full_pool_reclaims_reservations_then_reports_exhaustion() -> None:
    pool = ipaddress.IPv4Network("127.0.10.0/30")  # two hosts
    _, alloc = build([spec("a"), spec("b")], pool=pool)
    table, alloc2 = build([spec("c"), spec("d")], alloc, pool=pool)
    assert {r.ip for r in table.routes} == {"127.0.10.1", "127.0.10.2"}
    assert "a.macula.local" not in alloc2 and "b.macula.local" not in alloc2
    table, _ = build([spec("c"), spec("d"), spec("e")], alloc2, pool=pool)
    assert [c.kind for c in table.conflicts] == ["pool"]
    assert "exhausted" in table.conflicts[0].reason and table.conflicts[0].name == "e.macula.local"
    assert table.lookup("e.macula.local") is None


def test_priority_config_over_docker_over_kubernetes() -> None:
    table, _ = build([spec("console", "kubernetes", port=1), spec("console", "docker", port=2),
                      spec("console", "config", port=3)])
    r = table.lookup("console.macula.local")
    assert r is not None and r.source == "config"
    losers = sorted(c.loser for c in table.conflicts)
    assert losers == ["docker:console", "kubernetes:console"]
    assert all(c.winner == "config:console" and c.kind == "name" for c in table.conflicts)


def test_same_backends_conflict_is_marked_harmless() -> None:
    table, _ = build([spec("grafana", "config"), spec("grafana", "docker")])
    assert table.conflicts[0].same_backends is True


def test_pinned_ip_conflict_falls_back_to_pool() -> None:
    table, _ = build([spec("a", ip="127.0.0.9"), spec("b", "docker", ip="127.0.0.9"),
                      spec("c", "docker", ip="10.0.0.1")])
    assert table.lookup("a.macula.local").ip == "127.0.0.9"  # type: ignore[union-attr]
    for n in ("b", "c"):
        route = table.lookup(f"{n}.macula.local")
        assert route is not None and ipaddress.IPv4Address(route.ip) in POOL
    reasons = sorted(c.reason for c in table.conflicts)
    assert "already used by config:a" in reasons[1]
    assert "not a loopback address" in reasons[0]


def test_wildcards_cover_names_below_most_specific_first() -> None:
    table, _ = build([spec("*.apps"), spec("*.x.apps", port=2), spec("apps", port=3)])
    assert table.lookup("a.apps.macula.local").name == "*.apps.macula.local"  # type: ignore[union-attr]
    assert table.lookup("b.c.apps.macula.local").name == "*.apps.macula.local"  # type: ignore[union-attr]
    assert table.lookup("y.x.apps.macula.local").name == "*.x.apps.macula.local"  # type: ignore[union-attr]
    assert table.lookup("apps.macula.local").name == "apps.macula.local"  # type: ignore[union-attr]
    assert table.lookup("x.apps.macula.local").name == "*.apps.macula.local"  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "out"), [
    ("grafana", "grafana.macula.local"), ("Grafana.Macula.Local.", "grafana.macula.local"),
    ("*.apps", "*.apps.macula.local"), ("a.b", "a.b.macula.local"),
])
def test_qualify(raw: str, out: str) -> None:
    assert qualify(raw, D) == out


@pytest.mark.parametrize("raw", ["", "a..b", "-a", "a_b c", "macula.local", "x" * 64, "é"])
def test_qualify_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        qualify(raw, D)


names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=0, max_size=30, unique=True)


@settings(max_examples=200, deadline=None)
@given(first=names, second=names)
def test_allocation_is_stable_and_unique(first: list[str], second: list[str]) -> None:
    t1, a1 = build([spec(n) for n in first])
    t2, _a2 = build([spec(n) for n in second], a1)
    ips = [r.ip for r in t2.routes]
    assert len(ips) == len(set(ips))
    for n in set(first) & set(second):
        assert t2.lookup(f"{n}.{D}").ip == t1.lookup(f"{n}.{D}").ip  # type: ignore[union-attr]


def test_manager_drops_equal_snapshots_persists_and_notifies(tmp_path: Path) -> None:
    store = AllocationStore(state_dir=tmp_path)
    m = RouteTableManager(domain=D, pool=POOL, store=store, metrics=Metrics())
    seen: list[int] = []
    m.add_listener(lambda t: seen.append(t.version))
    assert m.update("config", [spec("a"), spec("b")]) is True
    assert m.update("config", [spec("b"), spec("a")]) is False
    assert seen == [1]
    doc = json.loads((tmp_path / "allocations.json").read_text())
    assert doc["allocations"] == {"a.macula.local": "127.0.10.1", "b.macula.local": "127.0.10.2"}
    m2 = RouteTableManager(domain=D, pool=POOL, store=AllocationStore(state_dir=tmp_path), metrics=Metrics())
    m2.update("config", [spec("b")])
    assert m2.current.lookup("b.macula.local").ip == "127.0.10.2"  # type: ignore[union-attr]


def test_corrupt_state_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "allocations.json").write_text("{ torn")
    assert AllocationStore(state_dir=tmp_path).load() == {}
    assert list(tmp_path.glob("allocations.json.corrupt-*"))
