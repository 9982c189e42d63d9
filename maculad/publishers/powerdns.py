"""Route table → PowerDNS zone changes, with ExternalDNS's ownership rules. Pure.

maculad shares one zone with other maculad machines and with ExternalDNS in
other clusters, so it follows ExternalDNS's TXT registry ("new format"): next
to the A record of every name it publishes sits a TXT at `a-<name>` holding
`"heritage=external-dns,external-dns/owner=<owner_id>,external-dns/resource=maculad/<source>/<route>"`.
The owner TXT is the only proof of ownership:

- a wanted name with our owner TXT is ours: its A and TXT are replaced when they differ;
- a wanted name with someone else's owner TXT, a TXT at `a-<name>` that is no
  owner record, or any record at the name and no owner TXT at all, is a
  `ZoneConflict`: nothing there is touched, and maculad keeps answering the
  name locally;
- a TXT carrying our owner id whose name is no longer wanted is stale: it and
  the A it guards are deleted, and nothing else at that name.

`plan(want, zone, owner_id)` diffs the wanted records (`wanted(table, ...)`)
against a zone listing (`parse_zone(json)`, which treats the reply as
untrusted: any shape it does not expect is a `ZoneFormatError`) and returns
the RRset changes for one PATCH. PowerDNS's format rules are kept here:
names end with a dot, TXT content is quoted. A wildcard route `*.x` is
published as the A RRset `*.x.`; its owner TXT cannot hold a `*` (PowerDNS
refuses it), so it sits at `a-wildcard.x.` like ExternalDNS's
`--txt-wildcard-replacement=wildcard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from maculad.routes.table import RouteTable

TXT_PREFIX = "a-"
WILDCARD_REPLACEMENT = "wildcard"
HERITAGE = "external-dns"


class ZoneFormatError(ValueError):
    """A PowerDNS reply that does not have the shape of a zone listing."""


@dataclass(frozen=True, slots=True)
class RRset:
    """One RRset as PowerDNS holds it: `name` with its trailing dot, `records` sorted."""

    name: str
    type: str
    ttl: int
    records: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Change:
    action: Literal["REPLACE", "DELETE"]
    rrset: RRset

    def to_json(self) -> dict[str, Any]:
        if self.action == "DELETE":
            return {"name": self.rrset.name, "type": self.rrset.type, "changetype": "DELETE"}
        return {"name": self.rrset.name, "type": self.rrset.type, "ttl": self.rrset.ttl, "changetype": "REPLACE",
                "records": [{"content": c, "disabled": False} for c in self.rrset.records]}


@dataclass(frozen=True, slots=True)
class Wanted:
    """What maculad wants published for one route: its A and its owner TXT."""

    name: str        # the route's name, no trailing dot
    origin: str      # the route's origin ("config:grafana")
    a: RRset
    txt: RRset


@dataclass(frozen=True, slots=True)
class ZoneConflict:
    """A name maculad wants but may not touch; `owner` is the other owner id, if there is one."""

    name: str
    origin: str
    reason: str
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class ZonePlan:
    changes: tuple[Change, ...]
    conflicts: tuple[ZoneConflict, ...]
    owned: tuple[str, ...]       # names (no trailing dot) maculad owns once the changes are applied

    def body(self) -> dict[str, Any]:
        """The PATCH body."""
        return {"rrsets": [c.to_json() for c in self.changes]}


# --------------------------------------------------------------------------- names and TXT


def fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


def in_zone(name: str, zone: str) -> bool:
    """True for names strictly below `zone` (the apex holds SOA and NS: never published)."""
    n, z = name.lower().rstrip("."), zone.lower().rstrip(".")
    return n.endswith("." + z)


def txt_name(name: str) -> str:
    """The owner TXT's name for `name` (either form), with a trailing dot."""
    n = name.lower().rstrip(".")
    if n.startswith("*."):
        n = WILDCARD_REPLACEMENT + n[1:]
    return f"{TXT_PREFIX}{n}."


def guarded_name(txt: str) -> str | None:
    """The inverse of `txt_name`: `a-grafana.x.` → `grafana.x.`; None for other names."""
    n = txt.lower()
    if not n.startswith(TXT_PREFIX):
        return None
    n = n[len(TXT_PREFIX):]
    if n.startswith(WILDCARD_REPLACEMENT + "."):
        return "*" + n[len(WILDCARD_REPLACEMENT):]
    return n or None


def owner_text(owner_id: str, source: str, route: str) -> str:
    """The owner TXT's content, quoted as PowerDNS wants TXT content."""
    return f'"heritage={HERITAGE},external-dns/owner={owner_id},external-dns/resource=maculad/{source}/{route}"'


def unquote_txt(content: str) -> str:
    """PowerDNS TXT content (`"a" "b"`, escapes) → the text, character-strings joined."""
    s = content.strip()
    if not s.startswith('"'):
        return s
    out: list[str] = []
    i, n, inside = 0, len(s), False
    while i < n:
        c = s[i]
        if c == '"':
            inside = not inside
        elif inside and c == "\\" and i + 1 < n:
            i += 1
            out.append(s[i])
        elif inside:
            out.append(c)
        i += 1
    return "".join(out)


def parse_owner(content: str) -> dict[str, str] | None:
    """The labels of an ExternalDNS registry TXT, or None when `content` is not one."""
    text = unquote_txt(content)
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        labels[key.strip()] = value.strip()
    if labels.get("heritage") != HERITAGE:
        return None
    return labels


def txt_owner(rrset: RRset | None) -> tuple[bool, str | None]:
    """(is a registry record, its owner id) for the TXT RRset at an `a-` name."""
    if rrset is None:
        return False, None
    for content in rrset.records:
        labels = parse_owner(content)
        if labels is not None:
            return True, labels.get("external-dns/owner", "")
    return False, None


# --------------------------------------------------------------------------- wanted and zone


def wanted(table: RouteTable, *, zone: str, owner_id: str, address: str, ttl: int) -> dict[str, Wanted]:
    """fqdn → what maculad wants there, for every route inside `zone`."""
    out: dict[str, Wanted] = {}
    for r in table.routes:
        if not in_zone(r.name, zone):
            continue
        name = fqdn(r.name)
        _, _, route = r.origin.partition(":")
        out[name] = Wanted(
            name=r.name,
            origin=r.origin,
            a=RRset(name, "A", ttl, (address,)),
            txt=RRset(txt_name(name), "TXT", ttl, (owner_text(owner_id, r.source, route or r.name),)),
        )
    return out


Zone = Mapping[tuple[str, str], RRset]


def parse_zone(data: Any) -> dict[tuple[str, str], RRset]:
    """A PowerDNS zone (GET /servers/{id}/zones/{zone}) → (lower fqdn, type) → RRset. Untrusted input."""
    if not isinstance(data, dict):
        raise ZoneFormatError(f"the zone is a JSON {type(data).__name__}, not an object")
    rrsets = data.get("rrsets")
    if not isinstance(rrsets, list):
        raise ZoneFormatError("the zone has no 'rrsets' list")
    out: dict[tuple[str, str], RRset] = {}
    for i, rr in enumerate(rrsets):
        if not isinstance(rr, dict):
            raise ZoneFormatError(f"rrsets[{i}] is not an object")
        name, rtype, ttl, records = rr.get("name"), rr.get("type"), rr.get("ttl", 0), rr.get("records")
        if not isinstance(name, str) or not name or not isinstance(rtype, str) or not rtype:
            raise ZoneFormatError(f"rrsets[{i}] has no name or type")
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ZoneFormatError(f"rrsets[{i}] ({name} {rtype}) has a ttl that is not an integer")
        if not isinstance(records, list):
            raise ZoneFormatError(f"rrsets[{i}] ({name} {rtype}) has no 'records' list")
        contents: list[str] = []
        for rec in records:
            content = rec.get("content") if isinstance(rec, dict) else None
            if not isinstance(content, str):
                raise ZoneFormatError(f"rrsets[{i}] ({name} {rtype}) has a record without string content")
            contents.append(content)
        key = (fqdn(name), rtype.upper())
        if not contents and key not in out:
            continue  # an RRset holding only comments: nothing at that name
        prev = out.get(key)
        merged = tuple(sorted(set(contents) | set(prev.records if prev else ())))
        out[key] = RRset(key[0], key[1], ttl, merged)
    return out


# --------------------------------------------------------------------------- the diff


def plan(want: Mapping[str, Wanted], zone: Zone, *, owner_id: str) -> ZonePlan:
    """The changes that make `zone` hold `want`, touching nothing maculad does not own."""
    names: dict[str, set[str]] = {}
    for name, rtype in zone:
        names.setdefault(name, set()).add(rtype)
    changes: list[Change] = []
    conflicts: list[ZoneConflict] = []
    owned: list[str] = []

    for name in sorted(want):
        w = want[name]
        txt = zone.get((w.txt.name, "TXT"))
        is_registry, owner = txt_owner(txt)
        if txt is not None and not is_registry:
            conflicts.append(ZoneConflict(w.name, w.origin, f"{w.txt.name} holds a TXT that is not an owner record"))
            continue
        if is_registry and owner != owner_id:
            conflicts.append(ZoneConflict(w.name, w.origin, f"owned by {owner!r} (owner TXT at {w.txt.name})",
                                          owner=owner))
            continue
        present = names.get(name, set())
        if txt is None:
            if present:
                conflicts.append(ZoneConflict(
                    w.name, w.origin, f"{name} already has {', '.join(sorted(present))} records and no owner TXT"))
                continue
        elif present & {"CNAME"}:
            conflicts.append(ZoneConflict(w.name, w.origin, f"{name} has a CNAME record, which cannot sit beside A"))
            continue
        owned.append(w.name)
        if zone.get((name, "A")) != w.a:
            changes.append(Change("REPLACE", w.a))
        if txt != w.txt:
            changes.append(Change("REPLACE", w.txt))

    for (name, rtype), rrset in sorted(zone.items()):
        if rtype != "TXT":
            continue
        target = guarded_name(name)
        if target is None or target in want:
            continue
        is_registry, owner = txt_owner(rrset)
        if not is_registry or owner != owner_id:
            continue
        a = zone.get((target, "A"))
        if a is not None:
            changes.append(Change("DELETE", a))
        changes.append(Change("DELETE", rrset))
    return ZonePlan(changes=tuple(changes), conflicts=tuple(conflicts), owned=tuple(owned))
