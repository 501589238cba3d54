"""The Raft node: the only module that imports pysyncobj, and its bridge to asyncio.

One replicated method, ``apply(payload: bytes)``, runs ``statemachine.apply_entry`` in pysyncobj's
thread under a lock that readers share. Snapshots are raftdump.py's; the wire's limits are
raftwire.py's, enforced here by the transport classes (frames capped before authentication).

``submit`` proposes a command and returns once it is committed and applied on this node. It
retries on leader changes until its deadline; commands carry a request id, so a command that was
in fact committed before the retry is answered from the state machine's memory, not applied twice.
Commands submitted in the same turn of the event loop go into one ``batch`` entry: pysyncobj
(with ``appendEntriesUseBatch`` off, see DESIGN.md) sends, journals and acknowledges each entry
on its own, which made a second of 240 cron ticks 240 round trips. A batch is proposed only once
every member has announced (``hello``) a release that applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE as SERIALIZER_STATE  # re-exported for tests
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from slimsched import heap, statemachine
from slimsched.errors import Unavailable
from slimsched.loopinbox import LoopInbox
from slimsched.raftdump import DUMP_VERSION as DUMP_VERSION  # re-exported for tests
from slimsched.raftdump import SNAPSHOT_STOP_SECONDS, DumpState, Snapshotter
from slimsched.raftdump import compaction_due as compaction_due  # re-exported for tests
from slimsched.raftwatch import LogWatch
from slimsched.raftwire import (
    ACCEPT_PAUSE_SECONDS,
    CONNECTION_ERRORS,
    HANDSHAKE_FRAME_BYTES,
    LISTEN_BACKLOG,
    MAX_UNIDENTIFIED_CONNECTIONS,
    OUT_OF_DESCRIPTORS,
    UNIDENTIFIED_SECONDS,
    TransportCounters,
    batch_groups,
    frame_cap_bytes,
    warn_rarely,
)
from slimsched.raftwire import MAX_BATCH_BYTES as MAX_BATCH_BYTES  # re-exported
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import Result, State

log = logging.getLogger(__name__)
if [int(getattr(SERIALIZER_STATE, m.name)) for m in DumpState] != [m.value for m in DumpState]:
    raise ImportError("pysyncobj's SERIALIZER_STATE values differ from raftdump.DumpState")

T = TypeVar("T")
# Called in the Raft thread after each entry, with the commands it held and their results.
AppliedHook = Callable[[tuple[tuple[object, Result], ...]], None]

# An entry this large is a restore or a part of one (batches stay under MAX_BATCH_BYTES): applied
# with the cyclic collector paused, which halves the time every node's Raft thread spends on it.
# Parts of ~1 MB need it as much: without it, the oldest generation, growing with the staged
# parts, was collected again and again (the slowest of 23 parts took 193-419 ms, 56-59 with it).
BULK_ENTRY_BYTES = 256_000
_RETRYABLE = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.LEADER_CHANGED,
        FAIL_REASON.UNKNOWN_OUTCOME,
    }
)
_LEADER = 2


class _CappedConnection(TcpConnection):  # type: ignore[misc]
    """pysyncobj's TcpConnection with a cap on the frame length it agrees to buffer.

    pysyncobj reads everything the socket holds, then parses: a stranger announcing a 2 GiB frame,
    or streaming 64 MiB, made the node buffer it all before the first authentication check
    (issue 16). The reader is pysyncobj's own, name-mangled: overriding ``__processRead`` and
    ``__processParseMessage`` (spelled ``_TcpConnection__...``) is the only hook it offers;
    pysyncobj is pinned (0.3.17), and tests/test_raft_security.py exercises both over real nodes.
    After each read, the first pending frame's length is checked against the cap (the
    handshake cap until a frame has authenticated, then the full one), and reading stops once
    a whole frame is buffered so that pysyncobj parses it (and checks the next header) first:
    the buffer never holds more than one capped frame and one ``recv``.
    """

    _cap = 0
    _full_cap = 0
    _counters: TransportCounters | None = None

    def set_caps(self, first: int, full: int, counters: TransportCounters) -> None:
        self._cap, self._full_cap, self._counters = first, full, counters

    def _TcpConnection__processRead(self) -> bool:
        more: bool = TcpConnection._TcpConnection__processRead(self)
        buf: bytes = self._TcpConnection__readBuffer
        if len(buf) < 4 or self._cap <= 0:
            return more
        (length,) = struct.unpack_from("i", buf)
        if not 0 <= length <= self._cap:
            if self._counters is not None:
                self._counters.frames_refused += 1
                warn_rarely(
                    self._counters,
                    "Raft: dropped a connection announcing a %d-byte frame (cap %d bytes)",
                    length,
                    self._cap,
                )
            self.disconnect()
            return False
        return more and len(buf) < 4 + length

    def _TcpConnection__processParseMessage(self) -> Any:
        message = TcpConnection._TcpConnection__processParseMessage(self)
        if message is not None:
            self._cap = self._full_cap  # the frame authenticated (or, with no password, parsed)
        return message


class _Server(TcpServer):  # type: ignore[misc]
    """pysyncobj's TcpServer, except that running out of file descriptors does not close it.

    pysyncobj closes its listening socket for good on any accept() error but EAGAIN: one flood of
    connections to the HTTP port at the open-files limit cut the node out of Raft until restarted
    (issue 16). Out of descriptors, accepting pauses (the socket is unsubscribed from the poller
    for ACCEPT_PAUSE_SECONDS, else a readable listener would spin the Raft thread) and resumes
    from the transport's tick. Any other failure still closes it, and is recorded so that /health
    fails and Kubernetes restarts the node.
    """

    def __init__(self, *args: Any, counters: TransportCounters, first_cap: int, full_cap: int, **kw: Any):
        super().__init__(*args, **kw)
        self._counters = counters
        self._first_cap = first_cap
        self._full_cap = full_cap
        self._paused_until: float | None = None
        self._destroying = False

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, _ = self._TcpServer__socket.accept()
            except OSError as e:
                if e.errno in CONNECTION_ERRORS:
                    return
                if e.errno in OUT_OF_DESCRIPTORS:
                    self._counters.accept_failures += 1
                    warn_rarely(self._counters, "Raft: cannot accept a connection: %s; pausing", e)
                    self._TcpServer__poller.unsubscribe(descr)
                    self._paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
                    return
                self._lose(f"accept failed: {e}")
                return
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                conn = _CappedConnection(
                    poller=self._TcpServer__poller,
                    socket=sock,
                    timeout=self._TcpServer__connectionTimeout,
                    sendBufferSize=self._TcpServer__sendBufferSize,
                    recvBufferSize=self._TcpServer__recvBufferSize,
                    keepalive=self._TcpServer__keepalive,
                )
            except OSError:
                sock.close()  # the peer left already
                return
            conn.set_caps(self._first_cap, self._full_cap, self._counters)
            self._TcpServer__onNewConnectionCallback(conn)
        if event & POLL_EVENT_TYPE.ERROR:
            self._lose("the listening socket reported an error")

    def bind(self) -> None:
        super().bind()
        self._TcpServer__socket.listen(LISTEN_BACKLOG)  # pysyncobj's 5 drops SYNs under a flood

    def resume_if_due(self) -> None:
        if self._paused_until is not None and time.monotonic() >= self._paused_until:
            self._paused_until = None
            fileno = self._TcpServer__fileno
            if fileno is not None:
                self._TcpServer__poller.subscribe(
                    fileno, self._TcpServer__onNewConnection, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
                )

    def _lose(self, why: str) -> None:
        self._counters.listener_lost = why
        log.critical("Raft: the listening socket is closed (%s): this node is out of the cluster", why)
        self.unbind()

    def unbind(self) -> None:
        if self._destroying:
            self._counters.listener_lost = None
        super().unbind()


class _Transport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport with capped frames on every connection and a sturdier listener."""

    def __init__(self, syncObj: _Replica, selfNode: Any, otherNodes: Any) -> None:
        self._counters: TransportCounters = syncObj.transport_counters
        self._full_cap: int = syncObj.frame_cap
        super().__init__(syncObj, selfNode, otherNodes)

    def _createServer(self) -> None:
        super()._createServer()
        plain: Any = self._server
        conf = self._syncObj.conf
        self._server: Any = _Server(
            self._syncObj._poller,
            plain._TcpServer__host,
            plain._TcpServer__port,
            onNewConnection=self._onNewIncomingConnection,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout,
            counters=self._counters,
            first_cap=HANDSHAKE_FRAME_BYTES,
            full_cap=self._full_cap,
        )

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and type(conn) is TcpConnection:
            # pysyncobj builds the connections it opens itself, by its module's own name; this
            # one is to a configured peer, so every frame is allowed the full cap.
            conn.__class__ = _CappedConnection
            conn.set_caps(self._full_cap, self._full_cap, self._counters)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        """Not yet identified connections are few and short-lived: a stranger's idle ones would
        otherwise stay open for good (pysyncobj times a connection out only on its own events)
        and take the descriptors that peers and HTTP need."""
        conn.accepted_at = time.monotonic()
        if len(self._unknownConnections) >= MAX_UNIDENTIFIED_CONNECTIONS:
            self._counters.unidentified_dropped += 1
            warn_rarely(self._counters, "Raft: too many connections not identified yet; dropped one")
            conn.disconnect()
            return
        super()._onNewIncomingConnection(conn)

    def _onTick(self) -> None:
        if isinstance(self._server, _Server):
            self._server.resume_if_due()
        if self._unknownConnections:
            overdue = time.monotonic() - UNIDENTIFIED_SECONDS
            for conn in [c for c in self._unknownConnections if getattr(c, "accepted_at", overdue) < overdue]:
                self._counters.unidentified_dropped += 1
                conn.disconnect()  # pysyncobj's callback takes it out of the set
                self._unknownConnections.discard(conn)
        super()._onTick()

    def destroy(self) -> None:
        if isinstance(self._server, _Server):
            self._server._destroying = True
        super().destroy()


@dataclass(frozen=True)
class RaftStatus:
    node: str
    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    applied_index: int
    peers: tuple[str, ...]
    connected_peers: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.leader is not None and self.applied_index >= self.commit_index


def tuned_conf(timings: RaftTimings, **kwargs: Any) -> SyncObjConf:
    """A SyncObjConf with what DESIGN.md's measurements require, plus ``kwargs``.

    Batching off (a sequential commit takes ~0.7 ms instead of ~100 ms), a short leader
    fallback (a deposed leader stops believing it leads within seconds), a 1 s reconnect, the
    election and compaction timings of ``timings``, and a fixed membership. The benchmarks build
    their raw pysyncobj anchor with it too, so both run the same Raft.
    """
    return SyncObjConf(
        appendEntriesUseBatch=False,
        raftMinTimeout=timings.raft_min_timeout,
        raftMaxTimeout=timings.raft_max_timeout,
        leaderFallbackTimeout=timings.leader_fallback_timeout,
        connectionRetryTime=timings.connection_retry_time,
        logCompactionMinEntries=timings.log_compaction_min_entries,
        logCompactionMinTime=timings.log_compaction_min_time,
        dynamicMembershipChange=False,
        **kwargs,
    )


class _Replica(SyncObj):  # type: ignore[misc]
    def __init__(self, node: RaftNode, self_address: str, peers: list[str], conf: SyncObjConf) -> None:
        self._node = node
        self.transport_counters = node.transport
        self.frame_cap = frame_cap_bytes(node.settings.max_body_bytes)
        super().__init__(self_address, peers, conf, transportClass=_Transport)
        LogWatch(self._SyncObj__raftLog, lambda: int(self.raftLastApplied), node.transport).install()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, payload: bytes) -> Result:
        result = self._node._apply(payload)
        self.defer_election()
        return result

    def defer_election(self) -> None:
        """Count work done on the leader's behalf as contact with the leader.

        pysyncobj checks a follower's election deadline at the top of its tick, before it reads
        the messages waiting for it: after its thread was busy applying a burst of entries or
        loading a snapshot the leader sent, a follower would start an election against a live
        leader (there is no pre-vote), and every node that lags behind a large state would depose
        the leader again. pysyncobj 0.3.17 (pinned) keeps the deadline in a private attribute.
        """
        if self._isLeader():
            return
        deadline = time.monotonic() + float(self.conf.raftMinTimeout)
        current: float = getattr(self, "_SyncObj__raftElectionDeadline", 0.0)
        if current < deadline:
            self._SyncObj__raftElectionDeadline = deadline


class RaftNode:
    """A member of the slimsched Raft cluster, owned by the process's event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_role_change: Callable[[bool], None] | None = None,
        on_applied: AppliedHook | None = None,
    ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._state = State()
        self._on_role_change = on_role_change
        self._on_applied = on_applied
        self._snapshotter = Snapshotter(self)
        self._replica: _Replica | None = None
        self._inbox: LoopInbox | None = None  # submit's answers, to the loop of the last submit
        self._outbox: list[tuple[bytes, asyncio.Future[tuple[Any, int]]]] = []  # to propose this turn
        self._members = (settings.raft_address, *settings.peers)
        self.batches = 0  # batch entries proposed by this node (tests and benchmarks read it)
        self.transport = TransportCounters()

    def set_hooks(
        self,
        *,
        on_role_change: Callable[[bool], None] | None = None,
        on_applied: AppliedHook | None = None,
    ) -> None:
        """Install the Raft-thread callbacks (before ``start``)."""
        self._on_role_change = on_role_change
        self._on_applied = on_applied

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)
        dump = os.path.join(s.data_dir, "raft.dump")
        for stale in (dump + ".tmp", dump + ".writing"):
            if os.path.exists(stale):
                os.remove(stale)
        t = s.timings
        conf = tuned_conf(
            t,
            journalFile=os.path.join(s.data_dir, "raft.journal"),
            fullDumpFile=dump,
            serializer=self._snapshotter.serialize,
            deserializer=self._snapshotter.deserialize,
            serializeChecker=self._snapshotter.check,
            password=s.raft_password,
            bindAddress=s.raft_bind,
            onStateChanged=self._state_changed,
        )
        self._replica = _Replica(self, s.raft_address, list(s.peers), conf)

    def stop(self, snapshot_deadline: float = SNAPSHOT_STOP_SECONDS) -> None:
        """Stop Raft; a dump being written is abandoned and its file removed (past the deadline
        it stays as ``raft.dump.writing``, which the next start removes). The previous dump
        and the journal stay as pysyncobj left them."""
        replica, self._replica = self._replica, None
        if replica is not None:
            replica.destroy_synchronous()
        self._snapshotter.abandon(snapshot_deadline)

    # -- called in the Raft thread -----------------------------------------------------------

    def _apply(self, payload: bytes) -> Result:
        bulk = heap.collections_paused() if len(payload) >= BULK_ENTRY_BYTES else contextlib.nullcontext()
        with bulk, self._lock:
            applied = statemachine.apply_entry(self._state, payload, level=self.settings.test_command_level)
        self._snapshotter.applied += max(1, len(applied.commands))
        self._snapshotter.last_applied_at = time.monotonic()
        if self._on_applied is not None:
            try:
                self._on_applied(applied.commands)
            except Exception:
                log.exception("on_applied hook failed")
        return applied.result

    @property
    def replica(self) -> _Replica | None:
        return self._replica

    def copy_state(self) -> State:
        with self._lock:
            return self._state.copy()

    def replace_state(self, state: State) -> None:
        with self._lock:
            self._state = state

    def _state_changed(self, old: int, new: int) -> None:
        if self._on_role_change is not None and (old == _LEADER) != (new == _LEADER):
            self._on_role_change(new == _LEADER)

    # -- any thread ----------------------------------------------------------------------------

    def read(self, fn: Callable[[State], T]) -> T:
        """Run ``fn`` on the current state, consistent with respect to applied commands."""
        with self._lock:
            return fn(self._state)

    def applied_by_all(self, kind: str) -> bool:
        """Every member of the cluster announced (``hello``) a release that applies ``kind``."""
        return self.read(lambda st: statemachine.applied_by_all(st, self._members, kind))

    def status(self) -> RaftStatus:
        r = self._require()
        leader = r._getLeader()
        return RaftStatus(
            node=self.settings.raft_address,
            leader=leader.address if leader is not None else None,
            is_leader=bool(r._isLeader()),
            term=int(r.raftCurrentTerm),
            commit_index=int(r.raftCommitIndex),
            applied_index=int(r.raftLastApplied),
            peers=tuple(self.settings.peers),
            connected_peers=tuple(n.address for n in r.otherNodes if r.isNodeConnected(n)),
        )

    def match_indexes(self) -> dict[str, int]:
        """On the leader, the last log index known replicated on each peer; empty elsewhere.

        Read from pysyncobj's public ``getStatus`` (for /status and the web view, never a hot
        path); a race with the Raft thread changing its maps answers empty rather than raise.
        """
        r = self._require()
        if not r._isLeader():
            return {}
        try:
            status = r.getStatus()
        except RuntimeError:  # "dictionary changed size during iteration"
            return {}
        prefix = "match_idx_server_"
        return {k[len(prefix) :]: int(v) for k, v in status.items() if k.startswith(prefix)}

    def step_down(self) -> None:
        """If leading, hand leadership to another node now rather than let it time out."""
        replica = self._replica
        if replica is not None and replica._isLeader() and self.settings.peers:
            replica.transferLeadership()

    def force_snapshot(self) -> None:
        self._require().forceLogCompaction()

    def _require(self) -> _Replica:
        if self._replica is None:
            raise RuntimeError("the Raft node is not started")
        return self._replica

    # -- the asyncio side ----------------------------------------------------------------------

    async def submit(self, payload: bytes, *, within: float | None = None) -> Result:
        """Propose ``payload``; return its result once committed and applied here, else 503."""
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = LoopInbox(loop)
        self._require()
        deadline = loop.time() + (self.settings.commit_timeout_seconds if within is None else within)
        backoff = 0.02
        while True:
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()
            self._outbox.append((payload, fut))
            if len(self._outbox) == 1:
                loop.call_soon(self._propose_outbox, inbox)
            # A timer that fails the future, not asyncio.timeout or wait_for: the future is this
            # call's own, so a cancelled caller cancels it (and a pending proposal of it), and
            # the context manager's bookkeeping was ~5 % of the leader's time under write load.
            timer = loop.call_at(max(deadline, loop.time() + 0.001), _expire, fut)
            try:
                result, err = await fut
            except TimeoutError:
                raise Unavailable(
                    "commit_timeout", "the cluster did not commit the request in time; retry later"
                ) from None
            finally:
                timer.cancel()
            if err == FAIL_REASON.SUCCESS:
                assert isinstance(result, Result)
                return result
            if err not in _RETRYABLE or loop.time() + backoff >= deadline:
                raise Unavailable("no_leader", "no Raft leader is available right now; retry later")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.25)

    async def announce_level(self, recheck_seconds: float = 5.0) -> None:
        """Keep this node's command level recorded in the replicated state (``hello``).

        Checked again every ``recheck_seconds``: a snapshot sent by a leader of an earlier
        release carries no levels, and the record must come back once that leader is upgraded.
        Runs until cancelled.
        """
        me, level = self.settings.raft_address, self.settings.test_command_level
        if level < statemachine.LEVEL_OF_TYPE["hello"]:
            return  # a release before ``hello`` announces nothing
        payload = statemachine.encode_command("hello", node=me, level=level)
        while True:
            if self.read(lambda st: st.levels.get(me)) != level:
                try:
                    result = await self.submit(payload)
                except Unavailable:
                    pass
                else:
                    if not result.ok:
                        log.warning("announcing command level %d was refused: %s", level, result.message)
            await asyncio.sleep(recheck_seconds)

    def _propose_outbox(self, inbox: LoopInbox) -> None:
        """Propose what this turn of the loop submitted, in order: batched when every member can."""
        pending, self._outbox = self._outbox, []
        pending = [(p, f) for p, f in pending if not f.done()]  # a cancelled submit proposes nothing
        replica = self._replica
        if replica is None:
            for _, fut in pending:
                _settle(fut, None, FAIL_REASON.MISSING_LEADER)
            return
        batching = len(pending) > 1 and self.applied_by_all("batch")
        for group in batch_groups(pending) if batching else [[item] for item in pending]:
            futs = [f for _, f in group]
            if len(group) == 1:
                replica.apply(group[0][0], callback=lambda r, e, f=futs[0]: inbox.put(_settle, f, r, e))
            else:
                self.batches += 1
                payload = statemachine.encode_batch([p for p, _ in group])
                replica.apply(
                    payload, callback=lambda r, e, fs=futs, p=payload: inbox.put(_settle_batch, fs, p, r, e)
                )


def _settle_batch(
    futs: Sequence[asyncio.Future[tuple[Any, int]]], payload: bytes, result: Any, err: int
) -> None:
    ok = err == FAIL_REASON.SUCCESS and isinstance(result, Result)
    results = statemachine.batch_results(payload, result) if ok else None
    if results is None or len(results) != len(futs):
        # Not committed (each submit retries on its own), or refused as a whole (never expected:
        # then every command answers that refusal).
        for fut in futs:
            _settle(fut, result, err)
        return
    for fut, r in zip(futs, results, strict=True):
        _settle(fut, r, err)


def _expire(fut: asyncio.Future[tuple[Any, int]]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _settle(fut: asyncio.Future[tuple[Any, int]], result: Any, err: int) -> None:
    if not fut.done():
        fut.set_result((result, err))
