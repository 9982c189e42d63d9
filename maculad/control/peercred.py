"""Who is on the other end of the control socket, and what may they do.

`read_peercred(sock)` asks the kernel (Linux `SO_PEERCRED`, macOS
`LOCAL_PEERCRED` + `LOCAL_PEERPID`, i.e. what `getpeereid` wraps) for the
peer's uid, gid, pid and, where the kernel tells, its groups. `peer_groups`
completes the group list from `/proc/PID/status` or the user database.

`authorize` is the whole policy as a pure function of numbers: anyone who can
connect may read (the socket's 0660 mode and group already decide who can
connect); acting needs root, the daemon's own uid, or membership of the
configured control group. The returned `AccessDecision` names the rule that applied,
so a 403 tells the user exactly what would let them in.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Literal

Access = Literal["read", "act"]

# macOS <sys/un.h>: SOL_LOCAL, LOCAL_PEERCRED, LOCAL_PEERPID; struct xucred.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_LOCAL_PEERPID = 0x002
_XUCRED = struct.Struct("=IIh2x16I")  # cr_version, cr_uid, cr_ngroups, (pad), cr_groups[16]


@dataclass(frozen=True, slots=True)
class PeerCred:
    uid: int
    gid: int
    pid: int | None = None
    groups: tuple[int, ...] | None = None  # when the kernel reports them (macOS)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    rule: str


def authorize(
    access: Access,
    *,
    uid: int | None,
    groups: frozenset[int],
    daemon_uid: int,
    group_gid: int | None,
    group_name: str | None = None,
) -> AccessDecision:
    """May a peer with `uid` and `groups` perform `access`? Pure; `uid=None` = unknown peer."""
    if access == "read":
        return AccessDecision(True, "read: anyone who can connect to the socket")
    if uid is None:
        return AccessDecision(False, "acting needs known peer credentials, and the kernel gave none")
    if uid == 0:
        return AccessDecision(True, "act: root")
    if uid == daemon_uid:
        return AccessDecision(True, f"act: the daemon's own user (uid {daemon_uid})")
    label = f"group {group_name!r}" if group_name else f"gid {group_gid}"
    if group_gid is not None and group_gid in groups:
        return AccessDecision(True, f"act: member of {label}")
    who = f"root, the daemon's user (uid {daemon_uid})"
    if group_gid is None:
        return AccessDecision(False, f"acting needs {who}; no control.group is configured")
    return AccessDecision(False, f"acting needs {who} or membership of {label}")


def read_peercred(sock: socket.socket) -> PeerCred | None:
    """The connected peer's credentials, or None where the platform cannot tell."""
    try:
        if sys.platform.startswith("linux"):
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
            return PeerCred(uid=uid, gid=gid, pid=pid or None)
        if sys.platform == "darwin":
            raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
            _version, uid, ngroups, *gids = _XUCRED.unpack(raw[: _XUCRED.size])
            groups = tuple(gids[: max(0, min(ngroups, 16))])
            try:
                pid_raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4)
                pid: int | None = struct.unpack("i", pid_raw)[0]
            except OSError:
                pid = None
            return PeerCred(uid=uid, gid=groups[0] if groups else -1, pid=pid, groups=groups)
    except (OSError, struct.error):
        return None
    return None


def proc_groups(status_text: str) -> frozenset[int] | None:
    """Supplementary groups from the text of `/proc/PID/status` (its `Groups:` line)."""
    for line in status_text.splitlines():
        if line.startswith("Groups:"):
            try:
                return frozenset(int(g) for g in line.split()[1:])
            except ValueError:
                return None
    return None


def peer_groups(cred: PeerCred) -> frozenset[int]:
    """Every group the peer is in: kernel-reported, else /proc/PID/status, else the user database."""
    if cred.groups is not None:
        return frozenset(cred.groups) | {cred.gid}
    if cred.pid:
        try:
            with open(f"/proc/{cred.pid}/status", encoding="utf-8") as f:
                found = proc_groups(f.read())
            if found is not None:
                return found | {cred.gid}
        except OSError:
            pass
    try:
        name = pwd.getpwuid(cred.uid).pw_name
        return frozenset(os.getgrouplist(name, cred.gid))
    except (KeyError, OSError):
        return frozenset({cred.gid})


def resolve_group(name: str) -> int:
    """A group name (or numeric gid) → gid. Raises LookupError with the reason."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise LookupError(f"group {name!r} does not exist") from None
