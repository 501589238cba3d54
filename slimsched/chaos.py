"""``slimsched chaos``: a failover harness that injects faults under load, then checks invariants.

Why: slimsched's promises (a tick fires exactly once, a run becomes exactly one Job, an
acknowledged write survives) are claims about failures, and unit tests only reach the failures
one thinks of. This harness runs N real ``slimsched serve`` processes on 127.0.0.1 against the
Kubernetes API emulator, drives a steady load through the REST API from concurrent clients, and
breaks the cluster on a timetable:

- ``kill-leader`` / ``kill-follower``: SIGKILL, restart with the data directory kept;
- ``pause-leader``: SIGSTOP for longer than the election timeout, then SIGCONT (a deposed
  leader that wakes up believing it leads);
- ``restart-keep``: SIGTERM and restart, data kept; ``restart-wipe``: SIGKILL, delete the data
  directory, restart (one node at a time, never a majority; see "One fault at a time");
- ``partition-leader`` / ``partition-follower``: cut every Raft link of one node;
  ``partition-link``: cut the one link between the leader and a follower (a partial partition).

It then compares what clients were told with what every node and the emulator hold (see
``slimsched.chaoscheck.check``), prints a table (faults by kind, operations, failover times,
violations) and exits non-zero on any violation.

Partitions need no root and no iptables: a small asyncio TCP proxy (``slimsched.partitionproxy``)
runs in the harness process and cuts Raft links between nodes that reach each other through it.
**The partition faults therefore require the cluster to run without SLIMSCHED_RAFT_PASSWORD**
(see that module); the harness clears the password for its nodes.

One fault at a time: before each fault the harness waits until every node runs, all agree on
one leader and each has applied what that leader had committed. A majority of intact nodes
thus always exists, which is what Raft needs to keep its promises; wiping a node's data while
another lags is not a crash fault and may lose committed entries, so it is never done.

Proving the checker can fail: nodes started with SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1 (read by the
node's entry point, inherited from the harness's environment) accept a FireTick for a tick
already handled; a run with ``--kinds pause-leader`` then reports tick-handled-twice. Nodes
started with SLIMSCHED_TEST_BREAK=<rule> run without one leader rule (slimsched.crashpoints):
``missed-ticks`` makes tick-lost, ``job-name-per-term`` run-dispatched-twice (Jobs are also
counted by their run-id label, whatever their names), ``declared-owns-all`` acked-write-lost.

Proving the run exercised what it exists for: the ``crash-point`` and ``stop-point`` faults (not
among the default kinds: each restarts the followers armed with SLIMSCHED_TEST_CRASH_AT or
SLIMSCHED_TEST_STOP_AT, then kills the leader) make the next leader die, or freeze, at a named
step of the protocol. The harness reads the nodes' counters (reconciles, 409s taken as created)
before each restart, the emulator's 409s and the ledgers' catch-up firings, prints them as
"Paths exercised", and reports path-not-exercised when a point fault happened and its path was
not taken.

The harness is built from ``chaosharness`` (cluster, calls, health), ``chaosfaults`` (each fault)
and ``chaosload`` (the clients); this module adds the end of a run (quiet, read, check) and the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

import aiohttp
import orjson

from slimsched import codec
from slimsched.chaoscheck import NodeSnapshot, Violation, check, unexercised
from slimsched.chaosfaults import FaultInjector
from slimsched.chaosharness import (
    CLIENT_TIMEOUT,
    LEADER_WAIT_SECONDS,
    TERMINAL_STATUSES,
    ChaosConfig,
    Health,
    wait_event,
)
from slimsched.chaosload import NEVER_IN_A_RUN, TICK_PREFIX, LoadClients
from slimsched.chaosplan import ALL_KINDS, POINT_FAULT_POINTS, FaultKind, plan_timetable
from slimsched.chaosreport import ChaosReport, first_tick_after
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import LABEL_RUN_ID

__all__ = ["NEVER_IN_A_RUN", "ChaosConfig", "Harness", "main", "run_chaos"]


class Harness(FaultInjector, LoadClients):
    """The whole harness; what is here reads the cluster at the end of a run."""

    async def jobs_by_run(self) -> dict[str, list[str]]:
        """Kubernetes' Jobs by their run-id label (however they are named)."""
        url = f"{self.kube_url}/apis/batch/v1/namespaces/default/jobs"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as resp:
            items = (orjson.loads(await resp.read())).get("items") or []
        out: dict[str, list[str]] = {}
        for job in items:
            meta = job.get("metadata") or {}
            rid = (meta.get("labels") or {}).get(LABEL_RUN_ID)
            if rid:
                out.setdefault(str(rid), []).append(str(meta.get("name")))
        return out

    async def pause_every_second_schedules(self, leader: int) -> None:
        for job in sorted(j for j in self.log.job_names if j.startswith(TICK_PREFIX)):
            for s in await self.get_ok(leader, f"/job-schedules/{job}") or []:
                if s.get("Paused"):
                    continue
                for _ in range(4):
                    a = await self.call(leader, "PATCH", f"/job-schedules/{job}/{s['Id']}", {"Paused": True})
                    self.log.count("pause schedule", a)
                    if a.acked or a.status == 404:
                        break
                    await asyncio.sleep(0.3)

    async def wait_quiescent(self, leader: int, timeout: float) -> bool:
        """Every run on the leader finished (so every Job that will exist exists)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        jobs = sorted(j for j in self.log.job_names if not j.startswith("churn-"))
        while loop.time() < deadline:
            active = 0
            for job in jobs:
                runs = await self.get_ok(leader, f"/job/{job}") or []
                active += sum(1 for r in runs if r["Status"] not in TERMINAL_STATUSES)
            if active == 0:
                return True
            self.say(f"waiting for {active} active runs")
            await asyncio.sleep(0.5)
        return False

    async def wait_converged(self, timeout: float) -> dict[int, str | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hashes: dict[int, str | None] = {}
        while loop.time() < deadline:
            sts = await self.statuses(range(len(self.cluster.nodes)), with_hash=True)
            hashes = {i: (s or {}).get("StateHash") for i, s in sts.items()}
            applied = {(s or {}).get("AppliedIndex") for s in sts.values()}
            if None not in hashes.values() and len(set(hashes.values())) == 1 and len(applied) == 1:
                return hashes
            await asyncio.sleep(0.3)
        return hashes

    async def snapshot(self, index: int, state_hash: str | None) -> NodeSnapshot:
        snap = NodeSnapshot(index, state_hash=state_hash)
        for job in sorted(self.log.job_names):
            for s in await self.get_ok(index, f"/job-schedules/{job}") or []:
                snap.schedules[str(s["Id"])] = s
                if job.startswith(TICK_PREFIX):
                    ledger = await self.get_ok(index, f"/job-schedules/{job}/{s['Id']}/ticks")
                    snap.ledgers[str(s["Id"])] = list(ledger or [])
            for r in await self.get_ok(index, f"/job/{job}") or []:
                # The API serves SlimFaas's .NET ticks; the checker compares milliseconds.
                queued_ms = codec.epoch_ms_of_dotnet_ticks(int(r["InQueueTimestamp"]))
                snap.runs[str(r["Id"])] = {**r, "InQueueTimestamp": queued_ms, "Job": job}
        return snap


async def _run(config: ChaosConfig, base_dir: str, emulator: EmulatorThread, kube_url: str) -> ChaosReport:
    wall = time.monotonic()
    h = Harness(config, base_dir, kube_url)
    h.t0 = time.monotonic()
    timetable = plan_timetable(config.duration, config.interval, config.kinds, random.Random(config.seed))
    h._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
    try:
        await h.proxy.start()
        h.cluster.start()
        if await h.wait_healthy(LEADER_WAIT_SECONDS) is None:
            raise RuntimeError(f"the cluster did not start within {LEADER_WAIT_SECONDS:g} s")
        h.t0 = time.monotonic()
        h.say(f"cluster up; {len(timetable)} faults planned")
        clients = [
            asyncio.create_task(h.tick_client(), name="chaos-ticks"),
            asyncio.create_task(h.churn_client(), name="chaos-churn"),
            *(
                asyncio.create_task(h.trigger_client(), name=f"chaos-trigger-{i}")
                for i in range(config.trigger_clients)
            ),
            asyncio.create_task(h.action_client(), name="chaos-actions"),
        ]
        faults = asyncio.create_task(h.run_faults(timetable), name="chaos-faults")
        await wait_event(h.stop_load, config.duration)
        h.stop_load.set()
        done, pending = await asyncio.wait([faults, *clients], timeout=config.recovery_timeout + 30)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed") from task.exception()
        h.say("load stopped; healing")
        await h.heal_everything()
        health = await h.wait_healthy(config.recovery_timeout)
        if health is None:
            h.notes.append(Violation("no-recovery", "cluster not healthy after healing everything"))
            health = Health(h.cluster.wait_leader(LEADER_WAIT_SECONDS), 0, 0)
        if h._measurements:
            await asyncio.wait(h._measurements, timeout=LEADER_WAIT_SECONDS)
        await h.pause_every_second_schedules(health.leader)
        if not await h.wait_quiescent(health.leader, config.quiesce_timeout):
            h.notes.append(
                Violation("not-quiescent", f"runs still active {config.quiesce_timeout:g} s after the load")
            )
        hashes = await h.wait_converged(config.recovery_timeout)
        await h.scrape()
        snapshots = [await h.snapshot(i, hashes.get(i)) for i in range(config.nodes)]
        await h.observe_backups()
        attempts = emulator.call(lambda e: e.creations())
        creations = [(c.name, c.outcome) for c in attempts]
        era = max((stopped for _, stopped in h.cold_starts), default=float("-inf"))
        old_jobs = frozenset(c.name for c in attempts if c.outcome == "created" and c.at_unix < era)
        violations, ticks = check(
            h.log, snapshots, creations, h.notes, await h.jobs_by_run(), h.cold_starts, old_jobs
        )
        exercised = {
            **h.exercised(),
            "create answered 409": sum(1 for _, o in creations if o == "conflict"),
            "catch-up firings": ticks.catch_up,
        }
        violations += unexercised(h.faults, exercised)
        fire_times = sorted(
            int(r["InQueueTimestamp"])
            for snap in snapshots[:1]
            for r in snap.runs.values()
            if r.get("ScheduleId")
        )
        for f in h.faults:
            if f.leader_fault:
                f.first_tick_after = first_tick_after(f.started_at, fire_times)
        return ChaosReport(
            nodes=config.nodes,
            duration=config.duration,
            seed=config.seed,
            faults=h.faults,
            ops=h.log.ops,
            ticks=ticks,
            jobs_created=sum(1 for _, o in creations if o == "created"),
            job_conflicts=sum(1 for _, o in creations if o == "conflict"),
            violations=violations,
            proxy=dict(h.proxy.stats),
            wall_seconds=time.monotonic() - wall,
            base_dir=base_dir,
            exercised=exercised,
        )
    finally:
        h.stop_load.set()
        for m in h._measurements:
            m.cancel()
        for i in list(h.paused):
            h.cluster.signal(i, signal.SIGCONT)
        await asyncio.to_thread(h.cluster.stop)
        await h.session.close()
        await h.proxy.stop()


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos run: cluster, emulator, load, faults, checks. Every process is stopped."""
    base = config.base_dir or tempfile.mkdtemp(prefix="slimsched-chaos-")
    emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.3, seed=config.seed)
    report: ChaosReport | None = None
    try:
        with emulator as kube_url:
            report = asyncio.run(_run(config, base, emulator, kube_url))
        return report
    finally:
        if config.base_dir is None and (report is None or not report.violations):
            shutil.rmtree(base, ignore_errors=True)


def _kinds(raw: str) -> tuple[FaultKind, ...]:
    try:
        return tuple(FaultKind(k.strip()) for k in raw.split(",") if k.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; kinds are {', '.join(k.value for k in FaultKind)}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slimsched chaos",
        description="Run a local cluster under load, inject faults on a timetable, check invariants. "
        "Exits 1 if any invariant is violated. The nodes run without a Raft password: the partition "
        "proxy identifies a connection's peer from its first, unencrypted frame. "
        "SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1 in the environment starts nodes without the FireTick "
        "duplicate check, to see the checker fail.",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of load and faults (default 60)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between planned faults (default 5)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kinds", type=_kinds, default=ALL_KINDS, help="comma-separated fault kinds (default: all)"
    )
    parser.add_argument(
        "--points",
        default=",".join(POINT_FAULT_POINTS),
        help="crash points the crash-point faults pick from (default: %(default)s)",
    )
    parser.add_argument("--data-dir", help="keep node data and logs here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each fault as it happens")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        nodes=args.nodes,
        duration=args.duration,
        interval=args.interval,
        seed=args.seed,
        kinds=args.kinds,
        base_dir=args.data_dir,
        verbose=args.verbose,
        crash_points=tuple(p.strip() for p in args.points.split(",") if p.strip()),
    )
    report = run_chaos(config)
    print(report.table(), flush=True)
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
