"""ClusterSupervisor repairs against real Docker containers made by the stand-in `kind`
and the fake Kubernetes API server: a stopped node is started (and the kubeconfig
re-exported), a removed node leads to a recreated cluster (unless kind.recreate is
off), repeated failures end in a give-up that `recreate()` clears."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster_env import ClusterEnv, cluster_containers, docker, inspect, open_env, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ClusterEnv]:
    async with open_env(tmp_path) as e:
        yield e


async def test_stopped_node_is_started_and_kubeconfig_reexported(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    node = f"{env.cluster}-control-plane"
    before = inspect(node)
    assert before is not None
    exports_before = env.kind_calls("export", "kubeconfig")
    env.kubeconfig.unlink()  # a fresh export must bring it back

    docker("stop", "-t", "2", node)
    await wait_for(lambda: r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="start") == 1,
                   20, "the supervisor to start the node")
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready again")

    after = inspect(node)
    assert after is not None and after["State"]["Running"]
    assert after["Id"] == before["Id"]  # started, not recreated
    assert after["State"]["StartedAt"] != before["State"]["StartedAt"]
    assert env.kind_calls("export", "kubeconfig") > exports_before
    assert env.kubeconfig.exists()
    assert env.kind_calls("create", "cluster") == 1
    assert env.kind_calls("delete", "cluster") == 0
    assert r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="start") == 1
    assert r.sample("maculad_cluster_recreations_total", cluster=env.cluster) == 0
    starts = [e for e in r.events.recent(500) if e["kind"] == "cluster_action" and e["action"] == "start"]
    assert starts and node in starts[0]["reason"] and "stopped" in starts[0]["reason"]


async def test_removed_node_leads_to_a_recreated_cluster(env: ClusterEnv) -> None:
    env.setup(workers=1)
    env.start_registry()
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    cp, worker = f"{env.cluster}-control-plane", f"{env.cluster}-worker"
    assert cluster_containers(env.cluster) == [cp, worker]
    old_cp = inspect(cp)
    assert old_cp is not None

    docker("rm", "-f", worker)
    await wait_for(lambda: r.sample("maculad_cluster_recreations_total", cluster=env.cluster) == 1, 30,
                   "the cluster to be recreated")
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the recreated cluster to be ready")

    assert cluster_containers(env.cluster) == [cp, worker]
    new_cp = inspect(cp)
    assert new_cp is not None and new_cp["Id"] != old_cp["Id"]
    assert env.kind_calls("delete", "cluster") == 1
    assert env.kind_calls("create", "cluster") == 2
    st = r.sup.status()
    assert st["recreations"] == 1
    recreated = [e for e in r.events.recent(500) if e["kind"] == "cluster_action" and e["action"] == "recreate"]
    assert len(recreated) == 1 and worker in recreated[0]["reason"] and "gone" in recreated[0]["reason"]
    # the wiring was redone on the new nodes
    text = docker("exec", worker, "cat", "/etc/containerd/certs.d/registry.macula.test:5001/hosts.toml")
    assert env.registry in text


async def test_removed_node_is_not_recreated_when_recreate_is_off(env: ClusterEnv) -> None:
    env.setup(workers=1)
    env.start_registry()
    r = await env.run(env.config(recreate=False))
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    docker("rm", "-f", f"{env.cluster}-worker")
    await wait_for(lambda: r.sup.status()["state"] == "degraded", 20, "the cluster to be degraded")
    assert "kind.recreate = false" in r.sup.status()["reason"]
    assert env.kind_calls("delete", "cluster") == 0
    assert cluster_containers(env.cluster) == [f"{env.cluster}-control-plane"]


async def test_give_up_after_the_start_limit_then_recreate_on_request(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    assert env.kind is not None
    env.kind.fail_next("create", times=3, stderr="ERROR: failed to create cluster: injected failure")
    backoff = {"initial": 0.05, "factor": 2.0, "cap": 0.2, "reset_after": 60.0, "start_limit": 2,
               "start_limit_window": 600.0}
    r = await env.run(env.config(backoff=backoff))
    await wait_for(lambda: r.sup.status()["state"] == "failed", 30, "the supervisor to give up")
    st = r.sup.status()
    assert "gave up" in st["reason"] and "start limit" in st["reason"]
    assert "injected failure" in (st["last_error"] or "")
    assert st["restart"]["state"] == "failed"
    assert "cluster_gave_up" in r.event_kinds()
    assert r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="give_up") == 1
    attempts = env.kind_calls("create", "cluster")
    assert attempts == 3
    assert cluster_containers(env.cluster) == []
    # given up: no more attempts
    await wait_for(lambda: env.kind_calls("get", "clusters") >= 8, 20, "more reconcile passes")
    assert env.kind_calls("create", "cluster") == attempts

    await r.sup.recreate("requested by the test")
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    assert cluster_containers(env.cluster) == [f"{env.cluster}-control-plane"]
    assert r.sample("maculad_cluster_recreations_total", cluster=env.cluster) == 1
    assert r.sup.status()["restart"]["state"] == "running"


async def test_recreate_on_request_of_a_healthy_cluster(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    node = f"{env.cluster}-control-plane"
    old = inspect(node)
    assert old is not None
    await r.sup.recreate("requested with maculactl cluster recreate")
    new = inspect(node)
    assert new is not None and new["Id"] != old["Id"] and new["State"]["Running"]
    st = r.sup.status()
    assert st["recreations"] == 1
    assert st["wired"] is True  # recreate() returns once the new cluster is wired
    text = docker("exec", node, "cat", "/etc/containerd/certs.d/registry.macula.test:5001/hosts.toml")
    assert env.registry in text
    recreated = [e for e in r.events.recent(500) if e["kind"] == "cluster_action" and e["action"] == "recreate"]
    assert [e["reason"] for e in recreated] == ["requested with maculactl cluster recreate"]
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready again")
    assert env.kind_calls("delete", "cluster") == 1
