"""ClusterSupervisor against real Docker containers made by the stand-in `kind`
and the fake Kubernetes API server: create, wire, leave alone, dry-run.
(Repairs — start, recreate, give up — are in test_cluster_repair.py.)"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.support.cluster_env import (
    ClusterEnv,
    cluster_containers,
    docker,
    inspect,
    open_env,
    wait_for,
)
from tests.support.fake_k8s import CONFIGMAPS
from tests.support.fake_k8s_cluster import DEPLOYMENTS, SERVICES

pytestmark = pytest.mark.docker


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ClusterEnv]:
    async with open_env(tmp_path) as e:
        yield e


async def test_missing_cluster_is_created(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    assert cluster_containers(env.cluster) == []
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")

    node = f"{env.cluster}-control-plane"
    assert cluster_containers(env.cluster) == [node]
    info = inspect(node)
    assert info is not None and info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels["io.x-k8s.kind.cluster"] == env.cluster
    assert labels["io.x-k8s.kind.role"] == "control-plane"
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 1}
    ports = info["NetworkSettings"]["Ports"]
    assert ports["80/tcp"][0]["HostPort"] == str(env.ports["http"])
    assert ports["443/tcp"][0]["HostPort"] == str(env.ports["https"])
    assert ports["4433/udp"][0]["HostPort"] == str(env.ports["quic"])

    st = r.sup.status()
    assert st["api_ready"] is True
    assert st["nodes"] == [{"name": node, "role": "control-plane", "state": "running", "exit_code": None}]
    assert st["last_action"]["action"] == "wire"
    assert st["kubeconfig"] == str(env.kubeconfig)
    kubeconfig = yaml.safe_load(env.kubeconfig.read_text())
    assert f"kind-{env.cluster}" in [c["name"] for c in kubeconfig["contexts"]]
    assert env.kind_calls("create", "cluster") == 1
    assert env.kind_calls("delete", "cluster") == 0
    assert r.sample("maculad_cluster_ready", cluster=env.cluster) == 1
    assert r.sample("maculad_cluster_state", cluster=env.cluster, state="ready") == 1
    assert r.sample("maculad_cluster_state", cluster=env.cluster, state="absent") == 0
    assert r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="create") == 1
    assert r.sample("maculad_cluster_recreations_total", cluster=env.cluster) == 0
    created = [e for e in r.events.recent(500) if e["kind"] == "cluster_action" and e["action"] == "create"]
    assert created and "does not exist" in created[0]["reason"]
    assert r.fatal == []


async def test_wiring_after_creation(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    node = f"{env.cluster}-control-plane"

    # the registry container joined the kind network and the node reaches it by name
    reg = inspect(env.registry)
    assert reg is not None and "kind" in reg["NetworkSettings"]["Networks"]
    page = docker("exec", node, "wget", "-q", "-O", "-", f"http://{env.registry}:5000/")
    assert "maculad test image" in page

    # containerd's hosts.toml, read back from inside the node
    text = docker("exec", node, "cat", "/etc/containerd/certs.d/registry.macula.test:5001/hosts.toml")
    assert f'[host."http://{env.registry}:5000"]' in text
    assert 'capabilities = ["pull", "resolve"]' in text

    # KEP-1755 ConfigMap, server-side applied by maculad
    cm = env.api.get(CONFIGMAPS, "kube-public", "local-registry-hosting")
    assert cm is not None
    hosting = yaml.safe_load(cm["data"]["localRegistryHosting.v1"])
    assert hosting["host"] == "registry.macula.test:5001"
    assert hosting["hostFromClusterNetwork"] == f"{env.registry}:5000"
    assert hosting["help"].startswith("https://kind.sigs.k8s.io/")

    # the ingress manifest: every object applied with fieldManager=maculad, the Deployment waited for
    dep = env.api.get(DEPLOYMENTS, "ingress-nginx", "ingress-nginx-controller")
    svc = env.api.get(SERVICES, "ingress-nginx", "ingress-nginx-controller")
    assert dep is not None and svc is not None
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"ingress-ready": "true"}
    applies = [(q.path, q.query.get("fieldManager")) for q in env.api.requests
               if q.method == "PATCH"]
    assert ("/api/v1/namespaces/ingress-nginx", "maculad") in applies
    assert ("/apis/apps/v1/namespaces/ingress-nginx/deployments/ingress-nginx-controller", "maculad") in applies
    paths = [p for p, _ in applies]
    assert paths.index("/api/v1/namespaces/ingress-nginx") < paths.index(
        "/api/v1/namespaces/ingress-nginx/services/ingress-nginx-controller")
    wiring = r.sup.status()["wiring"]
    assert "Deployments available" in wiring["ingress"]
    assert "cluster_wired" in r.event_kinds()


async def test_registry_reconnected_when_it_leaves_the_kind_network(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    r = await env.run(env.config())
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    docker("network", "disconnect", "kind", env.registry)

    def on_kind() -> bool:
        reg = inspect(env.registry)
        return reg is not None and "kind" in reg["NetworkSettings"]["Networks"]

    await wait_for(lambda: r.sample("maculad_cluster_actions_total", cluster=env.cluster,
                                    action="connect_registry") == 2, 20, "maculad to reconnect the registry")
    assert on_kind()
    assert env.kind_calls("create", "cluster") == 1


async def test_healthy_cluster_is_left_alone_across_restarts(env: ClusterEnv) -> None:
    env.setup(workers=1)
    env.start_registry()
    cfg = env.config()
    first = await env.run(cfg)
    await wait_for(lambda: first.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    before = {n: inspect(n) for n in cluster_containers(env.cluster)}
    await first.stop()

    for _ in range(2):  # maculad restarts, twice
        again = await env.run(cfg)
        await wait_for(lambda r=again: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
        await wait_for(lambda r=again: r.sup.status()["restart"]["state"] == "running", 10, "a running tracker")
        st = again.sup.status()
        assert st["last_action"]["action"] == "wire"  # verified the wiring, touched nothing else
        assert again.sample("maculad_cluster_recreations_total", cluster=env.cluster) == 0
        for action in ("create", "recreate", "start"):
            assert again.sample("maculad_cluster_actions_total", cluster=env.cluster, action=action) == 0
        await again.stop()

    after = {n: inspect(n) for n in cluster_containers(env.cluster)}
    assert set(after) == set(before)
    for name, info in after.items():
        assert info is not None and before[name] is not None
        assert info["Id"] == before[name]["Id"]
        assert info["State"]["StartedAt"] == before[name]["State"]["StartedAt"]
    assert env.kind_calls("create", "cluster") == 1
    assert env.kind_calls("delete", "cluster") == 0


async def test_dry_run_on_a_missing_cluster_changes_nothing(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    r = await env.run(env.config(dry_run=True))
    await wait_for(lambda: r.sup.status()["dry_run_plans"], 20, "a dry-run plan")
    await wait_for(lambda: env.kind_calls("get", "clusters") >= 3, 20, "a few reconcile passes")
    st = r.sup.status()
    assert st["state"] == "absent"
    assert "would create" in st["reason"]
    assert [p["action"] for p in st["dry_run_plans"]] == ["create"]
    assert "cluster_dry_run" in r.event_kinds()
    assert cluster_containers(env.cluster) == []
    assert not env.kubeconfig.exists()
    assert not (env.tmp / "state" / "kind").exists()
    assert env.kind is not None
    assert {c[0] for c in env.kind.calls()} == {"get"}
    reg = inspect(env.registry)
    assert reg is not None and "kind" not in reg["NetworkSettings"]["Networks"]
    assert env.api.get(CONFIGMAPS, "kube-public", "local-registry-hosting") is None
    assert r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="create") == 0


async def test_dry_run_on_a_stopped_node_only_reports(env: ClusterEnv) -> None:
    env.setup()
    assert env.kind is not None
    made = subprocess.run(
        [str(env.kind.binary), "create", "cluster", "--name", env.cluster, "--config", str(env.tmp / "kind.yaml"),
         "--kubeconfig", str(env.kubeconfig)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    node = f"{env.cluster}-control-plane"
    docker("stop", "-t", "2", node)
    calls_before = len(env.kind.calls())
    r = await env.run(env.config(dry_run=True))
    await wait_for(lambda: r.sup.status()["dry_run_plans"], 20, "a dry-run plan")
    await wait_for(lambda: env.kind_calls("get", "clusters") >= 3, 20, "a few reconcile passes")
    st = r.sup.status()
    assert st["state"] == "degraded"
    assert st["dry_run_plans"][0]["action"] == "start"
    assert st["dry_run_plans"][0]["nodes"] == [node]
    info = inspect(node)
    assert info is not None and info["State"]["Status"] == "exited"
    assert {c[0] for c in env.kind.calls()[calls_before:]} == {"get"}


async def test_ingress_not_available_keeps_the_cluster_degraded_until_it_is(env: ClusterEnv) -> None:
    env.setup()
    env.start_registry()
    env.api.deployments_become_available = False
    r = await env.run(env.config(ready_timeout=1.0, check_interval=0.3))
    await wait_for(lambda: "wiring failed" in r.sup.status()["reason"], 30, "the wiring to fail")
    st = r.sup.status()
    assert st["state"] == "degraded"
    assert "ingress-nginx-controller" in st["reason"]
    assert st["api_ready"] is True
    env.api.make_available()
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    assert env.kind_calls("create", "cluster") == 1


async def test_ingress_gets_the_default_certificate_secret(env: ClusterEnv) -> None:
    """The Secret, read back from the API server, verifies for console.macula.local with the root;
    the controller runs with --default-ssl-certificate pointing at it."""
    import base64

    from maculad.pki.ca import load_or_create
    from maculad.pki.leaves import LeafStore
    from tests.support.fake_k8s import ResourceType

    ca, _ = load_or_create(env.tmp / "state" / "ca", "macula.local")
    store = LeafStore(ca=ca, directory=env.tmp / "state" / "ca" / "leaves")
    env.setup()
    env.start_registry()
    r = await env.run(env.config(), tls=store)
    await wait_for(lambda: r.sup.status()["state"] == "ready", 30, "the cluster to be ready")
    secret = env.api.get(ResourceType("", "v1", "secrets", "Secret", True), "ingress-nginx", "maculad-default-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    crt = env.tmp / "ingress.crt"
    crt.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    assert b"PRIVATE KEY" in base64.b64decode(secret["data"]["tls.key"])
    for name in ("console.macula.local", "macula.local"):
        v = subprocess.run(["openssl", "verify", "-CAfile", str(env.tmp / "state" / "ca" / "ca.pem"),
                            "-purpose", "sslserver", "-verify_hostname", name, str(crt)],
                           capture_output=True, text=True, check=False)
        assert v.returncode == 0, v.stdout + v.stderr
    v = subprocess.run(["openssl", "verify", "-CAfile", str(env.tmp / "state" / "ca" / "ca.pem"),
                        "-verify_hostname", "console.example.com", str(crt)], capture_output=True, text=True,
                       check=False)
    assert v.returncode != 0
    dep = env.api.get(DEPLOYMENTS, "ingress-nginx", "ingress-nginx-controller")
    assert dep is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "/nginx-ingress-controller"
    assert "--default-ssl-certificate=ingress-nginx/maculad-default-tls" in args
    paths = [q.path for q in env.api.requests if q.method == "PATCH"]
    assert paths.index("/api/v1/namespaces/ingress-nginx/secrets/maculad-default-tls") < paths.index(
        "/apis/apps/v1/namespaces/ingress-nginx/deployments/ingress-nginx-controller")
    assert "maculad-default-tls" in r.sup.status()["wiring"]["ingress_tls"]
