"""Ingresses → route specs: the pure half of the Kubernetes provider.

`build_ingress_routes` takes every Ingress the watch knows (raw JSON dicts as
the API server sent them, never trusted) and returns the provider's complete
snapshot of `RouteSpec`s plus a list of `Skip`s explaining what was left out.
It is `ingress_routes` (one object) mapped over all of them and `combine`d;
the watch loop keeps each object's result and only recomputes the one an
event changed. No I/O and no logging here: the watch loop logs each skip once.

Decisions:

* Only `spec.rules[].host` routes. `spec.tls[].hosts` only says which
  certificate to serve; a TLS host without a rule matches no rule in the
  controller either, so it is reported (`tls-only`) and not routed.
* A host must be under the domain: `a.macula.local`, or a wildcard
  `*.apps.macula.local` (routing every name below it). The apex itself, hosts
  outside the domain, invalid labels and non-string hosts are skipped with a
  reason; a rule without a host (a catch-all) has no name to route.
* With `ingress_class` set, an Ingress routes only if its
  `spec.ingressClassName` — or else the legacy annotation
  `kubernetes.io/ingress.class` — equals it; an Ingress naming no class is
  skipped then (maculad does not watch IngressClasses for the default one).
* Every route of every Ingress has the same ports: the ingress controller's
  host ports (`kubernetes.ingress_http` / `ingress_https` / `ingress_udp`),
  which route by Host header / SNI themselves.
* The same host in two Ingresses yields two specs with different origins
  (`kubernetes:<ns>/<name>`); the route table picks one and reports the other
  as a conflict (config > docker > kubernetes, then by origin).
* Anything malformed (no metadata, no spec, rules that are not a list, a rule
  that is not an object) skips that object or rule, never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from maculad.adapters.kube.client import object_key
from maculad.routes.model import PortMap, RouteSpec
from maculad.core.names import qualify

CLASS_ANNOTATION = "kubernetes.io/ingress.class"

SkipKind = Literal["malformed", "class", "no-host", "outside-domain", "invalid-host", "tls-only"]


@dataclass(frozen=True, slots=True)
class Skip:
    """Something of an Ingress that does not become a route, and why."""

    origin: str
    host: str  # "" when the whole object (or a rule without a host) is skipped
    kind: SkipKind
    reason: str


@dataclass(frozen=True, slots=True)
class IngressRoutes:
    specs: tuple[RouteSpec, ...]
    skipped: tuple[Skip, ...]


def ingress_class_of(obj: Mapping[str, Any]) -> str | None:
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        cls = spec.get("ingressClassName")
        if isinstance(cls, str) and cls:
            return cls
    md = obj.get("metadata")
    ann = md.get("annotations") if isinstance(md, Mapping) else None
    if isinstance(ann, Mapping):
        cls = ann.get(CLASS_ANNOTATION)
        if isinstance(cls, str) and cls:
            return cls
    return None


def _host_name(host: str, domain: str) -> str:
    """The route name for an Ingress host; raises ValueError (reason) if it cannot route."""
    h = host.strip().lower().rstrip(".")
    d = domain.lower().rstrip(".")
    if h != d and not h.endswith("." + d):
        raise _Outside(f"{host!r} is not under the domain {d}")
    if "*" in h[2:] or (h.startswith("*") and not h.startswith("*.")):
        raise ValueError(f"{host!r}: a wildcard must be the whole leftmost label (*.name.{d})")
    return qualify(h, d)


class _Outside(ValueError):
    pass


def build_ingress_routes(
    ingresses: Iterable[Any],
    *,
    domain: str,
    ports: tuple[PortMap, ...],
    ingress_class: str | None = None,
) -> IngressRoutes:
    """The complete route snapshot for `ingresses` (raw Ingress objects), sorted by (name, origin)."""
    parts = [ingress_routes(obj, domain=domain, ports=ports, ingress_class=ingress_class) for obj in ingresses]
    merged = combine(parts)
    return IngressRoutes(specs=tuple(sorted(merged.specs, key=lambda s: (s.name, s.origin))),
                         skipped=merged.skipped)


def combine(parts: Iterable[IngressRoutes]) -> IngressRoutes:
    """Concatenate per-Ingress results (each origin is distinct, so nothing collides)."""
    specs: list[RouteSpec] = []
    skipped: list[Skip] = []
    for part in parts:
        specs.extend(part.specs)
        skipped.extend(part.skipped)
    return IngressRoutes(specs=tuple(specs), skipped=tuple(skipped))


def ingress_routes(
    obj: Any,
    *,
    domain: str,
    ports: tuple[PortMap, ...],
    ingress_class: str | None = None,
) -> IngressRoutes:
    """The routes of one raw Ingress object (the watch loop caches this per object)."""
    key = object_key(obj)
    if key is None:
        return IngressRoutes((), (Skip("kubernetes:?", "", "malformed", "object without metadata.name"),))
    origin = f"kubernetes:{key[0]}/{key[1]}"
    if ingress_class is not None:
        cls = ingress_class_of(obj)
        if cls != ingress_class:
            return IngressRoutes((), (Skip(origin, "", "class",
                                           f"ingress class {cls!r} is not {ingress_class!r}" if cls
                                           else f"no ingress class (only {ingress_class!r} is routed)"),))
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return IngressRoutes((), (Skip(origin, "", "malformed", "no spec"),))
    rules = spec.get("rules", [])
    if rules is None:
        rules = []
    if not isinstance(rules, list):
        return IngressRoutes((), (Skip(origin, "", "malformed",
                                       f"spec.rules is {type(rules).__name__}, not a list"),))
    specs: dict[str, RouteSpec] = {}
    skipped: list[Skip] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            skipped.append(Skip(origin, "", "malformed", f"spec.rules[{i}] is {type(rule).__name__}, not an object"))
            continue
        host = rule.get("host")
        if host is None or host == "":
            skipped.append(Skip(origin, "", "no-host", f"spec.rules[{i}] has no host (a catch-all rule has no name "
                                "to route)"))
            continue
        if not isinstance(host, str):
            skipped.append(Skip(origin, repr(host), "invalid-host", f"spec.rules[{i}].host is not a string"))
            continue
        try:
            name = _host_name(host, domain)
        except _Outside as exc:
            skipped.append(Skip(origin, host, "outside-domain", str(exc)))
            continue
        except ValueError as exc:
            skipped.append(Skip(origin, host, "invalid-host", str(exc)))
            continue
        if name not in specs:
            specs[name] = RouteSpec(name=name, source="kubernetes", origin=origin, ports=ports)
    tls = spec.get("tls")
    if isinstance(tls, list):
        for entry in tls:
            hosts = entry.get("hosts") if isinstance(entry, Mapping) else None
            for host in hosts if isinstance(hosts, list) else ():
                if isinstance(host, str) and host.strip().lower().rstrip(".") not in specs:
                    skipped.append(Skip(origin, host, "tls-only", f"{host!r} is only in spec.tls, no rule routes it"))
    return IngressRoutes(specs=tuple(specs[n] for n in sorted(specs)), skipped=tuple(skipped))
