"""Properties of the replicated state machine: deterministic, round-trips, never raises."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched import codec, statemachine
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    JobSpec,
    KeyRef,
    Resources,
    Run,
    RunStatus,
    Schedule,
)
from slimsched.statemachine import State, apply, decode_snapshot, encode_command, encode_snapshot, fingerprint

ids = st.sampled_from(["a", "b", "c", "d", "e"])
jobs = st.sampled_from(["fib", "daisy"])
times = st.integers(min_value=0, max_value=2_000_000_000)

specs = st.builds(
    JobSpec,
    image=st.sampled_from(["img:1", "img:2"]),
    args=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    resources=st.just(Resources(requests={"cpu": "100m"}, limits={"cpu": "200m"})),
    environments=st.lists(
        st.one_of(
            st.builds(EnvVar, name=st.sampled_from(["A", "B"]), value=st.text(max_size=4)),
            st.builds(
                EnvVar,
                name=st.just("S"),
                secret_key_ref=st.builds(KeyRef, name=st.just("s"), key=st.just("k")),
            ),
        ),
        max_size=2,
    ).map(tuple),
)
schedules = st.builds(
    Schedule,
    id=ids,
    job_name=jobs,
    cron=st.sampled_from(["* * * * *", "0 0 * * *", "* * * * * */10"]),
    overrides=st.builds(JobOverrides, args=st.none() | st.lists(st.text(max_size=3), max_size=2).map(tuple)),
    concurrency_policy=st.sampled_from(list(ConcurrencyPolicy)),
    paused=st.booleans(),
    created_at_ms=times,
)
runs = st.builds(
    Run,
    id=ids,
    job_name=jobs,
    spec=specs,
    status=st.just(RunStatus.QUEUED),
    queued_at_ms=times,
    kube_name=st.just("k"),
)
rids = st.none() | st.sampled_from(["r1", "r2", "r3", "r4"])


def _cmd(kind: str, rid: str | None, **fields: Any) -> bytes:
    if rid is not None:
        fields["rid"] = rid
    return encode_command(kind, **fields)


well_formed = st.one_of(
    st.builds(lambda s, r: _cmd("create_schedule", r, schedule=codec.schedule_to_dict(s)), schedules, rids),
    st.builds(lambda j, i, r: _cmd("delete_schedule", r, job_name=j, schedule_id=i), jobs, ids, rids),
    st.builds(
        lambda j, i, p, r: _cmd("set_paused", r, job_name=j, schedule_id=i, paused=p),
        jobs,
        ids,
        st.booleans(),
        rids,
    ),
    st.builds(lambda run, r: _cmd("enqueue_run", r, run=codec.run_to_dict(run)), runs, rids),
    st.builds(lambda j, i, t, r: _cmd("cancel_run", r, job_name=j, run_id=i, at=t), jobs, ids, times, rids),
    st.builds(
        lambda i, tick, run: _cmd(
            "fire_tick",
            None,
            schedule_id=i,
            tick=tick,
            at=tick * 1000 + 5,
            outcome="fired",
            run=codec.run_to_dict(run),
        ),
        ids,
        st.integers(0, 100),
        runs,
    ),
    st.builds(
        lambda i, st_, t: _cmd("run_status", None, run_id=i, status=st_, at=t),
        ids,
        st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Queued"]),
        times,
    ),
    st.builds(lambda i, t: _cmd("start_dispatch", None, run_id=i, term=1, index=t), ids, times),
    st.builds(lambda r: _cmd("barrier", r), rids),
    st.builds(
        lambda j, i, run, r: _cmd(
            "trigger_schedule", r, job_name=j, schedule_id=i, at=5, run=codec.run_to_dict(run)
        ),
        jobs,
        ids,
        runs.map(lambda run: replace(run, schedule_id="a")),
        rids,
    ),
    st.builds(
        lambda j, i, ticks, policy, r: _cmd(
            "backfill",
            r,
            job_name=j,
            schedule_id=i,
            at=7,
            policy=policy,
            spec=codec.spec_to_dict(JobSpec(image="img:1")),
            ticks=[[t, f"k{t}"] for t in sorted(ticks)],
        ),
        jobs,
        ids,
        st.sets(st.integers(0, 100), max_size=4),
        st.sampled_from(["Allow", "Forbid", "Replace"]),
        rids,
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
malformed = st.one_of(
    st.binary(max_size=40),
    json_values.map(orjson.dumps),
    st.builds(
        lambda kind, body: orjson.dumps({"v": 1, "type": kind, **body}),
        st.sampled_from([*statemachine.HANDLERS, "nope"]),
        st.dictionaries(
            st.sampled_from(
                ["rid", "schedule", "run", "job_name", "schedule_id", "run_id", "at", "tick", "outcome"]
            ),
            json_values,
            max_size=5,
        ),
    ),
)
commands = st.lists(st.one_of(well_formed, well_formed, malformed), max_size=30)


@settings(max_examples=150, deadline=None)
@given(commands)
def test_apply_never_raises_and_snapshot_round_trips(payloads: list[bytes]) -> None:
    state = State()
    for p in payloads:
        result = apply(state, p)  # any exception fails the test
        assert isinstance(result, statemachine.Result)
    restored = decode_snapshot(encode_snapshot(state))
    assert restored == state
    assert fingerprint(restored) == fingerprint(state)


@settings(max_examples=100, deadline=None)
@given(commands, commands)
def test_snapshot_then_more_commands_equals_straight_replay(first: list[bytes], rest: list[bytes]) -> None:
    straight = statemachine.replay(first + rest)
    resumed = decode_snapshot(encode_snapshot(statemachine.replay(first)))
    for p in rest:
        apply(resumed, p)
    assert fingerprint(resumed) == fingerprint(straight)


def _schedule(i: str = "s1") -> bytes:
    return codec.schedule_to_dict(Schedule(id=i, job_name="fib", cron="* * * * *"))  # type: ignore[return-value]


def test_repeated_request_id_returns_stored_result_without_reapplying() -> None:
    state = State()
    create = encode_command("create_schedule", rid="r1", schedule=_schedule())
    first = apply(state, create)
    assert first.ok and first.value == {"Id": "s1"}
    delete = encode_command("delete_schedule", rid="r2", job_name="fib", schedule_id="s1")
    assert apply(state, delete).ok
    # A retry of the create (same rid) must not bring the deleted schedule back.
    assert apply(state, create) == first
    assert state.schedules == {}
    # A different request creating the same id is a real conflict-free create again.
    assert apply(state, encode_command("create_schedule", rid="r3", schedule=_schedule())).ok


def test_fire_tick_accepts_each_tick_once_and_in_order() -> None:
    state = State()
    apply(state, encode_command("create_schedule", schedule=_schedule()))

    def fire(tick: int, run_id: str) -> statemachine.Result:
        run = Run(
            id=run_id,
            job_name="fib",
            spec=JobSpec(image="i"),
            status=RunStatus.QUEUED,
            queued_at_ms=tick * 1000,
            kube_name=run_id,
            schedule_id="s1",
            tick=tick,
        )
        return apply(
            state,
            encode_command(
                "fire_tick",
                schedule_id="s1",
                tick=tick,
                at=tick * 1000 + 7,
                outcome="fired",
                run=codec.run_to_dict(run),
            ),
        )

    assert fire(60, "s1-60").ok
    assert fire(60, "s1-60-again").code == "duplicate"
    assert fire(30, "s1-30").code == "duplicate"
    assert fire(120, "s1-120").ok
    assert [r.id for r in state.runs_of("fib")] == ["s1-60", "s1-120"]
    assert [(t.tick, t.lateness_ms) for t in state.ledger["s1"]] == [(60, 7), (120, 7)]


def test_fire_tick_may_claim_its_run_for_dispatch_with_term_and_index() -> None:
    state = State()
    apply(state, encode_command("create_schedule", schedule=_schedule()))

    def fire(tick: int, status: RunStatus, term: int | None, index: int | None) -> statemachine.Result:
        run = Run(
            id=f"s1-{tick}",
            job_name="fib",
            spec=JobSpec(image="i"),
            status=status,
            queued_at_ms=tick * 1000,
            kube_name=f"s1-{tick}",
            schedule_id="s1",
            tick=tick,
            dispatch_term=term,
            dispatch_index=index,
        )
        fields = {"schedule_id": "s1", "tick": tick, "at": tick * 1000, "outcome": "fired"}
        return apply(state, encode_command("fire_tick", **fields, run=codec.run_to_dict(run)))

    before = fingerprint(state)
    assert fire(60, RunStatus.DISPATCHING, None, None).code == "invalid"
    assert fire(60, RunStatus.SUCCEEDED, None, None).code == "invalid"
    assert fire(60, RunStatus.PENDING, 3, 40).code == "invalid"
    assert fingerprint(state) == before, "a refused FireTick changes nothing, not even last_fired"
    assert fire(60, RunStatus.DISPATCHING, 3, 40).ok
    claimed = state.runs["s1-60"]
    assert (claimed.status, claimed.dispatch_term, claimed.dispatch_index) == (RunStatus.DISPATCHING, 3, 40)
    assert state.active.get("fib") == 1 and not state.queued.get("fib")
    assert fire(120, RunStatus.QUEUED, None, None).ok
    assert list(state.queued["fib"]) == ["s1-120"]
    assert state.last_fired["s1"] == 120


def test_fire_tick_from_a_stale_leader_does_not_record_handled_ticks_as_missed() -> None:
    """A deposed leader woken by SIGCONT proposes tick 103 with "missed" 101-102 from its old view;
    the new leader had fired them. They used to be recorded twice, fired and missed (seen through
    the chaos checker's tick-handled-twice invariant; live, the stale command must commit before
    the new leader's own FireTick of tick 103, a narrow race)."""
    state = State()
    apply(state, encode_command("create_schedule", schedule=_schedule()))

    def fire(tick: int, missed: list[int]) -> statemachine.Result:
        run = Run(
            id=f"s1-{tick}",
            job_name="fib",
            spec=JobSpec(image="i"),
            status=RunStatus.QUEUED,
            queued_at_ms=tick * 1000,
            kube_name=f"s1-{tick}",
            schedule_id="s1",
            tick=tick,
        )
        cmd = encode_command(
            "fire_tick",
            schedule_id="s1",
            tick=tick,
            at=tick * 1000,
            outcome="fired",
            missed=missed,
            run=codec.run_to_dict(run),
        )
        return apply(state, cmd)

    assert fire(100, []).ok  # the old leader, before it was stopped
    assert fire(101, []).ok and fire(102, []).ok  # the new leader
    assert fire(103, [101, 102]).ok  # the old leader wakes up
    assert [(t.tick, t.outcome.value) for t in state.ledger["s1"]] == [
        (100, "fired"),
        (101, "fired"),
        (102, "fired"),
        (103, "fired"),
    ]


def test_conditional_status_move_does_not_overtake_a_newer_status() -> None:
    state = State()
    run = Run(
        id="r",
        job_name="fib",
        spec=JobSpec(image="i"),
        status=RunStatus.QUEUED,
        queued_at_ms=0,
        kube_name="k",
    )
    apply(state, encode_command("enqueue_run", run=codec.run_to_dict(run)))
    apply(state, encode_command("start_dispatch", run_id="r", term=1, index=1))
    assert apply(state, encode_command("run_status", run_id="r", status="Running", at=5)).ok
    late = encode_command("run_status", run_id="r", status="Pending", expect="Dispatching", at=6)
    assert apply(state, late).code == "conflict"
    assert state.runs["r"].status is RunStatus.RUNNING


def test_malformed_command_leaves_state_untouched() -> None:
    state = State()
    apply(state, encode_command("create_schedule", schedule=_schedule()))
    before = fingerprint(state)
    bad = orjson.dumps(
        {"v": 1, "type": "fire_tick", "schedule_id": "s1", "tick": 5, "at": 9, "outcome": "fired"}
    )
    result = apply(state, bad)
    assert result.code == "invalid"
    assert fingerprint(state) == before
    assert apply(state, b"\xff\x00").code == "invalid"
    assert apply(state, orjson.dumps({"v": 2, "type": "barrier"})).code == "invalid"


def test_restore_applies_only_to_an_empty_state() -> None:
    state = State()
    sched = _schedule("s9")
    assert apply(state, encode_command("restore", schedules=[sched], last_fired={"s9": 120})).ok
    assert state.last_fired == {"s9": 120}
    again = apply(state, encode_command("restore", schedules=[_schedule("s10")], last_fired={}))
    assert again.code == "conflict"
    assert list(state.schedules) == ["s9"]


def test_finished_runs_beyond_the_limit_are_pruned_oldest_first_and_indexes_stay_right() -> None:
    state = State()
    limit = statemachine.FINISHED_RUNS_PER_JOB
    for i in range(limit + 30):
        run = Run(
            id=f"r{i}",
            job_name="fib",
            spec=JobSpec(image="i"),
            status=RunStatus.QUEUED,
            queued_at_ms=i,
            kube_name="k",
        )
        assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(run))).ok
    assert len(state.queued["fib"]) == limit + 30
    for i in range(limit + 20):
        apply(state, encode_command("start_dispatch", run_id=f"r{i}", term=1, index=i))
        apply(state, encode_command("run_status", run_id=f"r{i}", status="Succeeded", at=i))
    assert state.finished["fib"] == limit
    assert "r0" not in state.runs and f"r{limit + 19}" in state.runs
    assert [r.id for r in state.queue_of("fib")] == [f"r{i}" for i in range(limit + 20, limit + 30)]
    assert "fib" not in state.active
    assert decode_snapshot(encode_snapshot(state)) == state


@settings(max_examples=100, deadline=None)
@given(commands)
def test_chunked_snapshot_encoding_is_the_same_document(payloads: list[bytes]) -> None:
    state = statemachine.replay(payloads)
    assert orjson.loads(encode_snapshot(state)) == orjson.loads(
        orjson.dumps(statemachine.snapshot_to_dict(state))
    )


def test_chunked_snapshot_of_more_than_one_chunk_round_trips() -> None:
    state = State()
    n = statemachine.SNAPSHOT_CHUNK * 2 + 7
    docs = [codec.schedule_to_dict(Schedule(id=f"s{i}", job_name="fib", cron="* * * * *")) for i in range(n)]
    apply(state, encode_command("restore", schedules=docs, last_fired={f"s{i}": i for i in range(n)}))
    assert decode_snapshot(encode_snapshot(state)) == state


json_commands = st.lists(st.one_of(well_formed, well_formed, json_values.map(orjson.dumps)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(json_commands, st.integers(1, 30))
def test_a_batch_applies_like_its_commands_one_by_one(payloads: list[bytes], cut: int) -> None:
    """Same results, same state, whatever the commands (refused ones included) and the batch cuts;
    and either way each command reaches the hooks decoded, with its own result."""
    one_by_one = State()
    singles = [statemachine.apply_entry(one_by_one, p) for p in payloads]
    expected = [a.result for a in singles]
    decoded = [orjson.loads(p) for p in payloads]
    assert [pair for a in singles for pair in a.commands] == list(zip(decoded, expected, strict=True))
    batched = State()
    results: list[statemachine.Result] = []
    pairs: list[tuple[object, statemachine.Result]] = []
    for start in range(0, len(payloads), cut):
        applied = statemachine.apply_entry(batched, statemachine.encode_batch(payloads[start : start + cut]))
        answer = applied.result
        assert answer.ok and answer.value is not None
        results.extend(answer.value["Results"])
        pairs.extend(applied.commands)
    assert results == expected
    assert pairs == list(zip(decoded, expected, strict=True))
    assert fingerprint(batched) == fingerprint(one_by_one)


def test_a_node_of_the_earlier_release_refuses_hello_and_batch_and_changes_nothing() -> None:
    hello = encode_command("hello", node="10.0.0.1:3262", level=2)
    batch = statemachine.encode_batch([encode_command("create_schedule", schedule=_schedule())])
    old = State()
    for payload in (hello, batch):
        result = apply(old, payload, level=1)
        assert result.code == "invalid" and "unknown command type" in result.message
    assert fingerprint(old) == fingerprint(State())

    new = State()
    assert apply(new, hello).ok
    assert new.levels == {"10.0.0.1:3262": 2}
    assert (apply(new, batch).value or {})["Results"] == [statemachine.Result("ok", value={"Id": "s1"})]


def test_batching_waits_for_every_member_to_announce_it() -> None:
    members = ("a:1", "b:1", "c:1")
    state = State()
    assert not statemachine.applied_by_all(state, members, "batch")
    apply(state, encode_command("hello", node="a:1", level=2))
    apply(state, encode_command("hello", node="b:1", level=2))
    assert not statemachine.applied_by_all(state, members, "batch")  # c has not said a word: maybe level 1
    apply(state, encode_command("hello", node="c:1", level=1))
    assert not statemachine.applied_by_all(state, members, "batch")
    apply(state, encode_command("hello", node="c:1", level=2))
    assert statemachine.applied_by_all(state, members, "batch")
    for bad in ({"node": "", "level": 2}, {"node": "d:1", "level": 0}, {"node": "d:1", "level": "2"}):
        assert apply(state, encode_command("hello", **bad)).code == "invalid"
    assert set(state.levels) == set(members)


def test_a_batch_refuses_nesting_and_oversize_without_touching_the_state() -> None:
    state = State()
    inner = statemachine.encode_batch([encode_command("create_schedule", schedule=_schedule("s1"))])
    outer = apply(
        state, statemachine.encode_batch([inner, encode_command("create_schedule", schedule=_schedule("s2"))])
    )
    assert outer.ok and outer.value is not None
    nested, created = outer.value["Results"]
    assert nested.code == "invalid" and "batch" in nested.message
    assert created.ok and set(state.schedules) == {"s2"}

    before = fingerprint(state)
    barrier = encode_command("barrier")
    too_many = apply(state, statemachine.encode_batch([barrier] * (statemachine.MAX_BATCH_COMMANDS + 1)))
    assert too_many.code == "invalid" and str(statemachine.MAX_BATCH_COMMANDS) in too_many.message
    not_a_list = apply(state, orjson.dumps({"v": 1, "type": "batch", "commands": {"a": 1}}))
    assert not_a_list.code == "invalid"
    assert fingerprint(state) == before
    # Refused whole, or not JSON at all: no command was applied, so none reaches the hooks.
    for payload in (statemachine.encode_batch([barrier] * (statemachine.MAX_BATCH_COMMANDS + 1)), b"{"):
        refused = statemachine.apply_entry(state, payload)
        assert refused.result.code == "invalid" and refused.commands == ()


def test_levels_survive_a_snapshot_and_a_snapshot_of_the_earlier_release_has_none() -> None:
    state = State()
    apply(state, encode_command("hello", node="a:1", level=2))
    assert decode_snapshot(encode_snapshot(state)).levels == {"a:1": 2}
    earlier = orjson.loads(encode_snapshot(state))
    del earlier["levels"]
    assert decode_snapshot(orjson.dumps(earlier)).levels == {}


# -- a restore in parts ----------------------------------------------------------------------------


def _part(restore: str, part: int, parts: int, ids: range, last_fired: dict[str, int] | None = None) -> bytes:
    return encode_command(
        "restore_part",
        rid=f"{restore}.{part}",
        restore=restore,
        part=part,
        parts=parts,
        schedules=[
            codec.schedule_to_dict(Schedule(id=f"s{i}", job_name=f"j{i % 3}", cron="* * * * *")) for i in ids
        ],
        last_fired=last_fired or {},
    )


def _content(state: State) -> tuple[object, ...]:
    """What a restore changes (``recent`` remembers refusals too), copied."""
    staged = None if state.restoring is None else state.restoring.copy()
    return (dict(state.schedules), dict(state.last_fired), dict(state.job_schedules), staged)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(1, 40), min_size=1, max_size=40), st.data())
def test_a_restore_in_parts_lands_what_one_restore_does(
    count: int, cuts: list[int], data: st.DataObject
) -> None:
    fired = data.draw(
        st.dictionaries(st.sampled_from([f"s{i}" for i in range(count + 3)]), st.integers(0, 10**10))
    )
    whole = State()
    docs = [
        codec.schedule_to_dict(Schedule(id=f"s{i}", job_name=f"j{i % 3}", cron="* * * * *"))
        for i in range(count)
    ]
    assert apply(whole, encode_command("restore", rid="w", schedules=docs, last_fired=fired)).ok
    bounds, start = [], 0
    for cut in cuts:
        if start >= count:
            break
        bounds.append(range(start, min(count, start + cut)))
        start += cut
    if start < count:
        bounds.append(range(start, count))
    parted = State()
    for n, ids in enumerate(bounds):
        mine = {k: v for k, v in fired.items() if int(k[1:]) in ids}
        result = apply(parted, _part("r", n, len(bounds), ids, mine))
        if n < len(bounds) - 1:
            assert result == statemachine.OK  # a bare "ok": still a cold start for the next leader
            assert parted.schedules == {} and parted.restoring is not None
        else:
            assert result.value == {"Restored": count}
    assert _content(parted) == _content(whole)


def test_restore_parts_out_of_order_or_onto_schedules_are_refused() -> None:
    state = State()
    assert apply(state, _part("r", 0, 3, range(0, 2))).ok
    staged = decode_snapshot(encode_snapshot(state))
    assert staged.restoring == state.restoring and len(state.restoring.schedules) == 2  # type: ignore[union-attr]
    for wrong in (
        _part("r", 2, 3, range(4, 6)),
        _part("other", 1, 3, range(2, 4)),
        _part("r", 1, 4, range(2, 4)),
    ):
        before = _content(state)
        assert apply(state, wrong).code == "interrupted"
        assert _content(state) == before
    malformed = orjson.loads(_part("r", 1, 3, range(2, 4)))
    malformed["schedules"] = [{"Id": "x"}]
    malformed["rid"] = "malformed"  # not r.1: that request id has an answer remembered already
    before = _content(state)
    assert apply(state, orjson.dumps(malformed)).code == "invalid"
    assert _content(state) == before
    for bad_numbers in ({"part": 3, "parts": 3}, {"part": -1, "parts": 3}, {"part": "1", "parts": 3}):
        doc = {**orjson.loads(_part("r", 1, 3, range(2, 4))), **bad_numbers, "rid": None}
        assert apply(state, orjson.dumps(doc)).code == "invalid"
    # A new restore (an earlier leader's was left unfinished) starts over.
    assert apply(state, _part("again", 0, 2, range(10, 11))).ok
    assert apply(state, _part("again", 1, 2, range(11, 12))).value == {"Restored": 2}
    assert set(state.schedules) == {"s10", "s11"} and state.restoring is None
    # Onto schedules: refused, and what was staged meanwhile is dropped.
    state.schedules.clear()
    state.job_schedules.clear()
    assert apply(state, _part("late", 0, 2, range(0, 1))).ok
    assert apply(state, encode_command("create_schedule", schedule=_schedule("mine"))).ok
    assert apply(state, _part("late", 1, 2, range(1, 2))).code == "conflict"
    assert set(state.schedules) == {"mine"} and state.restoring is None


def test_a_node_of_an_earlier_release_refuses_restore_parts() -> None:
    state = State()
    result = apply(state, _part("r", 0, 1, range(0, 1)), level=2)
    assert result.code == "invalid" and "unknown command type" in result.message
    assert fingerprint(state) == fingerprint(State())
    assert apply(state, _part("r", 0, 1, range(0, 1))).value == {"Restored": 1}
