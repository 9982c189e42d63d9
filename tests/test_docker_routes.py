"""Docker labels → routes → clean URL, against the real engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from maculad.config import parse_config
from maculad.app.docker_tier import DockerTier
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.routes.manager import RouteTableManager
from maculad.core.net import Backend
from maculad.routes.store import AllocationStore
from maculad.app.daemon import DOCKER_TASKS
from maculad.core.tasks import TaskOwner
from tests.support.docker import (
    DockerScope,
    docker_cli,
    published,
    wait_for,
)


HTTPD = ("sh", "-c", "echo hello-$HOSTNAME > /www/index.html; exec httpd -f -p 8080 -h /www")


async def http_get(host: str, port: int, name: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/index.html", headers={"Host": name},
                                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.text()


async def test_labelled_container_gets_a_route_that_answers(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    name = f"web-{docker_scope.uid}"
    docker_scope.run("web", "-p", "127.0.0.1::8080", "--hostname", "webhost",
                     labels={"macula.host": name, "macula.http": "8080", "macula.tcp.7000": "8080"}, cmd=HTTPD)
    fqdn = f"{name}.macula.local"
    await wait_for(lambda: h.routes.current.lookup(fqdn) is not None, 10, "the route to appear")
    route = h.routes.current.lookup(fqdn)
    assert route is not None
    assert route.source == "docker" and route.origin == f"docker:{docker_scope.name('web')}"
    assert route.service == docker_scope.name("web")
    assert route.ip.startswith("127.0.10.")
    _, port = published(docker_scope.name("web"), "8080/tcp")
    assert route.backend_for("tcp", 80) == Backend("127.0.0.1", port)
    assert route.backend_for("tcp", 7000) == Backend("127.0.0.1", port)
    # the clean URL's backend serves the container's page (the relay dials exactly this backend)
    backend = route.backend_for("tcp", 80)
    assert backend is not None

    async def answers() -> bool:
        try:
            status, body = await http_get(backend.host, backend.port, fqdn)
        except aiohttp.ClientError:
            return False
        return status == 200 and body.strip() == "hello-webhost"

    deadline = asyncio.get_running_loop().time() + 10
    while not await answers():
        assert asyncio.get_running_loop().time() < deadline, "the backend never answered"
        await asyncio.sleep(0.1)

    docker_cli("rm", "-f", docker_scope.name("web"))
    await wait_for(lambda: h.routes.current.lookup(fqdn) is None, 10, "the route to leave")
    assert h.fatal == []


async def test_label_change_moves_the_route(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    a, b = f"a-{docker_scope.uid}.macula.local", f"b-{docker_scope.uid}.macula.local"
    docker_scope.run("v1", "-p", "127.0.0.1::8080", labels={"macula.host": a, "macula.http": "8080"}, cmd=HTTPD)
    await wait_for(lambda: h.routes.current.lookup(a) is not None, 10, "the first route")
    # recreate the container with another name label (what `compose up` does on a label change)
    docker_cli("rm", "-f", docker_scope.name("v1"))
    docker_scope.run("v2", "-p", "127.0.0.1:0:8080", "-p", "127.0.0.1::8443",
                     labels={"macula.host": b, "macula.http": "8080", "macula.https": "8443",
                             "macula.ip": "127.0.10.200"}, cmd=HTTPD)
    await wait_for(lambda: h.routes.current.lookup(b) is not None and h.routes.current.lookup(a) is None, 10,
                   "the route to move to the new name")
    route = h.routes.current.lookup(b)
    assert route is not None and route.ip == "127.0.10.200"
    _, tls_port = published(docker_scope.name("v2"), "8443/tcp")
    assert route.backend_for("tcp", 443) == Backend("127.0.0.1", tls_port)


async def test_bad_labels_give_no_route_and_a_reason(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    good = f"good-{docker_scope.uid}.macula.local"
    docker_scope.run("bad1", "-p", "127.0.0.1::8080", labels={"macula.host": "bad name", "macula.http": "8080"},
                     cmd=HTTPD)
    docker_scope.run("bad2", labels={"macula.host": f"x-{docker_scope.uid}", "macula.http": "8080"}, cmd=HTTPD)
    docker_scope.run("good", "-p", "127.0.0.1::8080", labels={"macula.host": good, "macula.http": "8080"},
                     cmd=HTTPD)
    await wait_for(lambda: h.routes.current.lookup(good) is not None, 10, "the good route")
    await wait_for(lambda: len(h.tier.status()["provider"]["label_errors"]) == 2, 10, "both label errors")
    errors = {e["container"]: e["error"] for e in h.tier.status()["provider"]["label_errors"]}
    assert "macula.host" in errors[docker_scope.name("bad1")]
    assert "8080/tcp is not published" in errors[docker_scope.name("bad2")]
    assert [r.name for r in h.routes.current.routes if r.source == "docker"] == [good]
    assert h.fatal == []


async def test_no_engine_keeps_running_and_says_why(tmp_path: Path) -> None:
    cfg = parse_config({"state_dir": str(tmp_path), "docker": {"enabled": True,
                                                                "host": f"unix://{tmp_path}/nope.sock"}},
                       file="t.toml", base=tmp_path)
    metrics = Metrics()
    routes = RouteTableManager(domain=cfg.domain, pool=cfg.proxy.pool, store=AllocationStore(state_dir=tmp_path),
                               metrics=metrics)
    fatal: list[str] = []
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: fatal.append(n))
    tier = DockerTier(config=cfg, routes=routes, metrics=metrics, events=EventBus())
    with capture_logs() as logs:
        owner.spawn_for(tier, DOCKER_TASKS)
        try:
            await wait_for(lambda: tier.status()["reason"] and "nope.sock" in tier.status()["reason"], 10,
                           "the reason in status")
            # the inventory tried again (and failed) three times more: this is what survived those retries
            await wait_for(lambda: sum(e["event"] == "docker_unavailable" for e in logs) >= 4, 10,
                           "three more failed attempts")
            st = tier.status()
            assert st["connected"] is False
            assert all(t["running"] for t in owner.status())  # nothing died: the inventory retries
            assert all(t["restarts"] == 0 for t in owner.status())
            assert metrics.registry.get_sample_value("maculad_docker_connected") == 0
            assert tier.services() == []
            assert fatal == []
        finally:
            await owner.stop_for(DOCKER_TASKS)
            await tier.stop()
