"""The CoreDNS block: pods resolve the domain through G.

maculad keeps one server block in the Corefile of ConfigMap
`kube-system/coredns`, between the lines `# BEGIN maculad` and `# END maculad`:

    # BEGIN maculad
    macula.local:53 {
        errors
        cache 5
        forward . 172.17.0.1
    }
    # END maculad

`apply_block(corefile, block)` is the pure part: it replaces the marked lines
with `block` (appending it when there are none) or, with `block=None`, removes
them; every other byte of the Corefile stays as it was. Markers that do not
pair up are a `CorefileError`, and nothing is written (never half an edit).

`CoreDNSPublisher` is the thin loop: every `coredns_interval` seconds it reads
the ConfigMap, computes the Corefile it should have and, only when that
differs, writes it back with the `resourceVersion` it read (a concurrent edit
gets 409 and is retried on the next tick). So the block is applied
idempotently, put back when it disappears (the cluster was recreated, someone
edited it), and removed when the feature is turned off; CoreDNS's `reload`
plugin picks the change up. A missing ConfigMap or an unreachable API server
is reported in `status()` and the metrics, and retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypedDict

import structlog

from maculad.config import Config
from maculad.adapters.kube.client import KubeClientError, KubeSession, KubeTransport
from maculad.observability.metrics import Metrics

log = structlog.get_logger("maculad.publishers.coredns")

BEGIN = "# BEGIN maculad"
END = "# END maculad"
NAMESPACE = "kube-system"
NAME = "coredns"
KEY = "Corefile"


class CoreDNSStatus(TypedDict):
    """The `coredns` component: the marked block in kube-system/coredns."""

    state: str
    configmap: str
    wanted: str | None
    last_action: str | None
    last_error: str | None
    writes: int


class CorefileError(ValueError):
    """The Corefile's maculad markers do not pair up; it is left alone."""


def block(domain: str, address: str) -> str:
    """The marked server block forwarding the domain to G."""
    return (f"{BEGIN}\n{domain}:53 {{\n    errors\n    cache 5\n    forward . {address}\n}}\n{END}\n")


def _marked(lines: list[str]) -> tuple[int, int] | None:
    begins = [i for i, ln in enumerate(lines) if ln.strip() == BEGIN]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == END]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise CorefileError(f"the Corefile has {len(begins)} {BEGIN!r} and {len(ends)} {END!r} lines "
                            "out of order; fix it by hand")
    return begins[0], ends[0]


def apply_block(corefile: str, wanted: str | None) -> str:
    """`corefile` with the marked block replaced by `wanted` (None: removed), all else unchanged."""
    lines = corefile.splitlines(keepends=True)
    span = _marked(lines)
    if span is None:
        if wanted is None:
            return corefile
        sep = "" if not corefile or corefile.endswith("\n") else "\n"
        return corefile + sep + wanted
    start, end = span
    return "".join(lines[:start]) + (wanted or "") + "".join(lines[end + 1 :])


def current_block(corefile: str) -> str | None:
    """The marked block as it stands (markers included), or None."""
    lines = corefile.splitlines(keepends=True)
    span = _marked(lines)
    if span is None:
        return None
    return "".join(lines[span[0] : span[1] + 1])


class CoreDNSPublisher:
    """Keeps the marked block in kube-system/coredns (a `Component`, name "coredns")."""

    name = "coredns"

    def __init__(self, *, config: Config, metrics: Metrics, address: Callable[[], str | None]) -> None:
        """`address()` is G, or None while it is not known (then nothing is written)."""
        self._cfg = config
        self._metrics = metrics
        self._address = address
        self._enabled = config.containers.enabled and config.containers.coredns
        self._state = "starting"
        self._last_error: str | None = None
        self._last_action: str | None = None
        self._writes = 0
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Nothing to open: `run()` (a long-lived task) does the work."""

    async def stop(self) -> None:
        """Nothing to release once `run()` is cancelled (the block stays in the ConfigMap)."""

    def status(self) -> CoreDNSStatus:
        return {"state": self._state, "configmap": f"{NAMESPACE}/{NAME}", "wanted": self._wanted(),
                "last_action": self._last_action, "last_error": self._last_error, "writes": self._writes}

    def poke(self) -> None:
        """Check now instead of at the next tick (G changed)."""
        self._wake.set()

    def _wanted(self) -> str | None:
        if not self._enabled:
            return None
        g = self._address()
        return block(self._cfg.domain, g) if g else ""

    async def run(self) -> None:
        while True:
            api: KubeSession | None = None
            try:
                api = KubeSession.for_context(self._cfg.kubernetes.kubeconfig, self._cfg.kubernetes.context)
                while True:
                    await self.reconcile(api)
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._cfg.containers.coredns_interval)
                    except TimeoutError:
                        pass
                    self._wake.clear()
            except KubeClientError as exc:
                self._fail(str(exc))
            finally:
                if api is not None:
                    await api.close()
            await asyncio.sleep(self._cfg.containers.coredns_interval)

    async def reconcile(self, api: KubeTransport) -> None:
        """One read-compare-write round; never raises for API or content problems."""
        wanted = self._wanted()
        if wanted == "":
            self._state = "waiting"
            self._last_error = "the container horizon's address is not known yet"
            return
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}"
        try:
            status, obj = await api.request("GET", path, timeout=10)
        except Exception as exc:  # connection refused, timeouts
            self._fail(f"reading {NAMESPACE}/{NAME}: {type(exc).__name__}: {exc}")
            return
        if status == 404:
            self._fail(f"there is no ConfigMap {NAMESPACE}/{NAME} (no CoreDNS in the cluster yet)",
                       state="no-configmap")
            return
        if status != 200 or not isinstance(obj, dict):
            self._fail(f"reading {NAMESPACE}/{NAME}: HTTP {status}")
            return
        raw_data = obj.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        raw_core = data.get(KEY)
        corefile = raw_core if isinstance(raw_core, str) else ""
        try:
            new = apply_block(corefile, wanted)
        except CorefileError as exc:
            self._fail(str(exc), state="conflict")
            return
        if new == corefile:
            self._ok()
            return
        action = "remove" if wanted is None else ("update" if current_block(corefile) else "add")
        body = {**obj, "data": {**data, KEY: new}}  # metadata.resourceVersion: a concurrent edit → 409
        try:
            status, answer = await api.request("PUT", path, body=body, timeout=10)
        except Exception as exc:
            status, answer = 0, f"{type(exc).__name__}: {exc}"
        if status != 200:
            self._metrics.coredns_writes.labels(action="error").inc()
            why = answer.get("message", "") if isinstance(answer, dict) else str(answer)[:200]
            self._fail(f"writing {NAMESPACE}/{NAME}: HTTP {status} {why} (retried)")
            return
        self._writes += 1
        self._last_action = action
        self._metrics.coredns_writes.labels(action=action).inc()
        log.info("coredns_block_written", action=action, configmap=f"{NAMESPACE}/{NAME}")
        self._ok()

    def _ok(self) -> None:
        self._state = "applied" if self._enabled else "removed"
        self._last_error = None
        self._metrics.coredns_block.set(1)

    def _fail(self, why: str, *, state: str = "error") -> None:
        if why != self._last_error:
            log.warning("coredns_block_not_applied", reason=why)
        self._state = state
        self._last_error = why
        self._metrics.coredns_block.set(0)
