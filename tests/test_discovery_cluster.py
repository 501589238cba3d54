"""Three nodes given only pod names and the replica count form one cluster, via the StatefulSet code."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.localcluster import free_ports
from tests.helpers import request, wait_until


def _free_prefix() -> int:
    """A port prefix P such that P0, P1 and P2 (ports 10*P .. 10*P+2) are free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        prefix = rng.randrange(2000, 6000)
        try:
            socks = []
            for i in range(3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", prefix * 10 + i))
            return prefix
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port prefix found")


def test_pods_discover_each_other_from_ordinal_and_replica_count(tmp_path: Path) -> None:
    prefix = _free_prefix()
    http = free_ports(3)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            env = {
                **os.environ,
                "SLIMSCHED_POD_NAME": f"slimsched-{i}",
                "SLIMSCHED_REPLICAS": "3",
                "SLIMSCHED_NAMESPACE": "test",
                "SLIMSCHED_RAFT_PORT": str(prefix),
                "SLIMSCHED_PEER_ADDRESS_TEMPLATE": "127.0.0.1:{port}{ordinal}",
                "SLIMSCHED_HTTP_HOST": "127.0.0.1",
                "SLIMSCHED_HTTP_PORT": str(http[i]),
                "SLIMSCHED_DATA_DIR": str(tmp_path / f"n{i}"),
                "SLIMSCHED_JOBS_CONFIGURATION": DEMO_JOBS_CONFIGURATION,
                "SLIMSCHED_KUBE_MODE": "none",
                "SLIMSCHED_RAFT_PASSWORD": "discovery-test-password",  # as the StatefulSet sets it
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "slimsched", "serve"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        def statuses() -> list[dict[str, object]]:
            out = []
            for port in http:
                try:
                    _, body = request(f"http://127.0.0.1:{port}/status", timeout=1)
                except OSError:
                    return []
                out.append(body)
            return out

        wait_until(lambda: len({s["Leader"] for s in statuses()} - {None}) == 1, 20, "one agreed leader")
        nodes = sorted(str(s["Node"]) for s in statuses())
        assert nodes == [f"127.0.0.1:{prefix}{i}" for i in range(3)]
        status, body = request(
            f"http://127.0.0.1:{http[2]}/job-schedules/fibonacci", "POST", {"Schedule": "0 0 * * *"}
        )
        assert status == 201, body
        wait_until(
            lambda: all(
                [s["Id"] for s in request(f"http://127.0.0.1:{p}/job-schedules/fibonacci")[1]] == [body["Id"]]
                for p in http
            ),
            5,
            "the write on every node",
        )
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
