"""Which control socket `maculactl` talks to: the daemon wherever it was started.

The candidates are pure (`candidates()`): `--socket PATH`, else `--config FILE`'s `control.socket`,
else `$MACULAD_SOCKET` (each `~`-expanded, and then the only one tried); with none of them, as root first
the system socket (`ControlConfig`'s default) and then root's own socket of `config/maculad-user.toml`
(what `scripts/run.sh` starts, run as root), otherwise those two the other way round. `locate()`
connects to each in turn and takes the first that answers; when none does it raises
`DaemonUnavailable` with one line that names every path tried, why each failed, and how to point
`maculactl` elsewhere. A socket that exists but
may not be opened is named as a permission problem, never as "not running".

Standard library plus `maculad.config` (itself stdlib only), so `maculactl` starts fast.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from maculad.config import ConfigError, ControlConfig, load_config

#: `control.socket` of config/maculad-user.toml (tests/test_ctl_discovery.py keeps the two equal).
USER_SOCKET = "~/.local/state/maculad/maculad.sock"
SYSTEM_SOCKET = str(ControlConfig().socket)
HOW_TO_POINT = "point maculactl at its socket with --socket PATH, MACULAD_SOCKET=PATH or --config FILE"

Outcome = Literal["answers", "missing", "stale", "denied", "not a socket", "timeout", "error"]

_WHY: dict[Outcome, str] = {
    "answers": "answers",
    "missing": "no socket",
    "stale": "a stale socket nobody answers on",
    "denied": "permission denied",
    "not a socket": "not a socket",
    "timeout": "no answer within 2 s",
    "error": "cannot connect",
}


class DaemonUnavailable(Exception):
    """The daemon cannot be reached; `str()` is the one line to show. `denied`: a socket is there
    but this user may not open it (a permission problem, not a daemon that is down)."""

    def __init__(self, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        self.denied = denied

    def amended(self, more: str) -> DaemonUnavailable:
        """The same failure with `more` appended to its line."""
        return DaemonUnavailable(f"{self}{more}", denied=self.denied)


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    origin: str  # where the path came from, as a person would say it

    def shown(self) -> str:
        return f"{self.path} ({self.origin})"


def candidates(*, socket_opt: str | None, config_socket: str | None, config_file: str | None,
               env: Mapping[str, str], euid: int,
               expand: Callable[[str], str] = os.path.expanduser) -> tuple[Candidate, ...]:
    """The sockets to try, in order. `config_socket` is `--config FILE`'s control.socket."""
    if socket_opt:
        return (Candidate(expand(socket_opt), "--socket"),)
    if config_socket:
        return (Candidate(config_socket, f"control.socket of {config_file}"),)
    if env.get("MACULAD_SOCKET"):
        return (Candidate(expand(env["MACULAD_SOCKET"]), "MACULAD_SOCKET"),)
    system = Candidate(SYSTEM_SOCKET, "system default")
    user = Candidate(expand(USER_SOCKET), "as in config/maculad-user.toml")
    return (system, user) if euid == 0 else (user, system)


def config_socket(path: str) -> str:
    """`control.socket` of the config file at `path` (already `~`-expanded by the schema)."""
    try:
        return str(load_config(path).control.socket)
    except ConfigError as exc:
        raise DaemonUnavailable(f"--config {path}: {exc}") from None


def probe(path: str, *, timeout: float = 2.0) -> Outcome:
    """Does something accept a connection on the unix socket at `path`?"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "denied"
    except ConnectionRefusedError:
        return "stale" if _is_socket(path) else "not a socket"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        if exc.errno in (errno.ENOTSOCK, errno.ENOTDIR):
            return "not a socket"
        return "error"
    finally:
        s.close()
    return "answers"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def group_hint(path: str) -> str:
    """How to get access to the socket at `path`: join the group that owns it, or use sudo."""
    try:
        name = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "; use sudo"
    return f"; join its group: sudo usermod -aG {name} $USER (then log in again), or use sudo"


def unreachable(tried: Sequence[tuple[Candidate, Outcome]], *, hint: Callable[[str], str] = group_hint) -> str:
    """The one line for "nothing answered". Pure but for `hint` (it reads the socket's group)."""
    denied = next((c for c, o in tried if o == "denied"), None)
    if denied is not None:
        others = [f"{c.path}: {_WHY[o]}" for c, o in tried if c is not denied]
        also = f" (also tried {', '.join(others)})" if others else ""
        return f"cannot open {denied.path}: permission denied{hint(denied.path)}{also}"
    if len(tried) == 1:
        c, o = tried[0]
        what = "no control socket at" if o == "missing" else f"{_WHY[o]}:"
        return f"maculad is not running: {what} {c.shown()}; {HOW_TO_POINT}"
    listed = ", ".join(f"{c.shown()}: {_WHY[o]}" for c, o in tried)
    return f"maculad is not running: tried {listed}; {HOW_TO_POINT}"


def locate(found: Sequence[Candidate], *, check: Callable[[str], Outcome] = probe) -> str:
    """The first candidate that answers, else `DaemonUnavailable` naming all of them."""
    tried: list[tuple[Candidate, Outcome]] = []
    for c in found:
        outcome = check(c.path)
        if outcome == "answers":
            return c.path
        tried.append((c, outcome))
    raise DaemonUnavailable(unreachable(tried), denied=any(o == "denied" for _, o in tried))
