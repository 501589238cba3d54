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
``slimsched.chaoscheck.check``), prints a table (faults by kind, operations, failover times,
violations) and exits non-zero on any violation.

Partitions need no root and no iptables: a small asyncio TCP proxy (``slimsched.partitionproxy``)
runs in the harness process and cuts Raft links between nodes that reach each other through it.
**The partition faults therefore require the cluster to run without SLIMSCHED_RAFT_PASSWORD**
(see that module); the harness clears the password for its nodes.

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
import itertools
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from slimsched import chaosbackup, codec
from slimsched.backup import Backup
from slimsched.chaoscheck import (
    EVERY_SECOND,
    AckedTrigger,
    Answer,
    ClientLog,
    CreatedSchedule,
    DeletedSchedule,
    NodeSnapshot,
    Violation,
    check,
    unexercised,
)
from slimsched.chaosplan import (
    ALL_KINDS,
    BACKUP_INTERVAL_SECONDS,
    BACKUP_KINDS,
    EXERCISED_SAMPLES,
    FLOOD_CONNECTIONS,
    HOLD_SECONDS,
    LATE_START_SECONDS,
    POINT_FAULT_POINTS,
    POINT_WAIT_SECONDS,
    RESTORE_WAIT_SECONDS,
    STOP_FAULT_POINTS,
    FaultKind,
    FaultRecord,
    PlannedFault,
    plan_timetable,
)
from slimsched.chaosreport import ChaosReport, first_tick_after
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import LABEL_RUN_ID
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.partitionproxy import PartitionProxy

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

# Bounds of every wait.
CLIENT_TIMEOUT = 6.0  # more than the nodes' 5 s commit deadline
STATUS_TIMEOUT = 1.0
POLL_SECONDS = 0.05
LEADER_WAIT_SECONDS = 30.0


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


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
