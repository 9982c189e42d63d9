"""kind cluster bring-up and repair: maculad's ClusterSupervisor vs the setup notes' shell procedure.

Both sides do the same work with the same tools, alternating, in one run:

* the stand-in `kind` (tests/support/fake_kind.py: real Docker containers from
  the busybox test image, as there is no kind binary or node image here) and
  the fake Kubernetes API server (tests/support/fake_k8s_cluster.py, real HTTP);
* bring-up = create the cluster, write containerd's hosts.toml into every
  node, connect the registry container to the `kind` network, server-side
  apply the KEP-1755 ConfigMap and a small ingress manifest, wait until its
  Deployment is available;
* repair = a node container is stopped (`docker stop`); the clock runs until
  the node runs again and `/readyz` answers through a freshly exported
  kubeconfig.

The "standard" side is kind's documented local-registry procedure as a bash
script: `kind create cluster`, `docker exec ... cp /dev/stdin hosts.toml`,
`docker network connect`, and `curl` PATCHes with `application/apply-patch+yaml`
standing in for `kubectl apply --server-side` (no kubectl here), then a curl
loop for availability; repair is `docker start` + `kind export kubeconfig` + a
`/readyz` loop, typed by a person who already knows what broke. maculad's
repair figure includes noticing the breakage (its check interval, here 0.2 s).

    .venv/bin/python benchmarks/cluster_bringup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maculad.supervise.cluster_wiring import hosts_toml, hosts_toml_path, registry_configmap
from maculad.adapters.kube.apply import builtin_resource, parse_manifest, resource_path
from tests.support.cluster_env import INGRESS_MANIFEST, ClusterEnv, docker, wait_for
from tests.support.fake_k8s_cluster import FakeClusterAPI

STANDARD_UP = r"""
set -euo pipefail
"$KIND" create cluster --name "$CLUSTER" --config "$KINDCFG" --kubeconfig "$KUBECONFIG" 2>/dev/null
DIR="$(dirname "$HOSTS_PATH")"
for node in $("$KIND" get nodes --name "$CLUSTER"); do
  docker exec "$node" mkdir -p "$DIR"
  docker exec -i "$node" cp /dev/stdin "$HOSTS_PATH" < "$HOSTS_FILE"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY")" = "null" ]; then
  docker network connect kind "$REGISTRY"
fi
for f in "$OBJDIR"/*.json; do
  curl -sf -X PATCH -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/apply-patch+yaml' \
    --data-binary @"$f" "$API$(cat "${f%.json}.path")?fieldManager=kubectl&force=true" >/dev/null
done
until curl -sf -H "Authorization: Bearer $TOKEN" "$API$DEPLOY_PATH" | grep -q '"Available", "status": "True"'; do
  sleep 0.05
done
"""

STANDARD_REPAIR = r"""
set -euo pipefail
docker start "$NODE" >/dev/null
"$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" 2>/dev/null
until curl -sf -H "Authorization: Bearer $TOKEN" "$API/readyz" >/dev/null; do sleep 0.05; done
"""


def prepare_objects(env: ClusterEnv, objdir: Path) -> tuple[dict[str, str], str]:
    objdir.mkdir(exist_ok=True)
    cfg = env.config()
    objs = [registry_configmap(cfg.kind.registry_host, cfg.kind.registry_endpoint),
            *parse_manifest(INGRESS_MANIFEST)]
    deploy_path = ""
    for i, o in enumerate(objs):
        res = builtin_resource(o["apiVersion"], o["kind"])
        assert res is not None
        path = resource_path(o, res)
        (objdir / f"{i:03d}.json").write_text(json.dumps(o))
        (objdir / f"{i:03d}.path").write_text(path)
        if o["kind"] == "Deployment":
            deploy_path = path
    hosts_file = objdir / "hosts.toml"
    hosts_file.write_text(hosts_toml(cfg.kind.registry_host, cfg.kind.registry_endpoint))
    assert env.kind is not None
    return {
        "KIND": str(env.kind.binary), "CLUSTER": env.cluster, "KINDCFG": str(env.tmp / "kind.yaml"),
        "KUBECONFIG": str(env.kubeconfig), "HOSTS_PATH": hosts_toml_path(cfg.kind.registry_host),
        "HOSTS_FILE": str(hosts_file), "REGISTRY": env.registry, "OBJDIR": str(objdir),
        "TOKEN": env.api.token or "", "API": env.api.url, "DEPLOY_PATH": deploy_path,
        "NODE": f"{env.cluster}-control-plane", "PATH": "/usr/local/bin:/usr/bin:/bin",
    }, deploy_path


def delete_cluster(env: ClusterEnv) -> None:
    assert env.kind is not None
    subprocess.run([str(env.kind.binary), "delete", "cluster", "--name", env.cluster, "--kubeconfig",
                    str(env.kubeconfig)], capture_output=True, check=True)
    docker("network", "disconnect", "kind", env.registry, check=False)


async def bash(script: str, envvars: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=envvars,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"standard script failed: {err.decode()}")
    return time.perf_counter() - t0


async def maculad_up(env: ClusterEnv) -> float:
    t0 = time.perf_counter()
    r = await env.run(env.config(check_interval=0.2))
    await wait_for(lambda: r.sup.status()["state"] == "ready", 60, "ready")
    dt = time.perf_counter() - t0
    await r.stop()
    env.running.remove(r)
    return dt


async def maculad_repair(env: ClusterEnv) -> float:
    r = await env.run(env.config(check_interval=0.2))
    await wait_for(lambda: r.sup.status()["state"] == "ready", 60, "ready")
    docker("stop", "-t", "2", f"{env.cluster}-control-plane")
    t0 = time.perf_counter()
    await wait_for(lambda: r.sample("maculad_cluster_actions_total", cluster=env.cluster, action="start") >= 1
                   and r.sup.status()["state"] == "ready", 60, "repaired")
    dt = time.perf_counter() - t0
    await r.stop()
    env.running.remove(r)
    return dt


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["sh", str(Path(__file__).resolve().parent.parent / "scripts" / "build-test-image.sh")],
                   check=True, capture_output=True)
    api = FakeClusterAPI()
    await api.start()
    with tempfile.TemporaryDirectory(prefix="bench-kind-") as tmp:
        env = ClusterEnv(tmp=Path(tmp), api=api)
        env.setup()
        env.start_registry()
        envvars, _ = prepare_objects(env, Path(tmp) / "objs")
        up: dict[str, list[float]] = {"maculad": [], "script": []}
        repair: dict[str, list[float]] = {"maculad": [], "script": []}
        try:
            for i in range(args.rounds):
                order = ("maculad", "script") if i % 2 == 0 else ("script", "maculad")
                for side in order:
                    if side == "maculad":
                        up[side].append(await maculad_up(env))
                    else:
                        up[side].append(await bash(STANDARD_UP, envvars))
                    delete_cluster(env)
                for side in order:
                    if side == "maculad":
                        repair[side].append(await maculad_repair(env))
                    else:
                        await bash(STANDARD_UP, envvars)
                        docker("stop", "-t", "2", envvars["NODE"])
                        repair[side].append(await bash(STANDARD_REPAIR, envvars))
                    delete_cluster(env)
        finally:
            await env.close()
            await api.stop()
    for title, data in (("bring-up (create + wire + ingress available)", up),
                        ("repair (stopped node → running, kubeconfig exported, /readyz ok)", repair)):
        m, s = statistics.median(data["maculad"]), statistics.median(data["script"])
        print(f"{title}, {args.rounds} rounds, alternating, median:")
        print(f"  maculad ClusterSupervisor : {m * 1000:8.0f} ms   (all: "
              f"{', '.join(f'{x * 1000:.0f}' for x in data['maculad'])})")
        print(f"  kind docs shell procedure : {s * 1000:8.0f} ms   (all: "
              f"{', '.join(f'{x * 1000:.0f}' for x in data['script'])})")
        print(f"  ratio maculad / script    : {m / s:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
