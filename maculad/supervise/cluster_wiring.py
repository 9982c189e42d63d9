"""What a kind cluster needs after every (re)creation, and the Kubernetes calls to do it.

Pure builders: the containerd `hosts.toml` that sends pulls of the registry's
host name to the registry container on the `kind` network, the KEP-1755
`kube-public/local-registry-hosting` ConfigMap, the parsing of a
multi-document manifest into objects (`parse_manifest`), the REST path of
each object (`resource_path`, from a table of built-in kinds or from the API
server's discovery documents for anything else) and the "is this Deployment
available" test.

I/O: `KubeTransport` is the one boundary to the API server (method, path,
query, body → status and decoded body); `KubeSession` implements it over
kubernetes-asyncio's `ApiClient`, built by `maculad.adapters.kube.client` (the same
kubeconfig handling as the Ingress provider: certificates, tokens, exec
plugins, never writing the file back). `Applier` does
server-side apply (PATCH with `application/apply-patch+yaml`,
`fieldManager=maculad`, `force=true`) object by object, in manifest order
with Namespaces and CRDs first, and waits for Deployments to become available.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import yaml

FIELD_MANAGER = "maculad"
REGISTRY_CONFIGMAP = ("kube-public", "local-registry-hosting")
CERTS_DIR = "/etc/containerd/certs.d"
KIND_REGISTRY_HELP = "https://kind.sigs.k8s.io/docs/user/local-registry/"

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class WiringError(Exception):
    """A wiring step that failed, with the step's name for status."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"{step}: {message}")


class KubeError(Exception):
    """The API server could not be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class ManifestError(ValueError):
    """A manifest that cannot be applied: where and why."""


# --------------------------------------------------------------------------- registry (pure)


def check_registry_host(host: str) -> str:
    """`registry.macula.local:5001` → itself; anything that cannot be a directory name is refused."""
    if not _HOST.match(host):
        raise ValueError(f"{host!r} is not a registry host[:port]")
    return host


def hosts_toml_path(registry_host: str) -> str:
    return f"{CERTS_DIR}/{check_registry_host(registry_host)}/hosts.toml"


def hosts_toml(registry_host: str, endpoint: str) -> str:
    """containerd's registry host config: pulls of `registry_host/...` go to `endpoint`."""
    check_registry_host(registry_host)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{endpoint!r} is not an http(s)://host:port registry endpoint")
    if any(c in endpoint for c in "\"\\\n\r"):
        raise ValueError(f"{endpoint!r} contains characters that cannot go into hosts.toml")
    return (
        f"# Written by maculad: pulls of {registry_host}/... go to the registry container\n"
        f"# on the kind network. Rewritten after every cluster (re)creation.\n"
        f"[host.\"{endpoint}\"]\n"
        f"  capabilities = [\"pull\", \"resolve\"]\n"
    )


def registry_configmap(registry_host: str, endpoint: str) -> dict[str, Any]:
    """KEP-1755's `kube-public/local-registry-hosting` ConfigMap, so tools find the local registry."""
    check_registry_host(registry_host)
    in_cluster = urlsplit(endpoint).netloc or endpoint
    doc = {
        "host": registry_host,
        "hostFromContainerRuntime": registry_host,
        "hostFromClusterNetwork": in_cluster,
        "help": KIND_REGISTRY_HELP,
    }
    ns, name = REGISTRY_CONFIGMAP
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "maculad"}},
        "data": {"localRegistryHosting.v1": yaml.safe_dump(doc, sort_keys=False)},
    }


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


def with_default_certificate(objs: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """The objects with `--default-ssl-certificate=<ref>` on every ingress-nginx controller container
    (a container whose args start with the `/nginx-ingress-controller` binary); an existing flag is replaced.
    Copies what it changes; the input is not modified."""
    import copy

    flag = "--default-ssl-certificate"
    out: list[dict[str, Any]] = []
    for obj in objs:
        if obj.get("kind") in ("Deployment", "DaemonSet"):
            containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
            if isinstance(containers, list) and any(_is_controller(c) for c in containers):
                obj = copy.deepcopy(obj)
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    if _is_controller(c):
                        c["args"] = [a for a in c["args"] if not str(a).startswith(flag + "=")] + [f"{flag}={ref}"]
        out.append(obj)
    return out


def _is_controller(container: Any) -> bool:
    args = container.get("args") if isinstance(container, dict) else None
    return isinstance(args, list) and bool(args) and str(args[0]).endswith("nginx-ingress-controller")


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


async def load_manifest(source: str, *, base: Path, timeout: float) -> str:
    """A manifest's text from an http(s) URL, a file:// URL or a path (relative to `base`)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                async with s.get(source) as resp:
                    if resp.status != 200:
                        raise ManifestError(f"{source}: HTTP {resp.status} {resp.reason or ''}".rstrip())
                    data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ManifestError(f"{source}: cannot fetch: {type(exc).__name__}: {exc}") from None
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


class KubeTransport(Protocol):
    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One API call: (HTTP status, body decoded as JSON when it is JSON, else text)."""

    async def close(self) -> None: ...


class KubeSession:
    """`KubeTransport` over kubernetes-asyncio's ApiClient for one kubeconfig context."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def open(cls, kubeconfig: Path, context: str | None) -> KubeSession:
        """A session for `context` of `kubeconfig`, built the same way as the Ingress provider's."""
        from maculad.adapters.kube.client import KubeClientError, new_api_client

        try:
            client = await new_api_client(kubeconfig=kubeconfig, context=context)
        except KubeClientError as exc:
            raise KubeError(str(exc)) from None
        return cls(client)

    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        import aiohttp

        try:
            resp = await self._client.call_api(
                path, method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            try:
                raw = await resp.read()
                status = resp.status
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    async def close(self) -> None:
        from maculad.adapters.kube.client import close_api_client

        await close_api_client(self._client)


def _status_message(status: int, body: Any) -> str:
    if isinstance(body, Mapping) and body.get("kind") == "Status":
        return f"{status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    text = body if isinstance(body, str) else json.dumps(body)[:300]
    return f"{status}: {text[:300]}"


async def api_ready(api: KubeTransport, *, timeout: float = 5.0) -> tuple[bool, str]:
    """`GET /readyz`: (True, "") when the API server says ok, else (False, why)."""
    try:
        status, body = await api.request("GET", "/readyz", timeout=timeout)
    except KubeError as exc:
        return False, str(exc)
    if status == 200:
        return True, ""
    return False, f"/readyz answered {_status_message(status, body)}"


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
                raise KubeError(f"discovery of {api_version}: {_status_message(status, body)}", status=status)
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
            raise KubeError(f"apply {describe(body)}: {_status_message(status, answer)}", status=status)
        return dict(answer) if isinstance(answer, Mapping) else {}

    async def get(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        res = await self.resource(str(obj["apiVersion"]), str(obj["kind"]))
        status, answer = await self._api.request("GET", resource_path(obj, res))
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, Mapping):
            raise KubeError(f"get {describe(obj)}: {_status_message(status, answer)}", status=status)
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
