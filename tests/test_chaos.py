"""The chaos harness: its partition proxy, its invariant checker, a short run, and proof it can fail.

The short run (about a minute, a fault every 5 s of every kind) must find zero violations on a
correct build. A build started with SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1 (the state machine then
accepts a FireTick for a tick already handled) must make the checker report violations: a
deposed leader woken by SIGCONT re-proposes ticks the new leader already handled.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched import chaos, chaosbackup
from slimsched.chaos import ChaosConfig
from slimsched.chaoscheck import (
    EVERY_SECOND,
    AckedTrigger,
    ClientLog,
    CreatedSchedule,
    DeletedSchedule,
    NodeSnapshot,
    check,
)
from slimsched.chaosplan import ALL_KINDS, FaultKind, plan_timetable
from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.jobmanifest import kube_job_name
from slimsched.localcluster import free_ports
from slimsched.partitionproxy import PartitionProxy, identify_peer, pysyncobj_first_frame

# --- identifying the peer of a Raft connection -------------------------------------------------


def _body(frame: bytes) -> bytes:
    return frame[4:]


def test_identify_peer_reads_the_pysyncobj_first_frame() -> None:
    frame = pysyncobj_first_frame("127.0.0.1:40001")
    assert identify_peer(_body(frame), ["127.0.0.1:40001", "127.0.0.1:40002"]) == "127.0.0.1:40001"
    assert identify_peer(_body(frame), ["127.0.0.1:40002"]) is None


def test_identify_peer_matches_whole_addresses_only() -> None:
    """``127.0.0.1:4000`` is a prefix of ``127.0.0.1:40001``: the length prefix tells them apart."""
    frame = pysyncobj_first_frame("127.0.0.1:40001")
    assert identify_peer(_body(frame), ["127.0.0.1:4000", "127.0.0.1:40001"]) == "127.0.0.1:40001"
    short = pysyncobj_first_frame("127.0.0.1:4000")
    assert identify_peer(_body(short), ["127.0.0.1:4000", "127.0.0.1:40001"]) == "127.0.0.1:4000"


def test_identify_peer_rejects_what_it_cannot_read() -> None:
    assert identify_peer(b"not zlib at all", ["127.0.0.1:40001"]) is None
    assert identify_peer(b"", ["127.0.0.1:40001"]) is None


# --- the proxy ---------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _dial(front: str, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = front.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
    writer.write(first)
    return reader, writer


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except (ConnectionError, OSError):
        return True


async def test_proxy_relays_then_cuts_refuses_and_heals_a_link() -> None:
    front_a, front_b, back_a, back_b = (f"127.0.0.1:{p}" for p in free_ports(4))
    echo = await asyncio.start_server(_echo, "127.0.0.1", int(back_a.rsplit(":", 1)[1]))
    proxy = PartitionProxy({front_a: back_a, front_b: back_b})
    await proxy.start()
    try:
        hello = pysyncobj_first_frame(front_b)
        reader, writer = await _dial(front_a, hello + b"ping")
        assert await asyncio.wait_for(reader.readexactly(len(hello) + 4), 2) == hello + b"ping"
        assert proxy.connected(front_a, front_b)

        proxy.cut(front_b, front_a)  # either order names the same link
        assert await _closed(reader), "a cut closes the open connection"
        writer.close()
        reader, writer = await _dial(front_a, hello)
        assert await _closed(reader), "a cut link refuses new connections"
        writer.close()
        assert proxy.stats["refused"] == 1

        stranger, w2 = await _dial(front_a, pysyncobj_first_frame("127.0.0.1:1"))
        assert await _closed(stranger), "a connection from no known peer is refused"
        w2.close()

        proxy.heal_all()
        reader, writer = await _dial(front_a, hello + b"again")
        assert await asyncio.wait_for(reader.readexactly(len(hello) + 5), 2) == hello + b"again"
        writer.close()
    finally:
        await proxy.stop()
        echo.close()
        await echo.wait_closed()


def test_proxy_serves_loopback_only() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
        PartitionProxy({"0.0.0.0:4000": "127.0.0.1:4001"})


# --- the timetable -----------------------------------------------------------------------------


def test_timetable_brings_every_kind_once_per_round() -> None:
    table = plan_timetable(60, 5, ALL_KINDS, random.Random(7))
    assert [f.at for f in table] == [5.0 * i for i in range(1, 12)]
    first_round = [f.kind for f in table[: len(ALL_KINDS)]]
    assert sorted(first_round) == sorted(ALL_KINDS)


# --- the checker on made-up observations --------------------------------------------------------

TICK_JOB, TRIGGER_JOB, CHURN_JOB = "tick-0", "trig-0", "churn-0"
SID, DELETED_SID, RUN_ID = "s1", "s2", "r1"
TICKS = range(1000, 1006)


def _run(job: str, run_id: str, schedule_id: str | None, queued_ms: int) -> dict[str, Any]:
    return {
        "Id": run_id,
        "Name": kube_job_name(job, run_id),
        "Status": "Succeeded",
        "ScheduleId": schedule_id,
        "InQueueTimestamp": queued_ms,
        "Job": job,
    }


def _fired(tick: int) -> dict[str, Any]:
    return {"Tick": tick, "Outcome": "fired", "RecordedAt": tick * 1000 + 7, "RunId": f"{SID}-{tick}"}


World = tuple[ClientLog, list[NodeSnapshot], list[tuple[str, str]]]


def _clean_world() -> World:
    log = ClientLog()
    log.created[SID] = CreatedSchedule(TICK_JOB, EVERY_SECOND, 999.0)
    log.created[DELETED_SID] = CreatedSchedule(CHURN_JOB, chaos.NEVER_IN_A_RUN, 999.0)
    log.deleted[DELETED_SID] = DeletedSchedule(CHURN_JOB, 1001.0, "204")
    log.triggers[RUN_ID] = AckedTrigger(TRIGGER_JOB, 1001.0)
    ledger = [_fired(t) for t in TICKS]
    log.ledger_polls[SID] = [ledger[:3], ledger[1:4]]
    runs = {f"{SID}-{t}": _run(TICK_JOB, f"{SID}-{t}", SID, t * 1000 + 7) for t in TICKS}
    runs[RUN_ID] = _run(TRIGGER_JOB, RUN_ID, None, 1_001_000)
    snapshots = [
        NodeSnapshot(
            i,
            schedules={SID: {"Id": SID, "Name": TICK_JOB}},
            runs=copy.deepcopy(runs),
            ledgers={SID: copy.deepcopy(ledger)},
            state_hash="same",
        )
        for i in range(3)
    ]
    creations = [(str(r["Name"]), "created") for r in runs.values()]
    creations.append((str(runs[f"{SID}-1002"]["Name"]), "conflict"))  # a reconcile's 409 is fine
    return log, snapshots, creations


def test_checker_finds_nothing_wrong_in_a_clean_world() -> None:
    log, snapshots, creations = _clean_world()
    violations, stats = check(log, snapshots, creations)
    assert violations == []
    assert stats.fired == len(TICKS)


def _tick_name(tick: int) -> str:
    return kube_job_name(TICK_JOB, f"{SID}-{tick}")


def _add_record(world: World, record: dict[str, Any]) -> None:
    for snap in world[1]:
        snap.ledgers[SID].append(record)


def _drop_tick(world: World, tick: int) -> None:
    """Remove a tick from every ledger the checker sees (polls and final reads)."""
    log, snapshots, _ = world
    for records in [*log.ledger_polls[SID], *(snap.ledgers[SID] for snap in snapshots)]:
        records[:] = [r for r in records if r["Tick"] != tick]


def _job_twice(w: World) -> None:
    w[2].append((_tick_name(1003), "created"))


def _job_missing(w: World) -> None:
    w[2].remove((_tick_name(1003), "created"))


def _fired_twice(w: World) -> None:
    _add_record(w, {**_fired(1004), "RecordedAt": 1_004_900})


def _fired_and_missed(w: World) -> None:
    _add_record(w, {"Tick": 1002, "Outcome": "missed", "RecordedAt": 5})


def _tick_lost(w: World) -> None:
    _drop_tick(w, 1002)


def _head_lost(w: World) -> None:
    _drop_tick(w, 1000)
    _drop_tick(w, 1001)


def _missed_tick_ran(w: World) -> None:
    _add_record(w, {"Tick": 1006, "Outcome": "missed", "RecordedAt": 9})
    w[2].append((_tick_name(1006), "created"))


def _schedule_lost(w: World) -> None:
    w[1][2].schedules.pop(SID)


def _trigger_lost(w: World) -> None:
    w[1][1].runs.pop(RUN_ID)


def _trigger_without_job(w: World) -> None:
    w[2].remove((kube_job_name(TRIGGER_JOB, RUN_ID), "created"))


def _delete_came_back(w: World) -> None:
    w[1][1].schedules[DELETED_SID] = {"Id": DELETED_SID}


def _fired_after_delete(w: World) -> None:
    w[0].deleted[SID] = DeletedSchedule(TICK_JOB, 1003.0, "204")


def _phantom(w: World) -> None:
    w[2].append(("stray-0123456789", "created"))


def _diverged(w: World) -> None:
    w[1][0].state_hash = "other"


BREAKAGES: dict[str, tuple[Callable[[World], None], str]] = {
    "a tick Job created twice": (_job_twice, "job-created-twice"),
    "a tick without its Job": (_job_missing, "tick-not-one-job"),
    "a tick fired twice": (_fired_twice, "tick-handled-twice"),
    "a fired tick also recorded missed": (_fired_and_missed, "tick-handled-twice"),
    "a tick silently lost": (_tick_lost, "tick-lost"),
    "the first ticks of a new schedule lost": (_head_lost, "tick-lost"),
    "a missed tick that ran": (_missed_tick_ran, "unfired-tick-ran"),
    "an acknowledged schedule missing on one node": (_schedule_lost, "acked-write-lost"),
    "an acknowledged trigger missing on one node": (_trigger_lost, "acked-write-lost"),
    "an acknowledged trigger without its Job": (_trigger_without_job, "trigger-not-one-job"),
    "a deleted schedule back": (_delete_came_back, "delete-came-back"),
    "a schedule firing after its delete": (_fired_after_delete, "fired-after-delete"),
    "a Job nobody asked for": (_phantom, "phantom-job"),
    "nodes that diverge": (_diverged, "diverged"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_checker_reports_each_kind_of_violation(breakage: str) -> None:
    world = _clean_world()
    mutate, expected = BREAKAGES[breakage]
    mutate(world)
    violations, _ = check(*world)
    assert expected in {v.kind for v in violations}, violations


def test_checker_accepts_the_ledger_bound_on_a_long_outage() -> None:
    """After an outage longer than MAX_MISSED_RECORDED ticks only the newest are listed: no loss."""
    log, snapshots, creations = _clean_world()
    last = TICKS[-1]
    resumed = last + 100
    batch = [
        {"Tick": t, "Outcome": "missed", "RecordedAt": resumed * 1000}
        for t in range(resumed - MAX_MISSED_RECORDED, resumed)
    ]
    batch.append({**_fired(resumed), "RecordedAt": resumed * 1000})
    for snap in snapshots:
        snap.ledgers[SID].extend(batch)
        snap.runs[f"{SID}-{resumed}"] = _run(TICK_JOB, f"{SID}-{resumed}", SID, resumed * 1000)
    creations.append((_tick_name(resumed), "created"))
    violations, stats = check(log, snapshots, creations)
    assert violations == []
    assert stats.missed == MAX_MISSED_RECORDED


# --- real runs ----------------------------------------------------------------------------------


def test_short_chaos_run_has_no_violations(tmp_path: Path) -> None:
    report = chaos.run_chaos(ChaosConfig(duration=62.0, interval=5.0, seed=3, base_dir=str(tmp_path)))
    print(report.table())
    assert report.violations == [], report.table()
    kinds = {f.kind for f in report.faults}
    assert len(report.faults) >= 10 and len(kinds) >= 4, report.table()
    assert {FaultKind.PAUSE_LEADER, FaultKind.KILL_LEADER} <= kinds
    assert any(k.value.startswith("partition") for k in kinds)
    assert report.proxy.get("refused", 0) > 0, "a partition refused reconnections"
    assert report.ticks.fired > 100 and report.jobs_created > report.ticks.fired
    assert all(report.ops[op].acked > 0 for op in ("create schedule", "delete schedule", "trigger"))
    new_leader, first_tick = report.failover().values()
    assert new_leader[0] is not None and first_tick[0] is not None
    leader_partitions = [f for f in report.faults if f.kind is FaultKind.PARTITION_LEADER]
    assert all(f.new_leader_after is not None for f in leader_partitions), (
        "the majority side elected a leader"
    )


def test_checker_fails_a_build_without_the_fire_tick_dedup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nodes (not the harness) read the switch; pause-leader makes a deposed leader re-fire.

    About three pauses in four end with the woken leader's FireTick committed after the new
    leader's own for the same tick; with four pauses the checker misses all of them < 1 % of runs.
    """
    monkeypatch.setenv("SLIMSCHED_TEST_BREAK_FIRE_DEDUP", "1")
    out = tmp_path / "report.json"
    argv = ["--duration", "20", "--interval", "4", "--kinds", "pause-leader", "--seed", "5"]
    code = chaos.main([*argv, "--data-dir", str(tmp_path / "run"), "--json", str(out)])
    table = capsys.readouterr().out
    assert code == 1, table
    report = orjson.loads(out.read_bytes())
    kinds = {v["kind"] for v in report["violations"]}
    assert "tick-handled-twice" in kinds, table
    assert "Violations: 0" not in table


# --- the backup kinds (issue 16) ------------------------------------------------------------------


def _cold_started_world() -> tuple[World, tuple[float, float]]:
    """The clean world, then a cold start at tick 1010: runs and ledgers gone, the schedule
    restored, a fresh ledger from the restored last tick on. Ticks 1006..1009 fired after the
    last ledger read and before the stop, so they are in no ledger any more."""
    log, snapshots, creations = _clean_world()
    read_at, stopped_at = 1005.5, 1010.0
    resumed = [_fired(t) for t in range(1010, 1013)]
    for snap in snapshots:
        snap.runs = {f"{SID}-{t}": _run(TICK_JOB, f"{SID}-{t}", SID, t * 1000 + 7) for t in range(1010, 1013)}
        snap.ledgers[SID] = copy.deepcopy(resumed)
    creations += [(_tick_name(t), "created") for t in range(1006, 1013)]
    return (log, snapshots, creations), (read_at, stopped_at)


def test_checker_accepts_what_a_cold_start_wipes_and_nothing_more() -> None:
    (log, snapshots, creations), window = _cold_started_world()
    old = frozenset({_tick_name(t) for t in range(1000, 1010)} | {kube_job_name(TRIGGER_JOB, RUN_ID)})
    violations, _ = check(log, snapshots, creations, cold_starts=[window], old_jobs=old)
    assert violations == []
    # Without the cold start, the same world is full of losses.
    violations, _ = check(log, snapshots, creations)
    assert {"acked-write-lost", "tick-lost", "phantom-job"} <= {v.kind for v in violations}
    # A gap outside the window between the last read and the stop is still a lost tick.
    early = (window[0] + 3, window[1])
    violations, _ = check(log, snapshots, creations, cold_starts=[early], old_jobs=old)
    assert "tick-lost" in {v.kind for v in violations}
    # An acknowledged schedule missing after the cold start is still a lost write.
    for snap in snapshots:
        snap.schedules.clear()
    violations, _ = check(log, snapshots, creations, cold_starts=[window], old_jobs=old)
    assert "acked-write-lost" in {v.kind for v in violations}


def test_backup_watch_reports_a_lost_backup_a_lost_best_and_an_unnoticed_damage() -> None:
    watch = chaosbackup.BackupWatch()
    view = chaosbackup.VolumeView
    assert watch.observe({0: view(100, 5, "a"), 1: view(90, 5, "b"), 2: view(100, 5, "a")}) == []
    # A node's backup went back: lost (the others still hold the best).
    kinds = [k for k, _ in watch.observe({0: view(100, 5, "a"), 1: view(80, 4, "c"), 2: view(100, 5, "a")})]
    assert kinds == ["backup-lost"]
    # A wiped volume is the fault's doing; the best of the cluster must survive elsewhere.
    watch.wiped(0)
    assert watch.observe({0: view(), 1: view(120, 5, "d"), 2: view(120, 5, "d")}) == []
    watch.wiped(1)
    watch.wiped(2)
    kinds = [k for k, _ in watch.observe({0: view(), 1: view(), 2: view(110, 5, "e")})]
    assert kinds == ["best-backup-lost"]
    # A damaged file must be set aside.
    watch.damaged_by_fault(2, 0)
    kinds = [k for k, _ in watch.observe({0: view(130), 1: view(130), 2: view(130)})]
    assert kinds == ["damage-unnoticed"]
    assert watch.observe({0: view(130), 1: view(130), 2: view(130, damaged_files=1)}) == []
    # Set aside and then wiped with the whole volume (a cold start): nothing left to find.
    watch.damaged_by_fault(1, 0)
    watch.wiped(1)
    assert watch.observe({0: view(140), 1: view(), 2: view(140, damaged_files=1)}) == []


def test_read_volume_and_damage_on_real_files(tmp_path: Path) -> None:
    from slimsched import backup as bk
    from slimsched.model import Schedule

    d = tmp_path / "backup"
    assert chaosbackup.read_volume(str(d)) == chaosbackup.VolumeView()
    payload = bk.payload_of((Schedule(id="s1", job_name="j", cron="* * * * *"),), {})
    old = bk.encode_backup(payload, node="n", raft_index=7, written_at=0.0)
    new = bk.encode_backup(bk.payload_of((), {}), node="n", raft_index=9, written_at=1.0)
    d.mkdir()
    (d / bk.PREV_NAME).write_bytes(old.data)
    (d / bk.FILE_NAME).write_bytes(new.data)
    assert chaosbackup.read_volume(str(d)) == chaosbackup.VolumeView(9, 0, new.info.payload_sha256, 0)
    assert chaosbackup.damage(str(d), random.Random(1))
    assert chaosbackup.read_volume(str(d)).index == 7  # the damaged file no longer counts
    best = chaosbackup.best_backup({0: str(d)})
    assert best is not None and best[1].info.raft_index == 7  # the newest non-empty that verifies


def test_chaos_run_with_the_backup_kinds_has_no_violations(tmp_path: Path) -> None:
    kinds = (
        FaultKind.COLD_START_WIPED_LEADER_BACKUP,
        FaultKind.DAMAGE_BACKUP,
        FaultKind.RESTART_ALL_LATE,
    )
    report = chaos.run_chaos(
        ChaosConfig(duration=60.0, interval=14.0, seed=2, kinds=kinds, base_dir=str(tmp_path))
    )
    print(report.table())
    assert report.violations == [], report.table()
    assert {f.kind for f in report.faults} == set(kinds), report.table()
