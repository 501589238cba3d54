"""Leader SIGKILL -> first cron tick fired by the new leader, on a 3-node cluster + emulator.

One schedule ``* * * * * *`` (every second). Each trial waits for a healthy cluster (3 nodes
ready, one agreed leader, the schedule firing), sleeps a random fraction of a second (so the kill
falls anywhere between two ticks), SIGKILLs the leader and measures, from the kill:

- new leader: a survivor's ``GET /status`` names another leader (polled every 20 ms);
- FireTick: the first ``fired`` record of the schedule's tick ledger whose ``RecordedAt`` (the
  proposing leader's clock when it proposed the FireTick) is after the kill;
- Job: the emulator's precise creation time of that tick's Kubernetes Job.

The killed node is then restarted and the next trial waits for it to be ready again.
``--background N`` first adds N daily schedules (``M H * * *``) that do not fire during the run:
a new leader plans every schedule before it fires anything, so this shows what state size costs.

Run: ``.venv/bin/python -m bench.bench_failover [--trials 12] [--background 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import urllib.request
from typing import Any

import orjson

from bench._common import BENCH_JOB, cluster, emulator_process, http_json, ms, percentile, say, table
from bench.bench_firing import create_schedules
from slimsched.jobmanifest import kube_job_name
from slimsched.localcluster import LocalCluster
from slimsched.model import TickOutcome

POLL_SECONDS = 0.02
TRIAL_LIMIT_SECONDS = 20.0


def fired_after(c: LocalCluster, index: int, sid: str, t_ms: float) -> dict[str, Any] | None:
    """The first fired ledger record proposed at or after ``t_ms``, as seen by node ``index``."""
    try:
        status, ticks = http_json(f"{c.nodes[index].url}/job-schedules/{BENCH_JOB}/{sid}/ticks", timeout=1.0)
    except OSError:
        return None
    if status != 200:
        return None
    fired = TickOutcome.FIRED.value
    after = [t for t in ticks if t.get("Outcome") == fired and t.get("RecordedAt", 0) >= t_ms]
    return min(after, key=lambda t: t["RecordedAt"]) if after else None


def job_created_at(emulator_url: str, name: str) -> float | None:
    with urllib.request.urlopen(emulator_url + "/_emulator/creations", timeout=10) as r:
        for x in orjson.loads(r.read())["items"]:
            if x["name"] == name and x["outcome"] == "created":
                return float(x["atUnix"])
    return None


def healthy(c: LocalCluster, sid: str, timeout: float = 60.0) -> int:
    """Wait until all nodes are ready, agree on a leader and the schedule fired in the last 2 s."""
    deadline = time.monotonic() + timeout
    c.wait_ready(timeout=timeout)
    while time.monotonic() < deadline:
        leader = c.leader_index()
        if leader is not None and fired_after(c, leader, sid, (time.time() - 2.0) * 1000):
            return leader
        time.sleep(0.1)
    raise TimeoutError("the cluster did not become healthy and firing in time")


def trial(c: LocalCluster, emulator_url: str, sid: str, rng: random.Random) -> tuple[float, float, float]:
    leader = healthy(c, sid)
    old = c.nodes[leader].raft_address
    survivor = (leader + 1) % len(c.nodes)
    time.sleep(2.0 + rng.random())
    t_kill = time.time()
    c.kill(leader)
    elected = math.nan
    record: dict[str, Any] | None = None
    deadline = time.monotonic() + TRIAL_LIMIT_SECONDS
    while record is None and time.monotonic() < deadline:
        if math.isnan(elected):
            st = c.status(survivor)
            if st is not None and st.get("Leader") not in (None, old):
                elected = time.time() - t_kill
        record = fired_after(c, survivor, sid, t_kill * 1000)
        if record is None:
            time.sleep(POLL_SECONDS)
    if record is None:
        raise TimeoutError("no tick fired within the trial limit after the leader was killed")
    fired = record["RecordedAt"] / 1000 - t_kill
    job = math.nan
    name = kube_job_name(BENCH_JOB, str(record["RunId"]))
    for _ in range(50):
        at = job_created_at(emulator_url, name)
        if at is not None:
            job = at - t_kill
            break
        time.sleep(0.1)
    c.start(leader)
    return elected, fired, job


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--background", type=int, default=0, help="daily schedules added first")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results: list[tuple[float, float, float]] = []
    with emulator_process() as (emu_url, _pid), cluster(kube_url=emu_url) as c:
        status, body = http_json(
            f"{c.nodes[0].url}/job-schedules/{BENCH_JOB}", "POST", {"Schedule": "* * * * * *"}
        )
        assert status == 201, body
        sid = str(body["Id"])
        if args.background:
            exprs = [f"{rng.randrange(60)} {rng.randrange(24)} * * *" for _ in range(args.background)]
            made, seconds, _errors = asyncio.run(create_schedules([x.url for x in c.nodes], exprs))
            say(f"{len(made)} background schedules created in {seconds:.0f} s")
        for i in range(args.trials):
            r = trial(c, emu_url, sid, rng)
            results.append(r)
            say(f"trial {i + 1}: new leader {ms(r[0])} ms, FireTick {ms(r[1])} ms, Job {ms(r[2])} ms")
    rows = []
    labels = ("kill -> new leader known", "kill -> first FireTick", "kill -> its Job created")
    for k, label in enumerate(labels):
        values = [r[k] for r in results if not math.isnan(r[k])]
        rows.append([label, len(values), ms(percentile(values, 50)), ms(max(values) if values else math.nan)])
    print(
        f"\n{args.trials} trials, schedule '* * * * * *' (+ {args.background} daily schedules), 3 nodes, "
        "emulator; times from the SIGKILL.\n"
    )
    print(table(["measure", "trials", "p50 ms", "max ms"], rows))
    print()
    print(
        table(
            ["trial", "new leader ms", "FireTick ms", "Job ms"],
            [[i + 1, ms(a), ms(b), ms(j)] for i, (a, b, j) in enumerate(results)],
        )
    )


if __name__ == "__main__":
    main()
