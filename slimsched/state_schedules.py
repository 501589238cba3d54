"""Commands on schedules and their cron ticks: create, delete, pause, FireTick, trigger, backfill.

FireTick is where "a tick fires at most once" lives: a tick is accepted only if it is newer
than the schedule's last handled tick, and its run id comes from (schedule, tick).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from slimsched import codec
from slimsched.model import ConcurrencyPolicy, Run, RunStatus, Schedule, TickOutcome, TickRecord
from slimsched.state_store import (
    LEDGER_PER_SCHEDULE,
    Result,
    State,
    add_run,
    error,
    prune_finished,
    put_run,
    record_tick,
)

MAX_BACKFILL_TICKS = 1000  # ticks one ``backfill`` may carry: bounds its entry and its apply time
MANUAL_REASON = "manual"  # the ledger reason of a run started by ``trigger_schedule``
BACKFILL_REASON = "backfill"  # the ledger reason of a tick fired by ``backfill``

# Test only, set at node start from SLIMSCHED_TEST_BREAK_FIRE_DEDUP: skip the FireTick duplicate
# check (a repeated tick is accepted again), so that ``slimsched chaos`` can prove its checker fails.
BREAK_FIRE_DEDUP = False


def create_schedule(state: State, cmd: dict[str, Any]) -> Result:
    sched = codec.schedule_from_dict(cmd["schedule"])
    if sched.id in state.schedules:
        return error("conflict", f"schedule {sched.id} already exists")
    state.schedules[sched.id] = sched
    state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
    return Result("ok", value={"Id": sched.id})


def find_schedule(state: State, cmd: dict[str, Any]) -> Schedule | Result:
    sched = state.schedules.get(str(cmd["schedule_id"]))
    if sched is None or sched.job_name != cmd["job_name"]:
        return error("not_found", f"no schedule {cmd['schedule_id']} for job {cmd['job_name']}")
    return sched


def delete_schedule(state: State, cmd: dict[str, Any]) -> Result:
    found = find_schedule(state, cmd)
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


def set_paused(state: State, cmd: dict[str, Any]) -> Result:
    found = find_schedule(state, cmd)
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


def fire_tick(state: State, cmd: dict[str, Any]) -> Result:
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
        add_run(state, run)
    for m in missed:
        record_tick(state, schedule_id, TickRecord(m, TickOutcome.MISSED, at, reason="deadline"))
    lateness = max(0, at - tick * 1000)
    run_id = run.id if run is not None else None
    record_tick(
        state,
        schedule_id,
        TickRecord(tick, outcome, at, run_id=run_id, lateness_ms=lateness, reason=cmd.get("reason")),
    )
    return Result("ok", value={"RunId": run_id, "Outcome": outcome.value})


def trigger_schedule(state: State, cmd: dict[str, Any]) -> Result:
    """Start one run of a schedule now, outside its cron ticks ("trigger now").

    The run id is derived by the proposer from the request id, so a retry of the same request,
    even after the request-id window, finds its run and answers it again instead of a second run.
    The schedule's last fired tick does not move: a manual run is not a cron tick. The ledger
    records it as fired with reason "manual" at the trigger's second.
    """
    found = find_schedule(state, cmd)
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
    add_run(state, run)
    record_tick(
        state,
        found.id,
        TickRecord(at // 1000, TickOutcome.FIRED, at, run_id=run.id, lateness_ms=0, reason=MANUAL_REASON),
    )
    return Result("ok", value={"RunId": run.id, "Duplicate": False})


def backfill(state: State, cmd: dict[str, Any]) -> Result:
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
    found = find_schedule(state, cmd)
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
            put_run(state, replace(r, status=RunStatus.CANCELED, finished_at_ms=at, reason="Replaced"))
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
            put_run(state, run)
            records.append(TickRecord(t, TickOutcome.FIRED, at, run_id=run.id, reason=BACKFILL_REASON))
        else:
            records.append(TickRecord(t, TickOutcome.SKIPPED, at, reason=f"{BACKFILL_REASON}: {skip_reason}"))
    if records:  # one ledger copy for the whole range (it keeps the newest LEDGER_PER_SCHEDULE)
        state.ledger[found.id] = (*state.ledger.get(found.id, ()), *records)[-LEDGER_PER_SCHEDULE:]
    prune_finished(state, found.job_name)
    return Result(
        "ok",
        value={
            "Fired": sorted(firing),
            "Skipped": [t for t, _ in candidates if t not in firing],
            "AlreadyFired": already,
            "NotYetHandled": pending,
        },
    )
