"""`python -m maculad.pki.sign`: the CA and leaves made in a short-lived child, so the daemon needs no `cryptography`.

The daemon (`maculad.pki.signer`) writes one JSON request on stdin:

    {"ca_dir": "...", "domain": "macula.local", "leaves_dir": "...",
     "names": [["a.macula.local"], ["macula.local"]], "fingerprint": "AB:CD:..."}

(`fingerprint` is optional: the root the daemon runs with; another root on disk is refused). The child
creates or loads the CA with `ca.load_or_create` (which records the root manifest), then runs a
`LeafStore` over it and calls `get()` for each name tuple: the daemon's own code checks the file,
issues or renews the leaf, writes it atomically (0600) and records it in the leaves manifest. Nothing
here is a second copy of those rules.

It prints one JSON answer on stdout and exits 0:

    {"fingerprint": "...", "not_after": "...", "created": false,
     "results": ["ok", "'x.example' is not a name under macula.local"], "issued": {"new": 1}}

`results` is aligned with the request's names: "ok", or why that leaf could not be had. Exit 2 with one
line on stderr when the request is unusable (over `MAX_REQUEST` bytes or `MAX_NAMES` names, not the
shape above) or the CA itself is (a `CAError`, a directory it cannot write). Logs go to stderr as JSON
lines; never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculad.config import LogConfig
from maculad.observability.logging import configure_logging
from maculad.pki.policy import CAError

#: The request's size and its number of name tuples (and names in one tuple) are bounded.
MAX_REQUEST = 1024 * 1024
MAX_NAMES = 10_000
MAX_SANS = 100


class RequestError(ValueError):
    """The request cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Request:
    ca_dir: Path
    domain: str
    leaves_dir: Path
    names: tuple[tuple[str, ...], ...]
    fingerprint: str | None = None


def _path(doc: Mapping[str, Any], key: str) -> Path:
    value = doc.get(key)
    if not isinstance(value, str) or not value or "\0" in value:
        raise RequestError(f"{key!r} must be a non-empty path")
    return Path(value)


def parse_request(raw: bytes) -> Request:
    """The request in `raw`; RequestError for anything else (pure)."""
    if len(raw) > MAX_REQUEST:
        raise RequestError(f"the request is over {MAX_REQUEST} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError("the request is not JSON") from None
    if not isinstance(doc, dict):
        raise RequestError("the request is not a JSON object")
    domain = doc.get("domain")
    if not isinstance(domain, str) or not domain:
        raise RequestError("'domain' must be a non-empty string")
    names = doc.get("names", [])
    if not isinstance(names, list):
        raise RequestError("'names' must be a list of lists of names")
    if len(names) > MAX_NAMES:
        raise RequestError(f"over {MAX_NAMES} names")
    tuples: list[tuple[str, ...]] = []
    for item in names:
        if (not isinstance(item, list) or not item or len(item) > MAX_SANS
                or not all(isinstance(n, str) for n in item)):
            raise RequestError(f"each entry of 'names' must be a list of 1 to {MAX_SANS} names")
        tuples.append(tuple(item))
    fingerprint = doc.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise RequestError("'fingerprint' must be a string")
    return Request(ca_dir=_path(doc, "ca_dir"), domain=domain, leaves_dir=_path(doc, "leaves_dir"),
                   names=tuple(tuples), fingerprint=fingerprint)


def serve(req: Request) -> dict[str, Any]:
    """Make or load the CA, then each leaf; the answer. CAError or OSError when the CA cannot be had."""
    from maculad.pki.ca import load_or_create  # cryptography: this process is here for it
    from maculad.pki.leaves import LeafStore

    ca, created = load_or_create(req.ca_dir, req.domain)
    if req.fingerprint is not None and ca.fingerprint != req.fingerprint:
        raise CAError(f"{req.ca_dir}: the root is {ca.fingerprint}, not the {req.fingerprint} maculad runs with "
                      f"(it was replaced?); restart maculad to use it")
    issued: dict[str, int] = {}

    def count(reason: str) -> None:
        issued[reason] = issued.get(reason, 0) + 1

    store = LeafStore(ca=ca, directory=req.leaves_dir, max_entries=max(1, len(req.names)), on_issue=count)
    results: list[str] = []
    for names in req.names:
        try:
            store.get(names)
        except (ValueError, OSError) as exc:
            results.append(str(exc) or type(exc).__name__)
        else:
            results.append("ok")
    return {"fingerprint": ca.fingerprint, "not_after": ca.not_after.isoformat(), "created": created,
            "results": results, "issued": issued}


def main() -> int:
    configure_logging(LogConfig(level="warning", format="json"))  # stderr: stdout is the answer
    try:
        req = parse_request(sys.stdin.buffer.read(MAX_REQUEST + 1))
    except RequestError as exc:
        print(f"maculad.pki.sign: {exc}", file=sys.stderr)
        return 2
    try:
        answer = serve(req)
    except CAError as exc:
        print(f"maculad.pki.sign: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"maculad.pki.sign: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, not a traceback
        print(f"maculad.pki.sign: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
