"""The local root as the daemon holds it: `cryptography` only once a leaf must be signed.

`open_ca` is how the daemon gets its CA. When `<ca_dir>/manifest.json` vouches
for `ca.pem` and `ca-key.pem` as they are now (`manifest.root_problem`), the
result is a `LazyCA` built from the manifest alone: its fingerprint and expiry
are known, the certificate is not parsed and `cryptography` is not imported.
Otherwise `ca.load_or_create` runs exactly as without a manifest (create on
first start, every check, the same `CAError`s) and records the manifest.

`LazyCA.loaded()` is the CA itself, with its key, for signing: loaded and
checked with `cryptography` on first use; a root that is no longer the one
the manifest vouched for at start is a `CAError` (the running daemon keeps
the identity it started with).
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from maculad.pki import manifest
from maculad.pki.policy import CERT_FILE, KEY_FILE, CAError

if TYPE_CHECKING:
    from maculad.pki.ca import CA


class LazyCA:
    """The root's public facts now; the CA (certificate and key) on first `loaded()`. `repr` shows no key."""

    def __init__(self, *, ca_dir: Path | None, domain: str, fingerprint: str, not_after: dt.datetime,
                 ca: CA | None = None) -> None:
        self.ca_dir = ca_dir
        self.domain = domain
        self.fingerprint = fingerprint
        self.not_after = not_after
        self._ca = ca
        self._lock = threading.Lock()

    @classmethod
    def of(cls, ca: CA) -> LazyCA:
        """A CA already loaded (with `cryptography`)."""
        return cls(ca_dir=ca.cert_path.parent if ca.cert_path else None, domain=ca.domain,
                   fingerprint=ca.fingerprint, not_after=ca.not_after, ca=ca)

    @property
    def cert_path(self) -> Path | None:
        return self.ca_dir / CERT_FILE if self.ca_dir is not None else None

    @property
    def is_loaded(self) -> bool:
        return self._ca is not None

    def loaded(self) -> CA:
        """The CA with its key; imports `cryptography` the first time. CAError when it cannot be had."""
        with self._lock:
            if self._ca is None:
                if self.ca_dir is None:
                    raise CAError("no CA directory")
                from maculad.pki.ca import load

                ca = load(self.ca_dir, self.domain)
                if ca.fingerprint != self.fingerprint:
                    raise CAError(f"{self.ca_dir}: the root changed while maculad runs (it started with "
                                  f"{self.fingerprint}); restart maculad to use the new one")
                self._ca = ca
            return self._ca

    def __repr__(self) -> str:
        return f"LazyCA(domain={self.domain!r}, fingerprint={self.fingerprint!r}, loaded={self.is_loaded})"


def vouched(ca_dir: Path, domain: str, *, now: dt.datetime | None = None) -> LazyCA | None:
    """The CA from the manifest alone when it vouches for `ca.pem` and `ca-key.pem` as they are now, else None."""
    now = now or dt.datetime.now(dt.UTC)
    entry = manifest.read_root(ca_dir)
    if entry is None:
        return None
    try:
        cert_raw, key_raw = (ca_dir / CERT_FILE).read_bytes(), (ca_dir / KEY_FILE).read_bytes()
    except OSError:
        return None  # load_or_create says what is wrong
    if manifest.root_problem(entry, sha256=manifest.sha256(cert_raw), key_sha256=manifest.sha256(key_raw),
                             domain=domain, now=now) is not None:
        return None
    return LazyCA(ca_dir=ca_dir, domain=domain, fingerprint=entry.fingerprint, not_after=entry.not_after)


def open_ca(ca_dir: Path, domain: str, *, now: dt.datetime | None = None) -> tuple[LazyCA, bool]:
    """(the CA, whether it was created now): from the manifest when it vouches for the files, else through
    `ca.load_or_create` (which raises CAError or OSError as it always did)."""
    now = now or dt.datetime.now(dt.UTC)
    lazy = vouched(ca_dir, domain, now=now)
    if lazy is not None:
        return lazy, False
    from maculad.pki.ca import load_or_create

    ca, created = load_or_create(ca_dir, domain, now=now)
    return LazyCA.of(ca), created
