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

from prometheus_client import CollectorRegistry, Counter, Gauge

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
from slimsched.backup.policy import (
    RESTORE_COMMIT_SECONDS,
    RESTORE_PART_BYTES,
    Decision,
    DiskState,
    decide_write,
    is_cold_start,
    restore_command,
    restore_parts,
)
from slimsched.errors import ApiError, ConfigError
from slimsched.raft import RaftNode
from slimsched.statemachine import OK, Result

log = logging.getLogger(__name__)

STOP_DEADLINE_SECONDS = 10.0
READY_POLL_SECONDS = 0.05
NO_SPACE = "no_space"  # a pass's outcome when the volume lacks room for the file

# At a cold start the members announce their levels right after the first election.
RESTORE_LEVEL_WAIT_SECONDS = 10.0
RESTORE_ATTEMPTS = 3  # a restore in parts starts over when another one interrupted it

# -- the node's backup task and restore hook -----------------------------------------------------


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter(
            "slimsched_backup_passes",
            "Backup passes by outcome (written, unchanged, kept_non_empty, catching_up, no_space, failed)",
            ["outcome"],
            registry=registry,
        )
        self.last_write = Gauge(
            "slimsched_backup_last_write_timestamp_seconds",
            "When this node last wrote its backup",
            registry=registry,
        )
        self.schedules = Gauge(
            "slimsched_backup_schedules", "Schedules in this node's backup file on disk", registry=registry
        )
        self.corrupt = Counter(
            "slimsched_backup_corrupt_files",
            "Backup files refused because they did not verify, by file",
            ["file"],
            registry=registry,
        )
        self.damaged = Counter(
            "slimsched_backup_damaged_files",
            "Backup files found changed (set aside as .damaged-<time>) or gone since this node wrote "
            "them, by reason (damaged, gone)",
            ["reason"],
            registry=registry,
        )
        self.restores = Counter(
            "slimsched_backup_restores",
            "Cold-start restore decisions of this node as leader, by outcome",
            ["outcome"],
            registry=registry,
        )


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
        while not self._stopping.is_set():
            await self.backup_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_seconds):
                    await self._stopping.wait()

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
        schedules, last_fired = self.raft.read(lambda s: (list(s.schedules.values()), s.last_fired.copy()))
        written_at = self.clock()
        since_start = loop.time() - self._started_at

        def encode_and_write() -> tuple[Decision, DiskState, BackupInfo | None, Written]:
            with self._io_lock:
                self._recheck(written_at)
            disk = self.disk
            payload = self._encoder.encode(schedules, last_fired)
            decision = decide_write(
                payload.sha256,
                payload.count,
                disk,
                applied_index=applied,
                seconds_since_start=since_start,
            )
            if decision is not Decision.WRITE:
                return decision, disk, None, Written()
            encoded = encode_backup(payload, node=self.node_id, raft_index=applied, written_at=written_at)
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
        loop = asyncio.get_running_loop()

        def load() -> Choice:
            with self._io_lock:
                return choose_backup(read_candidates(self.backup_dir))

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
            single = await loop.run_in_executor(None, restore_command, backup, rid)
            commands = [single]
            if len(single) > self.restore_part_bytes:
                if in_parts is None:
                    in_parts = await self._members_apply_parts()
                if in_parts:
                    part_bytes = self.restore_part_bytes
                    split = functools.partial(
                        restore_parts, backup, rid, whole_bytes=len(single), part_bytes=part_bytes
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
