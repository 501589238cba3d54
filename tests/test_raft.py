"""The Raft node over real TCP on 127.0.0.1: snapshots (dump files) and the asyncio bridge."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from slimsched import codec
from slimsched.errors import Unavailable
from slimsched.localcluster import free_ports
from slimsched.model import Schedule
from slimsched.raft import BULK_ENTRY_BYTES, DUMP_VERSION, SERIALIZER_STATE, RaftNode, compaction_due
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import Result, encode_command, fingerprint, snapshot_to_dict
from tests.conftest import wait_for

FAST = RaftTimings(raft_min_timeout=0.31, raft_max_timeout=0.6, log_compaction_min_entries=20)


def _settings(addrs: list[str], i: int, base: Path) -> Settings:
    return Settings(
        raft_address=addrs[i],
        peers=tuple(a for a in addrs if a != addrs[i]),
        data_dir=str(base / f"n{i}"),
        timings=FAST,
        commit_timeout_seconds=5.0,
    )


def _create(i: int) -> bytes:
    s = Schedule(id=f"s{i}", job_name="fib", cron="* * * * *", created_at_ms=i)
    return encode_command("create_schedule", rid=f"r{i}", schedule=codec.schedule_to_dict(s))


class Trio:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.nodes: list[RaftNode | None] = [None, None, None]

    def start(self, i: int) -> RaftNode:
        node = RaftNode(_settings(self.addrs, i, self.base))
        node.start()
        self.nodes[i] = node
        return node

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None:
            node.stop()
            self.nodes[i] = None

    def up(self) -> list[RaftNode]:
        return [n for n in self.nodes if n is not None]

    def hashes(self) -> set[str]:
        return {n.read(fingerprint) for n in self.up()}


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    t = Trio(tmp_path)
    for i in range(3):
        t.start(i)
    try:
        await wait_for(lambda: all(n.status().ready for n in t.up()), 15, "a leader")
        yield t
    finally:
        for i in range(3):
            t.stop(i)


async def test_wiped_node_receives_a_snapshot_after_compaction(trio: Trio) -> None:
    node0 = trio.nodes[0]
    assert node0 is not None
    for i in range(60):
        assert (await node0.submit(_create(i))).ok
    for n in trio.up():
        n.force_snapshot()
    dump = trio.base / "n2" / "raft.dump"

    def dumped() -> int:
        try:
            return len(orjson.loads(dump.read_bytes())["state"]["schedules"])
        except (OSError, ValueError):
            return -1

    # An automatic compaction (every 20 commands here) may publish a smaller dump first.
    await wait_for(lambda: dumped() == 60, 10, "the forced dump file on node 2")
    assert orjson.loads(dump.read_bytes())["v"] == 1  # our orjson format, not a pickle

    trio.stop(2)
    shutil.rmtree(trio.base / "n2")
    for i in range(60, 65):
        assert (await node0.submit(_create(i))).ok
    fresh = trio.start(2)
    await wait_for(lambda: fresh.read(lambda s: len(s.schedules)) == 65, 15, "the wiped node to catch up")
    await wait_for(lambda: len(trio.hashes()) == 1, 5, "identical state on all nodes")
    # A snapshot did the catch-up, not a replay of the log: the wiped node applied through
    # ``apply`` only what followed the snapshot (the last 5 creates at most), never the first 60.
    assert fresh._snapshotter.applied <= 5, fresh._snapshotter.applied
    assert fresh.read(lambda s: {f"s{i}" for i in range(60)} <= s.schedules.keys())


async def test_restart_from_dump_and_journal_keeps_state(trio: Trio) -> None:
    leader = next(n for n in trio.up() if n.status().is_leader)
    for i in range(40):
        assert (await leader.submit(_create(i))).ok
    for n in trio.up():
        n.force_snapshot()
    await wait_for(lambda: (trio.base / "n1" / "raft.dump").exists(), 10, "a dump on node 1")
    for i in range(40, 45):
        assert (await leader.submit(_create(i))).ok
    await wait_for(lambda: len(trio.hashes()) == 1, 5, "followers to apply everything")
    before = trio.hashes()
    for i in range(3):
        trio.stop(i)
    assert not any(p.name.endswith((".tmp", ".writing")) for p in trio.base.rglob("*"))
    for i in range(3):
        trio.start(i)
    await wait_for(lambda: all(n.status().ready for n in trio.up()), 15, "a leader after full restart")
    await wait_for(lambda: trio.hashes() == before, 10, "state identical to before the restart")


async def test_submit_without_quorum_is_unavailable_within_deadline(trio: Trio) -> None:
    node0 = trio.nodes[0]
    assert node0 is not None
    trio.stop(1)
    trio.stop(2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Unavailable) as err:
        await node0.submit(_create(1), within=1.0)
    assert err.value.status == 503 and err.value.retry_after is not None
    assert loop.time() - started < 2.0  # the deadline holds, however the retries went

    # A caller cancelled long before its deadline stops at once.
    task = asyncio.create_task(node0.submit(_create(2), within=30.0), name="cancelled-submit")
    await asyncio.sleep(0)  # one turn: the submit queues its command
    assert node0._outbox
    await wait_for(lambda: not node0._outbox, 5, "the submit to be proposed")
    task.cancel()
    started = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
    assert loop.time() - started < 1.0


def test_stale_temporary_dump_files_are_removed_at_start(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    data = tmp_path / "d"
    os.makedirs(data)
    (data / "raft.dump.tmp").write_bytes(b"garbage")
    (data / "raft.dump.writing").write_bytes(b"garbage")
    node = RaftNode(Settings(raft_address=f"127.0.0.1:{port}", data_dir=str(data), timings=FAST))
    node.start()
    try:
        assert not (data / "raft.dump.tmp").exists() and not (data / "raft.dump.writing").exists()
    finally:
        node.stop()


def test_a_written_dump_replaces_the_old_one_only_in_the_raft_threads_check(tmp_path: Path) -> None:
    """pysyncobj compacts its journal when ``check`` answers SUCCESS: a dump on disk before that
    (a node stopped in between) would make the next start clear the journal and lose entries."""
    node = RaftNode(Settings(raft_address="127.0.0.1:1", data_dir=str(tmp_path), timings=FAST))
    node._state.schedules["s1"] = Schedule(id="s1", job_name="fib", cron="* * * * *")
    snapshotter = node._snapshotter
    dump = tmp_path / "raft.dump"
    dump.write_bytes(b"the previous dump")
    entries = ((b"a", 7, 1), (b"b", 8, 1))

    snapshotter.serialize(str(dump) + ".tmp", entries)
    assert snapshotter._thread is not None
    snapshotter._thread.join(10)
    assert dump.read_bytes() == b"the previous dump"  # written, not published
    snapshotter.abandon(5)  # the node stops before pysyncobj saw it
    assert dump.read_bytes() == b"the previous dump"
    assert not (tmp_path / "raft.dump.writing").exists()

    snapshotter._abandon.clear()
    snapshotter.serialize(str(dump) + ".tmp", entries)
    snapshotter._thread.join(10)
    assert snapshotter.check() == int(SERIALIZER_STATE.SUCCESS)
    first, second, _ = snapshotter.deserialize(str(dump))
    assert (first, second) == entries and set(node.read(lambda st: st.schedules)) == {"s1"}


def test_compaction_comes_with_enough_commands_or_a_quiet_log() -> None:
    t = RaftTimings(
        log_compaction_min_entries=20000, idle_compaction_seconds=30.0, idle_compaction_entries=1000
    )
    assert compaction_due(t, now=100.0, last_applied_at=100.0, applied=20000)  # however busy
    assert not compaction_due(t, now=100.0, last_applied_at=100.0, applied=19999)
    assert compaction_due(t, now=130.0, last_applied_at=100.0, applied=1000)
    assert not compaction_due(t, now=129.9, last_applied_at=100.0, applied=1000)  # still writing
    assert not compaction_due(t, now=500.0, last_applied_at=100.0, applied=999)  # little to gain


async def test_a_quiet_log_is_compacted_before_either_threshold(tmp_path: Path) -> None:
    # Neither the entry count (1,000) nor the time (300 s) would compact these 30 entries.
    timings = replace(
        FAST, log_compaction_min_entries=1000, idle_compaction_seconds=0.5, idle_compaction_entries=10
    )
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [RaftNode(replace(_settings(addrs, i, tmp_path), timings=timings)) for i in range(3)]
    for n in nodes:
        n.start()
    try:
        await wait_for(lambda: all(n.status().ready for n in nodes), 15, "a leader")
        leader = next(n for n in nodes if n.status().is_leader)
        for i in range(30):
            assert (await leader.submit(_create(i))).ok
        dumps = [tmp_path / f"n{i}" / "raft.dump" for i in range(3)]

        def dumped_all() -> bool:
            return all(
                d.exists() and len(orjson.loads(d.read_bytes())["state"]["schedules"]) == 30 for d in dumps
            )

        await wait_for(dumped_all, 15, "a dump of all 30 schedules on every node")
    finally:
        for n in nodes:
            n.stop()


@contextlib.asynccontextmanager
async def announcing(trio: Trio, levels: list[int]) -> AsyncIterator[None]:
    """Every node runs its ``hello`` announcement (as a Node does), at the given levels."""
    tasks = []
    for i, node in enumerate(trio.up()):
        node.settings = replace(node.settings, test_command_level=levels[i])
        tasks.append(asyncio.create_task(node.announce_level(recheck_seconds=0.2), name=f"hello-{i}"))
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)


async def test_commands_of_one_loop_turn_commit_as_one_batch_once_all_announced(trio: Trio) -> None:
    async with announcing(trio, [2, 2, 2]):
        leader = next(n for n in trio.up() if n.status().is_leader)
        await wait_for(lambda: len(leader.read(lambda s: s.levels)) == 3, 10, "three announcements")
        first = leader.status().commit_index
        batches = leader.batches
        seen: list[tuple[object, Result]] = []
        leader.set_hooks(on_applied=seen.extend)
        # 60 creates, one a retry of another (same rid) and one a conflict (same id, new rid).
        payloads = [_create(i) for i in range(58)] + [_create(7)]
        conflict = Schedule(id="s3", job_name="fib", cron="* * * * *", created_at_ms=3)
        payloads.append(
            encode_command("create_schedule", rid="other", schedule=codec.schedule_to_dict(conflict))
        )
        results = await asyncio.gather(*(leader.submit(p) for p in payloads))
        assert [r.value for r in results[:58]] == [{"Id": f"s{i}"} for i in range(58)]
        assert results[58] == results[7]  # the retry answered from memory, not applied twice
        assert results[59].code == "conflict"
        assert leader.batches == batches + 1
        # The hook saw every command of the batch, decoded, with its own result.
        created = [
            (c["schedule"]["Id"], r.code)
            for c, r in seen
            if isinstance(c, dict) and c["type"] == "create_schedule"
        ]
        assert created == [(f"s{i}", "ok") for i in range(58)] + [("s7", "ok"), ("s3", "conflict")]
        assert leader.status().commit_index - first <= 2  # one entry (and maybe a no-op of pysyncobj)
        await wait_for(lambda: len(trio.hashes()) == 1, 5, "followers to apply the batch")
        assert trio.up()[0].read(lambda s: len(s.schedules)) == 58


async def test_a_node_of_the_earlier_release_keeps_the_cluster_on_single_entries(trio: Trio) -> None:
    """Rolling upgrade: while one member runs the release before ``batch``, nothing is batched."""
    async with announcing(trio, [2, 2, 1]):
        leader = next(n for n in trio.up() if n.status().is_leader)
        old = trio.up()[2]
        new = trio.up()[0]
        await wait_for(lambda: len(new.read(lambda s: s.levels)) == 2, 10, "two announcements")
        first = leader.status().commit_index
        results = await asyncio.gather(*(leader.submit(_create(i)) for i in range(40)))
        assert all(r.ok for r in results)
        assert sum(n.batches for n in trio.up()) == 0
        assert leader.status().commit_index - first >= 40
        await wait_for(lambda: old.read(lambda s: len(s.schedules)) == 40, 5, "the old node to apply all")
        # The old node refused the hellos (unknown to it) and nothing else: same schedules everywhere.
        assert old.read(lambda s: s.levels) == {}

        def same_elsewhere() -> bool:
            return len({n.read(lambda s: fingerprint(replace(s, levels={}))) for n in trio.up()}) == 1

        await wait_for(same_elsewhere, 5, "every node to hold the same state but for the levels")


async def test_batched_commands_count_toward_the_snapshot_threshold(trio: Trio) -> None:
    """pysyncobj counts entries: 60 commands in 1-2 batch entries must still bring a snapshot (at 20)."""
    async with announcing(trio, [2, 2, 2]):
        leader = next(n for n in trio.up() if n.status().is_leader)
        await wait_for(lambda: len(leader.read(lambda s: s.levels)) == 3, 10, "three announcements")
        dumps = [trio.base / f"n{i}" / "raft.dump" for i in range(3)]
        assert not any(d.exists() for d in dumps)
        results = await asyncio.gather(*(leader.submit(_create(i)) for i in range(60)))
        assert all(r.ok for r in results) and leader.batches >= 1

        def dumped_all() -> bool:
            return all(
                d.exists() and len(orjson.loads(d.read_bytes())["state"]["schedules"]) == 60 for d in dumps
            )

        await wait_for(dumped_all, 10, "a dump of the 60 schedules on every node")


def test_a_restore_entry_and_a_dump_load_run_without_automatic_collections(tmp_path: Path) -> None:
    """Collections doubled the time a Raft thread spends on 100,000 schedules decoded at once."""
    node = RaftNode(_settings(["127.0.0.1:1"], 0, tmp_path))  # not started: its Raft thread's calls
    docs = [
        codec.schedule_to_dict(Schedule(id=f"s{i}", job_name="fib", cron="* * * * *")) for i in range(20_000)
    ]
    payload = encode_command("restore", rid="r", schedules=docs, last_fired={})
    assert len(payload) >= BULK_ENTRY_BYTES
    started: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(record)
    try:
        result = node._apply(payload)
        during_apply = list(started)
        dump = tmp_path / "raft.dump"
        state = node.read(snapshot_to_dict)
        entry = [base64.b64encode(b"x").decode(), 1, 1]
        dump.write_bytes(orjson.dumps({"v": DUMP_VERSION, "raft": [entry, entry], "state": state}))
        fresh = RaftNode(_settings(["127.0.0.1:1"], 0, tmp_path / "other"))
        started.clear()
        fresh._snapshotter.deserialize(str(dump))
        during_load = list(started)
        # The same schedules as a restore in parts of the size the restorer makes, on a third node.
        parts = [
            encode_command("restore_part", rid=f"p.{n}", restore="p", part=n, parts=8, schedules=docs[n::8])
            for n in range(8)
        ]
        assert all(BULK_ENTRY_BYTES <= len(p) <= 1_000_000 for p in parts)
        third = RaftNode(_settings(["127.0.0.1:1"], 0, tmp_path / "third"))
        started.clear()
        landed = [third._apply(p) for p in parts][-1]
        during_parts = list(started)
    finally:
        gc.callbacks.remove(record)
        gc.unfreeze()
    assert result.value == {"Restored": 20_000}
    assert fresh.read(lambda st: len(st.schedules)) == 20_000
    # Without the pause: a young collection every 700 new objects, 114 for this restore when tried.
    # With it none, not even right after: what was built is frozen.
    assert landed.value == {"Restored": 20_000}
    assert during_apply == [] and during_load == [] and during_parts == []
    assert gc.isenabled()
