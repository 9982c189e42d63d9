"""Server-side apply through the Kubernetes client, and the manifest shapes it needs.

Pure: the parsing of a multi-document manifest into objects (`parse_manifest`),
the REST path of each object (`resource_path`, from a table of built-in kinds
or from the API server's discovery documents for anything else) and the "is
this Deployment available" test. I/O: `load_manifest` (http(s), file:// or a
path) and `Applier`, which does server-side apply (PATCH with
`application/apply-patch+yaml`, `fieldManager=maculad`, `force=true`) object
by object through a `KubeTransport` (`adapters.kube.client`), in manifest order
with Namespaces and CRDs first, and waits for Deployments to become available.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import yaml

from maculad.adapters.http import Endpoint, HTTPClient, HTTPUnavailable
from maculad.adapters.kube.client import KubeError, KubeTransport, status_message

FIELD_MANAGER = "maculad"


class ManifestError(ValueError):
    """A manifest that cannot be applied: where and why."""


# --------------------------------------------------------------------------- manifests (pure)


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind of object lives in the REST API."""

    plural: str
    namespaced: bool


_CORE: dict[str, Resource] = {
    "Namespace": Resource("namespaces", False),
    "ServiceAccount": Resource("serviceaccounts", True),
    "ConfigMap": Resource("configmaps", True),
    "Secret": Resource("secrets", True),
    "Service": Resource("services", True),
    "Pod": Resource("pods", True),
    "PersistentVolume": Resource("persistentvolumes", False),
    "PersistentVolumeClaim": Resource("persistentvolumeclaims", True),
    "Endpoints": Resource("endpoints", True),
    "LimitRange": Resource("limitranges", True),
    "ResourceQuota": Resource("resourcequotas", True),
}
_GROUPS: dict[str, dict[str, Resource]] = {
    "apps": {
        "Deployment": Resource("deployments", True),
        "DaemonSet": Resource("daemonsets", True),
        "StatefulSet": Resource("statefulsets", True),
        "ReplicaSet": Resource("replicasets", True),
    },
    "batch": {"Job": Resource("jobs", True), "CronJob": Resource("cronjobs", True)},
    "rbac.authorization.k8s.io": {
        "Role": Resource("roles", True),
        "RoleBinding": Resource("rolebindings", True),
        "ClusterRole": Resource("clusterroles", False),
        "ClusterRoleBinding": Resource("clusterrolebindings", False),
    },
    "networking.k8s.io": {
        "Ingress": Resource("ingresses", True),
        "IngressClass": Resource("ingressclasses", False),
        "NetworkPolicy": Resource("networkpolicies", True),
    },
    "admissionregistration.k8s.io": {
        "ValidatingWebhookConfiguration": Resource("validatingwebhookconfigurations", False),
        "MutatingWebhookConfiguration": Resource("mutatingwebhookconfigurations", False),
    },
    "apiextensions.k8s.io": {"CustomResourceDefinition": Resource("customresourcedefinitions", False)},
    "policy": {"PodDisruptionBudget": Resource("poddisruptionbudgets", True)},
    "scheduling.k8s.io": {"PriorityClass": Resource("priorityclasses", False)},
    "storage.k8s.io": {"StorageClass": Resource("storageclasses", False)},
    "autoscaling": {"HorizontalPodAutoscaler": Resource("horizontalpodautoscalers", True)},
    "coordination.k8s.io": {"Lease": Resource("leases", True)},
}
_FIRST = ("Namespace", "CustomResourceDefinition")


def split_api_version(api_version: str) -> tuple[str, str]:
    """`apps/v1` → ("apps", "v1"); `v1` → ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


def builtin_resource(api_version: str, kind: str) -> Resource | None:
    group, _ = split_api_version(api_version)
    if group == "":
        return _CORE.get(kind)
    return _GROUPS.get(group, {}).get(kind)


def api_prefix(api_version: str) -> str:
    group, version = split_api_version(api_version)
    return f"/api/{version}" if group == "" else f"/apis/{group}/{version}"


def resource_path(obj: Mapping[str, Any], res: Resource, *, name: bool = True) -> str:
    """The REST path of `obj` (its collection when `name` is False)."""
    meta = obj.get("metadata") or {}
    base = api_prefix(str(obj["apiVersion"]))
    if res.namespaced:
        ns = meta.get("namespace") or "default"
        base += f"/namespaces/{quote(str(ns), safe='')}"
    base += f"/{res.plural}"
    if name:
        base += f"/{quote(str(meta['name']), safe='')}"
    return base


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def parse_manifest(text: str, *, source: str = "manifest") -> list[dict[str, Any]]:
    """Multi-document YAML → objects to apply, in order (Namespaces and CRDs first; `List`s expanded)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from None
    objs: list[dict[str, Any]] = []

    def add(doc: Any, where: str) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: {where} is not a mapping but {type(doc).__name__}")
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
            for j, item in enumerate(doc["items"]):
                add(item, f"{where} item {j}")
            return
        av = doc.get("apiVersion")
        if not isinstance(av, str) or not av or av.count("/") > 1:
            raise ManifestError(f"{source}: {where} has no valid apiVersion")
        if not isinstance(kind, str) or not kind:
            raise ManifestError(f"{source}: {where} has no kind")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ManifestError(f"{source}: {where} ({kind}) has no metadata.name")
        if "namespace" in meta and not isinstance(meta["namespace"], str):
            raise ManifestError(f"{source}: {where} ({kind}/{meta['name']}) has a non-string namespace")
        objs.append(doc)

    for i, doc in enumerate(docs):
        add(doc, f"document {i + 1}")
    if not objs:
        raise ManifestError(f"{source}: holds no objects")
    first = [o for o in objs if o["kind"] in _FIRST]
    return first + [o for o in objs if o["kind"] not in _FIRST]


def deployment_available(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """(available, why not). A Deployment is available when its `Available` condition is True;
    lacking conditions, when its available replicas reach the desired count for the current
    generation."""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    if not isinstance(status, Mapping) or not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
        return False, "malformed object"
    conds = status.get("conditions")
    for c in conds if isinstance(conds, list) else []:
        if isinstance(c, Mapping) and c.get("type") == "Available":
            ok = str(c.get("status")) == "True"
            return ok, "" if ok else str(c.get("message") or c.get("reason") or "not available")
    want = spec.get("replicas", 1)
    have = status.get("availableReplicas") or 0
    gen, seen = meta.get("generation"), status.get("observedGeneration")
    if isinstance(gen, int) and (not isinstance(seen, int) or seen < gen):
        return False, "the controller has not observed the current generation yet"
    if isinstance(want, int) and isinstance(have, int) and have >= want and "observedGeneration" in status:
        return True, ""
    return False, f"{have}/{want} replicas available"


# --------------------------------------------------------------------------- I/O


#: Redirects followed when a manifest is fetched (release download URLs redirect to their storage).
MAX_REDIRECTS = 5
#: The largest manifest fetched.
MAX_MANIFEST = 16 * 1024 * 1024


async def _fetch(source: str, *, timeout: float) -> bytes:
    """GET an http(s) URL, following up to MAX_REDIRECTS redirects, all within `timeout`."""
    url = source
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise ManifestError(f"{source}: redirected to {url!r}, which is not an http(s) URL")
                try:
                    endpoint = Endpoint.parse(f"{parts.scheme}://{parts.netloc}")
                except ValueError as exc:
                    raise ManifestError(f"{source}: {exc}") from None
                client = HTTPClient(endpoint, max_body=MAX_MANIFEST, timeout=timeout, max_idle=0)
                try:
                    resp = await client.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
                finally:
                    await client.close()
                if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status != 200:
                    raise ManifestError(f"{source}: HTTP {resp.status} {resp.reason}".rstrip())
                return resp.body
    except TimeoutError:
        raise ManifestError(f"{source}: cannot fetch: no answer within {timeout:g} s") from None
    except HTTPUnavailable as exc:
        raise ManifestError(f"{source}: cannot fetch: {exc}") from None
    raise ManifestError(f"{source}: more than {MAX_REDIRECTS} redirects")


async def load_manifest(source: str, *, base: Path, timeout: float) -> str:
    """A manifest's text from an http(s) URL, a file:// URL or a path (relative to `base`)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        data = await _fetch(source, timeout=timeout)
    else:
        if parts.scheme == "file":
            path = Path(parts.path)
        elif parts.scheme and len(parts.scheme) > 1:
            raise ManifestError(f"{source}: unsupported URL scheme {parts.scheme!r} (use http(s), file or a path)")
        else:
            path = Path(source).expanduser()
            if not path.is_absolute():
                path = base / path
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{source}: is not UTF-8 text") from None


class Applier:
    """Server-side apply of arbitrary objects through a `KubeTransport`."""

    def __init__(self, api: KubeTransport, *, field_manager: str = FIELD_MANAGER) -> None:
        self._api = api
        self._manager = field_manager
        self._discovered: dict[str, dict[str, Resource]] = {}

    async def resource(self, api_version: str, kind: str) -> Resource:
        res = builtin_resource(api_version, kind)
        if res is not None:
            return res
        table = self._discovered.get(api_version)
        if table is None:
            status, body = await self._api.request("GET", api_prefix(api_version))
            if status != 200 or not isinstance(body, Mapping):
                raise KubeError(f"discovery of {api_version}: {status_message(status, body)}", status=status)
            table = {}
            for r in body.get("resources") or []:
                if isinstance(r, Mapping) and "/" not in str(r.get("name", "")) and r.get("kind"):
                    table[str(r["kind"])] = Resource(str(r["name"]), bool(r.get("namespaced")))
            self._discovered[api_version] = table
        if kind not in table:
            raise KubeError(f"the API server does not serve {kind} in {api_version}", status=404)
        return table[kind]

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH the object with `application/apply-patch+yaml`; returns the server's object."""
        res = await self.resource(str(obj["apiVersion"]), str(obj["kind"]))
        body = dict(obj)
        meta = dict(body.get("metadata") or {})
        if res.namespaced and not meta.get("namespace"):
            meta["namespace"] = "default"
        if not res.namespaced:
            meta.pop("namespace", None)
        body["metadata"] = meta
        status, answer = await self._api.request(
            "PATCH", resource_path(body, res),
            query={"fieldManager": self._manager, "force": "true"},
            body=body, content_type="application/apply-patch+yaml",
        )
        if status not in (200, 201):
            raise KubeError(f"apply {describe(body)}: {status_message(status, answer)}", status=status)
        return dict(answer) if isinstance(answer, Mapping) else {}

    async def get(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        res = await self.resource(str(obj["apiVersion"]), str(obj["kind"]))
        status, answer = await self._api.request("GET", resource_path(obj, res))
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, Mapping):
            raise KubeError(f"get {describe(obj)}: {status_message(status, answer)}", status=status)
        return dict(answer)

    async def apply_all(self, objs: Iterable[Mapping[str, Any]]) -> list[str]:
        done: list[str] = []
        for obj in objs:
            await self.apply(obj)
            done.append(describe(obj))
        return done

    async def wait_available(
        self, deployments: Iterable[Mapping[str, Any]], *, timeout: float, interval: float = 1.0,
    ) -> None:
        """Poll until every Deployment is available; `KubeError` naming the laggards at the deadline."""
        pending = list(deployments)
        deadline = time.monotonic() + timeout
        why: dict[str, str] = {}
        while pending:
            still: list[Mapping[str, Any]] = []
            for d in pending:
                try:
                    current = await self.get(d)
                except KubeError as exc:
                    why[describe(d)] = str(exc)
                    still.append(d)
                    continue
                ok, reason = deployment_available(current) if current else (False, "not found")
                if not ok:
                    why[describe(d)] = reason
                    still.append(d)
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{describe(d)}: {why.get(describe(d), '')}" for d in pending)
                raise KubeError(f"not available within {timeout:g}s: {detail}")
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
