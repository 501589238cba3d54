"""``slimsched chaos``: a failover harness that injects faults under load, then checks invariants.

Why: slimsched's promises (a tick fires exactly once, a run becomes exactly one Job, an
acknowledged write survives) are claims about failures, and unit tests only reach the failures
one thinks of. This harness runs N real ``slimsched serve`` processes on 127.0.0.1 against the
Kubernetes API emulator, drives a steady load through the REST API from concurrent clients, and
breaks the cluster on a timetable:

- ``kill-leader`` / ``kill-follower``: SIGKILL, restart with the data directory kept;
- ``pause-leader``: SIGSTOP for longer than the election timeout, then SIGCONT (a deposed
  leader that wakes up believing it leads);
- ``restart-keep``: SIGTERM and restart, data kept; ``restart-wipe``: SIGKILL, delete the data
  directory, restart (one node at a time, never a majority; see "One fault at a time");
- ``partition-leader`` / ``partition-follower``: cut every Raft link of one node;
  ``partition-link``: cut the one link between the leader and a follower (a partial partition).

It then compares what clients were told with what every node and the emulator hold (see
``check``), prints a table (faults by kind, operations, failover times, violations) and exits
non-zero on any violation.

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

One fault at a time: before each fault the harness waits until every node runs, all agree on
one leader and each has applied what that leader had committed. A majority of intact nodes
thus always exists, which is what Raft needs to keep its promises; wiping a node's data while
another lags is not a crash fault and may lose committed entries, so it is never done.

Proving the checker can fail: nodes started with SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1 (read by the
node's entry point, inherited from the harness's environment) accept a FireTick for a tick
already handled; a run with ``--kinds pause-leader`` then reports tick-handled-twice. Nodes
started with SLIMSCHED_TEST_BREAK=<rule> run without one leader rule (slimsched.crashpoints):
``missed-ticks`` makes tick-lost, ``job-name-per-term`` run-dispatched-twice (Jobs are also
counted by their run-id label, whatever their names), ``declared-owns-all`` acked-write-lost.

Proving the run exercised what it exists for: the ``crash-point`` and ``stop-point`` faults (not
among the default kinds: each restarts the followers armed with SLIMSCHED_TEST_CRASH_AT or
SLIMSCHED_TEST_STOP_AT, then kills the leader) make the next leader die, or freeze, at a named
step of the protocol. The harness reads the nodes' counters (reconciles, 409s taken as created)
before each restart, the emulator's 409s and the ledgers' catch-up firings, prints them as
"Paths exercised", and reports path-not-exercised when a point fault happened and its path was
not taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import random
import resource
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiohttp
import orjson

from slimsched import chaosbackup, codec
from slimsched.backup import Backup
from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import LABEL_RUN_ID, kube_job_name
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.statemachine import LEDGER_PER_SCHEDULE

EVERY_SECOND = "* * * * * *"
NEVER_IN_A_RUN = "0 0 1 1 *"  # churned schedules: created and deleted, never due during a run
TICK_PREFIX = "tick-"
TRIGGER_PREFIX = "trig-"
CHURN_JOBS = ("churn-0", "churn-1", "churn-2", "churn-3")
ACTION_PREFIX = "action-"  # a schedule of such a job is triggered now and backfilled under faults
ACTION_ROUNDS_PER_JOB = 25  # 4 runs a round: 100 runs a job, below the 200 finished runs kept
ACTION_CRON = "0 * * * *"
BACKFILL_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z: each round backfills the next hours after it
BACKFILL_HOURS = 3
DELETE_ATTEMPTS = 60  # of one schedule delete, 0.3 s apart, while its answer is unknown or 5xx
ACTION_ATTEMPTS = 40  # retries of one action (same RequestId) while its answer is unknown
ACTION_PERIOD = 3.0
TRIGGERS_PER_JOB = 100  # below the state machine's 200 finished runs per job: nothing is pruned
TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled"})

# Every job name is served by the Default entry: public, an image the emulator runs quickly, and
# a parallelism that never makes a run wait on another.
JOBS_CONFIGURATION = orjson.dumps(
    {
        "Configurations": {
            "Default": {"Image": "chaos/worker:1", "Visibility": "Public", "NumberParallelJob": 100}
        }
    }
).decode()

# Bounds of the proxy and of every wait.
PROXY_MAX_CONNECTIONS = 64
PROXY_FIRST_FRAME_MAX = 4096
PROXY_PLAIN_MAX = 4096
PROXY_CHUNK = 64 * 1024
PROXY_FIRST_FRAME_TIMEOUT = 5.0
PROXY_CONNECT_TIMEOUT = 2.0
CLIENT_TIMEOUT = 6.0  # more than the nodes' 5 s commit deadline
STATUS_TIMEOUT = 1.0
POLL_SECONDS = 0.05
LEADER_WAIT_SECONDS = 30.0
MAX_EXAMPLES = 5


# --- faults and the timetable ----------------------------------------------------------------


class FaultKind(StrEnum):
    KILL_LEADER = "kill-leader"
    KILL_FOLLOWER = "kill-follower"
    PAUSE_LEADER = "pause-leader"
    RESTART_KEEP = "restart-keep"
    RESTART_WIPE = "restart-wipe"
    PARTITION_LEADER = "partition-leader"
    PARTITION_FOLLOWER = "partition-follower"
    PARTITION_LINK = "partition-link"
    # The leader is killed and the node elected after it dies at a named point of the protocol
    # (slimsched.crashpoints): a run left in Dispatching, a Job whose status was not committed.
    CRASH_POINT = "crash-point"
    # As crash-point, but the node elected stops (SIGSTOP) at the point and is continued once
    # another leader took over: a deposed leader that wakes up mid-dispatch, believing it leads.
    STOP_POINT = "stop-point"
    # The leader's HTTP port gets more incomplete requests than its connection cap (issue 16):
    # it must keep leading, its Raft port must keep accepting, the load must go on elsewhere.
    SLOW_CLIENT_FLOOD = "slow-client-flood"
    # Every node SIGKILLed at once, then started again in order (data kept); or all but one, the
    # last started a few seconds later. (slimsched.chaosbackup covers the backup kinds below.)
    RESTART_ALL = "restart-all"
    RESTART_ALL_LATE = "restart-all-late"
    # One bit flipped in a node's backup file while it runs: set aside, never rotated to .prev.
    DAMAGE_BACKUP = "damage-backup"
    # Load paused, every node stopped, the leader's backup volume and every node's Raft data
    # wiped, every node started: the cluster must restore the best backup left on another node.
    COLD_START_WIPED_LEADER_BACKUP = "cold-start-wiped-leader-backup"


# The point faults restart every node once or twice each (10-40 s under load): asked for by name.
POINT_KINDS = frozenset({FaultKind.CRASH_POINT, FaultKind.STOP_POINT})
# The backup kinds need backup volumes (and a cold start wipes the runs): asked for by name too.
BACKUP_KINDS = frozenset(
    {
        FaultKind.RESTART_ALL,
        FaultKind.RESTART_ALL_LATE,
        FaultKind.DAMAGE_BACKUP,
        FaultKind.COLD_START_WIPED_LEADER_BACKUP,
    }
)
ALL_KINDS: tuple[FaultKind, ...] = tuple(k for k in FaultKind if k not in POINT_KINDS | BACKUP_KINDS)
BACKUP_INTERVAL_SECONDS = 1.0  # the nodes' backup interval when a backup kind is asked for
LATE_START_SECONDS = 3.0  # restart-all-late: how much later the last node starts
RESTORE_WAIT_SECONDS = 60.0  # a cold start: for the restore to land (the leader waits 15 s for reports)

# How long a fault lasts before it is reverted. A pause or a partition outlasts the election
# timeout (0.4-1.0 s) and the leader fallback timeout (2.5 s), so that a new leader is elected
# while the old one still believes it leads.
HOLD_SECONDS: Mapping[FaultKind, float] = {
    FaultKind.KILL_LEADER: 1.5,
    FaultKind.KILL_FOLLOWER: 1.5,
    FaultKind.PAUSE_LEADER: 3.0,
    FaultKind.RESTART_KEEP: 0.0,
    FaultKind.RESTART_WIPE: 0.5,
    FaultKind.PARTITION_LEADER: 3.0,
    FaultKind.PARTITION_FOLLOWER: 3.0,
    FaultKind.PARTITION_LINK: 3.0,
    FaultKind.CRASH_POINT: 1.5,
    FaultKind.STOP_POINT: 3.0,
    FaultKind.SLOW_CLIENT_FLOOD: 3.0,
    FaultKind.RESTART_ALL: 1.0,
    FaultKind.RESTART_ALL_LATE: 1.0,
    FaultKind.DAMAGE_BACKUP: 0.0,
    FaultKind.COLD_START_WIPED_LEADER_BACKUP: 1.0,
}
# Above a node's default cap of open HTTP connections (1000), so that the refusal path runs too.
FLOOD_CONNECTIONS = 1100
# Where the crash-point and stop-point faults stop the leader (picked in turn, at random).
POINT_FAULT_POINTS: tuple[str, ...] = ("fire-committed", "dispatch-committed", "job-created", "fire-applied")
STOP_FAULT_POINTS: tuple[str, ...] = ("fire-committed", "dispatch-committed")
POINT_WAIT_SECONDS = 30.0  # for the armed leader to reach its point (elections are slow under load)
# What the nodes count of the paths a chaos run exists to exercise (summed over every process).
EXERCISED_SAMPLES: Mapping[str, str] = {
    "reconciled at term start": 'slimsched_runs_reconciled_total{phase="term-start"}',
    "reconciled by a poll": 'slimsched_runs_reconciled_total{phase="poll"}',
    "409 taken as created": "slimsched_jobs_already_existed_total",
}


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after the load starts
    kind: FaultKind


def plan_timetable(
    duration: float, interval: float, kinds: Sequence[FaultKind], rng: random.Random
) -> list[PlannedFault]:
    """A fault every ``interval`` s; kinds in shuffled rounds, so each kind comes once per round."""
    out: list[PlannedFault] = []
    order: list[FaultKind] = []
    at = interval
    limit = 100_000
    while at + HOLD_SECONDS[FaultKind.PAUSE_LEADER] <= duration and len(out) < limit:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        out.append(PlannedFault(round(at, 3), order.pop()))
        at += interval
    return out


@dataclass
class FaultRecord:
    kind: FaultKind
    target: int
    target_was_leader: bool
    started_at: float  # wall clock (time.time), comparable with the nodes' timestamps
    offset: float  # seconds after the load started
    old_term: int
    reverted_after: float | None = None
    new_leader_after: float | None = None
    first_tick_after: float | None = None
    recovered_after: float | None = None
    point: str | None = None  # crash-point and stop-point faults: where the leader was stopped
    point_reached: bool = False

    @property
    def leader_fault(self) -> bool:
        return self.target_was_leader


# --- the partition proxy ---------------------------------------------------------------------


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


# --- what clients were told ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, reset after sending)
    body: Any
    sent: bool = True  # False: the connection was refused, the request never left

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unknown(self) -> bool:
        """The request may or may not have taken effect."""
        return self.sent and (self.status is None or self.status >= 500)


@dataclass
class OpCounts:
    attempted: int = 0
    acked: int = 0
    rejected: int = 0
    unknown: int = 0
    unreachable: int = 0


@dataclass(frozen=True)
class CreatedSchedule:
    job: str
    cron: str
    acked_at: float


@dataclass(frozen=True)
class DeletedSchedule:
    job: str
    acked_at: float
    how: str  # "204", or "404 after an unknown attempt"


@dataclass(frozen=True)
class AckedTrigger:
    job: str
    acked_at: float


@dataclass
class ClientLog:
    created: dict[str, CreatedSchedule] = field(default_factory=dict)
    deleted: dict[str, DeletedSchedule] = field(default_factory=dict)
    delete_unknown: set[str] = field(default_factory=set)
    triggers: dict[str, AckedTrigger] = field(default_factory=dict)
    job_names: set[str] = field(default_factory=set)
    ledger_polls: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    lost_at_delete: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ops: dict[str, OpCounts] = field(default_factory=dict)

    def count(self, op: str, answer: Answer) -> None:
        c = self.ops.setdefault(op, OpCounts())
        c.attempted += 1
        if not answer.sent:
            c.unreachable += 1
        elif answer.acked:
            c.acked += 1
        elif answer.unknown:
            c.unknown += 1
        else:
            c.rejected += 1


# --- what the cluster holds at the end, and the invariant checker -----------------------------


@dataclass
class NodeSnapshot:
    index: int
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)  # by schedule id
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by run id (with "Job")
    ledgers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by schedule id
    state_hash: str | None = None


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


@dataclass
class TickStats:
    fired: int = 0
    missed: int = 0
    skipped: int = 0
    catch_up: int = 0  # ticks fired in one FireTick with older ticks recorded missed (an outage)


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


def _tick_of(run_id: str) -> int | None:
    _, _, tail = run_id.rpartition("-")
    return int(tail) if tail.isdigit() else None


def _ledger_gap_explained(
    gap_end: int, records: list[dict[str, Any]], polls: list[list[dict[str, Any]]]
) -> bool:
    """A gap before tick ``gap_end`` the design allows: the ledger's own bound, not a lost tick.

    Either a poll returned a full ledger starting at ``gap_end`` (older records were dropped
    before we read them), or ``gap_end`` belongs to a catch-up batch that listed only the newest
    MAX_MISSED_RECORDED missed ticks of a long outage.
    """
    for poll in polls:
        if len(poll) >= LEDGER_PER_SCHEDULE and min(int(r["Tick"]) for r in poll) == gap_end:
            return True
    at = [r["RecordedAt"] for r in records if int(r["Tick"]) == gap_end]
    batch = [r for r in records if at and r["RecordedAt"] == at[0]]
    return len(batch) >= MAX_MISSED_RECORDED + 1


def check(
    log: ClientLog,
    snapshots: Sequence[NodeSnapshot],
    creations: Sequence[tuple[str, str]],
    notes: Sequence[Violation] = (),
    jobs_by_run: Mapping[str, Sequence[str]] | None = None,
    cold_starts: Sequence[tuple[float, float]] = (),
    old_jobs: frozenset[str] = frozenset(),
) -> tuple[list[Violation], TickStats]:
    """Compare what clients were told with what every node and the emulator hold.

    - every acknowledged (2xx) schedule create and trigger is on every node (by id), unless the
      schedule was deleted since; an acknowledged delete did not come back;
    - every acknowledged trigger produced exactly one Job; no Job name was created twice; every
      Job belongs to a run of the replicated state;
    - cron ticks (from the ledgers read during the run and at the end, and the runs): each tick
      is recorded once; every fired tick has its run ``{schedule}-{tick}`` and exactly one Job
      ``kube_job_name(job, run id)``; a missed or skipped tick has none; every second of an
      every-second schedule, from its creation on, is in the ledger (only the ledger's own
      bounds may hide one); no tick fired after the schedule's delete was acknowledged;
    - every node holds the same state (StateHash).

    A cold start (``cold_starts``: when the ledgers were last read before it, and when the
    cluster was stopped) restores schedules and their last fired ticks only, not runs or ledgers
    (backup/RUNBOOK.md): a trigger or tick from before it needs at most one Job instead of
    exactly one and no run, the Jobs created before it (``old_jobs``) need no run, and the ticks
    fired between that last read and the stop are in no ledger any more.

    ``creations`` is the emulator's log of Job create attempts as (name, outcome);
    ``jobs_by_run`` the names of the Jobs Kubernetes holds by their run-id label, so a run
    dispatched twice is seen whatever its Jobs are named. Pure: the harness gathers the inputs
    once the cluster is healed and quiescent.
    """
    out: list[Violation] = list(notes)
    stats = TickStats()
    era = max((stopped for _, stopped in cold_starts), default=float("-inf"))  # runs and ledgers begin again

    def wiped_with_a_ledger(first: int, last: int) -> bool:
        return any(read - 2 <= first and last <= stopped + 1 for read, stopped in cold_starts)

    created = Counter(name for name, outcome in creations if outcome == "created")

    # Acknowledged schedule writes, on every node.
    for sid in log.lost_at_delete:
        out.append(Violation("acked-write-lost", f"acknowledged schedule {sid} was not found when deleted"))
    for snap in snapshots:
        for sid, c in log.created.items():
            if sid in log.deleted or sid in log.delete_unknown or sid in log.lost_at_delete:
                continue
            if sid not in snap.schedules:
                out.append(
                    Violation(
                        "acked-write-lost",
                        f"schedule {sid} ({c.job}) acknowledged, missing on node {snap.index}",
                    )
                )
        for sid, d in log.deleted.items():
            if sid in snap.schedules:
                out.append(
                    Violation(
                        "delete-came-back",
                        f"schedule {sid} ({d.job}) deleted ({d.how}), back on node {snap.index}",
                    )
                )
        for rid, t in log.triggers.items():
            if rid not in snap.runs and t.acked_at >= era:
                out.append(
                    Violation(
                        "acked-write-lost", f"run {rid} ({t.job}) acknowledged, missing on node {snap.index}"
                    )
                )

    # Kubernetes Jobs: one per acknowledged trigger, one per run, no name twice, none unexplained.
    for rid, t in log.triggers.items():
        n = created[kube_job_name(t.job, rid)]
        if n != 1 and not (t.acked_at < era and n == 0):
            out.append(
                Violation("trigger-not-one-job", f"acknowledged trigger {rid} ({t.job}) produced {n} Jobs")
            )
    for name, n in created.items():
        if n > 1:
            out.append(Violation("job-created-twice", f"Job {name} was created {n} times"))
    for rid, names in sorted((jobs_by_run or {}).items()):
        if len(set(names)) > 1:
            out.append(
                Violation("run-dispatched-twice", f"run {rid} has {len(set(names))} Jobs: {sorted(names)}")
            )
    runs: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for rid, run in snap.runs.items():
            runs.setdefault(rid, run)
    run_names = {str(r["Name"]) for r in runs.values()}
    for name in sorted(set(created) - run_names - old_jobs):
        out.append(Violation("phantom-job", f"Job {name} matches no run of the replicated state"))

    # Cron ticks: the ledgers (polled during the run and at the end) against runs and Jobs.
    cron_runs: dict[str, dict[int, dict[str, Any]]] = {}
    for rid, run in runs.items():
        owner = run.get("ScheduleId")
        tick = _tick_of(rid)
        if owner and tick is not None:
            cron_runs.setdefault(str(owner), {})[tick] = run
    sids = set(cron_runs) | set(log.ledger_polls) | {s for snap in snapshots for s in snap.ledgers}
    for sid in sorted(sids):
        polls = [
            *log.ledger_polls.get(sid, []),
            *(snap.ledgers[sid] for snap in snapshots if sid in snap.ledgers),
        ]
        distinct: dict[tuple[Any, ...], dict[str, Any]] = {}
        for poll in polls:
            for r in poll:
                key = (r["Tick"], r["Outcome"], r["RecordedAt"], r.get("RunId"))
                distinct.setdefault(key, r)
        by_tick: dict[int, list[dict[str, Any]]] = {}
        for r in distinct.values():
            by_tick.setdefault(int(r["Tick"]), []).append(r)
        in_one_read = Counter[int]()  # the same tick twice in one ledger read
        for poll in polls:
            for tick, n in Counter(int(r["Tick"]) for r in poll).items():
                in_one_read[tick] = max(in_one_read[tick], n)
        fired_runs = cron_runs.get(sid, {})
        job = next((str(r["Job"]) for r in fired_runs.values()), None)
        if job is None and sid in log.created:
            job = log.created[sid].job
        stats.fired += len(fired_runs)
        by_recorded_at: dict[Any, set[str]] = {}
        for r in distinct.values():
            by_recorded_at.setdefault(r["RecordedAt"], set()).add(str(r["Outcome"]))
        stats.catch_up += sum(1 for outcomes in by_recorded_at.values() if {"fired", "missed"} <= outcomes)
        fired_ticks = set(fired_runs)
        for tick, records in sorted(by_tick.items()):
            outcomes = sorted(str(r["Outcome"]) for r in records)
            if len(records) > 1 or in_one_read[tick] > 1:
                out.append(Violation("tick-handled-twice", f"schedule {sid} tick {tick}: {outcomes}"))
            if "fired" in outcomes:
                fired_ticks.add(tick)
                if tick not in fired_runs and tick >= era:
                    out.append(
                        Violation("fired-tick-without-run", f"schedule {sid} tick {tick} fired, no run")
                    )
            else:
                stats.missed += outcomes.count("missed")
                stats.skipped += outcomes.count("skipped")
                if tick in fired_runs or (job is not None and created[kube_job_name(job, f"{sid}-{tick}")]):
                    out.append(
                        Violation("unfired-tick-ran", f"schedule {sid} tick {tick} is {outcomes}, yet ran")
                    )
        ticks = sorted(by_tick)
        every_second = log.created.get(sid, CreatedSchedule("", EVERY_SECOND, 0)).cron == EVERY_SECOND
        if every_second and ticks:
            merged = list(distinct.values())
            # The first tick after the schedule's creation (stamped before its acknowledgement)
            # is in the ledger, fired or missed: a new schedule loses no tick either.
            acked = log.created.get(sid)
            head = int(acked.acked_at) + 1 if acked is not None else None
            if (
                head is not None
                and ticks[0] > head
                and not _ledger_gap_explained(ticks[0], merged, polls)
                and not wiped_with_a_ledger(head, ticks[0] - 1)
            ):
                out.append(
                    Violation("tick-lost", f"schedule {sid}: ticks {head}..{ticks[0] - 1} are in no ledger")
                )
            for prev, nxt in itertools.pairwise(ticks):
                if (
                    nxt != prev + 1
                    and not _ledger_gap_explained(nxt, merged, polls)
                    and not wiped_with_a_ledger(prev + 1, nxt - 1)
                ):
                    out.append(
                        Violation(
                            "tick-lost", f"schedule {sid}: ticks {prev + 1}..{nxt - 1} are in no ledger"
                        )
                    )
            for tick in sorted(fired_runs):
                if ticks[0] <= tick <= ticks[-1] and tick not in by_tick:
                    out.append(
                        Violation("tick-unrecorded", f"schedule {sid} tick {tick} ran, not in the ledger")
                    )
        for tick in sorted(fired_ticks):
            n = created[kube_job_name(job, f"{sid}-{tick}")] if job is not None else 0
            if n != 1 and not (tick < era and n == 0):
                out.append(Violation("tick-not-one-job", f"schedule {sid} tick {tick} produced {n} Jobs"))
        deleted = log.deleted.get(sid)
        if deleted is not None:
            late = [t for t, r in fired_runs.items() if int(r["InQueueTimestamp"]) > deleted.acked_at * 1000]
            if late:
                out.append(
                    Violation("fired-after-delete", f"schedule {sid} fired ticks {late[:3]} after its delete")
                )

    # Every node converged on one state.
    hashes = {snap.state_hash for snap in snapshots}
    if len(hashes) != 1 or None in hashes:
        shown = {snap.index: (snap.state_hash or "none")[:12] for snap in snapshots}
        out.append(Violation("diverged", f"nodes did not converge on one state hash: {shown}"))
    out.extend(Violation("unexpected-answer", u) for u in log.unexpected)
    return out, stats


# Crash points after which the next leader must re-create a Job (job-created leaves the Job).
RECONCILING_POINTS = frozenset({"fire-committed", "dispatch-committed", "fire-applied"})


def unexercised(faults: Sequence[FaultRecord], exercised: Mapping[str, int]) -> list[Violation]:
    """The paths this run's faults must have taken, and did not: a run proves nothing about a
    rule whose path it never took. ``exercised`` holds the nodes' counters, the emulator's 409s
    ("create answered 409") and the ledgers' catch-up firings ("catch-up firings")."""
    out: list[Violation] = []
    for f in faults:
        if f.point is not None and not f.point_reached:
            out.append(Violation("path-not-exercised", f"{f.kind.value}: no node reached {f.point}"))
    points = [f for f in faults if f.point is not None and f.point_reached]
    reconciled = exercised.get("reconciled at term start", 0) + exercised.get("reconciled by a poll", 0)
    if any(f.point in RECONCILING_POINTS for f in points) and reconciled == 0:
        out.append(
            Violation("path-not-exercised", "a leader died before a create, yet nothing was reconciled")
        )
    # A stop-point is not required to produce a 409: a deposed leader cancels its work when it
    # learns it lost the term, before its create goes out; a 409 needs a create already on the
    # wire when the leader lost it, a window no point in the leader opens. 409s are counted.
    if points and exercised.get("catch-up firings", 0) == 0:
        out.append(Violation("path-not-exercised", "leaders died mid-protocol, yet no tick was fired late"))
    return out


def percentile_50_and_max(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.median(values), max(values)


def first_tick_after(fault_start: float, fire_times_ms: Sequence[int]) -> float | None:
    """Seconds from a fault to the first tick fired after it (a fire stamped at or after it)."""
    start_ms = fault_start * 1000
    later = [t for t in fire_times_ms if t >= start_ms]
    return (min(later) - start_ms) / 1000 if later else None


# --- the report ------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    nodes: int
    duration: float
    seed: int
    faults: list[FaultRecord]
    ops: dict[str, OpCounts]
    ticks: TickStats
    jobs_created: int
    job_conflicts: int
    violations: list[Violation]
    proxy: dict[str, int]
    wall_seconds: float
    base_dir: str | None = None
    exercised: dict[str, int] = field(default_factory=dict)

    @property
    def leader_faults(self) -> list[FaultRecord]:
        return [f for f in self.faults if f.leader_fault]

    def failover(self) -> dict[str, tuple[float | None, float | None]]:
        lf = self.leader_faults
        return {
            "new_leader": percentile_50_and_max(
                [f.new_leader_after for f in lf if f.new_leader_after is not None]
            ),
            "first_tick": percentile_50_and_max(
                [f.first_tick_after for f in lf if f.first_tick_after is not None]
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        fo = self.failover()
        return {
            "nodes": self.nodes,
            "duration": self.duration,
            "seed": self.seed,
            "wall_seconds": round(self.wall_seconds, 1),
            "faults": [{**dataclasses.asdict(f), "kind": f.kind.value} for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind.value for f in self.faults)),
            "ops": {k: dataclasses.asdict(v) for k, v in self.ops.items()},
            "ticks": dataclasses.asdict(self.ticks),
            "jobs_created": self.jobs_created,
            "job_conflicts": self.job_conflicts,
            "failover": {k: {"p50": v[0], "max": v[1]} for k, v in fo.items()},
            "violations": [dataclasses.asdict(v) for v in self.violations],
            "proxy": self.proxy,
            "exercised": self.exercised,
        }

    def table(self) -> str:
        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"

        lines = [
            f"slimsched chaos: {self.nodes} nodes, {self.duration:g} s of load, seed {self.seed}, "
            f"{self.wall_seconds:.0f} s in all",
            "",
            f"{'Faults injected':<28}{'count':>7}",
        ]
        by_kind = Counter(f.kind for f in self.faults)
        for kind in FaultKind:
            if by_kind[kind]:
                lines.append(f"  {kind.value:<26}{by_kind[kind]:>7}")
        lines.append(f"  {'total':<26}{len(self.faults):>7}   ({len(self.leader_faults)} on the leader)")
        lines += [
            "",
            f"{'Operations':<28}{'attempted':>10}{'acked':>8}{'rejected':>10}{'unknown':>9}{'unreachable':>13}",
        ]
        for op, c in sorted(self.ops.items()):
            lines.append(
                f"  {op:<26}{c.attempted:>10}{c.acked:>8}{c.rejected:>10}{c.unknown:>9}{c.unreachable:>13}"
            )
        lines += [
            "",
            f"Cron ticks: {self.ticks.fired} fired, {self.ticks.missed} missed, "
            f"{self.ticks.skipped} skipped; Jobs created: {self.jobs_created} "
            f"(create attempts answered 409: {self.job_conflicts})",
            f"Proxy: {', '.join(f'{k} {v}' for k, v in sorted(self.proxy.items())) or 'idle'}",
            f"Paths exercised: {', '.join(f'{k} {v}' for k, v in self.exercised.items()) or '-'}",
            "",
            f"{'Failover (leader faults)':<28}{'p50':>10}{'max':>10}",
        ]
        for label, (p50, worst) in zip(
            ("fault -> new leader", "fault -> first tick fired"), self.failover().values(), strict=True
        ):
            lines.append(f"  {label:<26}{secs(p50):>10}{secs(worst):>10}")
        lines += [
            "",
            "Timetable",
            f"  {'at':>7}  {'kind':<20}{'node':>5}  {'leader?':<8}{'new leader':>11}"
            f"{'first tick':>11}{'healthy':>10}",
        ]
        for f in self.faults:
            lines.append(
                f"  {f.offset:>6.1f}s  {f.kind.value:<20}{f.target:>5}  "
                f"{'yes' if f.leader_fault else 'no':<8}"
                f"{secs(f.new_leader_after):>11}{secs(f.first_tick_after):>11}{secs(f.recovered_after):>10}"
            )
        by_violation = Counter(v.kind for v in self.violations)
        lines += ["", f"Violations: {len(self.violations)}"]
        for vkind, n in sorted(by_violation.items()):
            lines.append(f"  {vkind:<26}{n:>7}")
            for v in [v for v in self.violations if v.kind == vkind][:MAX_EXAMPLES]:
                lines.append(f"      {v.detail}")
        if self.violations and self.base_dir:
            lines.append(f"Node logs kept in {self.base_dir}/logs")
        return "\n".join(lines)


# --- the harness -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    nodes: int = 3
    duration: float = 60.0  # seconds of load and faults
    interval: float = 5.0  # planned spacing of faults
    seed: int = 1
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    base_dir: str | None = None  # None: a temporary directory, removed unless violations are found
    every_second_schedules: int = 3
    trigger_clients: int = 2
    trigger_rate: float = 3.0  # per trigger client, per second
    churn_rate: float = 2.5  # schedule creates/deletes per second
    recovery_timeout: float = 30.0
    quiesce_timeout: float = 60.0
    node_env: Mapping[str, str] = field(default_factory=dict)
    verbose: bool = False
    crash_points: tuple[str, ...] = POINT_FAULT_POINTS


@dataclass(frozen=True)
class Health:
    leader: int
    term: int
    commit_index: int


class Harness:
    def __init__(self, config: ChaosConfig, base_dir: str, kube_url: str) -> None:
        if config.nodes < 3:
            raise ValueError("a chaos run needs at least 3 nodes (a fault must leave a majority)")
        self.config = config
        self.kube_url = kube_url
        self.rng = random.Random(config.seed)
        n = config.nodes
        self.backups_on = bool(BACKUP_KINDS & set(config.kinds))
        backup_env = {"SLIMSCHED_BACKUP_INTERVAL_SECONDS": str(BACKUP_INTERVAL_SECONDS)}
        self.watch = chaosbackup.BackupWatch()
        self.load_open = asyncio.Event()  # cleared while a cold start stops the cluster
        self.load_open.set()
        self.in_flight = 0
        self.no_request = asyncio.Event()  # set while no client request is in flight
        self.no_request.set()
        # Each cold start: (wall clock of the last ledger read before it, of the cluster's stop).
        self.cold_starts: list[tuple[float, float]] = []
        ports = free_ports(3 * n)
        http, front, back = ports[:n], ports[n : 2 * n], ports[2 * n :]
        self.cluster = LocalCluster.create(
            n,
            base_dir,
            http_ports=http,
            raft_ports=front,
            raft_bind_ports=back,
            jobs_configuration=JOBS_CONFIGURATION,
            backups=self.backups_on,  # the interval below is unused without them
            env={
                **config.node_env,
                **backup_env,
                "SLIMSCHED_KUBE_URL": kube_url,
                "SLIMSCHED_LOG_LEVEL": "WARNING",
                # The partition proxy reads the first (unencrypted) frame of each Raft connection:
                # an inherited password would make every connection unidentifiable.
                "SLIMSCHED_RAFT_PASSWORD": "",
                "SLIMSCHED_RAFT_NETWORK_PRIVATE": "true",  # 127.0.0.1 only
            },
        )
        self.front = [node.raft_address for node in self.cluster.nodes]
        self.proxy = PartitionProxy({node.raft_address: str(node.raft_bind) for node in self.cluster.nodes})
        self.log = ClientLog()
        self.faults: list[FaultRecord] = []
        self.notes: list[Violation] = []
        self.paused: set[int] = set()
        self.stop_load = asyncio.Event()
        self.t0 = 0.0
        self._seq = 0
        self._tick_jobs = 0
        self._measurements: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.counters: dict[tuple[int, int], dict[str, float]] = {}  # (node, pid) -> samples
        self.armed: set[int] = set()

    def say(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.t0:7.2f}s] {message}", file=sys.stderr, flush=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    # -- HTTP --------------------------------------------------------------------------------

    async def call(
        self, index: int, method: str, path: str, body: Any = None, timeout: float = CLIENT_TIMEOUT
    ) -> Answer:
        url = self.cluster.nodes[index].url + path
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    parsed = raw.decode(errors="replace")
                return Answer(resp.status, parsed)
        except aiohttp.ClientConnectorError:
            return Answer(None, None, sent=False)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return Answer(None, None)

    def pick_node(self) -> int:
        up = [n.index for n in self.cluster.nodes if n.running and n.index not in self.paused]
        return self.rng.choice(up) if up else 0

    async def op(self, name: str, method: str, path: str, body: Any = None) -> Answer:
        # A cold start under way: no new request, even once the load is told to stop (the cold
        # start opens the gate again when it ends, whatever happens).
        await self.load_open.wait()
        self.in_flight += 1
        self.no_request.clear()
        try:
            answer = await self.call(self.pick_node(), method, path, body)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.no_request.set()
        self.log.count(name, answer)
        return answer

    async def statuses(
        self, indices: Iterable[int], *, with_hash: bool = False
    ) -> dict[int, dict[str, Any] | None]:
        idx = list(indices)
        path = "/status?hash=1" if with_hash else "/status"
        answers = await asyncio.gather(*(self.call(i, "GET", path, timeout=STATUS_TIMEOUT) for i in idx))
        return {
            i: (a.body if a.status == 200 and isinstance(a.body, dict) else None)
            for i, a in zip(idx, answers, strict=True)
        }

    def index_of(self, address: str | None) -> int | None:
        return self.front.index(address) if address in self.front else None

    # -- health and failover ---------------------------------------------------------------------

    async def wait_healthy(self, timeout: float) -> Health | None:
        """Every node up and connected, one agreed leader, each node applied what it committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target: tuple[int, int] | None = None  # (leader, its commit index when first agreed)
        while loop.time() < deadline:
            everyone_up = (
                all(n.running for n in self.cluster.nodes) and not self.paused and not self.proxy.cut_links
            )
            sts = await self.statuses(range(len(self.cluster.nodes)))
            views = [s for s in sts.values() if s is not None]
            leaders = {s.get("Leader") for s in views}
            if everyone_up and len(views) == len(sts) and len(leaders) == 1:
                leader = self.index_of(leaders.pop())
                lst = sts.get(leader) if leader is not None else None
                if leader is not None and lst is not None and lst.get("IsLeader"):
                    if target is None or target[0] != leader:
                        target = (leader, int(lst["CommitIndex"]))
                    if all(int(s["AppliedIndex"]) >= target[1] for s in views):
                        return Health(leader, int(lst["Term"]), int(lst["CommitIndex"]))
            await asyncio.sleep(0.1)
        return None

    async def measure_new_leader(self, record: FaultRecord, started: float, exclude: int) -> None:
        """Time until a majority of the other nodes agree on a leader of a later term."""
        loop = asyncio.get_running_loop()
        others = [i for i in range(len(self.cluster.nodes)) if i != exclude]
        need = len(self.cluster.nodes) // 2 + 1
        deadline = started + LEADER_WAIT_SECONDS
        while loop.time() < deadline:
            sts = await self.statuses([i for i in others if i not in self.paused])
            votes = Counter(
                s["Leader"]
                for s in sts.values()
                if s is not None and s.get("Leader") and int(s["Term"]) > record.old_term
            )
            if votes and votes.most_common(1)[0][1] >= min(need, len(others)):
                record.new_leader_after = loop.time() - started
                self.say(f"new leader {votes.most_common(1)[0][0]} after {record.new_leader_after:.2f} s")
                return
            await asyncio.sleep(POLL_SECONDS)

    # -- faults ----------------------------------------------------------------------------------

    async def inject(self, kind: FaultKind, health: Health) -> FaultRecord:
        loop = asyncio.get_running_loop()
        n = len(self.cluster.nodes)
        leader = health.leader
        followers = [i for i in range(n) if i != leader]
        if kind in (
            FaultKind.KILL_LEADER,
            FaultKind.PAUSE_LEADER,
            FaultKind.PARTITION_LEADER,
            FaultKind.CRASH_POINT,
            FaultKind.STOP_POINT,
            FaultKind.SLOW_CLIENT_FLOOD,
        ):
            target = leader
        elif kind in (FaultKind.RESTART_KEEP, FaultKind.RESTART_WIPE, FaultKind.DAMAGE_BACKUP):
            target = self.rng.randrange(n)
        elif kind in (FaultKind.RESTART_ALL, FaultKind.COLD_START_WIPED_LEADER_BACKUP):
            target = leader  # every node; the leader's backup is the one a cold start loses
        elif kind is FaultKind.RESTART_ALL_LATE:
            target = self.rng.randrange(n)  # the node started late
        else:
            target = self.rng.choice(followers)
        partner = self.rng.choice(followers) if kind is FaultKind.PARTITION_LINK else None
        record = FaultRecord(
            kind=kind,
            target=partner if partner is not None else target,
            target_was_leader=target == leader
            and kind not in (FaultKind.PARTITION_LINK, FaultKind.SLOW_CLIENT_FLOOD)
            and kind not in BACKUP_KINDS,
            started_at=time.time(),
            offset=round(time.monotonic() - self.t0, 2),
            old_term=health.term,
        )
        started = loop.time()
        self.say(f"{kind.value} on node {record.target} (leader {leader}, term {health.term})")
        hold = HOLD_SECONDS[kind]
        measuring = None
        if record.leader_fault:
            measuring = asyncio.create_task(self.measure_new_leader(record, started, target))
            self._measurements.append(measuring)
        if kind in (FaultKind.KILL_LEADER, FaultKind.KILL_FOLLOWER):
            await asyncio.to_thread(self.cluster.kill, target)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.cluster.start, target)
        elif kind is FaultKind.PAUSE_LEADER:
            self.paused.add(target)
            self.cluster.signal(target, signal.SIGSTOP)
            try:
                await asyncio.sleep(hold)
            finally:
                self.cluster.signal(target, signal.SIGCONT)
                self.paused.discard(target)
        elif kind is FaultKind.RESTART_KEEP:
            await asyncio.to_thread(self.cluster.terminate, target, 20.0)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.cluster.start, target)
        elif kind is FaultKind.RESTART_WIPE:
            await asyncio.to_thread(self.cluster.kill, target)
            await asyncio.to_thread(self.cluster.wipe, target)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.cluster.start, target)
        elif kind in (FaultKind.PARTITION_LEADER, FaultKind.PARTITION_FOLLOWER):
            self.proxy.isolate(self.front[target])
            try:
                await asyncio.sleep(hold)
            finally:
                self.proxy.heal_all()
        elif kind is FaultKind.PARTITION_LINK:
            assert partner is not None
            self.proxy.cut(self.front[leader], self.front[partner])
            try:
                await asyncio.sleep(hold)
            finally:
                self.proxy.heal_all()
        elif kind in (FaultKind.CRASH_POINT, FaultKind.STOP_POINT):
            await self.point_fault(record, leader, followers)
        elif kind is FaultKind.SLOW_CLIENT_FLOOD:
            await self.slow_client_flood(target, hold)
        elif kind in (FaultKind.RESTART_ALL, FaultKind.RESTART_ALL_LATE):
            late = target if kind is FaultKind.RESTART_ALL_LATE else None
            for i in range(n):
                self.cluster.signal(i, signal.SIGKILL)
            for i in range(n):
                await asyncio.to_thread(self.cluster.kill, i)  # reaped
            await asyncio.sleep(hold)
            for i in range(n):
                if i != late:
                    await asyncio.to_thread(self.cluster.start, i)
            if late is not None:
                await asyncio.sleep(LATE_START_SECONDS)
                await asyncio.to_thread(self.cluster.start, late)
        elif kind is FaultKind.DAMAGE_BACKUP:
            backup_dir = self.backup_dir(target)
            before = await asyncio.to_thread(chaosbackup.read_volume, backup_dir)
            if await asyncio.to_thread(chaosbackup.damage, backup_dir, self.rng):
                self.watch.damaged_by_fault(target, before.damaged_files)
        elif kind is FaultKind.COLD_START_WIPED_LEADER_BACKUP:
            await self.cold_start(leader, hold)
        record.reverted_after = loop.time() - started
        self.faults.append(record)
        return record

    async def slow_client_flood(self, target: int, hold: float) -> None:
        """Hold FLOOD_CONNECTIONS requests whose headers never end on the node's HTTP port."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        count = min(FLOOD_CONNECTIONS, max(0, soft - 256))  # the harness keeps its own descriptors
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(count):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.cluster.nodes[target].http_port)
                except OSError:
                    break
                w.write(b"POST /job/fibonacci HTTP/1.1\r\nHost: chaos\r\nContent-Length: 10\r\n")
                writers.append(w)
            self.say(f"slow-client flood: {len(writers)} incomplete requests on node {target}")
            await asyncio.sleep(hold)
        finally:
            for w in writers:
                w.close()

    # -- backups -----------------------------------------------------------------------------

    def backup_dir(self, index: int) -> str:
        return str(self.cluster.nodes[index].backup_dir)

    async def cold_start(self, leader: int, hold: float) -> None:
        """Stop every node once the load is paused and applied everywhere (each writes a last
        backup), wipe the leader's backup volume and every node's Raft data, start them all,
        and check that the best backup left is restored before the load goes on."""
        n = len(self.cluster.nodes)
        self.load_open.clear()
        try:
            await _wait_event(self.no_request, CLIENT_TIMEOUT)
            health = await self.wait_healthy(self.config.recovery_timeout)
            read_at = time.time()
            await self.read_every_ledger(health.leader if health is not None else leader)
            await asyncio.to_thread(self.cluster.stop, 20.0)
            self.cold_starts.append((read_at, time.time()))
            await asyncio.to_thread(chaosbackup.wipe, self.backup_dir(leader))
            self.watch.wiped(leader)
            dirs = {i: self.backup_dir(i) for i in range(n)}
            expected = await asyncio.to_thread(chaosbackup.best_backup, dirs)
            for i in range(n):
                self.cluster.wipe(i)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.cluster.start)
            if expected is not None:
                await self.wait_restored(expected[0], expected[1])
        finally:
            self.load_open.set()

    async def read_every_ledger(self, index: int) -> None:
        """The ledgers of the every-second schedules, read once more before a cold start wipes them."""
        for sid, c in list(self.log.created.items()):
            if c.cron != EVERY_SECOND or sid in self.log.deleted:
                continue
            a = await self.call(index, "GET", f"/job-schedules/{c.job}/{sid}/ticks")
            if a.status == 200 and isinstance(a.body, list):
                self.log.ledger_polls.setdefault(sid, []).append(list(a.body))

    async def wait_restored(self, holder: int, backup: Backup) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTORE_WAIT_SECONDS
        want: dict[str, set[str]] = {}
        for d in backup.schedules:
            want.setdefault(str(d["Name"]), set()).add(str(d["Id"]))
        missing = sum(len(v) for v in want.values())
        while loop.time() < deadline:
            missing = 0
            # On every node: a follower checks a schedule exists before it forwards an action.
            for i in range(len(self.cluster.nodes)):
                for job, ids in want.items():
                    a = await self.call(i, "GET", f"/job-schedules/{job}", timeout=STATUS_TIMEOUT)
                    listed = a.body if a.status == 200 and isinstance(a.body, list) else []
                    missing += len(ids - {str(s["Id"]) for s in listed})
            if missing == 0:
                self.say(f"cold start: the best backup (node {holder}) was restored")
                return
            await asyncio.sleep(0.2)
        self.notes.append(
            Violation(
                "best-backup-not-restored",
                f"cold start: {missing} schedules of the best backup (node {holder}, index "
                f"{backup.info.raft_index}) not restored within {RESTORE_WAIT_SECONDS:g} s",
            )
        )

    async def observe_backups(self) -> None:
        """The invariant "no valid backup lost", a few backup passes after a fault."""
        if not self.backups_on:
            return
        await asyncio.sleep(3 * BACKUP_INTERVAL_SECONDS)
        views = {
            node.index: await asyncio.to_thread(chaosbackup.read_volume, self.backup_dir(node.index))
            for node in self.cluster.nodes
        }
        for kind, message in self.watch.observe(views):
            self.notes.append(Violation(kind, message))

    # -- crash points ------------------------------------------------------------------------

    def _start_armed(self, index: int, extra: Mapping[str, str]) -> None:
        base = self.cluster.env
        self.cluster.env = {**base, **extra}
        try:
            self.cluster.start(index)
        finally:
            self.cluster.env = base

    def _at_point(self, index: int, stopped: bool) -> bool:
        proc = self.cluster.nodes[index].proc
        if proc is None:
            return False
        if not stopped:
            return proc.poll() == -signal.SIGKILL
        try:
            with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] == "T"
        except OSError:
            return False

    async def point_fault(self, record: FaultRecord, leader: int, followers: list[int]) -> None:
        """Arm the followers with a crash (or stop) point, kill the leader: the follower elected
        reaches the point within a tick or a dispatch. Then every node runs unarmed again."""
        stop = record.kind is FaultKind.STOP_POINT
        record.point = self.rng.choice(STOP_FAULT_POINTS if stop else self.config.crash_points)
        var = "SLIMSCHED_TEST_STOP_AT" if stop else "SLIMSCHED_TEST_CRASH_AT"
        await self.scrape()
        for f in followers:  # one at a time: the leader keeps leading
            await asyncio.to_thread(self.cluster.terminate, f, 20.0)
            await asyncio.to_thread(self._start_armed, f, {var: record.point})
            self.armed.add(f)
            await self.wait_healthy(self.config.recovery_timeout)
        await self.scrape()
        await asyncio.to_thread(self.cluster.kill, leader)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POINT_WAIT_SECONDS
        hit: int | None = None
        while hit is None and loop.time() < deadline:
            hit = next((f for f in followers if self._at_point(f, stop)), None)
            await asyncio.sleep(POLL_SECONDS)
        record.point_reached = hit is not None
        self.say(f"{record.point}: node {hit} {'stopped' if stop else 'died'} there")
        if stop and hit is not None:
            self.paused.add(hit)
        for f in sorted(self.armed - {hit}):  # the other armed node, unarmed again (it may lead)
            await self.scrape()
            await asyncio.to_thread(self.cluster.terminate, f, 20.0)
            await asyncio.to_thread(self.cluster.start, f)
        await asyncio.to_thread(self.cluster.start, leader)
        await asyncio.sleep(HOLD_SECONDS[record.kind])
        if hit is not None:
            if stop:
                self.cluster.signal(hit, signal.SIGCONT)  # it goes on where it stopped: its create
                self.paused.discard(hit)
            else:
                await asyncio.to_thread(self.cluster.start, hit)
        self.armed.clear()  # a continued node's stop point is spent; the environment is unarmed

    async def scrape(self) -> None:
        """Read the exercised-path counters of every running node (kept per process)."""
        for node in self.cluster.nodes:
            if not node.running or node.index in self.paused or node.proc is None:
                continue
            a = await self.call(node.index, "GET", "/metrics", timeout=STATUS_TIMEOUT)
            if a.status != 200 or not isinstance(a.body, str):
                continue
            values: dict[str, float] = {}
            for line in a.body.splitlines():
                for label, sample in EXERCISED_SAMPLES.items():
                    if line.startswith(sample + " "):
                        values[label] = float(line.split()[1])
            self.counters[(node.index, node.proc.pid)] = values

    def exercised(self) -> dict[str, int]:
        return {
            label: int(sum(v.get(label, 0.0) for v in self.counters.values())) for label in EXERCISED_SAMPLES
        }

    async def jobs_by_run(self) -> dict[str, list[str]]:
        """Kubernetes' Jobs by their run-id label (however they are named)."""
        url = f"{self.kube_url}/apis/batch/v1/namespaces/default/jobs"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as resp:
            items = (orjson.loads(await resp.read())).get("items") or []
        out: dict[str, list[str]] = {}
        for job in items:
            meta = job.get("metadata") or {}
            rid = (meta.get("labels") or {}).get(LABEL_RUN_ID)
            if rid:
                out.setdefault(str(rid), []).append(str(meta.get("name")))
        return out

    async def heal_everything(self) -> None:
        for i in list(self.paused):
            self.cluster.signal(i, signal.SIGCONT)
        self.paused.clear()
        self.proxy.heal_all()
        for node in self.cluster.nodes:
            if not node.running:
                await asyncio.to_thread(self.cluster.start, node.index)

    async def run_faults(self, timetable: Sequence[PlannedFault]) -> None:
        """Inject the planned faults in order, one at a time, each on a healthy cluster.

        A fault starts at its planned time or, if the cluster is still recovering from the
        previous one, once it is healthy again (a fault that would outlast the run is skipped).
        """
        loop = asyncio.get_running_loop()
        begin = loop.time()
        end = begin + self.config.duration
        for planned in timetable:
            wait = begin + planned.at - loop.time()
            if wait > 0 and await _wait_event(self.stop_load, wait):
                return
            if loop.time() + HOLD_SECONDS[planned.kind] > end or self.stop_load.is_set():
                return
            health = await self.wait_healthy(self.config.recovery_timeout)
            if health is None:
                await self.no_recovery()
                continue
            if loop.time() + HOLD_SECONDS[planned.kind] > end:
                return
            record = await self.inject(planned.kind, health)
            if await self.wait_healthy(self.config.recovery_timeout) is None:
                await self.no_recovery()
            else:
                record.recovered_after = time.time() - record.started_at
                self.say(f"healthy again {record.recovered_after:.2f} s after the fault")
                await self.scrape()
                await self.observe_backups()

    async def no_recovery(self) -> None:
        last = self.faults[-1].kind.value if self.faults else "the start"
        self.notes.append(
            Violation("no-recovery", f"cluster not healthy {self.config.recovery_timeout:g} s after {last}")
        )
        await self.heal_everything()

    # -- load ------------------------------------------------------------------------------------

    async def delete_schedule(self, sid: str, job: str) -> None:
        # Retried for as long as a fault can last (a slow-client flood answers 503 for seconds):
        # a schedule left alive fires every second for the rest of the run, past what the state
        # keeps of a job's finished runs and of a schedule's ledger.
        unknown_before = False
        for _ in range(DELETE_ATTEMPTS):
            a = await self.op("delete schedule", "DELETE", f"/job-schedules/{job}/{sid}")
            if a.acked:
                self.log.deleted[sid] = DeletedSchedule(job, time.time(), "204")
                return
            if a.status == 404:
                if unknown_before:
                    self.log.deleted[sid] = DeletedSchedule(job, time.time(), "404 after an unknown attempt")
                else:
                    self.log.lost_at_delete.append(sid)
                return
            if a.status is not None and a.status < 500:
                self.log.unexpected.append(f"DELETE schedule {sid}: {a.status} {a.body}")
                return
            unknown_before = unknown_before or a.unknown
            await asyncio.sleep(0.3)
        self.log.delete_unknown.add(sid)

    async def create_schedule(self, job: str, cron: str) -> str | None:
        self.log.job_names.add(job)
        a = await self.op("create schedule", "POST", f"/job-schedules/{job}", {"Schedule": cron})
        if a.acked and isinstance(a.body, dict):
            sid = str(a.body["Id"])
            self.log.created[sid] = CreatedSchedule(job, cron, time.time())
            return sid
        if a.status is not None and a.status < 500 and not a.acked:
            self.log.unexpected.append(f"POST schedule {job}: {a.status} {a.body}")
        return None

    async def poll_ledger(self, sid: str, job: str) -> None:
        a = await self.op("read ledger", "GET", f"/job-schedules/{job}/{sid}/ticks")
        if a.status == 200 and isinstance(a.body, list):
            self.log.ledger_polls.setdefault(sid, []).append(list(a.body))

    async def tick_client(self) -> None:
        """Keeps a few every-second schedules alive, each on its own job, replaced every 15-40 s."""
        loop = asyncio.get_running_loop()
        live: list[tuple[str, str, float]] = []
        next_poll = loop.time() + 5.0
        while not self.stop_load.is_set():
            if len(live) < self.config.every_second_schedules:
                job = f"{TICK_PREFIX}{self._tick_jobs}"
                self._tick_jobs += 1
                sid = await self.create_schedule(job, EVERY_SECOND)
                if sid is not None:
                    live.append((sid, job, loop.time() + self.rng.uniform(15.0, 40.0)))
                    continue
                await _wait_event(self.stop_load, 0.5)
                continue
            now = loop.time()
            for entry in [e for e in live if e[2] <= now]:
                live.remove(entry)
                await self.poll_ledger(entry[0], entry[1])
                await self.delete_schedule(entry[0], entry[1])
            if now >= next_poll:
                for sid, job, _ in live:
                    await self.poll_ledger(sid, job)
                next_poll = now + 5.0
            await _wait_event(self.stop_load, 0.5)

    async def churn_client(self) -> None:
        """Creates and deletes schedules that never fire during a run, on a few jobs."""
        live: list[tuple[str, str]] = []
        while not self.stop_load.is_set():
            if live and (len(live) >= 8 or self.rng.random() < 0.5):
                sid, job = live.pop(self.rng.randrange(len(live)))
                await self.delete_schedule(sid, job)
            else:
                job = self.rng.choice(CHURN_JOBS)
                created = await self.create_schedule(job, NEVER_IN_A_RUN)
                if created is not None:
                    live.append((created, job))
            await _wait_event(self.stop_load, 1.0 / self.config.churn_rate)

    async def trigger_client(self) -> None:
        while not self.stop_load.is_set():
            seq = self._seq
            self._seq += 1
            job = f"{TRIGGER_PREFIX}{seq // TRIGGERS_PER_JOB}"
            self.log.job_names.add(job)
            a = await self.op("trigger", "POST", f"/job/{job}", {"Args": [str(seq)]})
            if a.acked and isinstance(a.body, dict):
                self.log.triggers[str(a.body["Id"])] = AckedTrigger(job, time.time())
            elif a.status is not None and a.status < 500:
                self.log.unexpected.append(f"POST /job/{job}: {a.status} {a.body}")
            await _wait_event(self.stop_load, 1.0 / self.config.trigger_rate)

    async def until_acked(self, name: str, path: str, body: dict[str, Any]) -> Answer | None:
        """POST until a node acknowledges it; the body's RequestId makes every retry safe."""
        for _ in range(ACTION_ATTEMPTS):
            a = await self.op(name, "POST", path, body)
            if a.acked and isinstance(a.body, dict):
                return a
            if a.status is not None and a.status < 500:
                self.log.unexpected.append(f"POST {path}: {a.status} {a.body}")
                return None
            await asyncio.sleep(0.5)
        return None

    async def action_client(self) -> None:
        """Schedule actions under faults: a manual trigger, then a backfill of the next hours of
        2020, every few seconds, each retried with its RequestId until acknowledged. Every run
        they report is checked like an acknowledged trigger: on every node, one Job. A job takes
        ACTION_ROUNDS_PER_JOB rounds, so none holds more finished runs than the state keeps."""
        base = ""
        for n in itertools.count():
            if self.stop_load.is_set():
                return
            if n % ACTION_ROUNDS_PER_JOB == 0:
                job = f"{ACTION_PREFIX}{n // ACTION_ROUNDS_PER_JOB}"
                sid = None
                while sid is None and not self.stop_load.is_set():
                    sid = await self.create_schedule(job, ACTION_CRON)
                    if sid is None:
                        await _wait_event(self.stop_load, 0.5)
                if sid is None:
                    return
                base = f"/job-schedules/{job}/{sid}"
            a = await self.until_acked("trigger schedule", f"{base}/trigger", {"RequestId": f"trigger-{n}"})
            if a is not None:
                self.log.triggers[str(a.body["Id"])] = AckedTrigger(job, time.time())
            start = BACKFILL_EPOCH + n * BACKFILL_HOURS * 3600
            window = {
                "Start": _iso(start),
                "End": _iso(start + (BACKFILL_HOURS - 1) * 3600),
                "RequestId": f"backfill-{n}",
            }
            a = await self.until_acked("backfill", f"{base}/backfill", window)
            if a is not None:
                fired = [str(t["RunId"]) for t in a.body["Fired"]]
                if len(fired) != BACKFILL_HOURS:
                    self.log.unexpected.append(f"backfill {window}: fired {len(fired)} of {BACKFILL_HOURS}")
                for run_id in fired:
                    self.log.triggers[run_id] = AckedTrigger(job, time.time())
            await _wait_event(self.stop_load, ACTION_PERIOD)

    # -- the end: heal, stop firing, wait for quiet, read everything -------------------------

    async def get_ok(self, index: int, path: str) -> Any:
        for _ in range(5):
            a = await self.call(index, "GET", path)
            if a.status == 200:
                return a.body
            if a.status == 404:
                return None
            await asyncio.sleep(0.2)
        raise RuntimeError(f"GET {path} on node {index} kept failing")

    async def pause_every_second_schedules(self, leader: int) -> None:
        for job in sorted(j for j in self.log.job_names if j.startswith(TICK_PREFIX)):
            for s in await self.get_ok(leader, f"/job-schedules/{job}") or []:
                if s.get("Paused"):
                    continue
                for _ in range(4):
                    a = await self.call(leader, "PATCH", f"/job-schedules/{job}/{s['Id']}", {"Paused": True})
                    self.log.count("pause schedule", a)
                    if a.acked or a.status == 404:
                        break
                    await asyncio.sleep(0.3)

    async def wait_quiescent(self, leader: int, timeout: float) -> bool:
        """Every run on the leader finished (so every Job that will exist exists)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        jobs = sorted(j for j in self.log.job_names if not j.startswith("churn-"))
        while loop.time() < deadline:
            active = 0
            for job in jobs:
                runs = await self.get_ok(leader, f"/job/{job}") or []
                active += sum(1 for r in runs if r["Status"] not in TERMINAL_STATUSES)
            if active == 0:
                return True
            self.say(f"waiting for {active} active runs")
            await asyncio.sleep(0.5)
        return False

    async def wait_converged(self, timeout: float) -> dict[int, str | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hashes: dict[int, str | None] = {}
        while loop.time() < deadline:
            sts = await self.statuses(range(len(self.cluster.nodes)), with_hash=True)
            hashes = {i: (s or {}).get("StateHash") for i, s in sts.items()}
            applied = {(s or {}).get("AppliedIndex") for s in sts.values()}
            if None not in hashes.values() and len(set(hashes.values())) == 1 and len(applied) == 1:
                return hashes
            await asyncio.sleep(0.3)
        return hashes

    async def snapshot(self, index: int, state_hash: str | None) -> NodeSnapshot:
        snap = NodeSnapshot(index, state_hash=state_hash)
        for job in sorted(self.log.job_names):
            for s in await self.get_ok(index, f"/job-schedules/{job}") or []:
                snap.schedules[str(s["Id"])] = s
                if job.startswith(TICK_PREFIX):
                    ledger = await self.get_ok(index, f"/job-schedules/{job}/{s['Id']}/ticks")
                    snap.ledgers[str(s["Id"])] = list(ledger or [])
            for r in await self.get_ok(index, f"/job/{job}") or []:
                # The API serves SlimFaas's .NET ticks; the checker compares milliseconds.
                queued_ms = codec.epoch_ms_of_dotnet_ticks(int(r["InQueueTimestamp"]))
                snap.runs[str(r["Id"])] = {**r, "InQueueTimestamp": queued_ms, "Job": job}
        return snap


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(timeout, 0.0))
    return event.is_set()


async def _run(config: ChaosConfig, base_dir: str, emulator: EmulatorThread, kube_url: str) -> ChaosReport:
    wall = time.monotonic()
    h = Harness(config, base_dir, kube_url)
    h.t0 = time.monotonic()
    timetable = plan_timetable(config.duration, config.interval, config.kinds, random.Random(config.seed))
    h._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
    try:
        await h.proxy.start()
        h.cluster.start()
        if await h.wait_healthy(LEADER_WAIT_SECONDS) is None:
            raise RuntimeError(f"the cluster did not start within {LEADER_WAIT_SECONDS:g} s")
        h.t0 = time.monotonic()
        h.say(f"cluster up; {len(timetable)} faults planned")
        clients = [
            asyncio.create_task(h.tick_client(), name="chaos-ticks"),
            asyncio.create_task(h.churn_client(), name="chaos-churn"),
            *(
                asyncio.create_task(h.trigger_client(), name=f"chaos-trigger-{i}")
                for i in range(config.trigger_clients)
            ),
            asyncio.create_task(h.action_client(), name="chaos-actions"),
        ]
        faults = asyncio.create_task(h.run_faults(timetable), name="chaos-faults")
        await _wait_event(h.stop_load, config.duration)
        h.stop_load.set()
        done, pending = await asyncio.wait([faults, *clients], timeout=config.recovery_timeout + 30)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed") from task.exception()
        h.say("load stopped; healing")
        await h.heal_everything()
        health = await h.wait_healthy(config.recovery_timeout)
        if health is None:
            h.notes.append(Violation("no-recovery", "cluster not healthy after healing everything"))
            health = Health(h.cluster.wait_leader(LEADER_WAIT_SECONDS), 0, 0)
        if h._measurements:
            await asyncio.wait(h._measurements, timeout=LEADER_WAIT_SECONDS)
        await h.pause_every_second_schedules(health.leader)
        if not await h.wait_quiescent(health.leader, config.quiesce_timeout):
            h.notes.append(
                Violation("not-quiescent", f"runs still active {config.quiesce_timeout:g} s after the load")
            )
        hashes = await h.wait_converged(config.recovery_timeout)
        await h.scrape()
        snapshots = [await h.snapshot(i, hashes.get(i)) for i in range(config.nodes)]
        await h.observe_backups()
        attempts = emulator.call(lambda e: e.creations())
        creations = [(c.name, c.outcome) for c in attempts]
        era = max((stopped for _, stopped in h.cold_starts), default=float("-inf"))
        old_jobs = frozenset(c.name for c in attempts if c.outcome == "created" and c.at_unix < era)
        violations, ticks = check(
            h.log, snapshots, creations, h.notes, await h.jobs_by_run(), h.cold_starts, old_jobs
        )
        exercised = {
            **h.exercised(),
            "create answered 409": sum(1 for _, o in creations if o == "conflict"),
            "catch-up firings": ticks.catch_up,
        }
        violations += unexercised(h.faults, exercised)
        fire_times = sorted(
            int(r["InQueueTimestamp"])
            for snap in snapshots[:1]
            for r in snap.runs.values()
            if r.get("ScheduleId")
        )
        for f in h.faults:
            if f.leader_fault:
                f.first_tick_after = first_tick_after(f.started_at, fire_times)
        return ChaosReport(
            nodes=config.nodes,
            duration=config.duration,
            seed=config.seed,
            faults=h.faults,
            ops=h.log.ops,
            ticks=ticks,
            jobs_created=sum(1 for _, o in creations if o == "created"),
            job_conflicts=sum(1 for _, o in creations if o == "conflict"),
            violations=violations,
            proxy=dict(h.proxy.stats),
            wall_seconds=time.monotonic() - wall,
            base_dir=base_dir,
            exercised=exercised,
        )
    finally:
        h.stop_load.set()
        for m in h._measurements:
            m.cancel()
        for i in list(h.paused):
            h.cluster.signal(i, signal.SIGCONT)
        await asyncio.to_thread(h.cluster.stop)
        await h.session.close()
        await h.proxy.stop()


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos run: cluster, emulator, load, faults, checks. Every process is stopped."""
    base = config.base_dir or tempfile.mkdtemp(prefix="slimsched-chaos-")
    emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.3, seed=config.seed)
    report: ChaosReport | None = None
    try:
        with emulator as kube_url:
            report = asyncio.run(_run(config, base, emulator, kube_url))
        return report
    finally:
        if config.base_dir is None and (report is None or not report.violations):
            shutil.rmtree(base, ignore_errors=True)


def _kinds(raw: str) -> tuple[FaultKind, ...]:
    try:
        return tuple(FaultKind(k.strip()) for k in raw.split(",") if k.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; kinds are {', '.join(k.value for k in FaultKind)}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slimsched chaos",
        description="Run a local cluster under load, inject faults on a timetable, check invariants. "
        "Exits 1 if any invariant is violated. The nodes run without a Raft password: the partition "
        "proxy identifies a connection's peer from its first, unencrypted frame. "
        "SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1 in the environment starts nodes without the FireTick "
        "duplicate check, to see the checker fail.",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of load and faults (default 60)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between planned faults (default 5)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kinds", type=_kinds, default=ALL_KINDS, help="comma-separated fault kinds (default: all)"
    )
    parser.add_argument(
        "--points",
        default=",".join(POINT_FAULT_POINTS),
        help="crash points the crash-point faults pick from (default: %(default)s)",
    )
    parser.add_argument("--data-dir", help="keep node data and logs here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each fault as it happens")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        nodes=args.nodes,
        duration=args.duration,
        interval=args.interval,
        seed=args.seed,
        kinds=args.kinds,
        base_dir=args.data_dir,
        verbose=args.verbose,
        crash_points=tuple(p.strip() for p in args.points.split(",") if p.strip()),
    )
    report = run_chaos(config)
    print(report.table(), flush=True)
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
