"""Supervision of real containers: restart policies, crash loops, health, maculactl stop/start/restart."""

from __future__ import annotations

import pytest

from tests.support.docker import (
    DockerScope,
    Harness,
    container_state,
    docker_cli,
    wait_for,
)


SLEEP = ("sleep", "100000")


def unit(h: Harness, service: str) -> dict[str, object]:
    for s in h.tier.services():
        if s["service"] == service:
            return s
    return {}


def restarts(h: Harness, service: str, reason: str) -> float:
    v = h.metrics.registry.get_sample_value("maculad_service_restarts_total",
                                            {"service": service, "reason": reason})
    return v or 0.0


async def test_kill_is_restarted_under_always(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    svc = docker_scope.name("always")
    docker_scope.run("always", labels={"macula.restart": "always"}, cmd=SLEEP)
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to run")
    first = container_state(svc)["StartedAt"]
    assert h.metrics.registry.get_sample_value("maculad_service_up", {"service": svc, "tier": "docker"}) == 1

    docker_cli("kill", svc)
    await wait_for(lambda: container_state(svc).get("Running") and container_state(svc)["StartedAt"] != first,
                   15, "maculad to restart the killed container")
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to be running again")
    assert restarts(h, svc, "killed") == 1
    kinds = [e["kind"] for e in h.events.recent() if e.get("service") == svc]
    assert "service_restart" in kinds
    assert h.metrics.registry.get_sample_value("maculad_service_state", {"service": svc, "state": "running"}) == 1


async def test_no_and_user_stop_are_respected(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    no, us = docker_scope.name("no"), docker_scope.name("us")
    docker_scope.run("no", labels={"macula.restart": "no"}, cmd=("sh", "-c", "sleep 1; exit 4"))
    docker_scope.run("us", labels={"macula.restart": "unless-stopped"}, cmd=SLEEP)
    await wait_for(lambda: unit(h, us).get("state") == "running", 10, "unless-stopped to run")
    await wait_for(lambda: unit(h, no).get("state") == "failed", 15, "`no` to end in failed")
    assert "restart policy is no" in str(unit(h, no)["reason"])
    assert unit(h, no)["exit_code"] == 4

    docker_cli("stop", us)  # a person stops it on purpose
    await wait_for(lambda: unit(h, us).get("state") == "stopped", 15, "the user stop to be seen")
    assert "stopped by user" in str(unit(h, us)["reason"])
    # Nothing is pending for either of them: no restart is scheduled or in flight.
    await wait_for(lambda: h.tier.supervisor.status()["actions_running"] == 0, 5, "no action in flight")
    for name in (no, us):
        assert not container_state(name)["Running"]
        assert unit(h, name)["pending"] is None
    assert restarts(h, no, "exited") == 0 and restarts(h, us, "killed") == 0


async def test_crash_loop_backs_off_then_gives_up(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()  # start_limit 4 within 60 s, backoff 0.2 → 1.0
    svc = docker_scope.name("crash")
    docker_scope.run("crash", labels={"macula.restart": "always"}, cmd=("sh", "-c", "exit 3"))
    await wait_for(lambda: unit(h, svc).get("state") == "failed", 30, "the crash loop to give up")
    u = unit(h, svc)
    assert "start limit" in str(u["reason"]) and "exited with code 3" in str(u["reason"])
    assert u["restarts"] == 4
    delays = [e for e in h.events.recent() if e.get("service") == svc and e["kind"] == "service_state"
              and e["state"] == "backoff"]
    reasons = [str(e["reason"]) for e in delays]
    assert [r.split("restarting in ")[1] for r in reasons] == ["0.2s", "0.4s", "0.8s", "1s"]
    assert any(e["kind"] == "service_gave_up" and e.get("service") == svc for e in h.events.recent())
    assert h.metrics.registry.get_sample_value("maculad_service_state", {"service": svc, "state": "failed"}) == 1
    assert not h.tier.is_restarting(svc)
    # a person asks again: the give-up is cleared and it is started (and gives up again, visibly)
    await h.tier.supervisor.start_service(svc)
    await wait_for(lambda: unit(h, svc).get("restarts", 0) >= 5, 10, "the manual start")


async def test_on_failure_retry_count(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    svc = docker_scope.name("of")
    docker_scope.run("of", labels={"macula.restart": "on-failure:2"}, cmd=("sh", "-c", "exit 9"))
    await wait_for(lambda: unit(h, svc).get("state") == "failed", 20, "on-failure:2 to give up")
    assert unit(h, svc)["restarts"] == 2
    assert "on-failure:2" in str(unit(h, svc)["reason"])


async def test_unhealthy_is_restarted(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    svc = docker_scope.name("sick")
    # The first run never becomes healthy; the run after a restart does.
    docker_scope.run(
        "sick", "--health-cmd", "test -f /healthy", "--health-interval", "1s", "--health-retries", "1",
        "--health-timeout", "1s", labels={"macula.restart": "unless-stopped"},
        cmd=("sh", "-c", "if [ -f /ran ]; then touch /healthy; fi; touch /ran; exec sleep 100000"),
    )
    first = container_state(svc)["StartedAt"]
    await wait_for(lambda: restarts(h, svc, "unhealthy") >= 1, 20, "the unhealthy restart")
    await wait_for(lambda: container_state(svc).get("Health", {}).get("Status") == "healthy", 20,
                   "the restarted container to be healthy")
    assert container_state(svc)["StartedAt"] != first
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to be running")
    assert restarts(h, svc, "unhealthy") == 1


async def test_maculactl_stop_start_restart(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    svc = docker_scope.name("ctl")
    docker_scope.run("ctl", labels={"macula.restart": "always"}, cmd=SLEEP)
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "the service to run")
    sup = h.tier.supervisor

    out = await sup.stop_service(svc)
    assert out[0]["state"] == "stopped"
    assert not container_state(svc)["Running"]
    await wait_for(lambda: h.tier.supervisor.status()["actions_running"] == 0, 5, "no action in flight")
    assert unit(h, svc)["state"] == "stopped" and unit(h, svc)["pending"] is None  # held, even under always
    assert not h.tier.is_restarting(svc)

    await sup.start_service(svc)
    await wait_for(lambda: container_state(svc).get("Running"), 10, "the start")
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "running")

    before = container_state(svc)["StartedAt"]
    await sup.restart_service(svc)
    await wait_for(lambda: container_state(svc)["StartedAt"] != before and container_state(svc)["Running"], 15,
                   "the restart")
    await wait_for(lambda: unit(h, svc).get("state") == "running", 10, "running after restart")
    assert restarts(h, svc, "manual") == 2

    with pytest.raises(KeyError, match="no supervised Docker service"):
        await sup.stop_service("no-such-service")
    with pytest.raises(ValueError):
        await sup.restart_service("")


async def test_config_policy_wins_over_label(docker_scope: DockerScope, make_tier) -> None:
    svc = docker_scope.name("cfg")
    h = await make_tier({"services": {svc: {"restart": "no"}}})
    docker_scope.run("cfg", labels={"macula.restart": "always"}, cmd=("sh", "-c", "sleep 1; exit 2"))
    await wait_for(lambda: unit(h, svc).get("state") == "failed", 15, "the config policy (no) to apply")
    u = unit(h, svc)
    assert u["policy"] == "no" and u["policy_source"] == "config"


async def test_bad_restart_label_is_shown_not_supervised(docker_scope: DockerScope, make_tier) -> None:
    h = await make_tier()
    svc = docker_scope.name("badpol")
    docker_scope.run("badpol", labels={"macula.restart": "sometimes"}, cmd=("sh", "-c", "sleep 1; exit 1"))
    await wait_for(lambda: bool(unit(h, svc)), 10, "the service to be listed")
    u = unit(h, svc)
    assert u["state"] == "failed" and "sometimes" in str(u["error"])
    with pytest.raises(ValueError, match="not supervised"):
        await h.tier.supervisor.restart_service(svc)
