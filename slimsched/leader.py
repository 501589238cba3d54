"""What only the leader does: fire cron ticks, dispatch queued runs, follow their Jobs.

Being leader is never enough to act (pysyncobj has no lease: a deposed leader believes it leads
for ``leaderFallbackTimeout``). Every effect follows a committed command: a tick becomes a run
only through a committed ``fire_tick`` (which the state machine accepts once per tick), a Job is
created only after a committed command put its run in Dispatching (``start_dispatch``, or the
run's own ``fire_tick`` when it could start at once), and its name is derived from the run id
so a second create, by any leader, is an HTTP 409. A new leader first commits a barrier, then
reconciles the runs left in "Dispatching", and only then fires and dispatches.

The loops are event-driven: the cron loop sleeps until the first next tick of its ``DueQueue``
(woken early when a schedule changes); the dispatch loop wakes when a run is queued or ends;
Kubernetes is polled only while runs are active. All of them stop at once when leadership goes.

This module holds the term (role changes, the barrier, the reconcile, the loops' lifetime) and
the declared schedules; the roles are ``leader_firing``, ``leader_dispatch`` and
``leader_status``, over ``leader_base``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from slimsched import catalog, codec, crashpoints, jobconfig
from slimsched.leader_base import STOP_DEADLINE_SECONDS, LeaderTimings
from slimsched.leader_firing import FiringRole
from slimsched.leader_status import LIST_BY_RUN_ID_MAX, RUN_IDS_PER_SELECTOR, StatusRole
from slimsched.loopinbox import LoopInbox
from slimsched.statemachine import Result

__all__ = ["LIST_BY_RUN_ID_MAX", "RUN_IDS_PER_SELECTOR", "Leader", "LeaderTimings"]

log = logging.getLogger(__name__)

_SCHEDULE_COMMANDS = frozenset(
    {"create_schedule", "delete_schedule", "set_paused", "restore", "restore_part"}
)
_RUN_COMMANDS = frozenset(
    {"enqueue_run", "fire_tick", "run_status", "cancel_run", "start_dispatch", "trigger_schedule", "backfill"}
)


class Leader(FiringRole, StatusRole):
    """Owned by the node; started and stopped as this node gains and loses Raft leadership."""

    # Awaited right after each term's barrier, before anything else (the cold-start restore).
    restore_hook: Callable[[], Awaitable[object]] | None = None

    # -- hooks called in the Raft thread -------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._inbox = LoopInbox(loop)

    def on_role_change(self, is_leader: bool) -> None:
        if self._inbox is not None:
            self._inbox.put(self._set_role, is_leader)
        if is_leader:
            crashpoints.stall_elected()  # test only

    def on_applied(self, commands: tuple[tuple[object, Result], ...]) -> None:
        if not self._leading or self._inbox is None:
            return
        for cmd, result in commands:
            if crashpoints.armed():
                _reach_fire_applied(cmd, result, self.raft.status().term)
            self._notice(cmd, result)

    def _notice(self, cmd: object, result: Result) -> None:
        """Wake the loops that an applied command concerns (in the Raft thread)."""
        assert self._inbox is not None
        if not result.ok or not isinstance(cmd, dict):
            return
        kind = cmd.get("type")
        if kind in _SCHEDULE_COMMANDS:
            sid = None if kind in ("restore", "restore_part") else (result.value or {}).get("Id")
            self._inbox.put(self._schedule_touched, sid)
        if kind in _RUN_COMMANDS:
            self._inbox.put(self._runs_changed)

    # -- role ----------------------------------------------------------------------------------

    def _set_role(self, is_leader: bool) -> None:
        log.info("Raft role: %s", "leader" if is_leader else "not leader")
        if is_leader:
            self.not_leading.clear()
        else:
            self.not_leading.set()
        if self._closed:
            return  # shutting down: a late election win must not start a term
        if is_leader and self._task is None:
            self._leading = True
            self._rebuild = True
            self._task = asyncio.get_running_loop().create_task(self._lead(), name="leader-term")
        elif not is_leader and self._task is not None:
            self._leading = False
            self._task.cancel()
            self._task = None

    def jobs_changed(self, jobs: jobconfig.JobsConfiguration, discovered: frozenset[str]) -> None:
        """New configuration (CronJob discovery): declared schedules are synced again."""
        self.jobs = jobs
        self.discovered = discovered
        self._discovery_seen = True
        self._declared_wake.set()

    def _runs_changed(self) -> None:
        self._dispatch_wake.set()
        self._status_wake.set()

    def _schedule_touched(self, sid: str | None) -> None:
        if sid is None:
            self._rebuild = True
        else:
            self._touched.add(sid)
        self._cron_wake.set()

    async def stop(self) -> None:
        """Stop leading for good (shutdown): cancel the loops and wait for them, within a deadline."""
        self._closed = True
        self._leading = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait bounds the wait without waiting again for the cancellation itself.
            await asyncio.wait({task}, timeout=STOP_DEADLINE_SECONDS)
            if not task.done():
                log.error("leader loops did not stop within %s s", STOP_DEADLINE_SECONDS)

    async def _lead(self) -> None:
        """Lead for as long as this term lasts; a crash of the loops restarts them after a pause."""
        for attempt in range(1_000_000):
            try:
                await self._lead_once()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leader loops failed (attempt %d); restarting them", attempt + 1)
                self._rebuild = True
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))

    async def _lead_once(self) -> None:
        if not crashpoints.broken(crashpoints.Break.BARRIER):
            # Everything committed before this term is applied here once the barrier is: the
            # reconcile below then sees every run an earlier leader left in Dispatching.
            await self._propose_until_committed("barrier")
            crashpoints.reach(crashpoints.Point.BARRIER_COMMITTED)
        if self.restore_hook is not None:
            await self.restore_hook()
        await self._sync_runs(phase="term-start")
        log.info("leader barrier committed and runs reconciled: firing and dispatching")
        self._dispatch_sem = asyncio.Semaphore(self.timings.max_concurrent_dispatches)
        try:
            async with asyncio.TaskGroup() as tg:
                self._term_tasks = tg  # Job creations of runs claimed at fire time run here
                tg.create_task(self._cron_loop(), name="leader-cron")
                tg.create_task(self._dispatch_loop(), name="leader-dispatch")
                tg.create_task(self._status_loop(), name="leader-status")
                tg.create_task(self._declared_loop(), name="leader-declared-schedules")
        finally:
            self._term_tasks = None

    # -- declared schedules (configuration, CronJobs) ------------------------------------------

    async def _declared_loop(self) -> None:
        while True:
            self._declared_wake.clear()
            await self._sync_declared()
            await self._declared_wake.wait()

    async def _sync_declared(self) -> None:
        desired = {
            s.id: s
            for s in catalog.declared_schedules(
                self.jobs, discovered=self.discovered, now_ms=int(self.clock() * 1000)
            )
        }
        # Until CronJobs were listed once, what they declare is unknown: never delete those then.
        sources = catalog.DECLARED_SOURCES if self._discovery_seen else frozenset({"config"})
        owns_all = crashpoints.broken(crashpoints.Break.DECLARED_OWNS_ALL)  # test only
        present = self.raft.read(
            lambda st: {i: s.job_name for i, s in st.schedules.items() if owns_all or s.source in sources}
        )
        for sid in sorted(desired.keys() - present.keys()):
            await self._propose("create_schedule", schedule=codec.schedule_to_dict(desired[sid]))
        for sid in sorted(present.keys() - desired.keys()):
            await self._propose("delete_schedule", job_name=present[sid], schedule_id=sid)


def _reach_fire_applied(cmd: object, result: Result, term: int) -> None:
    """Crash point FIRE_APPLIED: a FireTick this leader proposed (its claim carries this term)
    was applied here (Raft thread); not one of an earlier leader, committed by this one."""
    if result.ok and isinstance(cmd, dict) and cmd.get("type") == "fire_tick":
        run = cmd.get("run") or {}
        if isinstance(run, dict) and run.get("Status") == "Dispatching" and run.get("DispatchTerm") == term:
            crashpoints.reach(crashpoints.Point.FIRE_APPLIED)
