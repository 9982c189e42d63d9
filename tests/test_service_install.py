"""`maculactl service install|uninstall` into a temporary root, with the real tools: the console
script, systemd-sysusers (users and groups into ROOT/etc), userdel and groupdel. Install writes
the shipped files and the accounts; uninstall leaves the root exactly as it was before install.
The macOS plan (launchd, dseditgroup) is checked as a plan: there is no macOS here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from maculad.ctl import service as svc
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
MACULACTL = Path(sys.executable).parent / "maculactl"
MACULAD = Path(sys.executable).parent / "maculad"
#: what the account tools keep for themselves: backups of the previous version and their lock
TOOL_FILES = ("etc/group-", "etc/gshadow-", "etc/passwd-", "etc/shadow-", "etc/.pwd.lock")


def system_root(tmp: Path, *, groups: str = "root:x:0:\n") -> Path:
    """A root that looks like a Debian system's account files (the tools also keep backups)."""
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text(groups)
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("".join(f"{ln.split(':')[0]}:*::\n" for ln in groups.splitlines()))
    for f in TOOL_FILES:
        (root / f).write_text("")
    (root / "usr" / "local" / "bin").mkdir(parents=True)  # as on a Debian system
    return root


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` → its content (None for a directory), the tools' own files as present."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() else (b"" if rel in TOOL_FILES else p.read_bytes())
    return out


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MACULACTL), *args], capture_output=True, text=True, timeout=120, check=False)


def accounts(root: Path, name: str) -> dict[str, list[str]]:
    return {ln.split(":")[0]: ln.split(":") for ln in (root / "etc" / name).read_text().splitlines()}


@pytest.fixture(autouse=True)
def _tools() -> None:
    require(MACULACTL.exists(), f"{MACULACTL} is installed (pip install -e .)")
    for tool in ("systemd-sysusers", "userdel", "groupdel"):
        require(shutil.which(tool) is not None, f"{tool} (apt-get install -y systemd passwd)")


def test_install_writes_the_service_and_uninstall_leaves_the_root_as_it_was(tmp_path: Path) -> None:
    root = system_root(tmp_path, groups="root:x:0:\ndocker:x:995:\n")
    before = tree(root)
    dry = ctl("service", "install", "--root", str(root), "--dry-run", "--maculad", str(MACULAD))
    assert dry.returncode == 0, dry.stderr
    assert "would write: " + str(root / "etc/systemd/system/maculad.service") in dry.stdout
    assert dry.stdout.rstrip().endswith("dry run: nothing was changed")
    assert tree(root) == before

    r = ctl("service", "install", "--root", str(root), "--maculad", str(MACULAD), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "sudo systemctl daemon-reload" in out["next"] and "sudo systemctl enable --now maculad" in out["next"]
    unit = (root / "etc/systemd/system/maculad.service").read_text()
    shipped = (ROOT / "systemd/maculad.service").read_text()
    assert unit == shipped.replace("/usr/local/bin/maculad", str(MACULAD))
    assert f"ExecStart={MACULAD} run --config /etc/maculad/maculad.toml" in unit
    # the docker group exists here: the drop-in adds it, the unit itself names only macula
    dropin = (root / "etc/systemd/system/maculad.service.d/docker.conf").read_text()
    assert "[Service]\nSupplementaryGroups=docker\n" in dropin
    # Documentation= names a file install wrote
    doc = next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("Documentation="))
    assert doc.startswith("file://")
    assert (root / doc.removeprefix("file:///")).read_bytes() == (ROOT / "README.md").read_bytes()
    assert (root / "etc/maculad/maculad.toml").read_bytes() == (ROOT / "config/maculad.toml").read_bytes()
    assert (root / "usr/lib/sysusers.d/maculad.conf").read_bytes() == \
        (ROOT / "systemd/maculad.sysusers.conf").read_bytes()
    users, groups = accounts(root, "passwd"), accounts(root, "group")
    assert users["maculad"][5] == "/var/lib/maculad"
    assert "maculad" in groups["macula"][3].split(",")
    assert groups["docker"] == ["docker", "x", "995", ""]  # the existing group is not touched

    again = ctl("service", "install", "--root", str(root), "--maculad", str(MACULAD))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout

    un = ctl("service", "uninstall", "--root", str(root))
    assert un.returncode == 0, un.stderr
    assert tree(root) == before
    gone = ctl("service", "uninstall", "--root", str(root))
    assert gone.returncode == 0 and "nothing to remove" in gone.stdout


def test_without_a_docker_group_the_unit_gets_no_docker_and_says_so(tmp_path: Path) -> None:
    root = system_root(tmp_path)
    r = ctl("service", "install", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/systemd/system/maculad.service.d").exists()
    assert "note: no docker group" in r.stdout
    # /usr/local/bin/maculad is not there: said, with how to put it there
    assert f"{root}/usr/local/bin/maculad does not exist" in r.stdout and "--maculad PATH" in r.stdout
    unit = (root / "etc/systemd/system/maculad.service").read_text()
    (groups,) = [ln for ln in unit.splitlines() if ln.startswith("SupplementaryGroups=")]
    assert groups == "SupplementaryGroups=macula"
    # Docker installed later: install again adds the drop-in, uninstall removes both runs' files
    with open(root / "etc/group", "a") as f:
        f.write("docker:x:995:\n")
    before_second = (root / "etc/group").read_text()
    r2 = ctl("service", "install", "--root", str(root))
    assert r2.returncode == 0, r2.stderr
    assert (root / "etc/systemd/system/maculad.service.d/docker.conf").exists()
    assert (root / "etc/group").read_text() == before_second  # the accounts exist: not run again
    assert ctl("service", "uninstall", "--root", str(root)).returncode == 0
    assert not (root / "etc/systemd").exists() and not (root / "etc/maculad").exists()
    assert "macula" not in accounts(root, "group") and "maculad" not in accounts(root, "passwd")


def test_an_existing_config_is_kept_and_a_foreign_unit_is_refused(tmp_path: Path) -> None:
    root = system_root(tmp_path)
    mine = b'domain = "macula.local"\n# the admin\'s own\n'
    (root / "etc/maculad").mkdir(parents=True)
    (root / "etc/maculad/maculad.toml").write_bytes(mine)
    r = ctl("service", "install", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "kept: /etc/maculad/maculad.toml" in r.stdout
    assert (root / "etc/maculad/maculad.toml").read_bytes() == mine
    # an edited unit is the admin's now: uninstall leaves it (and says so), removes the rest
    unit = root / "etc/systemd/system/maculad.service"
    unit.write_text(unit.read_text() + "# edited\n")
    un = ctl("service", "uninstall", "--root", str(root))
    assert un.returncode == 0, un.stderr
    assert f"note: {unit} changed since install: left in place" in un.stdout
    assert unit.exists() and not (root / "usr/lib/sysusers.d").exists()
    assert (root / "etc/maculad/maculad.toml").read_bytes() == mine
    # that unit was not written by this install (no manifest now): install refuses to replace it
    again = ctl("service", "install", "--root", str(root))
    assert again.returncode == 1
    assert again.stderr.strip() == (f"maculactl: service install: {unit} exists and was not written by "
                                    "maculactl; move it away or merge by hand, then run service install again")


def test_the_macos_plan_installs_the_plist_config_log_dir_and_group(tmp_path: Path) -> None:
    """No macOS here: the plan for it, from the shipped files."""
    facts = svc.detect(root=Path("/nonexistent-root"), system="darwin", source=ROOT)
    facts = replace(facts, root=Path("/"), tools=frozenset({"dseditgroup"}))
    plan = svc.plan_install(facts, maculad="/opt/maculad/bin/maculad")
    writes = {str(a.path): a.content for a in plan.actions if a.kind == "write"}
    plist = writes["/Library/LaunchDaemons/local.macula.maculad.plist"]
    assert plist is not None and b"<string>/opt/maculad/bin/maculad</string>" in plist
    assert writes["/usr/local/etc/maculad/maculad.toml"] == (ROOT / "config/maculad.toml").read_bytes()
    assert "/usr/local/etc/maculad/maculactl-service.json" in writes
    mkdirs = [str(a.path) for a in plan.actions if a.kind == "mkdir"]
    assert mkdirs[-2:] == ["/usr/local/var", "/usr/local/var/log"]  # the plist's log file
    runs = [a.argv for a in plan.actions if a.kind == "run"]
    assert runs == [("dseditgroup", "-o", "create", "-r", "maculad control socket", "macula")]
    assert plan.next_steps[0] == "sudo launchctl bootstrap system /Library/LaunchDaemons/local.macula.maculad.plist"
    m = svc.Manifest(files=plan.manifest.files, dirs=plan.manifest.dirs, groups=("macula",))
    present = {k: svc.sha256(v) for k, v in writes.items() if v is not None}
    un = svc.plan_uninstall(replace(facts, manifest=m, existing=present))
    assert [a.argv for a in un.actions if a.kind == "run"] == [("dseditgroup", "-o", "delete", "macula")]
    assert {str(a.path) for a in un.actions if a.kind == "remove"} == set(writes)
    assert [str(a.path) for a in un.actions if a.kind == "rmdir"] == list(reversed(m.dirs))

