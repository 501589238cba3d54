"""How fast one KubeClient creates a burst of Jobs: the floor under firing lateness at a busy second.

At 100,000 schedules (bench_firing's mix) second 0 of every minute fires 240 ticks at once. A
tick's Job cannot be created sooner than the client and the API server can create Jobs, so this
measures that alone: 240 Job manifests (as the leader builds them), at most 64 in flight (twice
the leader's max_concurrent_dispatches), by three paths against the same server in the same run,
alternating round by round:

- ``official``: ``KubeClient.create_job_through_client``, the official client's request path in
  the client's thread pool (what ``create_job`` was before issue 18);
- ``fast``: ``KubeClient.create_job``, an orjson body over aiohttp keep-alive connections on the
  event loop (issue 18, decision 1);
- ``plain``: a plain create loop, 8 threads each POSTing ready-made JSON over one kept-alive
  ``http.client`` connection: what the server gives a client that costs almost nothing.

For each row: the time from the first create to the last one's answer, the median, creates a
second, and the CPU the bench process spent per create (and the emulator's, against it).

Run: ``.venv/bin/python -m bench.bench_kube_burst [--jobs 240] [--rounds 3]`` (the emulator), or
``--kubeconfig FILE`` against that cluster's real API server (a namespace of its own, deleted at
the end; the Jobs have ``parallelism: 0`` so that the job controller starts no pods during the
burst). The kubeconfig's current context must authenticate with a bearer token (realk8s's does):
``bash ../shared/tools/realk8s.sh up &`` then
``.venv/bin/python -m bench.bench_kube_burst --kubeconfig ~/.cache/realk8s/kubeconfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from bench._common import BENCH_JOB, BENCH_JOBS_CONFIGURATION, cpu_seconds, emulator_process, say, table
from slimsched import jobconfig, kube
from slimsched.jobmanifest import build_job_manifest, kube_job_name
from slimsched.model import JobOverrides, Run, RunStatus

IN_FLIGHT = 64  # twice the leader's max_concurrent_dispatches (32): the client is the limit


def manifests(n: int, tick: int, namespace: str = "default") -> list[dict[str, Any]]:
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
        out.append(build_job_manifest(run, namespace=namespace, raft_term=1, raft_index=i, schedule_id=None))
    return out


async def burst(
    create: Callable[[dict[str, Any]], Awaitable[bool]], batch: list[dict[str, Any]]
) -> list[float]:
    """Create every manifest, at most IN_FLIGHT at once; each one's answer time from the start."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(IN_FLIGHT)
    done: list[float] = []

    async def one(m: dict[str, Any]) -> None:
        async with sem:
            if not await create(m):
                raise RuntimeError(f"{m['metadata']['name']} already existed")
        done.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(m) for m in batch))
    return sorted(done)


# --- against a real API server ------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    token: str | None
    ssl: ssl.SSLContext | None

    @staticmethod
    def from_kubeconfig(path: str) -> Server:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        context = {c["name"]: c["context"] for c in config["contexts"]}[config["current-context"]]
        cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
        user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
        if "token" not in user or "certificate-authority-data" not in cluster:
            raise SystemExit(f"{path}: the bench needs a bearer token and certificate-authority-data")
        url = urllib.parse.urlsplit(cluster["server"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        return Server(
            url.hostname or "127.0.0.1", url.port or 443, user["token"], ssl.create_default_context(cadata=ca)
        )

    @staticmethod
    def plain_http(url: str) -> Server:
        parts = urllib.parse.urlsplit(url)
        return Server(parts.hostname or "127.0.0.1", parts.port or 80, None, None)

    def connection(self) -> http.client.HTTPConnection:
        if self.ssl is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=30)
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=30)

    def call(self, conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> int:
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status


def plain_burst(server: Server, namespace: str, batch: list[dict[str, Any]], threads: int) -> list[float]:
    """POST every manifest from ``threads`` threads, one kept-alive connection each."""
    bodies = [orjson.dumps(m) for m in batch]
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    lock = threading.Lock()
    done: list[float] = []
    failures: list[int] = []
    t0 = time.perf_counter()

    def worker() -> None:
        conn = server.connection()
        try:
            while True:
                with lock:
                    if not bodies:
                        return
                    body = bodies.pop()
                status = server.call(conn, "POST", path, body)
                with lock:
                    if status == 201:
                        done.append(time.perf_counter() - t0)
                    else:
                        failures.append(status)
        finally:
            conn.close()

    workers = [threading.Thread(target=worker, name=f"plain-create-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    if failures or len(done) != len(batch):
        raise RuntimeError(
            f"plain creates failed: statuses {failures[:5]}, {len(done)} of {len(batch)} created"
        )
    return sorted(done)


PATHS = ("official", "fast", "plain")


async def measure(
    client: kube.KubeClient,
    server: Server,
    namespace: str,
    jobs: int,
    rounds: int,
    server_pid: int | None,
    no_pods: bool,
) -> list[list[object]]:
    """The three paths, alternating round by round, on one client and one server."""
    threads = kube.CALL_THREADS
    tick = 1_800_000_000
    rows: list[list[object]] = []

    def batch_of(n: int) -> list[dict[str, Any]]:
        nonlocal tick
        tick += 60
        out = manifests(n, tick, namespace)
        if no_pods:
            for m in out:
                m["spec"]["parallelism"] = 0  # no pods: the burst alone loads the server
        return out

    async def run(path: str, batch: list[dict[str, Any]]) -> list[float]:
        if path == "official":
            return await burst(client.create_job_through_client, batch)
        if path == "fast":
            return await burst(client.create_job, batch)
        return await asyncio.to_thread(plain_burst, server, namespace, batch, threads)

    for path in PATHS:
        await run(path, batch_of(IN_FLIGHT))  # connections opened, code warm
    for r in range(rounds):
        for path in PATHS:
            batch = batch_of(jobs)
            c0 = time.process_time()
            s0 = cpu_seconds(server_pid) if server_pid is not None else 0.0
            done = await run(path, batch)
            c1 = time.process_time()
            s1 = cpu_seconds(server_pid) if server_pid is not None else 0.0
            rows.append(
                [
                    path,
                    r + 1,
                    jobs,
                    f"{done[-1] * 1000:.0f}",
                    f"{done[len(done) // 2] * 1000:.0f}",
                    f"{jobs / done[-1]:.0f}",
                    f"{(c1 - c0) * 1e6 / jobs:.0f}",
                    f"{(s1 - s0) * 1e6 / jobs:.0f}" if server_pid is not None else "-",
                ]
            )
            say(f"{path} round {r + 1}: {jobs / done[-1]:.0f} creates/s")
    return rows


async def measure_emulator(url: str, pid: int, jobs: int, rounds: int) -> list[list[object]]:
    client = kube.KubeClient.from_url(url, "default")
    try:
        return await measure(client, Server.plain_http(url), "default", jobs, rounds, pid, no_pods=False)
    finally:
        await client.close()


async def measure_real(kubeconfig: str, jobs: int, rounds: int) -> list[list[object]]:
    server = Server.from_kubeconfig(kubeconfig)
    namespace = f"bench-kube-burst-{os.getpid()}"
    conn = server.connection()
    body = orjson.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if server.call(conn, "POST", "/api/v1/namespaces", body) != 201:
        raise SystemExit(f"cannot create namespace {namespace}")
    client = kube.KubeClient.from_kubeconfig(kubeconfig, namespace)
    try:
        return await measure(client, server, namespace, jobs, rounds, None, no_pods=True)
    finally:
        await client.close()
        server.call(conn, "DELETE", f"/api/v1/namespaces/{namespace}", None)
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kubeconfig", help="measure against this cluster's API server, not the emulator")
    args = parser.parse_args(argv)
    headers = [
        "path",
        "round",
        "Jobs",
        "first to last ms",
        "p50 ms",
        "creates/s",
        "client CPU us/create",
        "emulator CPU us/create",
    ]
    if args.kubeconfig:
        rows = asyncio.run(measure_real(args.kubeconfig, args.jobs, args.rounds))
    else:
        with emulator_process() as (url, pid):
            rows = asyncio.run(measure_emulator(url, pid, args.jobs, args.rounds))
    print()
    print(table(headers, rows))


if __name__ == "__main__":
    main()
