"""Per-name leaf certificates: minted on demand, cached in memory and on disk.

`LeafStore.get(names)` returns a `Leaf` whose file (`<ca_dir>/leaves/<name>.pem`,
key then certificate, 0600) `ssl.SSLContext.load_cert_chain` can read. A leaf
is reused while it has more than `RENEW_BEFORE` left; then, or when the file on
disk is unreadable, corrupt, for other names, not signed by this root or its
key does not match, it is issued again (each reason counted). The memory cache
is an LRU bounded by `max_entries`; the disk holds one file per name, and
names come only from routes the relay serves, so it is bounded by the table.

A file on disk is first judged by the directory's manifest
(`maculad.pki.manifest`, read once, then kept in memory): when its entry
vouches for the file's bytes, names, root and dates, the leaf is used as it is
and `cryptography` is not imported (`vouched` answers only that way, for the
signer: `maculad.pki.signer`). Anything else goes through
`maculad.pki.ca` (imported then, with the CA's key via `LazyCA.loaded()`): the
same checks and reasons as without a manifest, and the result is recorded.

Names are checked before they become file names: only lower-case DNS names
(with an optional leading `*.`) under the domain pass, so a hostile SNI can
neither escape the directory nor make the store sign anything.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from maculad.core.fsutil import atomic_write
from maculad.pki import manifest
from maculad.pki.manifest import LeafEntry
from maculad.pki.policy import RENEW_BEFORE, CAError, valid_name
from maculad.pki.root import LazyCA

if TYPE_CHECKING:
    from maculad.pki.ca import CA

__all__ = ["IssueReason", "Leaf", "LeafStore", "valid_name"]

log = structlog.get_logger("maculad.pki")

IssueReason = str  # "new" | "renew" | "corrupt"


@dataclass(frozen=True, slots=True)
class Leaf:
    names: tuple[str, ...]
    path: Path
    not_after: dt.datetime
    serial: int
    fingerprint: str


def _file_name(names: tuple[str, ...]) -> str:
    return names[0].replace("*", "_wildcard_") + ".pem"


def _leaf(path: Path, entry: LeafEntry) -> Leaf:
    return Leaf(names=entry.names, path=path, not_after=entry.not_after, serial=entry.serial,
                fingerprint=entry.fingerprint)


class LeafStore:
    def __init__(
        self,
        *,
        ca: LazyCA | CA,
        directory: Path,
        max_entries: int = 4096,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_issue: Callable[[IssueReason], None] = lambda _r: None,
    ) -> None:
        self.ca = ca if isinstance(ca, LazyCA) else LazyCA.of(ca)
        self.directory = directory
        self.max_entries = max_entries
        self._clock = clock
        self._on_issue = on_issue
        self._mem: OrderedDict[tuple[str, ...], Leaf] = OrderedDict()
        self._manifest: dict[str, LeafEntry] | None = None  # the directory's manifest, read on first use
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, names: tuple[str, ...]) -> Leaf:
        """The leaf for `names` (the first names the file); ValueError for a name it must not sign, or when a
        leaf must be signed and the root cannot be loaded."""
        for n in names:
            if not valid_name(n, self.ca.domain):
                raise ValueError(f"{n!r} is not a name under {self.ca.domain}")
        now = self._clock()
        with self._lock:
            leaf = self._mem.get(names)
            if leaf is not None and leaf.not_after - now > RENEW_BEFORE:
                self._mem.move_to_end(names)
                return leaf
            try:
                leaf = self._load_or_issue(names, now, renewing=leaf is not None)
            except CAError as exc:
                raise ValueError(f"the root cannot sign: {exc}") from None
            self._remember(names, leaf)
            return leaf

    def vouched(self, names: tuple[str, ...]) -> Leaf | None:
        """The leaf for `names` when it needs no `cryptography`: in memory and not due, or a file the manifest
        vouches for (then kept in memory); else None (`get` would check or issue it)."""
        if not names or not all(valid_name(n, self.ca.domain) for n in names):
            return None
        now = self._clock()
        with self._lock:
            leaf = self._mem.get(names)
            if leaf is not None and leaf.not_after - now > RENEW_BEFORE:
                return leaf
            file = _file_name(names)
            try:
                raw = (self.directory / file).read_bytes()
            except OSError:
                return None
            entry = self._vouched(file, raw, names, now)
            if entry is None:
                return None
            leaf = _leaf(self.directory / file, entry)
            self._remember(names, leaf)
            return leaf

    def refresh(self) -> None:
        """Read the manifest again on next use: another process (`maculad.pki.sign`) recorded leaves in it."""
        with self._lock:
            self._manifest = None

    def _remember(self, names: tuple[str, ...], leaf: Leaf) -> None:
        self._mem[names] = leaf
        self._mem.move_to_end(names)
        while len(self._mem) > self.max_entries:
            self._mem.popitem(last=False)

    def _vouched(self, file: str, raw: bytes, names: tuple[str, ...], now: dt.datetime) -> LeafEntry | None:
        if self._manifest is None:
            self._manifest = manifest.read_leaves(self.directory)
        entry = self._manifest.get(file)
        problem = manifest.leaf_problem(entry, sha256=manifest.sha256(raw), names=names, ca=self.ca.fingerprint,
                                        now=now)
        if problem is not None:
            log.debug("tls_leaf_check", file=file, manifest=problem)
            return None
        return entry

    def _record(self, file: str, entry: LeafEntry) -> None:
        self._manifest = manifest.record_leaf(self.directory, file, entry)

    def _load_or_issue(self, names: tuple[str, ...], now: dt.datetime, *, renewing: bool) -> Leaf:
        file = _file_name(names)
        path = self.directory / file
        reason: IssueReason = "renew" if renewing else "new"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError:
            raw, reason = None, "corrupt"
        if raw is not None:
            entry = self._vouched(file, raw, names, now)
            if entry is not None:
                return _leaf(path, entry)
            from maculad.pki.ca import check_leaf  # cryptography from here on

            verdict = check_leaf(self.ca.loaded(), raw, names, now=now)
            if isinstance(verdict, LeafEntry):
                self._record(file, verdict)
                return _leaf(path, verdict)
            reason = verdict
        from maculad.pki.ca import mint_leaf

        data, entry = mint_leaf(self.ca.loaded(), names, now=now)
        atomic_write(path, data, mode=0o600)
        self._record(file, entry)
        self._on_issue(reason)
        return _leaf(path, entry)
