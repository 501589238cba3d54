"""A 3-node cluster cold-starting onto a backup of 100,000 schedules: time and elections.

Why: a restore of that size as one Raft entry held every node's Raft thread for seconds, and the
leader's silence meanwhile cost an election right after every such cold start. Since level 3 a
restore larger than 1 MB goes in ``restore_part`` commands. This starts 3 ``slimsched serve``
processes with empty Raft data and the same backup file in each backup directory, and polls
``/status`` until every node holds every schedule: the seconds from the start to an agreed
leader and to the last node restored, and the highest Raft term seen (1 is the first election
alone), restoring in parts or, with ``SLIMSCHED_TEST_COMMAND_LEVEL=2`` (nodes of the release
before ``restore_part``), in one entry. The schedules fire once a year, so the new leader has
nothing to fire or record after the restore.

Run: ``.venv/bin/python -m bench.bench_cold_start [--schedules 100000] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench._common import BENCH_JOB, BENCH_JOBS_CONFIGURATION, say, table
from slimsched import backup as bk
from slimsched.localcluster import LocalCluster
from slimsched.model import Schedule

DEADLINE_SECONDS = 300.0
SETTLE_SECONDS = 5.0  # kept polling after the last node restored: an election may come late


def backup_file(n: int) -> bytes:
    now_ms = int(time.time() * 1000)
    schedules = [
        Schedule(id=f"{i:032x}", job_name=BENCH_JOB, cron="0 0 1 1 *", created_at_ms=now_ms) for i in range(n)
    ]
    payload = bk.payload_of(schedules, {})
    return bk.encode_backup(payload, node="bench", raft_index=1, written_at=time.time()).data


def cold_start(data: bytes, n: int, level: int) -> list[object]:
    with tempfile.TemporaryDirectory(prefix="slimsched-bench-cold-") as base:
        env = {
            "SLIMSCHED_LOG_LEVEL": "WARNING",
            "SLIMSCHED_KUBE_MODE": "none",
            "SLIMSCHED_TEST_COMMAND_LEVEL": str(level),
            "SLIMSCHED_BACKUP_INTERVAL_SECONDS": "3600",
        }
        c = LocalCluster.create(3, base, jobs_configuration=BENCH_JOBS_CONFIGURATION, backups=True, env=env)
        for node in c.nodes:
            assert node.backup_dir is not None
            os.makedirs(node.backup_dir)
            with open(os.path.join(node.backup_dir, bk.FILE_NAME), "wb") as f:
                f.write(data)
        started = time.monotonic()
        c.start()
        try:
            leader_at = restored_at = None
            term = 0
            while time.monotonic() - started < DEADLINE_SECONDS:
                statuses = [c.status(i) for i in range(3)]
                term = max([term, *(int(s.get("Term") or 0) for s in statuses if s)])
                now = time.monotonic() - started
                if leader_at is None and c.leader_index() is not None:
                    leader_at = now
                done = all(s is not None and s.get("Schedules") == n for s in statuses)
                if restored_at is None and done:
                    restored_at = now
                if restored_at is not None and now - restored_at >= SETTLE_SECONDS:
                    break
                time.sleep(0.1)
            else:
                raise TimeoutError(f"not every node restored {n} schedules in {DEADLINE_SECONDS} s")
        finally:
            c.stop()
    say(f"level {level}: leader {leader_at:.1f} s, restored {restored_at:.1f} s, term {term}")
    return [
        "in parts (level 3)" if level >= 3 else "one entry (level 2)",
        f"{leader_at:.1f}",
        f"{restored_at:.1f}",
        term,
        term - 1,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    data = backup_file(args.schedules)
    say(f"backup of {args.schedules} schedules: {len(data) / 1e6:.1f} MB")
    rows = [cold_start(data, args.schedules, level) for _ in range(args.rounds) for level in (3, 2)]
    print(f"\n{args.schedules:,} schedules, backup {len(data) / 1e6:.1f} MB, 3 nodes on 127.0.0.1\n")
    print(
        table(
            ["restore", "agreed leader s", "every node restored s", "highest term", "elections after 1st"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
