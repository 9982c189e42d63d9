"""Checks of a config against this host: the ones the file alone cannot answer.

The schema (maculad/config.py) judges the file; these need the machine, and `run` (at start
and on every reload) and `check-config` ask the same list, so check-config refuses what run
would, short of binding:

- every listen address (`dns.listen`, `metrics.listen`, `web.listen`) is an address of this
  host: loopback, a wildcard, or one a UDP socket binds on with port 0 (which takes no real
  port, so it is safe while the daemon itself holds the real one);
- `control.group` exists (the control socket's owner rule, `control.peercred.resolve_group`);
- every host name of a config route's backend resolves (Docker and Kubernetes names are not
  judged here: they may appear later);
- `state_dir` can be a directory and `allocations.json` in it is not a directory.

`problems(cfg, facts)` is pure — what it knows of the host comes in `HostFacts` — so the
rules are table-tested; `this_host()` is the real machine; `check_host(cfg)` raises the first
problem as a `ConfigError` naming the key. Blocking I/O: the daemon runs it in a thread.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from maculad.config import Config, ConfigError
from maculad.control.peercred import resolve_group
from maculad.core.net import Backend


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the checks ask of the machine; each answers None (fine) or the reason."""

    local: Callable[[str], str | None]
    group: Callable[[str], str | None]
    resolve: Callable[[str], str | None]
    state_dir: Callable[[Path], str | None]


def _listen_addresses(cfg: Config) -> Iterator[tuple[str, Backend]]:
    for i, addr in enumerate(cfg.dns.listen):
        yield f"dns.listen[{i}]", addr
    if cfg.metrics.listen is not None:
        yield "metrics.listen", cfg.metrics.listen
    if cfg.web.enabled and cfg.web.listen is not None:
        yield "web.listen", cfg.web.listen


def _backends(cfg: Config) -> Iterator[tuple[str, Backend]]:
    for n, r in enumerate(cfg.routes):
        for k in ("http", "https"):
            b: Backend | None = getattr(r, k)
            if b is not None:
                yield f"route[{n}].{k}", b
        for proto, ports in (("tcp", r.tcp), ("udp", r.udp)):
            for port, b in ports:
                yield f"route[{n}].{proto}.{port}", b


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def problems(cfg: Config, facts: HostFacts) -> list[tuple[str, str]]:
    """Every (key, reason) the host objects to, in the order of the file."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str | None] = {}
    for key, addr in _listen_addresses(cfg):
        if addr.host not in seen:
            seen[addr.host] = facts.local(addr.host)
        if seen[addr.host] is not None:
            out.append((key, f"{addr.host} is not an address of this host ({seen[addr.host]})"))
    if cfg.control.group is not None:
        reason = facts.group(cfg.control.group)
        if reason is not None:
            out.append(("control.group", reason))
    resolved: dict[str, str | None] = {}
    for key, b in _backends(cfg):
        if _is_ip(b.host):
            continue
        if b.host not in resolved:
            resolved[b.host] = facts.resolve(b.host)
        if resolved[b.host] is not None:
            out.append((key, f"backend host {b.host!r} does not resolve ({resolved[b.host]})"))
    reason = facts.state_dir(cfg.state_dir)
    if reason is not None:
        out.append(("state_dir", reason))
    return out


def check_host(cfg: Config, facts: HostFacts | None = None) -> None:
    """Raise the first problem as a ConfigError (file, key, reason)."""
    found = problems(cfg, facts or this_host())
    if found:
        key, reason = found[0]
        raise ConfigError(str(cfg.path), key, reason)


# --------------------------------------------------------------------------- the real host


def local_problem(ip: str) -> str | None:
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback or addr.is_unspecified:
        return None
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no interface has it"
            return exc.strerror or str(exc)
    return None


def group_problem(name: str) -> str | None:
    try:
        resolve_group(name)
    except LookupError as exc:
        return f"{exc} (create it: systemd-sysusers, or groupadd {name})"
    return None


def resolve_problem(host: str) -> str | None:
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return str(exc.args[1]) if isinstance(exc, socket.gaierror) and len(exc.args) > 1 else str(exc)
    return None


def state_dir_problem(path: Path) -> str | None:
    p = path
    while True:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                return f"{p} is not a directory" if p == path else f"{p} (above {path}) is not a directory"
            break
        if p.parent == p:
            break
        p = p.parent
    allocations = path / "allocations.json"
    if allocations.is_dir():
        return f"{allocations} is a directory, not the allocations file"
    return None


def this_host() -> HostFacts:
    return HostFacts(local=local_problem, group=group_problem, resolve=resolve_problem,
                     state_dir=state_dir_problem)
