"""Helpers for the Docker tier's tests against the real engine.

Every test gets its own label (`maculad.test=<uuid>`): the tier under test
only sees containers carrying it, and cleanup removes every container with it
(and every compose project the test named), even when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from maculad.config import Config, parse_config
from maculad.app.docker_tier import DockerTier
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.routes.store import AllocationStore
from maculad.app.daemon import DOCKER_TASKS
from maculad.core.tasks import TaskOwner
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
IMAGE = "maculad-test/busybox:latest"
SOCKET = Path("/var/run/docker.sock")
VENV_BIN = REPO / ".venv" / "bin"


def docker_cli(*args: str, check: bool = True, timeout: float = 60, host: str | None = None) -> str:
    """The `docker` CLI against the machine's engine, or the one at `host` (`unix://...`)."""
    r = subprocess.run(["docker", *(["-H", host] if host else []), *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              timeout=10).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


_image_ready = False


def require_docker() -> None:
    """Skip locally / fail under CI when there is no engine; build the test image once."""
    global _image_ready
    require(engine_answers(), "a running Docker engine (dockerd) is needed")
    if not _image_ready:
        r = subprocess.run([str(REPO / "scripts" / "build-test-image.sh")], capture_output=True, text=True,
                           timeout=120)
        require(r.returncode == 0, f"the test image could not be built: {r.stderr.strip()}")
        _image_ready = True


def compose_binary() -> str | None:
    cand = VENV_BIN / "docker-compose"
    if cand.exists():
        return str(cand)
    return shutil.which("docker-compose")


@dataclass
class DockerScope:
    """One test's containers: a unique label, run helpers and cleanup."""

    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    projects: list[tuple[str, Path]] = field(default_factory=list)
    host: str | None = None  # another engine than the machine's (`PrivateDockerd.host`)

    @property
    def label(self) -> str:
        return f"maculad.test={self.uid}"

    def name(self, what: str) -> str:
        return f"mtest-{self.uid}-{what}"

    def run(self, what: str, *args: str, labels: dict[str, str] | None = None, cmd: tuple[str, ...] = (),
            detach: bool = True) -> str:
        """`docker run -d --name mtest-<uid>-<what> -l maculad.test=<uid> [labels] ARGS IMAGE CMD`."""
        argv = ["run"] + (["-d"] if detach else []) + ["--name", self.name(what), "-l", self.label,
                                                       "--stop-timeout", "1"]
        for k, v in (labels or {}).items():
            argv += ["-l", f"{k}={v}"]
        argv += [*args, IMAGE, *cmd]
        return docker_cli(*argv, host=self.host)

    def cleanup(self) -> None:
        for project, file in self.projects:
            exe = compose_binary()
            if exe:
                # by project name when the test removed its file already: the network is not left behind
                where = ["-f", str(file)] if file.exists() else []
                subprocess.run([exe, "-p", project, *where, "down", "-t", "1", "--remove-orphans"],
                               capture_output=True, timeout=120)
        ids = docker_cli("ps", "-aq", "--filter", f"label={self.label}", check=False, host=self.host).split()
        if ids:
            docker_cli("rm", "-f", "-v", *ids, check=False, host=self.host)


@pytest.fixture
def docker_scope() -> Iterator[DockerScope]:
    require_docker()
    scope = DockerScope()
    try:
        yield scope
    finally:
        scope.cleanup()


def test_config(tmp_path: Path, docker: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {
        "domain": "macula.local",
        "state_dir": str(tmp_path / "state"),
        "proxy": {"pool": "127.0.10.0/24"},
        "docker": {
            "enabled": True,
            "compose_project": "macula",
            "backoff": {"initial": 0.2, "factor": 2.0, "cap": 1.0, "reset_after": 5.0, "start_limit": 4,
                        "start_limit_window": 60.0},
            **(docker or {}),
        },
    }
    return parse_config(data, file=str(tmp_path / "maculad.toml"), base=tmp_path)


@dataclass
class Harness:
    tier: DockerTier
    routes: RouteTableManager
    metrics: Metrics
    events: EventBus
    owner: TaskOwner
    fatal: list[str]


@pytest.fixture
async def make_tier(tmp_path: Path, docker_scope: DockerScope) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def make(docker: dict[str, Any] | None = None) -> Harness:
        cfg = test_config(tmp_path, docker)
        metrics = Metrics()
        events = EventBus()
        routes = RouteTableManager(domain=cfg.domain, pool=cfg.proxy.pool,
                                   store=AllocationStore(state_dir=cfg.state_dir), metrics=metrics)
        fatal: list[str] = []
        owner = TaskOwner(metrics=metrics, on_fatal=lambda name, exc: fatal.append(name))
        tier = DockerTier(config=cfg, routes=routes, metrics=metrics, events=events,
                           labels=[docker_scope.label])
        owner.spawn_for(tier, DOCKER_TASKS)
        h = Harness(tier, routes, metrics, events, owner, fatal)
        made.append(h)
        await wait_for(lambda: tier.inventory.connected, 20, "the inventory to connect")
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.owner.stop_for(DOCKER_TASKS)
            await h.tier.stop()


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def container_state(name: str, host: str | None = None) -> dict[str, Any]:
    import json

    out = docker_cli("inspect", name, check=False, host=host)
    if not out:
        return {}
    doc = json.loads(out)
    return doc[0]["State"] if doc else {}


def published(name: str, port: str, host: str | None = None) -> tuple[str, int]:
    out = docker_cli("port", name, port, host=host).splitlines()[0]
    host, _, p = out.rpartition(":")
    return host, int(p)


# --------------------------------------------------------------------------- a private engine


class PrivateDockerd:
    """A dockerd of the test's own, to stop and start under a running tier.

    Everything it owns is its own: the API socket, `--data-root`, `--exec-root` (and with it the
    containerd it starts), `--pidfile` and an empty `--config-file` under a short temporary
    directory, and a bridge device of its own (`--bridge`, a free 10.213.N.0/24) instead of
    docker0. It writes no iptables rules (`--iptables=false`): published ports go through the
    userland proxy, and the machine's engine keeps its chains. `stop` and `start` signal only
    this process; the machine's dockerd is never touched. Needs root (the bridge, dockerd).
    """

    def __init__(self) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="mdk", dir="/tmp"))  # unix socket paths are short
        self.bridge = f"mdk{uuid.uuid4().hex[:8]}"
        self.host = f"unix://{self.dir}/docker.sock"
        self.pidfile = self.dir / "docker.pid"
        self.log = self.dir / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.gateway = ""

    def setup(self, image: str = IMAGE) -> PrivateDockerd:
        """Make the bridge, start the engine, load `image` from the machine's engine into it."""
        require(os.geteuid() == 0 and shutil.which("dockerd") is not None and shutil.which("ip") is not None,
                "a private dockerd needs root, dockerd and ip")
        used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        n = next(n for n in range(77, 255) if f"10.213.{n}." not in used)
        self.gateway = f"10.213.{n}.1"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, capture_output=True)
        subprocess.run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge], check=True,
                       capture_output=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
        (self.dir / "daemon.json").write_text("{}\n")
        self.start()
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", self.host, "load"], stdin=save.stdout, capture_output=True,
                              text=True, timeout=120)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(60) != 0 or load.returncode != 0:
            raise RuntimeError(f"could not load {image} into the private engine: {load.stderr.strip()}")
        return self

    def answers(self) -> bool:
        try:
            return subprocess.run(["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"],
                                  capture_output=True, timeout=10).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def start(self, timeout: float = 60) -> None:
        """Start this engine (again) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "the private dockerd runs already"
        argv = ["dockerd", "--host", self.host, "--data-root", str(self.dir / "data"),
                "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.pidfile),
                "--config-file", str(self.dir / "daemon.json"), "--bridge", self.bridge,
                "--iptables=false", "--ip6tables=false", "--ip-forward=false"]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the private dockerd exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not answer within {timeout:g}s:\n{self.logs()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM this engine (the process it started, which wrote `pidfile`) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        assert int(self.pidfile.read_text().strip()) == self.proc.pid
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"the private dockerd did not exit within {timeout:g}s") from None

    def close(self) -> None:
        """Remove its containers, stop it, delete its bridge and directory."""
        if self.proc is not None and self.proc.poll() is None:
            ids = docker_cli("ps", "-aq", check=False, host=self.host).split()
            if ids:
                docker_cli("rm", "-f", "-v", *ids, check=False, host=self.host)
            self.stop()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    require_docker()  # the test image is built on the machine's engine, then loaded into this one
    engine = PrivateDockerd()
    try:
        yield engine.setup()
    finally:
        engine.close()
