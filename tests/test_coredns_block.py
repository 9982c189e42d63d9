"""The CoreDNS block in kube-system/coredns: the pure edit, and the publisher against the fake API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from maculad.config import parse_config
from maculad.adapters.kube.client import KubeSession
from maculad.observability.metrics import Metrics
from maculad.publishers.coredns import BEGIN, END, CoreDNSPublisher, CorefileError, apply_block, block
from tests.support.fake_k8s import CONFIGMAPS, FakeKubeAPI

# kind's (kubeadm's) Corefile, with the odd byte a user might have added: tabs, a comment, no final block
KIND_COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
\t# a user's note
    cache 30
    loop
    reload
    loadbalance
}
"""

G = "172.17.0.1"
BLOCK = block("macula.local", G)


def test_the_block() -> None:
    assert BLOCK == ("# BEGIN maculad\nmacula.local:53 {\n    errors\n    cache 5\n    forward . 172.17.0.1\n}\n"
                     "# END maculad\n")


def test_add_replace_remove_leave_the_rest_byte_for_byte() -> None:
    added = apply_block(KIND_COREFILE, BLOCK)
    assert added == KIND_COREFILE + BLOCK
    assert apply_block(added, BLOCK) == added  # idempotent
    moved = apply_block(added, block("macula.local", "172.20.0.1"))
    assert moved == KIND_COREFILE + block("macula.local", "172.20.0.1")
    assert apply_block(added, None) == KIND_COREFILE
    assert apply_block(KIND_COREFILE, None) == KIND_COREFILE
    # a block someone moved to the top and edited: replaced where it stands
    top = BEGIN + "\nmacula.local:53 { forward . 10.0.0.1 }\n" + END + "\n" + KIND_COREFILE
    assert apply_block(top, BLOCK) == BLOCK + KIND_COREFILE
    assert apply_block(top, None) == KIND_COREFILE
    # no trailing newline: the block starts on its own line
    assert apply_block("x", BLOCK) == "x\n" + BLOCK


@pytest.mark.parametrize("corefile", [
    KIND_COREFILE + BEGIN + "\n",
    KIND_COREFILE + END + "\n" + BEGIN + "\n",
    KIND_COREFILE + BLOCK + BLOCK,
])
def test_broken_markers_are_left_alone(corefile: str) -> None:
    with pytest.raises(CorefileError):
        apply_block(corefile, BLOCK)


# --------------------------------------------------------------------------- against the fake API server


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def coredns_cm(corefile: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile, "other": "kept"}}


def publisher(tmp_path: Path, kube: FakeKubeAPI, *, enabled: bool = True,
              address: str | None = G) -> tuple[CoreDNSPublisher, Metrics]:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = parse_config({"state_dir": str(tmp_path / "state"),
                        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "context": ""},
                        "containers": {"enabled": enabled, "address": G}},
                       file=str(tmp_path / "maculad.toml"), base=tmp_path)
    metrics = Metrics()
    return CoreDNSPublisher(config=cfg, metrics=metrics, address=lambda: address), metrics


def corefile(kube: FakeKubeAPI) -> str:
    cm = kube.get(CONFIGMAPS, "kube-system", "coredns")
    assert cm is not None
    assert cm["data"]["other"] == "kept"
    return str(cm["data"]["Corefile"])


def puts(kube: FakeKubeAPI) -> int:
    return sum(1 for r in kube.requests if r.method == "PUT" and r.path.endswith("/configmaps/coredns"))


async def test_created_left_alone_put_back_removed(tmp_path: Path, kube: FakeKubeAPI) -> None:
    kube.create(CONFIGMAPS, coredns_cm(KIND_COREFILE))
    pub, metrics = publisher(tmp_path, kube)
    api = KubeSession.for_context(tmp_path / "kubeconfig", None)
    try:
        await pub.reconcile(api)
        assert corefile(kube) == KIND_COREFILE + BLOCK
        assert pub.status()["last_action"] == "add" and pub.status()["state"] == "applied"
        assert metrics.registry.get_sample_value("maculad_coredns_writes_total", {"action": "add"}) == 1
        assert metrics.registry.get_sample_value("maculad_coredns_block_applied") == 1

        rv = kube.get(CONFIGMAPS, "kube-system", "coredns")["metadata"]["resourceVersion"]  # type: ignore[index]
        for _ in range(3):
            await pub.reconcile(api)  # equal: left alone, no write, no new version
        assert puts(kube) == 1
        assert kube.get(CONFIGMAPS, "kube-system", "coredns")["metadata"]["resourceVersion"] == rv  # type: ignore[index]

        # someone edits the block away (or kubeadm rewrites the ConfigMap): put back
        kube.replace(CONFIGMAPS, coredns_cm(KIND_COREFILE))
        await pub.reconcile(api)
        assert corefile(kube) == KIND_COREFILE + BLOCK

        # the cluster is recreated: a fresh ConfigMap, the block comes back
        kube.delete(CONFIGMAPS, "kube-system", "coredns")
        await pub.reconcile(api)
        assert pub.status()["state"] == "no-configmap"
        kube.create(CONFIGMAPS, coredns_cm(KIND_COREFILE))
        await pub.reconcile(api)
        assert corefile(kube) == KIND_COREFILE + BLOCK

        # turned off: removed, everything else byte for byte as it was
        off, _ = publisher(tmp_path, kube, enabled=False)
        await off.reconcile(api)
        assert corefile(kube) == KIND_COREFILE
        assert off.status()["last_action"] == "remove"
        n = puts(kube)
        await off.reconcile(api)
        assert puts(kube) == n
    finally:
        await api.close()


async def test_unknown_address_and_broken_markers_write_nothing(tmp_path: Path, kube: FakeKubeAPI) -> None:
    kube.create(CONFIGMAPS, coredns_cm(KIND_COREFILE + BEGIN + "\n"))
    pub, metrics = publisher(tmp_path, kube)
    waiting, _ = publisher(tmp_path, kube, address=None)
    api = KubeSession.for_context(tmp_path / "kubeconfig", None)
    try:
        await waiting.reconcile(api)
        assert waiting.status()["state"] == "waiting"
        await pub.reconcile(api)
        assert pub.status()["state"] == "conflict" and "fix it by hand" in pub.status()["last_error"]
        assert corefile(kube) == KIND_COREFILE + BEGIN + "\n"
        assert puts(kube) == 0
        assert metrics.registry.get_sample_value("maculad_coredns_block_applied") == 0
    finally:
        await api.close()


async def test_the_loop_keeps_the_block(tmp_path: Path, kube: FakeKubeAPI) -> None:
    from maculad.app.daemon import COREDNS_TASKS
    from maculad.core.tasks import TaskOwner
    from tests.support.proxy import wait_for

    kube.create(CONFIGMAPS, coredns_cm(KIND_COREFILE))
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = parse_config({"state_dir": str(tmp_path / "state"),
                        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "context": ""},
                        "containers": {"enabled": True, "address": G, "coredns_interval": 0.1}},
                       file=str(tmp_path / "maculad.toml"), base=tmp_path)
    metrics = Metrics()
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: None)
    pub = CoreDNSPublisher(config=cfg, metrics=metrics, address=lambda: G)
    await pub.start()
    owner.spawn_for(pub, COREDNS_TASKS)
    try:
        await wait_for(lambda: corefile(kube) == KIND_COREFILE + BLOCK, 10, "the block")
        kube.replace(CONFIGMAPS, coredns_cm(KIND_COREFILE))
        await wait_for(lambda: corefile(kube) == KIND_COREFILE + BLOCK, 10, "the block put back")
    finally:
        await owner.stop_for(COREDNS_TASKS)
        await pub.stop()
