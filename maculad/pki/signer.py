"""The daemon's signer: the CA and leaves made by a short-lived child, so the daemon never loads `cryptography`.

Importing `cryptography` costs a laptop daemon 12-15 MB of RSS for good and stalls its event loop for
~100 ms; signing a leaf needs it. So the daemon hands that work to `python -m maculad.pki.sign`
(`maculad.pki.sign`: the daemon's own `ca.load_or_create` and `LeafStore`, recording the manifests),
and its own `LeafStore` then finds the files vouched for.

Pure: `SignQueue` is the coalescing rule. `want` queues name tuples (those the running child already
has are not queued again), `start` takes every pending tuple (at most `MAX_NAMES`) when no child runs,
`finish` ends the run; names wanted while a child runs go to the next one. `covers` tells the TLS
terminator a name is on its way, so binding a listener does not sign it in-process.

Thin executor: `Signer.run` (the one long-lived task, listed by the daemon) waits for wanted names,
drops those the daemon's store already has without `cryptography` (`LeafStore.vouched`), runs one
child with `timeout` and reads its answer, then makes the store read the manifest again. `prepare`
is the awaited run at start-up when the root manifest does not vouch for the CA (a first start, or
files changed). Every run is counted by result (`maculad_tls_signer_runs_total`: ok, failed,
timeout); a failed one is logged with why and nothing waits on it: the CA is then made in-process,
and a leaf not yet signed (a wildcard route's new SNI name, a race with a run) is signed in-process
by the handshake that needs it, exactly as without a signer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import structlog

from maculad.observability.metrics import Metrics
from maculad.pki.policy import valid_name
from maculad.pki.root import vouched
from maculad.pki.sign import MAX_NAMES

if TYPE_CHECKING:
    from maculad.pki.leaves import LeafStore

log = structlog.get_logger("maculad.pki")

Names = tuple[str, ...]

#: The child's answer (stdout) and what of its stderr is kept for the log.
MAX_ANSWER = 4 * 1024 * 1024
MAX_STDERR = 2000
RESULTS = ("ok", "failed", "timeout")


# -- the rule (pure)

@dataclass(frozen=True, slots=True)
class SignQueue:
    """The name tuples the child signs now (`running`) and those waiting for the next child (`pending`)."""

    running: frozenset[Names] = frozenset()
    pending: frozenset[Names] = frozenset()

    def want(self, names: Iterable[Names]) -> SignQueue:
        new = frozenset(names) - self.running - self.pending
        return self if not new else SignQueue(running=self.running, pending=self.pending | new)

    def start(self, limit: int = MAX_NAMES) -> tuple[SignQueue, tuple[Names, ...]]:
        """The batch for a child now (sorted, at most `limit`) and the queue after; no batch while one runs."""
        if self.running or not self.pending:
            return self, ()
        batch = tuple(sorted(self.pending))[:limit]
        return SignQueue(running=frozenset(batch), pending=self.pending - frozenset(batch)), batch

    def finish(self) -> SignQueue:
        return SignQueue(pending=self.pending)

    def covers(self, names: Names) -> bool:
        return names in self.running or names in self.pending


class SignerError(Exception):
    """A run of the child that gave no usable answer; `result` is its label (failed, timeout)."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True)
class Answer:
    fingerprint: str
    created: bool
    results: tuple[str, ...]
    issued: dict[str, int] = field(default_factory=dict)


def parse_answer(raw: bytes, expected: int) -> Answer:
    """The child's answer to a request of `expected` name tuples; SignerError("failed", why) otherwise."""
    try:
        doc = json.loads(raw) if len(raw) <= MAX_ANSWER else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise SignerError("failed", "the child's answer is not a JSON object")
    fp, created, results, issued = doc.get("fingerprint"), doc.get("created"), doc.get("results"), doc.get("issued")
    if not (isinstance(fp, str) and isinstance(created, bool) and isinstance(results, list)
            and len(results) == expected and all(isinstance(r, str) for r in results)
            and isinstance(issued, dict)
            and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_NAMES
                    for k, v in issued.items())):
        raise SignerError("failed", "the child's answer is not of the expected shape")
    return Answer(fingerprint=fp, created=created, results=tuple(results), issued=dict(issued))


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr[-MAX_STDERR:].decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


class SignerStatus(TypedDict):
    """`tls.signer` in `GET /v1/status`."""

    runs: int
    last_result: str | None  # ok | failed | timeout
    last_error: str | None
    last_run: float | None  # UNIX time the last run ended
    pending: int
    running: int


# -- the executor

class Signer:
    """Runs `python -m maculad.pki.sign` for the CA (at start-up) and for wanted leaves (in `run`)."""

    def __init__(self, *, ca_dir: Path, domain: str, metrics: Metrics, timeout: float = 30.0,
                 leaves_dir: Path | None = None) -> None:
        self.ca_dir = ca_dir
        self.domain = domain
        self.leaves_dir = leaves_dir if leaves_dir is not None else ca_dir / "leaves"
        self.metrics = metrics
        self.timeout = timeout
        self.store: LeafStore | None = None  # the terminator's, once it exists
        self._queue = SignQueue()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one child at a time
        self._runs = 0
        self._last: tuple[str, str | None, float] | None = None

    # -- what the daemon calls

    def attach(self, store: LeafStore) -> None:
        """The daemon's store: leaves it already has are not sent to the child, and it re-reads the manifest
        after each run."""
        self.store = store

    def want(self, names: Iterable[Names]) -> None:
        """Queue these name tuples for the next child (invalid ones are the handshake's to refuse)."""
        q = self._queue.want(n for n in names if n and all(valid_name(x, self.domain) for x in n))
        if q is not self._queue:
            self._queue = q
            self._wake.set()

    def covers(self, names: Names) -> bool:
        """Whether a child signs `names` now or next."""
        return self._queue.covers(names)

    async def prepare(self, names: Iterable[Names] = ()) -> bool:
        """At start-up: when the root manifest does not vouch for the CA, make or check it (and these leaves)
        in a child, awaited; else queue the leaves for `run`. False when the child failed (the caller then
        goes the in-process way)."""
        wanted = tuple(names)
        if vouched(self.ca_dir, self.domain) is not None:
            self.want(wanted)
            return True
        try:
            answer = await self._run(wanted, fingerprint=None)
        except SignerError as exc:
            log.warning("tls_signer_failed", result=exc.result, reason=str(exc),
                        effect="the CA is made or checked in-process (cryptography is loaded)")
            return False
        if answer.created:
            log.info("tls_ca_created", path=str(self.ca_dir / "ca.pem"), fingerprint=answer.fingerprint,
                     by="maculad.pki.sign")
        return True

    async def run(self) -> None:
        """The long-lived task: one child per batch of wanted names, while any are wanted."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    def status(self) -> SignerStatus:
        last = self._last
        return {"runs": self._runs, "last_result": last[0] if last else None, "last_error": last[1] if last else None,
                "last_run": last[2] if last else None, "pending": len(self._queue.pending),
                "running": len(self._queue.running)}

    # -- the work

    async def _drain(self) -> None:
        while True:
            self._queue, batch = self._queue.start()
            if not batch:
                return
            try:
                store = self.store
                if store is None or store.ca.is_loaded:
                    continue  # no terminator, or cryptography is in already: in-process signing costs no import
                todo = tuple(n for n in batch if store.vouched(n) is None)
                if not todo:
                    continue
                try:
                    answer = await self._run(todo, fingerprint=store.ca.fingerprint)
                except SignerError as exc:
                    log.warning("tls_signer_failed", result=exc.result, reason=str(exc), names=len(todo),
                                effect="a handshake for these names signs in-process")
                    continue
                store.refresh()
                for names, result in zip(todo, answer.results, strict=True):
                    if result != "ok":
                        log.warning("tls_signer_leaf_failed", names=list(names), error=result)
                    elif store.vouched(names) is None:  # e.g. a manifest that could not be written
                        log.info("tls_signer_leaf_unvouched", names=list(names),
                                 effect="its first handshake checks it in-process")
            finally:
                self._queue = self._queue.finish()

    async def _run(self, names: tuple[Names, ...], *, fingerprint: str | None) -> Answer:
        """One child for `names`; its answer, or SignerError. Counted and remembered either way."""
        async with self._lock:
            try:
                answer = await self._child(names, fingerprint)
            except SignerError as exc:
                self._done(exc.result, str(exc))
                raise
            for reason, n in answer.issued.items():
                if n:
                    self.metrics.tls_leaves_issued.labels(reason=reason).inc(n)
            self._done("ok", None)
            log.info("tls_signer_ran", names=len(names), issued=answer.issued, created=answer.created)
            return answer

    def _done(self, result: str, error: str | None) -> None:
        self._runs += 1
        self._last = (result, error, time.time())
        self.metrics.tls_signer_runs.labels(result=result).inc()

    async def _child(self, names: tuple[Names, ...], fingerprint: str | None) -> Answer:
        request: dict[str, Any] = {"ca_dir": str(self.ca_dir), "domain": self.domain,
                                   "leaves_dir": str(self.leaves_dir), "names": [list(n) for n in names]}
        if fingerprint is not None:
            request["fingerprint"] = fingerprint
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "maculad.pki.sign", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise SignerError("failed", f"cannot start {sys.executable}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), self.timeout)
        except TimeoutError:
            raise SignerError("timeout", f"no answer within {self.timeout:g} s (signer_timeout); killed") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            why = _last_line(err) or "no message"
            raise SignerError("failed", f"exited with {proc.returncode}: {why}")
        return parse_answer(out, len(names))


__all__ = ["RESULTS", "Answer", "SignQueue", "Signer", "SignerError", "SignerStatus", "parse_answer"]
