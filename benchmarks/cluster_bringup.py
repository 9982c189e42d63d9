"""kind cluster bring-up and repair: maculad's ClusterSupervisor beside the setup notes' shell procedure.

What this measures, exactly: the time each side's *orchestration* takes around the same
stand-ins, alternating, in one run. It is not a kind bring-up time:

* the stand-in `kind` (tests/support/fake_kind.py: busybox containers from the test image,
  as there is no kind binary or node image here) makes a "node" in well under a second, and
  the fake Kubernetes API server (tests/support/fake_k8s_cluster.py, real HTTP) reports every
  Deployment Available the moment it is written. A real `kind create cluster` takes tens of
  seconds to minutes (node image, kubeadm, pods), which both sides would wait for alike, so
  real figures are those minutes plus roughly what is printed here;
* bring-up = create the cluster, write containerd's hosts.toml into every node, connect the
  registry container to the `kind` network, server-side apply the KEP-1755 ConfigMap and a
  small ingress manifest, wait until its Deployment is available. maculad: from starting the
  supervisor to its `cluster_state ready` event; script: the bash run;
* repair = a node container is stopped (`docker stop`) until the node runs again and
  `/readyz` answers through a freshly exported kubeconfig. The script is typed by a person
  who already knows what broke, so it starts at the fix. maculad first has to notice: that
  part is printed on its own ("notice": stop → its `start` action, up to `[kind]
  check_interval` — `--check-interval` here, default 0.2 s — plus the first restart
  backoff, 0.1 s here; with the shipped defaults up to 15 s + 5 s), and "fix" (its `start`
  action → `ready`) is the part comparable to the script.

No ratio is printed: the stand-ins make both sides' totals small and the comparison is of
orchestration overhead only.

The "standard" side is kind's documented local-registry procedure as a bash script: `kind
create cluster`, `docker exec ... cp /dev/stdin hosts.toml`, `docker network connect`, and
`curl` PATCHes with `application/apply-patch+yaml` standing in for `kubectl apply
--server-side` (no kubectl here), then a curl loop for availability; repair is `docker
start` + `kind export kubeconfig` + a `/readyz` loop.

    .venv/bin/python benchmarks/cluster_bringup.py [--rounds 5] [--check-interval 0.2]
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

from maculad.config import KindConfig
from maculad.supervise.cluster_wiring import hosts_toml, hosts_toml_path, registry_configmap
from maculad.adapters.kube.apply import builtin_resource, parse_manifest, resource_path
from tests.support.cluster_env import INGRESS_MANIFEST, ClusterEnv, Running, docker, wait_for
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


def event_time(r: Running, kind: str, after: float, **match: str) -> float | None:
    """The epoch time of the first `kind` event (with `match`ing fields) at or after `after`."""
    for e in r.events.recent(500):
        if e["kind"] == kind and e["time"] >= after and all(e.get(k) == v for k, v in match.items()):
            return float(e["time"])
    return None


async def maculad_up(env: ClusterEnv, interval: float) -> float:
    t0 = time.time()
    r = await env.run(env.config(check_interval=interval))
    await wait_for(lambda: event_time(r, "cluster_state", t0, state="ready"), 60, "ready")
    ready = event_time(r, "cluster_state", t0, state="ready")
    assert ready is not None
    await r.stop()
    env.running.remove(r)
    return ready - t0


async def maculad_repair(env: ClusterEnv, interval: float) -> tuple[float, float]:
    """(notice, fix): node stopped → maculad's start action → ready again."""
    r = await env.run(env.config(check_interval=interval))
    await wait_for(lambda: r.sup.status()["state"] == "ready", 60, "ready")
    docker("stop", "-t", "2", f"{env.cluster}-control-plane")
    t0 = time.time()
    await wait_for(lambda: (s := event_time(r, "cluster_action", t0, action="start")) is not None
                   and event_time(r, "cluster_state", s, state="ready"), 60, "repaired")
    started = event_time(r, "cluster_action", t0, action="start")
    assert started is not None
    ready = event_time(r, "cluster_state", started, state="ready")
    assert ready is not None
    await r.stop()
    env.running.remove(r)
    return started - t0, ready - started


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--check-interval", type=float, default=0.2,
                    help="maculad's [kind] check_interval (the shipped default is 15 s)")
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
        notice: list[float] = []
        fix: dict[str, list[float]] = {"maculad": [], "script": []}
        try:
            for i in range(args.rounds):
                order = ("maculad", "script") if i % 2 == 0 else ("script", "maculad")
                for side in order:
                    if side == "maculad":
                        up[side].append(await maculad_up(env, args.check_interval))
                    else:
                        up[side].append(await bash(STANDARD_UP, envvars))
                    delete_cluster(env)
                for side in order:
                    if side == "maculad":
                        n, f = await maculad_repair(env, args.check_interval)
                        notice.append(n)
                        fix[side].append(f)
                    else:
                        await bash(STANDARD_UP, envvars)
                        docker("stop", "-t", "2", envvars["NODE"])
                        fix[side].append(await bash(STANDARD_REPAIR, envvars))
                    delete_cluster(env)
        finally:
            await env.close()
            await api.stop()

    first_backoff = env.config().kind.backoff.initial
    default = KindConfig()

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:8.0f} ms   (all: {', '.join(f'{x * 1000:.0f}' for x in xs)})"

    print(f"Against the stand-in kind and fake API server (orchestration time only, see the docstring); "
          f"{args.rounds} rounds, alternating, medians; maculad's check_interval {args.check_interval:g} s")
    print("bring-up (create + wire + ingress available):")
    print(f"  maculad ClusterSupervisor : {ms(up['maculad'])}")
    print(f"  kind docs shell procedure : {ms(up['script'])}")
    print("repair, from knowing what broke (node start → kubeconfig exported → /readyz ok):")
    print(f"  maculad ClusterSupervisor : {ms(fix['maculad'])}")
    print(f"  kind docs shell procedure : {ms(fix['script'])}")
    print(f"noticing the stopped node, maculad only (stop → its start action): {ms(notice)}")
    print(f"  (up to check_interval {args.check_interval:g} s + the first restart backoff {first_backoff:g} s here; "
          f"with the shipped defaults up to {default.check_interval:g} s + {default.backoff.initial:g} s)")


if __name__ == "__main__":
    asyncio.run(main())
