"""A Docker engine restart under a running tier: reconnect, rebuild from a fresh list, start what stopped.

The engine is a private dockerd this test starts (tests/support/docker.py `PrivateDockerd`: its
own socket, data-root, exec-root, pid file and bridge); the tier is pointed at it through
`[docker] host`, and only that engine is stopped and started again. The machine's dockerd is
never touched; the `finally` brings the private engine back even when an assertion fails.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp

from maculad.core.net import Backend
from tests.support.docker import (
    DockerScope,
    Harness,
    PrivateDockerd,
    container_state,
    published,
    wait_for,
)


HTTPD = ("sh", "-c", "echo up > /www/index.html; exec httpd -f -p 8080 -h /www")


def unit(h: Harness, service: str) -> dict[str, Any]:
    return next((s for s in h.tier.services() if s["service"] == service), {})


async def test_engine_restart_under_a_running_tier(private_dockerd: PrivateDockerd, docker_scope: DockerScope,
                                                   make_tier) -> None:
    engine = private_dockerd
    scope = replace(docker_scope, host=engine.host)  # the same label, containers on the private engine
    h = await make_tier({"host": engine.host})
    assert h.tier.status()["endpoint"] == engine.host
    svc = scope.name("web")
    fqdn = f"web-{scope.uid}.macula.local"
    # no Docker restart policy: after the engine restarts, only maculad brings it back
    scope.run("web", "-p", "127.0.0.1:0:8080", labels={"macula.host": fqdn, "macula.http": "8080"}, cmd=HTTPD)
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to run")
    await wait_for(lambda: h.routes.current.lookup(fqdn) is not None, 10, "the route")
    first_start = container_state(svc, engine.host)["StartedAt"]
    try:
        engine.stop()
        await wait_for(lambda: not h.tier.inventory.connected, 20, "the tier to notice the engine left")
        st = h.tier.status()
        assert st["connected"] is False and st["reason"]
        assert h.metrics.registry.get_sample_value("maculad_docker_connected") == 0
        assert h.routes.current.lookup(fqdn) is not None  # last known routes stay while the engine is away
    finally:
        engine.start()
    await wait_for(lambda: h.tier.inventory.connected, 30, "the tier to reconnect")
    assert (h.metrics.registry.get_sample_value("maculad_docker_reconnects_total") or 0) >= 1
    await wait_for(lambda: (c := container_state(svc, engine.host)).get("Running") and c["StartedAt"] != first_start,
                   30, "maculad to start the container the engine restart stopped")
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to be running again")
    # the port is published anew after the restart: the route follows it, and it answers
    _, port = published(svc, "8080/tcp", engine.host)
    await wait_for(lambda: (r := h.routes.current.lookup(fqdn)) is not None
                   and r.backend_for("tcp", 80) == Backend("127.0.0.1", port), 10, "the route to follow the port")
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            try:
                async with s.get(f"http://127.0.0.1:{port}/index.html") as r:
                    if r.status == 200 and (await r.text()).strip() == "up":
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the restarted container's backend never answered")
    assert h.fatal == []
    assert all(t["restarts"] == 0 for t in h.owner.status()), h.owner.status()
