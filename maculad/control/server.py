"""The control API: JSON over HTTP on a unix socket, for `maculactl`.

Served by `core.httpserver`; the handlers are thin adapters over the daemon's
`ControlTarget`; every answer is JSON of a shape in `protocol.py`, every error `ErrorAnswer` with
a meaningful status (400 bad input, 403 not allowed, 404 unknown, 405, 409,
500; the core's own refusals too: 400 malformed, 413, 431). One dispatch step does the cross-cutting
work: it turns exceptions into JSON, checks the peer's right to act on POSTs (`peercred.authorize`,
reading the peer with SO_PEERCRED / LOCAL_PEERCRED), and counts every request in
`maculad_control_requests_total{endpoint,status}` under the route's pattern. `/v1/events` is a
stream of JSON lines (chunked).

Start-up is careful with the socket file: it refuses to remove anything that
is not a socket or a socket a live daemon still answers on, binds under a
temporary name, sets mode 0660 and the control group, then renames it into
place, so nobody ever connects to a socket with the wrong permissions. Stop
unlinks the socket only if it is still the one this server created.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from maculad import __version__
from maculad.config import ControlConfig
from maculad.control.api import ControlError, ControlTarget
from maculad.control.protocol import ControlStatus, ErrorAnswer, Event, Ping, ServiceAction, ServicesAnswer
from maculad.control.peercred import Access, AccessDecision, authorize, peer_groups, read_peercred, resolve_group
from maculad.core.httpserver import (
    HTTPError,
    HTTPServer,
    Limits,
    Request,
    Response,
    Router,
    StreamResponse,
    StreamWriter,
)
from maculad.core.names import lookup_name
from maculad.observability.metrics import Metrics

log = structlog.get_logger("maculad.control")

SOCKET_MODE = 0o660
_MAX_UNIX_PATH = 107
_ACTIONS: tuple[ServiceAction, ...] = ("start", "stop", "restart")
_EVENTS_IDLE = 0.2  # without follow: stop once the replayed history has drained
_MAX_REPLAY = 10_000
#: maculactl sends no bodies; `events --follow` streams hold a connection each.
LIMITS = Limits(keepalive=75.0, max_body=0, max_connections=128, grace=2.0)


class ControlSocketError(RuntimeError):
    """The control socket cannot be created; the message says why and what to do."""


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(data, default=str) + "\n").encode(), "application/json; charset=utf-8")


def _error(status: int, message: str) -> Response:
    answer: ErrorAnswer = {"error": message}
    return _json(answer, status)


def check_socket_path(path: Path) -> None:
    """Prepare `path` for binding: parent exists, nothing live or foreign in the way."""
    if len(os.fsencode(str(path))) > _MAX_UNIX_PATH:
        raise ControlSocketError(f"control.socket {path} is longer than {_MAX_UNIX_PATH} bytes "
                                 "(a unix socket path limit); choose a shorter path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("control_stale_socket_removed", socket=str(path))
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ControlSocketError(f"cannot check the existing socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ControlSocketError(f"another maculad is answering on {path}; stop it first")


class ControlServer:
    name = "control"

    def __init__(self, *, config: ControlConfig, target: ControlTarget, metrics: Metrics) -> None:
        self._config = config
        self._target = target
        self._metrics = metrics
        self._daemon_uid = os.geteuid()
        self._group_gid: int | None = None
        self._http: HTTPServer | None = None
        self._router = self._routes()
        self._inode: tuple[int, int] | None = None
        self._requests = 0
        self._denied = 0
        self._last_error: str | None = None
        self._started_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        path = self._config.socket
        if self._config.group is not None:
            try:
                self._group_gid = resolve_group(self._config.group)
            except LookupError as exc:
                self._last_error = f"control.group: {exc}"
                raise ControlSocketError(
                    f"control.group: {exc} (create it: systemd-sysusers, or groupadd {self._config.group})"
                ) from None
        check_socket_path(path)
        sock = self._bind(path)
        server = HTTPServer(name="control", handler=self._dispatch, limits=LIMITS, error_response=_error)
        try:
            await server.serve(sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        self._http = server
        self._started_at = time.time()
        self._last_error = None
        log.info("control_listening", socket=str(path), group=self._config.group, mode=oct(SOCKET_MODE))

    def _bind(self, path: Path) -> socket.socket:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if len(os.fsencode(str(tmp))) > _MAX_UNIX_PATH:
            tmp = path  # no room for a temporary name: bind in place, then fix the mode
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if tmp != path:
                tmp.unlink(missing_ok=True)
            sock.bind(str(tmp))
            os.chmod(tmp, SOCKET_MODE)
            if self._group_gid is not None:
                os.chown(tmp, -1, self._group_gid)
            if tmp != path:
                os.rename(tmp, path)
            st = os.stat(path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if tmp != path:
                tmp.unlink(missing_ok=True)
            self._last_error = f"{path}: {exc.strerror or exc}"
            hint = ""
            if isinstance(exc, PermissionError) and self._config.group:
                hint = f" (the daemon must be root or a member of {self._config.group!r} to hand it the socket)"
            raise ControlSocketError(f"cannot create the control socket {path}: {exc.strerror or exc}{hint}"
                                     ) from None
        return sock

    def _unlink(self) -> None:
        path = self._config.socket
        try:
            st = os.stat(path)
        except OSError:
            return
        if self._inode == (st.st_dev, st.st_ino):
            path.unlink(missing_ok=True)
        self._inode = None

    async def stop(self) -> None:
        server, self._http = self._http, None
        if server is not None:
            await server.close()
        self._unlink()

    def status(self) -> ControlStatus:
        return {
            "socket": str(self._config.socket),
            "group": self._config.group,
            "mode": oct(SOCKET_MODE),
            "serving": self._http is not None,
            "requests": self._requests,
            "denied": self._denied,
            "last_error": self._last_error,
        }

    # ------------------------------------------------------------------ dispatch

    def _routes(self) -> Router:
        r = Router()
        r.get("/v1/ping", self._ping)
        r.get("/v1/status", self._status)
        r.get("/v1/routes", self._routes_view)
        r.get("/v1/services", self._services)
        r.post("/v1/services/{name}/{action}", self._service_action)
        r.get("/v1/cluster", self._cluster)
        r.post("/v1/cluster/recreate", self._cluster_recreate)
        r.get("/v1/dns", self._dns)
        r.get("/v1/powerdns", self._powerdns)
        r.get("/v1/events", self._events)
        r.post("/v1/reload", self._reload)
        return r

    def _decide(self, request: Request) -> AccessDecision:
        access: Access = "read" if request.method in ("GET", "HEAD") else "act"
        if access == "read":  # anyone who can connect may read: no need to ask the kernel
            return authorize(access, uid=None, groups=frozenset(), daemon_uid=self._daemon_uid,
                             group_gid=self._group_gid)
        cred = read_peercred(request.sock) if request.sock is not None else None
        return authorize(
            access,
            uid=cred.uid if cred else None,
            groups=peer_groups(cred) if cred else frozenset(),
            daemon_uid=self._daemon_uid,
            group_gid=self._group_gid,
            group_name=self._config.group,
        )

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        self._requests += 1
        match = self._router.resolve(request.method, request.raw_path)
        endpoint = match.pattern if match.handler is not None and match.pattern is not None else "unmatched"
        resp: Response | StreamResponse
        try:
            decision = self._decide(request)
            if not decision.allowed:
                self._denied += 1
                log.warning("control_forbidden", method=request.method, path=request.path, rule=decision.rule)
                resp = _error(403, f"forbidden: {decision.rule}")
            elif match.handler is not None:
                resp = await match.handler(request.with_params(match.params))
            elif match.allowed:
                resp = _error(405, f"method {request.method} not allowed on {request.path}")
            else:
                resp = _error(404, f"no such endpoint: {request.method} {request.path}")
        except ControlError as exc:
            resp = _error(exc.status, exc.message)
        except HTTPError as exc:
            resp = _error(exc.status, exc.message)
        except (asyncio.CancelledError, ConnectionResetError):
            self._metrics.control_requests.labels(endpoint=endpoint, status="aborted").inc()
            raise
        except Exception as exc:
            log.exception("control_handler_failed", path=request.path)
            resp = _error(500, f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.control_requests.labels(endpoint=endpoint, status=str(resp.status)).inc()
        return resp

    # ------------------------------------------------------------------ handlers

    async def _ping(self, request: Request) -> Response:
        ping: Ping = {"ok": True, "pid": os.getpid(), "version": __version__}
        return _json(ping)

    async def _status(self, request: Request) -> Response:
        return _json(self._target.status())

    async def _routes_view(self, request: Request) -> Response:
        return _json(self._target.routes())

    async def _services(self, request: Request) -> Response:
        answer: ServicesAnswer = {"services": self._target.services()}
        return _json(answer)

    async def _service_action(self, request: Request) -> Response:
        name = request.params["name"]
        action_s = request.params["action"]
        if action_s not in _ACTIONS:
            return _error(400, f"unknown action {action_s[:40]!r}: use one of {', '.join(_ACTIONS)}")
        action: ServiceAction = action_s
        if not name or len(name) > 255:
            return _error(400, "a service name of 1 to 255 characters is needed")
        log.info("control_service_action", service=name, action=action)
        return _json(await self._target.service_action(name, action))

    async def _cluster(self, request: Request) -> Response:
        return _json(self._target.cluster_status())

    async def _cluster_recreate(self, request: Request) -> Response:
        log.info("control_cluster_recreate")
        return _json(await self._target.cluster_recreate())

    async def _powerdns(self, request: Request) -> Response:
        return _json(self._target.powerdns_status())

    async def _dns(self, request: Request) -> Response:
        raw = request.query.get("name", "")
        if not raw.strip():
            return _error(400, "the query parameter 'name' is required, e.g. /v1/dns?name=grafana.macula.local")
        try:
            name = lookup_name(raw)
        except ValueError as exc:
            return _error(400, str(exc))
        return _json(self._target.dns_lookup(name))

    async def _reload(self, request: Request) -> Response:
        log.info("control_reload")
        return _json(await self._target.reload())

    async def _events(self, request: Request) -> Response | StreamResponse:
        follow_s = request.query.get("follow", "0").lower()
        if follow_s not in ("0", "1", "true", "false", "yes", "no"):
            return _error(400, f"follow={follow_s[:20]!r}: use 1 or 0")
        follow = follow_s in ("1", "true", "yes")
        replay_s = request.query.get("replay", "0" if follow else "100")
        try:
            replay = int(replay_s)
        except ValueError:
            return _error(400, f"replay={replay_s[:20]!r} is not a number")
        if not 0 <= replay <= _MAX_REPLAY:
            return _error(400, f"replay must be between 0 and {_MAX_REPLAY}")

        async def pump(out: StreamWriter) -> None:
            stream = self._target.follow_events(replay=replay)
            try:
                await self._pump(stream, out, follow=follow)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

        return StreamResponse(body=pump, content_type="application/x-ndjson")

    @staticmethod
    async def _pump(stream: AsyncIterator[Event], out: StreamWriter, *, follow: bool) -> None:
        while True:
            try:
                if follow:
                    event = await anext(stream)
                else:
                    event = await asyncio.wait_for(anext(stream), _EVENTS_IDLE)
            except (StopAsyncIteration, TimeoutError):
                return
            await out.write((json.dumps(event, default=str) + "\n").encode())
