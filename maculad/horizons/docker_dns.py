"""`maculactl docker-dns install|uninstall`: G as the DNS server of every container. Pure + one file write.

Containers started any other way than the shipped compose file (`dns: [G]`)
get G from the engine's default: `"dns": [G]` in `/etc/docker/daemon.json`.
`with_dns(text, g)` / `without_dns(text, g)` edit the JSON text: every other
key is kept (in its order), G goes first in an existing `dns` list (other
servers stay behind it), and uninstall removes only G (and the key when it is
left empty). A file that is not a JSON object is a `DaemonJSONError`, never
overwritten. `apply` writes atomically under `--root DIR` with the old file
kept as `daemon.json.maculad-backup`; dockerd reads the file only when it
starts, so the caller says that it must be restarted. Stdlib only: maculactl
imports it without the daemon's dependencies.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DAEMON_JSON = Path("/etc/docker/daemon.json")
BACKUP_SUFFIX = ".maculad-backup"


class DaemonJSONError(ValueError):
    """daemon.json cannot be edited safely (the reason is in the message)."""


@dataclass(frozen=True, slots=True)
class Change:
    path: Path
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _load(text: str | None, path: Path) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DaemonJSONError(f"{path} is not valid JSON ({exc}); fix it first, nothing was changed") from None
    if not isinstance(data, dict):
        raise DaemonJSONError(f"{path} is not a JSON object; nothing was changed")
    dns = data.get("dns")
    if dns is not None and not (isinstance(dns, list) and all(isinstance(x, str) for x in dns)):
        raise DaemonJSONError(f"{path}: \"dns\" is not a list of addresses; nothing was changed")
    return data


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def with_dns(text: str | None, g: str, *, path: Path = DAEMON_JSON) -> str:
    ipaddress.ip_address(g)
    data = _load(text, path)
    servers = [x for x in data.get("dns", []) if x != g]
    data["dns"] = [g, *servers]
    return text if text is not None and _load(text, path) == data else _dump(data)


def without_dns(text: str | None, g: str, *, path: Path = DAEMON_JSON) -> str | None:
    """The file without G; None when there was no file and nothing to remove."""
    if text is None:
        return None
    data = _load(text, path)
    if g not in data.get("dns", []):
        return text
    rest = [x for x in data["dns"] if x != g]
    if rest:
        data["dns"] = rest
    else:
        del data["dns"]
    return _dump(data)


def plan(action: str, g: str, *, root: Path | None = None) -> Change:
    """What `install`/`uninstall` would do to `<root>/etc/docker/daemon.json`."""
    path = (root / DAEMON_JSON.relative_to("/")) if root is not None else DAEMON_JSON
    try:
        before: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        before = None
    except OSError as exc:
        raise DaemonJSONError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if action == "install":
        after = with_dns(before, g, path=path)
    else:
        removed = without_dns(before, g, path=path)
        after = removed if removed is not None else ""
        if removed is None:
            return Change(path, None, "")
    return Change(path, before, after)


def apply(change: Change) -> Path | None:
    """Write `change` atomically; returns the backup of the old file (None when there was none)."""
    if not change.changed or (change.before is None and change.after == ""):
        return None
    change.path.parent.mkdir(parents=True, exist_ok=True)
    backup: Path | None = None
    if change.before is not None:
        backup = change.path.with_name(change.path.name + BACKUP_SUFFIX)
        backup.write_text(change.before, encoding="utf-8")
    mode = change.path.stat().st_mode & 0o777 if change.path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=change.path.parent, prefix=".daemon.json.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(change.after)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, change.path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return backup
