"""A small synchronous client for the control socket (stdlib only, fast to start).

`maculactl` is a short-lived command, so this speaks HTTP/1.1 with
`http.client` over an `AF_UNIX` socket rather than starting an event loop.
Every way the daemon can be out of reach (no socket, stale socket, permission,
timeout, something that is not maculad) becomes one `DaemonUnavailable` with a
one-line message that says what to do; an answer with an error status becomes
`DaemonError(status, message)`.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/run/maculad/maculad.sock"


class DaemonUnavailable(Exception):
    """The daemon cannot be reached; `str()` is the one line to show."""


class DaemonError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def default_socket(env: Mapping[str, str] | None = None) -> str:
    e = os.environ if env is None else env
    return e.get("MACULAD_SOCKET") or DEFAULT_SOCKET


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


def _group_hint(path: str) -> str:
    try:
        gid = os.stat(path).st_gid
        name = grp.getgrgid(gid).gr_name
    except (OSError, KeyError):
        return ""
    return f"; join its group: sudo usermod -aG {name} $USER (then log in again)"


def path_quote(segment: str) -> str:
    return quote(segment, safe="")


class ControlClient:
    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, timeout: float | None) -> tuple[_UnixConnection,
                                                                              http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket_path, self.timeout if timeout is None else timeout)
        p = self.socket_path
        try:
            conn.request(method, path, headers={"Accept": "application/json"})
            return conn, conn.getresponse()
        except FileNotFoundError:
            conn.close()
            raise DaemonUnavailable(f"maculad is not running: no control socket at {p}") from None
        except PermissionError:
            conn.close()
            raise DaemonUnavailable(f"cannot open {p}: permission denied{_group_hint(p)}") from None
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
            raise DaemonError(resp.status, str(msg or f"HTTP {resp.status}"))
        return data

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, timeout=timeout)

    def stream(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
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
                raise DaemonError(resp.status, str(msg or f"HTTP {resp.status}"))
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
