"""The Ingress list/watch loop: networking.k8s.io/v1 Ingresses of all namespaces, kept in memory.

The loop is the classic informer, driven by hand over the one Kubernetes
client (`KubeSession`: `GET /apis/networking.k8s.io/v1/ingresses`, paged, and
the same path with `watch=true` read line by line), so every wire-level case is
ours to decide:

1. **list** every Ingress in all namespaces (paged, `limit`/`continue`), keep
   them in memory keyed by (namespace, name) and remember the list's
   `resourceVersion`;
2. **watch** from that version with `allowWatchBookmarks=true` and
   `timeoutSeconds=kubernetes.watch_timeout`, reading JSON lines; every
   ADDED/MODIFIED/DELETED updates the map and advances the version, a BOOKMARK
   only advances it;
3. a stream the server ends (its timeout) is resumed from the last version at
   once; a stream that breaks (cut, reset, a half line) or goes silent for
   `kubernetes.stale_after` seconds is reconnected after an exponential
   backoff with jitter — and still resumes from the last version, no relist;
4. **410 Gone** (an ERROR event with code 410, or HTTP 410) means the version
   was compacted away: forget it and relist. The relist replaces the whole
   map, so Ingresses deleted during the gap vanish;
5. while the API server is unreachable (or the kubeconfig missing), nothing is
   reported: subscribers keep what they last had.

Like the Docker inventory, the watch knows nothing of routes: it hands each
change to its one subscriber as an `IngressUpdate` — "relist" with the whole
map, or "event" with the one object that changed (None when deleted) — and the
provider (`providers.kubernetes`) builds and publishes route snapshots.
Connection state, relists, reconnects and the watch metrics are kept here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypedDict, cast

import structlog

from maculad.adapters.http import HTTPUnavailable
from maculad.adapters.kube.client import KubeClientError, KubeSession, object_key
from maculad.config import BackoffConfig, KubernetesConfig
from maculad.core.backoff import Backoff
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics

log = structlog.get_logger("maculad.adapters.kube.ingresses")

IngressKey = tuple[str, str]
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
DEFAULT_BACKOFF = BackoffConfig(initial=0.25, factor=2.0, cap=30.0)
#: Every Ingress of every namespace (list and watch).
PATH = "/apis/networking.k8s.io/v1/ingresses"


class IngressWatchStatus(TypedDict):
    connected: bool
    kubeconfig: str
    context: str | None
    resource_version: str | None
    ingresses: int
    last_event_age: float | None
    relists: int
    reconnects: int
    last_error: str | None


class WatchGone(Exception):
    """The resourceVersion we hold is too old (410): relist."""


class WatchBroken(Exception):
    """The stream failed in a way that warrants a reconnect with backoff."""


@dataclass(frozen=True, slots=True)
class IngressUpdate:
    """What changed: a fresh list (`objects` is the whole map) or one object (`obj` None: deleted)."""

    kind: Literal["relist", "event"]
    objects: Mapping[IngressKey, dict[str, Any]]
    key: IngressKey | None = None
    obj: dict[str, Any] | None = None


class IngressWatch:
    """List/watch of every Ingress through the one Kubernetes client; one subscriber gets the changes."""

    def __init__(
        self,
        *,
        config: KubernetesConfig,
        metrics: Metrics,
        events: EventBus,
        on_update: Callable[[IngressUpdate], None],
        keeping: Callable[[], int] | None = None,
        backoff: BackoffConfig | None = None,
        page_size: int = 500,
    ) -> None:
        self._cfg = config
        self._metrics = metrics
        self._events = events
        self._on_update = on_update
        self._keeping = keeping or (lambda: len(self._ingresses))
        """How many routes the subscriber keeps while the watch is down (for logs and events)."""
        self._backoff_cfg = backoff or DEFAULT_BACKOFF
        self._page_size = page_size
        self._ingresses: dict[IngressKey, dict[str, Any]] = {}
        self._rv: str | None = None
        self._connected = False
        self._started = time.monotonic()
        self._last_event: float | None = None
        self._relists = 0
        self._reconnects = 0
        self._last_error: str | None = None
        metrics.k8s_connected.set(0)
        metrics.k8s_since_last_event.set_function(self._since_last_event)

    @property
    def objects(self) -> Mapping[IngressKey, dict[str, Any]]:
        return MappingProxyType(self._ingresses)

    def status(self) -> IngressWatchStatus:
        return {
            "connected": self._connected,
            "kubeconfig": str(self._cfg.kubeconfig),
            "context": self._cfg.context,
            "resource_version": self._rv,
            "ingresses": len(self._ingresses),
            "last_event_age": None if self._last_event is None
            else round(time.monotonic() - self._last_event, 3),
            "relists": self._relists,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        """After the loop was cancelled: the watch is down."""
        self._set_connected(False)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """List, watch, resume, relist — forever; only cancellation ends it."""
        cfg = self._backoff_cfg
        backoff = Backoff(initial=cfg.initial, cap=cfg.cap, factor=cfg.factor, jitter=True)
        while True:
            try:
                api = KubeSession.for_context(self._cfg.kubeconfig, self._cfg.context)
            except KubeClientError as exc:
                self._failed(exc, backoff)
            else:
                try:
                    await self._session(api, backoff)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(exc, backoff)
                finally:
                    await api.close()
            self._reconnects += 1
            self._metrics.k8s_reconnects.inc()
            await asyncio.sleep(backoff.next())

    async def _session(self, net: KubeSession, backoff: Backoff) -> None:
        fresh_list = False
        while True:
            if self._rv is None:
                await self._relist(net)
                fresh_list = True
            try:
                lines = await self._watch(net, backoff)
            except WatchGone as exc:
                if fresh_list:  # a server that expires its own list's version: don't spin
                    raise WatchBroken(f"410 Gone right after a list: {exc}") from None
                log.info("kubernetes_watch_expired", resource_version=self._rv, reason=str(exc))
                self._rv = None
                continue
            fresh_list = fresh_list and lines == 0

    async def _relist(self, net: KubeSession) -> None:
        items: list[Any] = []
        cont: str | None = None
        rv: str | None = None
        while True:
            query = {"limit": str(self._page_size), **({"continue": cont} if cont else {})}
            try:
                status, answer = await net.request("GET", PATH, query=query, timeout=60)
                body = _json_body(status, answer)
            except WatchGone:
                if cont is None:
                    raise WatchBroken("list answered 410 Gone without a continue token") from None
                items, cont, rv = [], None, None  # the continue token expired: list again from the start
                continue
            md = body.get("metadata")
            page = body.get("items")
            if not isinstance(md, dict) or not isinstance(page, list):
                raise WatchBroken("the Ingress list has no metadata or items")
            rv = rv or _str_or_none(md.get("resourceVersion"))
            items.extend(page)
            cont = _str_or_none(md.get("continue"))
            if not cont:
                break
        if rv is None:
            raise WatchBroken("the Ingress list has no resourceVersion")
        fresh: dict[IngressKey, dict[str, Any]] = {}
        for obj in items:
            key = object_key(obj)
            if key is None:
                log.warning("kubernetes_ingress_malformed", reason="list item without metadata.name")
                continue
            fresh[key] = obj
        gone = len(set(self._ingresses) - set(fresh))
        self._ingresses = fresh
        self._rv = rv
        self._relists += 1
        self._metrics.k8s_relists.inc()
        self._mark_event()
        self._set_connected(True)
        self._on_update(IngressUpdate("relist", self.objects))
        log.info("kubernetes_listed", ingresses=len(fresh), resource_version=rv, vanished=gone,
                 relists=self._relists)
        self._events.publish("kubernetes_relisted", ingresses=len(fresh), resource_version=rv, vanished=gone)

    async def _watch(self, net: KubeSession, backoff: Backoff) -> int:
        """One watch request; returns (the lines read) when the server ends the stream cleanly."""
        started = time.monotonic()
        lines = 0
        assert self._rv is not None
        resp = await net.stream(PATH, query={
            "watch": "true", "resourceVersion": self._rv, "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._cfg.watch_timeout),
        })
        try:
            if resp.status != 200:
                raw = await resp.read()
                try:
                    answer: Any = json.loads(raw)
                except ValueError:
                    answer = raw.decode("utf-8", "replace")
                _json_body(resp.status, answer)  # raises WatchGone / WatchBroken with the server's reason
            self._set_connected(True)
            loop = asyncio.get_running_loop()
            stale = self._cfg.stale_after
            try:
                # one deadline, pushed forward on every line: no task per read, so
                # lines already buffered are consumed without yielding to the loop
                async with asyncio.timeout(stale) as guard:
                    async for line in resp.lines(keepends=True):
                        guard.reschedule(loop.time() + stale)
                        if not line.endswith(b"\n"):
                            raise WatchBroken("the stream ended in the middle of an event")
                        self._handle_line(line)
                        lines += 1
                        backoff.reset()
            except TimeoutError:
                raise WatchBroken(f"no event or bookmark for {stale:g}s: the stream is dead") from None
            except HTTPUnavailable as exc:  # cut, reset, or a line beyond the bound
                raise WatchBroken(str(exc)) from None
            if lines == 0 and time.monotonic() - started < 1.0:
                raise WatchBroken("the watch ended at once without an event")
            log.debug("kubernetes_watch_ended", resource_version=self._rv, lines=lines)
            return lines
        finally:
            await resp.close()

    def _handle_line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            raise WatchBroken(f"malformed watch line: {line[:120]!r}") from None
        if not isinstance(event, dict):
            raise WatchBroken(f"a watch line is not an object: {line[:120]!r}")
        etype = event.get("type")
        obj = event.get("object")
        self._metrics.k8s_watch_events.labels(type=etype if etype in EVENT_TYPES else "unknown").inc()
        self._mark_event()
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message") if isinstance(obj, dict) else None
            if code == 410:
                raise WatchGone(str(message or "410 Gone"))
            raise WatchBroken(f"watch error {code}: {message or obj!r}")
        md = obj.get("metadata") if isinstance(obj, dict) else None
        rv = _str_or_none(md.get("resourceVersion")) if isinstance(md, dict) else None
        if etype == "BOOKMARK":
            if rv is not None:
                self._rv = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("kubernetes_watch_unknown_event", type=etype)
            return
        key = object_key(obj)
        if key is None:
            log.warning("kubernetes_ingress_malformed", event=etype, reason="object without metadata.name")
        elif etype == "DELETED":
            self._ingresses.pop(key, None)
        else:
            assert isinstance(obj, dict)
            self._ingresses[key] = obj
        if rv is not None:
            self._rv = rv
        if key is not None:
            log.debug("kubernetes_ingress_event", type=etype, ingress=f"{key[0]}/{key[1]}", resource_version=rv)
            self._on_update(IngressUpdate("event", self.objects, key,
                                          None if etype == "DELETED" else cast(dict[str, Any], obj)))

    # ------------------------------------------------------------------ bookkeeping

    def _mark_event(self) -> None:
        self._last_event = time.monotonic()

    def _since_last_event(self) -> float:
        return time.monotonic() - (self._last_event if self._last_event is not None else self._started)

    def _set_connected(self, up: bool) -> None:
        if up == self._connected:
            return
        self._connected = up
        self._metrics.k8s_connected.set(1 if up else 0)
        if up:
            self._last_error = None
            log.info("kubernetes_connected", kubeconfig=str(self._cfg.kubeconfig), context=self._cfg.context)
            self._events.publish("kubernetes_connected", context=self._cfg.context)

    def _failed(self, exc: BaseException, backoff: Backoff) -> None:
        error = _describe(exc)
        was = self._connected
        self._set_connected(False)
        changed = error != self._last_error
        self._last_error = error
        if was or changed:
            log.warning("kubernetes_watch_failed", error=error, resource_version=self._rv,
                        attempt=backoff.attempt + 1, keeping_routes=self._keeping())
        else:
            log.debug("kubernetes_watch_failed", error=error, attempt=backoff.attempt + 1)
        if was:
            self._events.publish("kubernetes_disconnected", error=error, keeping_routes=self._keeping())


def _json_body(status: int, body: Any) -> dict[str, Any]:
    """The JSON object of a non-streaming answer (decoded by the session); raises for error statuses."""
    if status == 410:
        raise WatchGone(_status_message(body))
    if status != 200:
        raise WatchBroken(f"HTTP {status}: {_status_message(body)}")
    if not isinstance(body, dict):
        raise WatchBroken(f"the answer is not a JSON object: {str(body)[:120]!r}")
    return body


def _status_message(body: Any) -> str:
    if isinstance(body, dict) and body.get("kind") == "Status":
        return f"{body.get('reason', '')}: {body.get('message', '')}".strip(": ")
    return (body if isinstance(body, str) else json.dumps(body))[:200]


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (WatchBroken, WatchGone, KubeClientError)):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
