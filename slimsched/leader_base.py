"""What the leader's roles share: its parts, its proposals, and the limits of a term.

The leader is split by role (firing ticks, dispatching runs, following Jobs, and the term
itself in ``slimsched.leader``); each role is a class over this base, and ``Leader`` combines
them. Every effect of any role follows a committed command (see ``slimsched.leader``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimsched import jobconfig
from slimsched.duequeue import DueQueue
from slimsched.errors import ApiError
from slimsched.kube import KubeClient
from slimsched.loopinbox import LoopInbox
from slimsched.metrics import Metrics
from slimsched.raft import RaftNode
from slimsched.statemachine import Result, State, encode_command

log = logging.getLogger("slimsched.leader")

STOP_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class LeaderTimings:
    status_poll_seconds: float = 0.5
    blocked_retry_seconds: float = 2.0
    idle_dispatch_check_seconds: float = 30.0
    max_concurrent_proposals: int = 256
    max_concurrent_dispatches: int = 32


class LeaderBase:
    """The state every role reads: Raft, Kubernetes, configuration, and the term's bookkeeping."""

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

    def _free_slots(self, state: State, job_name: str) -> int:
        """NumberParallelJob less the job's active runs and its claims still in flight."""
        active = state.active.get(job_name, 0) + self._claims.get(job_name, 0)
        return self.jobs.job(job_name).number_parallel_job - active
