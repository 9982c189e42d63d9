"""Service manager files checked by the real tools: systemd-analyze verify on the unit,
systemd-sysusers and systemd-tmpfiles into a temporary root, plistlib on the launchd plist,
and the Dockerfile's HEALTHCHECK command run against a real /healthz."""

from __future__ import annotations

import http.server
import json
import os
import plistlib
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "maculad.service"
MACULAD = ROOT / ".venv" / "bin" / "maculad"


def unit_entries(text: str) -> dict[str, list[str]]:
    """`Section.Key` → values, in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_unit_has_what_the_issue_asks() -> None:
    e = unit_entries(UNIT.read_text())
    one = {k: v[-1] for k, v in e.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"] == "30s"
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert one["Service.CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert one["Service.RuntimeDirectory"] == "maculad"
    assert one["Service.StateDirectory"] == "maculad"
    assert one["Service.ProtectSystem"] == "strict"
    assert one["Service.NoNewPrivileges"] == "yes"
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    # only macula: a group that does not exist fails the start (216/GROUP), and Docker is optional
    # (maculactl service install adds docker in a drop-in where the group exists)
    assert one["Service.SupplementaryGroups"] == "macula"
    assert one["Service.ExecStart"].split()[1:] == ["run", "--config", "/etc/maculad/maculad.toml"]
    assert one["Install.WantedBy"] == "multi-user.target"
    # the control socket lives in the RuntimeDirectory, as the default config says
    assert "/run/maculad/maculad.sock" in (ROOT / "config" / "maculad.toml").read_text()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    require(tool is not None, "systemd-analyze (apt-get install -y systemd)")
    require(MACULAD.exists(), "the maculad console script in .venv")
    assert tool is not None
    # verify checks that ExecStart's binary exists: point it at this checkout's maculad
    text = UNIT.read_text().replace("/usr/local/bin/maculad", str(MACULAD))
    unit = tmp_path / "maculad.service"
    unit.write_text(text)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    problems = [ln for ln in r.stderr.splitlines() if str(unit) in ln]
    assert not problems, problems


def _empty_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / f).write_text("")
    return root


def test_sysusers_and_tmpfiles_create_the_user_group_and_dirs(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    require(sysusers is not None and tmpfiles is not None, "systemd-sysusers/-tmpfiles (apt-get install systemd)")
    assert sysusers is not None and tmpfiles is not None
    root = _empty_root(tmp_path)
    r = subprocess.run([sysusers, f"--root={root}", str(ROOT / "systemd" / "maculad.sysusers.conf")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().splitlines()}
    assert users["maculad"][5] == "/var/lib/maculad"
    assert "maculad" in groups["macula"][3].split(",")
    r = subprocess.run([tmpfiles, f"--root={root}", "--create", str(ROOT / "systemd" / "maculad.tmpfiles.conf")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    uid = int(users["maculad"][2])
    for d, mode in (("run/maculad", 0o755), ("var/lib/maculad", 0o750)):
        st = os.stat(root / d)
        assert (st.st_uid, st.st_mode & 0o777) == (uid, mode)


def test_launchd_plist() -> None:
    with open(ROOT / "systemd" / "local.macula.maculad.plist", "rb") as f:
        p = plistlib.load(f)
    assert p["Label"] == "local.macula.maculad"
    assert p["RunAtLoad"] is True and p["KeepAlive"] is True
    assert p["ProgramArguments"][0].endswith("/maculad")
    assert p["ProgramArguments"][1:3] == ["run", "--config"]


# --------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    ins = dockerfile()
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    assert "/healthz" in (ROOT / "Dockerfile").read_text() and "CMD" in health
    assert [v for k, v in ins if k == "ENTRYPOINT"] == ['["maculad"]']
    assert "--network host" in (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"not ready\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("H", (_Health,), {"status": 200})
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, handler
    srv.shutdown()
    srv.server_close()


def test_the_healthcheck_command_really_checks_healthz(
        health_server: tuple[http.server.HTTPServer, type[_Health]]) -> None:
    srv, handler = health_server
    (health,) = [v for k, v in dockerfile() if k == "HEALTHCHECK"]
    argv = json.loads(health[health.index("CMD") + 3:].strip())
    argv[0] = sys.executable
    url = f"http://127.0.0.1:{srv.server_address[1]}/healthz"
    env = {**os.environ, "MACULAD_HEALTH_URL": url}
    assert subprocess.run(argv, env=env, timeout=30, check=False, capture_output=True).returncode == 0
    handler.status = 503
    assert subprocess.run(argv, env=env, timeout=30, check=False, capture_output=True).returncode != 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env["MACULAD_HEALTH_URL"] = f"http://127.0.0.1:{closed}/healthz"
    assert subprocess.run(argv, env=env, timeout=30, check=False, capture_output=True).returncode != 0
