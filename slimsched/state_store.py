"""The replicated state and the indexes kept with it.

``State`` is what every node holds, mutated in place by the commands (100,000 schedules cannot
be copied per command); the helpers here are the only writers of runs and ledgers, so that the
derived per-job indexes stay right whatever command moved a run. No I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from slimsched.model import Run, RunStatus, Schedule, TickRecord

COMMAND_VERSION = 1
SNAPSHOT_VERSION = 1
RECENT_REQUESTS = 20_000
LEDGER_PER_SCHEDULE = 100
FINISHED_RUNS_PER_JOB = 200


@dataclass(frozen=True)
class Result:
    """What ``apply`` answers: ``code`` is "ok" or an error code; never an exception."""

    code: str
    message: str = ""
    value: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "value": self.value}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Result:
        return Result(code=str(d["code"]), message=str(d.get("message", "")), value=d.get("value"))


OK = Result("ok")


def error(code: str, message: str) -> Result:
    return Result(code=code, message=message)


@dataclass
class Restoring:
    """A restore arriving in parts (``restore_part``): staged here until its last part lands."""

    id: str
    parts: int
    next_part: int
    schedules: dict[str, Schedule] = field(default_factory=dict)
    last_fired: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Restoring:
        return replace(self, schedules=self.schedules.copy(), last_fired=self.last_fired.copy())


@dataclass
class State:
    schedules: dict[str, Schedule] = field(default_factory=dict)
    last_fired: dict[str, int] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    ledger: dict[str, tuple[TickRecord, ...]] = field(default_factory=dict)
    recent: OrderedDict[str, Result] = field(default_factory=OrderedDict)
    levels: dict[str, int] = field(default_factory=dict)  # Raft address -> its announced COMMAND_LEVEL
    restoring: Restoring | None = None
    # What the nodes know of the backups (level 4, see backup_report): replaced, never mutated in
    # place, so a copy shares it. "reports": node -> its newest valid backup's header; "choice":
    # the report a cold start restores; "base": the index of the backup the state was restored from.
    backups: dict[str, Any] = field(default_factory=dict)
    # Derived indexes, kept by put_run/drop_run and rebuilt on decode; never in a snapshot.
    job_schedules: dict[str, dict[str, None]] = field(default_factory=dict)
    job_runs: dict[str, dict[str, None]] = field(default_factory=dict)
    queued: dict[str, dict[str, None]] = field(default_factory=dict)  # per job, FIFO
    active: dict[str, int] = field(default_factory=dict)  # per job: what NumberParallelJob counts
    finished: dict[str, int] = field(default_factory=dict)  # per job: terminal runs kept

    def copy(self) -> State:
        """A consistent copy cheap enough to take inside the Raft thread."""
        return State(
            schedules=self.schedules.copy(),
            last_fired=self.last_fired.copy(),
            runs=self.runs.copy(),
            ledger=self.ledger.copy(),
            recent=self.recent.copy(),
            levels=self.levels.copy(),
            restoring=None if self.restoring is None else self.restoring.copy(),
            backups=self.backups,
            job_schedules={k: v.copy() for k, v in self.job_schedules.items()},
            job_runs={k: v.copy() for k, v in self.job_runs.items()},
            queued={k: v.copy() for k, v in self.queued.items()},
            active=self.active.copy(),
            finished=self.finished.copy(),
        )

    # -- reads used by the API and the leader loops ----------------------------------------------

    def schedules_of(self, job_name: str) -> list[Schedule]:
        return [self.schedules[i] for i in self.job_schedules.get(job_name, {})]

    def runs_of(self, job_name: str) -> list[Run]:
        return [self.runs[i] for i in self.job_runs.get(job_name, {})]

    def queue_of(self, job_name: str) -> list[Run]:
        return [self.runs[i] for i in self.queued.get(job_name, {})]


def _count(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _index(state: State, run: Run, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) ``run`` from the per-job status indexes."""
    job = run.job_name
    if run.status is RunStatus.QUEUED:
        if sign > 0:
            state.queued.setdefault(job, {})[run.id] = None
        else:
            queue = state.queued.get(job, {})
            queue.pop(run.id, None)
            if not queue:
                state.queued.pop(job, None)
    elif run.status.active:
        _count(state.active, job, sign)
    elif run.status.terminal:
        _count(state.finished, job, sign)


def put_run(state: State, run: Run) -> None:
    """Insert or replace a run, keeping every derived index right."""
    old = state.runs.get(run.id)
    if old is not None:
        _index(state, old, -1)
    else:
        state.job_runs.setdefault(run.job_name, {})[run.id] = None
    state.runs[run.id] = run
    _index(state, run, 1)


def drop_run(state: State, run_id: str) -> None:
    run = state.runs.pop(run_id)
    _index(state, run, -1)
    ids = state.job_runs.get(run.job_name, {})
    ids.pop(run_id, None)
    if not ids:
        state.job_runs.pop(run.job_name, None)


# -- commands ------------------------------------------------------------------------------------


def add_run(state: State, run: Run) -> None:
    put_run(state, run)
    prune_finished(state, run.job_name)


def prune_finished(state: State, job_name: str) -> None:
    """Forget the oldest finished runs of a job beyond the ones kept; scans only when needed."""
    excess = state.finished.get(job_name, 0) - FINISHED_RUNS_PER_JOB
    if excess <= 0:
        return
    oldest = [i for i in state.job_runs.get(job_name, {}) if state.runs[i].status.terminal][:excess]
    for run_id in oldest:
        drop_run(state, run_id)


def record_tick(state: State, schedule_id: str, record: TickRecord) -> None:
    ledger = (*state.ledger.get(schedule_id, ()), record)
    state.ledger[schedule_id] = ledger[-LEDGER_PER_SCHEDULE:]
