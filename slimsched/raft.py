"""The Raft node: the only module that imports pysyncobj, and its bridge to asyncio.

One replicated method, ``apply(payload: bytes)``, runs ``statemachine.apply_entry`` in pysyncobj's
thread under a lock that readers share. Snapshots dump only the ``State``, as versioned orjson,
through ``SyncObjConf(serializer=..., deserializer=..., serializeChecker=...)``: the Raft thread
takes a shallow copy of the state and a background thread encodes and writes it, so the Raft
thread never stalls on a large state.

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
import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE as SERIALIZER_STATE  # re-exported for tests

from slimsched import heap, statemachine
from slimsched.errors import Unavailable
from slimsched.files import fsync_dir
from slimsched.loopinbox import LoopInbox
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import Result, State

log = logging.getLogger(__name__)

T = TypeVar("T")
# Called in the Raft thread after each entry, with the commands it held and their results.
AppliedHook = Callable[[tuple[tuple[object, Result], ...]], None]

DUMP_VERSION = 1
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
SNAPSHOT_PAUSE_SECONDS = 0.0005
SNAPSHOT_STOP_SECONDS = 5.0  # abandoning a dump takes one piece (~1 ms)
# Under pysyncobj's appendEntriesBatchSizeBytes (64 KiB): a batch travels as one message.
MAX_BATCH_BYTES = 60_000


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


def compaction_due(timings: RaftTimings, now: float, last_applied_at: float, applied: int) -> bool:
    """Compact now: ``applied`` commands since the last dump reach the limit, or the log is quiet.

    Counted in commands, not in entries: pysyncobj counts entries, and a ``batch`` entry holds
    up to MAX_BATCH_COMMANDS of them, so its own threshold would let the log hold all of them.
    """
    if applied >= timings.log_compaction_min_entries:
        return True
    quiet = now - last_applied_at >= timings.idle_compaction_seconds
    return quiet and applied >= timings.idle_compaction_entries


class _Snapshotter:
    """Writes dumps off the Raft thread; pysyncobj polls ``check`` for the outcome."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._thread: threading.Thread | None = None
        self._outcome: int | None = None
        self._abandon = threading.Event()
        self._final = ""  # the dump's path, set by serialize
        self.applied = 0  # commands applied since the last dump began (Raft thread only)
        self.last_applied_at = 0.0

    def serialize(self, tmp_file: str, raft_data: tuple[Any, ...]) -> None:
        # Runs in the Raft thread, right after the entry at raft_data[0] was applied: copy now.
        self.applied = 0
        state = self._node._copy_state()
        self._final = tmp_file.removesuffix(".tmp")
        self._outcome = None
        self._thread = threading.Thread(
            target=self._write,
            args=(self._final + ".writing", state, raft_data),
            name="raft-snapshot",
            daemon=True,
        )
        self._thread.start()
        # pysyncobj now renames tmp_file over the dump; there is no tmp_file, so that rename fails
        # harmlessly. The dump is replaced by ``check``, once written.

    def _write(self, writing: str, state: State, raft_data: tuple[Any, ...]) -> None:
        """Write and fsync the dump as ``writing``: the Raft thread publishes it (``check``)."""
        try:
            head = orjson.dumps(
                {"v": DUMP_VERSION, "raft": [_entry_to_json(raft_data[0]), _entry_to_json(raft_data[1])]}
            )
            with open(writing, "wb") as f:
                f.write(head[:-1] + b',"state":')
                for piece in statemachine.encode_snapshot_chunks(state):
                    if self._abandon.is_set():
                        self._outcome = SERIALIZER_STATE.FAILED  # ``abandon`` removes the file
                        return
                    f.write(piece)
                    # Encoding holds the GIL; without a pause it keeps it for whole switch
                    # intervals (5 ms) against the event loop: the write path's p99 tail.
                    time.sleep(SNAPSHOT_PAUSE_SECONDS)
                f.write(b"}")
                f.flush()
                os.fsync(f.fileno())
            self._outcome = SERIALIZER_STATE.SUCCESS
        except Exception:
            log.exception("writing the Raft snapshot failed")
            self._outcome = SERIALIZER_STATE.FAILED

    def abandon(self, timeout: float) -> None:
        """Stop a dump being written and remove its file (at most ``timeout`` to do it).

        Called once the Raft thread has stopped: a dump it had not published is dropped.
        """
        thread = self._thread
        if thread is not None:
            self._abandon.set()
            thread.join(timeout)
            if not thread.is_alive():  # stopped early or finished unpublished: either way, drop it
                with contextlib.suppress(OSError):
                    os.remove(self._final + ".writing")

    def check(self) -> int:
        """pysyncobj's poll (Raft thread): SUCCESS only once the written dump replaced the old one.

        The dump is published here, not by the writer: pysyncobj compacts its journal to the
        dump's entries in this same tick on SUCCESS. A dump published earlier, by another thread,
        could be on disk when the node stops before that tick; at the next start pysyncobj finds
        that the journal does not begin at the dump's entries, clears the journal and loses every
        entry after the dump (seen: two of three nodes restarted that way elected a leader
        without the last acknowledged writes).
        """
        if self._thread is None:
            replica = self._node._replica
            timings = self._node.settings.timings
            if replica is not None and compaction_due(
                timings, time.monotonic(), self.last_applied_at, self.applied
            ):
                replica.forceLogCompaction()  # pysyncobj acts on it in this same tick
            return int(SERIALIZER_STATE.NOT_SERIALIZING)
        if self._thread.is_alive() or self._outcome is None:
            return int(SERIALIZER_STATE.SERIALIZING)
        outcome, self._thread, self._outcome = self._outcome, None, None
        if outcome == SERIALIZER_STATE.SUCCESS:
            try:
                os.replace(self._final + ".writing", self._final)
                fsync_dir(os.path.dirname(self._final) or ".")
            except OSError:
                log.exception("publishing the Raft snapshot failed")
                return int(SERIALIZER_STATE.FAILED)
        return int(outcome)

    def deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        with open(file_name, "rb") as f, heap.collections_paused():
            doc = orjson.loads(f.read())
            if doc.get("v") != DUMP_VERSION:
                raise ValueError(f"unsupported Raft dump version {doc.get('v')!r}")
            state = statemachine.snapshot_from_dict(doc["state"])
        self._node._replace_state(state)
        if self._node._replica is not None:
            self._node._replica.defer_election()
        first, second = doc["raft"]
        return _entry_from_json(first), _entry_from_json(second), []


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    return [base64.b64encode(entry[0]).decode("ascii"), entry[1], entry[2]]


def _entry_from_json(j: list[Any]) -> tuple[bytes, int, int]:
    return base64.b64decode(j[0]), int(j[1]), int(j[2])


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
        super().__init__(self_address, peers, conf)

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
        self._snapshotter = _Snapshotter(self)
        self._replica: _Replica | None = None
        self._inbox: LoopInbox | None = None  # submit's answers, to the loop of the last submit
        self._outbox: list[tuple[bytes, asyncio.Future[tuple[Any, int]]]] = []  # to propose this turn
        self._members = (settings.raft_address, *settings.peers)
        self.batches = 0  # batch entries proposed by this node (tests and benchmarks read it)

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

    def _copy_state(self) -> State:
        with self._lock:
            return self._state.copy()

    def _replace_state(self, state: State) -> None:
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
        for group in _groups(pending) if batching else [[item] for item in pending]:
            futs = [f for _, f in group]
            if len(group) == 1:
                replica.apply(group[0][0], callback=lambda r, e, f=futs[0]: inbox.put(_settle, f, r, e))
            else:
                self.batches += 1
                payload = statemachine.encode_batch([p for p, _ in group])
                replica.apply(
                    payload, callback=lambda r, e, fs=futs, p=payload: inbox.put(_settle_batch, fs, p, r, e)
                )


def _groups(
    pending: list[tuple[bytes, asyncio.Future[tuple[Any, int]]]],
) -> list[list[tuple[bytes, asyncio.Future[tuple[Any, int]]]]]:
    """Consecutive runs of commands, each under MAX_BATCH_BYTES and MAX_BATCH_COMMANDS."""
    groups: list[list[tuple[bytes, asyncio.Future[tuple[Any, int]]]]] = []
    size = 0
    for item in pending:
        full = bool(groups) and len(groups[-1]) >= statemachine.MAX_BATCH_COMMANDS
        if not groups or full or size + len(item[0]) > MAX_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item[0]) + 1
    return groups


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
