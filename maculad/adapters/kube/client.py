"""The one Kubernetes client: a kubeconfig context → `KubeSession`, the `KubeTransport` everyone uses.

One place builds sessions so the Ingress watch (`adapters.kube.ingresses`), the
apply of manifests (`adapters.kube.apply`), the CoreDNS block and the kind
cluster supervisor reach the API server the same way: `kubeconfig.py` resolves
a path and an optional context (`None` → the file's current-context; the
user's file is never written) into a `KubeTarget`, and the session speaks
plain HTTP/1.1 to its server over the adapters' one HTTP client
(`adapters.http`), with the context's CA, client certificate or bearer token.
Every way loading can fail — a missing file, bad YAML, an unknown context, a
credential plugin, a broken certificate — is one `KubeClientError` with a
readable reason, so callers log it and retry instead of crashing; every way a
request can fail to get an answer is a `KubeError`.

The session is built fresh on each (re)connect: a recreated kind cluster comes
back with a new port and new certificates in the same file. `request` is the
whole-answer call (method, path, query, body → status and decoded body);
`stream` opens a watch whose JSON lines are read as they come. `api_ready` is
the one `/readyz` test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from maculad.adapters.http import Endpoint, HTTPClient, HTTPUnavailable, Stream
from maculad.adapters.kube.kubeconfig import KubeClientError, KubeTarget, load_kubeconfig, ssl_context

log = structlog.get_logger("maculad.adapters.kube")

__all__ = ["KubeClientError", "KubeError", "KubeSession", "KubeTransport", "api_ready", "object_key",
           "status_message"]


def object_key(obj: Any) -> tuple[str, str] | None:
    """(namespace, name) of a raw object, or None when it has no usable metadata."""
    if not isinstance(obj, Mapping):
        return None
    md = obj.get("metadata")
    if not isinstance(md, Mapping):
        return None
    name, ns = md.get("name"), md.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(ns, str) or not ns:
        return None
    return ns, name


class KubeError(Exception):
    """The API server could not be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class KubeTransport(Protocol):
    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One API call: (HTTP status, body decoded as JSON when it is JSON, else text)."""

    async def close(self) -> None: ...


class KubeSession:
    """`KubeTransport` over the adapters' HTTP client, for one resolved kubeconfig context."""

    def __init__(self, target: KubeTarget, *, timeout: float = 30.0) -> None:
        parts = urlsplit(target.server)
        try:
            endpoint = Endpoint.parse(f"{parts.scheme}://{parts.netloc}")
        except ValueError as exc:
            raise KubeClientError(f"kubeconfig {target.source}: server {target.server!r}: {exc}") from None
        self.target = target
        self._prefix = parts.path.rstrip("/")  # a server behind a path (a proxy) keeps its prefix
        headers = {"Accept": "application/json", **target.headers()}
        self._http = HTTPClient(endpoint, ssl=ssl_context(target), server_hostname=target.tls_server_name,
                                timeout=timeout, headers=headers)

    @classmethod
    def for_context(cls, kubeconfig: Path, context: str | None) -> KubeSession:
        """A session for `context` of `kubeconfig` (read now); `KubeClientError` when it gives none."""
        return cls(load_kubeconfig(kubeconfig, context))

    @classmethod
    async def open(cls, kubeconfig: Path, context: str | None) -> KubeSession:
        """`for_context`, with a kubeconfig that gives no session reported as a `KubeError`."""
        try:
            return cls.for_context(kubeconfig, context)
        except KubeClientError as exc:
            raise KubeError(str(exc)) from None

    def __str__(self) -> str:
        return self.target.server

    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        data = _encode(body)
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            resp = await self._http.request(method, self._prefix + path, params=query, headers=headers, body=data,
                                            timeout=timeout)
        except HTTPUnavailable as exc:
            raise KubeError(f"{method} {path}: {exc}") from None
        text = resp.body.decode("utf-8", "replace")
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    async def stream(self, path: str, *, query: Mapping[str, str] | None = None, timeout: float = 30.0) -> Stream:
        """A GET whose body is read as it comes (a watch); returns once the status line arrived."""
        try:
            return await self._http.stream("GET", self._prefix + path, params=query, timeout=timeout)
        except HTTPUnavailable as exc:
            raise KubeError(f"GET {path}: {exc}") from None

    async def close(self) -> None:
        try:
            await self._http.close()
        except Exception:  # closing must never fail a shutdown
            log.debug("kube_client_close_failed", exc_info=True)


def _encode(body: Any) -> bytes | None:
    """A request body: bytes as they are, text as UTF-8, anything else as JSON (which YAML readers take too)."""
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def status_message(status: int, body: Any) -> str:
    if isinstance(body, Mapping) and body.get("kind") == "Status":
        return f"{status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    text = body if isinstance(body, str) else json.dumps(body)[:300]
    return f"{status}: {text[:300]}"


async def api_ready(api: KubeTransport, *, timeout: float = 5.0) -> tuple[bool, str]:
    """`GET /readyz`: (True, "") when the API server answers 200 `ok`, else (False, why).

    The one readiness check of the API server, for the cluster supervisor and anyone else."""
    try:
        status, body = await api.request("GET", "/readyz", timeout=timeout)
    except KubeError as exc:
        return False, str(exc)
    if status == 200 and isinstance(body, str) and body.strip() == "ok":
        return True, ""
    return False, f"/readyz answered {status_message(status, body)}"


