"""The pure parts of the kind supervisor: the planner, node records, tar building."""

from __future__ import annotations

import io
import tarfile

import pytest

from maculad.adapters.docker.nodes import Node, parse_node, tar_file
from maculad.supervise.cluster_plan import Observation, PlanContext, plan, state_for

C = "macula-dev"
CP = Node("id-cp", f"{C}-control-plane", "control-plane", "running")
W = Node("id-w", f"{C}-worker", "worker", "running")
BOTH = frozenset({CP.name, W.name})


def node(base: Node, state: str, exit_code: int | None = None) -> Node:
    return Node(base.id, base.name, base.role, state, exit_code)


def test_missing_cluster_is_created() -> None:
    p = plan(C, Observation(listed=False), PlanContext())
    assert p.action == "create"
    assert p.reason == "cluster macula-dev does not exist"
    assert state_for(p) == "absent"


def test_every_known_node_gone_is_a_create_that_says_so() -> None:
    p = plan(C, Observation(listed=False), PlanContext(known_nodes=BOTH))
    assert p.action == "create"
    assert "were removed" in p.reason and CP.name in p.reason


def test_kind_lists_a_cluster_without_nodes_is_recreated() -> None:
    assert plan(C, Observation(listed=True), PlanContext()).action == "recreate"


def test_a_gone_node_recreates_only_when_allowed() -> None:
    obs = Observation(nodes=(CP,), listed=True, api_ready=True)
    p = plan(C, obs, PlanContext(known_nodes=BOTH))
    assert p.action == "recreate" and W.name in p.reason and "gone" in p.reason
    held = plan(C, obs, PlanContext(known_nodes=BOTH, recreate_allowed=False))
    assert held.action == "hold" and "kind.recreate = false" in held.reason
    assert state_for(held) == "degraded"


def test_a_dead_node_recreates() -> None:
    p = plan(C, Observation(nodes=(CP, node(W, "dead"))), PlanContext(known_nodes=BOTH))
    assert p.action == "recreate" and "dead" in p.reason


@pytest.mark.parametrize("state", ["exited", "created", "paused"])
def test_stopped_nodes_are_started(state: str) -> None:
    stopped = node(CP, state, 137 if state == "exited" else None)
    p = plan(C, Observation(nodes=(stopped, W)), PlanContext(known_nodes=BOTH))
    assert p.action == "start"
    assert p.nodes == (CP.name,)
    assert CP.name in p.reason
    if state == "exited":
        assert "exited 137" in p.reason


def test_restarting_node_is_waited_for() -> None:
    p = plan(C, Observation(nodes=(node(CP, "restarting"), W)), PlanContext(known_nodes=BOTH))
    assert p.action == "wait" and state_for(p) == "starting"


def test_unknown_node_state_is_held_not_repaired() -> None:
    p = plan(C, Observation(nodes=(node(CP, "weird"),)), PlanContext())
    assert p.action == "hold"


def test_healthy_cluster_is_left_alone() -> None:
    p = plan(C, Observation(nodes=(CP, W), listed=True, api_ready=True), PlanContext(known_nodes=BOTH))
    assert p.action == "none" and state_for(p) == "ready"
    # even with recreate allowed and a long-past ready timeout: healthy means no action
    p = plan(C, Observation(nodes=(CP, W), listed=True, api_ready=True),
             PlanContext(known_nodes=BOTH, exported=True, api_down_for=10_000, ready_timeout=1))
    assert p.action == "none"


def test_api_down_exports_first_then_waits_then_recreates() -> None:
    obs = Observation(nodes=(CP,), api_ready=False, api_error="connection refused")
    p = plan(C, obs, PlanContext(exported=False))
    assert p.action == "export_kubeconfig" and "connection refused" in p.reason
    p = plan(C, obs, PlanContext(exported=True, api_down_for=10, ready_timeout=300))
    assert p.action == "wait"
    p = plan(C, obs, PlanContext(exported=True, api_down_for=300, ready_timeout=300))
    assert p.action == "recreate" and "not been ready for 300s" in p.reason
    p = plan(C, obs, PlanContext(exported=True, api_down_for=300, ready_timeout=300, recreate_allowed=False))
    assert p.action == "hold"


def test_blind_when_docker_cannot_be_asked() -> None:
    p = plan(C, Observation(docker_error="connection refused"), PlanContext(known_nodes=BOTH))
    assert p.action == "blind" and "connection refused" in p.reason


# --------------------------------------------------------------------------- node records


def test_parse_node_from_a_list_entry() -> None:
    n = parse_node({
        "Id": "abc123", "Names": ["/macula-dev-worker"], "State": "exited",
        "Status": "Exited (137) 5 seconds ago",
        "Labels": {"io.x-k8s.kind.cluster": "macula-dev", "io.x-k8s.kind.role": "worker"},
    })
    assert n == Node("abc123", "macula-dev-worker", "worker", "exited", 137)
    assert n.describe() == "macula-dev-worker (exited 137)"


def test_parse_node_tolerates_odd_entries() -> None:
    assert parse_node({}) is None
    assert parse_node({"Id": ""}) is None
    n = parse_node({"Id": "0123456789abcdef", "Names": None, "Labels": None, "State": None, "Status": 5})
    assert n == Node("0123456789abcdef", "0123456789ab", "", "unknown", None)
    n = parse_node({"Id": "x", "Names": ["/n"], "State": {"Status": "Running"}})
    assert n is not None and n.state == "running" and n.running


def test_tar_file_carries_parent_directories() -> None:
    data = tar_file("/etc/containerd/certs.d/registry.macula.local:5001/hosts.toml", b"x = 1\n")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert [m for m in members if members[m].isdir()] == [
            "etc", "etc/containerd", "etc/containerd/certs.d", "etc/containerd/certs.d/registry.macula.local:5001"]
        f = tar.extractfile("etc/containerd/certs.d/registry.macula.local:5001/hosts.toml")
        assert f is not None and f.read() == b"x = 1\n"


@pytest.mark.parametrize("bad", ["relative/path", "/", "/etc/../x", ""])
def test_tar_file_refuses_bad_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        tar_file(bad, b"")
