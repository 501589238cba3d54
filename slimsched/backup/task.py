"""The node's backup task (a named asyncio task writing every interval) and the cold-start restore."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from slimsched import ids
from slimsched.backup.disk import (
    NoSpace,
    Written,
    load_disk_state,
    read_candidates,
    recheck,
    remove_stale_temporaries,
    set_aside_damaged,
    signature,
    write_backup,
)
from slimsched.backup.fileformat import (
    FILE_NAME,
    BackupInfo,
    Choice,
    PayloadEncoder,
    Refused,
    choose_backup,
    encode_backup,
)
from slimsched.backup.metrics import BackupMetrics
from slimsched.backup.policy import (
    RESTORE_COMMIT_SECONDS,
    RESTORE_PART_BYTES,
    Decision,
    DiskState,
    best_report,
    decide_write,
    is_cold_start,
    lineage_index,
    restore_command,
    restore_parts,
)
from slimsched.errors import ApiError, ConfigError
from slimsched.raft import RaftNode
from slimsched.statemachine import OK, Result, State, encode_command

log = logging.getLogger(__name__)

STOP_DEADLINE_SECONDS = 10.0
READY_POLL_SECONDS = 0.05
NO_SPACE = "no_space"  # a pass's outcome when the volume lacks room for the file
WATCH_POLL_SECONDS = 0.2  # while the cluster is empty: how often a node looks for a backup_choice
REPORT_COMMIT_SECONDS = 5.0
# At a cold start the leader waits this long for every member's backup report (they report
# right after their levels, themselves announced right after the first election)...
REPORT_WAIT_SECONDS = 15.0
# ...and this long for the node holding the chosen backup to restore it, before the next best.
HOLDER_RESTORE_SECONDS = 60.0

# At a cold start the members announce their levels right after the first election.
RESTORE_LEVEL_WAIT_SECONDS = 10.0
RESTORE_ATTEMPTS = 3  # a restore in parts starts over when another one interrupted it


def _holds_anything(state: State) -> bool:
    return bool(state.schedules or state.runs or state.last_fired)


# -- the node's backup task and restore hook -----------------------------------------------------


@dataclass
class Backups:
    """Owned by the node: a named task writes the backup every interval; a restore hook for the leader."""

    raft: RaftNode
    backup_dir: str
    node_id: str
    interval_seconds: float
    registry: CollectorRegistry
    clock: Callable[[], float]
    new_id: Callable[[], str] = field(default=ids.new_id)
    restore_part_bytes: int = RESTORE_PART_BYTES
    restore_level_wait_seconds: float = RESTORE_LEVEL_WAIT_SECONDS
    report_wait_seconds: float = REPORT_WAIT_SECONDS
    holder_restore_seconds: float = HOLDER_RESTORE_SECONDS
    overwrite_once: bool = field(default=False, init=False)  # the operator's POST /admin/backup/overwrite
    disk: DiskState = field(default_factory=DiskState, init=False)
    last_outcome: str | None = field(default=None, init=False)
    last_restore: str | None = field(default=None, init=False)
    _metrics: BackupMetrics = field(init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _caught_up: bool = field(default=False, init=False)
    _started_at: float = field(default=float("-inf"), init=False)  # set when the task starts
    _io_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _pass_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _encoder: PayloadEncoder = field(default_factory=PayloadEncoder, init=False)
    _signature: tuple[int, int, int] | None = field(default=None, init=False)
    _damaged: list[tuple[str, str | None, str]] = field(default_factory=list, init=False)
    _refused: list[Refused] = field(default_factory=list, init=False)
    _watching: bool = field(default=True, init=False)  # for a backup_choice naming this node
    _reported: bool = field(default=False, init=False)
    _loaded: bool = field(default=False, init=False)
    _report_until: float = field(default=float("-inf"), init=False)
    _attempted: dict[str, Any] | None = field(default=None, init=False)
    _restore_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        if not self.interval_seconds > 0:
            raise ConfigError(
                f"SLIMSCHED_BACKUP_INTERVAL_SECONDS must be a positive number, got {self.interval_seconds}"
            )
        self._metrics = BackupMetrics(self.registry)

    @property
    def path(self) -> str:
        return os.path.join(self.backup_dir, FILE_NAME)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="backup")

    async def stop(self, deadline: float = STOP_DEADLINE_SECONDS) -> None:
        """Stop the task and write a last backup (if this node ever caught up), within ``deadline``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, max(0.0, until - loop.time()))
            except TimeoutError:
                log.warning("the backup task did not stop within %.0f s", deadline)
            except Exception:
                log.exception("the backup task failed")
        if self._caught_up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, until - loop.time())):
                    await self.backup_once()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        await self.load()
        # "As soon as it has applied the log": a leader is known and the commit index applied.
        while not self._stopping.is_set() and not self.raft.status().ready:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_POLL_SECONDS):
                    await self._stopping.wait()
        self._caught_up = not self._stopping.is_set()
        # At start, the members announce their levels (hello) within seconds: until then the
        # report is tried again between passes, so that a cold start hears from every node.
        self._report_until = loop.time() + self.restore_level_wait_seconds
        while not self._stopping.is_set():
            await self.backup_once()
            self._reported = await self.report_to_cluster()
            await self._idle(self.interval_seconds)

    async def _idle(self, seconds: float) -> None:
        """Wait for the next pass; meanwhile, while the cluster is empty, restore the backup the
        leader chose if it is this node's (``backup_choice``)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self._stopping.is_set() and (left := until - loop.time()) > 0:
            step = left
            if not self._reported and loop.time() < self._report_until:
                self._reported = await self.report_to_cluster()
                step = min(left, READY_POLL_SECONDS)
            if self._watching:
                if self.raft.read(_holds_anything):
                    self._watching = False  # restored, or in use: no choice will come any more
                else:
                    choice = self.raft.read(lambda s: s.backups.get("choice"))
                    if choice and choice.get("node") == self.me and choice != self._attempted:
                        self._attempted = choice
                        outcome = await self._restore_locked(str(choice["payload_sha256"]))
                        self._metrics.restores.labels(outcome).inc()
                    step = min(left, WATCH_POLL_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await self._stopping.wait()

    # -- what this node tells the cluster of its backup (``backup_report``) -------------------

    @property
    def me(self) -> str:
        return self.raft.settings.raft_address

    def _header(self) -> dict[str, Any]:
        best = self.disk.best
        if best is None:
            return {"raft_index": 0, "payload_sha256": "", "schedule_count": 0}
        return {
            "raft_index": best.raft_index,
            "payload_sha256": best.payload_sha256,
            "schedule_count": best.schedule_count,
        }

    async def report_to_cluster(self) -> bool:
        """Record this node's newest valid backup in the replicated state if it is not there yet,
        once every member applies ``backup_report``; whether the state holds it now."""
        header = {"node": self.me, **self._header()}
        self._update_cluster_metrics()
        if self.raft.read(lambda s: s.backups.get("reports", {}).get(self.me)) == header:
            return True
        if not self.raft.applied_by_all("backup_report"):
            return False
        try:
            result = await self.raft.submit(
                encode_command("backup_report", rid=self.new_id(), **header), within=REPORT_COMMIT_SECONDS
            )
        except ApiError as e:
            log.warning("reporting this node's backup to the cluster failed (%s); again next pass", e.message)
            return False
        if not result.ok:
            log.warning("reporting this node's backup was refused: %s", result.message)
        return result.ok

    def _update_cluster_metrics(self) -> None:
        header = self._header()
        reports, backups = self.raft.read(lambda s: (s.backups.get("reports", {}), s.backups))
        state_index = lineage_index(backups, self.raft.status().applied_index)
        others = [r for n, r in reports.items() if n != self.me and r.get("schedule_count", 0) > 0]
        cluster_best = max([r["raft_index"] for r in others] + [header["raft_index"]])
        self._metrics.index.set(header["raft_index"])
        self._metrics.cluster_index.set(cluster_best)
        current = self.last_outcome in (Decision.WRITE.value, Decision.UNCHANGED.value)
        # Behind: another node holds a newer backup, and either this node's last pass did not
        # bring its own up to date (a full or read-only volume, a failing write) or the cluster's
        # state itself is older than that backup (it came back from an older one).
        behind = any(
            r["raft_index"] > header["raft_index"]
            and r["payload_sha256"] != header["payload_sha256"]
            and (not current or state_index < r["raft_index"])
            for r in others
        )
        self._metrics.behind.set(1 if behind else 0)

    async def load(self) -> None:
        """Read back the files on disk, so that an unchanged state is not written again."""
        loop = asyncio.get_running_loop()

        def read() -> tuple[DiskState, tuple[Refused, ...]]:
            with self._io_lock:
                if os.path.isdir(self.backup_dir):
                    remove_stale_temporaries(self.backup_dir)
                return load_disk_state(self.backup_dir)

        try:
            self.disk, refused = await loop.run_in_executor(None, read)
        except OSError as e:
            # Unknown content: treated as unreadable, so an empty state will not replace it.
            log.error("cannot read the backup directory %s: %s", self.backup_dir, e)
            self.disk, refused = DiskState(main_refused=f"cannot read it: {e}"), ()
        self._report(refused)
        self._loaded = True
        if self.disk.main is not None:
            self._signature = await loop.run_in_executor(None, signature, self.path)
            self._metrics.schedules.set(self.disk.main.schedule_count)

    def _report(self, refused: Iterable[Refused]) -> None:
        for r in refused:
            self._metrics.corrupt.labels(r.name).inc()
            log.error("backup %s refused: %s", os.path.join(self.backup_dir, r.name), r.problem)

    # -- one pass ------------------------------------------------------------------------------

    async def backup_once(self) -> Decision | None:
        """Write the backup if the schedules changed; None if the pass failed (logged)."""
        async with self._pass_lock:
            try:
                decision = await self._backup_once()
            except NoSpace as e:
                if self.last_outcome != NO_SPACE:
                    log.error("backup not written: %s; the node keeps serving", e)
                self._metrics.passes.labels(NO_SPACE).inc()
                self.last_outcome = NO_SPACE
                return None
            except Exception:
                log.exception("writing the backup to %s failed", self.path)
                self._metrics.passes.labels("failed").inc()
                self.last_outcome = "failed"
                return None
            self._metrics.passes.labels(decision.value).inc()
            self.last_outcome = decision.value
            return decision

    def _recheck(self, now: float) -> None:
        """If the file changed on disk since this node wrote or verified it, verify it again; a
        file that no longer verifies is set aside (``.damaged-<time>``) and ``.prev`` read back.

        Runs with the I/O lock held, in the executor. The signature (inode, size, mtime) makes
        the common pass cheap; any write, replace or removal of the file changes it.
        """
        main = self.disk.main
        if main is None or signature(self.path) == self._signature:
            return
        problem = recheck(self.path, main)
        if problem is None:
            self._signature = signature(self.path)
            return
        reason = "gone" if not os.path.exists(self.path) else "damaged"
        name = set_aside_damaged(self.backup_dir, now) if reason == "damaged" else None
        self._damaged.append((reason, name, problem))
        self.disk, refused = load_disk_state(self.backup_dir)
        self._refused.extend(refused)
        self._signature = signature(self.path)

    async def _backup_once(self) -> Decision:
        loop = asyncio.get_running_loop()
        applied = self.raft.status().applied_index  # the copy below holds at least this much
        schedules, last_fired, backups = self.raft.read(
            lambda s: (list(s.schedules.values()), s.last_fired.copy(), s.backups)
        )
        index = lineage_index(backups, applied)
        written_at = self.clock()
        overwrite = self.overwrite_once

        def encode_and_write() -> tuple[Decision, DiskState, BackupInfo | None, Written]:
            with self._io_lock:
                self._recheck(written_at)
            disk = self.disk
            payload = self._encoder.encode(schedules, last_fired)
            decision = decide_write(
                payload.sha256,
                payload.count,
                disk,
                state_index=index,
                overwrite=overwrite,
            )
            if decision is not Decision.WRITE:
                return decision, disk, None, Written()
            encoded = encode_backup(payload, node=self.node_id, raft_index=index, written_at=written_at)
            with self._io_lock:
                written = write_backup(
                    self.backup_dir,
                    encoded,
                    expect_main=disk.main,
                    set_aside_corrupt=disk.main_refused is not None,
                    now=written_at,
                )
                self._signature = signature(self.path)
            return decision, disk, encoded.info, written

        try:
            decision, disk, info, written = await loop.run_in_executor(None, encode_and_write)
        finally:
            self._report_damaged()
        if written.damaged_name is not None:
            self._damaged.append(("damaged", written.damaged_name, written.damaged_problem or ""))
            self._report_damaged()
        if overwrite and decision is Decision.WRITE:
            self.overwrite_once = False
            log.warning("backup overwritten at the operator's request (%s)", self.path)
        if info is not None:
            kept = disk.main if written.damaged_name is None else None
            self.disk = DiskState(main=info, prev=kept or disk.prev)
            self._metrics.last_write.set(written_at)
            self._metrics.schedules.set(info.schedule_count)
            log.info(
                "backup written: %d schedules, sha256 %s, Raft index %d",
                info.schedule_count,
                info.payload_sha256,
                info.raft_index,
            )
        elif decision is Decision.KEEP_NON_EMPTY and self.last_outcome != decision.value:
            log.warning("the state holds no schedules: the non-empty backup %s is kept", self.path)
        elif decision is Decision.OLDER and self.last_outcome != decision.value:
            best = disk.best
            log.warning(
                "the state (index %d) is older than the backup %s (index %d, %d schedules): kept; "
                "POST /admin/backup/overwrite replaces it",
                index,
                self.path,
                best.raft_index if best else 0,
                best.schedule_count if best else 0,
            )
        return decision

    def _report_damaged(self) -> None:
        """Count and log what ``_recheck`` and the write found (they run in the executor)."""
        self._report(self._refused)
        self._refused.clear()
        for reason, name, problem in self._damaged:
            self._metrics.damaged.labels(reason).inc()
            if name is None:
                log.error("backup %s vanished since this node wrote it; writing it again", self.path)
            else:
                log.error(
                    "backup %s changed on disk since this node wrote it (%s): set aside as %s, "
                    "never rotated into .prev",
                    self.path,
                    problem,
                    os.path.join(self.backup_dir, name),
                )
        self._damaged.clear()

    # -- cold-start restore (called by the leader after its barrier) ---------------------------

    async def restore_if_cold_start(self) -> str:
        """Restore the newest verified backup if the cluster cold-started; never raises."""
        outcome = "failed"
        try:
            outcome = await self._restore_if_cold_start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the cold-start restore failed")
        self.last_restore = outcome
        self._metrics.restores.labels(outcome).inc()
        return outcome

    async def _restore_if_cold_start(self) -> str:
        if not self.raft.read(is_cold_start):
            return "not_cold_start"
        if await self._until(
            lambda: self.raft.applied_by_all("backup_report"), self.restore_level_wait_seconds
        ):
            return await self._restore_best_of_cluster()
        log.warning("cold start: a member of an earlier release reports no backup: restoring this node's own")
        return await self._restore_locked(None)

    async def _until(self, cond: Callable[[], bool], seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not cond():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(READY_POLL_SECONDS)
        return True

    async def _restore_best_of_cluster(self) -> str:
        """Wait for every member's report, then restore the best backup of the cluster: this
        node's own, or (``backup_choice``) the one on another node's volume, which that node
        restores. A holder that does not restore in time is passed over for the next best."""
        members = (self.me, *self.raft.settings.peers)

        def reports() -> dict[str, Any]:
            return dict(self.raft.read(lambda s: s.backups.get("reports", {})))

        if self._loaded:  # the leader's own report need not wait for its task's next pass
            await self.report_to_cluster()

        if not await self._until(lambda: set(members) <= set(reports()), self.report_wait_seconds):
            missing = sorted(set(members) - set(reports()))
            log.warning(
                "cold start: no backup report from %s within %.0f s",
                ", ".join(missing),
                self.report_wait_seconds,
            )
        passed_over: set[str] = set()
        while True:
            if not self.raft.read(is_cold_start):
                return "restored_by_peer"
            best = best_report(reports(), frozenset(passed_over))
            if best is None:
                if passed_over:
                    log.error("cold start: no node holding a backup restored it; nothing restored")
                    return "holder_failed"
                return await self._restore_locked(None)  # nobody holds one: what this node's disk says
            holder = str(best["node"])
            log.warning(
                "cold start: the best backup of the cluster is on %s (index %d, %d schedules, sha256 %s)",
                holder,
                best["raft_index"],
                best["schedule_count"],
                best["payload_sha256"],
            )
            if holder == self.me:
                return await self._restore_locked(str(best["payload_sha256"]))
            result = await self._commit(encode_command("backup_choice", rid=self.new_id(), **best))
            if not result.ok:
                log.warning("cold start: choice not applied: %s", result.message)
                return "conflict"
            if await self._until(lambda: not self.raft.read(is_cold_start), self.holder_restore_seconds):
                return "restored_by_peer"
            log.warning(
                "cold start: %s did not restore within %.0f s; choosing again",
                holder,
                self.holder_restore_seconds,
            )
            passed_over.add(holder)

    async def _restore_locked(self, payload_sha256: str | None) -> str:
        """Restore from this node's disk (the file holding ``payload_sha256`` if given), one
        restore at a time on this node, and only into a cluster still empty."""
        async with self._restore_lock:
            if not self.raft.read(is_cold_start):
                return "not_cold_start"
            return await self._restore_own(payload_sha256)

    async def _restore_own(self, payload_sha256: str | None) -> str:
        loop = asyncio.get_running_loop()

        def load() -> Choice:
            with self._io_lock:
                candidates = read_candidates(self.backup_dir)
            return choose_backup(candidates, payload_sha256)

        choice = await loop.run_in_executor(None, load)
        self._report(choice.refused)
        if choice.backup is None:
            if choice.refused:
                log.error("cold start: no backup in %s verifies; nothing restored", self.backup_dir)
                return "refused"
            log.info("cold start: no backup in %s; nothing to restore", self.backup_dir)
            return "no_backup"
        backup = choice.backup
        if not backup.schedules:
            log.info("cold start: the backup %s holds no schedules; nothing to restore", choice.name)
            return "empty_backup"
        in_parts: bool | None = None
        info = backup.info
        base = info.raft_index if self.raft.applied_by_all("backup_report") else None
        log.warning(
            "cold start: restoring %d schedules from %s (sha256 %s, written %s by %s at Raft index %d)",
            info.schedule_count,
            os.path.join(self.backup_dir, choice.name or ""),
            info.payload_sha256,
            info.written_at,
            info.node,
            info.raft_index,
        )
        result = OK
        for attempt in range(RESTORE_ATTEMPTS):
            rid = self.new_id()
            single = await loop.run_in_executor(None, restore_command, backup, rid, base)
            commands = [single]
            if len(single) > self.restore_part_bytes:
                if in_parts is None:
                    in_parts = await self._members_apply_parts()
                if in_parts:
                    part_bytes = self.restore_part_bytes
                    split = functools.partial(
                        restore_parts,
                        backup,
                        rid,
                        whole_bytes=len(single),
                        part_bytes=part_bytes,
                        base_index=base,
                    )
                    commands = await loop.run_in_executor(None, split)
            for command in commands:
                result = await self._commit(command)
                if not result.ok:
                    break
            if result.code != "interrupted":
                break
            # A part of a restore that an earlier leader began, committed late, reset the parts.
            log.warning(
                "cold start: restore interrupted (%s); again (attempt %d)", result.message, attempt + 2
            )
        if result.ok:
            log.warning(
                "cold start: %d schedules restored (%d Raft entries)", info.schedule_count, len(commands)
            )
            return "restored"
        log.warning("cold start: restore not applied: %s", result.message)
        return "conflict"

    async def _members_apply_parts(self) -> bool:
        """Whether every member applies ``restore_part``, once they have announced their levels
        (waited for a while: at a cold start they announce right after the first election)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restore_level_wait_seconds
        while not self.raft.applied_by_all("restore_part"):
            if loop.time() >= deadline:
                log.warning("cold start: not every member applies restore_part: restoring in one entry")
                return False
            await asyncio.sleep(READY_POLL_SECONDS)
        return True

    async def _commit(self, command: bytes) -> Result:
        """Until committed (the same request id each time); cancelled with the leader's term."""
        backoff = 0.1
        while True:
            try:
                return await self.raft.submit(command, within=RESTORE_COMMIT_SECONDS)
            except ApiError as e:
                log.warning("restore not committed yet (%s); retrying", e.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
