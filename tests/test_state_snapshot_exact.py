"""Exact answers of the cluster commands (backup reports, restores) and of snapshots.

Found unchecked by mutation testing (bench/RESULTS.md): the refusals of ``backup_report`` and
``backup_choice``, what a restore records of the backup it came from, and the parts of a
snapshot (indexes, levels, backups, a staged restore) that must survive a round trip, in pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from slimsched import codec, state_snapshot
from slimsched.model import JobSpec, Run, RunStatus, Schedule
from slimsched.statemachine import (
    SNAPSHOT_CHUNK,
    Restoring,
    Result,
    State,
    apply,
    decode_snapshot,
    encode_command,
    encode_snapshot,
    fingerprint,
    snapshot_from_dict,
    snapshot_to_dict,
)

OK = Result("ok")
NOT_EMPTY = Result("conflict", "state already holds schedules; restore refused")


def _schedule(sid: str, job: str = "fib") -> Schedule:
    return Schedule(id=sid, job_name=job, cron="* * * * *", created_at_ms=5)


def _header(node: Any = "n:1", index: Any = 7, sha: Any = "ab", count: Any = 3) -> dict[str, Any]:
    return {"node": node, "raft_index": index, "payload_sha256": sha, "schedule_count": count}


# --- backup reports and the cold start's choice --------------------------------------------------


def test_backup_reports_are_kept_per_node_and_bad_ones_refused() -> None:
    state = State()
    bad = Result("invalid", "backup_report needs a node, a raft_index, a payload_sha256 and a schedule_count")
    for header in [
        _header(node=""),
        _header(node=5),
        _header(sha=None),
        _header(index=-1),
        _header(index=True),
        _header(index="7"),
        _header(count=-1),
        _header(count=False),
        _header(count=2.0),
    ]:
        assert apply(state, encode_command("backup_report", **header)) == bad, header
    assert state.backups == {}, "a refused report records nothing"
    assert apply(state, encode_command("backup_report", **_header())) == OK
    assert apply(state, encode_command("backup_report", **_header("n:2", 0, "", 0))) == OK
    assert apply(state, encode_command("backup_report", **_header(index=9, sha="cd", count=4))) == OK
    assert state.backups == {
        "reports": {"n:1": _header(index=9, sha="cd", count=4), "n:2": _header("n:2", 0, "", 0)}
    }, "a node's newer report replaces its older one; the others' stay"
    copy = state.copy()
    assert copy.backups == state.backups, "a copy holds the reports"
    assert decode_snapshot(encode_snapshot(state)).backups == state.backups


def test_backup_choice_names_a_report_only_before_any_schedule() -> None:
    state = State()
    bad = Result("invalid", "backup_choice needs a node, a raft_index, a payload_sha256 and a schedule_count")
    assert apply(state, encode_command("backup_choice", **_header(node=""))) == bad
    assert apply(state, encode_command("backup_report", **_header())) == OK
    assert apply(state, encode_command("backup_choice", **_header())) == OK
    assert state.backups == {"reports": {"n:1": _header()}, "choice": _header()}
    assert apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(_schedule("a")))).ok
    assert apply(state, encode_command("backup_choice", **_header("n:2"))) == NOT_EMPTY
    assert state.backups["choice"] == _header()


def test_a_restore_records_the_index_of_its_backup_and_clears_the_choice() -> None:
    docs = [codec.schedule_to_dict(_schedule("a")), codec.schedule_to_dict(_schedule("b", "daisy"))]
    for base in [True, -1, "5", None, 1.5]:
        state = State()
        state.backups = {"choice": _header()}
        restore = encode_command("restore", schedules=docs, last_fired={"a": 60, "gone": 9}, base_index=base)
        assert apply(state, restore) == Result("ok", value={"Restored": 2})
        assert state.backups == {"choice": _header()}, f"base_index {base!r} is not an index"
    state = State()
    state.backups = {"choice": _header(), "reports": {"n:1": _header()}}
    restore = encode_command("restore", schedules=docs, last_fired={"a": 60, "gone": 9}, base_index=0)
    assert apply(state, restore) == Result("ok", value={"Restored": 2})
    assert state.backups == {"choice": None, "reports": {"n:1": _header()}, "base": 0}
    assert state.last_fired == {"a": 60}, "ticks of schedules the backup does not hold are dropped"
    assert {j: list(ids) for j, ids in state.job_schedules.items()} == {"fib": ["a"], "daisy": ["b"]}


def test_the_last_part_of_a_restore_lands_with_its_base_index() -> None:
    state = State()
    doc = codec.schedule_to_dict(_schedule("a"))
    first = encode_command("restore_part", restore="r", part=0, parts=2, schedules=[doc], base_index=3)
    assert apply(state, first) == OK
    assert state.backups == {}, "nothing lands before the last part"
    last = encode_command("restore_part", restore="r", part=1, parts=2, schedules=[], base_index=4)
    assert apply(state, last) == Result("ok", value={"Restored": 1})
    assert state.backups == {"base": 4, "choice": None} and state.last_fired == {}
    assert list(state.job_schedules["fib"]) == ["a"]


def test_a_restore_part_onto_schedules_drops_what_was_staged() -> None:
    state = State()
    doc = codec.schedule_to_dict(_schedule("a"))
    assert apply(state, encode_command("restore_part", restore="r", part=0, parts=2, schedules=[doc])) == OK
    assert state.restoring is not None
    assert apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(_schedule("z")))).ok
    part = encode_command("restore_part", restore="r", part=1, parts=2, schedules=[])
    assert apply(state, part) == NOT_EMPTY
    assert state.restoring is None and list(state.schedules) == ["z"]


def test_a_whole_restore_drops_a_staged_one() -> None:
    state = State()
    doc = codec.schedule_to_dict(_schedule("a"))
    assert apply(state, encode_command("restore_part", restore="r", part=0, parts=2, schedules=[doc])) == OK
    assert apply(state, encode_command("restore", schedules=[doc])) == Result("ok", value={"Restored": 1})
    assert state.restoring is None


# --- snapshots ------------------------------------------------------------------------------------


def _run(rid: str, job: str, status: RunStatus) -> Run:
    return Run(id=rid, job_name=job, spec=JobSpec(image="i"), status=status, queued_at_ms=1, kube_name=rid)


def _busy_state() -> State:
    """Every part of a state a snapshot carries, each with more entries than one encoded piece."""
    state = State()
    n = SNAPSHOT_CHUNK + 3
    docs = [codec.schedule_to_dict(_schedule(f"s{i}", "fib" if i % 2 else "daisy")) for i in range(n)]
    assert apply(
        state, encode_command("restore", schedules=docs, last_fired={f"s{i}": i for i in range(n)})
    ).ok
    for i in range(n):
        run = _run(f"q{i}", "fib", RunStatus.QUEUED)
        assert apply(state, encode_command("enqueue_run", run=codec.run_to_dict(run), rid=f"rid{i}")).ok
    assert apply(state, encode_command("start_dispatch", run_id="q0", term=2, index=9)).ok
    assert apply(state, encode_command("cancel_run", job_name="fib", run_id="q1", at=5)).ok
    for i in range(n):
        fire = encode_command("fire_tick", schedule_id=f"s{i}", tick=10**6, at=10**9, outcome="missed")
        assert apply(state, fire).ok
    assert apply(state, encode_command("hello", node="n:1", level=4)).ok
    assert apply(state, encode_command("backup_report", **_header())).ok
    state.restoring = Restoring(id='r"1', parts=3, next_part=2, last_fired={f"x{i}": i for i in range(n)})
    state.restoring.schedules.update({f"x{i}": _schedule(f"x{i}") for i in range(n)})
    return state


def test_a_snapshot_in_pieces_is_the_whole_document_and_keeps_the_indexes() -> None:
    state = _busy_state()
    data = encode_snapshot(state)
    assert orjson.loads(data) == orjson.loads(orjson.dumps(snapshot_to_dict(state)))
    back = decode_snapshot(data)
    assert back == state
    assert list(back.queued["fib"]) == [f"q{i}" for i in range(2, SNAPSHOT_CHUNK + 3)]
    assert back.active == {"fib": 1} and back.finished == {"fib": 1}
    assert list(back.job_runs["fib"]) == list(state.runs)
    assert len(back.job_schedules["daisy"]) == (SNAPSHOT_CHUNK + 4) // 2
    assert back.levels == {"n:1": 4} and back.backups == {"reports": {"n:1": _header()}}
    assert back.restoring == state.restoring
    assert back.recent["rid0"] == Result("ok", value={"Id": "q0"}) and len(back.recent) == SNAPSHOT_CHUNK + 3
    assert fingerprint(back) == fingerprint(state)


def test_a_snapshot_without_the_later_parts_decodes_to_an_empty_default() -> None:
    state = State()
    assert apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(_schedule("a")))).ok
    doc = orjson.loads(encode_snapshot(state))
    assert set(doc) == {"v", "schedules", "last_fired", "runs", "ledger", "recent", "levels"}
    del doc["levels"]
    old = snapshot_from_dict({**doc, "restoring": None, "backups": None})
    assert (old.levels, old.restoring, old.backups) == ({}, None, {})
    assert old == state


def test_a_fingerprint_sees_every_replicated_part() -> None:
    base = _busy_state()
    seen = {fingerprint(base)}
    changes: list[Callable[[State], object]] = [
        lambda s: s.last_fired.update(s0=99),
        lambda s: s.levels.update({"n:2": 2}),
        lambda s: setattr(s, "backups", {}),
        lambda s: setattr(s, "restoring", None),
        lambda s: s.recent.popitem(),
    ]
    for change in changes:
        state = decode_snapshot(encode_snapshot(base))
        change(state)
        seen.add(fingerprint(state))
    assert len(seen) == 6
    assert state_snapshot.fingerprint(State()) == state_snapshot.fingerprint(State())


def test_equal_states_have_one_fingerprint_whatever_order_their_maps_were_filled_in() -> None:
    """The chaos checker reads equal StateHash as "same state": the hash must agree with ==."""
    first, second = State(), State()
    for node in ("a:1", "b:1"):
        assert apply(first, encode_command("hello", node=node, level=2)).ok
    for node in ("b:1", "a:1"):
        assert apply(second, encode_command("hello", node=node, level=2)).ok
    assert first == second
    assert fingerprint(first) == fingerprint(second)
