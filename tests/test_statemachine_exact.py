"""Exact answers of the state machine, command by command: codes, messages, values and indexes.

The property tests prove replay, snapshots and batches agree with themselves; they cannot see a
wrong answer that every replica gives alike. These tables pin what each command answers and
leaves behind (mutation testing found those answers unchecked: see bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import orjson
import pytest

from slimsched import codec, cronplan, state_store, statemachine
from slimsched.model import JobSpec, Run, RunStatus, Schedule
from slimsched.statemachine import (
    Restoring,
    Result,
    State,
    apply,
    decode_snapshot,
    encode_batch,
    encode_command,
    encode_snapshot,
)


def _schedule(sid: str = "s1", job: str = "fib", paused: bool = False) -> Schedule:
    return Schedule(id=sid, job_name=job, cron="* * * * *", paused=paused, created_at_ms=5)


def _run(rid: str = "r1", job: str = "fib", status: RunStatus = RunStatus.QUEUED) -> Run:
    return Run(
        id=rid, job_name=job, spec=JobSpec(image="i"), status=status, queued_at_ms=7, kube_name=f"k-{rid}"
    )


def _with_schedule(paused: bool = False) -> State:
    state = State()
    sched = codec.schedule_to_dict(_schedule(paused=paused))
    assert apply(state, encode_command("create_schedule", schedule=sched)) == Result("ok", value={"Id": "s1"})
    return state


# --- schedules -----------------------------------------------------------------------------------


def test_create_twice_and_find_answer_exactly() -> None:
    state = _with_schedule()
    again = apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(_schedule())))
    assert again == Result("conflict", "schedule s1 already exists")
    missing = Result("not_found", "no schedule s9 for job fib")
    assert (
        apply(state, encode_command("set_paused", job_name="fib", schedule_id="s9", paused=True)) == missing
    )
    other_job = apply(state, encode_command("set_paused", job_name="daisy", schedule_id="s1", paused=True))
    assert other_job == Result("not_found", "no schedule s1 for job daisy")
    assert state.schedules_of("fib") == [_schedule()] and state.schedules_of("nope") == []


def test_pause_and_resume_answers_and_what_a_resume_owes() -> None:
    state = _with_schedule()
    state.last_fired["s1"] = 100

    def paused(value: object, at: object = None) -> Result:
        return apply(
            state, encode_command("set_paused", job_name="fib", schedule_id="s1", paused=value, at=at)
        )

    assert paused(1) == Result("invalid", "paused must be a boolean")
    assert paused(True, "soon") == Result("invalid", "at must be an integer")
    assert not state.schedules["s1"].paused, "a refused command changed nothing"
    assert paused(True, 500_000) == Result("ok", value={"Id": "s1", "Paused": True})
    assert state.schedules["s1"].paused and state.last_fired["s1"] == 100, "pausing owes nothing"
    assert paused(False, 900_999) == Result("ok", value={"Id": "s1", "Paused": False})
    assert state.last_fired["s1"] == 900, "ticks that fell while paused are not owed"
    assert paused(False, 2_000_000) == Result("ok", value={"Id": "s1", "Paused": False})
    assert state.last_fired["s1"] == 900, "resuming a running schedule moves nothing"
    assert paused(True, None).ok and paused(False, None).ok
    assert state.last_fired["s1"] == 900, "a resume without a time moves nothing"
    assert paused(True, 1_000).ok and paused(False, 1_000).ok
    assert state.last_fired["s1"] == 900, "never backwards"
    fresh = _with_schedule(paused=True)
    assert apply(
        fresh, encode_command("set_paused", job_name="fib", schedule_id="s1", paused=False, at=42_000)
    ).ok
    assert fresh.last_fired == {"s1": 42}
    epoch = _with_schedule(paused=True)
    resume = encode_command("set_paused", job_name="fib", schedule_id="s1", paused=False, at=999)
    assert apply(epoch, resume).ok and epoch.last_fired == {"s1": 0}
    one = encode_command("fire_tick", schedule_id="s1", tick=1, at=1_000, outcome="missed")
    assert apply(epoch, one).ok, "a tick after the resume second is owed"


def test_delete_drops_the_schedule_its_ticks_and_its_index() -> None:
    state = _with_schedule()
    other = codec.schedule_to_dict(_schedule("s2"))
    assert apply(state, encode_command("create_schedule", schedule=other)).ok
    state.last_fired["s1"] = 60
    state.ledger["s1"] = ()
    deleted = apply(state, encode_command("delete_schedule", job_name="fib", schedule_id="s1"))
    assert deleted == Result("ok", value={"Id": "s1"})
    assert "s1" not in state.last_fired and "s1" not in state.ledger
    assert list(state.job_schedules["fib"]) == ["s2"]
    assert apply(state, encode_command("delete_schedule", job_name="fib", schedule_id="s2")).ok
    assert state.job_schedules == {}, "an emptied job leaves no index behind"
    gone = apply(state, encode_command("delete_schedule", job_name="fib", schedule_id="s2"))
    assert gone == Result("not_found", "no schedule s2 for job fib")


# --- runs ----------------------------------------------------------------------------------------


def test_enqueue_and_cancel_answer_exactly_and_keep_the_indexes() -> None:
    state = State()
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run()))) == Result(
        "ok", value={"Id": "r1"}
    )
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run()))) == Result(
        "conflict", "run r1 already exists"
    )
    running = codec.run_to_dict(_run("r2", status=RunStatus.RUNNING))
    assert apply(state, encode_command("enqueue_run", run=running)) == Result(
        "invalid", "a new run must be Queued"
    )
    assert state.queue_of("fib") == [_run()] and state.queue_of("nope") == [] and state.runs_of("nope") == []

    def cancel(rid: str, job: str = "fib", at: int = 99) -> Result:
        return apply(state, encode_command("cancel_run", job_name=job, run_id=rid, at=at))

    assert cancel("r9") == Result("not_found", "no run r9 for job fib")
    assert cancel("r1", job="daisy") == Result("not_found", "no run r1 for job daisy")
    assert state.runs["r1"].status is RunStatus.QUEUED
    first = cancel("r1")
    assert first == Result("ok", value={"Id": "r1", "PreviousStatus": "Queued", "KubeName": "k-r1"})
    canceled = state.runs["r1"]
    assert (canceled.status, canceled.finished_at_ms, canceled.reason) == (
        RunStatus.CANCELED,
        99,
        "DeletedByApi",
    )
    assert state.queued == {} and state.finished == {"fib": 1} and state.active == {}
    again = cancel("r1", at=200)
    assert again == Result("ok", value={"Id": "r1", "PreviousStatus": "Canceled", "KubeName": "k-r1"})
    assert state.runs["r1"].finished_at_ms == 99, "a finished run stays as it ended"


def test_start_dispatch_and_status_moves_answer_exactly() -> None:
    state = State()
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run()))).ok
    start = encode_command("start_dispatch", run_id="r1", term=3, index=40)
    assert apply(state, encode_command("start_dispatch", run_id="r9", term=3, index=40)) == Result(
        "not_found", "no run r9"
    )
    assert apply(state, start) == statemachine.OK
    run = state.runs["r1"]
    assert (run.status, run.dispatch_term, run.dispatch_index) == (RunStatus.DISPATCHING, 3, 40)
    assert state.active == {"fib": 1} and state.queued == {}
    assert apply(state, start) == Result("conflict", "run r1 is Dispatching, not Queued")

    def move(status: str, at: int, **extra: object) -> Result:
        return apply(state, encode_command("run_status", run_id="r1", status=status, at=at, **extra))

    assert move("Pending", 5, expect="Queued") == Result("conflict", "run r1 is Dispatching, not Queued")
    assert move("Queued", 5) == Result("invalid", "a run cannot go back to Queued")
    assert move("Running", 10, reason="Started") == statemachine.OK
    assert (state.runs["r1"].started_at_ms, state.runs["r1"].reason) == (10, "Started")
    assert move("Succeeded", 20) == statemachine.OK
    done = state.runs["r1"]
    assert (done.started_at_ms, done.finished_at_ms, done.reason) == (10, 20, "Started")
    assert state.active == {} and state.finished == {"fib": 1}
    assert move("Failed", 30) == Result("conflict", "run r1 already ended as Succeeded")
    assert apply(state, encode_command("run_status", run_id="r9", status="Failed", at=1)) == Result(
        "not_found", "no run r9"
    )


# --- restores, hello, batches ----------------------------------------------------------------------


def _part(rid: object, part: object, parts: object, sids: list[str]) -> bytes:
    schedules = [codec.schedule_to_dict(_schedule(s)) for s in sids]
    return encode_command(
        "restore_part",
        restore=rid,
        part=part,
        parts=parts,
        schedules=schedules,
        last_fired={s: 9 for s in sids},
    )


def test_restore_parts_answer_exactly_and_stage_until_the_last() -> None:
    state = State()
    bad_id = Result("invalid", "restore_part needs a restore id")
    bad_part = Result("invalid", "restore_part needs 0 <= part < parts")
    assert apply(state, _part("", 0, 2, ["a"])) == bad_id
    assert apply(state, _part(7, 0, 2, ["a"])) == bad_id
    for part, parts in [(2, 2), (-1, 2), ("0", 2), (0, "2")]:
        assert apply(state, _part("r", part, parts, ["a"])) == bad_part, (part, parts)
    assert apply(state, _part("r", 1, 2, ["a"])) == Result(
        "interrupted", "part 1 of restore 'r' does not follow the parts applied"
    )
    assert apply(state, _part("r", 0, 3, ["a"])) == statemachine.OK
    assert state.restoring == Restoring(
        id="r", parts=3, next_part=1, schedules={"a": _schedule("a")}, last_fired={"a": 9}
    )
    assert state.restoring.copy() == state.restoring and state.restoring.copy() is not state.restoring
    staged = decode_snapshot(encode_snapshot(state))
    assert staged.restoring == state.restoring, "a restore under way survives a snapshot"
    assert apply(state, _part("other", 1, 3, ["b"])).code == "interrupted"
    assert apply(state, _part("r", 1, 3, ["b"])) == statemachine.OK
    assert state.schedules == {}, "nothing lands before the last part"
    assert apply(state, _part("r", 2, 3, ["c"])) == Result("ok", value={"Restored": 3})
    assert state.restoring is None and sorted(state.schedules) == ["a", "b", "c"]
    assert state.last_fired == {"a": 9, "b": 9, "c": 9}
    not_empty = Result("conflict", "state already holds schedules; restore refused")
    assert apply(state, _part("r2", 0, 1, ["d"])) == not_empty
    assert apply(state, encode_command("restore", schedules=[])) == not_empty


def test_a_whole_restore_lands_without_last_fired() -> None:
    state = State()
    restore = encode_command("restore", schedules=[codec.schedule_to_dict(_schedule("a"))])
    assert apply(state, restore) == Result("ok", value={"Restored": 1})
    assert state.last_fired == {} and list(state.job_schedules["fib"]) == ["a"]


def test_hello_records_levels_and_refuses_bad_ones() -> None:
    state = State()
    bad = Result("invalid", "hello needs a node address and a level >= 1")
    for node, level in [("", 2), (5, 2), ("n:1", 0), ("n:1", "3"), ("n:1", -1)]:
        assert apply(state, encode_command("hello", node=node, level=level)) == bad, (node, level)
    assert apply(state, encode_command("hello", node="n:1", level=1)) == statemachine.OK
    assert state.levels == {"n:1": 1}
    assert not statemachine.applied_by_all(state, ["n:1"], "batch")
    assert statemachine.applied_by_all(state, ["n:1"], "create_schedule")
    assert apply(state, encode_command("hello", node="n:1", level=3)).ok
    assert statemachine.applied_by_all(state, ["n:1"], "restore_part")
    assert not statemachine.applied_by_all(state, ["n:1", "n:2"], "batch"), "an unknown member is level 1"


def test_batch_results_reads_only_applied_batches() -> None:
    state = State()
    inner = [encode_command("barrier"), encode_command("hello", node="", level=1)]
    payload = encode_batch(inner)
    result = apply(state, payload)
    assert statemachine.batch_results(payload, result) == [
        statemachine.OK,
        Result("invalid", "hello needs a node address and a level >= 1"),
    ]
    assert statemachine.batch_results(payload, Result("invalid", "x")) is None
    assert statemachine.batch_results(encode_command("barrier"), statemachine.OK) is None
    assert statemachine.batch_results(payload, Result("ok", value={"Results": "no"})) is None
    assert statemachine.batch_results(payload, Result("ok")) is None


# --- copies and snapshots --------------------------------------------------------------------------


def test_a_copy_shares_no_map_with_its_original() -> None:
    state = _with_schedule()
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run()))).ok
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run("r2")))).ok
    assert apply(state, encode_command("start_dispatch", run_id="r2", term=1, index=1)).ok
    assert apply(state, encode_command("hello", node="n", level=3, rid="q")).ok
    state.last_fired["s1"] = 5
    state.ledger["s1"] = ()
    state.restoring = Restoring(id="x", parts=2, next_part=1)
    state.finished["fib"] = 1
    copy = state.copy()
    assert copy == state
    before = orjson.dumps(statemachine.snapshot_to_dict(copy))
    apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(_schedule("s2"))))
    apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run("r3"))))
    apply(state, encode_command("start_dispatch", run_id="r1", term=1, index=1))
    apply(state, encode_command("hello", node="m", level=2, rid="z"))
    state.last_fired["s1"] = 6
    state.ledger["s9"] = ()
    assert state.restoring is not None
    state.restoring.schedules["y"] = _schedule("y")
    state.finished["fib"] = 2
    assert orjson.dumps(statemachine.snapshot_to_dict(copy)) == before
    assert list(copy.queued["fib"]) == ["r1"] and copy.active == {"fib": 1} and copy.finished == {"fib": 1}
    assert list(copy.job_schedules["fib"]) == ["s1"] and list(copy.job_runs["fib"]) == ["r1", "r2"]
    assert copy.restoring is not None and copy.restoring.schedules == {}


def test_snapshot_refuses_another_version_and_results_round_trip() -> None:
    with pytest.raises(ValueError, match="unsupported snapshot version 2"):
        statemachine.snapshot_from_dict({"v": 2})
    assert Result.from_dict({"code": "ok"}) == Result("ok", "", None)
    assert Result.from_dict(Result("conflict", "m", {"a": 1}).to_dict()) == Result("conflict", "m", {"a": 1})
    assert statemachine.error("x", "y") == Result("x", "y")
    state = _with_schedule()
    assert statemachine.fingerprint(state) == statemachine.fingerprint(
        decode_snapshot(encode_snapshot(state))
    )
    assert statemachine.fingerprint(state) != statemachine.fingerprint(State())


def test_pruned_runs_leave_the_job_index_right() -> None:
    state = State()
    n = statemachine.FINISHED_RUNS_PER_JOB + 2
    for i in range(n):
        rid = f"r{i}"
        assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run(rid)))).ok
        assert apply(state, encode_command("cancel_run", job_name="fib", run_id=rid, at=i)).ok
        assert (
            apply(state, encode_command("run_status", run_id=rid, status="Failed", at=i)).code == "conflict"
        )
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run("last")))).ok
    kept = list(state.job_runs["fib"])
    assert len(kept) == statemachine.FINISHED_RUNS_PER_JOB + 1 and kept[-1] == "last"
    assert kept[0] == f"r{n - statemachine.FINISHED_RUNS_PER_JOB}", "the oldest finished runs went first"
    assert state.finished == {"fib": statemachine.FINISHED_RUNS_PER_JOB}
    assert set(kept) == set(state.runs)


# --- cron planning, exactly ------------------------------------------------------------------------

PARIS = "Europe/Paris"
FALL_BACK = 1761440400  # 2025-10-26 01:00 UTC: 03:00 CEST becomes 02:00 CET


def test_a_fixed_hour_in_a_zone_fires_at_its_wall_time_after_days_of_outage() -> None:
    """The walk back after an outage runs on the zone's wall clock, not the host's (UTC)."""
    day = 86400
    last = 1_760_000_000
    plan = cronplan.plan("0 3 * * *", PARIS, last_handled=last, created_at=0, now=last + 3 * day + 1)
    assert plan.due is not None
    wall = [datetime.fromtimestamp(t, tz=cronplan.zone(PARIS)) for t in [*plan.missed, plan.due]]
    assert [(w.hour, w.minute) for w in wall] == [(3, 0)] * 3
    assert plan.due - plan.missed[-1] == day


def test_a_wall_time_repeated_by_the_fall_back_fires_once_in_a_walk_back() -> None:
    """02:30 happens twice on 2025-10-26 in Paris: a fixed-hour schedule fires the first only,
    also when several ticks are pending (the walk back) rather than one."""
    first_0230 = FALL_BACK - 1800  # 02:30 CEST = 00:30 UTC
    plan = cronplan.plan(
        "30 2 * * *", PARIS, last_handled=first_0230 - 2 * 86400, created_at=0, now=first_0230 + 86400 + 3600
    )
    assert plan.missed == (first_0230 - 86400, first_0230)
    assert plan.due == first_0230 + 86400 + 3600  # the next day 02:30 CET
    assert cronplan.next_fire("30 2 * * *", PARIS, first_0230) == first_0230 + 86400 + 3600
    every = cronplan.plan(
        "*/30 * * * *", PARIS, last_handled=FALL_BACK - 3600, created_at=0, now=FALL_BACK + 3600
    )
    assert [*every.missed, every.due] == [FALL_BACK - 1800 + 1800 * i for i in range(4)], "every real instant"


def test_the_deadline_bound_is_inclusive_on_both_paths() -> None:
    one = cronplan.plan(
        "* * * * *", "UTC", last_handled=0, created_at=0, now=60 + 30, starting_deadline_seconds=30
    )
    assert (one.due, one.missed) == (60, ())
    late = cronplan.plan(
        "* * * * *", "UTC", last_handled=0, created_at=0, now=60 + 31, starting_deadline_seconds=30
    )
    assert (late.due, late.missed) == (None, (60,))
    walk = cronplan.plan(
        "* * * * *", "UTC", last_handled=0, created_at=0, now=180 + 30, starting_deadline_seconds=30
    )
    assert (walk.due, walk.missed, walk.next_tick) == (180, (60, 120), 240)
    past = cronplan.plan(
        "* * * * *", "UTC", last_handled=0, created_at=0, now=180 + 31, starting_deadline_seconds=30
    )
    assert (past.due, past.missed, past.next_tick) == (None, (60, 120, 180), 240)
    none = cronplan.plan("* * * * *", "UTC", last_handled=0, created_at=0, now=59)
    assert (none.due, none.missed, none.next_tick) == (None, (), 60)


def test_a_run_kept_after_its_schedule_is_dropped_from_the_index() -> None:
    state = State()
    for rid in ("a", "b"):
        assert apply(
            state, encode_command("enqueue_run", run=codec.run_to_dict(replace(_run(rid), job_name="j")))
        ).ok
    state_store.drop_run(state, "a")
    assert list(state.job_runs["j"]) == ["b"] and list(state.queued["j"]) == ["b"]
    state_store.drop_run(state, "b")
    assert state.job_runs == {} and state.queued == {} and state.runs == {}


# --- what mutation testing found unchecked, pinned -----------------------------------------------


def test_fire_tick_refuses_each_non_integer_time_alone() -> None:
    state = _with_schedule()
    bad = Result("invalid", "tick and at must be integers")
    for tick, at in [("60", 60_000), (60, "60000"), (60.0, 60_000), (60, None)]:
        cmd = encode_command("fire_tick", schedule_id="s1", tick=tick, at=at, outcome="missed")
        assert apply(state, cmd) == bad, (tick, at)
    assert "s1" not in state.last_fired


def test_a_status_move_that_does_not_end_the_run_sets_no_finish_time() -> None:
    state = State()
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(_run()))).ok
    assert apply(state, encode_command("start_dispatch", run_id="r1", term=1, index=1)).ok
    assert apply(state, encode_command("run_status", run_id="r1", status="Pending", at=5)).ok
    assert (state.runs["r1"].started_at_ms, state.runs["r1"].finished_at_ms) == (5, None)


def test_batch_results_ignores_an_entry_that_is_not_a_batch_whatever_its_value() -> None:
    looks_like = Result("ok", value={"Results": [statemachine.OK]})
    assert statemachine.batch_results(encode_command("barrier"), looks_like) is None


def test_two_ticks_pending_at_the_very_second_of_the_second_go_the_walk_back_way() -> None:
    plan = cronplan.plan("* * * * *", "UTC", last_handled=0, created_at=0, now=120)
    assert (plan.due, plan.missed, plan.next_tick) == (120, (60,), 180)


def test_from_seconds_last_moves_the_sixth_field_first_and_leaves_five_alone() -> None:
    assert cronplan.from_seconds_last("1 2 3 4 5 */10") == "*/10 1 2 3 4 5"
    assert cronplan.from_seconds_last("1 2 3 4 5") == "1 2 3 4 5"
    assert cronplan.from_seconds_last("@hourly") == "@hourly"
    assert cronplan.from_seconds_last("1 2 3 4 5 6 7") == "1 2 3 4 5 6 7"


def _fire(
    state: State, tick: int, *, at: int, outcome: str = "fired", missed: tuple[int, ...] = (), **run: object
) -> Result:
    fields: dict[str, object] = {
        "schedule_id": "s1",
        "tick": tick,
        "at": at,
        "outcome": outcome,
        "missed": list(missed),
    }
    if outcome == "fired":
        r = Run(
            id=f"s1-{tick}",
            job_name="fib",
            spec=JobSpec(image="i"),
            status=RunStatus.QUEUED,
            queued_at_ms=at,
            kube_name=f"k-{tick}",
            schedule_id="s1",
            tick=tick,
        )
        fields["run"] = codec.run_to_dict(replace(r, **run))  # type: ignore[arg-type]
    else:
        fields["reason"] = "why"
    return apply(state, encode_command("fire_tick", **fields))


def test_fire_tick_answers_and_ledger_lines_exactly() -> None:
    state = _with_schedule()
    assert _fire(state, 0, at=0) == Result("ok", value={"RunId": "s1-0", "Outcome": "fired"}), "tick 0 is new"
    assert _fire(state, -1, at=0) == Result("duplicate", "tick -1 of schedule s1 was already handled")
    assert _fire(state, 0, at=0) == Result("duplicate", "tick 0 of schedule s1 was already handled")
    missed = _fire(state, 60, at=60_000, outcome="missed", missed=(10, 20))
    assert missed == Result("ok", value={"RunId": None, "Outcome": "missed"})
    fired = _fire(state, 90, at=95_500, missed=(70, 80))
    assert fired == Result("ok", value={"RunId": "s1-90", "Outcome": "fired"})
    assert [
        (t.tick, t.outcome.value, t.recorded_at_ms, t.run_id, t.lateness_ms, t.reason)
        for t in state.ledger["s1"]
    ] == [
        (0, "fired", 0, "s1-0", 0, None),
        (10, "missed", 60_000, None, None, "deadline"),
        (20, "missed", 60_000, None, None, "deadline"),
        (60, "missed", 60_000, None, 0, "why"),
        (70, "missed", 95_500, None, None, "deadline"),
        (80, "missed", 95_500, None, None, "deadline"),
        (90, "fired", 95_500, "s1-90", 5_500, None),
    ]
    assert sorted(state.runs) == ["s1-0", "s1-90"] and state.last_fired == {"s1": 90}
    before = statemachine.fingerprint(state)
    assert _fire(state, 120, at=120_000, id="s1-90") == Result("conflict", "run s1-90 already exists")
    assert _fire(state, 120, at=120_000, status=RunStatus.PENDING) == Result(
        "invalid", "a fired run must be Queued or Dispatching"
    )
    claim = Result("invalid", "a run claimed in its FireTick needs its dispatch term and index")
    assert _fire(state, 120, at=120_000, status=RunStatus.DISPATCHING, dispatch_term=3) == claim
    assert _fire(state, 120, at=120_000, status=RunStatus.DISPATCHING, dispatch_index=3) == claim
    assert statemachine.fingerprint(state) == before, "a refused FireTick changes nothing"
    gone = apply(state, encode_command("fire_tick", schedule_id="s9", tick=1, at=1, outcome="missed"))
    assert gone == Result("not_found", "no schedule s9")


def test_copies_of_an_empty_state_and_of_a_staged_restore_are_independent() -> None:
    assert State().copy() == State()
    staged = Restoring(id="r", parts=2, next_part=1, last_fired={"a": 1})
    copy = staged.copy()
    copy.last_fired["b"] = 2
    copy.schedules["a"] = _schedule("a")
    assert staged.last_fired == {"a": 1} and staged.schedules == {}


# --- trigger now and backfill, exactly -------------------------------------------------------------


def _sched_run(rid: str, tick: int | None = None, **fields: object) -> Run:
    run = Run(
        id=rid,
        job_name="fib",
        spec=JobSpec(image="i"),
        status=RunStatus.QUEUED,
        queued_at_ms=3,
        kube_name=f"k-{rid}",
        schedule_id="s1",
        tick=tick,
    )
    return replace(run, **fields)  # type: ignore[arg-type]


def _trigger(state: State, run: Run, at: object = 61_500, job: str = "fib", sid: str = "s1") -> Result:
    cmd = encode_command("trigger_schedule", job_name=job, schedule_id=sid, at=at, run=codec.run_to_dict(run))
    return apply(state, cmd)


def test_trigger_answers_refusals_and_its_ledger_line_exactly() -> None:
    state = _with_schedule()
    state.last_fired["s1"] = 60
    before = statemachine.fingerprint(state)
    assert _trigger(state, _sched_run("m1"), sid="s9") == Result("not_found", "no schedule s9 for job fib")
    assert _trigger(state, _sched_run("m1"), at="61500") == Result("invalid", "at must be an integer")
    belong = Result("invalid", "a triggered run must belong to the schedule's job and name the schedule")
    assert _trigger(state, _sched_run("m1", job_name="daisy")) == belong
    assert _trigger(state, _sched_run("m1", schedule_id="s2")) == belong
    not_queued = Result("invalid", "a triggered run must be Queued and carry no cron tick")
    assert _trigger(state, _sched_run("m1", status=RunStatus.PENDING)) == not_queued
    assert _trigger(state, _sched_run("m1", tick=60)) == not_queued
    assert statemachine.fingerprint(state) == before, "a refused trigger changes nothing"
    assert _trigger(state, _sched_run("m1")) == Result("ok", value={"RunId": "m1", "Duplicate": False})
    assert state.queue_of("fib") == [_sched_run("m1")] and state.last_fired == {"s1": 60}
    line = state.ledger["s1"][-1]
    assert (
        line.tick,
        line.outcome.value,
        line.recorded_at_ms,
        line.run_id,
        line.lateness_ms,
        line.reason,
    ) == (
        61,
        "fired",
        61_500,
        "m1",
        0,
        statemachine.MANUAL_REASON,
    )
    assert _trigger(state, _sched_run("m1"), at=99_000) == Result(
        "ok", value={"RunId": "m1", "Duplicate": True}
    )
    assert len(state.ledger["s1"]) == 1 and len(state.runs) == 1
    assert _trigger(state, _sched_run("m2"), at=1_700_000_000_999).ok
    assert state.ledger["s1"][-1].tick == 1_700_000_000, "a manual line is at the trigger's second"


def _bf_state(created_at_s: int = 100) -> State:
    state = State()
    sched = Schedule(id="s1", job_name="fib", cron="* * * * *", created_at_ms=created_at_s * 1000 + 999)
    assert apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(sched))).ok
    return state


def _backfill(
    state: State, ticks: object, policy: str = "Allow", at: object = 7_000, **extra: object
) -> Result:
    fields: dict[str, object] = {
        "job_name": "fib",
        "schedule_id": "s1",
        "at": at,
        "policy": policy,
        "spec": codec.spec_to_dict(JobSpec(image="b")),
        "ticks": ticks,
        **extra,
    }
    return apply(state, encode_command("backfill", **fields))


def _ticks(*ts: int) -> list[list[object]]:
    return [[t, f"k{t}"] for t in ts]


def _bf(fired: list[int], skipped: list[int], already: list[int], pending: list[int]) -> Result:
    return Result(
        "ok", value={"Fired": fired, "Skipped": skipped, "AlreadyFired": already, "NotYetHandled": pending}
    )


def test_backfill_refuses_malformed_ranges_exactly_and_changes_nothing() -> None:
    state = _bf_state()
    before = statemachine.fingerprint(state)
    assert _backfill(state, _ticks(1), schedule_id="s9") == Result("not_found", "no schedule s9 for job fib")
    at_ticks = Result("invalid", "at must be an integer and ticks a list")
    assert _backfill(state, _ticks(1), at="7") == at_ticks
    assert _backfill(state, {"1": "k"}) == at_ticks
    n = statemachine.MAX_BACKFILL_TICKS
    assert _backfill(state, _ticks(*range(n + 1))) == Result("invalid", f"a backfill holds at most {n} ticks")
    assert _backfill(state, _ticks(*range(n))).ok, "exactly the maximum is accepted"
    state = _bf_state()
    pair = Result("invalid", "each backfill tick must be [tick, Job name]")
    for bad in ([[1]], [[1, "k", 2]], [["1", "k"]], [[True, "k"]], [[1.0, "k"]], [[1, 2]], [1], ["k"]):
        assert _backfill(state, [*_ticks(0), *bad]) == pair, bad
    order = Result("invalid", "backfill ticks must be in increasing order")
    assert _backfill(state, _ticks(2, 1)) == order
    assert _backfill(state, _ticks(1, 3, 3)) == order
    assert statemachine.fingerprint(state) == before


def test_backfill_allow_fires_each_handled_tick_with_its_run_and_ledger_line() -> None:
    state = _bf_state(created_at_s=100)  # never fired: handled up to its creation second
    result = _backfill(state, _ticks(40, 100, 101), at=7_000)
    assert result == _bf([40, 100], [], [], [101])
    assert state.runs["s1-40"] == Run(
        id="s1-40",
        job_name="fib",
        spec=JobSpec(image="b"),
        status=RunStatus.QUEUED,
        queued_at_ms=7_000,
        kube_name="k40",
        schedule_id="s1",
        tick=40,
    )
    assert [r.id for r in state.queue_of("fib")] == ["s1-40", "s1-100"]
    assert [
        (t.tick, t.outcome.value, t.recorded_at_ms, t.run_id, t.lateness_ms, t.reason)
        for t in state.ledger["s1"]
    ] == [
        (40, "fired", 7_000, "s1-40", None, statemachine.BACKFILL_REASON),
        (100, "fired", 7_000, "s1-100", None, statemachine.BACKFILL_REASON),
    ]
    assert "s1" not in state.last_fired, "a backfill moves no cron tick"
    state.last_fired["s1"] = 200
    assert _backfill(state, _ticks(40, 150, 200, 201)) == _bf([150, 200], [], [40], [201])
    empty = _bf_state()
    assert _backfill(empty, _ticks(500)) == _bf([], [], [], [500])
    assert empty.ledger == {} and empty.runs == {}, "nothing to record: no ledger"


def test_backfill_knows_ticks_fired_by_cron_but_not_manual_runs() -> None:
    state = _bf_state()
    fire = encode_command(
        "fire_tick",
        schedule_id="s1",
        tick=120,
        at=120_000,
        outcome="fired",
        run=codec.run_to_dict(_sched_run("s1-120", tick=120)),
    )
    assert apply(state, fire).ok
    assert apply(state, encode_command("cancel_run", job_name="fib", run_id="s1-120", at=1)).ok
    state_store.drop_run(state, "s1-120")  # as if pruned: only the ledger remembers the tick
    assert _trigger(state, _sched_run("m1"), at=60_000).ok  # a manual line at second 60
    missed = encode_command("fire_tick", schedule_id="s1", tick=130, at=130_000, outcome="missed")
    assert apply(state, missed).ok  # tick 130 missed: a backfill may still fire it
    assert _backfill(state, _ticks(60, 120, 130)) == _bf([60, 130], [], [120], [])
    assert [(t.tick, t.outcome.value, t.reason) for t in state.ledger["s1"]] == [
        (120, "fired", None),
        (60, "fired", statemachine.MANUAL_REASON),
        (130, "missed", None),
        (60, "fired", statemachine.BACKFILL_REASON),
        (130, "fired", statemachine.BACKFILL_REASON),
    ], "a backfill appends to the schedule's ledger"
    fire = encode_command(
        "fire_tick",
        schedule_id="s1",
        tick=140,
        at=140_000,
        outcome="fired",
        run=codec.run_to_dict(_sched_run("s1-140", tick=140)),
    )
    assert apply(state, fire).ok
    assert _backfill(state, _ticks(140)) == _bf([], [], [140], []), "the last handled tick is fired once"


def test_backfill_of_a_schedule_never_fired_counts_from_its_creation_second() -> None:
    created = 1_700_000_000
    state = _bf_state(created_at_s=created)
    assert _backfill(state, _ticks(created - 60, created, created + 1)) == _bf(
        [created - 60, created], [], [], [created + 1]
    )


def test_backfill_forbid_fires_the_first_tick_unless_a_run_of_the_schedule_is_live() -> None:
    state = _bf_state()
    other = replace(_sched_run("o1"), schedule_id="s2")
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(other))).ok
    done = _sched_run("d1")
    assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(done))).ok
    assert apply(state, encode_command("cancel_run", job_name="fib", run_id="d1", at=1)).ok
    assert _backfill(state, _ticks(10, 20, 30), policy="Forbid") == _bf([10], [20, 30], [], [])
    reason = "backfill: Forbid: a run of the schedule is queued or active"
    lines = [(t.tick, t.outcome.value, t.run_id, t.reason) for t in state.ledger["s1"]]
    assert lines == [
        (10, "fired", "s1-10", "backfill"),
        (20, "skipped", None, reason),
        (30, "skipped", None, reason),
    ]
    assert _backfill(state, _ticks(40, 50), policy="Forbid") == _bf([], [40, 50], [], [])
    assert state.ledger["s1"][-1].recorded_at_ms == 7_000


def test_backfill_replace_cancels_the_live_runs_of_the_schedule_and_fires_the_last_tick() -> None:
    state = _bf_state()
    live, other = _sched_run("m1"), replace(_sched_run("o1"), schedule_id="s2")
    done = _sched_run("d1")
    for run in (live, other, done):
        assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(run))).ok
    assert apply(state, encode_command("cancel_run", job_name="fib", run_id="d1", at=1)).ok
    assert _backfill(state, _ticks(10, 20, 30), policy="Replace", at=9_000) == _bf([30], [10, 20], [], [])
    canceled = state.runs["m1"]
    assert (canceled.status, canceled.finished_at_ms, canceled.reason) == (
        RunStatus.CANCELED,
        9_000,
        "Replaced",
    )
    assert state.runs["o1"].status is RunStatus.QUEUED, "another schedule's run is left alone"
    assert state.runs["d1"].finished_at_ms == 1 and state.runs["d1"].reason == "DeletedByApi"
    assert [r.id for r in state.queue_of("fib")] == ["o1", "s1-30"]
    assert state.finished == {"fib": 2}
    reason = "backfill: Replace: superseded by a later backfilled tick"
    assert [(t.tick, t.outcome.value, t.reason) for t in state.ledger["s1"]] == [
        (10, "skipped", reason),
        (20, "skipped", reason),
        (30, "fired", "backfill"),
    ]
    nothing = _bf_state()
    assert apply(nothing, encode_command("enqueue_run", run=codec.run_to_dict(live))).ok
    assert _backfill(nothing, _ticks(500), policy="Replace") == _bf([], [], [], [500])
    assert nothing.runs["m1"].status is RunStatus.QUEUED, "nothing fired: nothing replaced"


def test_backfill_keeps_the_newest_ledger_lines_and_prunes_finished_runs() -> None:
    state = _bf_state(created_at_s=10**6)
    limit = statemachine.LEDGER_PER_SCHEDULE
    assert _backfill(state, _ticks(*range(limit + 5)), policy="Forbid").ok
    assert [t.tick for t in state.ledger["s1"]] == list(range(5, limit + 5))
    job = _bf_state()
    keep = statemachine.FINISHED_RUNS_PER_JOB
    for i in range(keep):
        run = replace(_sched_run(f"d{i}"), schedule_id=None)
        assert apply(job, encode_command("enqueue_run", run=codec.run_to_dict(run))).ok
        assert apply(job, encode_command("cancel_run", job_name="fib", run_id=f"d{i}", at=1)).ok
    assert apply(job, encode_command("enqueue_run", run=codec.run_to_dict(_sched_run("m1")))).ok
    assert _backfill(job, _ticks(10), policy="Replace").ok
    assert job.finished == {"fib": keep} and "d0" not in job.runs and "m1" in job.runs


# --- the front door: decoding, versions, levels, request ids, batches -------------------------------


def test_apply_refuses_what_is_not_a_command_exactly() -> None:
    state = State()
    assert statemachine.apply_entry(state, b"{") == statemachine.Applied(
        Result("invalid", "command is not JSON"), ()
    )
    assert apply(state, b"[1]") == Result("invalid", "command is not an object")
    assert apply(state, orjson.dumps({"type": "barrier"})) == Result(
        "invalid", "unsupported command version None"
    )
    assert apply(state, orjson.dumps({"v": 2, "type": "barrier"})) == Result(
        "invalid", "unsupported command version 2"
    )
    assert apply(state, encode_command("nope")) == Result("invalid", "unknown command type 'nope'")
    assert apply(state, encode_command("barrier", rid=5)) == Result("invalid", "rid must be a string")
    broken = apply(state, encode_command("delete_schedule", job_name="fib"))
    assert broken == Result("invalid", "malformed delete_schedule command: KeyError: 'schedule_id'")
    assert state == State(), "nothing refused was applied or remembered"


def test_a_command_type_applies_from_its_level_on() -> None:
    hello = encode_command("hello", node="n:1", level=2)
    state = State()
    assert apply(state, hello, level=1) == Result("invalid", "unknown command type 'hello'")
    assert apply(state, encode_command("barrier"), level=1) == statemachine.OK, "level 1 had barrier"
    assert apply(state, hello, level=2) == statemachine.OK and state.levels == {"n:1": 2}
    batch = encode_batch([encode_command("barrier")])
    assert apply(state, batch, level=1) == Result("invalid", "unknown command type 'batch'")
    assert apply(state, batch, level=2) == Result("ok", value={"Results": [statemachine.OK]})
    part = encode_command("restore_part", restore="r", part=0, parts=2, schedules=[])
    assert apply(state, part, level=2).message == "unknown command type 'restore_part'"
    assert apply(state, part, level=3) == statemachine.OK


def test_a_request_id_answers_its_first_result_within_the_window_only() -> None:
    state = State()
    first = encode_command("hello", node="n:1", level=2, rid="a")
    assert apply(state, first) == statemachine.OK
    refused = encode_command("hello", node="", level=2, rid="b")
    bad = Result("invalid", "hello needs a node address and a level >= 1")
    assert apply(state, refused) == bad and state.recent["b"] == bad, "a refusal is remembered too"
    state.levels.clear()
    assert apply(state, first) == statemachine.OK and state.levels == {}, "a retry is not applied again"
    window = state_store.RECENT_REQUESTS
    for i in range(window - 1):
        state.recent[f"x{i}"] = statemachine.OK
    assert len(state.recent) == window + 1
    assert apply(state, encode_command("barrier", rid="last")) == statemachine.OK
    assert len(state.recent) == window and "a" not in state.recent and "b" not in state.recent
    assert list(state.recent)[-1] == "last", "the oldest requests are forgotten first"
    assert apply(state, first) == statemachine.OK and state.levels == {"n:1": 2}, "forgotten: applied again"


def test_a_batch_is_refused_whole_or_applied_command_by_command_exactly() -> None:
    state = State()
    wrong = Result("invalid", "a batch needs version 1 and a list of commands")
    for doc in ({"v": 2, "type": "batch", "commands": []}, {"v": 1, "type": "batch", "commands": {}}):
        assert statemachine.apply_entry(state, orjson.dumps(doc)) == statemachine.Applied(wrong, ())
    barrier = encode_command("barrier")
    limit = statemachine.MAX_BATCH_COMMANDS
    too_many = statemachine.apply_entry(state, encode_batch([barrier] * (limit + 1)))
    assert too_many == statemachine.Applied(Result("invalid", f"a batch holds at most {limit} commands"), ())
    full = apply(state, encode_batch([barrier] * limit))
    assert full == Result("ok", value={"Results": [statemachine.OK] * limit})
    nested = encode_batch([encode_batch([barrier]), b"7", barrier])
    entry = statemachine.apply_entry(state, nested)
    results = [
        Result("invalid", "a batch cannot hold a batch"),
        Result("invalid", "command is not an object"),
        statemachine.OK,
    ]
    assert entry.result == Result("ok", value={"Results": results})
    assert [c for c, _ in entry.commands] == [
        {"v": 1, "type": "batch", "commands": [{"v": 1, "type": "barrier"}]},
        7,
        {"v": 1, "type": "barrier"},
    ]
    assert [r for _, r in entry.commands] == results
    assert statemachine.batch_results(nested, entry.result) == results
    single = statemachine.apply_entry(state, barrier)
    assert single == statemachine.Applied(statemachine.OK, (({"v": 1, "type": "barrier"}, statemachine.OK),))
    assert statemachine.replay([barrier, encode_command("hello", node="n", level=3)]).levels == {"n": 3}
