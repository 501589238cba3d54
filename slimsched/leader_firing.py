"""The leader's firing role: fire each cron tick once, record the ticks it missed.

The cron loop sleeps until the first next tick of its ``DueQueue`` (woken early when a schedule
changes), plans each due schedule with ``cronplan.plan`` and proposes one ``fire_tick`` per
tick, which the state machine accepts once per tick (a repeat, from any leader, is a
"duplicate"). When the run could start at once, its FireTick also claims it (Dispatching) and
its Job is created once that commit is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, replace
from typing import Any

from slimsched import codec, crashpoints, cronplan, jobconfig
from slimsched.errors import ApiError
from slimsched.jobmanifest import kube_job_name
from slimsched.leader_base import log
from slimsched.leader_dispatch import DispatchRole
from slimsched.model import ConcurrencyPolicy, Run, RunStatus, Schedule, TickOutcome
from slimsched.statemachine import Result, State, encode_command

REFRESH_CHUNK = 2000  # schedules planned per turn of the event loop when all are (a new term)
FIRE_CHUNK = 64  # due schedules planned, and their ticks proposed, per turn of the event loop


@dataclass(frozen=True)
class _Due:
    schedule: Schedule
    last_fired: int | None
    active_runs: tuple[Run, ...]
    plan: cronplan.TickPlan | None = None  # set by _refresh, so that _fire does not plan again


class FiringRole(DispatchRole):
    def _plan_for(self, s: Schedule, last_fired: int | None, now: int) -> cronplan.TickPlan | None:
        if s.paused:
            return None
        try:
            plan = cronplan.plan(
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
        if plan.missed and (crashpoints.broken(crashpoints.Break.MISSED_TICKS)):
            return replace(plan, missed=())  # test only: older ticks vanish unrecorded
        if plan.missed and plan.due is not None and crashpoints.broken(crashpoints.Break.CATCH_UP):
            return replace(plan, due=None, missed=(*plan.missed, plan.due))  # test only: none fires
        return plan

    async def _refresh(self, sids: Iterable[str] | None, now: int) -> AsyncGenerator[list[_Due], None]:
        """Recompute heap entries (all when ``sids`` is None); yield, chunk by chunk, those with work now.

        Chunks yield to the event loop in between, so a leader of 100,000 schedules keeps
        answering (and its Raft thread keeps the lock) while it plans them all, and the ticks
        of one chunk are proposed (and their Jobs created) while the next chunk is planned.
        """
        if sids is None:
            ids = self.raft.read(lambda st: list(st.schedules))
            self._due.clear()
            size = REFRESH_CHUNK
        else:
            ids = list(sids)
            for sid in ids:
                self._due.discard(sid)
            size = FIRE_CHUNK
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]

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

            work: list[_Due] = []
            for due in self.raft.read(read):
                plan = self._plan_for(due.schedule, due.last_fired, now)
                if plan is None:
                    continue
                if plan.due is not None or plan.missed:
                    work.append(_Due(due.schedule, due.last_fired, due.active_runs, plan))
                self._due.put(due.schedule.id, plan.next_tick)
            if work:
                yield work
            if start + size < len(ids):
                await asyncio.sleep(0)

    async def _cron_loop(self) -> None:
        sem = asyncio.Semaphore(self.timings.max_concurrent_proposals)
        while True:
            now = int(self.clock())
            if self._rebuild:
                self._rebuild = False
                self._touched.clear()
                sids: set[str] | None = None
            else:
                sids = self._due.pop_due(now) | self._touched
                self._touched.clear()
            fired: list[asyncio.Task[None]] = []
            try:
                if sids is None or sids:
                    async with contextlib.aclosing(self._refresh(sids, now)) as chunks:
                        async for work in chunks:
                            # They build and propose their FireTicks in the loop's next turn (one
                            # Raft entry) while this loop plans the next chunk.
                            fired.extend(asyncio.ensure_future(self._fire(d, now, sem)) for d in work)
                            # Fired ticks advance last_fired: their next ticks are recomputed.
                            self._touched.update(d.schedule.id for d in work)
                if fired:
                    await asyncio.gather(*fired)
            finally:
                for task in fired:  # the loop ends (its term did, or a _fire failed): so do they
                    task.cancel()
            if fired:
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
                payload = encode_command("fire_tick", **fields)
                try:
                    result = await self.raft.submit(payload)
                    if crashpoints.broken(crashpoints.Break.REPEAT_FIRE_TICK):
                        again = await self.raft.submit(payload)  # test only: a second delivery
                        log.warning(
                            "TEST: fire_tick %s@%s proposed again: %s", s.id, fields["tick"], again.code
                        )
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
            crashpoints.reach(crashpoints.Point.FIRE_COMMITTED)
            await self._create(run)  # which holds the dispatch semaphore around the create only
        finally:
            self._inflight.discard(run.id)
