"""Shared helpers of the benchmarks: percentiles, tables, clusters of processes, CPU and RSS.

Every process started here is stopped by its PID; every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

import orjson

from slimsched.jsonhttp import request_json
from slimsched.localcluster import LocalCluster, free_ports

BENCH_JOB = "bench"
BENCH_IMAGE = "example.org/bench:1"

# A Public job with room for every run at once, so NumberParallelJob never queues a cron run.
BENCH_JOBS_CONFIGURATION = orjson.dumps(
    {
        "Configurations": {
            BENCH_JOB: {
                "Image": BENCH_IMAGE,
                "ImagesWhitelist": ["example.org/bench:*"],
                "Resources": {
                    "Requests": {"cpu": "100m", "memory": "64Mi"},
                    "Limits": {"cpu": "100m", "memory": "64Mi"},
                },
                "BackoffLimit": 0,
                "Visibility": "Public",
                "NumberParallelJob": 1_000_000,
                "TtlSecondsAfterFinished": 60,
                "RestartPolicy": "Never",
            }
        },
        "Schedules": {},
    }
).decode()


# -- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, columns padded for reading in a terminal too."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_share(pid: int, seconds: float) -> float:
    """Fraction of one core the process used over ``seconds`` of wall time."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


@contextlib.contextmanager
def emulator_process(pending_seconds: float = 0.2, run_seconds: float = 0.5) -> Iterator[tuple[str, int]]:
    """``python -m slimsched.emulator`` on a free port: yields (url, pid); stopped by PID."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimsched.emulator",
            "--port",
            str(port),
            "--pending-seconds",
            str(pending_seconds),
            "--run-seconds",
            str(run_seconds),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/_emulator/creations", timeout=1) as r:
                    r.read()
                break
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        else:
            raise TimeoutError("the emulator did not start within 20 s")
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextlib.contextmanager
def cluster(
    n: int = 3,
    *,
    kube_url: str | None = None,
    env: Mapping[str, str] | None = None,
    jobs_configuration: str = BENCH_JOBS_CONFIGURATION,
    python: str | None = None,
) -> Iterator[LocalCluster]:
    """A LocalCluster of ``slimsched serve`` processes (run by ``python``) in a temporary directory, ready."""
    full_env = {"SLIMSCHED_LOG_LEVEL": "WARNING", **(env or {})}
    if kube_url is None:
        full_env.setdefault("SLIMSCHED_KUBE_MODE", "none")
    else:
        full_env.update(SLIMSCHED_KUBE_MODE="url", SLIMSCHED_KUBE_URL=kube_url)
    with tempfile.TemporaryDirectory(prefix="slimsched-bench-") as base:
        c = LocalCluster.create(n, base, jobs_configuration=jobs_configuration, env=full_env, python=python)
        c.start()
        try:
            c.wait_ready(timeout=60)
            c.wait_leader(timeout=30)
            yield c
        finally:
            c.stop()


def node_pid(c: LocalCluster, index: int) -> int:
    proc = c.nodes[index].proc
    assert proc is not None
    return proc.pid


http_json = request_json


def metrics_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as resp:
        text: str = resp.read().decode()
        return text


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """The cumulative buckets ``[(le, count), ...]`` of a Prometheus histogram, ``+Inf`` last."""
    out: list[tuple[float, float]] = []
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix) :].split("} ")
            le = labels.split('le="')[1].split('"')[0]
            out.append((math.inf if le == "+Inf" else float(le), float(value)))
    return sorted(out)


def histogram_delta(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile: linear inside the bucket that holds it; NaN when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def histogram_max_bound(buckets: list[tuple[float, float]]) -> float:
    """The upper bound of the highest non-empty bucket (the histogram's "max <= x")."""
    prev, top = 0.0, math.nan
    for le, count in buckets:
        if count > prev:
            top = le
        prev = count
    return top
