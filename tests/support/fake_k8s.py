"""A fake Kubernetes API server that speaks the real wire protocol (aiohttp).

No API server can run on these machines, so tests point the real
kubernetes-asyncio client at this one through a real kubeconfig file. It keeps
what a client can observe of an API server:

* one global, monotonically increasing ``resourceVersion`` (etcd revision) that
  every write bumps; objects carry ``metadata.resourceVersion``/``uid``/
  ``creationTimestamp``/``generation``;
* list (``limit`` + ``continue`` pagination, label and field selectors) returns
  the items and the list's ``metadata.resourceVersion``;
* watch (``?watch=true``) is a chunked stream of JSON lines — ``ADDED``,
  ``MODIFIED``, ``DELETED``, ``BOOKMARK`` (with ``allowWatchBookmarks``) — from
  a given ``resourceVersion`` (history replay), or, without one, the synthetic
  ``ADDED`` of every current object first; ``timeoutSeconds`` ends it cleanly;
  events queued together are written together (kube-apiserver flushes only
  when no further event is pending);
* a version older than the compaction point answers a watch with the
  ``ERROR`` event ``{"kind": "Status", "code": 410, "reason": "Expired"}``
  (and a ``continue`` token from before a compaction with HTTP 410);
* create (POST), get, replace (PUT, optimistic concurrency on
  ``resourceVersion``), patch (merge patch, strategic merge treated as merge
  patch, server-side apply ``application/apply-patch+yaml`` with a required
  ``fieldManager``), delete — errors as ``Status`` objects (404 NotFound,
  409 AlreadyExists / Conflict, 422 Invalid, 415, 401);
* discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/{g}/{v}``,
  and ``/readyz``, ``/livez``, ``/healthz``;
* bearer-token authentication (the kubeconfig it writes carries the token).

Failure injection, for tests of the client's resilience: ``cut_streams()``
(optionally in the middle of a JSON line), ``freeze_streams()`` (open streams go
silent: a dead connection), ``send_error()`` (an ERROR event on open streams),
``compact()`` (410 for older versions), ``delay`` (slow answers),
``pause()``/``resume()`` (requests hang), ``outage("refuse")`` (the port stops
listening, every connection is closed) or ``outage("503")``, and ``recover()``.
``requests`` records every request (``count_requests`` counts lists/watches).

Resources are generic: ``ResourceType`` describes one (group, version, plural,
kind, namespaced) and ``add_resource`` registers more. Ingresses, ConfigMaps,
Namespaces and IngressClasses are there from the start. Namespaced objects
written over HTTP need their Namespace to exist (``default`` and
``kube-system`` do), as on a real server; the Python API (``create`` etc.)
creates it implicitly and does **not** validate objects, so tests can store
malformed ones.

Usage::

    api = FakeKubeAPI()
    await api.start()                       # 127.0.0.1, a free port
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create_ingress("apps", "console", ["console.macula.local"])
    ...
    await api.stop()

Everything runs on the caller's event loop; the Python API is synchronous
(a write is committed and fanned out to open watches before it returns).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import secrets
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from aiohttp import web

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


INGRESSES = ResourceType("networking.k8s.io", "v1", "ingresses", "Ingress", True)
INGRESSCLASSES = ResourceType("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", False)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    time: float

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch", "").lower() in ("true", "1")


@dataclass(slots=True)
class _HistoryEntry:
    rv: int
    rtype: ResourceType
    namespace: str
    type: str
    obj: Obj
    line: bytes


@dataclass(eq=False, slots=True)
class _Watcher:
    rtype: ResourceType
    namespace: str | None
    labels: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Any]]
    request: web.BaseRequest
    frozen: bool = False


@dataclass(slots=True)
class _Page:
    rv: int
    items: list[Obj]
    offset: int


@dataclass(slots=True)
class _Applied:
    """What one field manager last applied to one object (server-side apply)."""

    by_manager: dict[str, Obj] = field(default_factory=dict)


class StatusError(Exception):
    """A request the server refuses: rendered as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(event_type: str, obj: Obj) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(obj, dict) and obj:
        out: set[tuple[str, ...]] = set()
        for k, v in obj.items():
            out |= _leaf_paths(v, (*prefix, str(k)))
        return out
    return {prefix}


def _remove_path(obj: Obj, path: tuple[str, ...]) -> None:
    node: Any = obj
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            return
        node = node[k]
    if isinstance(node, dict) and path:
        node.pop(path[-1], None)


def _parse_label_selector(text: str) -> Callable[[Obj], bool]:
    """Equality-based selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated."""
    # each test: (key, op, value) with op one of "=", "!=", "exists", "!exists"
    tests: list[tuple[str, str, str]] = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in raw:
            k, v = (x.strip() for x in raw.split("!=", 1))
            tests.append((k, "!=", v))
        elif "=" in raw:
            k, v = (x.strip() for x in raw.replace("==", "=").split("=", 1))
            tests.append((k, "=", v))
        elif raw.startswith("!"):
            tests.append((raw[1:].strip(), "!exists", ""))
        else:
            tests.append((raw, "exists", ""))

    def one(labels: Mapping[str, str], k: str, op: str, v: str) -> bool:
        if op == "=":
            return labels.get(k) == v
        if op == "!=":
            return labels.get(k) != v
        return (k in labels) == (op == "exists")

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(one(labels, k, op, v) for k, op, v in tests)

    return match


def _parse_field_selector(text: str) -> Callable[[Obj], bool]:
    tests: list[tuple[str, str, bool]] = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        neg = "!=" in raw
        k, v = (s.strip() for s in raw.replace("!=", "=").replace("==", "=").split("=", 1))
        if k not in ("metadata.name", "metadata.namespace"):
            raise StatusError(400, "BadRequest", f'field label not supported: {k}')
        tests.append((k.split(".", 1)[1], v, neg))

    def match(obj: Obj) -> bool:
        md = obj.get("metadata") or {}
        return all((md.get(k, "") == v) != neg for k, v, neg in tests)

    return match


class FakeKubeAPI:
    """An in-process Kubernetes API server for tests and benchmarks (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = "fake-token",
        tls: bool = False,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
        max_history: int = 100_000,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.max_history = max_history
        #: seconds every request waits before it is answered (slow API server)
        self.delay = 0.0
        #: every request as it arrived (the failure modes record them too)
        self.requests: list[RecordedRequest] = []

        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._applied: dict[tuple[ResourceType, str, str], _Applied] = {}
        self._history: list[_HistoryEntry] = []
        self._rv = 1
        self._compacted = 0  # a version below this is "too old"
        self._watchers: set[_Watcher] = set()
        self._pages: dict[str, _Page] = {}
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._mode: Literal["up", "refuse", "503"] = "up"
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ssl: ssl.SSLContext | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_pem: bytes | None = None
        self._transports: set[asyncio.BaseTransport] = set()

        for rt in (INGRESSES, INGRESSCLASSES, CONFIGMAPS, NAMESPACES):
            self.add_resource(rt)
        for ns in ("default", "kube-system", "kube-public"):
            self._commit_create(NAMESPACES, {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def resource_version(self) -> int:
        return self._rv

    async def start(self) -> None:
        """Listen on `host`:`port` (port 0 → a free port, then fixed for restarts)."""
        if self.tls and self._ssl is None:
            self._make_tls()
        await self._listen()

    async def stop(self) -> None:
        self._cut_all(mid_event=False)
        await self._unlisten()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self._ssl)
        await self._site.start()
        if self.port == 0:
            server = self._site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        for t in list(self._transports):
            t.close()
        self._transports.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    def write_kubeconfig(
        self, path: Path, *, context: str = "fake", cluster: str = "fake", user: str = "fake",
        insecure: bool = False,
    ) -> Path:
        """A kubeconfig for this server (token auth; the CA inline when TLS is on)."""
        cluster_entry: Obj = {"server": self.url}
        if self.tls:
            if insecure:
                cluster_entry["insecure-skip-tls-verify"] = True
            else:
                assert self._ca_pem is not None
                cluster_entry["certificate-authority-data"] = base64.b64encode(self._ca_pem).decode()
        user_entry: Obj = {"token": self.token} if self.token else {}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster, "cluster": cluster_entry}],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
            "current-context": context,
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def _make_tls(self) -> None:
        self._tls_dir = tempfile.TemporaryDirectory(prefix="fake-k8s-tls-")
        d = Path(self._tls_dir.name)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=fake-kube-apiserver",
             "-addext", f"subjectAltName=IP:{self.host},DNS:localhost",
             "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
            check=True, capture_output=True,
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
        self._ssl = ctx
        self._ca_pem = (d / "cert.pem").read_bytes()

    # ------------------------------------------------------------------ failure injection

    def cut_streams(self, *, mid_event: bool = False) -> int:
        """Close every open watch connection abruptly (no terminating chunk).

        With `mid_event`, half of a JSON event line is written first. Returns
        how many streams were cut."""
        return self._cut_all(mid_event=mid_event)

    def freeze_streams(self) -> int:
        """Open watch streams stay connected but never send anything again."""
        for w in self._watchers:
            w.frozen = True
        return len(self._watchers)

    def send_error(self, code: int = 500, reason: str = "InternalError", message: str = "injected error") -> int:
        """Write an ERROR event (a `Status` with `code`) on every open watch stream; returns how many."""
        line = _line("ERROR", status_object(code, reason, message))
        for w in self._watchers:
            w.queue.put_nowait(("event", line))
        return len(self._watchers)

    def pause(self) -> None:
        """New requests hang (before any byte of the answer) until `resume()`."""
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    async def outage(self, mode: Literal["refuse", "503"] = "refuse") -> None:
        """`refuse`: stop listening and close every connection; `503`: answer
        every request with 503 ServiceUnavailable (open streams are cut)."""
        self._cut_all(mid_event=False)
        self._mode = mode
        if mode == "refuse":
            await asyncio.sleep(0)  # let cut handlers finish before the runner goes
            await self._unlisten()

    async def recover(self) -> None:
        if self._mode == "refuse":
            self._mode = "up"
            await self._listen()
        self._mode = "up"

    def compact(self) -> int:
        """Forget the history, as etcd compaction at the current revision: a watch
        from any older version gets 410 Expired (from the current one it works,
        nothing was missed). Returns the compaction point."""
        self._history.clear()
        self._compacted = self._rv
        return self._compacted

    @property
    def watch_count(self) -> int:
        return len(self._watchers)

    def count_requests(self, plural: str, *, watch: bool | None = None, method: str = "GET") -> int:
        return sum(
            1 for r in self.requests
            if r.method == method and r.path.rstrip("/").endswith("/" + plural)
            and (watch is None or r.is_watch == watch)
        )

    def _cut_all(self, *, mid_event: bool) -> int:
        n = 0
        for w in list(self._watchers):
            w.queue.put_nowait(("cut", mid_event))
            self._watchers.discard(w)
            n += 1
        return n

    # ------------------------------------------------------------------ resources and objects (Python API)

    def add_resource(self, rtype: ResourceType) -> None:
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._objects.setdefault(rtype, {})

    def resource_types(self) -> list[ResourceType]:
        return list(self._types.values())

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        obj = self._objects[rtype].get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, rtype: ResourceType, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for (ns, _), o in sorted(self._objects[rtype].items())
                if namespace is None or ns == namespace]

    def create(self, rtype: ResourceType, obj: Obj, *, namespace: str | None = None) -> Obj:
        """Store a new object (no validation; its namespace is created if missing)."""
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if rtype.namespaced:
            md["namespace"] = namespace or md.get("namespace") or "default"
            if ("", md["namespace"]) not in self._objects[NAMESPACES]:
                self._commit_create(NAMESPACES, {"metadata": {"name": md["namespace"]}})
        if self._key(rtype, obj) in self._objects[rtype]:
            raise StatusError(409, "AlreadyExists", f'{rtype.plural}.{rtype.group} "{md.get("name")}" already exists')
        return self._commit_create(rtype, obj)

    def replace(self, rtype: ResourceType, obj: Obj) -> Obj:
        """Store a new version of an existing object (no validation, no version check)."""
        obj = copy.deepcopy(obj)
        key = self._key(rtype, obj)
        if key not in self._objects[rtype]:
            raise StatusError(404, "NotFound", f'{rtype.plural} "{key[1]}" not found')
        obj["metadata"].pop("resourceVersion", None)
        return self._commit_update(rtype, obj)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        key = (namespace or "", name) if rtype.namespaced else ("", name)
        if key not in self._objects[rtype]:
            return None
        return self._commit_delete(rtype, key)

    # conveniences for the Ingress tests

    @staticmethod
    def ingress_object(
        namespace: str, name: str, hosts: Iterable[str], *, ingress_class: str | None = None,
        annotations: Mapping[str, str] | None = None, tls_hosts: Iterable[str] = (),
        service: str = "web", port: int = 80,
    ) -> Obj:
        rules = [
            {"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                "service": {"name": service, "port": {"number": port}}}}]}}
            for h in hosts
        ]
        spec: Obj = {"rules": rules}
        if ingress_class is not None:
            spec["ingressClassName"] = ingress_class
        tls = list(tls_hosts)
        if tls:
            spec["tls"] = [{"hosts": tls, "secretName": f"{name}-tls"}]
        md: Obj = {"name": name, "namespace": namespace}
        if annotations:
            md["annotations"] = dict(annotations)
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md, "spec": spec}

    def create_ingress(self, namespace: str, name: str, hosts: Iterable[str], **kw: Any) -> Obj:
        return self.create(INGRESSES, self.ingress_object(namespace, name, hosts, **kw))

    def set_ingress_hosts(self, namespace: str, name: str, hosts: Iterable[str], **kw: Any) -> Obj:
        return self.replace(INGRESSES, self.ingress_object(namespace, name, hosts, **kw))

    def delete_ingress(self, namespace: str, name: str) -> Obj | None:
        return self.delete(INGRESSES, namespace, name)

    # ------------------------------------------------------------------ commits

    @staticmethod
    def _key(rtype: ResourceType, obj: Obj) -> tuple[str, str]:
        md = obj.get("metadata") or {}
        return (md.get("namespace", "") if rtype.namespaced else "", md.get("name", ""))

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _commit_create(self, rtype: ResourceType, obj: Obj) -> Obj:
        md = obj.setdefault("metadata", {})
        md.pop("resourceVersion", None)
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + secrets.token_hex(3)[:5]
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = _now()
        md["generation"] = 1
        if rtype is NAMESPACES:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif rtype is INGRESSES:
            obj.setdefault("status", {"loadBalancer": {}})
        return self._commit(rtype, "ADDED", obj)

    def _commit_update(self, rtype: ResourceType, obj: Obj) -> Obj:
        key = self._key(rtype, obj)
        old = self._objects[rtype][key]
        md = obj.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp"):
            md[k] = old["metadata"].get(k)
        md["generation"] = old["metadata"].get("generation", 1) + (old.get("spec") != obj.get("spec"))
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        return self._commit(rtype, "MODIFIED", obj)

    def _commit_delete(self, rtype: ResourceType, key: tuple[str, str]) -> Obj:
        obj = self._objects[rtype][key]
        if rtype is NAMESPACES:
            for rt, objs in self._objects.items():
                if rt.namespaced:
                    for k in [k for k in objs if k[0] == key[1]]:
                        self._commit_delete(rt, k)
        self._applied.pop((rtype, key[0], key[1]), None)
        return self._commit(rtype, "DELETED", copy.deepcopy(obj))

    def _commit(self, rtype: ResourceType, event_type: str, obj: Obj) -> Obj:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        key = self._key(rtype, obj)
        if event_type == "DELETED":
            del self._objects[rtype][key]
        else:
            self._objects[rtype][key] = obj
        snapshot = copy.deepcopy(obj)
        entry = _HistoryEntry(rv, rtype, key[0], event_type, snapshot, _line(event_type, snapshot))
        self._history.append(entry)
        if len(self._history) > self.max_history:
            drop = len(self._history) - self.max_history
            self._compacted = self._history[drop].rv
            del self._history[:drop]
        for w in self._watchers:
            if self._matches(w, entry):
                w.queue.put_nowait(("event", entry.line))
        return copy.deepcopy(obj)

    @staticmethod
    def _matches(w: _Watcher, e: _HistoryEntry) -> bool:
        return (e.rtype is w.rtype and (w.namespace is None or e.namespace == w.namespace)
                and w.labels(e.obj))

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.transport is not None:
            self._transports.add(request.transport)
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), time.monotonic()))
        if not self._unpaused.is_set():
            await self._unpaused.wait()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        try:
            if self._mode == "503":
                raise StatusError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            public = request.path in ("/readyz", "/livez", "/healthz", "/version")
            if self.token and not public and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise StatusError(401, "Unauthorized", "Unauthorized")
            result: web.StreamResponse = await handler(request)
            return result
        except StatusError as exc:
            return web.json_response(status_object(exc.code, exc.reason, exc.message, exc.details),
                                     status=exc.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].strip("/")
        parts = [p for p in path.split("/") if p]
        if path in ("/readyz", "/livez", "/healthz"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response({
                "major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "gitCommit": "fake",
                "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64",
            })
        if path == "/api":
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
        if path == "/apis":
            return web.json_response(self._group_list())
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[:1] == ["apis"] and len(parts) == 2:
            return web.json_response(self._group(parts[1]))
        else:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 2:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        rtype = self._types.get((group, version, rest[0]))
        if rtype is None or (namespace is not None and not rtype.namespaced):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) == 2 else None
        m = request.method
        if name is None:
            if m == "GET":
                if request.query.get("watch", "").lower() in ("true", "1"):
                    return await self._watch(request, rtype, namespace)
                return self._list(request, rtype, namespace)
            if m == "POST" and (namespace is not None or not rtype.namespaced):
                return await self._http_create(request, rtype, namespace)
        else:
            if m == "GET":
                return web.json_response(self._must_get(rtype, namespace, name))
            if m == "PUT":
                return await self._http_replace(request, rtype, namespace, name)
            if m == "PATCH":
                return await self._http_patch(request, rtype, namespace, name)
            if m == "DELETE":
                return self._http_delete(rtype, namespace, name)
        raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _group_list(self) -> Obj:
        groups: dict[str, set[str]] = {}
        for (g, v, _) in self._types:
            if g:
                groups.setdefault(g, set()).add(v)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in sorted(groups)]}

    def _group(self, group: str) -> Obj:
        versions = sorted({v for (g, v, _) in self._types if g == group})
        if not versions:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        rts = [rt for (g, v, _), rt in self._types.items() if g == group and v == version]
        if not rts:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return {
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [{"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                           "kind": rt.kind, "verbs": ["create", "delete", "get", "list", "patch", "update",
                                                      "watch"]} for rt in rts],
        }

    def _must_get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects[rtype].get((namespace or "", name))
        if obj is None:
            raise StatusError(404, "NotFound", f'{rtype.plural}{"." + rtype.group if rtype.group else ""} "{name}" '
                              "not found", {"name": name, "group": rtype.group, "kind": rtype.plural})
        return obj

    def _selector(self, request: web.Request) -> Callable[[Obj], bool]:
        lab = _parse_label_selector(request.query.get("labelSelector", ""))
        fld = _parse_field_selector(request.query.get("fieldSelector", ""))
        return lambda o: lab(o) and fld(o)

    def _list(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.Response:
        q = request.query
        token = q.get("continue")
        if token:
            page = self._pages.pop(token, None)
            if page is None or page.rv < self._compacted:
                raise StatusError(410, "Expired", "The provided continue parameter is too old to display a "
                                  "consistent list result. You can start a new list without the continue "
                                  "parameter.")
        else:
            sel = self._selector(request)
            items = [o for (ns, _), o in sorted(self._objects[rtype].items())
                     if (namespace is None or ns == namespace) and sel(o)]
            page = _Page(self._rv, items, 0)
        try:
            limit = int(q.get("limit", "0") or 0)
        except ValueError:
            raise StatusError(400, "BadRequest", f"invalid limit {q.get('limit')!r}") from None
        end = page.offset + limit if limit > 0 else len(page.items)
        chunk = page.items[page.offset:end]
        meta: Obj = {"resourceVersion": str(page.rv)}
        if end < len(page.items):
            nxt = secrets.token_urlsafe(12)
            self._pages[nxt] = _Page(page.rv, page.items, end)
            meta["continue"] = nxt
            meta["remainingItemCount"] = len(page.items) - end
        return web.json_response({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                                  "metadata": meta, "items": chunk})

    async def _watch(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.StreamResponse:
        q = request.query
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            timeout = float(q["timeoutSeconds"]) if "timeoutSeconds" in q else self.default_watch_timeout
        except ValueError:
            raise StatusError(400, "BadRequest", f"invalid timeoutSeconds {q['timeoutSeconds']!r}") from None
        rv_s = q.get("resourceVersion", "")
        try:
            since = int(rv_s) if rv_s not in ("", "0") else None
        except ValueError:
            raise StatusError(400, "BadRequest", f"invalid resourceVersion {rv_s!r}") from None
        sel = self._selector(request)

        # decide what to send first and register, without yielding to the loop in between
        initial: list[bytes] = []
        expired = since is not None and since < self._compacted
        if since is None:
            initial = [_line("ADDED", o) for (ns, _), o in sorted(self._objects[rtype].items())
                       if (namespace is None or ns == namespace) and sel(o)]
        elif not expired:
            initial = [e.line for e in self._history
                       if e.rv > since and e.rtype is rtype and (namespace is None or e.namespace == namespace)
                       and sel(e.obj)]
        watcher = _Watcher(rtype, namespace, sel, asyncio.Queue(), request)
        if not expired:
            self._watchers.add(watcher)

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if expired:
                await resp.write(_line("ERROR", status_object(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})")))
                await resp.write_eof()
                return resp
            for line in initial:
                await resp.write(line)
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                try:
                    kind, payload = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0.0))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark and not watcher.frozen:
                        await resp.write(_line("BOOKMARK", {
                            "kind": rtype.kind, "apiVersion": rtype.api_version,
                            "metadata": {"resourceVersion": str(self._rv)}}))
                    next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                # what is queued goes out in one write, as kube-apiserver flushes only when no further
                # event is pending: a burst of writes reaches the client as one buffered read
                batch: list[bytes] = []
                while kind != "cut":
                    if not watcher.frozen:
                        batch.append(payload)
                    if watcher.queue.empty():
                        break
                    kind, payload = watcher.queue.get_nowait()
                if batch:
                    await resp.write(b"".join(batch))
                if kind == "cut":
                    if payload:
                        await resp.write(b'{"type":"MODIFIED","object":{"kind":"' + rtype.kind.encode())
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return resp

    async def _body(self, request: web.Request) -> Obj:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise StatusError(400, "BadRequest", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise StatusError(400, "BadRequest", "the request body must be a JSON object")
        return body

    def _check_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if rtype.namespaced and ("", namespace or "") not in self._objects[NAMESPACES]:
            raise StatusError(404, "NotFound", f'namespaces "{namespace}" not found',
                              {"name": namespace, "kind": "namespaces"})

    async def _http_create(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.Response:
        body = await self._body(request)
        md = body.get("metadata")
        if not isinstance(md, dict) or not (md.get("name") or md.get("generateName")):
            raise StatusError(422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required value")
        if rtype.namespaced:
            if md.get("namespace") not in (None, namespace):
                raise StatusError(400, "BadRequest", "the namespace of the provided object does not match "
                                  "the namespace sent on the request")
            md["namespace"] = namespace
        self._check_namespace(rtype, namespace)
        if md.get("name") and self._key(rtype, body) in self._objects[rtype]:
            raise StatusError(409, "AlreadyExists", f'{rtype.plural} "{md["name"]}" already exists',
                              {"name": md["name"], "kind": rtype.plural})
        return web.json_response(self._commit_create(rtype, body), status=201)

    async def _http_replace(self, request: web.Request, rtype: ResourceType, namespace: str | None,
                            name: str) -> web.Response:
        body = await self._body(request)
        old = self._must_get(rtype, namespace, name)
        md = body.setdefault("metadata", {})
        if md.get("name", name) != name:
            raise StatusError(400, "BadRequest", "the name of the object does not match the name on the URL")
        md["name"] = name
        if rtype.namespaced:
            md["namespace"] = namespace
        want = md.get("resourceVersion")
        if want and want != old["metadata"]["resourceVersion"]:
            raise StatusError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} "{name}": the '
                              "object has been modified; please apply your changes to the latest version and "
                              "try again")
        return web.json_response(self._commit_update(rtype, body))

    async def _http_patch(self, request: web.Request, rtype: ResourceType, namespace: str | None,
                          name: str) -> web.Response:
        ctype = request.content_type
        raw = await request.read()
        if ctype == "application/apply-patch+yaml":
            manager = request.query.get("fieldManager", "")
            if not manager:
                raise StatusError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: "
                                  "Required value: is required for apply patch")
            try:
                applied = yaml.safe_load(raw.decode() or "{}")
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise StatusError(400, "BadRequest", f"error decoding YAML: {exc}") from None
            if not isinstance(applied, dict):
                raise StatusError(400, "BadRequest", "the applied configuration must be an object")
            return self._apply(rtype, namespace, name, manager, applied)
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise StatusError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                              "accepted media types include: application/merge-patch+json, "
                              "application/strategic-merge-patch+json, application/apply-patch+yaml")
        try:
            patch = json.loads(raw)
        except ValueError:
            raise StatusError(400, "BadRequest", "the patch is not valid JSON") from None
        old = self._must_get(rtype, namespace, name)
        new = merge_patch(old, patch)
        new.setdefault("metadata", {}).update({"name": name, **({"namespace": namespace} if namespace else {})})
        new["metadata"].pop("resourceVersion", None)
        return web.json_response(self._commit_update(rtype, new))

    def _apply(self, rtype: ResourceType, namespace: str | None, name: str, manager: str,
               applied: Obj) -> web.Response:
        """Server-side apply, simplified: fields this manager applied before and
        dropped now are removed; the applied configuration is merged in."""
        applied = copy.deepcopy(applied)
        amd = applied.setdefault("metadata", {})
        if amd.get("name", name) != name:
            raise StatusError(400, "BadRequest", "the name of the object does not match the name on the URL")
        amd["name"] = name
        if rtype.namespaced:
            amd["namespace"] = namespace
        for k in ("apiVersion", "kind"):
            applied.pop(k, None)
        amd.pop("resourceVersion", None)
        self._check_namespace(rtype, namespace)
        key = (namespace or "", name)
        record = self._applied.setdefault((rtype, key[0], key[1]), _Applied())
        old = self._objects[rtype].get(key)
        if old is None:
            record.by_manager = {manager: applied}
            return web.json_response(self._commit_create(rtype, copy.deepcopy(applied)), status=201)
        prev = record.by_manager.get(manager, {})
        new = copy.deepcopy(old)
        for path in _leaf_paths(prev) - _leaf_paths(applied):
            if path[:1] != ("metadata",) or path[1:2] in (("labels",), ("annotations",)):
                _remove_path(new, path)
        new = merge_patch(new, applied)
        new["metadata"].pop("resourceVersion", None)
        record.by_manager[manager] = applied
        if {k: v for k, v in new.items() if k != "metadata"} == {k: v for k, v in old.items() if k != "metadata"} \
                and new["metadata"].get("labels") == old["metadata"].get("labels") \
                and new["metadata"].get("annotations") == old["metadata"].get("annotations"):
            return web.json_response(old)  # no-op apply: no new version, as on a real server
        return web.json_response(self._commit_update(rtype, new))

    def _http_delete(self, rtype: ResourceType, namespace: str | None, name: str) -> web.Response:
        obj = self._must_get(rtype, namespace, name)
        self._commit_delete(rtype, (namespace or "", name))
        return web.json_response({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": rtype.group, "kind": rtype.plural,
                        "uid": obj["metadata"].get("uid")},
        })
