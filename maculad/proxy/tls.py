"""TLS termination in the relay, and the 308 answer of `[tls] redirect_http`.

A route with only an http backend gets a listener of kind "tls" on its https
port. `TlsClientProtocol` is the TCP relay's `ClientProtocol` with an
`ssl.SSLObject` over memory BIOs between the socket and the relay logic: the
handshake runs in `data_received`, every decrypted chunk goes through the
inherited relay path (backend connect, pending bytes, flow control, the
dead-backend page), and everything the backend sends is encrypted by
`client_writer`. Doing TLS over memory BIOs, not with `create_server(ssl=…)`,
keeps each handshake failure in our hands so it is counted by reason
(`maculad_tls_handshake_failures_total`) instead of surfacing in the event
loop's exception handler.

Certificates: `Terminator` keeps one server context per (route, ALPN) whose
default certificate is the route's own leaf (the apex for a wildcard route:
what a client without SNI, or with an IP literal as SNI, gets), and an `sni_callback` that swaps in the leaf
context of the requested name, minted on demand by `LeafStore` (pre-minted
when the listener binds). An SNI outside the domain, or for a name this route
does not serve, ends the handshake with `unrecognized_name`: no certificate is
issued for it. ALPN offers only http/1.1 unless the route's backend speaks
h2c. Leaf contexts are rebuilt when the store renews a leaf.

Nothing here imports `cryptography`: `ssl` loads the leaf files itself, and the
CA and leaves come through `maculad.pki.root.open_ca` and `LeafStore`, which
import it only to make the CA or to check, issue or renew a leaf (a start whose
certificates the manifest vouches for needs none of it). The daemon's
`maculad.pki.signer` makes the CA and the leaves `leaf_names` lists in a child
process, so `LeafStore` finds them vouched; `premint` leaves a leaf on its way
there to the child.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import structlog

from maculad.config import TLSConfig
from maculad.observability.metrics import Metrics
from maculad.pki.leaves import Leaf, LeafStore
from maculad.pki.policy import CAError, in_domain, valid_name
from maculad.pki.root import open_ca
from maculad.proxy import errorpage
from maculad.proxy.spec import Target, desired_listeners
from maculad.proxy.tcp import _CLOSED, _CONNECTING, _HANDSHAKE, _LINGER, _PAGE, HEAD_WAIT, ClientProtocol, _tune

if TYPE_CHECKING:
    from maculad.config import ProxyConfig
    from maculad.pki.signer import Signer, SignerStatus
    from maculad.routes.table import RouteTable

log = structlog.get_logger("maculad.proxy")


class TLSStatus(TypedDict):
    """`tls` in `GET /v1/status`: the local CA (never its key), or why there is none."""

    enabled: bool
    error: str | None
    ca: NotRequired[str | None]  # the root's path
    fingerprint_sha256: NotRequired[str]
    expires: NotRequired[str]  # ISO 8601
    leaves_cached: NotRequired[int]
    signer: NotRequired[SignerStatus]  # the child that makes the CA and leaves (maculad.pki.signer)

CHUNK = 256 * 1024

#: OpenSSL reasons → the `reason` label (a bounded set).
_REASONS = {
    "HTTP_REQUEST": "plain_http",
    "HTTPS_PROXY_REQUEST": "plain_http",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "UNKNOWN_PROTOCOL": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "client_rejected_certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client_rejected_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client_rejected_certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "client_rejected_certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "client_rejected_certificate",
    "NO_APPLICATION_PROTOCOL": "alpn",
}
REASONS = (
    "plain_http", "protocol_version", "no_shared_cipher", "client_rejected_certificate", "alpn",
    "sni_outside_domain", "sni_other_name", "leaf_error", "timeout", "eof", "malformed",
)


def failure_reason(exc: BaseException, marked: str | None) -> str:
    if marked:
        return marked
    if isinstance(exc, ssl.SSLEOFError):
        return "eof"
    reason = getattr(exc, "reason", None)
    return _REASONS.get(str(reason), "malformed")


def _quiet_bad_sni() -> None:
    """CPython decodes the SNI before calling `sni_callback`; a name that is not ASCII fails the
    handshake (counted as `malformed`) and is reported through `sys.unraisablehook` as a traceback on
    stderr. That report, and only that one, becomes a debug log line."""
    previous = sys.unraisablehook
    if getattr(previous, "maculad_sni_filter", False):
        return

    def hook(info: Any) -> None:
        if isinstance(info.exc_value, UnicodeDecodeError) and isinstance(info.object, bytes):
            log.debug("tls_sni_not_ascii", length=len(info.object))
            return
        previous(info)

    hook.maculad_sni_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def serves(route: str, name: str) -> bool:
    """Whether a route named `route` (`*.x` covers every name below x) answers for `name`."""
    if route.startswith("*."):
        return name.endswith(route[1:])
    return name == route


def default_name(route: str, domain: str) -> str:
    """The certificate a client without SNI gets: the route's own, or the apex for a wildcard route."""
    return domain if route.startswith("*.") else route


def leaf_names(table: RouteTable, config: ProxyConfig, domain: str) -> list[tuple[str, ...]]:
    """The leaves the relay signs for `table` when its listeners bind (`Terminator.premint`): one per route
    whose https port is terminated here (`spec.desired_listeners`, kind "tls"), for its `default_name`."""
    routes = {t.route for t in desired_listeners(table, config, terminating=True).values() if t.kind == "tls"}
    return sorted({(default_name(r, domain),) for r in routes})


class Terminator:
    """Certificates and server contexts for every terminated route."""

    def __init__(self, *, store: LeafStore, metrics: Metrics, handshake_timeout: float = 10.0,
                 signer: Signer | None = None) -> None:
        self.store = store
        self.signer = signer
        self.metrics = metrics
        self.domain = store.ca.domain
        self.handshake_timeout = handshake_timeout
        self._leaf_ctx: dict[tuple[str, bool], tuple[int, ssl.SSLContext]] = {}
        self._base_ctx: dict[tuple[str, bool], tuple[int, ssl.SSLContext]] = {}
        self._ok: dict[str, Any] = {}
        self._failed: dict[tuple[str, str], Any] = {}
        _quiet_bad_sni()

    # -- contexts

    def _new_context(self, leaf: Leaf, h2c: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(leaf.path))
        ctx.set_alpn_protocols(["h2", "http/1.1"] if h2c else ["http/1.1"])
        return ctx

    def default_name(self, route: str) -> str:
        return default_name(route, self.domain)

    def premint(self, route: str, h2c: bool) -> None:
        """When a listener binds: the route's context now rather than inside the first handshake; raises as
        `server_context`. Left to the signer when it would load `cryptography` into the daemon while the
        signer's child is about to sign that leaf (a handshake before then signs it in-process)."""
        names = (self.default_name(route),)
        if (self.signer is not None and not self.store.ca.is_loaded and self.signer.covers(names)
                and self.store.vouched(names) is None):
            return
        self.server_context(route, h2c)

    def leaf_context(self, name: str, h2c: bool) -> ssl.SSLContext:
        leaf = self.store.get((name,))
        cached = self._leaf_ctx.get((name, h2c))
        if cached is not None and cached[0] == leaf.serial:
            return cached[1]
        ctx = self._new_context(leaf, h2c)
        if len(self._leaf_ctx) >= self.store.max_entries:
            self._leaf_ctx.pop(next(iter(self._leaf_ctx)))
        self._leaf_ctx[(name, h2c)] = (leaf.serial, ctx)
        self.metrics.tls_leaves_cached.set(len(self.store))
        return ctx

    def server_context(self, route: str, h2c: bool) -> ssl.SSLContext:
        """The context a connection to `route` starts with; raises (ValueError, OSError) when no leaf can be had."""
        leaf = self.store.get((self.default_name(route),))
        cached = self._base_ctx.get((route, h2c))
        if cached is not None and cached[0] == leaf.serial:
            return cached[1]
        ctx = self._new_context(leaf, h2c)
        ctx.sni_callback = self._sni_callback(route, h2c)
        self._base_ctx[(route, h2c)] = (leaf.serial, ctx)
        self.metrics.tls_leaves_cached.set(len(self.store))
        return ctx

    def _sni_callback(self, route: str, h2c: bool) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
        domain = self.domain

        def callback(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            if server_name is None or _is_ip(server_name):
                return None  # the default certificate (an IP is no valid SNI; some clients send one anyway)
            name = server_name.lower().rstrip(".")
            if not in_domain(name, domain) or not valid_name(name, domain):
                sslobj.maculad_failure = "sni_outside_domain"  # type: ignore[attr-defined]
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if not serves(route, name):
                sslobj.maculad_failure = "sni_other_name"  # type: ignore[attr-defined]
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if name == self.default_name(route):
                return None
            try:
                sslobj.context = self.leaf_context(name, h2c)
            except Exception as exc:
                sslobj.maculad_failure = "leaf_error"  # type: ignore[attr-defined]
                log.error("tls_leaf_failed", name=name, error=f"{type(exc).__name__}: {exc}")
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            return None

        return callback

    # -- accounting

    def succeeded(self, route: str) -> None:
        child = self._ok.get(route)
        if child is None:
            child = self._ok[route] = self.metrics.tls_handshakes.labels(route=route)
        child.inc()

    def failed(self, route: str, reason: str) -> None:
        child = self._failed.get((route, reason))
        if child is None:
            child = self._failed[(route, reason)] = self.metrics.tls_handshake_failures.labels(
                route=route, reason=reason)
        child.inc()


    def status(self) -> TLSStatus:
        """What `maculactl status` shows: the root's path, fingerprint and expiry, never its key."""
        ca = self.store.ca
        status: TLSStatus = {
            "enabled": True,
            "ca": str(ca.cert_path) if ca.cert_path else None,
            "fingerprint_sha256": ca.fingerprint,
            "expires": ca.not_after.isoformat(),
            "leaves_cached": len(self.store),
            "error": None,
        }
        if self.signer is not None:
            status["signer"] = self.signer.status()
        return status


def load_terminator(
    *, domain: str, state_dir: Path, config: TLSConfig, metrics: Metrics, signer: Signer | None = None
) -> tuple[Terminator | None, str | None]:
    """The terminator over `<state_dir>/ca/` (made on first start), or None and why not (TLS is enabled).
    With a `signer`, its child made the CA already when it could (`Signer.prepare`), so `open_ca` finds it
    vouched; the signer gets the store."""
    try:
        ca, created = open_ca(state_dir / "ca", domain)
    except (CAError, OSError) as exc:
        return None, str(exc)
    if created:
        log.info("tls_ca_created", path=str(ca.cert_path), fingerprint=ca.fingerprint,
                 expires=ca.not_after.isoformat())
    metrics.tls_ca_expiry.set(ca.not_after.timestamp())
    store = LeafStore(ca=ca, directory=state_dir / "ca" / "leaves", max_entries=config.max_leaves,
                      on_issue=lambda reason: metrics.tls_leaves_issued.labels(reason=reason).inc())
    if signer is not None:
        signer.attach(store)
    return Terminator(store=store, metrics=metrics, handshake_timeout=config.handshake_timeout, signer=signer), None


class TlsClientProtocol(ClientProtocol):
    """A relayed connection whose client side is TLS terminated here."""

    __slots__ = ("hello", "incoming", "outgoing", "sslobj", "terminator")
    PIPES = False  # the client side's bytes are decrypted and encrypted here

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.hello = False  # any handshake byte from the client yet (the first-byte timeout)
        if not self._admit(transport):
            return
        _tune(transport)
        terminator = self.listener.ctx.tls
        if terminator is None:  # the CA went away under a live listener: refuse cleanly
            self.state = _LINGER
            transport.close()
            return
        self.terminator = terminator
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        try:
            ctx = terminator.server_context(self.target.route, self.target.h2c)
        except Exception as exc:
            terminator.failed(self.target.route, "leaf_error")
            log.error("tls_leaf_failed", name=self.target.route, error=f"{type(exc).__name__}: {exc}")
            self.state = _LINGER
            transport.close()
            return
        self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.state = _HANDSHAKE
        self.timer = self.listener.loop.call_later(terminator.handshake_timeout, self._handshake_timeout)

    # -- handshake

    def heard(self) -> bool:
        return self.hello or super().heard()

    def _handshake(self, data: bytes) -> None:
        self.hello = True
        self.incoming.write(data)
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_out()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush_out()  # the alert
            self._handshake_failed(failure_reason(exc, getattr(self.sslobj, "maculad_failure", None)))
            return
        self._flush_out()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.terminator.succeeded(self.target.route)
        self.state = _CONNECTING
        self.transport.pause_reading()
        self.task = self.listener.loop.create_task(self._connect())
        self._pump()  # application data that came with the last handshake flight

    def _handshake_failed(self, reason: str) -> None:
        self.terminator.failed(self.target.route, reason)
        log.debug("tls_handshake_failed", route=self.target.route, reason=reason)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = _LINGER
        self.transport.close()

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.state == _HANDSHAKE:
            self._handshake_failed("timeout")

    # -- data

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _HANDSHAKE:
            self._handshake(data)
            return
        if state == _LINGER or state == _CLOSED:
            return
        self.incoming.write(data)
        self._pump()

    def _pump(self) -> None:
        read = self.sslobj.read
        relay = ClientProtocol.data_received
        while True:
            try:
                chunk = read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client is done sending
                self._flush_out()
                ClientProtocol.eof_received(self)
                return
            except ssl.SSLError:
                self.close_both()
                return
            if not chunk:
                break
            relay(self, chunk)
            if self.state == _LINGER or self.state == _CLOSED:
                return
        if self.outgoing.pending:
            self._flush_out()

    def eof_received(self) -> bool:
        if self.state == _HANDSHAKE:
            self._handshake_failed("eof")
            return False
        return ClientProtocol.eof_received(self)

    def _flush_out(self) -> None:
        if self.outgoing.pending:
            self.transport.write(self.outgoing.read())

    def client_writer(self) -> Any:
        write, read, tw = self.sslobj.write, self.outgoing.read, self.transport.write

        def tls_write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = write(view)
                view = view[n:]
            tw(read())

        return tls_write

    def send_eof(self) -> None:
        try:
            self.sslobj.unwrap()  # queues close_notify; the peer's answer is not awaited
        except (ssl.SSLError, ValueError):
            pass
        self._flush_out()
        self.transport.write_eof()


class DemuxedTlsProtocol(TlsClientProtocol):
    """TLS terminated on a connection a Host/SNI listener (G:443) accepted and handed over after reading
    its ClientHello (`DemuxProtocol._terminate`): already counted under its route, so `counted`."""

    __slots__ = ("counted",)
    counted: bool


class RedirectProtocol(ClientProtocol):
    """`[tls] redirect_http`: read the request head, answer 308 to its https URL, close."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admit(transport):
            return
        _tune(transport)
        self.state = _PAGE
        self.head = bytearray()
        self.timer = self.listener.loop.call_later(HEAD_WAIT, self._send_page)

    def _send_page(self) -> None:
        if self.state != _PAGE:
            return
        route = self.target.route
        fallback = route[2:] if route.startswith("*.") else route
        response, _ = errorpage.redirect_response(self.head or b"", fallback_host=fallback,
                                                  https_port=self.listener.ctx.config.https_port)
        self.listener.ctx.metrics.tls_redirects.labels(route=route).inc()
        self.transport.write(errorpage.for_request(response, self.head or b""))
        self._linger()


__all__ = ["REASONS", "RedirectProtocol", "Target", "Terminator", "TlsClientProtocol", "default_name",
           "failure_reason", "leaf_names", "load_terminator", "serves"]
