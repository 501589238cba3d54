"""One node of a raw pysyncobj cluster, the anchor of bench_write (not part of slimsched).

Same ``SyncObjConf`` as ``slimsched/raft.py`` (journal + full dump, ``appendEntriesUseBatch=False``,
the same timeouts and compaction thresholds from ``RaftTimings``), one replicated method taking a
``bytes`` payload that only counts it. Driven over stdin/stdout, one JSON line per command:

- ``leader`` -> ``{"is_leader": bool, "leader": address or null}``
- ``load C SECONDS SIZE`` -> C closed-loop clients in this process commit SIZE-byte payloads for
  SECONDS; answers ``{"done": n, "errors": n, "seconds": s, "lat": [seconds, ...]}``
- ``quit``

Run: ``python -m bench._raw_pysyncobj --self 127.0.0.1:P --peers A,B,C --data-dir DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

import orjson
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from slimsched.raft import tuned_conf
from slimsched.settings import RaftTimings


class Counter(SyncObj):  # type: ignore[misc]
    def __init__(self, self_address: str, peers: list[str], conf: SyncObjConf) -> None:
        self.count = 0
        super().__init__(self_address, peers, conf)

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, payload: bytes) -> int:
        self.count += 1
        return len(payload)


def make_conf(data_dir: str) -> SyncObjConf:
    return tuned_conf(
        RaftTimings(),
        journalFile=os.path.join(data_dir, "raft.journal"),
        fullDumpFile=os.path.join(data_dir, "raft.dump"),
        # slimsched's nodes always run with a Raft password (issue 16): the anchor encrypts too.
        password="bench-anchor-password",
    )


def run_load(node: Counter, clients: int, seconds: float, size: int) -> dict[str, Any]:
    """``clients`` closed loops: each submits, waits for its callback, submits again."""
    lock = threading.Lock()
    lat: list[float] = []
    errors = [0]
    active = [clients]
    finished = threading.Event()
    serial = [0]
    pad = b"x" * max(0, size - 16)
    end = time.perf_counter() + seconds

    def submit() -> None:
        with lock:
            serial[0] += 1
            n = serial[0]
        t0 = time.perf_counter()

        def done(result: Any, err: int) -> None:
            t1 = time.perf_counter()
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    lat.append(t1 - t0)
                else:
                    errors[0] += 1
            if t1 < end:
                submit()
            else:
                with lock:
                    active[0] -= 1
                    if active[0] == 0:
                        finished.set()

        node.apply(b"%016d" % n + pad, callback=done)

    start = time.perf_counter()
    for _ in range(clients):
        submit()
    finished.wait(seconds + 30)
    elapsed = time.perf_counter() - start
    with lock:
        return {"done": len(lat), "errors": errors[0], "seconds": elapsed, "lat": list(lat)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--self", dest="self_address", required=True)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    peers = [p for p in args.peers.split(",") if p and p != args.self_address]
    node = Counter(args.self_address, peers, make_conf(args.data_dir))
    out = sys.stdout.buffer
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "leader":
            leader = node._getLeader()
            reply: dict[str, Any] = {
                "is_leader": bool(node._isLeader()),
                "leader": leader.address if leader is not None else None,
            }
        elif words[0] == "load":
            reply = run_load(node, int(words[1]), float(words[2]), int(words[3]))
        else:
            reply = {"error": f"unknown command {words[0]!r}"}
        out.write(orjson.dumps(reply) + b"\n")
        out.flush()
    node.destroy_synchronous()


if __name__ == "__main__":
    main()
