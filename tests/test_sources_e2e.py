"""`maculad run` with its sources on, end to end: the real daemon in a subprocess, real dig,
real HTTP through its relay, the real `maculactl`.

* Kubernetes: `[kubernetes]` watches the fake API server (tests/support/fake_k8s.py) through
  a real kubeconfig; an Ingress created there resolves and answers through the relay, and
  leaves when it is deleted.
* kind: `[kind] manage = true` with the stand-in `kind` (tests/support/fake_kind.py, real
  Docker containers) and the fake cluster API; the daemon creates the cluster, `maculactl
  cluster status` shows it ready, a restarted daemon adopts it (no second create), and the
  Ingress watch on the kubeconfig the daemon wrote routes the cluster's Ingresses.

The fake API servers run on this test's event loop, so every blocking call (the daemon's
readiness, dig, HTTP, maculactl) runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_env import ClusterEnv, cluster_containers, open_env
from tests.support.daemon import Maculad, TaggedHTTP, base_config, dig, http_get, maculactl
from tests.support.fake_k8s import FakeKubeAPI


async def until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll a blocking `pred` (in a thread) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await asyncio.to_thread(pred)
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def start(tmp: Path, extra: str) -> tuple[Maculad, dict[str, int]]:
    text, ports = base_config(tmp, extra=extra)
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp / "maculad.log").start()
    try:
        await asyncio.to_thread(d.wait_ready, ports["metrics"])
    except BaseException:
        d.stop()
        raise
    return d, ports


def status_json(tmp: Path) -> dict[str, Any]:
    rc, out, err = maculactl(tmp, "status", "--json")
    assert rc == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def routed(ports: dict[str, int], name: str, tag: str) -> str:
    """Wait until `name` resolves and HTTP to its address through the relay answers `tag`; the IP."""
    ip = str(await until(lambda: dig(ports["dns"], name), f"{name} to resolve"))
    assert re.fullmatch(r"127\.0\.10\.\d+", ip), ip

    def answer() -> str | None:
        try:
            code, body = http_get(f"http://{ip}:{ports['http']}/", timeout=3)
        except OSError:
            return None
        return body if code == 200 else None

    assert await until(answer, f"HTTP through the relay at {ip}") == f"{tag}\n"
    return ip


# --------------------------------------------------------------------------- Kubernetes


async def test_kubernetes_ingress_resolves_and_answers_through_the_relay(tmp_path: Path) -> None:
    async with FakeKubeAPI(bookmark_interval=0.5) as fake:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        with TaggedHTTP("ingress-controller") as backend:
            d, ports = await start(tmp_path, f"""
[kubernetes]
enabled = true
kubeconfig = "{kubeconfig}"
context = "fake"
ingress_http = "127.0.0.1:{backend.port}"
""")
            try:
                await until(lambda: status_json(tmp_path)["components"]["kubernetes"]["connected"],
                            "the Ingress watch to connect")
                comp = (await asyncio.to_thread(status_json, tmp_path))["components"]["kubernetes"]
                assert comp["last_error"] is None and comp["synced"] is True
                fake.create_ingress("apps", "console", ["console.macula.local", "peer1.macula.local"])
                ip = await routed(ports, "console.macula.local", "ingress-controller")
                peer = await routed(ports, "peer1.macula.local", "ingress-controller")
                assert peer != ip  # one loopback IP per name
                rc, out, err = await asyncio.to_thread(maculactl, tmp_path, "routes", "--json")
                assert rc == 0, err
                origins = {r["name"]: r["origin"] for r in json.loads(out)["routes"]}
                assert origins["console.macula.local"] == "kubernetes:apps/console"

                fake.set_ingress_hosts("apps", "console", ["console.macula.local"])
                await until(lambda: dig(ports["dns"], "peer1.macula.local") == "", "peer1 to leave")
                assert await asyncio.to_thread(dig, ports["dns"], "console.macula.local") == ip
                fake.delete_ingress("apps", "console")
                await until(lambda: dig(ports["dns"], "console.macula.local") == "", "console to leave")
                comp = (await asyncio.to_thread(status_json, tmp_path))["components"]["kubernetes"]
                assert comp["connected"] is True and comp["ingresses"] == 0 and comp["relists"] == 1
            finally:
                assert d.stop() == 0, d.logs()


# --------------------------------------------------------------------------- kind


def kind_toml(env: ClusterEnv) -> str:
    """The `[kind]` table `ClusterEnv.config()` uses, as TOML for `maculad run`."""
    section = env.kind_section()
    backoff = section.pop("backoff")
    lines = ["[kind]", *(f"{k} = {json.dumps(v)}" for k, v in section.items()),
             "backoff = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in backoff.items()) + " }"]
    return "\n".join(lines) + "\n"


def cluster_status(tmp: Path) -> tuple[int, str, str]:
    return maculactl(tmp, "cluster", "status")


@pytest.mark.docker
async def test_kind_cluster_is_created_then_adopted_and_its_ingresses_route(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        env.setup()
        env.start_registry()
        assert cluster_containers(env.cluster) == []
        with TaggedHTTP("kind-ingress") as backend:
            extra = kind_toml(env) + f"""
[kubernetes]
enabled = true
kubeconfig = "{env.kubeconfig}"
context = "kind-{env.cluster}"
ingress_http = "127.0.0.1:{backend.port}"
"""
            d, ports = await start(tmp_path, extra)
            try:
                await until(lambda: re.search(r"^state: +ready$", cluster_status(tmp_path)[1], re.M),
                            "maculactl cluster status to say ready", timeout=60)
                rc, out, err = await asyncio.to_thread(cluster_status, tmp_path)
                assert rc == 0, err
                assert re.search(rf"^cluster: +{env.cluster}$", out, re.M), out
                assert re.search(r"^wired: +yes$", out, re.M), out
                assert re.search(rf"^  {env.cluster}-control-plane +control-plane +running", out, re.M), out
                assert re.search(r"^  reason: +create: cluster \S+ does not exist$", out, re.M), out
                assert cluster_containers(env.cluster) == [f"{env.cluster}-control-plane"]
                assert env.kind_calls("create", "cluster") == 1
                # the daemon wrote the kubeconfig; its own Ingress watch follows the cluster
                env.api.create_ingress("default", "app", ["app.macula.local"])
                await routed(ports, "app.macula.local", "kind-ingress")
            finally:
                assert d.stop() == 0, d.logs()

            # a second daemon finds the cluster running: adopted, not created again
            (tmp_path / "maculad.log").rename(tmp_path / "maculad-1.log")
            d, ports = await start(tmp_path, extra)
            try:
                await until(lambda: re.search(r"^state: +ready$", cluster_status(tmp_path)[1], re.M),
                            "the restarted daemon to find the cluster ready", timeout=60)
                st = (await asyncio.to_thread(status_json, tmp_path))["components"]["kind"]
                assert st["cluster"] == env.cluster and st["recreations"] == 0
                assert env.kind_calls("create", "cluster") == 1
                assert env.kind_calls("delete", "cluster") == 0
                assert cluster_containers(env.cluster) == [f"{env.cluster}-control-plane"]
                await routed(ports, "app.macula.local", "kind-ingress")
            finally:
                assert d.stop() == 0, d.logs()
