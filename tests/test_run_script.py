"""`scripts/run.sh` in a copy of the checkout: the first run installs into .venv and links
maculactl into ~/.local/bin; the second run must not run pip at all (a `pip` that records being
called and fails replaces the venv's, and the package index is unreachable) and answers DNS. The
install leaves bytecode for every module (with PYTHONDONTWRITEBYTECODE set, only run.sh can have).

Both runs use their own config on free ports (`run.sh --config`), a private HOME, and stop the
daemon they started (run.sh execs maculad, so its pid is the daemon's).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.control_target import short_dir
from tests.support.daemon import ROOT, base_config

ARTIFACTS = ROOT / "tests" / "artifacts"
IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                "*.egg-info", "artifacts", "*.so")  # as a clean clone: the pump is built by run.sh


class Checkout:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.src = d / "src"
        self.home = d / "home"
        self.config = d / "maculad.toml"
        self.env: dict[str, str] = {}
        self.dns_port = 0


@pytest.fixture
def checkout() -> Iterator[Checkout]:
    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    require(base_python.exists(), f"a python3 to build the venv from ({base_python})")
    d = short_dir("mrun")
    c = Checkout(d)
    shutil.copytree(ROOT, c.src, ignore=IGNORE, symlinks=True)
    c.home.mkdir()
    text, ports = base_config(d, pool="127.0.12.0/24", extra='[web]\nenabled = false\n')
    c.config.write_text(text + '\n[[route]]\nname = "grafana"\nhttp = "127.0.0.1:3000"\n')
    c.dns_port = ports["dns"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "MACULAD_"))}
    env["HOME"] = str(c.home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # so the bytecode found afterwards is run.sh's own doing
    env["PATH"] = f"{base_python.parent}:/usr/local/bin:/usr/bin:/bin"
    cache = Path(os.path.expanduser("~/.cache/pip"))
    if cache.is_dir():
        env["PIP_CACHE_DIR"] = str(cache)  # the first install reuses this machine's wheels
    c.env = env
    try:
        yield c
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dig_answer(port: int) -> str:
    r = subprocess.run(["dig", "@127.0.0.153", "-p", str(port), "+short", "+time=1", "+tries=1",
                        "grafana.macula.local"], capture_output=True, text=True, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else ""  # dig prints "connection refused" to stdout


def run_until_dns(c: Checkout, env: dict[str, str], log: Path, timeout: float) -> tuple[str, float]:
    """Start run.sh, poll DNS until it answers; the answer and the seconds since the start. Stops it."""
    with log.open("wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(["bash", "scripts/run.sh", "--config", str(c.config)], cwd=c.src, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while time.monotonic() - t0 < timeout:
                if proc.poll() is not None:
                    raise AssertionError(f"run.sh exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                answer = dig_answer(c.dns_port)
                if answer:
                    return answer, time.monotonic() - t0
                time.sleep(0.02)
            raise AssertionError(f"no DNS answer within {timeout:g}s:\n{log.read_text()[-4000:]}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def test_run_sh_installs_once_links_maculactl_and_starts_without_the_network(checkout: Checkout) -> None:
    c = checkout
    first_log = c.dir / "first.log"
    answer, _ = run_until_dns(c, c.env, first_log, timeout=600)
    first = first_log.read_text()
    assert answer.startswith("127.0.12."), answer
    assert "run.sh: installing maculad into .venv" in first
    stamp = c.src / ".venv" / ".maculad-installed"
    inputs = ("pyproject.toml", "setup.py", "requirements.lock")
    digest = hashlib.sha256(b"".join((c.src / f).read_bytes() for f in inputs))
    assert stamp.read_text().strip() == digest.hexdigest()
    if sys.platform == "linux":  # the install built the relay's pump
        assert list((c.src / "maculad" / "proxy").glob("_pump.*.so")), first
    link = c.home / ".local" / "bin" / "maculactl"
    assert os.readlink(link) == str(c.src / ".venv" / "bin" / "maculactl")
    assert f"run.sh: linked {link} -> {c.src / '.venv' / 'bin' / 'maculactl'}" in first
    assert f'add it: export PATH="{link.parent}:$PATH"' in first  # ~/.local/bin is not on this PATH
    # every module compiled by the install, so no start compiles sources (Python may not write bytecode)
    tag = sys.implementation.cache_tag
    sources = sorted((c.src / "maculad").rglob("*.py"))
    missing = [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists()]
    assert sources and not missing, missing[:5]

    # the second start: no pip, no index; a pip that is called leaves a mark and fails
    marker = c.dir / "pip-was-called"
    for name in ("pip", "pip3"):
        fake = c.src / ".venv" / "bin" / name
        fake.unlink(missing_ok=True)
        fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        fake.chmod(0o755)
    stamp_before = (stamp.read_text(), stamp.stat().st_mtime_ns)
    offline = {**c.env, "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
               "PATH": f"{link.parent}:{c.env['PATH']}"}
    second_log = c.dir / "second.log"
    answer, seconds = run_until_dns(c, offline, second_log, timeout=60)
    second = second_log.read_text()
    assert answer.startswith("127.0.12."), answer
    assert not marker.exists(), second
    assert "run.sh: maculad is already installed in .venv" in second and "installing" not in second
    assert (stamp.read_text(), stamp.stat().st_mtime_ns) == stamp_before
    assert "linked" not in second and "not on your PATH" not in second  # the link is in place and on PATH
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "run-sh-start.json").write_text(json.dumps({"second_start_to_dns_answer_s": round(seconds, 3)}))
    print(f"run.sh (installed, offline): DNS answered {seconds:.3f}s after the start")
