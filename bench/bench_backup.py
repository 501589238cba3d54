"""Backup and restore of 100,000 schedules: time of each step, file size, and what they stall.

Why: the backup must keep up with the largest state we support without stalling the node, and
the cold-start restore is a single Raft entry applied in every node's Raft thread, so both are
measured at full size rather than argued about.

Backup, through a real single-node ``RaftNode`` and ``Backups.backup_once`` (copy under the state
lock, then canonical encoding, SHA-256, temp file + fsync + rename + directory fsync in an
executor thread), plus the pure steps timed alone; the longest event-loop stall during a pass
(the encoding holds the GIL). Restore: read the file, verify (hashes, canonical form, decode
every schedule), build the command, commit it through a real single-node ``RaftNode`` (applied
in its Raft thread), and that apply alone (what every follower's Raft thread spends too).

Run: ``.venv/bin/python -m bench.bench_backup [--schedules 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry

from bench._common import table
from slimsched import backup as bk
from slimsched.localcluster import free_ports
from slimsched.model import ConcurrencyPolicy, EnvVar, JobOverrides, Resources, Schedule
from slimsched.raft import RaftNode
from slimsched.settings import Settings
from slimsched.statemachine import State, apply, encode_command

T = TypeVar("T")
T0 = 1_700_000_000
CRONS = ("0 3 * * *", "*/5 * * * *", "0 0 * * 1", "* * * * * */10", "30 6 1 * *")


def make_schedules(n: int) -> tuple[list[Schedule], dict[str, int]]:
    """Varied schedules: 50 jobs, args, one in ten with resources and env, one in twenty paused."""
    schedules = []
    last_fired = {}
    for i in range(n):
        rich = i % 10 == 0
        overrides = JobOverrides(
            args=("--id", str(i)),
            resources=Resources(requests={"cpu": "100m", "memory": "64Mi"}, limits={"cpu": "200m"})
            if rich
            else None,
            environments=(EnvVar(name="MODE", value="batch"), EnvVar(name="SHARD", value=str(i % 16)))
            if rich
            else None,
        )
        sid = f"{i:08d}{(i * 2654435761) % 2**32:08x}{'0' * 16}"
        schedules.append(
            Schedule(
                id=sid,
                job_name=f"job-{i % 50}",
                cron=CRONS[i % len(CRONS)],
                overrides=overrides,
                time_zone="Europe/Paris" if i % 3 == 0 else "UTC",
                concurrency_policy=ConcurrencyPolicy.FORBID if i % 7 == 0 else ConcurrencyPolicy.ALLOW,
                paused=i % 20 == 0,
                created_at_ms=(T0 - 86_400) * 1000 + i,
            )
        )
        if i % 10 < 7:
            last_fired[sid] = T0 + i % 3600
    return schedules, last_fired


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


async def atimed(aw: Awaitable[T]) -> tuple[T, float]:
    t = time.perf_counter()
    out = await aw
    return out, time.perf_counter() - t


@contextlib.asynccontextmanager
async def single_node(data_dir: str) -> AsyncIterator[RaftNode]:
    (port,) = free_ports(1)
    node = RaftNode(
        Settings(raft_address=f"127.0.0.1:{port}", data_dir=data_dir, commit_timeout_seconds=120.0)
    )
    node.start()
    try:
        deadline = time.monotonic() + 30
        while not node.status().ready:
            if time.monotonic() > deadline:
                raise TimeoutError("the single-node Raft cluster did not elect itself within 30 s")
            await asyncio.sleep(0.02)
        yield node
    finally:
        node.stop()


async def max_loop_stall(aw: Awaitable[T], period: float = 0.005) -> tuple[T, float]:
    """Run ``aw`` while a ticker measures the longest time the event loop did not run it."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = False

    async def tick() -> None:
        nonlocal worst
        while not done:
            t = loop.time()
            await asyncio.sleep(period)
            worst = max(worst, loop.time() - t - period)

    ticker = asyncio.create_task(tick())
    try:
        out = await aw
    finally:
        done = True
        await ticker
    return out, worst


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def peak_of_a_warm_write(
    encoder: bk.PayloadEncoder, schedules: list[Schedule], last_fired: dict[str, int], backup_dir: str
) -> int:
    """Bytes allocated at the peak of one pass whose schedules are cached: what the file's
    size costs in memory on top of the encoder's cache (issue 16: it used to be about 3x)."""
    tracemalloc.start()
    try:
        payload = encoder.encode(schedules, last_fired)
        encoded = bk.encode_backup(payload, node="bench", raft_index=2, written_at=T0)
        bk.write_backup(backup_dir, encoded, expect_main=None, set_aside_corrupt=False, now=T0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def run(n: int) -> None:
    (schedules, last_fired), t_make = timed(lambda: make_schedules(n))
    print(f"{n} schedules generated in {t_make:.1f} s", flush=True)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="slimsched-bench-backup-") as base:
        backup_dir = os.path.join(base, "backup")
        path = os.path.join(backup_dir, bk.FILE_NAME)

        # -- the pure steps, alone --
        encoder = bk.PayloadEncoder()
        payload, t_cold = timed(lambda: encoder.encode(schedules, last_fired))
        _, t_warm = timed(lambda: encoder.encode(schedules, last_fired))
        encoded, t_encode = timed(
            lambda: bk.encode_backup(payload, node="bench", raft_index=1, written_at=T0)
        )
        _, t_write = timed(
            lambda: bk.write_backup(backup_dir, encoded, expect_main=None, set_aside_corrupt=False, now=T0)
        )
        raw_file = bk.read_optional(path) or b""
        _, t_check = timed(lambda: bk.check_integrity(raw_file))
        peak = peak_of_a_warm_write(encoder, schedules, last_fired, os.path.join(base, "peak"))
        rows += [
            ("backup: encode the payload + SHA-256, first pass (every schedule)", s(t_cold)),
            ("backup: encode the payload + SHA-256, schedules unchanged (cached)", s(t_warm)),
            ("backup: header + hash + splice (encode_backup)", s(t_encode)),
            ("backup: temp file + fsync + rename + dir fsync", s(t_write)),
            ("backup: read-back check at start (check_integrity)", s(t_check)),
            ("backup file size", mb(encoded.size)),
            (
                "backup: peak allocation of a warm pass (encode + write, tracemalloc)",
                f"{mb(peak)} ({peak / encoded.size:.2f}x the file)",
            ),
        ]

        # -- restore through a real single-node Raft cluster --
        async with single_node(os.path.join(base, "raft")) as raft:
            raw, t_read = timed(lambda: bk.read_optional(path) or b"")
            backup, t_verify = timed(lambda: bk.verify_backup(raw))
            command, t_command = timed(lambda: bk.restore_command(backup, "bench-restore"))
            result, t_commit = await atimed(raft.submit(command, within=bk.RESTORE_COMMIT_SECONDS))
            assert result.ok, result
            assert raft.read(lambda st: len(st.schedules)) == n
            _, t_apply = timed(lambda: apply(State(), command))
            t_restore = t_read + t_verify + t_command + t_commit
            rows += [
                ("restore: read the file", s(t_read)),
                ("restore: verify (hashes, canonical form, decode every schedule)", s(t_verify)),
                ("restore: build the command", s(t_command)),
                ("restore: commit through a single-node RaftNode (apply included)", s(t_commit)),
                ("restore: total (read + verify + command + commit)", s(t_restore)),
                ("restore: Raft-thread time to apply the entry (every node)", s(t_apply)),
                ("restore: command size (one Raft entry)", mb(len(command))),
            ]

            # -- the node's backup pass on the restored state --
            backups = bk.Backups(
                raft=raft,
                backup_dir=os.path.join(base, "node-backup"),
                node_id=raft.settings.node_id,
                interval_seconds=60.0,
                registry=CollectorRegistry(),
                clock=time.time,
            )
            await backups.load()
            (first, stall_first), t_first = await atimed(max_loop_stall(backups.backup_once()))
            (second, stall_second), t_second = await atimed(max_loop_stall(backups.backup_once()))
            sid = schedules[1].id
            fired = encode_command("fire_tick", schedule_id=sid, tick=T0 + 7200, at=T0, outcome="skipped")
            assert (await raft.submit(fired)).ok
            (third, stall_third), t_third = await atimed(max_loop_stall(backups.backup_once()))
            assert (first, second, third) == (bk.Decision.WRITE, bk.Decision.UNCHANGED, bk.Decision.WRITE)
            _, t_copy = timed(
                lambda: raft.read(lambda st: (list(st.schedules.values()), st.last_fired.copy()))
            )
            rows += [
                ("node pass, first: copy + encode all + hash + write", s(t_first)),
                ("  longest event-loop stall during it", s(stall_first)),
                ("node pass, nothing changed: copy + encode (cached) + hash", s(t_second)),
                ("  longest event-loop stall during it", s(stall_second)),
                ("node pass, one tick fired: copy + encode (cached) + hash + write", s(t_third)),
                ("  longest event-loop stall during it", s(stall_third)),
                ("  of which the copy under the state lock", s(t_copy)),
            ]
    print()
    print(f"Backup and restore, {n:,} schedules ({os.cpu_count()} CPUs)")
    print(table(["step", "figure"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(run(args.schedules))


if __name__ == "__main__":
    main()
