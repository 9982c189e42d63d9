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
from maculad.core.tasks import TaskOwner
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
IMAGE = "maculad-test/busybox:latest"
SOCKET = Path("/var/run/docker.sock")
VENV_BIN = REPO / ".venv" / "bin"


def docker_cli(*args: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
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
        return docker_cli(*argv)

    def cleanup(self) -> None:
        for project, file in self.projects:
            exe = compose_binary()
            if exe:
                subprocess.run([exe, "-p", project, "-f", str(file), "down", "-t", "1", "--remove-orphans"],
                               capture_output=True, timeout=120)
        ids = docker_cli("ps", "-aq", "--filter", f"label={self.label}", check=False).split()
        if ids:
            docker_cli("rm", "-f", "-v", *ids, check=False)


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
        await tier.start(owner)
        h = Harness(tier, routes, metrics, events, owner, fatal)
        made.append(h)
        await wait_for(lambda: tier.inventory.connected, 20, "the inventory to connect")
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.tier.stop()
            await h.owner.stop_stage("sources")


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def container_state(name: str) -> dict[str, Any]:
    import json

    out = docker_cli("inspect", name, check=False)
    if not out:
        return {}
    doc = json.loads(out)
    return doc[0]["State"] if doc else {}


def published(name: str, port: str) -> tuple[str, int]:
    out = docker_cli("port", name, port).splitlines()[0]
    host, _, p = out.rpartition(":")
    return host, int(p)


# --------------------------------------------------------------------------- dockerd restarts

DOCKERD_LOG = Path("/tmp/dockerd.log")
PIDFILE = Path("/var/run/docker.pid")


def dockerd_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def stop_dockerd(timeout: float = 60) -> None:
    """Stop the engine by its pid file (SIGTERM) and wait for it to exit."""
    import signal

    pid = dockerd_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"dockerd ({pid}) did not exit within {timeout:g}s")


def start_dockerd(timeout: float = 60) -> None:
    """Start dockerd the way the CI does (`dockerd > /tmp/dockerd.log 2>&1 &`) and wait for the socket."""
    if dockerd_pid() is None:
        with DOCKERD_LOG.open("ab") as fh:
            subprocess.Popen(["dockerd"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(0.2)
    raise RuntimeError(f"dockerd did not answer within {timeout:g}s (see {DOCKERD_LOG})")
