"""A Docker engine restart under a running tier: reconnect, rebuild from a fresh list, start what stopped.

The test stops the machine's dockerd (by its pid file) and starts it again the
way the CI does; the `finally` brings it back even when an assertion fails.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from maculad.core.net import Backend
from tests.support.docker import (
    DockerScope,
    Harness,
    container_state,
    dockerd_pid,
    published,
    start_dockerd,
    stop_dockerd,
    wait_for,
)


HTTPD = ("sh", "-c", "echo up > /www/index.html; exec httpd -f -p 8080 -h /www")


def unit(h: Harness, service: str) -> dict[str, Any]:
    return next((s for s in h.tier.services() if s["service"] == service), {})


async def test_engine_restart_under_a_running_tier(docker_scope: DockerScope, make_tier) -> None:
    require_pid = dockerd_pid()
    assert require_pid is not None, "dockerd must run with /var/run/docker.pid"
    h = await make_tier()
    svc = docker_scope.name("web")
    fqdn = f"web-{docker_scope.uid}.macula.local"
    # no Docker restart policy: after the engine restarts, only maculad brings it back
    docker_scope.run("web", "-p", "127.0.0.1:0:8080",
                     labels={"macula.host": fqdn, "macula.http": "8080"}, cmd=HTTPD)
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to run")
    await wait_for(lambda: h.routes.current.lookup(fqdn) is not None, 10, "the route")
    first_start = container_state(svc)["StartedAt"]
    try:
        stop_dockerd()
        await wait_for(lambda: not h.tier.inventory.connected, 20, "the tier to notice the engine left")
        st = h.tier.status()
        assert st["connected"] is False and st["reason"]
        assert h.metrics.registry.get_sample_value("maculad_docker_connected") == 0
        assert h.routes.current.lookup(fqdn) is not None  # last known routes stay while the engine is away
    finally:
        start_dockerd()
    await wait_for(lambda: h.tier.inventory.connected, 30, "the tier to reconnect")
    assert (h.metrics.registry.get_sample_value("maculad_docker_reconnects_total") or 0) >= 1
    await wait_for(lambda: container_state(svc).get("Running") and container_state(svc)["StartedAt"] != first_start,
                   30, "maculad to start the container the engine restart stopped")
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to be running again")
    # the port is published anew after the restart: the route follows it, and it answers
    _, port = published(svc, "8080/tcp")
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
