"""Piped connections: relayed by the C pump (`_pump.c`) on the event loop's own thread.

A relayed connection starts on the Python path (tcp.py), which counts every
chunk. Once it has relayed `PIPE_AFTER` chunks it is piped: its two sockets
leave their transports for the relay's `Pumps`, and from then on the bytes move
in C. The loop watches the pump's epoll descriptor (`add_reader`) and calls
`run`, a C method, itself when any piped socket is ready: no Python frame for
all the sockets ready at that moment unless one finished, none per chunk.
Nothing runs in another thread, so a piped
connection costs what nginx's one worker pays per read, and the loop between
two runs serves DNS and everything else.

`Pumps` is one per relay (its `Context` holds it; `Relay.stop` shuts it down
after the listeners are closed). The C pump and its epoll descriptor are made
when the first connection pipes, so a relay that never pipes has neither. Each
piped connection gives a callback, called once when the pump finishes it (both
directions at EOF, or an error of either socket: its errno); the connection
then closes through `close`, which also serves the relay's own closes
(timeouts, drain, stop). Counts and unsent bytes are read on demand.

Where the module was not built (not Linux, or installed without a compiler)
`AVAILABLE` is False and no connection pipes: they all stay on the Python path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

try:
    from maculad.proxy._pump import Pump
except ImportError:  # not Linux, or built without the extension: every connection stays in Python
    Pump = None  # type: ignore[assignment,misc]

#: Whether connections can be piped here.
AVAILABLE = Pump is not None
#: Bytes one read takes, and so the most a direction holds that its sink has not taken: the same bound
#: as the Python path's write buffers (tcp.HIGH_WATER is this).
BUFFER = 512 * 1024
#: Buffers a direction reads per run before the connection waits for the next run (the loop serves
#: everything else in between).
BURST = 16


class Pumps:
    """The relay's piped connections (see the module docstring)."""

    __slots__ = ("_again", "_bufsize", "_ended", "_loop", "_pump")

    def __init__(self, bufsize: int = BUFFER) -> None:
        self._bufsize = bufsize
        self._pump: Pump | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended: dict[int, Callable[[int], None]] = {}
        self._again = False

    def take(self, loop: asyncio.AbstractEventLoop, client_fd: int, backend_fd: int,
             ended: Callable[[int], None]) -> int:
        """Relay between two connected sockets, which the pump now owns (and closes, also when this
        raises); `ended(errno)` is called once when it finishes them. Returns the connection's id."""
        try:
            pump = self._pump
            if pump is None:
                if Pump is None:
                    raise OSError("the relay's pump is not built here")
                pump = Pump(self._bufsize, BURST, self._finished, self._more)
                loop.add_reader(pump.fileno(), pump.run)  # the loop calls the C method itself
                self._pump, self._loop = pump, loop
            elif loop is not self._loop:
                raise RuntimeError("one relay's connections share one loop")
            cid = pump.add(client_fd, backend_fd)
        except BaseException:
            for fd in (client_fd, backend_fd):
                os.close(fd)
            raise
        self._ended[cid] = ended
        return cid

    def _finished(self, finished: list[tuple[int, int]]) -> None:
        for cid, err in finished:
            ended = self._ended.get(cid)
            if ended is not None:
                ended(err)

    def _more(self) -> None:
        if not self._again and self._loop is not None:
            self._again = True
            self._loop.call_soon(self._run_again)

    def _run_again(self) -> None:
        self._again = False
        if self._pump is not None:
            self._pump.run()

    def counts(self, cid: int) -> tuple[int, int] | None:
        """Bytes the connection's client and backend have sent since it was piped; None once it is closed."""
        if self._pump is None or cid not in self._ended:
            return None
        return self._pump.counts(cid)

    def pending(self, cid: int) -> int:
        """Bytes read from one side that the other has not taken yet, both ways."""
        if self._pump is None or cid not in self._ended:
            return 0
        return self._pump.pending(cid)

    def close(self, cid: int) -> tuple[int, int] | None:
        """Close the connection's two sockets; its final counts (as `counts`), None if it was closed already
        (by `shutdown`)."""
        if self._pump is None or self._ended.pop(cid, None) is None:
            return None
        return self._pump.close(cid)

    def __len__(self) -> int:
        return 0 if self._pump is None else len(self._pump)

    def shutdown(self) -> None:
        """Close every piped socket and the epoll descriptor (the relay has closed its connections)."""
        pump, self._pump = self._pump, None
        self._ended.clear()
        if pump is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(pump.fileno())
        pump.shutdown()
        self._loop = None
