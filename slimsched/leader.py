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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from slimsched import catalog, codec, cronplan, jobconfig
from slimsched.duequeue import DueQueue
from slimsched.errors import ApiError, KubeError
from slimsched.jobmanifest import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    build_job_manifest,
    kube_job_name,
    run_status_from_job,
    runs_selector,
)
from slimsched.kube import KubeClient
from slimsched.loopinbox import LoopInbox
from slimsched.metrics import Metrics
from slimsched.model import ConcurrencyPolicy, Run, RunStatus, Schedule, TickOutcome
from slimsched.raft import RaftNode
from slimsched.statemachine import Result, State, encode_command

log = logging.getLogger(__name__)

_SCHEDULE_COMMANDS = frozenset(
    {"create_schedule", "delete_schedule", "set_paused", "restore", "restore_part"}
)
_RUN_COMMANDS = frozenset(
    {"enqueue_run", "fire_tick", "run_status", "cancel_run", "start_dispatch", "trigger_schedule", "backfill"}
)
STOP_DEADLINE_SECONDS = 5.0
REFRESH_CHUNK = 2000
DISPATCH_BATCH = 256  # queued runs a dispatch pass reads per job, beyond those in flight
LIST_BY_RUN_ID_MAX = 200  # active runs up to which their Jobs are listed by run id
RUN_IDS_PER_SELECTOR = 50  # run ids per "in (...)" label selector (keeps URLs short)


@dataclass(frozen=True)
class LeaderTimings:
    status_poll_seconds: float = 0.5
    blocked_retry_seconds: float = 2.0
    idle_dispatch_check_seconds: float = 30.0
    max_concurrent_proposals: int = 256
    max_concurrent_dispatches: int = 32


@dataclass(frozen=True)
class _Due:
    schedule: Schedule
    last_fired: int | None
    active_runs: tuple[Run, ...]
    plan: cronplan.TickPlan | None = None  # set by _refresh, so that _fire does not plan again


class Leader:
    """Owned by the node; started and stopped as this node gains and loses Raft leadership."""

    # Awaited right after each term's barrier, before anything else (the cold-start restore).
    restore_hook: Callable[[], Awaitable[object]] | None = None

    def __init__(
        self,
        raft: RaftNode,
        jobs: jobconfig.JobsConfiguration,
        kube: KubeClient | None,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        namespace: str,
        timings: LeaderTimings | None = None,
        new_id: Callable[[], str],
    ) -> None:
        self.raft = raft
        self.jobs = jobs
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.namespace = namespace
        self.timings = timings or LeaderTimings()
        self.new_id = new_id
        self._inbox: LoopInbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        self._cron_wake = asyncio.Event()
        self._dispatch_wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self._touched: set[str] = set()
        self._rebuild = True
        self._due = DueQueue()
        self._deleted_jobs: set[str] = set()
        self._declared_wake = asyncio.Event()
        self.not_leading = asyncio.Event()
        self.not_leading.set()
        self.discovered: frozenset[str] = frozenset()
        self._discovery_seen = False
        self._inflight: set[str] = set()
        self._claims: dict[str, int] = {}  # per job: fire-time claims proposed, not yet answered
        self._term_tasks: asyncio.TaskGroup | None = None
        self._dispatch_sem = asyncio.Semaphore(self.timings.max_concurrent_dispatches)
        self._closed = False

    # -- hooks called in the Raft thread -------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._inbox = LoopInbox(loop)

    def on_role_change(self, is_leader: bool) -> None:
        if self._inbox is not None:
            self._inbox.put(self._set_role, is_leader)

    def on_applied(self, commands: tuple[tuple[object, Result], ...]) -> None:
        if not self._leading or self._inbox is None:
            return
        for cmd, result in commands:
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
        await self._propose_until_committed("barrier")
        if self.restore_hook is not None:
            await self.restore_hook()
        await self._sync_runs()
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

    async def _propose_until_committed(self, kind: str, **fields: Any) -> Result:
        rid = self.new_id()
        while True:
            try:
                return await self.raft.submit(encode_command(kind, rid=rid, **fields))
            except ApiError:
                await asyncio.sleep(0.1)

    async def _propose(self, kind: str, **fields: Any) -> Result | None:
        try:
            return await self.raft.submit(encode_command(kind, rid=self.new_id(), **fields))
        except ApiError as e:
            log.warning("proposal %s not committed: %s", kind, e.message)
            return None

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
        present = self.raft.read(
            lambda st: {i: s.job_name for i, s in st.schedules.items() if s.source in sources}
        )
        for sid in sorted(desired.keys() - present.keys()):
            await self._propose("create_schedule", schedule=codec.schedule_to_dict(desired[sid]))
        for sid in sorted(present.keys() - desired.keys()):
            await self._propose("delete_schedule", job_name=present[sid], schedule_id=sid)

    # -- cron ----------------------------------------------------------------------------------

    def _plan_for(self, s: Schedule, last_fired: int | None, now: int) -> cronplan.TickPlan | None:
        if s.paused:
            return None
        try:
            return cronplan.plan(
                s.cron,
                s.time_zone,
                last_handled=last_fired,
                created_at=s.created_at_ms // 1000,
                now=now,
                starting_deadline_seconds=s.starting_deadline_seconds,
            )
        except (ValueError, ApiError):
            log.warning("schedule %s has an expression that never fires: %r", s.id, s.cron)
            return None

    async def _refresh(self, sids: Iterable[str] | None, now: int) -> list[_Due]:
        """Recompute heap entries (all when ``sids`` is None); return schedules with work now.

        Works in chunks that yield to the event loop, so a leader of 100,000 schedules keeps
        answering (and its Raft thread keeps the lock) while it plans them all.
        """
        if sids is None:
            ids = self.raft.read(lambda st: list(st.schedules))
            self._due.clear()
        else:
            ids = list(sids)
            for sid in ids:
                self._due.discard(sid)
        work: list[_Due] = []
        for start in range(0, len(ids), REFRESH_CHUNK):
            chunk = ids[start : start + REFRESH_CHUNK]

            def read(state: State, chunk: list[str] = chunk) -> list[_Due]:
                return [
                    _Due(
                        state.schedules[i],
                        state.last_fired.get(i),
                        tuple(r for r in state.runs_of(state.schedules[i].job_name) if r.schedule_id == i)
                        if state.schedules[i].concurrency_policy is not ConcurrencyPolicy.ALLOW
                        else (),
                    )
                    for i in chunk
                    if i in state.schedules
                ]

            for due in self.raft.read(read):
                plan = self._plan_for(due.schedule, due.last_fired, now)
                if plan is None:
                    continue
                if plan.due is not None or plan.missed:
                    work.append(_Due(due.schedule, due.last_fired, due.active_runs, plan))
                self._due.put(due.schedule.id, plan.next_tick)
            if len(ids) > REFRESH_CHUNK:
                await asyncio.sleep(0)
        return work

    async def _cron_loop(self) -> None:
        sem = asyncio.Semaphore(self.timings.max_concurrent_proposals)
        while True:
            now = int(self.clock())
            if self._rebuild:
                self._rebuild = False
                self._touched.clear()
                work = await self._refresh(None, now)
            else:
                due_ids = self._due.pop_due(now) | self._touched
                self._touched.clear()
                work = await self._refresh(due_ids, now) if due_ids else []
            if work:
                await asyncio.gather(*(self._fire(d, now, sem) for d in work))
                # Fired ticks advanced last_fired: recompute those schedules' next ticks.
                self._touched.update(d.schedule.id for d in work)
                continue
            self._cron_wake.clear()
            first = self._due.first()
            delay = (first - self.clock()) if first is not None else 3600.0
            if delay > 0 and not self._touched and not self._rebuild:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, 3600.0)):
                        await self._cron_wake.wait()

    async def _fire(self, due: _Due, now: int, sem: asyncio.Semaphore) -> None:
        s = due.schedule
        # _refresh planned this schedule from the same state and the same ``now``: same plan.
        plan = due.plan if due.plan is not None else self._plan_for(s, due.last_fired, now)
        if plan is None or (plan.due is None and not plan.missed):
            return
        at = int(self.clock() * 1000)
        fields: dict[str, Any] = {"schedule_id": s.id, "at": at}
        claimed: Run | None = None
        result: Result | None = None
        if plan.due is None:
            fields.update(
                tick=plan.missed[-1], outcome=TickOutcome.MISSED.value, missed=list(plan.missed[:-1])
            )
            fields["reason"] = "past StartingDeadlineSeconds"
        else:
            tick = plan.due
            fields.update(tick=tick, missed=list(plan.missed))
            active = [r for r in due.active_runs if not r.status.terminal]
            if s.concurrency_policy is ConcurrencyPolicy.FORBID and active:
                fields.update(
                    outcome=TickOutcome.SKIPPED.value, reason="Forbid: the previous run is still active"
                )
            else:
                try:
                    spec = jobconfig.merge(self.jobs.job(s.job_name), s.overrides)
                except ApiError as e:
                    spec = None
                    fields.update(
                        outcome=TickOutcome.SKIPPED.value, reason=f"invalid against configuration: {e}"
                    )
                if spec is not None:
                    if s.concurrency_policy is ConcurrencyPolicy.REPLACE:
                        for r in active:
                            await self._propose("cancel_run", job_name=s.job_name, run_id=r.id, at=at)
                    run_id = f"{s.id}-{tick}"
                    run = Run(
                        id=run_id,
                        job_name=s.job_name,
                        spec=spec,
                        status=RunStatus.QUEUED,
                        queued_at_ms=at,
                        kube_name=kube_job_name(s.job_name, run_id),
                        schedule_id=s.id,
                        tick=tick,
                    )
                    if self._can_claim(run):
                        # One commit both fires the tick and starts the dispatch (see _can_claim).
                        status = self.raft.status()
                        run = replace(
                            run,
                            status=RunStatus.DISPATCHING,
                            dispatch_term=status.term,
                            dispatch_index=status.commit_index,
                        )
                        claimed = run
                        self._claims[run.job_name] = self._claims.get(run.job_name, 0) + 1
                        self._inflight.add(run.id)
                    fields.update(outcome=TickOutcome.FIRED.value, run=codec.run_to_dict(run))
        try:
            async with sem:
                # No rid: the state machine's tick check makes a repeated FireTick a "duplicate".
                try:
                    result = await self.raft.submit(encode_command("fire_tick", **fields))
                except ApiError as e:
                    log.warning("fire_tick %s@%s not committed: %s", s.id, fields["tick"], e.message)
                    return
        finally:
            if claimed is not None:
                self._claim_answered(claimed, committed=result is not None and result.ok)
        if result.ok:
            outcome = fields["outcome"]
            self.metrics.ticks.labels(outcome).inc()
            if fields.get("missed"):
                self.metrics.ticks.labels(TickOutcome.MISSED.value).inc(len(fields["missed"]))
            if outcome == TickOutcome.FIRED.value:
                self.metrics.lateness.observe(max(0.0, self.clock() - fields["tick"]))

    def _can_claim(self, run: Run) -> bool:
        """A cron run may start dispatching in its own FireTick: one commit less per tick.

        Only when the dispatch pass would start it at once anyway: Kubernetes is configured, the
        run waits on no dependency, no earlier run of its job is queued (FIFO), and a slot is
        free counting the claims still in flight. The claim carries the term and commit index,
        as StartDispatch does, and the Job is created only once the FireTick is committed; a
        leader that dies before creating it leaves the run in Dispatching, which the next
        leader reconciles like any other.
        """
        if self.kube is None or run.spec.depends_on:
            return False
        queued, slots = self.raft.read(
            lambda st: (bool(st.queued.get(run.job_name)), self._free_slots(st, run.job_name))
        )
        return not queued and slots > 0

    def _free_slots(self, state: State, job_name: str) -> int:
        """NumberParallelJob less the job's active runs and its claims still in flight."""
        active = state.active.get(job_name, 0) + self._claims.get(job_name, 0)
        return self.jobs.job(job_name).number_parallel_job - active

    def _claim_answered(self, run: Run, *, committed: bool) -> None:
        """The FireTick that claimed ``run`` is answered: create its Job if it was committed."""
        self._claims[run.job_name] -= 1
        if not self._claims[run.job_name]:
            del self._claims[run.job_name]
        if not committed or self._term_tasks is None:
            self._inflight.discard(run.id)
            return
        self.metrics.claimed_at_fire.inc()
        self._term_tasks.create_task(self._create_claimed(run), name=f"dispatch-{run.id}")

    async def _create_claimed(self, run: Run) -> None:
        try:
            async with self._dispatch_sem:
                await self._create(run)
        finally:
            self._inflight.discard(run.id)

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        sem = self._dispatch_sem
        # Starts run as tasks of this group: a run queued while earlier ones wait on Kubernetes
        # is started at once instead of after the whole previous batch.
        async with asyncio.TaskGroup() as starts:
            while True:
                self._dispatch_wake.clear()
                blocked = await self._dispatch_pass(sem, starts)
                timeout = (
                    self.timings.blocked_retry_seconds
                    if blocked
                    else self.timings.idle_dispatch_check_seconds
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._dispatch_wake.wait()

    async def _dispatch_pass(self, sem: asyncio.Semaphore, starts: asyncio.TaskGroup) -> bool:
        """Start what the limits allow; True if some run waits on a dependency."""

        def read(state: State) -> tuple[list[tuple[list[Run], int, int]], int]:
            # Only the heads of the queues that a free slot can reach: a pass costs what it can
            # start, not the length of the queues (every queued run wakes a pass, under the lock
            # the Raft thread applies with).
            heads = []
            for job_name, run_ids in state.queued.items():
                slots = self._free_slots(state, job_name)
                if slots > 0:
                    # runs in flight hold their place at the head until their StartDispatch commits
                    head = min(slots, len(self._inflight) + DISPATCH_BATCH)
                    heads.append(([state.runs[i] for i in islice(run_ids, head)], slots, len(run_ids)))
            return heads, sum(len(q) for q in state.queued.values())

        jobs, depth = self.raft.read(read)
        self.metrics.queue_depth.set(depth)
        blocked = False
        ready_cache: dict[str, bool] = {}
        for queued, slots, queue_length in jobs:
            started = 0
            for run in queued:
                if slots <= 0:
                    break
                if run.id in self._inflight:
                    slots -= 1
                    continue
                if not await self._dependencies_ready(run, ready_cache):
                    blocked = True
                    break  # FIFO within a job; other jobs go on
                slots -= 1
                started += 1
                self._inflight.add(run.id)
                starts.create_task(self._start(run, sem), name=f"dispatch-{run.id}")
            else:
                if slots > 0 and started and len(queued) < queue_length:
                    self._dispatch_wake.set()  # the head was cut at DISPATCH_BATCH: another pass
        return blocked

    async def _dependencies_ready(self, run: Run, cache: dict[str, bool]) -> bool:
        if self.kube is None:
            return False
        for dep in run.spec.depends_on:
            if dep not in cache:
                try:
                    cache[dep] = await self.kube.workload_ready(dep)
                except KubeError:
                    self.metrics.dispatch_errors.inc()
                    cache[dep] = False
            if not cache[dep]:
                return False
        return True

    async def _start(self, run: Run, sem: asyncio.Semaphore) -> None:
        try:
            async with sem:
                status = self.raft.status()
                result = await self._propose(
                    "start_dispatch", run_id=run.id, term=status.term, index=status.commit_index
                )
                if result is None or not result.ok:
                    return
                claimed = self.raft.read(lambda s: s.runs.get(run.id))
                if claimed is not None and claimed.status is RunStatus.DISPATCHING:
                    await self._create(claimed)
        finally:
            self._inflight.discard(run.id)

    async def _create(self, run: Run) -> None:
        """Create the run's Job (409 counts as done), then commit that it is Pending."""
        if self.kube is None:
            return
        manifest = build_job_manifest(
            run,
            namespace=self.namespace,
            raft_term=run.dispatch_term or 0,
            raft_index=run.dispatch_index or 0,
            schedule_id=run.schedule_id,
        )
        try:
            await self.kube.create_job(manifest)
        except KubeError as e:
            self.metrics.dispatch_errors.inc()
            log.warning("creating Job %s failed: %s", run.kube_name, e)
            return
        self.metrics.dispatched.inc()
        if run.tick is not None:
            self.metrics.dispatch_lateness.observe(max(0.0, self.clock() - run.tick))
        await self._propose(
            "run_status",
            run_id=run.id,
            status=RunStatus.PENDING.value,
            expect=RunStatus.DISPATCHING.value,  # never move a run that is already Running back
            at=int(self.clock() * 1000),
        )

    # -- following Jobs ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            self._status_wake.clear()
            started = self.clock()
            if await self._sync_runs():
                # A sync costs in proportion to the Jobs listed: never spend more than about a
                # fifth of the leader's time on it (thousands of Jobs are polled less often).
                spent = max(0.0, self.clock() - started)
                await asyncio.sleep(max(self.timings.status_poll_seconds, 4 * spent))
            else:
                await self._status_wake.wait()

    @staticmethod
    async def _list_of(
        runs: list[Run], list_fn: Callable[[str], Awaitable[list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """The objects of these runs: by run id while they are few, else every managed one.

        Finished Jobs stay until their TTL (thousands with frequent schedules): listing only
        the active runs' Jobs keeps a poll in proportion to what is running.
        """
        if len(runs) > LIST_BY_RUN_ID_MAX:
            return await list_fn(f"{LABEL_MANAGED_BY}={MANAGED_BY}")
        found: list[dict[str, Any]] = []
        for start in range(0, len(runs), RUN_IDS_PER_SELECTOR):
            chunk = runs[start : start + RUN_IDS_PER_SELECTOR]
            found.extend(await list_fn(runs_selector(r.id for r in chunk)))
        return found

    async def _sync_runs(self) -> bool:
        """Commit what Kubernetes shows for active runs; re-create Jobs left in Dispatching.

        Returns whether any run is still active.
        """
        if self.kube is None:
            return False

        def read(state: State) -> tuple[list[Run], list[Run]]:
            runs = list(state.runs.values())
            active = [r for r in runs if r.status.active]
            canceled = [
                r
                for r in runs
                if r.status is RunStatus.CANCELED
                and r.dispatch_term is not None
                and r.kube_name not in self._deleted_jobs
            ]
            return active, canceled

        active, canceled = self.raft.read(read)
        self.metrics.active_runs.set(len(active))
        for run in canceled:
            try:
                await self.kube.delete_job(run.kube_name)
                self._deleted_jobs.add(run.kube_name)
            except KubeError:
                self.metrics.dispatch_errors.inc()
        if not active:
            return False
        try:
            jobs = {j["metadata"]["name"]: j for j in await self._list_of(active, self.kube.list_jobs)}
            # Pods only tell what a Job's status does not: why a started Job is not running yet.
            waiting = [r for r in active if _job_waiting(jobs.get(r.kube_name))]
            pods = await self._list_of(waiting, self.kube.list_pods) if waiting else []
        except KubeError:
            self.metrics.dispatch_errors.inc()
            return True
        pods_by_job: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            owner = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name")
            if owner:
                pods_by_job.setdefault(owner, []).append(pod)
        now_ms = int(self.clock() * 1000)
        moves: list[dict[str, Any]] = []
        for run in active:
            job = jobs.get(run.kube_name)
            if job is None:
                if run.status is RunStatus.DISPATCHING and run.id not in self._inflight:
                    self._inflight.add(run.id)
                    try:
                        await self._create(run)
                    finally:
                        self._inflight.discard(run.id)
                elif run.status is not RunStatus.DISPATCHING:
                    moves.append(
                        dict(run_id=run.id, status=RunStatus.FAILED.value, at=now_ms, reason="JobNotFound")
                    )
                continue
            status, reason = run_status_from_job(job, pods_by_job.get(run.kube_name, []))
            if status is not run.status:
                moves.append(dict(run_id=run.id, status=status.value, at=now_ms, reason=reason))
        # Proposed together: one Raft entry for a pass's moves (see RaftNode.submit).
        await asyncio.gather(*(self._propose("run_status", **m) for m in moves))
        return True


def _job_waiting(job: dict[str, Any] | None) -> bool:
    """A Job that exists, has not finished and has no ready pod: its pods may say why."""
    if job is None:
        return False
    status = job.get("status") or {}
    finished = any(
        c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
        and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return not finished and not (status.get("ready") or 0) > 0
