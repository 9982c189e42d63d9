"""Wiring the OS resolver to maculad: resolver drop-ins and the /etc/hosts block.

Pure builders decide file contents: `resolver_plan(backend, domain, listen)`
gives the files one backend needs (systemd-resolved drop-in, macOS
`/etc/resolver/<domain>`, NetworkManager's dnsmasq snippet) and the command
that makes the OS re-read them; `hosts_block`, `apply_hosts_block` and
`remove_hosts_block` edit the text of a hosts file between `# BEGIN maculad`
and `# END maculad`, idempotently.

Thin writers apply a plan under a `root` directory (tests use a temporary
root): every file carries `MARKER`, install refuses to overwrite a file
without it, uninstall removes only files that still carry it, and writes are
atomic (temporary file + rename). Nothing here touches the real system unless
the caller passes `root=/`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

from maculad.core.net import Backend
from maculad.core.fsutil import atomic_write

ResolverBackend = Literal["systemd-resolved", "networkmanager", "macos"]
RESOLVER_BACKENDS: tuple[str, ...] = get_args(ResolverBackend)
MARKER = "# Written by `maculactl resolver install`; `maculactl resolver uninstall` removes it."
HOSTS_BEGIN = "# BEGIN maculad"
HOSTS_END = "# END maculad"


class ResolverError(Exception):
    """A resolver or hosts file cannot be written or removed; the message says why."""


@dataclass(frozen=True, slots=True)
class PlannedFile:
    path: PurePosixPath  # absolute, relative to the root the plan is applied under
    content: str


@dataclass(frozen=True, slots=True)
class ResolverPlan:
    backend: ResolverBackend
    files: tuple[PlannedFile, ...]
    reload: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FileAction:
    path: Path
    action: Literal["written", "unchanged", "removed", "absent", "would write", "would remove"]


def default_backend(*, platform: str = sys.platform, root: Path = Path("/")) -> ResolverBackend:
    if platform == "darwin":
        return "macos"
    if (root / "run/systemd/resolve").is_dir():
        return "systemd-resolved"
    if (root / "etc/NetworkManager/dnsmasq.d").is_dir():
        return "networkmanager"
    return "systemd-resolved"


def _fmt(b: Backend) -> str:
    return str(b)


def resolver_plan(backend: ResolverBackend, *, domain: str, listen: Sequence[Backend]) -> ResolverPlan:
    """The files that send `domain` (and only it) to maculad's DNS `listen` addresses."""
    if not listen:
        raise ResolverError("maculad has no DNS listen address to point the resolver at")
    for b in listen:
        try:
            ipaddress.ip_address(b.host)
        except ValueError:
            raise ResolverError(f"DNS listen address {b} is not an IP address") from None
    domain = domain.strip(".").lower()
    notes: list[str] = []
    if backend == "systemd-resolved":
        dns = " ".join(_fmt(b) for b in listen)
        content = f"{MARKER}\n[Resolve]\nDNS={dns}\nDomains=~{domain}\n"
        if any(b.port != 53 for b in listen):
            notes.append("DNS= with a port needs systemd-resolved 246 or newer (`resolvectl --version`)")
        if domain.endswith(".local") or domain == "local":
            notes.append(f"{domain} is under .local: with nss-mdns, put `dns` before `mdns4_minimal` in "
                         "/etc/nsswitch.conf (maculactl doctor checks this)")
        return ResolverPlan(
            backend=backend,
            files=(PlannedFile(PurePosixPath("/etc/systemd/resolved.conf.d/macula.conf"), content),),
            reload=(("systemctl", "restart", "systemd-resolved"),),
            notes=tuple(notes),
        )
    if backend == "networkmanager":
        servers = "".join(f"server=/{domain}/{b.host}#{b.port}\n" for b in listen)
        return ResolverPlan(
            backend=backend,
            files=(
                PlannedFile(PurePosixPath("/etc/NetworkManager/dnsmasq.d/macula.conf"), f"{MARKER}\n{servers}"),
                PlannedFile(PurePosixPath("/etc/NetworkManager/conf.d/macula-dnsmasq.conf"),
                            f"{MARKER}\n[main]\ndns=dnsmasq\n"),
            ),
            reload=(("systemctl", "restart", "NetworkManager"),),
            notes=("NetworkManager switches to its dnsmasq plugin (dns=dnsmasq) for this",),
        )
    if backend == "macos":
        port = listen[0].port
        same = [b for b in listen if b.port == port]
        if len(same) < len(listen):
            notes.append(f"/etc/resolver files have one port for all nameservers: using port {port}")
        lines = "".join(f"nameserver {b.host}\n" for b in same)
        return ResolverPlan(
            backend=backend,
            files=(PlannedFile(PurePosixPath("/etc/resolver") / domain, f"{MARKER}\n{lines}port {port}\n"),),
            reload=(("dscacheutil", "-flushcache"), ("killall", "-HUP", "mDNSResponder")),
            notes=tuple(notes),
        )
    raise ResolverError(f"unknown resolver backend {backend!r}: use one of {', '.join(RESOLVER_BACKENDS)}")


def under(root: Path, path: PurePosixPath) -> Path:
    return root / str(path).lstrip("/")


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write(path, text.encode("utf-8"), mode)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResolverError(f"cannot read {path}: {exc}") from None


def install(plan: ResolverPlan, *, root: Path, dry_run: bool = False) -> list[FileAction]:
    """Write the plan's files under `root`; never overwrite a file maculactl did not write."""
    targets = [(under(root, f.path), f.content) for f in plan.files]
    for path, _ in targets:
        old = _read(path)
        if old is not None and MARKER not in old:
            raise ResolverError(f"{path} exists and was not written by maculactl; "
                                "move it away or merge by hand")
    out: list[FileAction] = []
    for path, content in targets:
        if _read(path) == content:
            out.append(FileAction(path, "unchanged"))
        elif dry_run:
            out.append(FileAction(path, "would write"))
        else:
            try:
                atomic_write_text(path, content)
            except OSError as exc:
                raise ResolverError(f"cannot write {path}: {exc.strerror or exc}") from None
            out.append(FileAction(path, "written"))
    return out


def uninstall(plan: ResolverPlan, *, root: Path, dry_run: bool = False) -> list[FileAction]:
    """Remove the plan's files under `root` that still carry the marker; refuse others."""
    out: list[FileAction] = []
    targets = [under(root, f.path) for f in plan.files]
    for path in targets:
        old = _read(path)
        if old is not None and MARKER not in old:
            raise ResolverError(f"{path} was not written by maculactl (no marker); leaving it alone")
    for path in targets:
        if _read(path) is None:
            out.append(FileAction(path, "absent"))
        elif dry_run:
            out.append(FileAction(path, "would remove"))
        else:
            try:
                path.unlink()
            except OSError as exc:
                raise ResolverError(f"cannot remove {path}: {exc.strerror or exc}") from None
            out.append(FileAction(path, "removed"))
    return out


# --------------------------------------------------------------------------- hosts


def hosts_block(routes: Iterable[tuple[str, str]]) -> str:
    """`(name, ip)` pairs → the marked block (wildcards cannot be listed, so they become comments)."""
    lines = [f"{HOSTS_BEGIN} (managed by `maculactl hosts --apply`; `maculactl hosts --remove` removes it)"]
    for name, ip in sorted(set(routes), key=lambda r: (ipaddress.ip_address(r[1]), r[0])):
        if name.startswith("*."):
            lines.append(f"# {name} -> {ip}: /etc/hosts cannot hold wildcards; use `maculactl resolver install`")
        else:
            lines.append(f"{ip}\t{name}")
    lines.append(HOSTS_END)
    return "\n".join(lines) + "\n"


def _find_block(text: str) -> tuple[int, int] | None:
    """Line indexes [begin, end] of the block, None when absent; ResolverError when broken."""
    lines = text.splitlines()
    begins = [i for i, ln in enumerate(lines) if ln.startswith(HOSTS_BEGIN)]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == HOSTS_END]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ResolverError(f"the hosts file has unbalanced '{HOSTS_BEGIN}' / '{HOSTS_END}' markers; "
                            "fix them by hand")
    return begins[0], ends[0]


def apply_hosts_block(text: str, block: str) -> str:
    """Replace the marked block in `text` (or append it); applying twice changes nothing."""
    found = _find_block(text)
    lines = text.splitlines(keepends=True)
    if found is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    b, e = found
    return "".join(lines[:b]) + block + "".join(lines[e + 1:])


def remove_hosts_block(text: str) -> str:
    found = _find_block(text)
    if found is None:
        return text
    b, e = found
    lines = text.splitlines(keepends=True)
    return "".join(lines[:b]) + "".join(lines[e + 1:])


def write_hosts(path: Path, new_text: str) -> bool:
    """Write `new_text` to the hosts file if it differs. In place, because /etc/hosts is often
    a bind mount (containers) where rename fails; the content is complete before the write."""
    old = _read(path)
    if old == new_text:
        return False
    try:
        with open(path, "r+" if old is not None else "w", encoding="utf-8") as f:
            f.seek(0)
            f.write(new_text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ResolverError(f"cannot write {path}: {exc.strerror or exc}") from None
    return True
