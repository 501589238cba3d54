"""Raft snapshot of 100,000 schedules: how long the Raft thread stalls, and what commits feel.

DESIGN.md's rule: pysyncobj calls a custom serializer in its own thread, so slimsched's
serializer only takes a shallow copy of the state there and encodes it in a background thread;
the Raft thread must stall under 50 ms for 100,000 schedules. This measures, on a real
single-node RaftNode over TCP on 127.0.0.1:

- the synchronous part of the serializer (exactly what pysyncobj's thread runs), timed around
  the call the way pysyncobj makes it;
- the background write (encode + fsync + rename) and the dump's size;
- loading that dump, as a restarted node or a follower sent the snapshot does in its Raft thread;
- commit latency of a steady stream of small commands while a snapshot is taken, next to the
  same stream without a snapshot (one run: compare the two).

Run: ``.venv/bin/python -m bench.bench_snapshot [--schedules 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from bench._common import percentile, table
from slimsched import codec
from slimsched.localcluster import free_ports
from slimsched.model import Schedule
from slimsched.raft import RaftNode
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import encode_command


async def _wait(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not met")


async def _commit_latencies(node: RaftNode, seconds: float, tag: str) -> list[float]:
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and i < 100_000:
        started = time.perf_counter()
        await node.submit(encode_command("barrier", rid=f"{tag}-{i}"))
        out.append((time.perf_counter() - started) * 1000)
        i += 1
    return out


async def main(schedules: int) -> None:
    base = tempfile.mkdtemp(prefix="slimsched-bench-snapshot-")
    (port,) = free_ports(1)
    node = RaftNode(
        Settings(
            raft_address=f"127.0.0.1:{port}",
            data_dir=os.path.join(base, "raft"),
            timings=RaftTimings(
                raft_min_timeout=0.31, raft_max_timeout=0.35, log_compaction_min_entries=10**9
            ),
        )
    )
    node.start()
    try:
        await _wait(lambda: node.status().ready, 10)
        docs = [
            codec.schedule_to_dict(
                Schedule(id=f"s{i:06d}", job_name=f"job-{i % 50}", cron=f"{i % 60} * * * *", created_at_ms=i)
            )
            for i in range(schedules)
        ]
        started = time.perf_counter()
        result = await node.submit(
            encode_command("restore", rid="load", schedules=docs, last_fired={}), within=120
        )
        load_s = time.perf_counter() - started
        assert result.ok, result
        del docs

        baseline = await _commit_latencies(node, 2.0, "base")

        snap = node._snapshotter  # the object pysyncobj calls from its thread
        dump = os.path.join(base, "raft", "raft.dump")
        raft_data: tuple[object, ...] = ((b"x", 1, 1), (b"y", 2, 1), set())  # 2 log entries, nodes
        stalls: list[float] = []
        writes: list[float] = []
        during: list[float] = []
        for attempt in range(3):
            load = asyncio.create_task(_commit_latencies(node, 1.5, f"snap{attempt}"))
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            snap.serialize(dump + ".tmp", raft_data)
            stalls.append((time.perf_counter() - t0) * 1000)
            await _wait(lambda: snap.check() != 1, 60)  # 1 = still serializing
            writes.append((time.perf_counter() - t0) * 1000)
            during += await load
        size = os.stat(dump).st_size
        # What a restarted node, or a follower sent this snapshot, does in its Raft thread.
        loads: list[float] = []
        for _ in range(3):
            fresh = RaftNode(node.settings)  # not started: only its deserializer is called
            t0 = time.perf_counter()
            fresh._snapshotter.deserialize(dump)
            loads.append((time.perf_counter() - t0) * 1000)
            assert fresh.read(lambda st: len(st.schedules)) == schedules
            del fresh
    finally:
        node.stop()

    print(
        table(
            [
                "schedules",
                "load (restore) s",
                "serializer stall in Raft thread ms (3 runs)",
                "background write ms",
                "dump MB",
                "dump load in Raft thread ms (3 runs)",
            ],
            [
                [
                    schedules,
                    f"{load_s:.2f}",
                    " / ".join(f"{s:.1f}" for s in stalls),
                    " / ".join(f"{w:.0f}" for w in writes),
                    f"{size / 1e6:.1f}",
                    " / ".join(f"{x:.0f}" for x in loads),
                ]
            ],
        )
    )
    print()
    print(
        table(
            ["commit latency ms", "n", "p50", "p99", "max"],
            [
                [
                    "no snapshot",
                    len(baseline),
                    f"{percentile(baseline, 50):.2f}",
                    f"{percentile(baseline, 99):.2f}",
                    f"{max(baseline):.2f}",
                ],
                [
                    "while snapshotting",
                    len(during),
                    f"{percentile(during, 50):.2f}",
                    f"{percentile(during, 99):.2f}",
                    f"{max(during):.2f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().schedules))
