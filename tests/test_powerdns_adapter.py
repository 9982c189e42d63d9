"""The PowerDNS API adapter against replies real PowerDNS would not send: each is a defined error.

Real PowerDNS answers well (tests/test_powerdns.py); here an aiohttp server on a free
loopback port plays a broken or hostile one, because the adapter must treat the reply
as untrusted input: not JSON, wrong shapes, too large, errors, silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from maculad.adapters.powerdns import MAX_BODY, PowerDNSAPI, PowerDNSError, ZoneMissing
from maculad.config import PowerDNSConfig
from maculad.observability.metrics import Metrics
from maculad.publishers.powerdns_sync import PowerDNSPublisher
from maculad.routes.table import RouteTable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[PowerDNSAPI]]]:
    runners: list[web.AppRunner] = []
    apis: list[PowerDNSAPI] = []

    async def make(handler: Handler) -> PowerDNSAPI:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        api = PowerDNSAPI(api=f"http://127.0.0.1:{port}", api_key="k", server_id="localhost", timeout=0.5)
        apis.append(api)
        return api

    yield make
    for a in apis:
        await a.close()
    for r in runners:
        await r.cleanup()


def text(body: str | bytes, status: int = 200) -> Handler:
    async def h(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body if isinstance(body, bytes) else body.encode(), status=status)
    return h


@pytest.mark.parametrize(("handler", "kind", "words"), [
    (text("{not json"), "format", "not JSON"),
    (text("Unauthorized", 401), "auth", "API key"),
    (text("Forbidden", 403), "auth", "webserver-allow-from"),
    (text('{"error": "backend on fire"}', 500), "refused", "backend on fire"),
    (text("<html>proxy error</html>", 502), "refused", "proxy error"),
])
async def test_bad_replies_are_defined_errors(server: Any, handler: Handler, kind: str, words: str) -> None:
    api = await server(handler)
    with pytest.raises(PowerDNSError) as e:
        await api.get_zone("macula.local")
    assert e.value.kind == kind and words in e.value.message


async def test_missing_zone_oversized_and_silent(server: Any) -> None:
    api = await server(text("Not Found", 404))
    with pytest.raises(ZoneMissing):
        await api.get_zone("macula.local")

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b" " * (1 << 20)
        for _ in range(MAX_BODY // len(chunk) + 2):
            await resp.write(chunk)
        return resp
    api = await server(huge)
    with pytest.raises(PowerDNSError) as e:
        await api.get_zone("macula.local")
    assert e.value.kind == "format" and "more than" in e.value.message

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(text="{}")
    api = await server(silent)
    with pytest.raises(PowerDNSError) as e:
        await api.get_zone("macula.local")
    assert e.value.kind == "unreachable" and "did not answer in time" in e.value.message


async def test_unreachable() -> None:
    api = PowerDNSAPI(api="http://127.0.0.1:9", api_key="k", server_id="localhost", timeout=0.5)
    try:
        with pytest.raises(PowerDNSError) as e:
            await api.get_zone("macula.local")
        assert e.value.kind == "unreachable"
    finally:
        await api.close()


class _Table:
    def __init__(self) -> None:
        self.current = RouteTable.empty("macula.local")

    def add_listener(self, listener: Any) -> None: ...

    def remove_listener(self, listener: Any) -> None: ...


@pytest.mark.parametrize("body", ['[]', '{"rrsets": {"a": 1}}', '{"rrsets": [{"name": 5}]}', '"zone"'])
async def test_a_zone_of_the_wrong_shape_is_an_error_in_status_not_a_crash(server: Any, body: str) -> None:
    api = await server(text(body))
    pub = PowerDNSPublisher(config=PowerDNSConfig(enabled=True, api_key="k", zone="macula.local",
                                                  publish_address="10.0.0.1", owner_id="me"),
                            ttl=5, routes=_Table(), api=api, metrics=Metrics())
    assert await pub.sync_once() is False
    st = pub.status()
    assert st["last_error_kind"] == "format" and "cannot read" in st["last_error"] and pub.patches == 0
