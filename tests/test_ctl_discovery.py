"""How `maculactl` finds the daemon: the pure candidate order and the one-line "nothing answers"
message, then the real console script against a real `maculad run` through each way of pointing it
(--socket with `~`, MACULAD_SOCKET, --config FILE), and the exit codes when nothing answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maculad.config import load_config
from maculad.ctl import discovery
from maculad.ctl.discovery import Candidate, DaemonUnavailable, candidates, locate, unreachable
from tests.support.control_target import short_dir
from tests.support.daemon import ROOT, Maculad, base_config

MACULACTL = Path(sys.executable).parent / "maculactl"
HINT = "point maculactl at its socket with --socket PATH, MACULAD_SOCKET=PATH or --config FILE"


def home(p: str) -> str:
    return p.replace("~", "/home/ada", 1) if p.startswith("~") else p


def cands(**kw: object) -> list[tuple[str, str]]:
    args: dict[str, object] = {"socket_opt": None, "config_socket": None, "config_file": None, "env": {},
                               "euid": 1000, "expand": home}
    args.update(kw)
    return [(c.path, c.origin) for c in candidates(**args)]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pure


def test_an_explicit_socket_is_the_only_one_tried_and_flags_beat_the_environment() -> None:
    env = {"MACULAD_SOCKET": "~/env.sock"}
    assert cands(socket_opt="~/s.sock", env=env) == [("/home/ada/s.sock", "--socket")]
    assert cands(config_socket="/run/x.sock", config_file="my.toml", env=env) == [
        ("/run/x.sock", "control.socket of my.toml")]
    assert cands(env=env) == [("/home/ada/env.sock", "MACULAD_SOCKET")]
    assert cands(env={"MACULAD_SOCKET": ""}) == cands()


def test_defaults_for_a_user_then_the_system_and_for_root_the_system_first() -> None:
    assert cands() == [("/home/ada/.local/state/maculad/maculad.sock", "as in config/maculad-user.toml"),
                       ("/run/maculad/maculad.sock", "system default")]
    # root: the system daemon first, then the one scripts/run.sh started as root
    assert cands(euid=0) == [("/run/maculad/maculad.sock", "system default"),
                             ("/home/ada/.local/state/maculad/maculad.sock", "as in config/maculad-user.toml")]


def test_the_user_default_is_what_config_maculad_user_toml_says() -> None:
    cfg = load_config(ROOT / "config" / "maculad-user.toml")
    assert str(cfg.control.socket) == os.path.expanduser(discovery.USER_SOCKET)
    assert discovery.SYSTEM_SOCKET == str(load_config(ROOT / "config" / "maculad.toml").control.socket)


def test_the_not_running_line_names_every_path_and_how_to_point_elsewhere() -> None:
    a = Candidate("/home/ada/.local/state/maculad/maculad.sock", "as in config/maculad-user.toml")
    b = Candidate("/run/maculad/maculad.sock", "system default")
    msg = unreachable([(a, "missing"), (b, "stale")])
    assert msg == ("maculad is not running: tried /home/ada/.local/state/maculad/maculad.sock "
                   "(as in config/maculad-user.toml): no socket, /run/maculad/maculad.sock (system default): "
                   f"a stale socket nobody answers on; {HINT}")
    assert "\n" not in msg
    assert unreachable([(b, "missing")]) == f"maculad is not running: no control socket at {b.shown()}; {HINT}"


def test_a_socket_that_may_not_be_opened_is_a_permission_problem() -> None:
    a = Candidate("/home/ada/x.sock", "as in config/maculad-user.toml")
    b = Candidate("/run/maculad/maculad.sock", "system default")
    msg = unreachable([(a, "missing"), (b, "denied")], hint=lambda p: "; join its group macula, or use sudo")
    assert msg == ("cannot open /run/maculad/maculad.sock: permission denied; join its group macula, or use sudo "
                   "(also tried /home/ada/x.sock: no socket)")


def test_locate_takes_the_first_that_answers() -> None:
    found = [Candidate("/a", "x"), Candidate("/b", "y"), Candidate("/c", "z")]
    answers = {"/a": "missing", "/b": "answers", "/c": "answers"}
    assert locate(found, check=lambda p: answers[p]) == "/b"  # type: ignore[arg-type,return-value]
    with pytest.raises(DaemonUnavailable, match=r"tried /a \(x\): no socket, /b \(y\): no socket"):
        locate(found[:2], check=lambda p: "missing")


def test_probe_tells_missing_stale_and_not_a_socket_apart() -> None:
    d = short_dir()
    try:
        assert discovery.probe(str(d / "none.sock")) == "missing"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "stale.sock"))
        stale.close()
        assert discovery.probe(str(d / "stale.sock")) == "stale"
        (d / "file").write_text("")
        assert discovery.probe(str(d / "file")) == "not a socket"
        live = socket.socket(socket.AF_UNIX)
        live.bind(str(d / "live.sock"))
        live.listen(1)
        assert discovery.probe(str(d / "live.sock")) == "answers"
        live.close()
    finally:
        shutil.rmtree(d)


# --------------------------------------------------------------------------- the real daemon


class Running:
    def __init__(self, d: Path, cfg: Path) -> None:
        self.dir = d
        self.config = cfg
        self.socket = d / "maculad.sock"


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    d = short_dir("mdisc")
    text, ports = base_config(d)
    cfg = d / "maculad.toml"
    cfg.write_text(text)
    m = Maculad(cfg, log=d / "maculad.log").start()
    try:
        m.wait_ready(ports["metrics"])
        yield Running(d, cfg)
    finally:
        m.stop()
        shutil.rmtree(d, ignore_errors=True)


def ctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MACULAD_SOCKET"}
    return subprocess.run([str(MACULACTL), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=cwd)


def pid_of(r: subprocess.CompletedProcess[str]) -> int:
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["pid"])


def test_socket_with_a_tilde_is_expanded(running: Running) -> None:
    r = ctl("status", "--json", "--socket", "~/maculad.sock", env={"HOME": str(running.dir)})
    assert json.loads(r.stdout)["control_socket"] == str(running.socket)
    assert pid_of(r) > 0


def test_maculad_socket_from_the_environment_with_a_tilde(running: Running) -> None:
    r = ctl("routes", "--json", env={"MACULAD_SOCKET": "~/maculad.sock", "HOME": str(running.dir)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["domain"] == "macula.local"


def test_config_file_gives_the_socket_even_over_the_environment(running: Running, tmp_path: Path) -> None:
    r = ctl("status", "--json", "--config", str(running.config), env={"MACULAD_SOCKET": str(tmp_path / "no.sock")})
    assert pid_of(r) == pid_of(ctl("status", "--json", "--socket", str(running.socket)))
    # a config whose socket is relative to the config's own directory, as the schema reads it
    rel = running.dir / "rel.toml"
    rel.write_text(f'state_dir = "{running.dir / "state"}"\n[control]\nsocket = "maculad.sock"\n')
    assert pid_of(ctl("status", "--json", "--config", str(rel), cwd=tmp_path)) > 0


def test_nothing_answers_is_exit_3_with_one_line_naming_the_paths(tmp_path: Path) -> None:
    r = ctl("status", env={"MACULAD_SOCKET": str(tmp_path / "gone.sock")})
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == (f"maculactl: maculad is not running: no control socket at {tmp_path / 'gone.sock'} "
                        f"(MACULAD_SOCKET); {HINT}\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path}"\n[control]\nsocket = "{tmp_path / "c.sock"}"\n')
    r = ctl("routes", "--config", str(cfg))
    assert r.returncode == 3 and f"{tmp_path / 'c.sock'} (control.socket of {cfg})" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    r = ctl("status", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 3 and "missing.toml" in r.stderr and len(r.stderr.splitlines()) == 1


def test_usage_errors_are_exit_2() -> None:
    r = ctl("status", "--frobnicate")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = ctl("dns")
    assert r.returncode == 2


def test_maculactl_starts_without_the_daemons_dependencies() -> None:
    code = ("import sys; import maculad.ctl.main\n"
            "heavy = {'aiohttp', 'h11', 'uvloop', 'kubernetes_asyncio', 'cryptography', 'structlog', 'dnslib'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"
