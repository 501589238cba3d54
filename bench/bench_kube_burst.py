"""How fast one KubeClient creates a burst of Jobs: the floor under firing lateness at a busy second.

At 100,000 schedules (bench_firing's mix) second 0 of every minute fires 240 ticks at once. A
tick's Job cannot be created sooner than the client and the API server can create Jobs, so this
measures that alone: 240 Job manifests (as the leader builds them) created through
``KubeClient.create_job`` against the emulator process, nothing else running, with several sizes
of the client's thread pool. For each row: the time from the first create to the last one's
answer, the median, and the CPU the client process and the emulator spent on the burst.

Run: ``.venv/bin/python -m bench.bench_kube_burst [--jobs 240] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._common import BENCH_JOB, BENCH_JOBS_CONFIGURATION, cpu_seconds, emulator_process, say, table
from slimsched import jobconfig, kube
from slimsched.jobmanifest import build_job_manifest, kube_job_name
from slimsched.model import JobOverrides, Run, RunStatus

THREADS = (1, 2, 4, 8)
IN_FLIGHT = 64  # the leader's max_concurrent_dispatches


def manifests(n: int, tick: int) -> list[dict[str, Any]]:
    spec = jobconfig.merge(
        jobconfig.parse_jobs_configuration(BENCH_JOBS_CONFIGURATION).job(BENCH_JOB), JobOverrides()
    )
    out = []
    for i in range(n):
        sid = f"s{i:06d}"
        run = Run(
            id=f"{sid}-{tick}",
            job_name=BENCH_JOB,
            spec=spec,
            status=RunStatus.DISPATCHING,
            queued_at_ms=tick * 1000,
            kube_name=kube_job_name(BENCH_JOB, f"{sid}-{tick}"),
            schedule_id=sid,
            tick=tick,
            dispatch_term=1,
            dispatch_index=i,
        )
        out.append(build_job_manifest(run, namespace="default", raft_term=1, raft_index=i, schedule_id=None))
    return out


async def burst(client: kube.KubeClient, batch: list[dict[str, Any]]) -> list[float]:
    """Create every manifest, at most IN_FLIGHT at once; each one's answer time from the start."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(IN_FLIGHT)
    done: list[float] = []

    async def one(m: dict[str, Any]) -> None:
        async with sem:
            if not await client.create_job(m):
                raise RuntimeError(f"{m['metadata']['name']} already existed")
        done.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(m) for m in batch))
    return sorted(done)


async def measure(url: str, emulator_pid: int, jobs: int, rounds: int) -> list[list[object]]:
    rows: list[list[object]] = []
    tick = 1_800_000_000
    for threads in THREADS:
        client = kube.KubeClient.from_url(url, "default", call_threads=threads)
        try:
            tick += 60
            await burst(client, manifests(20, tick))  # connections opened, code warm
            for r in range(rounds):
                tick += 60
                batch = manifests(jobs, tick)
                c0, e0 = time.process_time(), cpu_seconds(emulator_pid)
                done = await burst(client, batch)
                c1, e1 = time.process_time(), cpu_seconds(emulator_pid)
                rows.append(
                    [
                        threads,
                        r + 1,
                        jobs,
                        f"{done[-1] * 1000:.0f}",
                        f"{done[len(done) // 2] * 1000:.0f}",
                        f"{jobs / done[-1]:.0f}",
                        f"{(c1 - c0) * 1e6 / jobs:.0f}",
                        f"{(e1 - e0) * 1e6 / jobs:.0f}",
                    ]
                )
                say(f"threads {threads} round {r + 1}: last answer {done[-1] * 1000:.0f} ms")
        finally:
            await client.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with emulator_process() as (url, pid):
        rows = asyncio.run(measure(url, pid, args.jobs, args.rounds))
    print()
    print(
        table(
            [
                "client threads",
                "round",
                "Jobs",
                "first to last ms",
                "p50 ms",
                "creates/s",
                "client CPU us/create",
                "emulator CPU us/create",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
