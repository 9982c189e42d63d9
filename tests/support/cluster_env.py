"""One kind-supervisor test's world: a unique cluster name, the stand-in `kind`, the fake
API server, a registry container, a kind config on free ports, and cleanup.

`ClusterEnv.config(...)` builds a real `Config` through `parse_config`; `run()`
starts a `ClusterSupervisor` on a real `TaskOwner` and the caller stops it.
Cleanup removes every container of the cluster and the registry container,
even when the test fails. The `kind` Docker network is left in place, as kind
itself leaves it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maculad.pki.leaves import LeafStore
from maculad.config import Config, parse_config
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.supervise.cluster import ClusterSupervisor
from maculad.app.daemon import CLUSTER_TASKS
from maculad.core.tasks import TaskOwner
from tests.conftest import require
from tests.support.fake_k8s_cluster import FakeClusterAPI
from tests.support.fake_kind import CLUSTER_LABEL, FakeKind, install_fake_kind

REPO = Path(__file__).resolve().parents[2]
IMAGE = "maculad-test/busybox:latest"

_image_built = False


def docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def require_docker_image() -> None:
    """Skip locally / fail under CI=true without an engine; build the busybox test image once."""
    global _image_built
    ok = shutil.which("docker") is not None and subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, timeout=20
    ).returncode == 0
    require(ok, "a running Docker engine (dockerd) is needed")
    if not _image_built:
        r = subprocess.run(["sh", str(REPO / "scripts" / "build-test-image.sh")], capture_output=True,
                           text=True, timeout=180)
        require(r.returncode == 0, f"the test image could not be built: {r.stderr.strip()}")
        _image_built = True


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inspect(name: str) -> dict[str, Any] | None:
    out = docker("inspect", name, check=False)
    if not out:
        return None
    doc = json.loads(out)
    return doc[0] if doc else None


def cluster_containers(cluster: str) -> list[str]:
    return sorted(docker("ps", "-a", "--filter", f"label={CLUSTER_LABEL}={cluster}",
                         "--format", "{{.Names}}").split())


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Running:
    sup: ClusterSupervisor
    owner: TaskOwner
    metrics: Metrics
    events: EventBus
    fatal: list[str]

    def sample(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def event_kinds(self) -> list[str]:
        return [e["kind"] for e in self.events.recent(500)]

    async def stop(self) -> None:
        await self.owner.stop_for(CLUSTER_TASKS)
        await self.sup.stop()


@dataclass
class ClusterEnv:
    tmp: Path
    api: FakeClusterAPI
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    kind: FakeKind | None = None
    ports: dict[str, int] = field(default_factory=dict)
    running: list[Running] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return f"mtest-{self.uid}"

    @property
    def registry(self) -> str:
        return f"mtest-{self.uid}-registry"

    @property
    def kubeconfig(self) -> Path:
        return self.tmp / "kube" / "config"

    @property
    def manifest(self) -> Path:
        return self.tmp / "ingress.yaml"

    def kind_calls(self, *command: str) -> int:
        """How many times the stand-in kind ran `command`."""
        assert self.kind is not None
        return self.kind.count(*command)

    def setup(self, *, workers: int = 0) -> None:
        self.kind = install_fake_kind(self.tmp / "bin", api_server=self.api.url, token=self.api.token,
                                      image=IMAGE)
        self.ports = {"http": free_port(), "https": free_port(), "quic": free_port(socket.SOCK_DGRAM)}
        cp = {
            "role": "control-plane",
            "extraPortMappings": [
                {"containerPort": 80, "hostPort": self.ports["http"], "listenAddress": "127.0.0.1",
                 "protocol": "TCP"},
                {"containerPort": 443, "hostPort": self.ports["https"], "listenAddress": "127.0.0.1",
                 "protocol": "TCP"},
                {"containerPort": 4433, "hostPort": self.ports["quic"], "listenAddress": "127.0.0.1",
                 "protocol": "UDP"},
            ],
        }
        doc = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
               "nodes": [cp] + [{"role": "worker"} for _ in range(workers)]}
        (self.tmp / "kind.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self.manifest.write_text(INGRESS_MANIFEST)

    def start_registry(self) -> str:
        return docker("run", "-d", "--name", self.registry, "-l", f"maculad.test={self.uid}",
                      IMAGE, "httpd", "-f", "-p", "5000", "-h", "/www")

    def config(self, **kind: Any) -> Config:
        data = {"state_dir": str(self.tmp / "state"), "kind": self.kind_section(**kind)}
        return parse_config(data, file=str(self.tmp / "maculad.toml"), base=self.tmp)

    def kind_section(self, **kind: Any) -> dict[str, Any]:
        """The `[kind]` table of this world (`kind` overrides keys): for `config()`, or as TOML
        for `maculad run`."""
        assert self.kind is not None
        section: dict[str, Any] = {
            "manage": True,
            "binary": str(self.kind.binary),
            "cluster": self.cluster,
            "config": str(self.tmp / "kind.yaml"),
            "kubeconfig": str(self.kubeconfig),
            "registry_container": self.registry,
            "registry_host": "registry.macula.test:5001",
            "registry_endpoint": f"http://{self.registry}:5000",
            "ingress_manifest": str(self.manifest),
            "check_interval": 0.3,
            "ready_timeout": 15.0,
            "backoff": {"initial": 0.1, "factor": 2.0, "cap": 1.0, "reset_after": 60.0,
                        "start_limit": 5, "start_limit_window": 600.0},
        }
        section.update(kind)
        return section

    async def run(self, cfg: Config, *, tls: LeafStore | None = None) -> Running:
        metrics = Metrics()
        events = EventBus()
        fatal: list[str] = []
        owner = TaskOwner(metrics=metrics, on_fatal=lambda name, exc: fatal.append(name))
        sup = ClusterSupervisor(config=cfg, metrics=metrics, events=events, tls=tls)
        await sup.start()
        owner.spawn_for(sup, CLUSTER_TASKS)
        r = Running(sup, owner, metrics, events, fatal)
        self.running.append(r)
        return r

    async def close(self) -> None:
        for r in self.running:
            await r.stop()
        names = cluster_containers(self.cluster)
        ids = docker("ps", "-aq", "--filter", f"label=maculad.test={self.uid}", check=False).split()
        if names or ids:
            docker("rm", "-f", "-v", *names, *ids, check=False)


@asynccontextmanager
async def open_env(tmp: Path) -> AsyncIterator[ClusterEnv]:
    """A `ClusterEnv` with a running fake API server; everything removed on exit."""
    require_docker_image()
    api = FakeClusterAPI()
    await api.start()
    env = ClusterEnv(tmp=tmp, api=api)
    try:
        yield env
    finally:
        await env.close()
        await api.stop()


INGRESS_MANIFEST = """\
# A small ingress controller stand-in: what maculad applies after every (re)creation.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
  labels: {app.kubernetes.io/name: ingress-nginx}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: ingress-nginx}
  template:
    metadata:
      labels: {app.kubernetes.io/name: ingress-nginx}
    spec:
      nodeSelector: {ingress-ready: "true"}
      containers:
        - name: controller
          image: registry.k8s.io/ingress-nginx/controller:v1.12.0
          args: [/nginx-ingress-controller, --election-id=ingress-nginx-leader, --watch-ingress-without-class=true]
          ports:
            - {containerPort: 80, hostPort: 80}
            - {containerPort: 443, hostPort: 443}
---
apiVersion: v1
kind: Service
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
spec:
  type: NodePort
  selector: {app.kubernetes.io/name: ingress-nginx}
  ports:
    - {name: http, port: 80, targetPort: 80}
    - {name: https, port: 443, targetPort: 443}
---
apiVersion: v1
kind: Namespace
metadata:
  name: ingress-nginx
"""
