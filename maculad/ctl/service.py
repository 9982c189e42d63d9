"""`maculactl service install|uninstall`: maculad as a system service, and exactly that undone.

`detect` reads the machine under `root` (`--root DIR` prefixes every system path) and the files
this checkout ships (`systemd/`, `config/maculad.toml`, `README.md`) into `Facts`; `plan_install`
and `plan_uninstall` turn facts into `core.actions.Action`s (pure); `core.actions.execute` runs
them. What install writes:

- Linux: the unit `/etc/systemd/system/maculad.service` (ExecStart names `--maculad`), the
  drop-in `maculad.service.d/docker.conf` (`SupplementaryGroups=docker`) only when the `docker`
  group exists, sysusers.d and tmpfiles.d files, the README the unit's `Documentation=` names,
  `/etc/maculad/maculad.toml` unless one exists (never overwritten), then `systemd-sysusers`
  (with `--root`: into ROOT/etc/passwd, group, shadow, gshadow), which creates the `macula` group
  and the `maculad` user the unit runs as.
- macOS: the launchd plist in `/Library/LaunchDaemons`, `/usr/local/etc/maculad/maculad.toml`,
  the plist's log directory, and the `macula` group (`dseditgroup`, on the running system only).

A manifest (`<config dir>/maculactl-service.json`) records every file with its SHA-256, every
directory and every user or group install created. Uninstall removes a file only while it still
has that hash (an edited config stays), the users and groups (`userdel`/`groupdel`), then the
directories if empty. A file that exists and is not in the manifest is never overwritten.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from maculad.core.actions import Action, Result

System = Literal["linux", "darwin"]
DEFAULT_MACULAD = "/usr/local/bin/maculad"
UNIT = "maculad"
LAUNCHD_LABEL = "local.macula.maculad"
CONTROL_GROUP = "macula"
LOG_DIR = PurePosixPath("/usr/local/var/log")  # the plist's StandardOutPath directory


class ServiceError(Exception):
    """The service cannot be installed or removed as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Shipped:
    """One file of the checkout and where it goes (an absolute path on the target system)."""

    source: str  # relative to the checkout
    target: PurePosixPath
    store: str
    what: str
    keep_existing: bool = False  # the config: an existing one is the admin's, never replaced


@dataclass(frozen=True, slots=True)
class Manifest:
    files: dict[str, str] = field(default_factory=dict)  # target → sha256 of what install wrote
    dirs: tuple[str, ...] = ()  # created by install, parents first
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"version": 1, "files": self.files, "dirs": list(self.dirs),
                           "groups": list(self.groups), "users": list(self.users)}, indent=2) + "\n"

    @staticmethod
    def from_json(text: str) -> Manifest:
        d = json.loads(text)
        return Manifest(files=dict(d.get("files", {})), dirs=tuple(d.get("dirs", ())),
                        groups=tuple(d.get("groups", ())), users=tuple(d.get("users", ())))

    def merged(self, other: Manifest) -> Manifest:
        return Manifest(files={**self.files, **other.files},
                        dirs=self.dirs + tuple(x for x in other.dirs if x not in self.dirs),
                        groups=self.groups + tuple(x for x in other.groups if x not in self.groups),
                        users=self.users + tuple(x for x in other.users if x not in self.users))


@dataclass(frozen=True, slots=True)
class Facts:
    root: Path
    system: System
    source: Path  # the checkout
    sources: dict[str, bytes]  # Shipped.source → content
    existing: dict[str, str | None]  # target → sha256 of what is there now, None when absent
    present_dirs: frozenset[str]  # every ancestor directory of a target that exists
    groups: frozenset[str]
    users: frozenset[str]
    manifest: Manifest | None
    maculad_exists: bool
    tools: frozenset[str]


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    manifest: Manifest  # the manifest after this run (install: accounts are added once sysusers ran)
    kept: tuple[str, ...] = ()  # targets left alone: they exist (config) or changed since install
    notes: tuple[str, ...] = ()
    next_steps: tuple[str, ...] = ()


def config_dir(system: System) -> PurePosixPath:
    return PurePosixPath("/usr/local/etc/maculad" if system == "darwin" else "/etc/maculad")


def manifest_path(system: System) -> PurePosixPath:
    return config_dir(system) / "maculactl-service.json"


def shipped(system: System, *, docker_group: bool) -> tuple[Shipped, ...]:
    cfg = Shipped("config/maculad.toml", config_dir(system) / "maculad.toml", "config",
                  "the system config", keep_existing=True)
    if system == "darwin":
        return (Shipped(f"systemd/{LAUNCHD_LABEL}.plist",
                        PurePosixPath(f"/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist"), "launchd", "the plist"),
                cfg)
    out = [
        Shipped("systemd/maculad.service", PurePosixPath("/etc/systemd/system/maculad.service"), "systemd",
                "the unit"),
        Shipped("systemd/maculad.sysusers.conf", PurePosixPath("/usr/lib/sysusers.d/maculad.conf"), "systemd",
                "the maculad user and the macula group (sysusers.d)"),
        Shipped("systemd/maculad.tmpfiles.conf", PurePosixPath("/usr/lib/tmpfiles.d/maculad.conf"), "systemd",
                "its directories (tmpfiles.d)"),
        Shipped("README.md", PurePosixPath("/usr/share/doc/maculad/README.md"), "doc",
                "the documentation the unit names"),
        cfg,
    ]
    if docker_group:
        out.insert(1, Shipped("", PurePosixPath("/etc/systemd/system/maculad.service.d/docker.conf"), "systemd",
                              "the Docker socket's group (the docker group exists)"))
    return tuple(out)


DOCKER_DROPIN = (b"# Written by `maculactl service install` because the docker group exists: the Docker\n"
                 b"# socket (/var/run/docker.sock) is root:docker 0660.\n[Service]\nSupplementaryGroups=docker\n")


def under(root: Path, path: PurePosixPath | str) -> Path:
    return root / str(path).lstrip("/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_for(item: Shipped, facts: Facts, maculad: str) -> bytes:
    """The bytes install writes for `item`: the shipped file, with the unit's or plist's maculad path."""
    if not item.source:
        return DOCKER_DROPIN
    data = facts.sources[item.source]
    if item.store in ("systemd", "launchd") and maculad != DEFAULT_MACULAD:
        data = data.replace(DEFAULT_MACULAD.encode(), maculad.encode())
    return data


def _ancestors(path: PurePosixPath) -> list[PurePosixPath]:
    """`/a/b/c` → [/a, /a/b] (the directories a file at `path` needs, parents first)."""
    return [p for p in reversed(path.parents) if str(p) != "/"]


def targets(system: System) -> tuple[PurePosixPath, ...]:
    """Every path detect looks at: what install may write, and the manifest."""
    return (*(s.target for s in shipped(system, docker_group=True)), manifest_path(system))


def plan_install(facts: Facts, *, maculad: str = DEFAULT_MACULAD, maculactl: str = "maculactl") -> Plan:
    system, root = facts.system, facts.root
    old = facts.manifest or Manifest()
    actions: list[Action] = []
    files: dict[str, str] = {}
    dirs: list[str] = []
    kept: list[str] = []
    for item in shipped(system, docker_group="docker" in facts.groups):
        key = str(item.target)
        data = content_for(item, facts, maculad)
        now = facts.existing.get(key)
        if now == sha256(data):
            if key in old.files:
                files[key] = now
            continue  # already there, as install would write it
        if now is not None:
            if item.keep_existing:
                kept.append(key)
                continue
            if old.files.get(key) != now:
                why = "changed since maculactl installed it" if key in old.files else "not written by maculactl"
                raise ServiceError(f"{under(root, item.target)} exists and was {why}; move it away or "
                                   "merge by hand, then run service install again")
        for d in _ancestors(item.target):
            if str(d) not in facts.present_dirs and str(d) not in dirs:
                dirs.append(str(d))
                actions.append(Action("mkdir", "dirs", f"directory {d}", path=under(root, d)))
        actions.append(Action("write", item.store, item.what, path=under(root, item.target), content=data))
        files[key] = sha256(data)
    notes: list[str] = []
    if system == "linux":
        if "systemd-sysusers" not in facts.tools:
            raise ServiceError("systemd-sysusers not found: the unit needs systemd (apt-get install systemd)")
        conf = under(root, "/usr/lib/sysusers.d/maculad.conf")
        argv = ("systemd-sysusers", str(conf)) if root == Path("/") else (
            "systemd-sysusers", f"--root={root}", str(conf))
        if not {"maculad"} <= facts.users or CONTROL_GROUP not in facts.groups:
            actions.append(Action("run", "users", "the maculad user and the macula group", argv=argv))
        if "docker" not in facts.groups:
            notes.append("no docker group: the unit gets no SupplementaryGroups=docker (Docker is optional); "
                         "after installing Docker run service install again to add it")
    elif CONTROL_GROUP not in facts.groups:
        if root == Path("/"):
            actions.append(Action("run", "users", "the macula group",
                                  argv=("dseditgroup", "-o", "create", "-r", "maculad control socket",
                                        CONTROL_GROUP)))
        else:
            notes.append(f"the {CONTROL_GROUP} group is created only on the running system (dseditgroup)")
    if system == "darwin":
        for d in [*_ancestors(LOG_DIR), LOG_DIR]:
            if str(d) not in facts.present_dirs and str(d) not in dirs:
                dirs.append(str(d))
                actions.append(Action("mkdir", "dirs", f"directory {d}", path=under(root, d)))
    exec_path = under(root, maculad)
    if not facts.maculad_exists:
        notes.append(f"{exec_path} does not exist: the service runs {maculad}. Install maculad there "
                     f"(sudo python3 -m venv /opt/maculad && sudo /opt/maculad/bin/pip install {facts.source} && "
                     "sudo ln -s /opt/maculad/bin/maculad /usr/local/bin/maculad), or pass --maculad PATH")
    manifest = old.merged(Manifest(files=files, dirs=tuple(dirs)))
    # the manifest first: an install that fails half-way can still be undone (or run again)
    first = [manifest_action(facts, manifest)] if manifest != old or facts.manifest is None else []
    return Plan(actions=(*first, *actions), manifest=manifest, kept=tuple(kept), notes=tuple(notes),
                next_steps=next_steps(system, maculactl))


def next_steps(system: System, maculactl: str = "maculactl") -> tuple[str, ...]:
    user = os.environ.get("SUDO_USER") or "$USER"
    if system == "darwin":
        return (f"sudo launchctl bootstrap system /Library/LaunchDaemons/{LAUNCHD_LABEL}.plist",
                f"sudo dseditgroup -o edit -a {user} -t user {CONTROL_GROUP}   # then log in again",
                f"sudo {maculactl} resolver install --reload")
    return ("sudo systemctl daemon-reload",
            "sudo systemctl enable --now maculad",
            f"sudo usermod -aG {CONTROL_GROUP} {user}   # then log in again: members may read and act",
            f"sudo {maculactl} resolver install --reload")


def created_accounts(before: Facts, after: Facts) -> Manifest:
    """The users and groups install created: there now, absent before."""
    return Manifest(groups=tuple(sorted(after.groups - before.groups)),
                    users=tuple(sorted(after.users - before.users)))


def manifest_action(facts: Facts, manifest: Manifest) -> Action:
    path = manifest_path(facts.system)
    return Action("write", "manifest", "what install wrote (for uninstall)", path=under(facts.root, path),
                  content=manifest.to_json().encode())


def plan_uninstall(facts: Facts) -> Plan:
    """Remove what the manifest lists: files still as written, accounts, then empty directories."""
    m = facts.manifest
    if m is None:
        return Plan(actions=(), manifest=Manifest(),
                    notes=(f"nothing to remove: {under(facts.root, manifest_path(facts.system))} is absent "
                           "(service install was not run here)",))
    root = facts.root
    actions: list[Action] = []
    kept: list[str] = []
    for target, digest in m.files.items():
        now = facts.existing.get(target)
        if now is None:
            continue
        if now != digest:
            kept.append(target)
            continue
        actions.append(Action("remove", "files", target, path=under(root, target)))
    rooted = () if root == Path("/") else ("--root", str(root))
    if facts.system == "darwin":
        actions += [Action("run", "users", f"group {g}", argv=("dseditgroup", "-o", "delete", g))
                    for g in m.groups if root == Path("/")]
    else:
        actions += [Action("run", "users", f"user {u}", argv=("userdel", *rooted, u)) for u in m.users]
        # userdel may take the user's own group with it (USERGROUPS_ENAB): a group already gone is fine
        actions += [Action("run", "users", f"group {g}", argv=("groupdel", *rooted, g), may_fail=True)
                    for g in m.groups if g in facts.groups]
    actions.append(Action("remove", "manifest", "the manifest", path=under(root, manifest_path(facts.system))))
    actions += [Action("rmdir", "dirs", f"directory {d}", path=under(root, d)) for d in reversed(m.dirs)]
    notes = [f"{under(root, k)} changed since install: left in place" for k in kept]
    steps = ("sudo systemctl daemon-reload",) if facts.system == "linux" else ()
    return Plan(actions=tuple(actions), manifest=m, kept=tuple(kept), notes=tuple(notes), next_steps=steps)


# --------------------------------------------------------------------------- reading the machine


def checkout() -> Path:
    """The source tree this maculactl runs from (the files the service is installed from)."""
    return Path(__file__).resolve().parent.parent.parent


def _names(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    return frozenset(ln.split(":", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#"))


def _digest(path: Path) -> str | None:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from None


def detect(*, root: Path, system: System, source: Path, maculad: str = DEFAULT_MACULAD,
           which: Callable[[str], str | None] = shutil.which) -> Facts:
    """What is on the machine under `root` now, and what the checkout at `source` ships."""
    sources: dict[str, bytes] = {}
    for item in shipped(system, docker_group=True):
        if item.source:
            try:
                sources[item.source] = (source / item.source).read_bytes()
            except OSError as exc:
                raise ServiceError(f"{source / item.source}: {exc.strerror or exc} (the service is installed "
                                   "from a maculad checkout: pass --source DIR)") from None
    paths = targets(system)
    existing = {str(t): _digest(under(root, t)) for t in paths}
    dirs = {str(d) for t in (*paths, LOG_DIR / "maculad.log") for d in _ancestors(t)}
    present = frozenset(d for d in dirs if under(root, d).is_dir())
    groups = _names(under(root, "/etc/group"))
    if root == Path("/") and "docker" not in groups:
        try:
            grp.getgrnam("docker")  # a group from NSS (LDAP, sssd) gives access as well
            groups |= {"docker"}
        except KeyError:
            pass
    manifest = None
    mpath = under(root, manifest_path(system))
    if existing[str(manifest_path(system))] is not None:
        try:
            manifest = Manifest.from_json(mpath.read_text(encoding="utf-8"))
        except (ValueError, AttributeError) as exc:
            raise ServiceError(f"{mpath} is not a maculactl manifest ({exc}); fix or remove it by hand") from None
    tools = frozenset(t for t in ("systemd-sysusers", "systemctl", "userdel", "groupdel", "dseditgroup",
                                  "launchctl") if which(t))
    return Facts(root=root, system=system, source=source, sources=sources, existing=existing, present_dirs=present,
                 groups=groups, users=_names(under(root, "/etc/passwd")), manifest=manifest,
                 maculad_exists=os.access(under(root, maculad), os.X_OK), tools=tools)


def describe(plan: Plan, results: list[Result], *, action: str, dry_run: bool) -> dict[str, Any]:
    """The JSON `service install|uninstall` prints."""
    return {
        "action": action, "dry_run": dry_run,
        "steps": [{"kind": r.action.kind, "what": r.action.what,
                   "path": str(r.action.path) if r.action.path else None, "argv": list(r.action.argv),
                   "done": r.done, "detail": r.detail} for r in results],
        "kept": list(plan.kept), "notes": list(plan.notes), "next": list(plan.next_steps),
    }
