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
    assert alloc == {"grafana.macula.local": "127.0.0.2", "loki.macula.local": "127.0.10.1",
                     "tempo.macula.local": "127.0.10.2"}
    assert table.changes == ()
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


def test_between_two_new_pins_the_first_wins_and_the_loser_is_not_served() -> None:
    table, alloc = build([spec("a", ip="127.0.0.9"), spec("b", "docker", ip="127.0.0.9"),
                          spec("c", "docker", ip="10.0.0.1")])
    assert table.lookup("a.macula.local").ip == "127.0.0.9"  # type: ignore[union-attr]
    assert table.lookup("b.macula.local") is None and table.lookup("c.macula.local") is None
    by_name = {c.name: c for c in table.conflicts}
    assert by_name["b.macula.local"].kind == "ip" and by_name["b.macula.local"].winner == "config:a"
    assert "already used by config:a" in by_name["b.macula.local"].reason
    assert "not a loopback address" in by_name["c.macula.local"].reason
    assert "not served" in by_name["c.macula.local"].reason
    assert alloc == {"a.macula.local": "127.0.0.9"}


def test_a_later_pin_does_not_take_an_allocated_ip_from_its_holder() -> None:
    """The issue's case: grafana got 127.0.10.1 from the pool; a route pinned there later loses."""
    t1, a1 = build([spec("grafana"), spec("loki")])
    assert t1.lookup("grafana.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    t2, a2 = build([spec("grafana"), spec("loki"), spec("draw", ip="127.0.10.1")], a1)
    assert t2.lookup("grafana.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert t2.lookup("loki.macula.local").ip == "127.0.10.2"  # type: ignore[union-attr]
    assert t2.lookup("draw.macula.local") is None
    [c] = t2.conflicts
    assert (c.kind, c.name, c.loser, c.winner) == ("ip", "draw.macula.local", "config:draw", "config:grafana")
    assert c.reason == ("pinned IP 127.0.10.1 is held by grafana.macula.local (config:grafana); "
                        "not served until the pin changes")
    assert t2.changes == () and a2 == a1
    # the holder is a higher-priority source's business only by holding: a docker holder keeps it too
    t3, _ = build([spec("grafana", "docker"), spec("draw", "config", ip="127.0.10.1")], a1)
    assert t3.lookup("grafana.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert [c.kind for c in t3.conflicts] == ["ip"]
    # once the holder leaves, the pin is served, and the holder's reservation is reported as given away
    t4, a4 = build([spec("loki"), spec("draw", ip="127.0.10.1")], a2)
    assert t4.lookup("draw.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert [(ch.name, ch.old, ch.new) for ch in t4.changes] == [("grafana.macula.local", "127.0.10.1", None)]
    assert "draw.macula.local" in t4.changes[0].reason
    assert a4 == {"draw.macula.local": "127.0.10.1", "loki.macula.local": "127.0.10.2"}
    # ... and when it comes back it gets a fresh IP while the pin keeps its own
    t5, _ = build([spec("grafana"), spec("loki"), spec("draw", ip="127.0.10.1")], a4)
    assert t5.lookup("draw.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert t5.lookup("grafana.macula.local").ip == "127.0.10.3"  # type: ignore[union-attr]
    assert t5.conflicts == ()


@pytest.mark.parametrize(("before", "after", "old", "new", "reason"), [
    # a pin moves its own name (deliberately), with the change reported
    ([spec("grafana")], [spec("grafana", ip="127.0.0.5")], "127.0.10.1", "127.0.0.5", "pinned to 127.0.0.5"),
    # a pin outside the pool removed: back to the pool
    ([spec("grafana", ip="127.0.0.5")], [spec("grafana")], "127.0.0.5", "127.0.10.1",
     "its IP 127.0.0.5 is outside the pool 127.0.10.0/24"),
])
def test_every_ip_change_is_reported(before: list[RouteSpec], after: list[RouteSpec], old: str, new: str,
                                     reason: str) -> None:
    _, a1 = build(before)
    t2, _ = build(after, a1)
    assert [(c.name, c.old, c.new, c.reason) for c in t2.changes] == [("grafana.macula.local", old, new, reason)]


def test_a_pin_removed_inside_the_pool_keeps_its_ip() -> None:
    _, a1 = build([spec("grafana", ip="127.0.10.7"), spec("loki")])
    t2, _ = build([spec("grafana"), spec("loki"), spec("tempo")], a1)
    assert t2.lookup("grafana.macula.local").ip == "127.0.10.7"  # type: ignore[union-attr]
    assert t2.changes == ()


def test_a_pin_holding_its_ip_beats_a_returning_name_that_once_had_it() -> None:
    _, a1 = build([spec("grafana")])                                 # grafana: .1
    _, a2 = build([spec("draw", ip="127.0.10.1")], a1)               # grafana gone; the pin takes .1
    t3, _ = build([spec("draw", ip="127.0.10.1"), spec("grafana")], a2)
    assert t3.lookup("draw.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]
    assert t3.lookup("grafana.macula.local").ip == "127.0.10.2"  # type: ignore[union-attr]


def test_a_full_pool_reports_the_reservations_it_reclaims() -> None:
    pool = ipaddress.IPv4Network("127.0.10.0/30")
    _, alloc = build([spec("a"), spec("b")], pool=pool)
    table, _ = build([spec("c"), spec("d")], alloc, pool=pool)
    assert sorted((c.name, c.new) for c in table.changes) == [("a.macula.local", None), ("b.macula.local", None)]
    assert all("the pool 127.0.10.0/30 is full" in c.reason for c in table.changes)


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


pins = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                          st.one_of(st.none(), st.sampled_from(["127.0.10.1", "127.0.10.2", "127.0.0.9"]))),
                max_size=6, unique_by=lambda t: t[0])


@settings(max_examples=300, deadline=None)
@given(first=pins, second=pins)
def test_no_name_changes_ip_unreported_and_no_ip_is_given_twice(
        first: list[tuple[str, str | None]], second: list[tuple[str, str | None]]) -> None:
    t1, a1 = build([spec(n, ip=ip) for n, ip in first])
    t2, a2 = build([spec(n, ip=ip) for n, ip in second], a1)
    assert len(set(a2.values())) == len(a2)
    assert len({r.ip for r in t2.routes}) == len(t2.routes)
    reported = {c.name: c.new for c in t2.changes}
    for r1 in t1.routes:
        r2 = t2.lookup(r1.name)
        if r2 is not None and r2.ip != r1.ip:
            assert reported.get(r1.name) == r2.ip
    for name, ip in a1.items():
        if a2.get(name, ip) != ip or (name not in a2 and t2.lookup(name) is None):
            assert name in reported


def test_manager_logs_counts_and_publishes_conflicts_and_ip_changes(tmp_path: Path) -> None:
    from maculad.core.events import EventBus

    metrics, events = Metrics(), EventBus()
    m = RouteTableManager(domain=D, pool=POOL, store=AllocationStore(state_dir=tmp_path), metrics=metrics,
                          events=events)
    m.update("config", [spec("grafana")])
    m.update("config", [spec("grafana"), spec("draw", ip="127.0.10.1")])
    kinds = [e["kind"] for e in events.recent()]
    assert kinds.count("route_conflict") == 1
    conflict = next(e for e in events.recent() if e["kind"] == "route_conflict")
    assert (conflict["name"], conflict["winner"]) == ("draw.macula.local", "config:grafana")
    assert metrics.registry.get_sample_value("maculad_route_conflicts", {"kind": "ip"}) == 1
    m.update("config", [spec("grafana", ip="127.0.0.5"), spec("draw", ip="127.0.10.1")])
    moved = [e for e in events.recent() if e["kind"] == "route_ip_changed"]
    assert [(e["name"], e["old"], e["new"]) for e in moved] == [("grafana.macula.local", "127.0.10.1", "127.0.0.5")]
    assert metrics.registry.get_sample_value("maculad_route_conflicts", {"kind": "ip"}) == 0
    assert metrics.registry.get_sample_value("maculad_route_ip_changes_total") == 1
    assert m.current.lookup("draw.macula.local").ip == "127.0.10.1"  # type: ignore[union-attr]


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
