"""The leader's dispatch role: start queued runs within their job's limits, create their Jobs.

A run is started by a committed ``start_dispatch`` (Queued -> Dispatching, with the term and
commit index as a fencing token); only then is its Job created, under a name derived from the
run id, so a second create by any leader is an HTTP 409, counted as done. Then ``run_status``
Pending is committed, conditional on the run still being Dispatching.
"""

from __future__ import annotations

import asyncio
import contextlib
from itertools import islice

from slimsched import crashpoints
from slimsched.errors import KubeError
from slimsched.jobmanifest import build_job_manifest
from slimsched.leader_base import LeaderBase, log
from slimsched.model import Run, RunStatus
from slimsched.statemachine import State

DISPATCH_BATCH = 256  # queued runs a dispatch pass reads per job, beyond those in flight


class DispatchRole(LeaderBase):
    async def _dispatch_loop(self) -> None:
        # Starts run as tasks of this group: a run queued while earlier ones wait on Kubernetes
        # is started at once instead of after the whole previous batch.
        async with asyncio.TaskGroup() as starts:
            while True:
                self._dispatch_wake.clear()
                blocked = await self._dispatch_pass(starts)
                timeout = (
                    self.timings.blocked_retry_seconds
                    if blocked
                    else self.timings.idle_dispatch_check_seconds
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._dispatch_wake.wait()

    async def _dispatch_pass(self, starts: asyncio.TaskGroup) -> bool:
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
                starts.create_task(self._start(run), name=f"dispatch-{run.id}")
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

    async def _start(self, run: Run) -> None:
        # The commits are not under the semaphore: they are batched into Raft entries anyway,
        # and a slot held across them let only max_concurrent_dispatches Jobs a commit
        # round trip go out (issue 18: 8 rounds for second 0's 246 ticks at 100,000 schedules).
        try:
            status = self.raft.status()
            result = await self._propose(
                "start_dispatch", run_id=run.id, term=status.term, index=status.commit_index
            )
            if result is None or not result.ok:
                return
            claimed = self.raft.read(lambda s: s.runs.get(run.id))
            if claimed is not None and claimed.status is RunStatus.DISPATCHING:
                crashpoints.reach(crashpoints.Point.DISPATCH_COMMITTED)
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
        if crashpoints.broken(crashpoints.Break.JOB_NAME_PER_TERM):  # test only
            term = self.raft.status().term
            manifest["metadata"] = {**manifest["metadata"], "name": f"{run.kube_name[:50]}-t{term}"}
        try:
            async with self._dispatch_sem:  # Kubernetes creates in flight, not the commits around them
                created = await self.kube.create_job(manifest)
        except KubeError as e:
            self.metrics.dispatch_errors.inc()
            log.warning("creating Job %s failed: %s", run.kube_name, e)
            return
        crashpoints.reach(crashpoints.Point.JOB_CREATED)
        if created:
            self.metrics.dispatched.inc()
        else:  # 409: an earlier attempt, by this leader or another, created it
            self.metrics.jobs_already_existed.inc()
        if run.tick is not None:
            self.metrics.dispatch_lateness.observe(max(0.0, self.clock() - run.tick))
        await self._propose(
            "run_status",
            run_id=run.id,
            status=RunStatus.PENDING.value,
            expect=RunStatus.DISPATCHING.value,  # never move a run that is already Running back
            at=int(self.clock() * 1000),
        )
