"""The CA's rules that need no `cryptography`: file names, lifetimes, the renewal rule, the name rule.

Standard library only, so the daemon can decide whether a certificate on disk
is still good (see `maculad.pki.manifest`) without importing `cryptography`;
`maculad.pki.ca`, which does the signing and parsing, uses the same rules.
"""

from __future__ import annotations

import datetime as dt
import re

ROOT_DAYS = 3650
#: CA/Browser Forum limit for a server certificate's lifetime (Apple enforces 398).
LEAF_DAYS = 397
#: Leaves are re-issued when they have less than this left.
RENEW_BEFORE = dt.timedelta(days=30)
#: Certificates start this much in the past so a slightly wrong client clock still accepts them.
BACKDATE = dt.timedelta(hours=1)

CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")


class CAError(Exception):
    """The CA on disk cannot be used; the message says why and what to do."""


def in_domain(name: str, domain: str) -> bool:
    """Whether `name` (a DNS name, `*.` allowed) lies within `domain`'s subtree."""
    n = name.lower().rstrip(".")
    if n.startswith("*."):
        n = n[2:]
    return n == domain or n.endswith("." + domain)


def valid_name(name: str, domain: str) -> bool:
    """A DNS name under `domain` that may become a SAN and a file name."""
    return len(name) <= 253 and bool(_NAME.match(name)) and in_domain(name, domain)


def leaf_due(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> bool:
    """Whether a leaf valid from `not_before` to `not_after` must be issued again at `now`."""
    return not_after - now <= RENEW_BEFORE or not_before > now
