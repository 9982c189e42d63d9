"""Per-name leaf certificates: minted on demand, cached in memory and on disk.

`LeafStore.get(names)` returns a `Leaf` whose file (`<ca_dir>/leaves/<name>.pem`,
key then certificate, 0600) `ssl.SSLContext.load_cert_chain` can read. A leaf
is reused while it has more than `RENEW_BEFORE` left; then, or when the file on
disk is unreadable, corrupt, for other names, not signed by this root or its
key does not match, it is issued again (each reason counted). The memory cache
is an LRU bounded by `max_entries`; the disk holds one file per name, and
names come only from routes the relay serves, so it is bounded by the table.

Names are checked before they become file names: only lower-case DNS names
(with an optional leading `*.`) under the domain pass, so a hostile SNI can
neither escape the directory nor make the store sign anything.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from maculad.core.fsutil import atomic_write
from maculad.pki.ca import CA, RENEW_BEFORE, _same_key, fingerprint, in_domain, issue_leaf, key_pem, new_key

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")

IssueReason = str  # "new" | "renew" | "corrupt"


def valid_name(name: str, domain: str) -> bool:
    """A DNS name under `domain` that may become a SAN and a file name."""
    return len(name) <= 253 and bool(_NAME.match(name)) and in_domain(name, domain)


@dataclass(frozen=True, slots=True)
class Leaf:
    names: tuple[str, ...]
    path: Path
    not_after: dt.datetime
    serial: int
    fingerprint: str


def _file_name(names: tuple[str, ...]) -> str:
    return names[0].replace("*", "_wildcard_") + ".pem"


class LeafStore:
    def __init__(
        self,
        *,
        ca: CA,
        directory: Path,
        max_entries: int = 4096,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_issue: Callable[[IssueReason], None] = lambda _r: None,
    ) -> None:
        self.ca = ca
        self.directory = directory
        self.max_entries = max_entries
        self._clock = clock
        self._on_issue = on_issue
        self._mem: OrderedDict[tuple[str, ...], Leaf] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, names: tuple[str, ...]) -> Leaf:
        """The leaf for `names` (the first names the file); ValueError for a name it must not sign."""
        for n in names:
            if not valid_name(n, self.ca.domain):
                raise ValueError(f"{n!r} is not a name under {self.ca.domain}")
        now = self._clock()
        with self._lock:
            leaf = self._mem.get(names)
            if leaf is not None and leaf.not_after - now > RENEW_BEFORE:
                self._mem.move_to_end(names)
                return leaf
            leaf = self._load_or_issue(names, now, renewing=leaf is not None)
            self._mem[names] = leaf
            self._mem.move_to_end(names)
            while len(self._mem) > self.max_entries:
                self._mem.popitem(last=False)
            return leaf

    def _load_or_issue(self, names: tuple[str, ...], now: dt.datetime, *, renewing: bool) -> Leaf:
        path = self.directory / _file_name(names)
        reason: IssueReason = "renew" if renewing else "new"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError:
            raw, reason = None, "corrupt"
        if raw is not None:
            verdict = self._check(raw, names, now)
            if isinstance(verdict, Leaf):
                return Leaf(verdict.names, path, verdict.not_after, verdict.serial, verdict.fingerprint)
            reason = verdict
        key = new_key()
        cert = issue_leaf(self.ca, names, key, now=now)
        atomic_write(path, key_pem(key) + cert.public_bytes(serialization.Encoding.PEM), mode=0o600)
        self._on_issue(reason)
        return Leaf(names, path, cert.not_valid_after_utc, cert.serial_number, fingerprint(cert))

    def _check(self, raw: bytes, names: tuple[str, ...], now: dt.datetime) -> Leaf | IssueReason:
        """The cached file as a Leaf, or why it must be issued again."""
        try:
            key = serialization.load_pem_private_key(raw, password=None)
            cert = x509.load_pem_x509_certificate(raw[raw.index(b"-----BEGIN CERTIFICATE-----"):])
        except (ValueError, TypeError):
            return "corrupt"
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
            return "corrupt"
        if cert.issuer != self.ca.cert.subject:
            return "corrupt"
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return "corrupt"  # signed by another root (the CA was replaced) or tampered with
        try:
            sans = tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                         .get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            return "corrupt"
        if sans != names:
            return "corrupt"
        if cert.not_valid_after_utc - now <= RENEW_BEFORE or cert.not_valid_before_utc > now:
            return "renew"
        return Leaf(names, Path(), cert.not_valid_after_utc, cert.serial_number, fingerprint(cert))
