"""`check-config` refuses what `run` would, short of binding, and names the right key.

The host checks (maculad/app/preflight.py) are table-tested with the host's facts given; the real
facts (an address of no interface, a group that does not exist, a name that does not resolve, a
state_dir below a regular file) through `maculad check-config` and `maculad run` as subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maculad.app.preflight import HostFacts, local_problem, problems, state_dir_problem
from maculad.config import parse_config

NO_GROUP = "maculad-test-no-such-group"


def facts(*, foreign: frozenset[str] = frozenset(), unknown: frozenset[str] = frozenset(),
          groups: frozenset[str] = frozenset({"macula"}), state: str | None = None) -> HostFacts:
    return HostFacts(local=lambda ip: "no interface has it" if ip in foreign else None,
                     group=lambda g: None if g in groups else f"group {g!r} does not exist",
                     resolve=lambda h: "Name or service not known" if h in unknown else None,
                     state_dir=lambda p: state)


CASES = [
    ("", facts(), []),
    ('[dns]\nlisten = ["127.0.0.153:53", "192.0.2.1:53"]', facts(foreign=frozenset({"192.0.2.1"})),
     [("dns.listen[1]", "192.0.2.1 is not an address of this host (no interface has it)")]),
    ('[metrics]\nlisten = "10.9.9.9:9469"', facts(foreign=frozenset({"10.9.9.9"})),
     [("metrics.listen", "10.9.9.9 is not an address of this host (no interface has it)")]),
    ('[web]\nlisten = "10.9.9.9:80"', facts(foreign=frozenset({"10.9.9.9"})),
     [("web.listen", "10.9.9.9 is not an address of this host (no interface has it)")]),
    ('[control]\ngroup = "macula"', facts(), []),
    (f'[control]\ngroup = "{NO_GROUP}"', facts(), [("control.group", f"group {NO_GROUP!r} does not exist")]),
    ('[[route]]\nname = "a"\nhttp = "backend.invalid:80"\ntcp = { 5432 = "db.invalid:5432" }',
     facts(unknown=frozenset({"backend.invalid", "db.invalid"})),
     [("route[0].http", "backend host 'backend.invalid' does not resolve (Name or service not known)"),
      ("route[0].tcp.5432", "backend host 'db.invalid' does not resolve (Name or service not known)")]),
    ('[[route]]\nname = "a"\nhttp = "localhost:80"\nhttps = "127.0.0.1:443"', facts(), []),
    ("", facts(state="/srv/file (above /srv/file/state) is not a directory"),
     [("state_dir", "/srv/file (above /srv/file/state) is not a directory")]),
]


@pytest.mark.parametrize(("text", "host", "expected"), CASES)
def test_host_problems(tmp_path: Path, text: str, host: HostFacts, expected: list[tuple[str, str]]) -> None:
    import tomllib

    cfg = parse_config(tomllib.loads(text), file="maculad.toml", base=tmp_path)
    assert problems(cfg, host) == expected


def test_real_host_facts(tmp_path: Path) -> None:
    assert local_problem("127.0.0.77") is None and local_problem("::1") is None
    assert local_problem("0.0.0.0") is None
    assert local_problem("192.0.2.1") == "no interface has it"  # TEST-NET-1: no interface has it
    assert state_dir_problem(tmp_path / "new" / "state") is None
    (tmp_path / "file").write_text("x")
    assert state_dir_problem(tmp_path / "file" / "state") == \
        f"{tmp_path / 'file'} (above {tmp_path / 'file' / 'state'}) is not a directory"
    assert state_dir_problem(tmp_path / "file") == f"{tmp_path / 'file'} is not a directory"
    (tmp_path / "s" / "allocations.json").mkdir(parents=True)
    assert state_dir_problem(tmp_path / "s") == f"{tmp_path / 's' / 'allocations.json'} is a directory, " \
                                                "not the allocations file"


def maculad(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculad", command, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


BASE = '[dns]\nlisten = ["127.0.0.153:0"]\n[metrics]\nlisten = "127.0.0.1:0"\n[tls]\nenabled = false\n'
SUBPROCESS = [
    ("", "", "is empty"),
    ('[dns]\nlisten = ["192.0.2.1:53"]', "dns.listen[0]", "192.0.2.1 is not an address of this host"),
    ('[dns]\nlisten = ["127.0.0.1:5353"]\n[metrics]\nlisten = "127.0.0.1:5353"', "metrics.listen",
     "is also DNS listener dns.listen[0]"),
    ('[dns]\nlisten = ["127.0.0.153:53"]\nforwarders = ["127.0.0.153:53"]', "dns.forwarders[0]",
     "maculad's own DNS listener"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.0.0.153"', "route[0].ip", "is the DNS address"),
    ('[[route]]\nname = "a"\nhttp = "127.0.0.1:1"\nip = "127.0.0.0"', "route[0].ip", "network address"),
    ('[[route]]\nname = "a"\nhttp = "nosuch.invalid:80"', "route[0].http",
     "backend host 'nosuch.invalid' does not resolve"),
    (f'[control]\ngroup = "{NO_GROUP}"', "control.group", f"group '{NO_GROUP}' does not exist"),
    ('domain = "bad domain!"\n[[route]]\nname = "a"\nhttp = "127.0.0.1:1"', "domain", "not a valid DNS name"),
    ('[[route]]\nname = "a"\nhtp = "127.0.0.1:1"', "route[0].htp", "unknown key htp (did you mean http?)"),
]


@pytest.mark.parametrize(("text", "key", "reason"), SUBPROCESS)
def test_check_config_names_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "maculad.toml"
    path.write_text(text)
    proc = maculad("check-config", path)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{path}: {key + ': ' if key else ''}" in lines[0] and reason in lines[0]


@pytest.mark.parametrize(("control", "tail"), [
    ("", '[[route]]\nname = "a"\nhttp = "nosuch.invalid:80"\n'),
    (f'group = "{NO_GROUP}"\n', ""),
])
def test_run_refuses_what_check_config_refuses(tmp_path: Path, control: str, tail: str) -> None:
    path = tmp_path / "maculad.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[control]\nsocket = "{tmp_path / "s.sock"}"\n'
                    + control + BASE + tail)
    checked = maculad("check-config", path)
    ran = maculad("run", path)
    assert checked.returncode == ran.returncode == 2, checked.stderr
    assert ran.stderr.strip() == checked.stderr.strip() and len(ran.stderr.strip().splitlines()) == 1


def test_a_good_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "maculad.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + BASE
                    + '[[route]]\nname = "a"\nhttp = "localhost:80"\n')
    proc = maculad("check-config", path)
    assert proc.returncode == 0, proc.stderr
    assert "ok (1 static routes" in proc.stdout
