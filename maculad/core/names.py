"""Names under the domain: one owner for the domain rule and for qualifying a name.

`check_domain` is the one judge of a configured domain: the config loader calls
it (so `check-config` refuses what `run` would) and the DNS zone calls it again
on the value it gets. `lookup_name` is the rule for a name someone asks about
(`GET /v1/dns`, `maculactl dns`), so the CLI refuses as a usage error what the
socket would refuse. `qualify` turns a route name from any source (config,
Docker label, Ingress host) into a full lower-case name under that domain.
"""

from __future__ import annotations


def check_domain(domain: str) -> str:
    """The domain normalised (lower case, no trailing dot); ValueError with the reason when it
    cannot be a DNS name on the wire."""
    d = domain.strip().lower().rstrip(".")
    labels = d.split(".")
    if not d or not d.isascii() or len(d) > 253 or any(not 0 < len(lb) <= 63 for lb in labels):
        raise ValueError(f"domain {domain!r} is not a valid DNS name (ASCII labels of 1-63 characters; "
                         "write internationalised names in their xn-- form)")
    for lb in labels:  # the label rule `qualify` applies to every name below the domain
        if not all(c.isalnum() or c in "-_" for c in lb) or lb[0] == "-" or lb[-1] == "-":
            raise ValueError(f"domain {domain!r} is not a valid DNS name: label {lb!r} has characters outside "
                             "[a-z0-9-_] or starts or ends with '-'")
    return d


_LOOKUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.*")


def lookup_name(name: str) -> str:
    """A name to look up, normalised (lower case, no trailing dot); ValueError when it cannot be one."""
    n = name.strip().lower().rstrip(".")
    if not n:
        raise ValueError("a name is needed, e.g. grafana.macula.local")
    if len(n) > 253 or not set(n) <= _LOOKUP_CHARS or ".." in n or n.startswith("."):
        raise ValueError(f"{n[:80]!r} is not a valid DNS name")
    return n


def qualify(name: str, domain: str) -> str:
    """`grafana` → `grafana.macula.local`; a full name under the domain stays.

    Raises ValueError for names outside the domain or with invalid labels.
    """
    n = name.strip().lower().rstrip(".")
    if not n:
        raise ValueError("empty name")
    d = domain.lower().rstrip(".")
    if n != d and not n.endswith("." + d):
        n = f"{n}.{d}"
    wildcard = n.startswith("*.")
    labels = (n[2:] if wildcard else n).split(".")
    for label in labels:
        if not label or len(label) > 63:
            raise ValueError(f"invalid label {label!r} in {name!r}")
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"label {label!r} in {name!r} starts or ends with '-'")
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            raise ValueError(f"label {label!r} in {name!r} has characters outside [a-z0-9-_]")
    if len(n) > 253:
        raise ValueError(f"name {name!r} is longer than 253 characters")
    if n == d:
        raise ValueError(f"{name!r} is the domain apex itself, not a name below it")
    return n
