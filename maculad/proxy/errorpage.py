"""The dead-backend page of HTTP front ports (pure).

When the backend of an HTTP listener cannot be reached, the relay reads the
client's request head (bounded), answers 502 with a short plain-text page
naming the host, the backend and the reason, and closes (`Connection: close`).
The host comes from the request's Host header when it is a sane name, else the
route's name; both are sanitised so nothing from the network is echoed verbatim.

While the route's supervised service is not running (the route carries a
`ServiceHold`), the backend is not dialed: `held` answers 503 with a short
HTML page naming the service, its state, the reason and the command that
fixes it, with `Retry-After` when the next automatic start is known. A HEAD
request gets the same head and no body (RFC 9110 §9.3.2).

On an address that routes by Host header (the container horizon's G:80), a
name no route answers gets `not_found` (404, naming it) and a request that
names no host at all gets `bad_request` (400, saying why).

A HEAD request gets each of these pages' status and headers (Content-Length
included, as GET would have it) and no body: `for_request` (RFC 9110 §9.3.2).
"""

from __future__ import annotations

import html
import math
import re

from maculad.routes.model import ServiceHold

#: Bytes of request head read before answering anyway.
MAX_HEAD = 16 * 1024

_HOST_OK = re.compile(rb"^[A-Za-z0-9._\-\[\]:]{1,255}$")


def request_complete(head: bytes | bytearray) -> bool:
    """True once the request head is complete (or too long to wait for)."""
    return b"\r\n\r\n" in head or b"\n\n" in head or len(head) >= MAX_HEAD


def is_head(head: bytes | bytearray) -> bool:
    """Whether the request (head) is a HEAD request."""
    return bytes(head[:5]) == b"HEAD "


def for_request(response: bytes, head: bytes | bytearray) -> bytes:
    """`response` as the answer to this request: without its body when it is a HEAD."""
    if not is_head(head):
        return response
    end = response.find(b"\r\n\r\n")
    return response if end < 0 else response[: end + 4]


def host_header(head: bytes | bytearray) -> str | None:
    """The Host header of a request head, if present and a plausible host[:port]."""
    lines = bytes(head[:MAX_HEAD]).split(b"\n")
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            break
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            v = value.strip()
            return v.decode("ascii") if _HOST_OK.match(v) else None
    return None


_TARGET_OK = re.compile(rb"^/[\x21-\x7e]{0,8191}$")


def redirect_response(head: bytes | bytearray, *, fallback_host: str, https_port: int) -> tuple[bytes, str]:
    """(a 308 response to the https URL of this request, the Location). Nothing unsafe is echoed:
    a request target that is not an absolute path becomes "/", a bad Host the route's name."""
    line = bytes(head[:MAX_HEAD]).split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    target = parts[1] if len(parts) == 3 and _TARGET_OK.match(parts[1]) else b"/"
    host = host_header(head) or fallback_host
    if host.startswith("["):
        host = host[: host.find("]") + 1] or fallback_host
    else:
        host = host.rpartition(":")[0] if ":" in host else host
    port = "" if https_port == 443 else f":{https_port}"
    location = f"https://{host}{port}{target.decode('ascii')}"
    body = f"308 Permanent Redirect\n\n{location}\n".encode()
    response = (
        "HTTP/1.1 308 Permanent Redirect\r\n"
        f"Location: {location}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "Server: maculad\r\n"
        "\r\n"
    ).encode("ascii") + body
    return response, location


def render(*, host: str, backend: str, reason: str) -> bytes:
    """A complete HTTP/1.1 502 Bad Gateway response."""
    title = "502 Bad Gateway"
    body = f"{title}\n\n{host}: the backend {backend} is not reachable ({reason}).\n\n-- maculad\n"
    return _page(title, body)


def held_reason(hold: ServiceHold, *, now: float) -> str:
    """The hold's reason with the time to the next automatic start ("restarting: attempt 3, next in 1.6 s")."""
    if hold.retry_at is None:
        return hold.reason
    return f"{hold.reason}, next in {max(0.0, hold.retry_at - now):.1f} s"


def held(hold: ServiceHold, *, host: str, head: bytes | bytearray, now: float) -> bytes:
    """503 for a route whose supervised service is not running: what, why and the fix, as a short HTML page."""
    e = html.escape
    reason = held_reason(hold, now=now)
    body = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>503 {e(hold.service)} is {e(hold.state)}</title></head>\n<body>\n"
        "<h1>503 Service Unavailable</h1>\n"
        f"<p>{e(host)}: the service <strong>{e(hold.service)}</strong> is <strong>{e(hold.state)}</strong>"
        f" &mdash; {e(reason)}.</p>\n"
        f"<p>To bring it back: <code>{e(hold.fix)}</code></p>\n"
        "<p><small>maculad</small></p>\n</body></html>\n"
    )
    retry = "" if hold.retry_at is None else f"Retry-After: {max(1, math.ceil(hold.retry_at - now))}\r\n"
    return for_request(_page("503 Service Unavailable", body, content_type="text/html", extra=retry), head)


def _page(status: str, body: str, *, content_type: str = "text/plain", extra: str = "") -> bytes:
    data = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n"
        "Server: maculad\r\n"
        "\r\n"
    )
    return head.encode("ascii") + data


def not_found(*, host: str, address: str, why: str = "no route has this name") -> bytes:
    """404 for a Host no route answers (`host` must already be a sanitised DNS name)."""
    return _page("404 Not Found", f"404 Not Found\n\n{host}: {why} (asked at {address}).\n\n-- maculad\n")


def bad_request(*, reason: str, address: str) -> bytes:
    """400 for a request on a Host-routed address that names no host."""
    return _page("400 Bad Request", f"400 Bad Request\n\n{address} routes by the Host header: {reason}.\n\n"
                                    "-- maculad\n")
