"""Cron firing lateness with 1,000, 10,000 and 100,000 schedules on a 3-node cluster + emulator.

Schedules are created through the API (64 concurrent clients spread over the 3 nodes) with a
mix of expressions, deterministic by index (6 fields read seconds first, as cronplan does):

- ``burst``  0.2 %  ``* * * * *``        every minute at second 0: all of them at the same second
- ``minute`` 2 %    ``S * * * * *``      every minute at second S, S spread over 0..49
- ``hourly`` 17.8 % ``S M * * * *``      once an hour
- ``daily``  80 %   ``S M H * * *``      once a day

(``--mix burst`` makes every schedule ``* * * * *``: the worst case, all ticks at one second.)
No tick falls in seconds 50..59 of a minute, so the leader's CPU share is read there, "idle
between ticks" (runs last 0.7 s in the emulator). The window is two whole minutes; then:

- tick -> Job created: per tick, from the emulator's creation log (``atUnix``, precise), for
  every tick of the window (a tick without a Job by the end of a grace period is "missing");
- tick -> FireTick committed: the leader's ``slimsched_fire_lateness_seconds`` histogram over
  the window (bucket-interpolated quantiles; "max <=" is the bucket bound);
- the same burst by a plain create loop (issue 18, decision 3): after the window, in the quiet
  seconds of a minute, as many Jobs as second 0 carried are POSTed from a whole second by
  ``bench_kube_burst``'s plain loop (8 threads, one kept-alive ``http.client`` connection each,
  ready-made JSON) to the same emulator, ``PLAIN_ROUNDS`` times; their lateness is read from the
  same creation log, from that whole second. The target: slimsched's second-0 tick -> Job p99 at
  most 50 ms above the plain loop's p99.

Run: ``.venv/bin/python -m bench.bench_firing [--sizes 1000,10000,100000] [--mix mix|burst]``

``--kubeconfig FILE`` dispatches to that cluster's real API server instead (a namespace of its
own, deleted at the end; realk8s's kubeconfig authenticates with a bearer token): there is no
creation log, so the bench watches the namespace's Jobs and times each ADDED event as it arrives
(the watch's own delay is the same for slimsched's Jobs and the plain loop's). The Jobs start
pods (the fake kubelet runs them for 1 s) for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import aiohttp
import orjson

from bench import bench_kube_burst
from bench._common import (
    BENCH_JOB,
    cluster,
    cpu_seconds,
    emulator_process,
    histogram,
    histogram_delta,
    histogram_max_bound,
    histogram_quantile,
    metrics_text,
    ms,
    node_pid,
    percentile,
    say,
    table,
)
from slimsched import cronplan
from slimsched.jobmanifest import kube_job_name

WINDOW_MINUTES = 2
GRACE_SECONDS = 30.0
QUIET_FROM = 52.0  # seconds of the minute: no tick is due in 50..59 and 0.7 s runs are over
QUIET_TO = 59.5
PLAIN_ROUNDS = 2
PLAIN_THREADS = 8


def mix_expr(i: int, rng: random.Random, mix: str) -> str:
    if mix == "burst":
        return "* * * * *"
    r = i % 1000
    s = rng.randrange(50)
    if r < 2:
        return "* * * * *"
    if r < 22:
        return f"{s} * * * * *"
    if r < 200:
        return f"{s} {rng.randrange(60)} * * * *"
    return f"{s} {rng.randrange(60)} {rng.randrange(24)} * * *"


async def create_schedules(
    urls: Sequence[str], exprs: Sequence[str], clients: int = 64
) -> tuple[list[tuple[str, str]], float, int]:
    """POST every expression (clients spread over ``urls``); ([(id, expr)], seconds, errors)."""
    created: list[tuple[str, str]] = []
    errors = 0
    next_index = 0
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:

        async def client(k: int) -> None:
            nonlocal errors, next_index
            url = f"{urls[k % len(urls)]}/job-schedules/{BENCH_JOB}"
            while next_index < len(exprs):
                expr = exprs[next_index]
                next_index += 1
                for _attempt in range(5):
                    try:
                        async with s.post(url, data=orjson.dumps({"Schedule": expr, "Args": ["1"]})) as r:
                            body = await r.read()
                            if r.status == 201:
                                created.append((orjson.loads(body)["Id"], expr))
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    errors += 1
                    await asyncio.sleep(0.2)

        t0 = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return created, time.monotonic() - t0, errors


def expected_ticks(schedules: Sequence[tuple[str, str]], w0: int, w1: int) -> dict[str, tuple[int, str]]:
    """Kubernetes Job name -> (tick, schedule id) for every tick in [w0, w1)."""
    out: dict[str, tuple[int, str]] = {}
    for sid, expr in schedules:
        tick = cronplan.next_fire(expr, "UTC", w0 - 1)
        while tick < w1:
            out[kube_job_name(BENCH_JOB, f"{sid}-{tick}")] = (tick, sid)
            tick = cronplan.next_fire(expr, "UTC", tick)
    return out


def creations(emulator_url: str) -> list[dict[str, object]]:
    import urllib.request

    with urllib.request.urlopen(emulator_url + "/_emulator/creations", timeout=60) as r:
        items: list[dict[str, object]] = orjson.loads(r.read())["items"]
        return items


class JobWatch:
    """Every Job ADDED to a namespace of a real API server, timed as its event arrives."""

    def __init__(self, server: bench_kube_burst.Server, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.added: dict[str, float] = {}
        self._conn = server.connection()
        self._conn.timeout = None  # a watch is quiet between bursts, for longer than a request's timeout
        self._thread = threading.Thread(target=self._run, name="bench-job-watch", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs?watch=1&timeoutSeconds=1800"
        headers = {"Authorization": f"Bearer {self.server.token}", "Accept": "application/json"}
        self._conn.request("GET", path, headers=headers)
        response = self._conn.getresponse()
        self._ready.set()
        with contextlib.suppress(OSError, ValueError, AttributeError):  # AttributeError: closed under it
            for line in response:
                event = orjson.loads(line)
                if event.get("type") == "ADDED":
                    self.added.setdefault(str(event["object"]["metadata"]["name"]), time.time())

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the Job watch did not start within 30 s")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._conn.sock is not None:
                self._conn.sock.shutdown(2)
        self._conn.close()
        self._thread.join(5)

    def creations(self) -> list[dict[str, object]]:
        return [{"name": n, "atUnix": t, "outcome": "created"} for n, t in list(self.added.items())]


@contextlib.contextmanager
def real_namespace(kubeconfig: str) -> Iterator[tuple[bench_kube_burst.Server, str, JobWatch]]:
    server = bench_kube_burst.Server.from_kubeconfig(kubeconfig)
    namespace = f"bench-firing-{os.getpid()}"
    conn = server.connection()
    body = orjson.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if server.call(conn, "POST", "/api/v1/namespaces", body) != 201:
        raise SystemExit(f"cannot create namespace {namespace}")
    # The token controller's default ServiceAccount must exist before the Jobs' pods can.
    deadline = time.monotonic() + 60
    while server.call(conn, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default", None) != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"no default ServiceAccount in {namespace} within 60 s")
        time.sleep(0.2)
    watch = JobWatch(server, namespace)
    watch.start()
    try:
        yield server, namespace, watch
    finally:
        watch.close()
        server.call(conn, "DELETE", f"/api/v1/namespaces/{namespace}", None)
        conn.close()


def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def plain_loop_lateness(
    server: bench_kube_burst.Server,
    namespace: str,
    burst: int,
    creations_now: Callable[[], list[dict[str, object]]],
) -> list[float]:
    """``burst`` Jobs by a plain create loop started at whole seconds in a quiet part of a minute.

    Each round starts exactly at a whole second (as a tick would be due) and its lateness is
    read like slimsched's: the Job's creation time (the emulator's log, or the watch) minus that second.
    """
    lateness: list[float] = []
    base_tick = 1_900_000_000
    start = math.floor(time.time() / 60) * 60 + QUIET_FROM + 1
    if start < time.time() + 1:
        start += 60
    for r in range(PLAIN_ROUNDS):
        batch = bench_kube_burst.manifests(burst, base_tick + 60 * r, namespace)
        names = {str(m["metadata"]["name"]) for m in batch}
        at = start + 2 * r
        sleep_until(at)
        bench_kube_burst.plain_burst(server, namespace, batch, PLAIN_THREADS)
        time.sleep(0.5)  # the watch's last events
        lateness += [
            float(x["atUnix"]) - at  # type: ignore[arg-type]
            for x in creations_now()
            if x["outcome"] == "created" and x["name"] in names
        ]
    return lateness


# (node environment, server, namespace, its creations so far, the emulator's PID or None)
ApiServer = tuple[
    dict[str, str], bench_kube_burst.Server, str, Callable[[], list[dict[str, object]]], int | None
]


@contextlib.contextmanager
def api_server(
    kubeconfig: str | None,
) -> Iterator[
    tuple[dict[str, str], bench_kube_burst.Server, str, Callable[[], list[dict[str, object]]], int | None]
]:
    """The emulator (kubeconfig None) or a namespace of a real API server, as the nodes reach it:
    (node environment, server, namespace, its creations so far, the emulator's PID or None)."""
    if kubeconfig is None:
        with emulator_process() as (emu_url, emu_pid):
            env = {"SLIMSCHED_KUBE_MODE": "url", "SLIMSCHED_KUBE_URL": emu_url}
            yield (
                env,
                bench_kube_burst.Server.plain_http(emu_url),
                "default",
                lambda: creations(emu_url),
                emu_pid,
            )
        return
    with real_namespace(kubeconfig) as (server, namespace, watch):
        env = {
            "SLIMSCHED_KUBE_MODE": "kubeconfig",
            "KUBECONFIG": kubeconfig,
            "SLIMSCHED_NAMESPACE": namespace,
        }
        yield env, server, namespace, watch.creations, None


def run_size(
    n: int, mix: str, seed: int, kubeconfig: str | None = None, profile: str | None = None
) -> list[object]:
    rng = random.Random(seed)
    exprs = [mix_expr(i, rng, mix) for i in range(n)]
    with api_server(kubeconfig) as (env, server, namespace, creations_now, emu_pid), cluster(env=env) as c:
        term0 = (c.status(c.wait_leader()) or {}).get("Term")
        say(f"[{n}] creating {n} schedules ({mix}) ...")
        created, seconds, errors = asyncio.run(create_schedules([x.url for x in c.nodes], exprs))
        leader = c.wait_leader()
        leader_pid = node_pid(c, leader)
        term1 = (c.status(leader) or {}).get("Term")
        say(
            f"[{n}] created {len(created)} in {seconds:.1f} s ({len(created) / seconds:.0f}/s), {errors} "
            f"retries; Raft term {term0} -> {term1} while creating"
        )
        # The window: the next whole minute at least 20 s away, for WINDOW_MINUTES minutes.
        w0 = (int(time.time()) // 60 + 1) * 60
        if w0 - time.time() < 20 + n / 5000:  # time to list the window's ticks first
            w0 += 60
        w1 = w0 + 60 * WINDOW_MINUTES
        expected = expected_ticks(created, w0, w1)
        say(f"[{n}] window {w0}..{w1}: {len(expected)} ticks expected; waiting for it ...")
        sleep_until(w0 - 1.5)
        spy = None
        if profile is not None:  # py-spy over the leader for the window's first second-0 burst
            spy_bin = os.path.join(os.path.dirname(sys.executable), "py-spy")  # pip install py-spy
            command = [spy_bin, "record", "-p", str(leader_pid), "-d", "3", "-r", "250", "-f", "raw"]
            spy = subprocess.Popen([*command, "--nonblocking", "-o", f"{profile}.{n}.txt"])
        sleep_until(w0 - 0.5)
        m_before = histogram(metrics_text(c.nodes[leader].url), "slimsched_fire_lateness_seconds")
        d_before = histogram(metrics_text(c.nodes[leader].url), "slimsched_dispatch_lateness_seconds")
        cpu0, emu0 = cpu_seconds(leader_pid), cpu_seconds(emu_pid) if emu_pid else 0.0
        idle_cpu, idle_wall = 0.0, 0.0
        for minute in range(WINDOW_MINUTES):
            sleep_until(w0 + 60 * minute + QUIET_FROM)
            a, ta = cpu_seconds(leader_pid), time.monotonic()
            sleep_until(w0 + 60 * minute + QUIET_TO)
            idle_cpu += cpu_seconds(leader_pid) - a
            idle_wall += time.monotonic() - ta
        window_cpu = (cpu_seconds(leader_pid) - cpu0) / (time.time() - w0 + 0.5)
        emu_cpu = ((cpu_seconds(emu_pid) - emu0) if emu_pid else math.nan) / (time.time() - w0 + 0.5)
        m_after = histogram(metrics_text(c.nodes[leader].url), "slimsched_fire_lateness_seconds")
        d_after = histogram(metrics_text(c.nodes[leader].url), "slimsched_dispatch_lateness_seconds")
        # Jobs of the window: wait for the stragglers, within a grace period.
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            made = {
                str(x["name"]): float(x["atUnix"])  # type: ignore[arg-type]
                for x in creations_now()
                if x["outcome"] == "created" and x["name"] in expected
            }
            if len(made) == len(expected) or time.monotonic() > deadline:
                break
            time.sleep(2)
        term2 = (c.status(leader) or {}).get("Term")
        if spy is not None:
            spy.wait(30)
        burst = sum(1 for name in made if int(expected[name][0]) % 60 == 0) // WINDOW_MINUTES
        say(f"[{n}] the plain create loop: {burst} Jobs from a whole second, {PLAIN_ROUNDS} rounds ...")
        plain = plain_loop_lateness(server, namespace, burst, creations_now) if burst else []
    lat = [at - expected[name][0] for name, at in made.items()]
    # Second 0 of a minute carries the synchronized burst (every "* * * * *" at once): the
    # spread load is read apart from it.
    spread = [at - expected[name][0] for name, at in made.items() if int(expected[name][0]) % 60 != 0]
    second0 = [at - expected[name][0] for name, at in made.items() if int(expected[name][0]) % 60 == 0]
    s0_p99, plain_p99 = percentile(second0, 99), percentile(plain, 99)
    missing = len(expected) - len(made)
    fire = histogram_delta(m_after, m_before)
    disp = histogram_delta(d_after, d_before)
    p99 = ms(histogram_quantile(disp, 0.99))
    say(f"[{n}] leader term {term1} -> {term2}; dispatch histogram p99 {p99} ms")
    return [
        n,
        mix,
        f"{len(created) / seconds:.0f}",
        len(expected),
        missing,
        ms(percentile(lat, 50)),
        ms(percentile(lat, 99)),
        ms(max(lat) if lat else math.nan) + (" (+missing)" if missing else ""),
        f"{len(lat) - len(spread)}",
        ms(s0_p99),
        ms(plain_p99),
        ms(s0_p99 - plain_p99),
        ms(percentile(spread, 50)),
        ms(percentile(spread, 99)),
        ms(histogram_quantile(fire, 0.5)),
        ms(histogram_quantile(fire, 0.99)),
        "<= " + ms(histogram_max_bound(fire)),
        f"{idle_cpu / idle_wall * 100:.1f}" if idle_wall else "-",
        f"{window_cpu * 100:.0f}",
        f"{emu_cpu * 100:.0f}",
        f"{term1 - term0}" if isinstance(term0, int) and isinstance(term1, int) else "?",
        "yes" if term1 == term2 else "NO",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--mix", choices=("mix", "burst"), default="mix")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kubeconfig", help="dispatch to this cluster's API server, not the emulator")
    parser.add_argument("--profile", help="py-spy the leader over the first second 0 into PROFILE.<size>.txt")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = [run_size(n, args.mix, args.seed, args.kubeconfig, args.profile) for n in sizes]
    print(
        f"\nWindow: {WINDOW_MINUTES} whole minutes per size; idle CPU read in seconds "
        f"{QUIET_FROM:g}-{QUIET_TO:g} of each minute (no tick due); emulator runs last 0.7 s.\n"
    )
    print(
        table(
            [
                "schedules",
                "mix",
                "created/s",
                "ticks in window",
                "missing",
                "tick->Job p50 ms",
                "tick->Job p99 ms",
                "tick->Job max ms",
                "ticks at second 0",
                "tick->Job p99 ms, second 0",
                "plain loop p99 ms, same burst",
                "second 0 minus plain, ms",
                "tick->Job p50 ms, other seconds",
                "tick->Job p99 ms, other seconds",
                "tick->FireTick p50 ms",
                "tick->FireTick p99 ms",
                "tick->FireTick max ms",
                "leader CPU % idle between ticks",
                "leader CPU % whole window",
                "emulator CPU % whole window",
                "elections while creating",
                "same leader in window",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
