"""The leader's status role: follow the Jobs of active runs, re-create those left in Dispatching.

Kubernetes is polled only while runs are active. A run in Dispatching whose Job does not exist
(its leader died between the commit and the create) gets its Job created again under the same
name: the reconcile that a new leader runs once after its barrier, and again on every poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from slimsched import crashpoints
from slimsched.errors import KubeError
from slimsched.jobmanifest import LABEL_MANAGED_BY, MANAGED_BY, run_status_from_job, runs_selector
from slimsched.leader_dispatch import DispatchRole
from slimsched.model import Run, RunStatus
from slimsched.statemachine import State

# Active runs up to which their Jobs are listed by run id. Second 0 of a minute with 100,000
# schedules starts ~250 runs while ~2,500 finished Jobs wait for their TTL: listing those every
# poll was 30 % of the leader's CPU around second 0 (issue 18).
LIST_BY_RUN_ID_MAX = 500
# Run ids per "in (...)" label selector: at most ~7 KiB of URL with 63-character label values
# (kube-apiserver takes up to 1 MiB of request line and headers).
RUN_IDS_PER_SELECTOR = 100
SYNC_RUNS_PER_TURN = 500  # active runs compared with their Jobs per turn of the event loop


class StatusRole(DispatchRole):
    async def _status_loop(self) -> None:
        while True:
            self._status_wake.clear()
            started = self.clock()
            if await self._sync_runs(phase="poll"):
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

    async def _sync_runs(self, *, phase: str) -> bool:
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
        for n, run in enumerate(active, 1):
            if n % SYNC_RUNS_PER_TURN == 0:
                await asyncio.sleep(0)  # thousands of active runs: firing goes on in between
            job = jobs.get(run.kube_name)
            if job is None:
                if run.status is RunStatus.DISPATCHING and run.id not in self._inflight:
                    if crashpoints.broken(crashpoints.Break.RECONCILE):
                        continue
                    # ``phase`` tells the term's first reconcile (right after the barrier) from
                    # a later poll's: a test proves the first one sees what the last term left.
                    self.metrics.reconciled.labels(phase).inc()
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
