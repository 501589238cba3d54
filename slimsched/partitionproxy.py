"""A TCP proxy that partitions a local pysyncobj cluster on demand, for ``slimsched chaos``.

Why a module of its own: relaying and cutting Raft links is a network role apart from the
faults' plan and the invariant checker; tests (test_chaos, test_actions_lag) use it on its own.

Partitions need no root and no iptables: a small asyncio TCP proxy (``PartitionProxy``) runs in
the harness process. Every node is known to its peers by a "front" address on which the proxy
listens, and really binds its Raft port to a "back" address (``SLIMSCHED_RAFT_BIND``). pysyncobj
names a node by its address string, and only the node with the larger address opens the TCP
connection of a pair; the first frame it sends, when no password is set, is
``struct.pack('i', len) + zlib.compress(pickle.dumps(own_address))``. The proxy decompresses
that one frame (bounded) and looks for a peer's address as a length-prefixed pickled string; it
never unpickles. Knowing the pair, it can cut a link (close its connections, refuse new ones)
and heal it. **The partition faults therefore require the cluster to run without
SLIMSCHED_RAFT_PASSWORD**: with a password the first frame is encrypted, the proxy cannot tell
who connects and refuses the connection. The harness clears the password for its nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping

# Bounds of the proxy.
PROXY_MAX_CONNECTIONS = 64
PROXY_FIRST_FRAME_MAX = 4096
PROXY_PLAIN_MAX = 4096
PROXY_CHUNK = 64 * 1024
PROXY_FIRST_FRAME_TIMEOUT = 5.0
PROXY_CONNECT_TIMEOUT = 2.0


def _pickled_forms(address: str) -> tuple[bytes, ...]:
    """How pickle writes ``address``: BINUNICODE (protocol 2, pysyncobj's) or SHORT_BINUNICODE."""
    raw = address.encode()
    forms = [b"X" + struct.pack("<I", len(raw)) + raw]
    if len(raw) < 256:
        forms.append(b"\x8c" + bytes([len(raw)]) + raw)
    return tuple(forms)


def identify_peer(frame: bytes, candidates: Iterable[str]) -> str | None:
    """The one candidate address whose pickled string the (compressed) first frame holds.

    ``frame`` is the frame body after its 4-byte length. The body is decompressed with a bound
    and searched, never unpickled; the length prefix makes the match exact (``127.0.0.1:4000``
    is not found inside ``127.0.0.1:40001``). None if no candidate or several match.
    """
    try:
        plain = zlib.decompressobj().decompress(frame, PROXY_PLAIN_MAX)
    except zlib.error:
        return None
    found = [c for c in candidates if any(form in plain for form in _pickled_forms(c))]
    return found[0] if len(found) == 1 else None


def pysyncobj_first_frame(address: str) -> bytes:
    """The first frame pysyncobj (no password) sends on a connection it opens, for tests."""
    import pysyncobj.pickle as pysyncobj_pickle  # only to build a faithful frame

    body = zlib.compress(pysyncobj_pickle.dumps(address), 3)
    return struct.pack("i", len(body)) + body


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class PartitionProxy:
    """Relays Raft TCP between nodes on 127.0.0.1 and cuts chosen links on demand.

    ``routes`` maps each node's front address (what peers dial) to its back address (where the
    node listens). A connection to a front address comes from the peer named in its first frame
    (see ``identify_peer``); it is relayed to the back address unless that pair's link is cut.
    """

    def __init__(self, routes: Mapping[str, str], *, max_connections: int = PROXY_MAX_CONNECTIONS) -> None:
        for address in (*routes, *routes.values()):
            if _split(address)[0] != "127.0.0.1":
                raise ValueError(f"the partition proxy serves 127.0.0.1 only, not {address}")
        self._routes = dict(routes)
        self._max = max_connections
        self._servers: list[asyncio.Server] = []
        self._cut: set[frozenset[str]] = set()
        self._links: dict[frozenset[str], set[asyncio.StreamWriter]] = {}
        self._open = 0
        self.stats: Counter[str] = Counter()

    async def start(self) -> None:
        for front in self._routes:
            host, port = _split(front)

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, front: str = front) -> None:
                await self._handle(front, r, w)

            self._servers.append(await asyncio.start_server(handle, host, port))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writers in list(self._links.values()):
            for w in list(writers):
                w.transport.abort()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    # -- control ---------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Cut the link between nodes ``a`` and ``b`` (front addresses): close it, refuse it."""
        pair = frozenset((a, b))
        self._cut.add(pair)
        for w in list(self._links.get(pair, ())):
            w.transport.abort()

    def isolate(self, a: str) -> None:
        for b in self._routes:
            if b != a:
                self.cut(a, b)

    def heal(self, a: str, b: str) -> None:
        self._cut.discard(frozenset((a, b)))

    def heal_all(self) -> None:
        self._cut.clear()

    @property
    def cut_links(self) -> frozenset[frozenset[str]]:
        return frozenset(self._cut)

    def connected(self, a: str, b: str) -> bool:
        """Whether a relayed connection between ``a`` and ``b`` is open right now."""
        return bool(self._links.get(frozenset((a, b))))

    # -- relaying --------------------------------------------------------------------------------

    async def _handle(self, dst: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max:
            self.stats["over_limit"] += 1
            writer.transport.abort()
            return
        self._open += 1
        back: asyncio.StreamWriter | None = None
        pair: frozenset[str] | None = None
        try:
            header = await asyncio.wait_for(reader.readexactly(4), PROXY_FIRST_FRAME_TIMEOUT)
            (length,) = struct.unpack("i", header)
            if not 0 < length <= PROXY_FIRST_FRAME_MAX:
                self.stats["unidentified"] += 1
                return
            body = await asyncio.wait_for(reader.readexactly(length), PROXY_FIRST_FRAME_TIMEOUT)
            src = identify_peer(body, [a for a in self._routes if a != dst])
            if src is None:
                self.stats["unidentified"] += 1
                return
            pair = frozenset((src, dst))
            if pair in self._cut:
                self.stats["refused"] += 1
                return
            back_reader, back_writer = await asyncio.wait_for(
                asyncio.open_connection(*_split(self._routes[dst])), PROXY_CONNECT_TIMEOUT
            )
            back = back_writer
            if pair in self._cut:  # cut while we were connecting
                self.stats["refused"] += 1
                return
            self._links.setdefault(pair, set()).update((writer, back_writer))
            self.stats["relayed"] += 1
            back_writer.write(header + body)
            await asyncio.gather(
                self._pump(reader, back_writer, writer), self._pump(back_reader, writer, back_writer)
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            self.stats["failed"] += 1
        finally:
            self._open -= 1
            if pair is not None:
                links = self._links.get(pair, set())
                links.discard(writer)
                if back is not None:
                    links.discard(back)
                if not links:
                    self._links.pop(pair, None)
            writer.transport.abort()
            if back is not None:
                back.transport.abort()

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until either side closes (a cut aborts both), then close both.

        Ends with the connection: the cut, ``stop`` or either node closing it ends the read.
        """
        try:
            while data := await src.read(PROXY_CHUNK):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            other.transport.abort()
