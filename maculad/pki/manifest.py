"""What the CA directory vouches for, so a daemon whose certificates are all good never imports `cryptography`.

Next to the files sits `manifest.json`: in `<state_dir>/ca/` one `root` entry
(the sha256 of `ca.pem` and of `ca-key.pem`, the domain, the root's DER
fingerprint and `not_after`), in `ca/leaves/` one entry per leaf file (its
sha256, the names, `not_before`/`not_after`, serial, fingerprint, and the
fingerprint of the root that signed it). An entry is written only by
`maculad.pki.ca` after it made or checked the file with `cryptography`, so
while a file's bytes still hash to its entry, what the entry says was true
of it. `root_problem` and `leaf_problem` are the pure rule: None means "good
as it is", anything else (no entry, other bytes, another domain, other
names, another root, expired or due for renewal per `policy.leaf_due`) is the
reason the caller checks the file with `cryptography`, exactly as without a
manifest. A manifest that is missing, too big, not JSON or of another shape
reads as empty (an entry of the wrong shape as absent): never trusted, never
a crash. Writes are atomic (`core.fsutil`) and best effort: a CA directory
that cannot be written only costs the next start the `cryptography` check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from maculad.core.fsutil import atomic_write
from maculad.pki.policy import leaf_due

log = structlog.get_logger("maculad.pki")

FILE = "manifest.json"
VERSION = 1
#: A manifest larger than this is not read (it is rebuilt by the `cryptography` checks).
MAX_BYTES = 8 * 1024 * 1024
#: Leaves beyond this many are not recorded (each is then checked with `cryptography` on load).
MAX_LEAVES = 10_000

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){31}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class RootEntry:
    sha256: str  # of ca.pem's bytes
    key_sha256: str  # of ca-key.pem's bytes
    domain: str
    fingerprint: str  # SHA-256 of the root's DER, colon hex: what leaves record as their issuer
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class LeafEntry:
    sha256: str  # of the leaf file's bytes (key, then certificate)
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    fingerprint: str
    ca: str  # the fingerprint of the root that signed it


# -- the rule (pure)

def root_problem(entry: RootEntry | None, *, sha256: str, key_sha256: str, domain: str,
                 now: dt.datetime) -> str | None:
    """None when `entry` vouches for the root files with these hashes, for `domain`, at `now`; else why not."""
    if entry is None:
        return "no entry"
    if entry.sha256 != sha256 or entry.key_sha256 != key_sha256:
        return "files changed"
    if entry.domain != domain:
        return "other domain"
    if entry.not_after <= now:
        return "expired"
    return None


def leaf_problem(entry: LeafEntry | None, *, sha256: str, names: tuple[str, ...], ca: str,
                 now: dt.datetime) -> str | None:
    """None when `entry` vouches for a leaf file with hash `sha256` for exactly `names`, signed by the root
    with fingerprint `ca`, and not due for renewal at `now`; else why not."""
    if entry is None:
        return "no entry"
    if entry.sha256 != sha256:
        return "file changed"
    if entry.names != names:
        return "other names"
    if entry.ca != ca:
        return "other root"
    if leaf_due(entry.not_before, entry.not_after, now):
        return "due"
    return None


# -- the format (pure)

def _when(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _document(raw: bytes, key: str) -> Mapping[str, Any] | None:
    if len(raw) > MAX_BYTES:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    part = doc.get(key)
    return part if isinstance(part, dict) else None


def _root_entry(d: object) -> RootEntry | None:
    if not isinstance(d, dict):
        return None
    sha, key_sha, domain, fp = d.get("sha256"), d.get("key_sha256"), d.get("domain"), d.get("fingerprint")
    not_after = _when(d.get("not_after"))
    if not (isinstance(sha, str) and _HEX64.match(sha) and isinstance(key_sha, str) and _HEX64.match(key_sha)
            and isinstance(domain, str) and domain and isinstance(fp, str) and _FINGERPRINT.match(fp)
            and not_after is not None):
        return None
    return RootEntry(sha256=sha, key_sha256=key_sha, domain=domain, fingerprint=fp, not_after=not_after)


def _leaf_entry(d: object) -> LeafEntry | None:
    if not isinstance(d, dict):
        return None
    sha, names, serial, fp, ca = d.get("sha256"), d.get("names"), d.get("serial"), d.get("fingerprint"), d.get("ca")
    not_before, not_after = _when(d.get("not_before")), _when(d.get("not_after"))
    if not (isinstance(sha, str) and _HEX64.match(sha)
            and isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and isinstance(serial, int) and not isinstance(serial, bool) and serial > 0
            and isinstance(fp, str) and _FINGERPRINT.match(fp) and isinstance(ca, str) and _FINGERPRINT.match(ca)
            and not_before is not None and not_after is not None):
        return None
    return LeafEntry(sha256=sha, names=tuple(names), not_before=not_before, not_after=not_after, serial=serial,
                     fingerprint=fp, ca=ca)


def parse_root(raw: bytes) -> RootEntry | None:
    """The root entry of a CA directory's manifest; None when there is none that can be read."""
    doc = _document(raw, "root")
    return _root_entry(doc) if doc is not None else None


def parse_leaves(raw: bytes) -> dict[str, LeafEntry]:
    """File name → entry of a leaves directory's manifest; entries that cannot be read are left out."""
    doc = _document(raw, "leaves")
    if doc is None:
        return {}
    out: dict[str, LeafEntry] = {}
    for file, d in doc.items():
        entry = _leaf_entry(d)
        if isinstance(file, str) and entry is not None:
            out[file] = entry
    return out


def _render(key: str, body: object) -> bytes:
    return (json.dumps({"version": VERSION, key: body}, indent=1, sort_keys=True) + "\n").encode()


def render_root(entry: RootEntry) -> bytes:
    return _render("root", {"sha256": entry.sha256, "key_sha256": entry.key_sha256, "domain": entry.domain,
                            "fingerprint": entry.fingerprint, "not_after": entry.not_after.isoformat()})


def render_leaves(entries: Mapping[str, LeafEntry]) -> bytes:
    return _render("leaves", {
        file: {"sha256": e.sha256, "names": list(e.names), "not_before": e.not_before.isoformat(),
               "not_after": e.not_after.isoformat(), "serial": e.serial, "fingerprint": e.fingerprint, "ca": e.ca}
        for file, e in entries.items()
    })


# -- the file (thin I/O)

def _read(directory: Path) -> bytes:
    path = directory / FILE
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_BYTES + 1)
    except OSError:  # missing, unreadable, a directory: as good as empty
        return b""


def _write(directory: Path, data: bytes) -> None:
    try:
        atomic_write(directory / FILE, data, mode=0o600)  # only the daemon reads it
    except OSError as exc:
        log.warning("tls_manifest_unwritten", path=str(directory / FILE), error=exc.strerror or str(exc),
                    effect="the next start checks the certificates with cryptography")


def read_root(ca_dir: Path) -> RootEntry | None:
    return parse_root(_read(ca_dir))


def write_root(ca_dir: Path, entry: RootEntry) -> None:
    if read_root(ca_dir) != entry:
        _write(ca_dir, render_root(entry))


def read_leaves(directory: Path) -> dict[str, LeafEntry]:
    return parse_leaves(_read(directory))


def record_leaf(directory: Path, file: str, entry: LeafEntry) -> dict[str, LeafEntry]:
    """Add or replace the entry for `file` (merged with what is on disk now); the entries after."""
    entries = read_leaves(directory)
    if entries.get(file) == entry:
        return entries
    if file not in entries and len(entries) >= MAX_LEAVES:
        return entries
    entries[file] = entry
    _write(directory, render_leaves(entries))
    return entries
