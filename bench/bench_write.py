"""API write path on a 3-node local cluster, next to raw pysyncobj with the same settings.

For ``POST /job-schedules/{name}`` and ``POST /job/{name}``, with 1, 24 and 64 concurrent
closed-loop clients (keep-alive; ``bench/_lean_http.py``, which costs the shared CPU a fifth of
what aiohttp's client does, or ``--client aiohttp``), sent either all to the leader or spread round-robin
over the 3 nodes (followers forward to the leader through pysyncobj): throughput, p50/p99
latency, and the CPU share of each process. The anchor is a raw pysyncobj 3-process cluster
with the same ``SyncObjConf`` as ``slimsched/raft.py`` whose clients, in the leader process,
commit payloads of the same size as slimsched's command, with the same concurrency.

Run: ``.venv/bin/python -m bench.bench_write [--seconds 5] [--client lean|aiohttp]
[--endpoints schedule,job] [--interleave] [--pure]`` (``--interleave``: the anchor's row right
before each slimsched row, for a machine whose load moves during the run; ``--pure``: the
leader's own CPU per request only, in this process, comparable across trees put first on the path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import aiohttp
import orjson

from bench import _lean_http
from bench._common import (
    BENCH_JOB,
    BENCH_JOBS_CONFIGURATION,
    cluster,
    cpu_seconds,
    ms,
    node_pid,
    percentile,
    say,
    table,
)
from slimsched import codec, cronplan, ids, jobconfig
from slimsched.jobmanifest import kube_job_name
from slimsched.jsonfields import collecting
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.model import Run, RunStatus
from slimsched.statemachine import State, apply, encode_command

CLIENTS = (1, 24, 64)
SCHEDULE_BODY = {"Schedule": "0 0 * * *", "Args": ["42"]}
JOB_BODY = {"Args": ["42"]}


def _enqueue_command(jobs: jobconfig.JobsConfiguration, body: Any, now_ms: int) -> bytes:
    """The ``enqueue_run`` command POST /job proposes for ``body`` (as routes_runs builds it).

    An older tree (``--pure`` run with it first on the path) has no ``queued_run_command``: its
    handler encoded a whole Run, which is what this does then.
    """
    spec = jobconfig.merge(jobs.job(BENCH_JOB), jobconfig.parse_overrides(body))
    run_id = ids.new_id()
    compact = getattr(codec, "queued_run_command", None)
    if compact is not None:
        run = compact(run_id, BENCH_JOB, spec, now_ms, kube_job_name(BENCH_JOB, run_id))
    else:
        run = codec.run_to_dict(
            Run(run_id, BENCH_JOB, spec, RunStatus.QUEUED, now_ms, kube_job_name(BENCH_JOB, run_id))
        )
    return encode_command("enqueue_run", rid=ids.new_id(), run=run)


def _schedule_command(jobs: jobconfig.JobsConfiguration, body: Any, now_ms: int) -> bytes:
    """The ``create_schedule`` command POST /job-schedules proposes (as routes_schedules builds it)."""
    req = jobconfig.parse_schedule_request(body)
    cronplan.validate(req.schedule, req.time_zone)
    jobconfig.merge(jobs.job(BENCH_JOB), req.overrides)
    schedule = req.to_schedule(id=ids.new_id(), job_name=BENCH_JOB, created_at_ms=now_ms)
    return encode_command("create_schedule", rid=ids.new_id(), schedule=codec.schedule_to_dict(schedule))


def command_sizes() -> dict[str, int]:
    """Bytes of the Raft command each endpoint proposes for the bodies above (as the routes build it)."""
    jobs = jobconfig.parse_jobs_configuration(BENCH_JOBS_CONFIGURATION)
    now_ms = int(time.time() * 1000)
    return {
        "schedule": len(_schedule_command(jobs, SCHEDULE_BODY, now_ms)),
        "job": len(_enqueue_command(jobs, JOB_BODY, now_ms)),
    }


def _encode_all(items: list[Any], encode: Callable[[Any], Any]) -> bytes:
    return orjson.dumps([encode(x) for x in items])


def pure_costs(rounds: int = 7, n: int = 5000) -> list[list[object]]:
    """The leader's own work per request of each endpoint, without HTTP or Raft: CPU microseconds
    (``process_time``, so that other processes on a shared machine do not count), best of
    ``rounds``. The handler's steps (parse the body, merge, build and encode the command) as the
    route takes them; ``apply`` of ``n`` such commands into a fresh state, as every node does; and
    the snapshot encoding of one stored item, which every Raft snapshot does for every item."""
    jobs = jobconfig.parse_jobs_configuration(BENCH_JOBS_CONFIGURATION)
    now_ms = int(time.time() * 1000)
    steps: dict[str, tuple[Callable[[], bytes], Callable[[State], list[Any]], Callable[[Any], Any]]] = {
        "POST /job-schedules/{name}": (
            lambda: _schedule_command(jobs, orjson.loads(orjson.dumps(SCHEDULE_BODY)), now_ms),
            lambda st: list(st.schedules.values()),
            codec.schedule_to_dict,
        ),
        "POST /job/{name}": (
            lambda: _enqueue_command(jobs, orjson.loads(orjson.dumps(JOB_BODY)), now_ms),
            lambda st: list(st.runs.values()),
            codec.run_to_dict,
        ),
    }
    rows: list[list[object]] = []
    for endpoint, (handler, stored, encode) in steps.items():
        with collecting():
            build = min(timeit.repeat(handler, number=n, repeat=rounds, timer=time.process_time)) / n
            apply_s: list[float] = []
            for _ in range(rounds):
                payloads = [handler() for _ in range(n)]
                state = State()
                t0 = time.process_time()
                for p in payloads:
                    apply(state, p)
                apply_s.append((time.process_time() - t0) / n)

        items = stored(state)
        snapshot = functools.partial(_encode_all, items, encode)
        snap = min(timeit.repeat(snapshot, number=1, repeat=rounds, timer=time.process_time)) / len(items)
        rows.append(
            [
                endpoint,
                len(payloads[0]),
                f"{build * 1e6:.1f}",
                f"{min(apply_s) * 1e6:.1f}",
                f"{snap * 1e6:.2f}",
                len(_encode_all(items, encode)) // len(items),
            ]
        )
    return rows


# -- raw pysyncobj anchor --------------------------------------------------------------------------


@dataclass
class RawNode:
    proc: subprocess.Popen[bytes]

    def ask(self, line: str) -> Any:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        return orjson.loads(_readline(stdout, 120.0))


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("the raw pysyncobj node did not answer in time")
    return stream.readline()


@contextlib.contextmanager
def raw_cluster(n: int = 3) -> Iterator[RawNode]:
    """Start n raw pysyncobj processes; yield the leader once all agree on it; stop them by PID."""
    ports = free_ports(n)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-raw-raft-") as base:
        try:
            for i, address in enumerate(addresses):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench._raw_pysyncobj",
                            "--self",
                            address,
                            "--peers",
                            ",".join(addresses),
                            "--data-dir",
                            os.path.join(base, f"node-{i}"),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            nodes = [RawNode(p) for p in procs]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                answers = [node.ask("leader") for node in nodes]
                leaders = {a["leader"] for a in answers}
                if len(leaders) == 1 and None not in leaders:
                    (address,) = leaders
                    yield nodes[addresses.index(address)]
                    break
                time.sleep(0.1)
            else:
                raise TimeoutError("the raw pysyncobj cluster elected no leader in 30 s")
        finally:
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(OSError):
                        assert p.stdin is not None
                        p.stdin.write(b"quit\n")
                        p.stdin.flush()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)


@dataclass
class Figures:
    throughput: float
    p50: float
    p99: float
    done: int
    errors: int
    cpu: dict[str, float]


def raw_load(leader: RawNode, clients: int, seconds: float, size: int) -> Figures:
    leader.ask(f"load {clients} 1.0 {size}")  # warm-up
    r = leader.ask(f"load {clients} {seconds} {size}")
    lat: list[float] = r["lat"]
    throughput = len(lat) / r["seconds"]
    return Figures(throughput, percentile(lat, 50), percentile(lat, 99), len(lat), r["errors"], {})


# -- slimsched over HTTP -------------------------------------------------------------------------


async def http_load(
    urls: Sequence[str], path: str, body: dict[str, Any], clients: int, seconds: float, expect: int
) -> tuple[list[float], int, float]:
    """``clients`` closed loops, client i sending to ``urls[i % len(urls)]``; (latencies, errors, s)."""
    data = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int, end: float) -> None:
            nonlocal errors
            url = urls[i % len(urls)] + path
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == expect
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        # Warm-up: open the keep-alive connections, then measure.
        warm_end = time.perf_counter() + 1.0
        await asyncio.gather(*(client(i, warm_end) for i in range(clients)))
        lat.clear()
        errors = 0
        start = time.perf_counter()
        await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return lat, errors, elapsed


def slimsched_load(
    c: LocalCluster,
    leader: int,
    endpoint: str,
    spread: bool,
    clients: int,
    seconds: float,
    client: str = "lean",
) -> Figures:
    path, body, expect = (
        (f"/job-schedules/{BENCH_JOB}", SCHEDULE_BODY, 201)
        if endpoint == "schedule"
        else (f"/job/{BENCH_JOB}", JOB_BODY, 202)
    )
    urls = [n.url for n in c.nodes] if spread else [c.nodes[leader].url]
    pids = {"leader": node_pid(c, leader)}
    for n in c.nodes:
        if n.index != leader:
            pids[f"follower{len(pids)}"] = node_pid(c, n.index)
    pids["client"] = os.getpid()
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    if client == "lean":
        data = orjson.dumps(body)
        lat, errors, elapsed = asyncio.run(_lean_http.load(urls, path, data, clients, seconds, expect))
    else:
        lat, errors, elapsed = asyncio.run(http_load(urls, path, body, clients, seconds, expect))
    wall = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p) - before[k]) / wall for k, p in pids.items()}
    return Figures(len(lat) / elapsed, percentile(lat, 50), percentile(lat, 99), len(lat), errors, cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="load generator: bench/_lean_http.py (default), or aiohttp's client (as before 2026-12-02)",
    )
    parser.add_argument(
        "--endpoints", default="schedule,job", help="comma-separated subset of: schedule, job"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="measure the raw anchor right before each row (both clusters up throughout) instead of "
        "all raw rows first: on a shared machine whose load moves, each ratio compares adjacent seconds",
    )
    parser.add_argument(
        "--pure",
        action="store_true",
        help="only the leader's own CPU per request (handler, apply, snapshot encoding), no cluster",
    )
    args = parser.parse_args(argv)
    if args.pure:
        print(
            table(
                ["endpoint", "command B", "handler us", "apply us", "snapshot us/item", "snapshot B/item"],
                pure_costs(),
            )
        )
        return
    sizes = {k: v for k, v in command_sizes().items() if k in args.endpoints.split(",")}
    say(f"Raft command sizes (bytes): {sizes}")

    def measure_raw(leader_node: RawNode, endpoint: str, clients: int) -> Figures:
        f = raw_load(leader_node, clients, args.seconds, sizes[endpoint])
        say(f"  raw {endpoint} {sizes[endpoint]} B x{clients}: {f.throughput:.0f}/s p99 {ms(f.p99)} ms")
        return f

    raw: dict[tuple[str, int], Figures] = {}
    with contextlib.ExitStack() as stack:
        raw_leader = stack.enter_context(raw_cluster())
        if not args.interleave:
            say("raw pysyncobj anchor ...")
            for endpoint in sizes:
                for clients in CLIENTS:
                    raw[(endpoint, clients)] = measure_raw(raw_leader, endpoint, clients)
            stack.close()
        rows = _slimsched_rows(args, sizes, raw, lambda e, n: measure_raw(raw_leader, e, n))
    print(
        f"\nRaft command bytes: {sizes}; {args.seconds:g} s measured per row after 1 s of warm-up; "
        f"2-core machine, clients in the bench process ({args.client} client"
        f"{'; raw anchor measured right before each row' if args.interleave else ''}).\n"
    )
    print(
        table(
            [
                "endpoint",
                "sent to",
                "clients",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "raw cmd/s",
                "raw p50 ms",
                "raw p99 ms",
                "ratio",
                "leader CPU %",
                "followers CPU %",
                "client CPU %",
            ],
            rows,
        )
    )


def _slimsched_rows(
    args: argparse.Namespace,
    sizes: dict[str, int],
    raw: dict[tuple[str, int], Figures],
    measure_raw: Callable[[str, int], Figures],
) -> list[list[object]]:
    rows: list[list[object]] = []
    for endpoint in sizes:
        # A fresh cluster per endpoint, so that the state each one grows does not weigh on the other.
        with cluster() as c:
            leader = c.wait_leader()
            for spread in (False, True):
                for clients in CLIENTS:
                    r = measure_raw(endpoint, clients) if args.interleave else raw[(endpoint, clients)]
                    say(f"slimsched {endpoint} spread={spread} x{clients} ...")
                    f = slimsched_load(c, leader, endpoint, spread, clients, args.seconds, args.client)
                    others = sum(v for k, v in f.cpu.items() if k.startswith("follower"))
                    rows.append(
                        [
                            f"POST /{'job-schedules' if endpoint == 'schedule' else 'job'}/{{name}}",
                            "3 nodes" if spread else "leader",
                            clients,
                            f"{f.throughput:.0f}",
                            ms(f.p50),
                            ms(f.p99),
                            f.errors,
                            f"{r.throughput:.0f}",
                            ms(r.p50),
                            ms(r.p99),
                            f"{f.throughput / r.throughput:.2f}",
                            f"{f.cpu['leader'] * 100:.0f}",
                            f"{others * 100:.0f}",
                            f"{f.cpu['client'] * 100:.0f}",
                        ]
                    )
                    say("  " + " | ".join(str(x) for x in rows[-1]))
            sched_count = c.status(leader)
            say(f"  state after the {endpoint} rows: {sched_count}")
    return rows


if __name__ == "__main__":
    main()
