"""Raw HTTP/1.1 servers for the HTTP client's and the adapters' tests: plain asyncio, bytes written by the
test, so each test controls the framing (and can break it)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from maculad.adapters.http import Endpoint

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request: (head, body); None at EOF before a request began."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


class RawServer:
    """A TCP (optionally TLS) or unix server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_peer = 0  # connections the client closed between requests
        self.finished = 0  # handlers that returned
        self.requests: list[tuple[bytes, bytes]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: `close` ends a handler still waiting (asyncio would log a cancelled one)
        finally:
            self.finished += 1
            writer.close()

    async def next_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        req = await read_request(reader)
        if req is None:
            self.closed_by_peer += 1
        else:
            self.requests.append(req)
        return req

    async def tcp(self, *, ssl_context: ssl.SSLContext | None = None) -> Endpoint:
        self._server = await asyncio.start_server(self._on, "127.0.0.1", 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        return Endpoint("https" if ssl_context else "http", "127.0.0.1", port, "")

    async def on_socket(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on, sock=sock)

    async def unix(self, path: Path) -> Endpoint:
        self._server = await asyncio.start_unix_server(self._on, str(path))
        return Endpoint("unix", "", 0, str(path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def send_chunks(writer: asyncio.StreamWriter, parts: Iterable[bytes], *, end: bool = True,
                      pause: bool = False) -> None:
    """Each part as one chunk of a chunked body (drained, and with `pause` a loop pass between them so
    they arrive apart); with `end` the last chunk follows."""
    for part in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        if pause:
            await asyncio.sleep(0)
    if end:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def keepalive(answer: bytes) -> Handler:
    """Answer every request on the connection with `answer`, until the client closes it."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: RawServer) -> None:
        while await srv.next_request(reader) is not None:
            writer.write(answer)
            await writer.drain()
    return handler
