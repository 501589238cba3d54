"""CPU cost of reading a request and merging it with the job configuration (the write path's parsing).

``bench_write`` measures the whole write path on a 3-node cluster, where a change of a few
microseconds per request drowns in the shared machine's noise. This measures only what a
``POST /job`` or ``POST /job-schedules`` handler does before proposing its command: decode
nothing (the body is already JSON-decoded), ``parse_overrides`` / ``parse_schedule_request``,
``merge`` with the configuration, inside ``jsonfields.collecting()``. Bodies: the bench bodies of
``bench_write``, the .NET ``CreateJob`` record with all its defaults, and one that is adjusted
(resources over the configuration, an unknown field: four notes). The minimum of the rounds is
the figure (the least disturbed by other processes); the median shows the spread.

Run: ``.venv/bin/python -m bench.bench_parse [--rounds 11] [--calls 10000]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from bench._common import BENCH_JOB, BENCH_JOBS_CONFIGURATION, table
from slimsched import jobconfig
from slimsched.jsonfields import collecting

JOBS = jobconfig.parse_jobs_configuration(BENCH_JOBS_CONFIGURATION)
CONFIG = JOBS.job(BENCH_JOB)

TRIGGER = {"Args": ["42"]}
SCHEDULE = {"Schedule": "0 0 * * *", "Args": ["42"]}
DOTNET_DEFAULTS = {
    "Args": ["42"],
    "Image": "",
    "BackoffLimit": 1,
    "TtlSecondsAfterFinished": 60,
    "RestartPolicy": "Never",
}
ADJUSTED = {
    "Args": ["42"],
    "Resources": {"Requests": {"cpu": "9", "memory": "1Ti"}, "Limits": {"gpu": "1"}},
    "Priority": 1,
}


def trigger(body: object) -> Callable[[], int]:
    def run() -> int:
        with collecting() as notes:
            jobconfig.merge(CONFIG, jobconfig.parse_overrides(body))
        return len(notes)

    return run


def schedule(body: object) -> Callable[[], int]:
    def run() -> int:
        with collecting() as notes:
            jobconfig.merge(CONFIG, jobconfig.parse_schedule_request(body).overrides)
        return len(notes)

    return run


def measure(fn: Callable[[], int], rounds: int, calls: int) -> tuple[float, float, int]:
    notes = fn()
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return min(per_call), statistics.median(per_call), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=11, help="rounds per body (default 11)")
    parser.add_argument("--calls", type=int, default=10000, help="calls per round (default 10000)")
    args = parser.parse_args()
    cases = [
        ("POST /job", "bench body", trigger(TRIGGER)),
        ("POST /job", ".NET CreateJob defaults", trigger(DOTNET_DEFAULTS)),
        ("POST /job", "adjusted (4 notes)", trigger(ADJUSTED)),
        ("POST /job-schedules", "bench body", schedule(SCHEDULE)),
    ]
    rows = []
    for endpoint, body, fn in cases:
        best, median, notes = measure(fn, args.rounds, args.calls)
        rows.append((endpoint, body, notes, f"{best:.1f}", f"{median:.1f}"))
    print(table(("endpoint", "body", "notes", "min us/request", "median us/request"), rows))


if __name__ == "__main__":
    main()
