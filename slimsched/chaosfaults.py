"""The chaos harness's faults: each kind injected on a healthy cluster, then reverted.

Kill, pause, restart (data kept or wiped), partitions through the proxy, a slow-client flood,
whole-cluster restarts, damaged backups, a cold start that loses the leader's backup, and the
crash/stop points that freeze or kill the next leader at a named step of its protocol.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from slimsched import chaosbackup
from slimsched.backup import Backup
from slimsched.chaoscheck import EVERY_SECOND, Violation
from slimsched.chaosharness import (
    CLIENT_TIMEOUT,
    LEADER_WAIT_SECONDS,
    POLL_SECONDS,
    STATUS_TIMEOUT,
    HarnessBase,
    Health,
    wait_event,
)
from slimsched.chaosplan import (
    BACKUP_INTERVAL_SECONDS,
    BACKUP_KINDS,
    FLOOD_CONNECTIONS,
    HOLD_SECONDS,
    LATE_START_SECONDS,
    POINT_WAIT_SECONDS,
    RESTORE_WAIT_SECONDS,
    STOP_FAULT_POINTS,
    FaultKind,
    FaultRecord,
    PlannedFault,
)


class FaultInjector(HarnessBase):
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

    async def cold_start(self, leader: int, hold: float) -> None:
        """Stop every node once the load is paused and applied everywhere (each writes a last
        backup), wipe the leader's backup volume and every node's Raft data, start them all,
        and check that the best backup left is restored before the load goes on."""
        n = len(self.cluster.nodes)
        self.load_open.clear()
        try:
            await wait_event(self.no_request, CLIENT_TIMEOUT)
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
            if wait > 0 and await wait_event(self.stop_load, wait):
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
