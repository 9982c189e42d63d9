"""A small synchronous client for the control socket (stdlib only, fast to start).

`maculactl` is a short-lived command, so this speaks HTTP/1.1 with
`http.client` over an `AF_UNIX` socket rather than starting an event loop.
The socket is a path or a locator (`discovery.locate`), asked once, on the
first request, so commands that never talk to the daemon never look for it.
Every way the daemon can be out of reach (no socket, stale socket, permission,
timeout, something that is not maculad) becomes one `DaemonUnavailable` with a
one-line message that says what to do; an answer with an error status becomes
`DaemonError(status, message)`, whose message is the daemon's sentence (the status
is for the program, never shown). The typed calls name the shape of each answer
(`maculad.control.protocol`): the one place where JSON becomes those types.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from maculad.ctl.discovery import DaemonUnavailable, group_hint

if TYPE_CHECKING:
    from maculad.control.protocol import (
        ClusterRecreated,
        ClusterStatus,
        DNSLookup,
        Event,
        PowerDNSStatus,
        ReloadAnswer,
        RoutesAnswer,
        ServiceAction,
        ServiceActionAnswer,
        ServicesAnswer,
        Status,
    )

__all__ = ["ControlClient", "DaemonError", "DaemonUnavailable", "path_quote"]


class DaemonError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def _no_reason(status: int) -> str:
    return f"the daemon refused the request without saying why (status {status})"


def path_quote(segment: str) -> str:
    return quote(segment, safe="")


class ControlClient:
    def __init__(self, socket: str | Callable[[], str], *, timeout: float = 30.0) -> None:
        self._socket = socket
        self._path: str | None = socket if isinstance(socket, str) else None
        self.timeout = timeout

    @property
    def socket_path(self) -> str:
        """The socket in use; finding it may raise `DaemonUnavailable`."""
        if self._path is None:
            assert callable(self._socket)
            self._path = self._socket()
        return self._path

    def _open(self, method: str, path: str, timeout: float | None) -> tuple[_UnixConnection,
                                                                              http.client.HTTPResponse]:
        p = self.socket_path
        conn = _UnixConnection(p, self.timeout if timeout is None else timeout)
        try:
            conn.request(method, path, headers={"Accept": "application/json"})
            return conn, conn.getresponse()
        except FileNotFoundError:
            conn.close()
            raise DaemonUnavailable(f"maculad is not running: no control socket at {p}") from None
        except PermissionError:
            conn.close()
            raise DaemonUnavailable(f"cannot open {p}: permission denied{group_hint(p)}", denied=True) from None
        except ConnectionRefusedError:
            conn.close()
            raise DaemonUnavailable(f"maculad is not running: {p} is a stale socket (nobody answers)") from None
        except TimeoutError:
            conn.close()
            raise DaemonUnavailable(f"maculad did not answer on {p} within {conn.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DaemonUnavailable(f"cannot talk to maculad on {p}: {exc}") from None

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                timeout: float | None = None) -> Any:
        if params:
            path = f"{path}?{urlencode(params)}"
        conn, resp = self._open(method, path, timeout)
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailable(f"the answer from {self.socket_path} was cut off: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise DaemonUnavailable(
                f"{self.socket_path} answered HTTP {resp.status} with something that is not JSON "
                "(is it maculad's socket?)") from None
        if resp.status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            raise DaemonError(resp.status, str(msg or _no_reason(resp.status)))
        return data

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, timeout=timeout)

    def stream(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[Event]:
        """JSON lines from a streaming endpoint, until the server ends it (no read timeout)."""
        if params:
            path = f"{path}?{urlencode(params)}"
        conn, resp = self._open("GET", path, None)
        try:
            if resp.status >= 400:
                raw = resp.read()
                try:
                    msg = json.loads(raw).get("error")
                except (ValueError, AttributeError):
                    msg = None
                raise DaemonError(resp.status, str(msg or _no_reason(resp.status)))
            if conn.sock is not None:
                conn.sock.settimeout(None)
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise DaemonUnavailable(f"the event stream from {self.socket_path} broke: {exc}") from None
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    yield item
        finally:
            conn.close()

    # ------------------------------------------------------------------ the typed calls

    def status(self) -> Status:
        return cast("Status", self.get("/v1/status"))

    def routes(self) -> RoutesAnswer:
        return cast("RoutesAnswer", self.get("/v1/routes"))

    def services(self) -> ServicesAnswer:
        return cast("ServicesAnswer", self.get("/v1/services"))

    def service_action(self, service: str, action: ServiceAction) -> ServiceActionAnswer:
        return cast("ServiceActionAnswer", self.post(f"/v1/services/{path_quote(service)}/{action}", timeout=300))

    def cluster(self) -> ClusterStatus:
        return cast("ClusterStatus", self.get("/v1/cluster"))

    def cluster_recreate(self) -> ClusterRecreated:
        return cast("ClusterRecreated", self.post("/v1/cluster/recreate", timeout=900))

    def dns(self, name: str) -> DNSLookup:
        return cast("DNSLookup", self.get("/v1/dns", {"name": name}))

    def powerdns(self) -> PowerDNSStatus:
        return cast("PowerDNSStatus", self.get("/v1/powerdns"))

    def reload(self) -> ReloadAnswer:
        return cast("ReloadAnswer", self.post("/v1/reload", timeout=120))

    def events(self, *, follow: bool, replay: int | None) -> Iterator[Event]:
        params = {"follow": "1" if follow else "0"}
        if replay is not None:
            params["replay"] = str(replay)
        return self.stream("/v1/events", params)

    def server_pid(self) -> int | None:
        """The daemon's pid, from the kernel's view of the socket's other end."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(self.socket_path)
            if sys.platform.startswith("linux"):
                raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid = int(struct.unpack("3i", raw)[0])
                return pid or None
            if sys.platform == "darwin":
                raw = s.getsockopt(0, 0x002, 4)  # SOL_LOCAL, LOCAL_PEERPID
                return int(struct.unpack("i", raw)[0]) or None
        except OSError:
            return None
        finally:
            s.close()
        return None
