"""The PowerDNS Authoritative HTTP API (`/api/v1`, `X-API-Key`), as maculad uses it.

Three calls: list a zone, create a zone (Native, with an NS record), PATCH a
zone's RRsets. PowerDNS's replies are untrusted input: a body larger than
`MAX_BODY`, one that is not JSON, or a status maculad does not expect becomes
a `PowerDNSError` with a `kind` and a message a person can act on — never an
exception of another type. A missing zone is `ZoneMissing` so the caller can
create it. The API key is sent only in the header and never logged. The HTTP
is the adapters' one client (`adapters.http`, a keep-alive pool of up to 4).
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import quote

from maculad.adapters.http import Endpoint, HTTPClient, HTTPTimeout, HTTPTooLarge, HTTPUnavailable

#: the largest reply read from PowerDNS (a 1,000-route zone lists in well under 1 MiB)
MAX_BODY = 32 * 1024 * 1024

ErrorKind = Literal["unreachable", "auth", "refused", "format"]


class PowerDNSError(Exception):
    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


class ZoneMissing(PowerDNSError):
    def __init__(self, zone: str) -> None:
        super().__init__("refused", f"zone {zone} does not exist in PowerDNS", status=404)


class PowerDNSAPI:
    """One server of one PowerDNS API endpoint; `requests` counts calls by (method, result)."""

    def __init__(self, *, api: str, api_key: str, server_id: str, timeout: float) -> None:
        self._api = api.rstrip("/")
        self._path = f"/api/v1/servers/{quote(server_id, safe='')}"
        self.base = self._api + self._path
        self._key = api_key
        self._timeout = timeout
        self._client: HTTPClient | None = None
        self.requests: dict[tuple[str, str], int] = {}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _zone_url(self, zone: str) -> str:
        return f"{self._path}/zones/{quote(zone.rstrip('.') + '.', safe='')}"

    async def get_zone(self, zone: str) -> Any:
        """The zone with its RRsets (parsed JSON, shape unchecked); ZoneMissing when it does not exist."""
        status, body = await self._call("GET", self._zone_url(zone))
        if status == 404 or (status == 422 and "could not find" in _error_text(body).lower()):
            raise ZoneMissing(zone)
        self._expect(status, body, (200,), f"listing zone {zone}")
        return _json(body, f"the listing of zone {zone}")

    async def create_zone(self, zone: str, *, nameservers: tuple[str, ...]) -> None:
        z = zone.rstrip(".") + "."
        body = {"name": z, "kind": "Native", "nameservers": [n.rstrip(".") + "." for n in nameservers]}
        status, reply = await self._call("POST", f"{self._path}/zones", body)
        if status == 409:  # created meanwhile by someone else: fine
            return
        self._expect(status, reply, (201, 204), f"creating zone {zone}")

    async def patch_zone(self, zone: str, body: dict[str, Any]) -> None:
        status, reply = await self._call("PATCH", self._zone_url(zone), body)
        if status == 404:
            raise ZoneMissing(zone)
        self._expect(status, reply, (200, 204), f"changing zone {zone}")

    # ------------------------------------------------------------------ plumbing

    def _count(self, method: str, result: str) -> None:
        key = (method, result)
        self.requests[key] = self.requests.get(key, 0) + 1

    def _http(self) -> HTTPClient:
        if self._client is None:
            self._client = HTTPClient(Endpoint.parse(self._api), timeout=self._timeout, max_body=MAX_BODY,
                                      headers={"X-API-Key": self._key, "Accept": "application/json"}, max_idle=4)
        return self._client

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            resp = await self._http().request(method, path, headers=headers, body=data)
        except HTTPTimeout:
            self._count(method, "timeout")
            raise PowerDNSError("unreachable", f"PowerDNS API at {self.base} did not answer in time") from None
        except HTTPTooLarge:
            self._count(method, "error")
            raise PowerDNSError("format", f"PowerDNS sent more than {MAX_BODY} bytes for {method} "
                                          f"{self._api}{path}") from None
        except (HTTPUnavailable, ValueError) as exc:  # ValueError: a bad API URL, or a key no header can carry
            self._count(method, "error")
            cause = exc.cause if isinstance(exc, HTTPUnavailable) else str(exc)
            raise PowerDNSError("unreachable", f"PowerDNS API at {self.base} is unreachable: {cause}") from None
        status, raw = resp.status, resp.body
        self._count(method, str(status))
        if status == 401:
            raise PowerDNSError("auth", "PowerDNS refused the API key (401 Unauthorized): check "
                                        "powerdns.api_key_file against PowerDNS's api-key", status=401)
        if status == 403:
            raise PowerDNSError("auth", "PowerDNS refused the request (403 Forbidden): is maculad's address "
                                        "in PowerDNS's webserver-allow-from?", status=403)
        return status, raw

    @staticmethod
    def _expect(status: int, body: bytes, ok: tuple[int, ...], what: str) -> None:
        if status in ok:
            return
        detail = _error_text(body) or f"HTTP {status}"
        raise PowerDNSError("refused", f"PowerDNS refused {what}: {detail} (HTTP {status})", status=status)


def _error_text(body: bytes) -> str:
    """PowerDNS's `{"error": "..."}` message, else the start of the body as text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:500]
    return body[:200].decode("utf-8", "replace").strip()


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise PowerDNSError("format", f"{what} from PowerDNS is not JSON: {exc}") from None
