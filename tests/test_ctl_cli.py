"""The real `maculactl` console script against the control server running in this process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from maculad.config import ControlConfig
from maculad.control.server import ControlServer
from maculad.observability.metrics import Metrics
from maculad.core.tasks import TaskOwner
from tests.conftest import require
from tests.support.control_target import TableTarget, python_for_others, short_dir, write_config

MACULACTL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "maculactl"
REPO = Path(__file__).resolve().parent.parent

ROUTES = """
[[route]]
name = "grafana"
ip = "127.0.0.2"
http = "127.0.0.1:3000"
service = "grafana"

[[route]]
name = "postgres"
ip = "127.0.0.6"
tcp = { 5432 = "127.0.0.6:15432" }
"""
MORE = """
[[route]]
name = "loki"
ip = "127.0.0.3"
http = "127.0.0.3:3100"
"""


class Env:
    def __init__(self, d: Path, server: ControlServer, target: TableTarget) -> None:
        self.dir = d
        self.server = server
        self.target = target
        self.socket = str(d / "maculad.sock")
        self.config = d / "maculad.toml"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    require(MACULACTL.exists(), f"{MACULACTL} is installed (pip install -e .)")
    d = short_dir()
    cfg = d / "maculad.toml"
    write_config(cfg, dns_port=5353, routes=ROUTES, extra="[docker]\nenabled = true\n",
                 socket=str(d / "maculad.sock"))
    target = TableTarget(config_path=cfg, services={"grafana": "running", "loki": "backoff"})
    metrics = Metrics()
    server = ControlServer(config=ControlConfig(socket=d / "maculad.sock"), target=target, metrics=metrics)
    await server.start(TaskOwner(metrics=metrics, on_fatal=lambda n, e: None))
    yield Env(d, server, target)
    await server.stop()
    shutil.rmtree(d)


async def ctl(*args: str, socket_path: str | None = None, env: dict[str, str] | None = None,
              user: int | None = None, argv0: list[str] | None = None) -> tuple[int, str, str]:
    cmd = [*(argv0 or [str(MACULACTL)])]
    if socket_path:
        cmd += ["--socket", socket_path]
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})}, user=user, group=user, extra_groups=[] if user else None,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ctl_json(*args: str, socket_path: str) -> Any:
    rc, out, err = await ctl(*args, "--json", socket_path=socket_path)
    assert rc == 0, err
    return json.loads(out)


async def test_status_table_and_json(env: Env) -> None:
    rc, out, err = await ctl("status", socket_path=env.socket)
    assert (rc, err) == (0, "")
    assert "domain:" in out and "macula.local" in out and "127.0.0.153:5353" in out
    assert "components:" in out
    data = await ctl_json("status", socket_path=env.socket)
    assert data["domain"] == "macula.local" and data["pid"] == os.getpid()


async def test_global_options_work_before_the_command_too(env: Env) -> None:
    rc, out, _ = await ctl("--json", "--socket", env.socket, "routes")
    assert rc == 0 and json.loads(out)["routes"]
    rc, out, _ = await ctl("routes", env={"MACULAD_SOCKET": env.socket})
    assert rc == 0 and "grafana.macula.local" in out


async def test_routes_table_and_json(env: Env) -> None:
    rc, out, _ = await ctl("routes", socket_path=env.socket)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "IP", "SOURCE", "PORTS", "SERVICE"]
    row = next(ln for ln in lines if ln.startswith("grafana.macula.local"))
    assert row.split() == ["grafana.macula.local", "127.0.0.2", "config", "tcp/8080→127.0.0.1:3000", "grafana"]
    data = await ctl_json("routes", socket_path=env.socket)
    assert {r["name"]: r["ip"] for r in data["routes"]} == {"grafana.macula.local": "127.0.0.2",
                                                          "postgres.macula.local": "127.0.0.6"}


async def test_services_and_actions(env: Env) -> None:
    rc, out, _ = await ctl("services", socket_path=env.socket)
    assert rc == 0
    assert out.splitlines()[0].split() == ["SERVICE", "STATE", "UP", "HEALTH", "RESTARTS", "BACKOFF", "POLICY", "LAST",
                                           "ERROR"]
    loki = next(ln for ln in out.splitlines() if ln.startswith("loki"))
    assert loki.split()[:7] == ["loki", "backoff", "no", "-", "0", "2s", "always"]
    rc, out, err = await ctl("restart", "grafana", socket_path=env.socket)
    assert rc == 0, err
    assert env.target.restarts["grafana"] == 1
    data = await ctl_json("stop", "loki", socket_path=env.socket)
    assert data == {"ok": True, "service": "loki", "action": "stop"}
    assert env.target.services_state["loki"] == "stopped"
    rc, out, err = await ctl("restart", "nope", socket_path=env.socket)
    assert rc == 1 and out == ""
    assert err == "maculactl: no supervised service named 'nope' (HTTP 404)\n"


async def test_cluster_when_kind_is_off(env: Env) -> None:
    rc, _, err = await ctl("cluster", "status", socket_path=env.socket)
    assert rc == 1 and "kind cluster management is off" in err and len(err.splitlines()) == 1


async def test_dns(env: Env) -> None:
    rc, out, _ = await ctl("dns", "grafana.macula.local", socket_path=env.socket)
    assert rc == 0 and "127.0.0.2" in out and "config:grafana.macula.local" in out
    data = await ctl_json("dns", "nothing.macula.local", socket_path=env.socket)
    assert data["rcode"] == "NXDOMAIN"
    rc, _, err = await ctl("dns", "bad name!", socket_path=env.socket)
    assert rc == 1 and "not a valid DNS name" in err


async def test_reload_good_and_broken_config(env: Env) -> None:
    env.config.write_text(env.config.read_text() + MORE)
    data = await ctl_json("reload", socket_path=env.socket)
    assert data == {"ok": True, "changed": ["routes"]}
    assert env.target.table.lookup("loki.macula.local") is not None
    good_version = env.target.table.version
    env.config.write_text(env.config.read_text() + '\n[proxy.oops]\nx = 1\n')
    rc, out, err = await ctl("reload", socket_path=env.socket)
    assert rc == 1 and out == ""
    assert "config refused, nothing changed" in err and "maculad.toml" in err and len(err.splitlines()) == 1
    assert env.target.table.version == good_version
    assert env.target.table.lookup("loki.macula.local") is not None


async def test_events_history_and_follow(env: Env) -> None:
    env.target.bus.publish("route_added", name="a.macula.local")
    rc, out, _ = await ctl("events", socket_path=env.socket)
    assert rc == 0 and "route_added name=a.macula.local" in out
    proc = await asyncio.create_subprocess_exec(
        str(MACULACTL), "--socket", env.socket, "events", "--follow", "--json", stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while not env.target.bus._subs:  # the subscriber exists once the stream is open
            await asyncio.sleep(0.02)
        env.target.bus.publish("service_restart", service="grafana")
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert json.loads(line)["service"] == "grafana"
    finally:
        proc.terminate()
        await proc.wait()


async def test_daemon_not_running_is_exit_3_with_one_line() -> None:
    d = short_dir()
    try:
        rc, out, err = await ctl("status", socket_path=str(d / "missing.sock"))
        assert (rc, out) == (3, "")
        assert err == (f"maculactl: maculad is not running: no control socket at {d / 'missing.sock'} (--socket); "
                       "point maculactl at its socket with --socket PATH, MACULAD_SOCKET=PATH or --config FILE\n")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "stale.sock"))
        stale.close()
        rc, _, err = await ctl("routes", "--json", socket_path=str(d / "stale.sock"))
        assert rc == 3 and "stale socket" in err and len(err.splitlines()) == 1
        rc, _, err = await ctl("hosts", socket_path=str(d / "missing.sock"))
        assert rc == 3 and "pass --config FILE" in err and "Traceback" not in err
    finally:
        shutil.rmtree(d)


async def test_usage_errors_are_exit_2(env: Env) -> None:
    rc, _, err = await ctl("frobnicate", socket_path=env.socket)
    assert rc == 2 and "invalid choice" in err
    rc, _, _ = await ctl("restart", socket_path=env.socket)
    assert rc == 2


async def test_socket_not_accessible_is_exit_3(env: Env) -> None:
    require(os.geteuid() == 0, "needs root to run maculactl as another user")
    python = python_for_others()
    require(python is not None, "needs a python3 that uid 65534 can execute")
    assert python is not None
    # uid 65534 may not be able to read the checkout (CI clones into a 0700 mktemp dir): give it a
    # world-readable copy of the package, so the test depends only on the socket's permissions
    pkg = Path(tempfile.mkdtemp(prefix="maculactl-other-"))
    try:
        shutil.copytree(REPO / "maculad", pkg / "maculad", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [pkg, *pkg.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        rc, out, err = await ctl("status", socket_path=env.socket, user=65534,
                                 env={"PYTHONPATH": str(pkg)},
                                 argv0=[python, "-c", "from maculad.ctl.main import main; main()"])
    finally:
        shutil.rmtree(pkg)
    assert (rc, out) == (3, "")
    assert err.startswith(f"maculactl: cannot open {env.socket}: permission denied; join its group")
    assert len(err.splitlines()) == 1


async def test_doctor_reports_through_the_socket(env: Env) -> None:
    rc, out, _ = await ctl("doctor", "--json", socket_path=env.socket)
    data = json.loads(out)
    checks = {(f["check"], f["level"]) for f in data["findings"]}
    assert ("daemon", "ok") in checks
    # nothing serves DNS on 127.0.0.153:5353 in this test: the doctor must say so and fail
    assert ("dns", "fail") in checks and rc == 1 and data["ok"] is False
    rc, out, _ = await ctl("doctor", socket_path=env.socket)
    assert "[ ok ] daemon" in out and "[FAIL] dns" in out and "fix:" in out
