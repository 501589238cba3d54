"""RSS of a slimsched node idle, and per schedule with 100,000 schedules.

1. What importing costs: RSS of a bare interpreter, then after importing each heavy dependency
   and the node module (each in a fresh process), plain and with ``-OO`` (nodes run with
   ``-OO``: the image sets PYTHONOPTIMIZE=2). The last row is what the node no longer imports:
   the official client's generated API classes for the three groups it reads.
2. Idle nodes as they run in production, each with a Kubernetes client (an emulator behind
   ``SLIMSCHED_KUBE_MODE=url``): a 3-node cluster from this environment (test extras installed),
   and one from a fresh virtual environment holding only the runtime dependencies, as the image
   does (``--no-runtime-venv`` skips it; it takes about 20 s to build).
3. Per schedule: a 3-node cluster (``SLIMSCHED_KUBE_MODE=none``, so nothing fires), RSS of each
   node idle, then after 100,000 schedules created through the API (64 clients spread over the
   nodes; daily expressions ``M H * * *`` with one Arg) and a settling pause, (after - idle) /
   100,000: once with the Raft log since the last snapshot still held (up to 20,000 entries),
   once after the idle compaction that follows 30 s without writes (RSS hardly moves: the freed
   entries share pymalloc arenas with the state, and the journal file's pages stay mapped).
4. The replicated state alone: tracemalloc of a ``State`` fed the same 100,000
   ``create_schedule`` commands through ``statemachine.apply`` in this process.

Run: ``.venv/bin/python -m bench.bench_memory [--schedules 100000] [--no-runtime-venv]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace

import orjson

from bench._common import BENCH_JOB, cluster, emulator_process, node_pid, rss_bytes, say, table
from bench.bench_firing import create_schedules
from slimsched import codec, jobconfig, statemachine
from slimsched.jsonhttp import request_json
from slimsched.localcluster import NODE_PYTHON_FLAGS
from slimsched.settings import RaftTimings

MIB = 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_STEPS = (
    ("bare interpreter", ""),
    ("+ asyncio, orjson", "import asyncio, orjson"),
    # pysyncobj imports it (for the Raft password) whenever it is installed: named on its own
    ("+ cryptography.fernet", "import cryptography.fernet"),
    ("+ pysyncobj", "import pysyncobj"),
    ("+ aiohttp", "import aiohttp.web"),
    ("+ croniter, prometheus_client", "import croniter, prometheus_client"),
    ("+ kubernetes client", "import kubernetes.client"),
    ("+ slimsched.node (all of the above)", "import slimsched.node"),
    (
        "(not imported) + BatchV1Api, CoreV1Api, AppsV1Api",
        "from kubernetes.client import BatchV1Api, CoreV1Api, AppsV1Api",
    ),
)
READ_RSS = "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"


def import_rss(python: str = sys.executable) -> list[list[object]]:
    rows: list[list[object]] = []
    code = ""
    for label, stmt in IMPORT_STEPS:
        code = f"{code}; {stmt}" if stmt else code
        script = (f"{code.lstrip('; ')}\n" if code else "") + READ_RSS
        row: list[object] = [label]
        for flags in ((), NODE_PYTHON_FLAGS):
            out = subprocess.run(
                [python, *flags, "-c", script], capture_output=True, text=True, check=True, timeout=60
            )
            row.append(f"{int(out.stdout.strip()) / 1024:.1f}")
        rows.append(row)
    return rows


@contextlib.contextmanager
def runtime_venv() -> Iterator[str]:
    """The python of a fresh virtual environment with only slimsched's runtime dependencies."""
    with tempfile.TemporaryDirectory(prefix="slimsched-runtime-") as base:
        subprocess.run([sys.executable, "-m", "venv", base], check=True, timeout=120)
        python = os.path.join(base, "bin", "python")
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", REPO],
            check=True,
            timeout=600,
        )
        # as deploy/Dockerfile does: the nodes start with their -OO bytecode already compiled
        compile_all = [python, "-m", "compileall", "-q", "-j", "0", "-o", "2", base]
        subprocess.run(compile_all, check=True, timeout=600)
        yield python


JOBS_CREATED = 128  # then idle again: the leader's create path (an aiohttp session, its connections) is open
AFTER_JOBS = f"  same, idle again after the leader created {JOBS_CREATED} Jobs"


def idle_cluster_rss(python: str | None, settle: float) -> tuple[list[float], list[float]]:
    """RSS in MiB of each node of an idle 3-node cluster with a Kubernetes client (the emulator):
    idle from the start, then idle again after the leader created ``JOBS_CREATED`` Jobs."""
    with emulator_process() as (url, _pid), cluster(kube_url=url, python=python) as c:
        leader = c.wait_leader()
        time.sleep(settle)
        idle = [rss_bytes(node_pid(c, i)) / MIB for i in range(len(c.nodes))]
        for _ in range(JOBS_CREATED):
            status, answer = request_json(f"{c.nodes[leader].url}/job/{BENCH_JOB}", "POST", {"Args": ["1"]})
            if status != 202:
                raise RuntimeError(f"POST /job answered {status}: {answer}")
        deadline = time.monotonic() + 60
        while len(creations(url)) < JOBS_CREATED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the leader did not create {JOBS_CREATED} Jobs within 60 s")
            time.sleep(0.2)
        time.sleep(settle)
        after = [rss_bytes(node_pid(c, i)) / MIB for i in range(len(c.nodes))]
        return idle, after


def creations(emulator_url: str) -> list[object]:
    with urllib.request.urlopen(emulator_url + "/_emulator/creations", timeout=30) as r:
        items: list[object] = orjson.loads(r.read())["items"]
        return items


def exprs(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randrange(60)} {rng.randrange(24)} * * *" for _ in range(n)]


def state_bytes_per_schedule(n: int) -> float:
    """tracemalloc bytes per schedule of the replicated State fed n create_schedule commands."""
    req = jobconfig.parse_schedule_request({"Schedule": "0 0 * * *", "Args": ["1"]})
    payloads = []
    for expr in exprs(n):
        sched = replace(
            req.to_schedule(id=uuid.uuid4().hex, job_name=BENCH_JOB, created_at_ms=int(time.time() * 1000)),
            cron=expr,
        )
        payloads.append(
            statemachine.encode_command(
                "create_schedule", rid=uuid.uuid4().hex, schedule=codec.schedule_to_dict(sched)
            )
        )
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = statemachine.State()
    for p in payloads:
        statemachine.apply(state, p)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    recent = len(state.recent)
    tracemalloc.stop()
    say(f"state: {len(state.schedules)} schedules, {recent} remembered request ids")
    return used / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before reading RSS")
    parser.add_argument("--no-runtime-venv", action="store_true", help="skip the runtime-only environment")
    args = parser.parse_args(argv)
    n = args.schedules

    imports = import_rss()
    idle_rows: list[list[object]] = []
    mib, after_jobs = idle_cluster_rss(None, args.settle)
    idle_rows.append(["this environment (test extras)", *(f"{m:.1f}" for m in mib)])
    idle_rows.append([AFTER_JOBS, *(f"{m:.1f}" for m in after_jobs)])
    say(f"idle with a Kubernetes client, this environment: {idle_rows[-2][1:]}, then {idle_rows[-1][1:]}")
    runtime_imports: list[list[object]] = []
    if not args.no_runtime_venv:
        with runtime_venv() as python:
            runtime_imports = import_rss(python)
            mib, after_jobs = idle_cluster_rss(python, args.settle)
        idle_rows.append(["runtime dependencies only (as the image)", *(f"{m:.1f}" for m in mib)])
        idle_rows.append([AFTER_JOBS, *(f"{m:.1f}" for m in after_jobs)])
        say(f"idle with a Kubernetes client, runtime only: {idle_rows[-1][1:]}")
    rows: list[list[object]] = []
    with cluster() as c:
        leader = c.wait_leader()
        pids = {i: node_pid(c, i) for i in range(len(c.nodes))}
        time.sleep(args.settle)
        idle = {i: rss_bytes(p) for i, p in pids.items()}
        say(f"idle RSS MiB: { {i: round(v / MIB, 1) for i, v in idle.items()} }")
        created, seconds, errors = asyncio.run(create_schedules([x.url for x in c.nodes], exprs(n)))
        say(f"created {len(created)} schedules in {seconds:.0f} s ({errors} retries)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sts = [c.status(i) for i in range(len(c.nodes))]
            if all(s is not None and s.get("Schedules") == len(created) for s in sts):
                break
            time.sleep(1)
        time.sleep(args.settle)
        busy = {i: rss_bytes(p) for i, p in pids.items()}  # the log since the last snapshot held
        time.sleep(RaftTimings().idle_compaction_seconds)
        time.sleep(args.settle)
        full = {i: rss_bytes(p) for i, p in pids.items()}  # after the quiet log's compaction
        for i in range(len(c.nodes)):
            rows.append(
                [
                    f"node {i} ({'leader' if i == leader else 'follower'})",
                    f"{idle[i] / MIB:.1f}",
                    f"{busy[i] / MIB:.1f}",
                    f"{(busy[i] - idle[i]) / len(created):.0f}",
                    f"{full[i] / MIB:.1f}",
                    f"{(full[i] - idle[i]) / len(created):.0f}",
                ]
            )
    state_bps = state_bytes_per_schedule(n)
    print("\nRSS after imports (fresh process each), this environment:\n")
    print(table(["process", "RSS MiB", "RSS MiB with -OO"], imports))
    if runtime_imports:
        print("\nThe same, runtime dependencies only:\n")
        print(table(["process", "RSS MiB", "RSS MiB with -OO"], runtime_imports))
    print("\nIdle 3-node clusters with a Kubernetes client (SLIMSCHED_KUBE_MODE=url, the emulator):\n")
    print(table(["environment", "node 0 MiB", "node 1 MiB", "node 2 MiB"], idle_rows))
    print(f"\n3-node cluster, SLIMSCHED_KUBE_MODE=none, {len(created)} schedules created via the API.\n")
    print(
        f"RSS {args.settle:.0f} s after the last create (with the log since the last snapshot), then "
        f"after the log's idle compaction ({RaftTimings().idle_compaction_seconds:.0f} s quiet):\n"
    )
    header = ["node", "idle RSS MiB", "RSS MiB, log held", "bytes/schedule", "RSS MiB, compacted"]
    print(table([*header, "bytes/schedule, compacted"], rows))
    print(
        f"\nReplicated State alone (tracemalloc, {n} create_schedule commands): "
        f"{state_bps:.0f} bytes per schedule"
    )


if __name__ == "__main__":
    main()
