"""The Ingress list/watch loop: networking.k8s.io/v1 Ingresses of all namespaces, kept in memory.

The loop is the classic informer, driven by hand over kubernetes-asyncio's
generated client (`list_ingress_for_all_namespaces`, `_preload_content=False`)
so every wire-level case is ours to decide rather than `Watch`'s:

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
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import aiohttp
import structlog

from maculad.adapters.kube.client import KubeClientError, close_api_client, new_api_client, object_key
from maculad.config import BackoffConfig, KubernetesConfig
from maculad.core.backoff import Backoff
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, NetworkingV1Api

log = structlog.get_logger("maculad.adapters.kube.ingresses")

IngressKey = tuple[str, str]
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
DEFAULT_BACKOFF = BackoffConfig(initial=0.25, factor=2.0, cap=30.0)


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
                api = await new_api_client(kubeconfig=self._cfg.kubeconfig, context=self._cfg.context)
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
                    await close_api_client(api)
            self._reconnects += 1
            self._metrics.k8s_reconnects.inc()
            await asyncio.sleep(backoff.next())

    async def _session(self, api: ApiClient, backoff: Backoff) -> None:
        from kubernetes_asyncio.client import NetworkingV1Api

        net = NetworkingV1Api(api)
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

    async def _relist(self, net: NetworkingV1Api) -> None:
        items: list[Any] = []
        cont: str | None = None
        rv: str | None = None
        while True:
            page_args: dict[str, Any] = {"_continue": cont} if cont else {}
            resp = cast(aiohttp.ClientResponse, await net.list_ingress_for_all_namespaces(
                limit=self._page_size, _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=60, sock_connect=10), **page_args,
            ))
            try:
                body = await _json_body(resp)
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

    async def _watch(self, net: NetworkingV1Api, backoff: Backoff) -> int:
        """One watch request; returns (the lines read) when the server ends the stream cleanly."""
        started = time.monotonic()
        lines = 0
        assert self._rv is not None
        resp = cast(aiohttp.ClientResponse, await net.list_ingress_for_all_namespaces(
            watch=True, resource_version=self._rv, allow_watch_bookmarks=True,
            timeout_seconds=self._cfg.watch_timeout, _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=self._cfg.watch_timeout + self._cfg.stale_after + 30, sock_connect=10),
        ))
        try:
            if resp.status != 200:
                await _json_body(resp)  # raises WatchGone / WatchBroken with the server's reason
            self._set_connected(True)
            loop = asyncio.get_running_loop()
            stale = self._cfg.stale_after
            try:
                # one deadline, pushed forward on every line: no task per read, so
                # lines already buffered are consumed without yielding to the loop
                async with asyncio.timeout(stale) as guard:
                    while True:
                        try:
                            line = await resp.content.readline()
                        except ValueError as exc:  # a line beyond aiohttp's buffer limit
                            raise WatchBroken(f"watch line too long: {exc}") from None
                        guard.reschedule(loop.time() + stale)
                        if not line:
                            if lines == 0 and time.monotonic() - started < 1.0:
                                raise WatchBroken("the watch ended at once without an event")
                            log.debug("kubernetes_watch_ended", resource_version=self._rv, lines=lines)
                            return lines
                        if not line.endswith(b"\n"):
                            raise WatchBroken("the stream ended in the middle of an event")
                        self._handle_line(line)
                        lines += 1
                        backoff.reset()
            except TimeoutError:
                raise WatchBroken(f"no event or bookmark for {stale:g}s: the stream is dead") from None
        finally:
            resp.close()

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


async def _json_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The decoded JSON object of a non-streaming answer; raises for error statuses."""
    try:
        raw = await resp.read()
    finally:
        resp.release()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if resp.status == 410:
        raise WatchGone(_status_message(body, raw))
    if resp.status != 200:
        raise WatchBroken(f"HTTP {resp.status}: {_status_message(body, raw)}")
    if not isinstance(body, dict):
        raise WatchBroken(f"the answer is not a JSON object: {raw[:120]!r}")
    return body


def _status_message(body: Any, raw: bytes) -> str:
    if isinstance(body, dict) and body.get("kind") == "Status":
        return f"{body.get('reason', '')}: {body.get('message', '')}".strip(": ")
    return raw[:200].decode("utf-8", "replace")


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (WatchBroken, WatchGone, KubeClientError)):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
