"""Install the root where clients look: `maculactl trust install|uninstall|show|export`.

Standard library only (maculactl imports it). `detect` reads the machine
under `root` (`--root DIR` prefixes every system path, for tests and images;
NSS databases are found under `home`) into `Facts`; `plan_install` and
`plan_uninstall` turn facts into `Action`s (pure, core/actions.py); `execute` runs them
(or, with `dry_run`, only reports them).

Stores, and exactly what maculad adds to each (uninstall removes only that):
- Debian/Ubuntu: the file `usr/local/share/ca-certificates/maculad-<domain>.crt`, then
  `update-ca-certificates` (its directories given under `--root`).
- Fedora/RHEL: `etc/pki/ca-trust/source/anchors/maculad-<domain>.pem`, then `update-ca-trust extract`.
- Arch: `etc/ca-certificates/trust-source/anchors/maculad-<domain>.crt`, then `update-ca-trust`
  (or `trust extract-compat`).
- NSS (Chromium's `~/.pki/nssdb`, every Firefox profile with a `cert9.db`): the certificate under
  the nickname `maculad local CA (<domain>)`, with `certutil -A -t C,,`; `~/.pki/nssdb` is created
  (empty password) when missing, since Chromium reads it from its first start.
- macOS: `security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain`.
A store whose tool is missing is reported and skipped, never half-done.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from maculad.core.actions import Action, ActionError, Result, execute as run_actions

Family = Literal["debian", "fedora", "arch", "macos", "unknown"]


class TrustError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Facts:
    root: Path
    home: Path
    family: Family
    tools: frozenset[str]
    nss_dbs: tuple[Path, ...]
    chromium_db_exists: bool


@dataclass(frozen=True, slots=True)
class Root:
    """The root certificate as maculactl sees it (no cryptography needed)."""

    path: Path
    pem: bytes
    der: bytes
    domain: str
    fingerprint: str = field(default="")


def nickname(domain: str) -> str:
    return f"maculad local CA ({domain})"


def read_root(path: Path, domain: str) -> Root:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot be read ({exc.strerror or exc}); has maculad started once?") from None
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise TrustError(f"{path}: not a PEM certificate")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        raise TrustError(f"{path}: not a PEM certificate (bad base64)") from None
    fp = hashlib.sha256(der).hexdigest().upper()
    return Root(path=path, pem=pem, der=der, domain=domain, fingerprint=":".join(fp[i:i + 2] for i in range(0, 64, 2)))


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def detect(*, root: Path, home: Path, platform: str = sys.platform,
           which: Callable[[str], str | None] = shutil.which) -> Facts:
    family: Family = "unknown"
    if platform == "darwin":
        family = "macos"
    elif _under(root, "/etc/debian_version").exists():
        family = "debian"
    elif _under(root, "/etc/fedora-release").exists() or _under(root, "/etc/redhat-release").exists():
        family = "fedora"
    elif _under(root, "/etc/arch-release").exists():
        family = "arch"
    tools = frozenset(t for t in ("update-ca-certificates", "update-ca-trust", "trust", "certutil", "security")
                      if which(t))
    chromium = home / ".pki" / "nssdb"
    dbs = [chromium]
    firefox = home / ".mozilla" / "firefox"
    if firefox.is_dir():
        dbs += sorted(p.parent for p in firefox.glob("*/cert9.db"))
    return Facts(root=root, home=home, family=family, tools=tools, nss_dbs=tuple(dbs),
                 chromium_db_exists=(chromium / "cert9.db").exists())


def system_file(facts: Facts, domain: str) -> Path | None:
    rel = {
        "debian": f"/usr/local/share/ca-certificates/maculad-{domain}.crt",
        "fedora": f"/etc/pki/ca-trust/source/anchors/maculad-{domain}.pem",
        "arch": f"/etc/ca-certificates/trust-source/anchors/maculad-{domain}.crt",
    }.get(facts.family)
    return _under(facts.root, rel) if rel else None


#: update-ca-certificates' directories, each moved under --root by its own option (it has no --sysroot,
#: and an unknown option makes it print its usage and exit 0 having done nothing)
_DEBIAN_DIRS = (("--certsconf", "/etc/ca-certificates.conf"), ("--certsdir", "/usr/share/ca-certificates"),
                ("--localcertsdir", "/usr/local/share/ca-certificates"), ("--etccertsdir", "/etc/ssl/certs"),
                ("--hooksdir", "/etc/ca-certificates/update.d"))


def _refresh(facts: Facts) -> tuple[str, ...] | None:
    if facts.family == "debian" and "update-ca-certificates" in facts.tools:
        if facts.root == Path("/"):
            return ("update-ca-certificates",)
        return ("update-ca-certificates", *(x for opt, d in _DEBIAN_DIRS for x in (opt, str(_under(facts.root, d)))))
    if facts.family in ("fedora", "arch") and facts.root == Path("/"):
        if "update-ca-trust" in facts.tools:
            return ("update-ca-trust", "extract")
        if facts.family == "arch" and "trust" in facts.tools:
            return ("trust", "extract-compat")
    return None


def _system_actions(facts: Facts, root: Root, install: bool) -> tuple[list[Action], list[str]]:
    notes: list[str] = []
    actions: list[Action] = []
    if facts.family == "macos":
        if "security" not in facts.tools:
            return [], ["macOS: `security` not found; the system keychain is skipped"]
        keychain = "/Library/Keychains/System.keychain"
        if install:
            argv: tuple[str, ...] = ("security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", keychain,
                                     str(root.path))
        else:
            argv = ("security", "delete-certificate", "-Z", hashlib.sha1(root.der).hexdigest().upper(), keychain)
        return [Action("run", "macos", f"system keychain {keychain}", argv=argv, may_fail=not install)], notes
    target = system_file(facts, root.domain)
    if target is None:
        return [], ["no known system trust store on this machine (Debian, Fedora, Arch, macOS); skipped"]
    refresh = _refresh(facts)
    if refresh is None:
        return [], [f"{facts.family}: the trust store's update tool is not installed; the system store is skipped"]
    if install:
        actions.append(Action("write", "system", f"{facts.family} anchor", path=target, content=root.pem))
    elif target.exists():
        actions.append(Action("remove", "system", f"{facts.family} anchor", path=target))
    if actions:
        actions.append(Action("run", "system", "rebuild the system bundle", argv=refresh))
    return actions, notes


def _nss_actions(facts: Facts, root: Root, install: bool) -> tuple[list[Action], list[str]]:
    if "certutil" not in facts.tools:
        return [], ["certutil (libnss3-tools / nss-tools) not found; Chromium and Firefox databases are skipped"]
    out: list[Action] = []
    nick = nickname(root.domain)
    for db in facts.nss_dbs:
        exists = (db / "cert9.db").exists()
        if not exists and not (install and db == facts.home / ".pki" / "nssdb"):
            continue
        ref = f"sql:{db}"
        if install:
            if not exists:
                out.append(Action("run", "nss", f"create {db}", path=db,
                                  argv=("certutil", "-N", "--empty-password", "-d", ref)))
            # Replace an older maculad root of this domain (a recreated CA) rather than stacking them.
            out.append(Action("run", "nss", f"drop an old entry in {db}",
                              argv=("certutil", "-D", "-n", nick, "-d", ref), may_fail=True))
            out.append(Action("run", "nss", f"NSS database {db}",
                              argv=("certutil", "-A", "-n", nick, "-t", "C,,", "-i", str(root.path), "-d", ref)))
        else:
            out.append(Action("run", "nss", f"NSS database {db}", argv=("certutil", "-D", "-n", nick, "-d", ref),
                              may_fail=True))
    return out, []


def plan_install(facts: Facts, root: Root) -> tuple[list[Action], list[str]]:
    a, n = _system_actions(facts, root, True)
    b, m = _nss_actions(facts, root, True)
    return a + b, n + m


def plan_uninstall(facts: Facts, root: Root) -> tuple[list[Action], list[str]]:
    a, n = _system_actions(facts, root, False)
    b, m = _nss_actions(facts, root, False)
    return a + b, n + m


def execute(actions: list[Action], root: Root, *, dry_run: bool, facts: Facts) -> list[Result]:
    """Run a trust plan (core/actions.execute), with NSS tools seeing `facts.home` as HOME."""
    if not dry_run and facts.family == "debian" and facts.root != Path("/") and any(
            a.kind == "write" for a in actions):
        _sysroot_skeleton(facts.root)
    try:
        return run_actions(actions, dry_run=dry_run, env=dict(os.environ, HOME=str(facts.home)))
    except ActionError as exc:
        raise TrustError(str(exc)) from None


def _sysroot_skeleton(root: Path) -> None:
    """update-ca-certificates under --root needs these to exist."""
    for d in ("/usr/share/ca-certificates", "/etc/ssl/certs", "/etc/ca-certificates/update.d",
              "/usr/local/share/ca-certificates"):
        _under(root, d).mkdir(parents=True, exist_ok=True)
    conf = _under(root, "/etc/ca-certificates.conf")
    if not conf.exists():
        conf.write_text("")


def installed_in(facts: Facts, root: Root) -> list[str]:
    """Where this root is installed now (for `trust show`)."""
    where: list[str] = []
    target = system_file(facts, root.domain)
    if target is not None and target.exists() and target.read_bytes().strip() == root.pem.strip():
        where.append(str(target))
    if "certutil" in facts.tools:
        for db in facts.nss_dbs:
            if not (db / "cert9.db").exists():
                continue
            p = subprocess.run(["certutil", "-L", "-n", nickname(root.domain), "-d", f"sql:{db}", "-a"],
                               capture_output=True, text=True, check=False,
                               env=dict(os.environ, HOME=str(facts.home)))
            if p.returncode == 0 and "".join(root.pem.decode().split()) in "".join(p.stdout.split()):
                where.append(f"nss:{db}")
    return where
