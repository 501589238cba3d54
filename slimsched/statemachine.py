"""The replicated state machine: one ``apply`` over a closed set of versioned commands.

Every node runs the same commands in the same order through ``apply``; nothing here reads a
clock, draws a random number, does I/O or raises. The proposer puts times and ids into the
command. A command carrying a request id that was applied recently returns the stored result
again, so a client or the Raft bridge may retry a command whose fate it did not learn (pysyncobj
has no client sessions: an entry reported as failed may still be committed).

The state is mutated in place (100,000 schedules cannot be copied per command); a snapshot takes
a shallow copy of the top-level maps, whose values are frozen dataclasses.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from slimsched import codec
from slimsched.model import ConcurrencyPolicy, Run, RunStatus, Schedule, TickOutcome, TickRecord

COMMAND_VERSION = 1
SNAPSHOT_VERSION = 1
# Which command types a node applies. A release that adds a type raises it; a node records its
# level with a ``hello`` and the leader proposes the new types only once every member has
# announced it, since a node of an earlier release would answer them "unknown" and diverge.
# Level 2 added ``hello`` and ``batch``; level 3 ``restore_part``; level 4 ``trigger_schedule`` and
# ``backfill``, ``backup_report`` and ``backup_choice``.
COMMAND_LEVEL = 4
LEVEL_OF_TYPE = {
    "hello": 2,
    "batch": 2,
    "restore_part": 3,
    "trigger_schedule": 4,
    "backfill": 4,
    "backup_report": 4,
    "backup_choice": 4,
}
MAX_BATCH_COMMANDS = 1024
RECENT_REQUESTS = 20_000
LEDGER_PER_SCHEDULE = 100
FINISHED_RUNS_PER_JOB = 200
MAX_BACKFILL_TICKS = 1000  # ticks one ``backfill`` may carry: bounds its entry and its apply time
MANUAL_REASON = "manual"  # the ledger reason of a run started by ``trigger_schedule``
BACKFILL_REASON = "backfill"  # the ledger reason of a tick fired by ``backfill``

# Test only, set at node start from SLIMSCHED_TEST_BREAK_FIRE_DEDUP: skip the FireTick duplicate
# check (a repeated tick is accepted again), so that ``slimsched chaos`` can prove its checker fails.
BREAK_FIRE_DEDUP = False


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
    # What the nodes know of the backups (level 4, see _backup_report): replaced, never mutated in
    # place, so a copy shares it. "reports": node -> its newest valid backup's header; "choice":
    # the report a cold start restores; "base": the index of the backup the state was restored from.
    backups: dict[str, Any] = field(default_factory=dict)
    # Derived indexes, kept by _put_run/_drop_run and rebuilt on decode; never in a snapshot.
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


def _put_run(state: State, run: Run) -> None:
    """Insert or replace a run, keeping every derived index right."""
    old = state.runs.get(run.id)
    if old is not None:
        _index(state, old, -1)
    else:
        state.job_runs.setdefault(run.job_name, {})[run.id] = None
    state.runs[run.id] = run
    _index(state, run, 1)


def _drop_run(state: State, run_id: str) -> None:
    run = state.runs.pop(run_id)
    _index(state, run, -1)
    ids = state.job_runs.get(run.job_name, {})
    ids.pop(run_id, None)
    if not ids:
        state.job_runs.pop(run.job_name, None)


# -- commands ------------------------------------------------------------------------------------


def encode_command(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": COMMAND_VERSION, "type": kind, **fields})


def _create_schedule(state: State, cmd: dict[str, Any]) -> Result:
    sched = codec.schedule_from_dict(cmd["schedule"])
    if sched.id in state.schedules:
        return error("conflict", f"schedule {sched.id} already exists")
    state.schedules[sched.id] = sched
    state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
    return Result("ok", value={"Id": sched.id})


def _find_schedule(state: State, cmd: dict[str, Any]) -> Schedule | Result:
    sched = state.schedules.get(str(cmd["schedule_id"]))
    if sched is None or sched.job_name != cmd["job_name"]:
        return error("not_found", f"no schedule {cmd['schedule_id']} for job {cmd['job_name']}")
    return sched


def _delete_schedule(state: State, cmd: dict[str, Any]) -> Result:
    found = _find_schedule(state, cmd)
    if isinstance(found, Result):
        return found
    del state.schedules[found.id]
    ids = state.job_schedules.get(found.job_name, {})
    ids.pop(found.id, None)
    if not ids:
        state.job_schedules.pop(found.job_name, None)
    state.last_fired.pop(found.id, None)
    state.ledger.pop(found.id, None)
    return Result("ok", value={"Id": found.id})


def _set_paused(state: State, cmd: dict[str, Any]) -> Result:
    found = _find_schedule(state, cmd)
    if isinstance(found, Result):
        return found
    paused = cmd["paused"]
    if not isinstance(paused, bool):
        return error("invalid", "paused must be a boolean")
    at = cmd.get("at")
    if at is not None and not isinstance(at, int):
        return error("invalid", "at must be an integer")
    state.schedules[found.id] = replace(found, paused=paused)
    if found.paused and not paused and at is not None:
        # Ticks that fell while paused are not owed: resuming starts from the resume time.
        state.last_fired[found.id] = max(state.last_fired.get(found.id, -1), at // 1000)
    return Result("ok", value={"Id": found.id, "Paused": paused})


def _add_run(state: State, run: Run) -> None:
    _put_run(state, run)
    _prune_finished(state, run.job_name)


def _prune_finished(state: State, job_name: str) -> None:
    """Forget the oldest finished runs of a job beyond the ones kept; scans only when needed."""
    excess = state.finished.get(job_name, 0) - FINISHED_RUNS_PER_JOB
    if excess <= 0:
        return
    oldest = [i for i in state.job_runs.get(job_name, {}) if state.runs[i].status.terminal][:excess]
    for run_id in oldest:
        _drop_run(state, run_id)


def _enqueue_run(state: State, cmd: dict[str, Any]) -> Result:
    run = codec.run_from_dict(cmd["run"])
    if run.id in state.runs:
        return error("conflict", f"run {run.id} already exists")
    if run.status is not RunStatus.QUEUED:
        return error("invalid", "a new run must be Queued")
    _add_run(state, run)
    return Result("ok", value={"Id": run.id})


def _cancel_run(state: State, cmd: dict[str, Any]) -> Result:
    run = state.runs.get(str(cmd["run_id"]))
    if run is None or run.job_name != cmd["job_name"]:
        return error("not_found", f"no run {cmd['run_id']} for job {cmd['job_name']}")
    previous = run.status
    if not previous.terminal:
        _put_run(
            state,
            replace(run, status=RunStatus.CANCELED, finished_at_ms=int(cmd["at"]), reason="DeletedByApi"),
        )
    return Result("ok", value={"Id": run.id, "PreviousStatus": previous.value, "KubeName": run.kube_name})


def _barrier(state: State, cmd: dict[str, Any]) -> Result:
    return OK


def _record_tick(state: State, schedule_id: str, record: TickRecord) -> None:
    ledger = (*state.ledger.get(schedule_id, ()), record)
    state.ledger[schedule_id] = ledger[-LEDGER_PER_SCHEDULE:]


def _fire_tick(state: State, cmd: dict[str, Any]) -> Result:
    """Record a cron tick exactly once: accepted only if newer than the last fired tick."""
    schedule_id = str(cmd["schedule_id"])
    tick = cmd["tick"]
    at = cmd["at"]
    if not isinstance(tick, int) or not isinstance(at, int):
        return error("invalid", "tick and at must be integers")
    sched = state.schedules.get(schedule_id)
    if sched is None:
        return error("not_found", f"no schedule {schedule_id}")
    handled = state.last_fired.get(schedule_id, -1)
    if tick <= handled and not BREAK_FIRE_DEDUP:
        return error("duplicate", f"tick {tick} of schedule {schedule_id} was already handled")
    outcome = TickOutcome(cmd["outcome"])
    # The proposer's list of missed ticks may be stale (a deposed leader woken by SIGCONT proposes
    # from its old view): ticks already handled are in the ledger and are never recorded again.
    missed = [m for m in (int(x) for x in cmd.get("missed", [])) if m > handled]
    run = codec.run_from_dict(cmd["run"]) if outcome is TickOutcome.FIRED else None
    if run is not None and run.id in state.runs and not BREAK_FIRE_DEDUP:
        return error("conflict", f"run {run.id} already exists")
    if run is not None and run.status is not RunStatus.QUEUED:
        # Dispatching: the leader claimed the run in its FireTick (one commit instead of two).
        if run.status is not RunStatus.DISPATCHING:
            return error("invalid", "a fired run must be Queued or Dispatching")
        if run.dispatch_term is None or run.dispatch_index is None:
            return error("invalid", "a run claimed in its FireTick needs its dispatch term and index")
    state.last_fired[schedule_id] = tick
    if run is not None:
        _add_run(state, run)
    for m in missed:
        _record_tick(state, schedule_id, TickRecord(m, TickOutcome.MISSED, at, reason="deadline"))
    lateness = max(0, at - tick * 1000)
    run_id = run.id if run is not None else None
    _record_tick(
        state,
        schedule_id,
        TickRecord(tick, outcome, at, run_id=run_id, lateness_ms=lateness, reason=cmd.get("reason")),
    )
    return Result("ok", value={"RunId": run_id, "Outcome": outcome.value})


def _trigger_schedule(state: State, cmd: dict[str, Any]) -> Result:
    """Start one run of a schedule now, outside its cron ticks ("trigger now").

    The run id is derived by the proposer from the request id, so a retry of the same request,
    even after the request-id window, finds its run and answers it again instead of a second run.
    The schedule's last fired tick does not move: a manual run is not a cron tick. The ledger
    records it as fired with reason "manual" at the trigger's second.
    """
    found = _find_schedule(state, cmd)
    if isinstance(found, Result):
        return found
    at = cmd["at"]
    if not isinstance(at, int):
        return error("invalid", "at must be an integer")
    run = codec.run_from_dict(cmd["run"])
    if run.job_name != found.job_name or run.schedule_id != found.id:
        return error("invalid", "a triggered run must belong to the schedule's job and name the schedule")
    if run.status is not RunStatus.QUEUED or run.tick is not None:
        return error("invalid", "a triggered run must be Queued and carry no cron tick")
    if run.id in state.runs:
        return Result("ok", value={"RunId": run.id, "Duplicate": True})
    _add_run(state, run)
    _record_tick(
        state,
        found.id,
        TickRecord(at // 1000, TickOutcome.FIRED, at, run_id=run.id, lateness_ms=0, reason=MANUAL_REASON),
    )
    return Result("ok", value={"RunId": run.id, "Duplicate": False})


def _backfill(state: State, cmd: dict[str, Any]) -> Result:
    """Fire the ticks of a past time range, each at most once, under a concurrency policy.

    The proposer lists the ticks (cron planning is not done in ``apply``) with their Job names;
    each run's id is the one a cron FireTick gives that tick (``{schedule}-{tick}``), so a tick
    fired by cron or by an earlier backfill whose run or fired ledger record is still held is not
    fired again. Ticks later than the schedule's last handled tick (its creation time if it never
    fired) are left to the cron loop, which owns them (``NotYetHandled``), so a backfilled run
    never collides with a FireTick to come. Policies: Allow fires every tick; Forbid fires only
    the first, and none while a run of the schedule is queued or active; Replace cancels the
    schedule's active runs and fires only the last. Ticks not fired are recorded as skipped.
    """
    found = _find_schedule(state, cmd)
    if isinstance(found, Result):
        return found
    at, ticks = cmd["at"], cmd["ticks"]
    if not isinstance(at, int) or not isinstance(ticks, list):
        return error("invalid", "at must be an integer and ticks a list")
    if len(ticks) > MAX_BACKFILL_TICKS:
        return error("invalid", f"a backfill holds at most {MAX_BACKFILL_TICKS} ticks")
    if not all(
        isinstance(p, list) and len(p) == 2 and type(p[0]) is int and isinstance(p[1], str) for p in ticks
    ):
        return error("invalid", "each backfill tick must be [tick, Job name]")
    pairs: list[tuple[int, str]] = [(p[0], p[1]) for p in ticks]
    if any(a[0] >= b[0] for a, b in itertools.pairwise(pairs)):
        return error("invalid", "backfill ticks must be in increasing order")
    policy = ConcurrencyPolicy(cmd["policy"])
    spec = codec.spec_from_dict(cmd["spec"])
    handled = state.last_fired.get(found.id, found.created_at_ms // 1000)
    fired_before = {
        t.tick
        for t in state.ledger.get(found.id, ())
        if t.outcome is TickOutcome.FIRED and t.reason != MANUAL_REASON
    }
    pending = [t for t, _ in pairs if t > handled]
    already = [t for t, _ in pairs if t <= handled and (f"{found.id}-{t}" in state.runs or t in fired_before)]
    done = set(already)
    candidates = [(t, k) for t, k in pairs if t <= handled and t not in done]
    active = [r for r in state.runs_of(found.job_name) if r.schedule_id == found.id and not r.status.terminal]
    skip_reason = ""
    if policy is ConcurrencyPolicy.FORBID:
        fire = [] if active else candidates[:1]
        skip_reason = "Forbid: a run of the schedule is queued or active"
    elif policy is ConcurrencyPolicy.REPLACE:
        fire = candidates[-1:]
        skip_reason = "Replace: superseded by a later backfilled tick"
    else:
        fire = candidates
    firing = {t for t, _ in fire}
    if policy is ConcurrencyPolicy.REPLACE and fire:
        for r in active:
            _put_run(state, replace(r, status=RunStatus.CANCELED, finished_at_ms=at, reason="Replaced"))
    records: list[TickRecord] = []
    for t, kube_name in candidates:
        if t in firing:
            run = Run(
                id=f"{found.id}-{t}",
                job_name=found.job_name,
                spec=spec,
                status=RunStatus.QUEUED,
                queued_at_ms=at,
                kube_name=kube_name,
                schedule_id=found.id,
                tick=t,
            )
            _put_run(state, run)
            records.append(TickRecord(t, TickOutcome.FIRED, at, run_id=run.id, reason=BACKFILL_REASON))
        else:
            records.append(TickRecord(t, TickOutcome.SKIPPED, at, reason=f"{BACKFILL_REASON}: {skip_reason}"))
    if records:  # one ledger copy for the whole range (it keeps the newest LEDGER_PER_SCHEDULE)
        state.ledger[found.id] = (*state.ledger.get(found.id, ()), *records)[-LEDGER_PER_SCHEDULE:]
    _prune_finished(state, found.job_name)
    return Result(
        "ok",
        value={
            "Fired": sorted(firing),
            "Skipped": [t for t, _ in candidates if t not in firing],
            "AlreadyFired": already,
            "NotYetHandled": pending,
        },
    )


def _start_dispatch(state: State, cmd: dict[str, Any]) -> Result:
    run = state.runs.get(str(cmd["run_id"]))
    if run is None:
        return error("not_found", f"no run {cmd['run_id']}")
    if run.status is not RunStatus.QUEUED:
        return error("conflict", f"run {run.id} is {run.status.value}, not Queued")
    _put_run(
        state,
        replace(
            run,
            status=RunStatus.DISPATCHING,
            dispatch_term=int(cmd["term"]),
            dispatch_index=int(cmd["index"]),
        ),
    )
    return OK


def _run_status(state: State, cmd: dict[str, Any]) -> Result:
    """Move a dispatched run to a status observed on Kubernetes; terminal runs stay put."""
    run = state.runs.get(str(cmd["run_id"]))
    if run is None:
        return error("not_found", f"no run {cmd['run_id']}")
    status = RunStatus(cmd["status"])
    if run.status.terminal:
        return error("conflict", f"run {run.id} already ended as {run.status.value}")
    expect = cmd.get("expect")
    if expect is not None and run.status.value != expect:
        # A conditional move ("Dispatched": Dispatching -> Pending) that another update overtook.
        return error("conflict", f"run {run.id} is {run.status.value}, not {expect}")
    if status is RunStatus.QUEUED:
        return error("invalid", "a run cannot go back to Queued")
    at = int(cmd["at"])
    _put_run(
        state,
        replace(
            run,
            status=status,
            started_at_ms=run.started_at_ms if run.started_at_ms is not None else at,
            finished_at_ms=at if status.terminal else None,
            reason=cmd.get("reason", run.reason),
        ),
    )
    if status.terminal:
        _prune_finished(state, run.job_name)
    return OK


_NOT_EMPTY = "state already holds schedules; restore refused"


def _land(
    state: State, schedules: Iterable[Schedule], last_fired: dict[str, int], base_index: object = None
) -> Result:
    if isinstance(base_index, int) and not isinstance(base_index, bool) and base_index >= 0:
        # Indexes of backups written from now on continue from the restored one's (policy.py).
        state.backups = {**state.backups, "base": base_index, "choice": None}
    n = 0
    for sched in schedules:
        state.schedules[sched.id] = sched
        state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
        n += 1
    state.last_fired.update({k: v for k, v in last_fired.items() if k in state.schedules})
    return Result("ok", value={"Restored": n})


def _restore_content(cmd: dict[str, Any]) -> tuple[list[Schedule], dict[str, int]]:
    """The schedules and last fired ticks a ``restore`` or ``restore_part`` carries, decoded."""
    schedules = [codec.schedule_from_dict(s) for s in cmd["schedules"]]
    return schedules, {str(k): int(v) for k, v in cmd.get("last_fired", {}).items()}


def _restore(state: State, cmd: dict[str, Any]) -> Result:
    """Load schedules from a backup, only into a state that holds none."""
    if state.schedules:
        return error("conflict", _NOT_EMPTY)
    schedules, last_fired = _restore_content(cmd)
    state.restoring = None
    return _land(state, schedules, last_fired, cmd.get("base_index"))


def _restore_part(state: State, cmd: dict[str, Any]) -> Result:
    """One part of a restore split so that no entry holds a Raft thread for long.

    Parts are staged in ``state.restoring`` and land together with the last one, so a restore
    is all or nothing, as ``restore`` is. Part 0 starts a restore (and drops one left unfinished
    by an earlier leader); a later part must follow the parts applied. Every part but the last
    answers a bare "ok", so an unfinished restore still looks like a cold start to the next
    leader, which restores again. Refused when the state holds schedules, which also drops what
    was staged: a schedule created meanwhile wins over the backup.
    """
    restore_id, part, parts = cmd["restore"], cmd["part"], cmd["parts"]
    if not isinstance(restore_id, str) or not restore_id:
        return error("invalid", "restore_part needs a restore id")
    if not isinstance(part, int) or not isinstance(parts, int) or not 0 <= part < parts:
        return error("invalid", "restore_part needs 0 <= part < parts")
    if state.schedules:
        state.restoring = None
        return error("conflict", _NOT_EMPTY)
    staged = state.restoring
    if part == 0:
        staged = Restoring(id=restore_id, parts=parts, next_part=0)
    elif staged is None or (staged.id, staged.parts, staged.next_part) != (restore_id, parts, part):
        return error(
            "interrupted", f"part {part} of restore {restore_id!r} does not follow the parts applied"
        )
    schedules, last_fired = _restore_content(cmd)
    for sched in schedules:
        staged.schedules[sched.id] = sched
    staged.last_fired.update(last_fired)
    staged.next_part = part + 1
    state.restoring = staged
    if staged.next_part < parts:
        return OK
    state.restoring = None
    return _land(state, staged.schedules.values(), staged.last_fired, cmd.get("base_index"))


def _hello(state: State, cmd: dict[str, Any]) -> Result:
    """A node announces the command level of its release."""
    node, level = cmd["node"], cmd["level"]
    if not isinstance(node, str) or not node or not isinstance(level, int) or level < 1:
        return error("invalid", "hello needs a node address and a level >= 1")
    state.levels[node] = level
    return OK


def _backup_header(cmd: dict[str, Any]) -> dict[str, Any] | None:
    node, index, sha, count = cmd["node"], cmd["raft_index"], cmd["payload_sha256"], cmd["schedule_count"]
    if not isinstance(node, str) or not node or not isinstance(sha, str):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (index, count)):
        return None
    return {"node": node, "raft_index": index, "payload_sha256": sha, "schedule_count": count}


def _backup_report(state: State, cmd: dict[str, Any]) -> Result:
    """A node reports the newest valid backup it holds (count 0 and no hash: none), so that a
    cold start restores the best backup of the whole cluster, not the leader's own, and a node
    whose backup is behind the others' can tell. Answers a bare "ok": no activity for a cold start.
    """
    header = _backup_header(cmd)
    if header is None:
        return error(
            "invalid", "backup_report needs a node, a raft_index, a payload_sha256 and a schedule_count"
        )
    state.backups = {**state.backups, "reports": {**state.backups.get("reports", {}), header["node"]: header}}
    return OK


def _backup_choice(state: State, cmd: dict[str, Any]) -> Result:
    """The leader of a cold-started cluster names the reported backup to restore; the node that
    holds it proposes the restore. Refused once the state holds schedules."""
    header = _backup_header(cmd)
    if header is None:
        return error(
            "invalid", "backup_choice needs a node, a raft_index, a payload_sha256 and a schedule_count"
        )
    if state.schedules:
        return error("conflict", _NOT_EMPTY)
    state.backups = {**state.backups, "choice": header}
    return OK


def applied_by_all(state: State, members: Iterable[str], kind: str) -> bool:
    """Every member announced a level that applies commands of type ``kind``."""
    return all(state.levels.get(m, 1) >= LEVEL_OF_TYPE.get(kind, 1) for m in members)


# How every batch entry begins (``encode_batch``): how its results are told from other entries'.
_BATCH_HEAD = b'{"v":%d,"type":"batch"' % COMMAND_VERSION


def batch_results(payload: bytes, result: Result) -> list[Result] | None:
    """The per-command results of a ``batch`` entry that was applied; None for any other entry."""
    if not result.ok or not payload.startswith(_BATCH_HEAD):
        return None
    results = (result.value or {}).get("Results")
    return results if isinstance(results, list) else None


def encode_batch(payloads: list[bytes]) -> bytes:
    """One entry carrying commands already encoded, applied in order as if each were its own."""
    return _BATCH_HEAD + b',"commands":[' + b",".join(payloads) + b"]}"


Handler = Callable[[State, dict[str, Any]], Result]

HANDLERS: dict[str, Handler] = {
    "create_schedule": _create_schedule,
    "delete_schedule": _delete_schedule,
    "set_paused": _set_paused,
    "enqueue_run": _enqueue_run,
    "cancel_run": _cancel_run,
    "barrier": _barrier,
    "fire_tick": _fire_tick,
    "start_dispatch": _start_dispatch,
    "run_status": _run_status,
    "restore": _restore,
    "restore_part": _restore_part,
    "hello": _hello,
    "trigger_schedule": _trigger_schedule,
    "backfill": _backfill,
    "backup_report": _backup_report,
    "backup_choice": _backup_choice,
}


@dataclass(frozen=True)
class Applied:
    """What one entry did: its result, and every command it held, decoded, with that command's own
    result (a batch's commands in order; one pair for any other entry; none when the entry was not
    JSON or a batch was refused whole). Hooks read the commands here instead of parsing again."""

    result: Result
    commands: tuple[tuple[object, Result], ...]


def apply(state: State, payload: bytes, *, level: int = COMMAND_LEVEL) -> Result:
    """Apply one replicated command. Never raises; a bad command leaves the state untouched.

    A ``batch`` answers ``ok`` with ``value["Results"]``, one Result per command, in order.
    ``level`` below COMMAND_LEVEL applies as a node of that earlier release would (tests).
    """
    return apply_entry(state, payload, level=level).result


def apply_entry(state: State, payload: bytes, *, level: int = COMMAND_LEVEL) -> Applied:
    """``apply``, also answering each command the entry held, as decoded, with its result."""
    try:
        cmd = orjson.loads(payload)
    except (orjson.JSONDecodeError, TypeError):
        return Applied(error("invalid", "command is not JSON"), ())
    if isinstance(cmd, dict) and cmd.get("type") == "batch" and level >= LEVEL_OF_TYPE["batch"]:
        commands = cmd.get("commands")
        if cmd.get("v") != COMMAND_VERSION or not isinstance(commands, list):
            return Applied(error("invalid", "a batch needs version 1 and a list of commands"), ())
        if len(commands) > MAX_BATCH_COMMANDS:
            return Applied(error("invalid", f"a batch holds at most {MAX_BATCH_COMMANDS} commands"), ())
        results = [
            error("invalid", "a batch cannot hold a batch")
            if isinstance(c, dict) and c.get("type") == "batch"
            else _apply_command(state, c, level)
            for c in commands
        ]
        return Applied(Result("ok", value={"Results": results}), tuple(zip(commands, results, strict=True)))
    result = _apply_command(state, cmd, level)
    return Applied(result, ((cmd, result),))


def _apply_command(state: State, cmd: object, level: int) -> Result:
    if not isinstance(cmd, dict):
        return error("invalid", "command is not an object")
    if cmd.get("v") != COMMAND_VERSION:
        return error("invalid", f"unsupported command version {cmd.get('v')!r}")
    kind = cmd.get("type")
    handler = HANDLERS.get(kind)  # type: ignore[arg-type]
    if handler is None or LEVEL_OF_TYPE.get(kind, 1) > level:  # type: ignore[arg-type]
        return error("invalid", f"unknown command type {kind!r}")
    rid = cmd.get("rid")
    if rid is not None:
        if not isinstance(rid, str):
            return error("invalid", "rid must be a string")
        seen = state.recent.get(rid)
        if seen is not None:
            return seen
    try:
        # Handlers validate before they mutate, so an exception here means nothing changed.
        result = handler(state, cmd)
    except Exception as e:  # apply must never raise: a raising entry stalls pysyncobj for good
        result = error("invalid", f"malformed {kind} command: {type(e).__name__}: {e}")
    if rid is not None:
        state.recent[rid] = result
        while len(state.recent) > RECENT_REQUESTS:
            state.recent.popitem(last=False)
    return result


# -- snapshots -----------------------------------------------------------------------------------


def snapshot_to_dict(state: State) -> dict[str, Any]:
    return {
        "v": SNAPSHOT_VERSION,
        "schedules": [codec.schedule_to_dict(s) for s in state.schedules.values()],
        "last_fired": state.last_fired,
        "runs": [codec.run_to_dict(r) for r in state.runs.values()],
        "ledger": {k: [codec.tick_to_dict(t) for t in v] for k, v in state.ledger.items()},
        "recent": [[k, v.to_dict()] for k, v in state.recent.items()],
        "levels": state.levels,
        **({} if state.restoring is None else {"restoring": _restoring_to_dict(state.restoring)}),
        **({"backups": state.backups} if state.backups else {}),
    }


def _restoring_to_dict(r: Restoring) -> dict[str, Any]:
    return {
        "id": r.id,
        "parts": r.parts,
        "next_part": r.next_part,
        "schedules": [codec.schedule_to_dict(s) for s in r.schedules.values()],
        "last_fired": r.last_fired,
    }


def _restoring_from_dict(d: dict[str, Any]) -> Restoring:
    schedules = (codec.schedule_from_dict(s) for s in d["schedules"])
    return Restoring(
        id=str(d["id"]),
        parts=int(d["parts"]),
        next_part=int(d["next_part"]),
        schedules={s.id: s for s in schedules},
        last_fired={str(k): int(v) for k, v in d["last_fired"].items()},
    )


SNAPSHOT_CHUNK = 250  # ~0.5 ms of encoding a piece: the writer yields the GIL between pieces


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), SNAPSHOT_CHUNK):
        yield items[start : start + SNAPSHOT_CHUNK]


def _json_list(items: list[Any], encode: Callable[[Any], Any]) -> Iterator[bytes]:
    yield b"["
    for n, chunk in enumerate(_chunks(items)):
        # orjson holds the GIL for a whole call: small calls let the Raft thread run between them.
        yield (b"," if n else b"") + orjson.dumps([encode(x) for x in chunk])[1:-1]
    yield b"]"


def _json_object(items: list[tuple[str, Any]], encode: Callable[[Any], Any]) -> Iterator[bytes]:
    yield b"{"
    for n, chunk in enumerate(_chunks(items)):
        yield (b"," if n else b"") + orjson.dumps({k: encode(v) for k, v in chunk})[1:-1]
    yield b"}"


def encode_snapshot_chunks(state: State) -> Iterator[bytes]:
    """``encode_snapshot`` as pieces, each encoded by a short orjson call (for 100,000 schedules)."""
    yield b'{"v":%d,"schedules":' % SNAPSHOT_VERSION
    yield from _json_list(list(state.schedules.values()), codec.schedule_to_dict)
    yield b',"last_fired":'
    yield from _json_object(list(state.last_fired.items()), lambda v: v)
    yield b',"runs":'
    yield from _json_list(list(state.runs.values()), codec.run_to_dict)
    yield b',"ledger":'
    yield from _json_object(list(state.ledger.items()), lambda v: [codec.tick_to_dict(t) for t in v])
    yield b',"recent":'
    yield from _json_list(list(state.recent.items()), lambda kv: [kv[0], kv[1].to_dict()])
    yield b',"levels":' + orjson.dumps(state.levels)
    if state.restoring is not None:
        r = state.restoring
        yield b',"restoring":{"id":%b,"parts":%d,"next_part":%d,"schedules":' % (
            orjson.dumps(r.id),
            r.parts,
            r.next_part,
        )
        yield from _json_list(list(r.schedules.values()), codec.schedule_to_dict)
        yield b',"last_fired":'
        yield from _json_object(list(r.last_fired.items()), lambda v: v)
        yield b"}"
    if state.backups:
        yield b',"backups":' + orjson.dumps(state.backups)
    yield b"}"


def encode_snapshot(state: State) -> bytes:
    return b"".join(encode_snapshot_chunks(state))


def snapshot_from_dict(d: dict[str, Any]) -> State:
    if d.get("v") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {d.get('v')!r}")
    state = State()
    for s in d["schedules"]:
        sched = codec.schedule_from_dict(s)
        state.schedules[sched.id] = sched
        state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
    state.last_fired = {str(k): int(v) for k, v in d["last_fired"].items()}
    for r in d["runs"]:
        _put_run(state, codec.run_from_dict(r))
    state.ledger = {str(k): tuple(codec.tick_from_dict(t) for t in v) for k, v in d["ledger"].items()}
    state.recent = OrderedDict((str(k), Result.from_dict(v)) for k, v in d["recent"])
    # Absent from the snapshots of a release before level 2: no member has announced anything.
    state.levels = {str(k): int(v) for k, v in d.get("levels", {}).items()}
    # Absent unless a restore in parts was under way (level 3).
    state.restoring = _restoring_from_dict(d["restoring"]) if d.get("restoring") is not None else None
    # Absent before level 4, and until a node reports its backup.
    state.backups = dict(d.get("backups") or {})
    return state


def decode_snapshot(data: bytes) -> State:
    return snapshot_from_dict(orjson.loads(data))


def fingerprint(state: State) -> str:
    """A hash of the replicated content, equal on nodes that applied the same commands."""
    return hashlib.sha256(orjson.dumps(snapshot_to_dict(state), option=orjson.OPT_SORT_KEYS)).hexdigest()


def replay(payloads: Iterable[bytes]) -> State:
    state = State()
    for p in payloads:
        apply(state, p)
    return state
