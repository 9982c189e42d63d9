"""Resolver drop-ins and the /etc/hosts block: pure builders, writers into a temporary root,
and the real `maculactl resolver` / `maculactl hosts` commands with --config (no daemon needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from maculad.control.resolver import (
    MARKER,
    ResolverError,
    apply_hosts_block,
    hosts_block,
    install,
    remove_hosts_block,
    resolver_plan,
    uninstall,
)
from maculad.core.net import Backend
from tests.support.control_target import write_config

MACULACTL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "maculactl"
LISTEN = (Backend("127.0.0.153", 53),)


def test_systemd_resolved_drop_in() -> None:
    plan = resolver_plan("systemd-resolved", domain="macula.local", listen=LISTEN)
    (f,) = plan.files
    assert str(f.path) == "/etc/systemd/resolved.conf.d/macula.conf"
    assert f.content == f"{MARKER}\n[Resolve]\nDNS=127.0.0.153:53\nDomains=~macula.local\n"
    assert plan.reload == (("systemctl", "restart", "systemd-resolved"),)
    two = resolver_plan("systemd-resolved", domain="macula.local",
                        listen=(Backend("127.0.0.153", 5353), Backend("::1", 5353)))
    assert "DNS=127.0.0.153:5353 [::1]:5353\n" in two.files[0].content
    assert any("246" in n for n in two.notes)


def test_macos_resolver_file() -> None:
    plan = resolver_plan("macos", domain="macula.local", listen=LISTEN)
    (f,) = plan.files
    assert str(f.path) == "/etc/resolver/macula.local"
    assert f.content == f"{MARKER}\nnameserver 127.0.0.153\nport 53\n"
    mixed = resolver_plan("macos", domain="macula.local",
                          listen=(Backend("127.0.0.153", 53), Backend("127.0.0.154", 5353)))
    assert "127.0.0.154" not in mixed.files[0].content and mixed.notes


def test_networkmanager_dnsmasq() -> None:
    plan = resolver_plan("networkmanager", domain="macula.local", listen=LISTEN)
    contents = {str(f.path): f.content for f in plan.files}
    assert contents["/etc/NetworkManager/dnsmasq.d/macula.conf"] == f"{MARKER}\nserver=/macula.local/127.0.0.153#53\n"
    assert "dns=dnsmasq" in contents["/etc/NetworkManager/conf.d/macula-dnsmasq.conf"]


def test_plan_errors() -> None:
    with pytest.raises(ResolverError, match="no DNS listen address"):
        resolver_plan("macos", domain="macula.local", listen=())
    with pytest.raises(ResolverError, match="not an IP address"):
        resolver_plan("macos", domain="macula.local", listen=(Backend("localhost", 53),))


@pytest.mark.parametrize("backend", ["systemd-resolved", "networkmanager", "macos"])
def test_install_uninstall_round_trip(tmp_path: Path, backend: str) -> None:
    (tmp_path / "etc").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    plan = resolver_plan(backend, domain="macula.local", listen=LISTEN)  # type: ignore[arg-type]
    assert [a.action for a in install(plan, root=tmp_path, dry_run=True)] == ["would write"] * len(plan.files)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [a.action for a in install(plan, root=tmp_path)] == ["written"] * len(plan.files)
    for f in plan.files:
        p = tmp_path / str(f.path).lstrip("/")
        assert p.read_text() == f.content and (p.stat().st_mode & 0o777) == 0o644
    assert [a.action for a in install(plan, root=tmp_path)] == ["unchanged"] * len(plan.files)
    assert [a.action for a in uninstall(plan, root=tmp_path)] == ["removed"] * len(plan.files)
    assert [a.action for a in uninstall(plan, root=tmp_path)] == ["absent"] * len(plan.files)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_foreign_files_are_never_overwritten_or_removed(tmp_path: Path) -> None:
    plan = resolver_plan("macos", domain="macula.local", listen=LISTEN)
    p = tmp_path / "etc/resolver/macula.local"
    p.parent.mkdir(parents=True)
    p.write_text("nameserver 10.0.0.1\n")
    with pytest.raises(ResolverError, match="not written by maculactl"):
        install(plan, root=tmp_path)
    with pytest.raises(ResolverError, match="no marker"):
        uninstall(plan, root=tmp_path)
    assert p.read_text() == "nameserver 10.0.0.1\n"


HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"


def test_hosts_block_apply_is_idempotent_and_removable() -> None:
    block = hosts_block([("grafana.macula.local", "127.0.0.2"), ("registry.macula.local", "127.0.10.1"),
                         ("*.apps.macula.local", "127.0.10.9")])
    assert block.splitlines()[0].startswith("# BEGIN maculad")
    assert "127.0.0.2\tgrafana.macula.local" in block
    assert "# *.apps.macula.local -> 127.0.10.9: /etc/hosts cannot hold wildcards" in block
    once = apply_hosts_block(HOSTS, block)
    assert once == HOSTS + block
    assert apply_hosts_block(once, block) == once
    newer = hosts_block([("grafana.macula.local", "127.0.0.2")])
    replaced = apply_hosts_block(once + "10.0.0.1 other\n", newer)
    assert replaced == HOSTS + newer + "10.0.0.1 other\n"
    assert remove_hosts_block(replaced) == HOSTS + "10.0.0.1 other\n"
    assert remove_hosts_block(HOSTS) == HOSTS
    assert apply_hosts_block("no newline at end", newer) == "no newline at end\n" + newer


def test_broken_markers_are_refused() -> None:
    with pytest.raises(ResolverError, match="unbalanced"):
        apply_hosts_block(HOSTS + "# BEGIN maculad\n127.0.0.2 x\n", hosts_block([]))
    with pytest.raises(ResolverError, match="unbalanced"):
        remove_hosts_block("# END maculad\n# BEGIN maculad\n")


ROUTES = """
[[route]]
name = "grafana"
ip = "127.0.0.2"
http = "127.0.0.1:3000"

[[route]]
name = "s3"
ip = "127.0.0.5"
http = "127.0.0.5:9000"
"""


def maculactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MACULACTL), "--socket", "/nonexistent/maculad.sock", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_maculactl_resolver_with_config_into_a_root(tmp_path: Path) -> None:
    cfg = tmp_path / "maculad.toml"
    write_config(cfg, dns_port=53, routes=ROUTES)
    root = tmp_path / "root"
    r = maculactl("resolver", "install", "--config", str(cfg), "--root", str(root), "--backend",
                  "systemd-resolved", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "DNS=127.0.0.153:53" in r.stdout and not root.exists()
    r = maculactl("resolver", "install", "--config", str(cfg), "--root", str(root), "--backend",
                  "systemd-resolved")
    assert r.returncode == 0, r.stderr
    assert "now run: sudo systemctl restart systemd-resolved" in r.stdout
    dropin = root / "etc/systemd/resolved.conf.d/macula.conf"
    assert "Domains=~macula.local" in dropin.read_text()
    r = maculactl("resolver", "uninstall", "--json", "--config", str(cfg), "--root", str(root), "--backend",
                  "systemd-resolved")
    assert r.returncode == 0
    assert json.loads(r.stdout)["files"] == [{"path": str(dropin), "action": "removed"}]
    assert not dropin.exists()
    dropin.write_text("[Resolve]\nDNS=10.0.0.1\n")
    r = maculactl("resolver", "uninstall", "--config", str(cfg), "--root", str(root), "--backend",
                  "systemd-resolved")
    assert r.returncode == 1 and "no marker" in r.stderr and dropin.exists()


def test_maculactl_hosts_apply_and_remove(tmp_path: Path) -> None:
    cfg = tmp_path / "maculad.toml"
    write_config(cfg, dns_port=53, routes=ROUTES)
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    r = maculactl("hosts", "--config", str(cfg))
    assert r.returncode == 0 and "127.0.0.5\ts3.macula.local" in r.stdout and hosts.read_text() == HOSTS
    r = maculactl("hosts", "--apply", "--config", str(cfg), "--file", str(hosts))
    assert r.returncode == 0 and r.stdout.startswith("wrote 2 names")
    applied = hosts.read_text()
    assert applied.startswith(HOSTS) and "127.0.0.2\tgrafana.macula.local" in applied
    ino = os.stat(hosts).st_ino
    r = maculactl("hosts", "--apply", "--config", str(cfg), "--file", str(hosts))
    assert r.stdout.startswith("already up to date") and hosts.read_text() == applied
    assert os.stat(hosts).st_ino == ino  # written in place: /etc/hosts may be a bind mount
    r = maculactl("hosts", "--remove", "--file", str(hosts))
    assert r.returncode == 0 and hosts.read_text() == HOSTS
    r = maculactl("hosts", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "no such file" in r.stderr
