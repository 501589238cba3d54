"""A lean closed-loop HTTP/1.1 load generator: what bench_write measures the API with.

The raw pysyncobj anchor's clients are callbacks inside its leader process and cost it next to
nothing. aiohttp's client costs ~0.1 ms of CPU a request on the same 2 cores as the nodes it
measures (45 % of a core at 4,000 requests a second), and at 64 clients its event loop and the
leader's took turns, each waiting for the other's wave of answers. This client sends a request
prepared once and reads the answer with a few bytes operations, as wrk does: ~10 % of a core at
4,500 requests a second.

It speaks only what the benchmark needs: keep-alive connections, one request in flight on each,
answers framed by Content-Length (as aiohttp's ``web.Response`` sends them). An answer without
one, a closed connection or a connection that cannot be opened counts as an error and the client
opens a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 5.0


class ProtocolError(Exception):
    """The server's answer is not one this client reads (or the connection closed)."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ProtocolError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._fail(ProtocolError("answer head too long"))
            return
        head = self._buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if not head.startswith(b"http/1.1 ") or at < 0 or b"\r\ntransfer-encoding:" in head:
            self._fail(ProtocolError(f"unsupported answer: {self._buf[:end][:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        try:
            length = int(head[at + 17 : None if stop < 0 else stop])
        except ValueError:
            self._fail(ProtocolError(f"bad Content-Length: {self._buf[:end][:200]!r}"))
            return
        if len(self._buf) < end + 4 + length:
            return
        status = int(head[9:12])
        self._buf = self._buf[end + 4 + length :]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future[int]:
        """Write ``request``; the future answers its HTTP status."""
        assert self._waiter is None, "one request in flight per connection"
        self._waiter = asyncio.get_running_loop().create_future()
        if self.transport is None or self.transport.is_closing():
            self._fail(ProtocolError("connection closed"))
        else:
            self.transport.write(request)
        return self._waiter


def prepare(url: str, path: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, the whole POST request) for a JSON body."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"need http://host:port, not {url!r}")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parts.hostname, parts.port, head.encode() + body


async def load(
    urls: Sequence[str],
    path: str,
    body: bytes,
    clients: int,
    seconds: float,
    expect: int,
    warm_up: float = 1.0,
) -> tuple[list[float], int, float]:
    """``clients`` closed loops, client i on its own connection to ``urls[i % len(urls)]``, for
    ``warm_up`` seconds and then ``seconds`` measured: (latencies of answers with status
    ``expect``, other outcomes, measured seconds)."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors = 0
    targets = [prepare(urls[i % len(urls)], path, body) for i in range(clients)]
    conns: list[_Connection | None] = [None] * clients

    async def connect(i: int) -> _Connection:
        host, port, _ = targets[i]
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, conn = await loop.create_connection(_Connection, host, port)
        return conn

    async def client(i: int, end: float) -> None:
        nonlocal errors
        request = targets[i][2]
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                conn = conns[i]
                if conn is None or conn.transport is None:
                    conn = conns[i] = await connect(i)
                status = await conn.send(request)
            except (OSError, ProtocolError, TimeoutError):
                conns[i] = None
                errors += 1
                continue
            if status == expect:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1

    async def run(end: float) -> None:
        # Bounded: a request that never answers fails the row instead of hanging it.
        async with asyncio.timeout(end - time.perf_counter() + 30.0):
            await asyncio.gather(*(client(i, end) for i in range(clients)))

    try:
        await run(time.perf_counter() + warm_up)
        lat.clear()
        errors = 0
        start = time.perf_counter()
        await run(start + seconds)
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
    return lat, errors, elapsed
