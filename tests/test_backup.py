"""Schedule backups and the cold-start restore: tables for the pure parts, a real Raft node for the
file handling, and the acceptance test: a 3-node cluster whose Raft data is wiped everywhere comes
back with the same schedules (ids, pause state, last fired ticks) and fires on without a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from slimsched import backup as bk
from slimsched import cli, codec, jobconfig
from slimsched.access import AccessPolicy
from slimsched.api import errors_middleware
from slimsched.backup import fileformat
from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import kube_job_name
from slimsched.jsonhttp import request_json
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.model import ConcurrencyPolicy, EnvVar, JobOverrides, Resources, Schedule
from slimsched.node import Node
from slimsched.raft import RaftNode
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import Result, encode_command, fingerprint, replay
from tests.conftest import ManualClock, wait_for
from tests.test_raft import Trio, announcing

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000

SCHEDULES = (
    Schedule(id="a1", job_name="fibonacci", cron="0 3 * * *", overrides=JobOverrides(args=("1",))),
    Schedule(
        id="b2",
        job_name="fibonacci",
        cron="*/5 * * * *",
        time_zone="Europe/Paris",
        concurrency_policy=ConcurrencyPolicy.FORBID,
        starting_deadline_seconds=30,
        created_at_ms=T0 * 1000,
        overrides=JobOverrides(
            args=("2", "é"),
            resources=Resources(requests={"cpu": "100m"}, limits={"cpu": "200m"}),
            environments=(EnvVar(name="MODE", value="fast"),),
        ),
    ),
    Schedule(id="c3", job_name="daily", cron="0 0 * * *", paused=True),
)
LAST_FIRED = {"b2": T0 + 300}


def encoded(
    schedules: tuple[Schedule, ...] = SCHEDULES,
    last_fired: dict[str, int] | None = None,
    *,
    raft_index: int = 42,
    at: float = T0 + 0.25,
) -> bytes:
    payload = bk.payload_of(schedules, LAST_FIRED if last_fired is None else last_fired)
    return bk.encode_backup(payload, node="127.0.0.1:3262", raft_index=raft_index, written_at=at).data


def resign(doc: dict[str, Any]) -> bytes:
    """Re-hash an edited document, as a consistent forger would: checks past the hashes must hold."""
    doc["payload_sha256"] = bk.sha256_hex(bk.encode_payload(doc["payload"]))
    header = {k: doc[k] for k in fileformat.HEADER_FIELDS}
    doc["header_sha256"] = bk.sha256_hex(orjson.dumps(header, option=orjson.OPT_SORT_KEYS))
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) + b"\n"


def edited(fn: Callable[[dict[str, Any]], None], *, sign: bool) -> bytes:
    doc = orjson.loads(encoded())
    fn(doc)
    return resign(doc) if sign else orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) + b"\n"


# -- pure: encoding and verification -------------------------------------------------------------


def test_payload_is_the_canonical_encoding_whatever_the_insertion_order() -> None:
    forward = bk.make_payload(SCHEDULES, LAST_FIRED)
    backward = bk.make_payload(reversed(SCHEDULES), {**LAST_FIRED, "deleted": 5})
    assert bk.encode_payload(forward) == bk.encode_payload(backward)
    assert bk.encode_payload(forward) == orjson.dumps(forward, option=orjson.OPT_SORT_KEYS)
    assert [s["Id"] for s in forward["schedules"]] == ["a1", "b2", "c3"]
    assert forward["last_fired"] == {"b2": T0 + 300}


ids = st.text(alphabet="ab-_.0éZ", min_size=1, max_size=4)
schedule_lists = st.lists(
    st.builds(
        Schedule,
        id=ids,
        job_name=st.sampled_from(["fib", "daily"]),
        cron=st.sampled_from(["0 3 * * *", "* * * * * */10"]),
        overrides=st.builds(
            JobOverrides, args=st.none() | st.lists(st.text(max_size=3), max_size=2).map(tuple)
        ),
        paused=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda s: s.id,
)


@given(passes=st.lists(st.tuples(schedule_lists, st.dictionaries(ids, st.integers(0, 2**40))), max_size=4))
@settings(max_examples=200, deadline=None)
def test_the_incremental_encoder_gives_the_reference_bytes_pass_after_pass(
    passes: list[tuple[list[Schedule], dict[str, int]]],
) -> None:
    encoder = bk.PayloadEncoder()
    kept: dict[str, Schedule] = {}
    for schedules, last_fired in passes:
        # Reuse the objects of the previous pass where ids repeat, as the state does.
        current = [kept.get(s.id, s) if kept.get(s.id) == s else s for s in schedules]
        kept = {s.id: s for s in current}
        reference = bk.encode_payload(bk.make_payload(current, last_fired))
        payload = encoder.encode(reversed(current), last_fired)
        assert (payload.data, payload.sha256, payload.count) == (
            reference,
            bk.sha256_hex(reference),
            len(current),
        )


def test_a_backup_verifies_and_round_trips_every_field() -> None:
    raw = encoded()
    backup = bk.verify_backup(raw)
    assert backup.info == bk.BackupInfo(
        payload_sha256=bk.sha256_hex(bk.encode_payload(bk.make_payload(SCHEDULES, LAST_FIRED))),
        schedule_count=3,
        raft_index=42,
        node="127.0.0.1:3262",
        written_at="2023-11-14T22:13:20.250Z",
    )
    assert [codec.schedule_from_dict(d) for d in backup.schedules] == list(SCHEDULES)
    assert backup.last_fired == LAST_FIRED
    assert raw.endswith(b"}\n") and raw.count(b"\n") == 1
    assert bk.check_integrity(raw) == backup.info
    # The payload bytes in the file are exactly the hashed bytes.
    assert bk.encode_payload(bk.make_payload(SCHEDULES, LAST_FIRED)) in raw


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _payload(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda d: fn(d["payload"])


REFUSALS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "the file is empty"),
    ("blank", b" \n", "the file is empty"),
    ("truncated", encoded()[:-40], "not valid JSON"),
    ("not an object", b"[]\n", "not a slimsched schedule backup"),
    ("other format", edited(_set("format", "x"), sign=False), "not a slimsched schedule backup"),
    ("newer version", edited(_set("version", 2), sign=False), "unsupported backup format version 2"),
    ("unknown field", edited(_set("extra", 1), sign=False), "unknown top-level field 'extra'"),
    ("no node", edited(_drop("node"), sign=False), "field 'node' must be a string"),
    ("negative index", edited(_set("raft_index", -1), sign=False), "'raft_index' must be a non-negative"),
    ("bad hash", edited(_set("payload_sha256", "X" * 64), sign=False), "64 lowercase hexadecimal"),
    ("header edited", edited(_set("raft_index", 43), sign=False), "header checksum mismatch"),
    (
        "payload edited",
        edited(_payload(lambda p: p["last_fired"].__setitem__("b2", T0)), sign=False),
        "payload checksum mismatch",
    ),
    (
        "reformatted",
        orjson.dumps(orjson.loads(encoded()), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n",
        "not in canonical form",
    ),
    ("no final newline", encoded()[:-1], "not in canonical form"),
    (
        "invalid schedule",
        edited(_payload(lambda p: p["schedules"][1].__setitem__("Paused", "yes")), sign=True),
        "schedule #1 is invalid",
    ),
    (
        "duplicate id",
        edited(_payload(lambda p: p["schedules"].insert(1, p["schedules"][0])), sign=True),
        "schedule id 'a1' appears twice",
    ),
    (
        "unsorted",
        edited(_payload(lambda p: p["schedules"].reverse()), sign=True),
        "not sorted by Id",
    ),
    (
        "tick of an unknown schedule",
        edited(_payload(lambda p: p["last_fired"].__setitem__("zz", 1)), sign=True),
        "last_fired names schedule 'zz'",
    ),
    (
        "count disagrees",
        edited(_set("schedule_count", 2), sign=True),
        "schedule_count is 2 but the payload holds 3",
    ),
]


@pytest.mark.parametrize(("raw", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_bad_file_is_refused_with_a_message_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(bk.BackupError, match=message.replace("(", r"\(")):
        bk.verify_backup(raw)


def test_any_single_changed_byte_is_refused_by_both_checks() -> None:
    raw = encoded()
    for i in range(len(raw)):
        for flip in (0x01, 0x20):
            corrupt = bytearray(raw)
            corrupt[i] ^= flip
            with pytest.raises(bk.BackupError):
                bk.verify_backup(bytes(corrupt))
            with pytest.raises(bk.BackupError):
                bk.check_integrity(bytes(corrupt))


GOOD = encoded()
OLDER = encoded(raft_index=7, last_fired={})
CORRUPT = GOOD.replace(b'"0 3 * * *"', b'"0 4 * * *"')
MAIN, PREV = bk.FILE_NAME, bk.PREV_NAME


@pytest.mark.parametrize(
    ("main", "prev", "chosen", "refused"),
    [
        (GOOD, OLDER, MAIN, []),
        (CORRUPT, OLDER, PREV, [MAIN]),
        (None, OLDER, PREV, []),
        (CORRUPT, CORRUPT, None, [MAIN, PREV]),
        (b"", None, None, [MAIN]),
        (None, None, None, []),
    ],
)
def test_choose_backup_takes_the_newest_file_that_verifies(
    main: bytes | None, prev: bytes | None, chosen: str | None, refused: list[str]
) -> None:
    choice = bk.choose_backup([(MAIN, main), (PREV, prev)])
    assert choice.name == chosen
    assert [r.name for r in choice.refused] == refused
    if chosen == PREV:
        assert choice.backup is not None and choice.backup.info.raft_index == 7
    if MAIN in refused and main:
        assert "payload checksum mismatch" in choice.refused[0].problem


def test_choose_backup_takes_the_file_holding_the_payload_a_cold_start_chose() -> None:
    older_sha = bk.verify_backup(OLDER).info.payload_sha256
    assert bk.choose_backup([(MAIN, GOOD), (PREV, OLDER)], older_sha).name == PREV
    good_sha = bk.verify_backup(GOOD).info.payload_sha256
    assert bk.choose_backup([(MAIN, GOOD), (PREV, OLDER)], good_sha).name == MAIN
    # No file holds it (changed since the report): the newest that verifies.
    assert bk.choose_backup([(MAIN, CORRUPT), (PREV, OLDER)], "0" * 64).name == PREV


def _info(sha: str, count: int, index: int = 100) -> bk.BackupInfo:
    return bk.BackupInfo(sha, count, index, "n", "2023-11-14T22:13:20.000Z")


@pytest.mark.parametrize(
    ("sha", "count", "disk", "index", "overwrite", "decision"),
    [
        ("h1", 3, bk.DiskState(), 5, False, bk.Decision.WRITE),
        ("h1", 3, bk.DiskState(main=_info("h1", 3)), 500, False, bk.Decision.UNCHANGED),
        ("h2", 3, bk.DiskState(main=_info("h1", 3)), 500, False, bk.Decision.WRITE),
        ("h0", 0, bk.DiskState(main=_info("h1", 3)), 500, False, bk.Decision.KEEP_NON_EMPTY),
        ("h0", 0, bk.DiskState(prev=_info("h1", 3)), 500, False, bk.Decision.KEEP_NON_EMPTY),
        ("h0", 0, bk.DiskState(main_refused="bad"), 500, False, bk.Decision.KEEP_NON_EMPTY),
        ("h0", 0, bk.DiskState(main=_info("h1", 3)), 500, True, bk.Decision.KEEP_NON_EMPTY),
        ("h0", 0, bk.DiskState(), 5, False, bk.Decision.WRITE),
        ("h0", 0, bk.DiskState(main=_info("h9", 0)), 500, False, bk.Decision.WRITE),
        ("h2", 2, bk.DiskState(main_refused="bad"), 5, False, bk.Decision.WRITE),
        # A wiped node still receiving the log, or a cluster restored from an older backup: the
        # state is older than the file, whatever it holds and however long the node has run.
        ("h2", 1, bk.DiskState(main=_info("h1", 3, index=100)), 40, False, bk.Decision.OLDER),
        ("h2", 4, bk.DiskState(main=_info("h1", 3, index=100)), 40, False, bk.Decision.OLDER),
        ("h2", 1, bk.DiskState(prev=_info("h1", 3, index=100)), 99, False, bk.Decision.OLDER),
        # The same index holding less is older too; a higher index may hold less (deletions).
        ("h2", 2, bk.DiskState(main=_info("h1", 3, index=100)), 100, False, bk.Decision.OLDER),
        ("h2", 3, bk.DiskState(main=_info("h1", 3, index=100)), 100, False, bk.Decision.WRITE),
        ("h2", 1, bk.DiskState(main=_info("h1", 3, index=100)), 101, False, bk.Decision.WRITE),
        # The operator's explicit overwrite.
        ("h2", 1, bk.DiskState(main=_info("h1", 3, index=100)), 40, True, bk.Decision.WRITE),
    ],
)
def test_decide_write(
    sha: str, count: int, disk: bk.DiskState, index: int, overwrite: bool, decision: bk.Decision
) -> None:
    assert bk.decide_write(sha, count, disk, state_index=index, overwrite=overwrite) is decision


def _report(node: str, index: int, count: int, sha: str = "s") -> dict[str, Any]:
    return {"node": node, "raft_index": index, "payload_sha256": sha, "schedule_count": count}


@pytest.mark.parametrize(
    ("reports", "exclude", "chosen"),
    [
        ([], (), None),
        ([_report("a", 90, 0), _report("b", 0, 0)], (), None),  # empty backups are never chosen
        ([_report("a", 10, 5), _report("b", 90, 2), _report("c", 50, 9)], (), "b"),  # highest index
        ([_report("a", 90, 5), _report("b", 90, 7), _report("c", 50, 9)], (), "b"),  # then most schedules
        ([_report("c", 90, 7), _report("b", 90, 7)], (), "b"),  # then the lowest address
        ([_report("a", 10, 5), _report("b", 90, 2)], ("b",), "a"),  # a holder passed over
        ([_report("b", 90, 2)], ("b",), None),
    ],
)
def test_best_report_takes_the_highest_index_then_the_most_schedules(
    reports: list[dict[str, Any]], exclude: tuple[str, ...], chosen: str | None
) -> None:
    best = bk.best_report({r["node"]: r for r in reports}, frozenset(exclude))
    assert (None if best is None else best["node"]) == chosen


def test_lineage_index_counts_on_from_the_restored_backup() -> None:
    assert bk.lineage_index({}, 7) == 7
    assert bk.lineage_index({"base": 1000, "reports": {}}, 7) == 1007


def _cmd(kind: str, **fields: Any) -> bytes:
    return encode_command(kind, rid=uuid.uuid4().hex, **fields)


def _create(s: Schedule) -> bytes:
    return _cmd("create_schedule", schedule=codec.schedule_to_dict(s))


def _first_part(restore: str) -> bytes:
    """Part 0 of 2 of a restore in parts (one schedule)."""
    schedules = [codec.schedule_to_dict(SCHEDULES[0])]
    return encode_command(
        "restore_part",
        rid=f"{restore}.0",
        restore=restore,
        part=0,
        parts=2,
        schedules=schedules,
        last_fired={},
    )


@pytest.mark.parametrize(
    ("commands", "cold"),
    [
        ([], True),
        ([_cmd("barrier"), _cmd("barrier")], True),
        ([_cmd("barrier"), _create(SCHEDULES[0])], False),
        ([_create(SCHEDULES[0]), _cmd("delete_schedule", job_name="fibonacci", schedule_id="a1")], False),
        ([_cmd("delete_schedule", job_name="fibonacci", schedule_id="nope")], False),
        (
            [
                _create(SCHEDULES[1]),
                encode_command("fire_tick", schedule_id="b2", tick=T0, at=T0 * 1000, outcome="skipped"),
            ],
            False,
        ),
        ([_first_part("r")], True),  # an earlier leader's restore left unfinished: restore again
        (  # ... and one of its parts committed after another leader's restore began
            [
                encode_command(
                    "restore_part", rid="r.0", restore="r", part=0, parts=2, schedules=[], last_fired={}
                ),
                encode_command(
                    "restore_part", rid="q.1", restore="q", part=1, parts=2, schedules=[], last_fired={}
                ),
            ],
            True,
        ),
    ],
    ids=[
        "nothing",
        "barriers only",
        "a schedule",
        "all deleted",
        "a failed command",
        "a fired tick",
        "a restore begun",
        "a restore interrupted",
    ],
)
def test_cold_start_means_only_barriers_were_ever_applied(commands: list[bytes], cold: bool) -> None:
    assert bk.is_cold_start(replay(commands)) is cold


def test_the_example_file_verifies_and_both_it_and_a_fresh_file_follow_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = orjson.loads((REPO / "backup" / "schema.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    example = (REPO / "backup" / "example-schedule-jobs-backup.json").read_bytes()
    assert bk.verify_backup(example).info.schedule_count >= 3
    for raw in (example, encoded()):
        jsonschema.Draft202012Validator(schema).validate(orjson.loads(raw))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(orjson.loads(edited(_drop("node"), sign=False)))


# -- the files, with a real single-node Raft cluster ---------------------------------------------


def raft_settings(tmp_path: Path, port: int) -> Settings:
    return Settings(
        raft_address=f"127.0.0.1:{port}",
        data_dir=str(tmp_path / "raft"),
        timings=RaftTimings(raft_min_timeout=0.31, raft_max_timeout=0.35),
    )


@contextlib.asynccontextmanager
async def running_raft(settings: Settings) -> AsyncIterator[RaftNode]:
    node = RaftNode(settings)
    node.start()
    try:
        await wait_for(lambda: node.status().ready, 10, "single-node leader")
        yield node
    finally:
        node.stop()


async def submit(raft: RaftNode, payload: bytes) -> Result:
    result = await raft.submit(payload)
    assert result.ok, result
    return result


async def fire(raft: RaftNode, sid: str, tick: int) -> None:
    await submit(
        raft, encode_command("fire_tick", schedule_id=sid, tick=tick, at=tick * 1000, outcome="skipped")
    )


def make_backups(
    raft: RaftNode, backup_dir: Path, clock: ManualClock, interval: float = 3600.0
) -> bk.Backups:
    return bk.Backups(
        raft=raft,
        backup_dir=str(backup_dir),
        node_id=raft.settings.node_id,
        interval_seconds=interval,
        registry=CollectorRegistry(),
        clock=clock,
        # One node that announces no level, or three that do: either way, no waiting for long.
        restore_level_wait_seconds=0.5,
        report_wait_seconds=1.0,
    )


def sample(b: bk.Backups, name: str, **labels: str) -> float:
    return b.registry.get_sample_value(name, labels) or 0.0


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


async def test_unchanged_state_leaves_bytes_and_mtime_alone_across_intervals_and_a_restart(
    tmp_path: Path,
) -> None:
    settings = raft_settings(tmp_path, free_ports(1)[0])
    backup_dir = tmp_path / "backup"
    path = backup_dir / bk.FILE_NAME
    clock = ManualClock()
    async with running_raft(settings) as raft:
        for s in SCHEDULES:
            await submit(raft, _create(s))
        await fire(raft, "b2", T0 + 300)
        b = make_backups(raft, backup_dir, clock)
        await b.load()
        assert await b.backup_once() is bk.Decision.WRITE
        first = file_state(path)
        for _ in range(3):
            clock.now += 60
            assert await b.backup_once() is bk.Decision.UNCHANGED
        assert file_state(path) == first
    async with running_raft(settings) as raft:  # same Raft data: the journal is replayed
        b = make_backups(raft, backup_dir, clock)
        b.start()  # reads the file back, then passes at once
        await wait_for(lambda: b.last_outcome is not None, 10, "the first pass after the restart")
        assert b.last_outcome == "unchanged"
        await b.stop()
        assert file_state(path) == first
        assert not (backup_dir / bk.PREV_NAME).exists()
        # A change is written; the good file it replaces is kept as .prev.
        await fire(raft, "b2", T0 + 600)
        assert await b.backup_once() is bk.Decision.WRITE
        assert (backup_dir / bk.PREV_NAME).read_bytes() == first[0]
        assert bk.verify_backup(path.read_bytes()).last_fired == {"b2": T0 + 600}
        assert sorted(os.listdir(backup_dir)) == [bk.FILE_NAME, bk.PREV_NAME]


async def test_an_empty_state_never_overwrites_a_non_empty_or_unreadable_backup(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    path = backup_dir / bk.FILE_NAME
    write_files(backup_dir, GOOD, None)
    before = file_state(path)
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        b = make_backups(raft, backup_dir, ManualClock())
        b.start()
        await wait_for(lambda: b.last_outcome is not None, 10, "the first pass")
        assert b.last_outcome == "kept_non_empty"
        await b.stop()
        assert file_state(path) == before
        assert sample(b, "slimsched_backup_passes_total", outcome="kept_non_empty") == 2  # + the last pass
        # An unreadable file is reported, and not replaced by nothing either.
        path.write_bytes(CORRUPT)
        corrupt = file_state(path)
        b = make_backups(raft, backup_dir, ManualClock())
        await b.load()
        assert sample(b, "slimsched_backup_corrupt_files_total", file=bk.FILE_NAME) == 1
        assert await b.backup_once() is bk.Decision.KEEP_NON_EMPTY
        assert file_state(path) == corrupt
        # A state with schedules replaces it; the corrupt bytes are set aside, not rotated to .prev.
        await submit(raft, _create(SCHEDULES[0]))
        assert await b.backup_once() is bk.Decision.WRITE
        assert (backup_dir / bk.CORRUPT_NAME).read_bytes() == CORRUPT
        assert not (backup_dir / bk.PREV_NAME).exists()
        assert bk.verify_backup(path.read_bytes()).info.schedule_count == 1


async def test_a_node_with_schedules_writes_at_once_and_once_more_when_it_stops(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    path = backup_dir / bk.FILE_NAME
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        await submit(raft, _create(SCHEDULES[0]))
        b = make_backups(raft, backup_dir, ManualClock(), interval=3600.0)
        b.start()
        await wait_for(path.exists, 10, "the first backup, long before the interval")
        assert b._task is not None and b._task.get_name() == "backup"
        await submit(raft, _create(SCHEDULES[1]))
        await b.stop()
        assert bk.verify_backup(path.read_bytes()).info.schedule_count == 2


async def test_periodic_passes_follow_changes(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    path = backup_dir / bk.FILE_NAME
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        b = make_backups(raft, backup_dir, ManualClock(), interval=0.05)
        b.start()
        try:
            for i, s in enumerate(SCHEDULES, start=1):
                await submit(raft, _create(s))

                def holds(n: int = i) -> bool:
                    return path.exists() and bk.verify_backup(path.read_bytes()).info.schedule_count == n

                await wait_for(holds, 10, f"a backup of {i} schedules")
        finally:
            await b.stop()


def write_files(backup_dir: Path, main: bytes | None, prev: bytes | None) -> None:
    backup_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ((bk.FILE_NAME, main), (bk.PREV_NAME, prev)):
        if data is not None:
            (backup_dir / name).write_bytes(data)


async def test_cold_start_restore_falls_back_to_prev_when_the_file_is_corrupt(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    write_files(backup_dir, CORRUPT, GOOD)
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        await submit(raft, _cmd("barrier"))
        b = make_backups(raft, backup_dir, ManualClock())
        assert await b.restore_if_cold_start() == "restored"
        restored = raft.read(lambda s: (dict(s.schedules), dict(s.last_fired)))
        assert restored == ({s.id: s for s in SCHEDULES}, LAST_FIRED)
        assert sample(b, "slimsched_backup_corrupt_files_total", file=bk.FILE_NAME) == 1
        assert sample(b, "slimsched_backup_restores_total", outcome="restored") == 1
        # The next term finds schedules: no second restore.
        assert await b.restore_if_cold_start() == "not_cold_start"


@pytest.mark.parametrize(
    ("main", "prev", "outcome", "corrupt"),
    [
        (CORRUPT, CORRUPT, "refused", 2),
        (None, None, "no_backup", 0),
        (encoded(()), None, "empty_backup", 0),
    ],
)
async def test_nothing_is_applied_without_a_verified_non_empty_backup(
    tmp_path: Path, main: bytes | None, prev: bytes | None, outcome: str, corrupt: int
) -> None:
    backup_dir = tmp_path / "backup"
    write_files(backup_dir, main, prev)
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        b = make_backups(raft, backup_dir, ManualClock())
        assert await b.restore_if_cold_start() == outcome
        assert raft.read(lambda s: len(s.schedules)) == 0
        total = sum(sample(b, "slimsched_backup_corrupt_files_total", file=f) for f in (MAIN, PREV))
        assert total == corrupt


async def test_a_cluster_whose_schedules_were_deleted_gets_nothing_back(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    write_files(backup_dir, GOOD, None)
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        await submit(raft, _create(SCHEDULES[0]))
        await submit(raft, _cmd("delete_schedule", job_name="fibonacci", schedule_id="a1"))
        b = make_backups(raft, backup_dir, ManualClock())
        assert await b.restore_if_cold_start() == "not_cold_start"
        assert raft.read(lambda s: len(s.schedules)) == 0


MANY = tuple(Schedule(id=f"m{i:03d}", job_name=f"job-{i % 4}", cron="0 3 * * *") for i in range(40))


def test_restore_parts_split_the_schedules_and_their_last_ticks_in_order() -> None:
    backup = bk.verify_backup(encoded(MANY, {"m001": T0, "m039": T0 + 60, "gone": T0}))
    whole = bk.restore_command(backup, "r")
    parts = [orjson.loads(p) for p in bk.restore_parts(backup, "r", whole_bytes=len(whole), part_bytes=800)]
    assert len(parts) == -(-len(whole) // 800) or len(parts) == len(whole) // 800
    assert [(p["part"], p["parts"], p["rid"], p["restore"]) for p in parts] == [
        (n, len(parts), f"r.{n}", "r") for n in range(len(parts))
    ]
    assert [d["Id"] for p in parts for d in p["schedules"]] == [s.id for s in MANY]
    assert {k: v for p in parts for k, v in p["last_fired"].items()} == {"m001": T0, "m039": T0 + 60}
    assert max(len(orjson.dumps(p)) for p in parts) < 800 + len(whole) // len(MANY) * 2


async def _cold_start_on_three_nodes(tmp_path: Path, levels: list[int]) -> tuple[Trio, int]:
    """A wiped trio at these levels restores MANY from a backup; (the trio, restore entries)."""
    backup_dir = tmp_path / "backup"
    write_files(backup_dir, encoded(MANY, {"m001": T0}), None)
    trio = Trio(tmp_path)
    for i in range(3):
        trio.start(i)
    await wait_for(lambda: all(n.status().ready for n in trio.up()), 15, "a leader")
    async with announcing(trio, levels):
        leader = next(n for n in trio.up() if n.status().is_leader)
        want = sum(1 for level in levels if level >= 2)
        await wait_for(lambda: len(leader.read(lambda s: s.levels)) == want, 10, "the announcements")
        b = make_backups(leader, backup_dir, ManualClock())
        b.restore_part_bytes, b.restore_level_wait_seconds = 2_000, 0.5
        assert await b.restore_if_cold_start() == "restored"
        rids = leader.read(
            lambda s: [k for k, v in s.recent.items() if v.value is None or "Restored" in v.value]
        )
    await wait_for(lambda: len(trio.hashes()) == 1, 10, "every node to hold the same state")
    for node in trio.up():
        assert node.read(lambda s: (dict(s.schedules), dict(s.last_fired), s.restoring)) == (
            {s.id: s for s in MANY},
            {"m001": T0},
            None,
        )
    return trio, sum(1 for r in rids if r.rsplit(".", 1)[-1].isdigit())


async def test_a_large_cold_start_restore_goes_in_parts_and_lands_on_every_node(tmp_path: Path) -> None:
    trio, parts = await _cold_start_on_three_nodes(tmp_path, [3, 3, 3])
    try:
        assert parts > 1, parts
    finally:
        for i in range(3):
            trio.stop(i)


async def test_a_restore_interrupted_by_a_stale_part_starts_over_and_lands_whole(tmp_path: Path) -> None:
    """A part of an earlier leader's restore, committed late, resets the staged parts."""
    backup_dir = tmp_path / "backup"
    write_files(backup_dir, encoded(MANY), None)
    stale = _first_part("stale")
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        await submit(raft, encode_command("hello", node=raft.settings.raft_address, level=3))
        b = make_backups(raft, backup_dir, ManualClock())
        b.restore_part_bytes = 300  # a part or two per schedule

        async def intrude() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while loop.time() < deadline:
                if raft.read(lambda s: s.restoring is not None and s.restoring.next_part >= 2):
                    await submit(raft, stale)
                    return
                await asyncio.sleep(0)

        intruder = asyncio.create_task(intrude(), name="stale-part")
        assert await b.restore_if_cold_start() == "restored"
        await asyncio.wait_for(intruder, 5)
        assert raft.read(lambda s: set(s.schedules)) == {s.id for s in MANY}
        assert raft.read(lambda s: s.restoring) is None
        codes = raft.read(lambda s: [r.code for r in s.recent.values()])
        assert "interrupted" in codes  # the first attempt was cut short, the second landed


async def test_with_a_member_of_an_earlier_release_the_restore_is_one_entry(tmp_path: Path) -> None:
    trio, parts = await _cold_start_on_three_nodes(tmp_path, [3, 3, 2])
    try:
        assert parts == 0
        assert len({n.read(fingerprint) for n in trio.up()}) == 1
    finally:
        for i in range(3):
            trio.stop(i)


# -- the command line and POST /admin/restore ----------------------------------------------------


def test_cli_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(GOOD)
    bad.write_bytes(CORRUPT)
    sha = bk.verify_backup(GOOD).info.payload_sha256
    assert cli.main(["backup", "verify", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 3 schedules, sha256 {sha}")
    assert cli.main(["backup", "verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FAILED: {bad}: payload checksum mismatch")
    assert cli.main(["backup", "verify", str(tmp_path / "missing.json")]) == 1
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


async def test_the_admin_restore_goes_in_parts_once_every_member_applies_them(tmp_path: Path) -> None:
    async with running_raft(raft_settings(tmp_path, free_ports(1)[0])) as raft:
        app = web.Application(middlewares=[errors_middleware])  # as the node's API app has
        for method, path, handler in bk.admin_routes(
            raft, AccessPolicy.build(["127.0.0.1/32"], []), part_bytes=2_000
        ):
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{bk.ADMIN_RESTORE_PATH}"
        try:
            await submit(raft, encode_command("hello", node=raft.settings.raft_address, level=3))
            status, body = await asyncio.to_thread(post, url, encoded(MANY, {"m001": T0}))
            assert (status, body["Restored"]) == (200, len(MANY))
            parts = raft.read(lambda s: [k for k in s.recent if k.rsplit(".", 1)[-1].isdigit()])
            assert len(parts) > 1
            assert raft.read(lambda s: (len(s.schedules), dict(s.last_fired))) == (len(MANY), {"m001": T0})
            status, body = await asyncio.to_thread(post, url, encoded(MANY))
            assert (status, body["Error"]) == (409, "not_empty")
        finally:
            await runner.cleanup()


async def test_cli_restore_goes_through_the_admin_route_into_an_empty_cluster_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    http_port, raft_port = free_ports(2)
    settings = Settings(
        raft_address=f"127.0.0.1:{raft_port}",
        http_host="127.0.0.1",
        http_port=http_port,
        data_dir=str(tmp_path / "raft"),
        kube_mode="none",
        trusted_proxies=("127.0.0.1/32",),
        timings=RaftTimings(raft_min_timeout=0.31, raft_max_timeout=0.35),
    )
    node = Node(settings, jobconfig.parse_jobs_configuration(None))
    await node.start()
    try:
        await wait_for(lambda: node.raft.status().ready, 10, "single-node leader")
        good, bad = tmp_path / "good.json", tmp_path / "bad.json"
        good.write_bytes(GOOD)
        bad.write_bytes(CORRUPT)
        url = node.http_url
        assert await asyncio.to_thread(cli.main, ["backup", "restore", str(bad), "--to", url]) == 1
        assert "payload checksum mismatch" in capsys.readouterr().err
        # The server checks again, and admits only loopback callers and trusted networks.
        status, body = await asyncio.to_thread(post, url + bk.ADMIN_RESTORE_PATH, CORRUPT)
        assert (status, body["Error"]) == (400, "invalid_backup")
        status, body = await asyncio.to_thread(
            post, url + bk.ADMIN_RESTORE_PATH, GOOD, {"X-Forwarded-For": "203.0.113.7"}
        )
        assert (status, body["Error"]) == (403, "admin_only")
        assert node.raft.read(lambda s: len(s.schedules)) == 0

        assert await asyncio.to_thread(cli.main, ["backup", "restore", str(good), "--to", url]) == 0
        assert capsys.readouterr().out.startswith("OK: restored 3 schedules")
        # (The node's leader loops run: they may fire the restored schedules from here on.)
        assert node.raft.read(lambda s: dict(s.schedules)) == {s.id: s for s in SCHEDULES}
        assert await asyncio.to_thread(cli.main, ["backup", "restore", str(good), "--to", url]) == 1
        assert "409: the cluster already holds schedules" in capsys.readouterr().err
    finally:
        await node.stop()


# -- acceptance: wipe every node's Raft data, start again ----------------------------------------

JOBS = orjson.dumps(
    {
        "Configurations": {
            "fibonacci": {"Image": "demo/fib:1", "Visibility": "Public", "NumberParallelJob": 2},
            "ticker": {"Image": "demo/tick:1", "Visibility": "Public", "NumberParallelJob": 100},
        }
    }
).decode()


def http(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    return request_json(url, method, body, timeout=5)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, bk.BackupError):
            if cond():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_cold_start_after_wiping_every_node_restores_schedules_and_firing_resumes(tmp_path: Path) -> None:
    emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.3)
    with emulator as kube_url:
        cluster = LocalCluster.create(
            3,
            str(tmp_path),
            jobs_configuration=JOBS,
            backups=True,
            env={"SLIMSCHED_BACKUP_INTERVAL_SECONDS": "0.5", "SLIMSCHED_KUBE_URL": kube_url},
        )
        backup_files = [Path(str(n.backup_dir)) / bk.FILE_NAME for n in cluster.nodes]
        for node, file in zip(cluster.nodes, backup_files, strict=True):
            assert not file.is_relative_to(node.data_dir), "backups live apart from the Raft data"
        with cluster:
            cluster.start()
            cluster.wait_ready(timeout=30)
            url = cluster.nodes[0].url
            status, body = http(f"{url}/job-schedules/ticker", "POST", {"Schedule": "* * * * * *"})
            assert status == 201, body
            ticker = body["Id"]
            daily = f"0 {(time.gmtime().tm_hour + 12) % 24} * * *"  # not due while the test runs
            dailies = []
            for i in range(3):
                status, body = http(
                    f"{url}/job-schedules/fibonacci", "POST", {"Schedule": daily, "Args": [str(i)]}
                )
                assert status == 201, body
                dailies.append(body["Id"])
            status, body = http(f"{url}/job-schedules/fibonacci/{dailies[0]}", "PATCH", {"Paused": True})
            assert status == 200, body

            def views(i: int) -> list[tuple[Any, ...]]:
                rows = []
                for job in ("ticker", "fibonacci"):
                    status, body = http(f"{cluster.nodes[i].url}/job-schedules/{job}")
                    assert status == 200, body
                    rows += [(s["Id"], s["Name"], s["Schedule"], s["Args"], s["Paused"]) for s in body]
                return sorted(rows)

            def ticker_ticks() -> list[int]:
                status, body = http(f"{url}/job/ticker")
                assert status == 200, body
                return sorted(int(r["Id"].rsplit("-", 1)[1]) for r in body)

            wait_until(lambda: len(ticker_ticks()) >= 2, 15, "the every-second schedule to fire twice")
            before = views(0)
            assert len(before) == 4 and (dailies[0], "fibonacci", daily, ["0"], True) in before

            def backups() -> list[bk.Backup]:
                return [bk.verify_backup(f.read_bytes()) for f in backup_files]

            wait_until(
                lambda: all(b.info.schedule_count == 4 and ticker in b.last_fired for b in backups()),
                10,
                "every node's backup of the 4 schedules and of the ticker's last tick",
            )

            cluster.stop()  # SIGTERM, one node after the other: each writes a last backup
            final = backups()
            last_fired_before = max(b.last_fired[ticker] for b in final)
            assert all(set(b.last_fired) == {ticker} for b in final), "the dailies never fired"
            created_before = set(created_names(emulator))
            for i in range(3):
                cluster.wipe(i)
                assert not os.path.exists(cluster.nodes[i].data_dir) and backup_files[i].exists()

            cluster.start()
            cluster.wait_ready(timeout=30)
            wait_until(
                lambda: all(views(i) == before for i in range(3)),
                20,
                "every node to hold the restored schedules, same ids and pause state",
            )
            wait_until(lambda: len(ticker_ticks()) >= 2, 15, "the ticker to fire again after the restore")
            after = ticker_ticks()  # the runs were wiped: every run here fired after the restore
            assert after[0] > last_fired_before, (after, last_fired_before)

            # The ledger starts right after the restored last tick (unless the outage outlasted the
            # newest MAX_MISSED_RECORDED ticks that a catch-up lists) and skips nothing.
            status, ledger = http(f"{url}/job-schedules/ticker/{ticker}/ticks")
            assert status == 200, ledger
            ticks = sorted(t["Tick"] for t in ledger)
            assert ticks == list(range(ticks[0], ticks[-1] + 1)), ticks
            restored = {b.last_fired[ticker] for b in final}
            first_batch = [t for t in ledger if t["RecordedAt"] == min(r["RecordedAt"] for r in ledger)]
            capped = len(first_batch) > MAX_MISSED_RECORDED
            assert ticks[0] - 1 in restored or (capped and ticks[0] - 1 > min(restored)), (ticks, restored)
            for d in dailies:
                status, ledger = http(f"{url}/job-schedules/fibonacci/{d}/ticks")
                assert (status, ledger) == (200, [])

            wait_until(
                lambda: (
                    {kube_job_name("ticker", f"{ticker}-{t}") for t in after} <= set(created_names(emulator))
                ),
                15,
                "a Job for every tick fired after the restore",
            )
            created = created_names(emulator)
            assert [n for n, c in Counter(created).items() if c > 1] == [], "a Job name was created twice"
            assert not {kube_job_name("ticker", f"{ticker}-{t}") for t in after} & created_before


def created_names(emulator: EmulatorThread) -> list[str]:
    return [c.name for c in emulator.call(lambda e: e.creations()) if c.outcome == "created"]
