"""The Raft port as the deployment runs it (issue 16): a password, and strangers who lack it.

The nodes are ``python -m slimsched serve`` processes configured as deploy/statefulset.yaml
configures them (pod name, replica count, headless service, password), with PYTHONOPTIMIZE=2 as
in the image. One cluster serves the whole module: each test leaves it running and healthy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slimsched.emulator import EmulatorThread
from slimsched.localcluster import free_ports
from slimsched.raftwire import HANDSHAKE_FRAME_BYTES, MAX_UNIDENTIFIED_CONNECTIONS, UNIDENTIFIED_SECONDS
from tests.helpers import KUBE_JOBS, request, wait_until
from tests.test_discovery_cluster import _free_prefix

PASSWORD = "a-test-password-that-is-long-enough"


@dataclass
class StatefulSetNodes:
    """Three nodes started through the image's entry point, each stopped by its PID."""

    base: Path
    kube_url: str
    prefix: int = field(default_factory=_free_prefix)
    http: list[int] = field(default_factory=lambda: free_ports(3))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def raft_port(self, i: int) -> int:
        return self.prefix * 10 + i

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.http[i]}"

    def env(self, i: int) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLIMSCHED_")},
            "PYTHONOPTIMIZE": "2",
            "SLIMSCHED_POD_NAME": f"slimsched-{i}",
            "SLIMSCHED_REPLICAS": "3",
            "SLIMSCHED_NAMESPACE": "test",
            "SLIMSCHED_RAFT_SERVICE": "slimsched-raft",
            "SLIMSCHED_RAFT_PORT": str(self.prefix),
            "SLIMSCHED_PEER_ADDRESS_TEMPLATE": "127.0.0.1:{port}{ordinal}",
            # The StatefulSet binds the pod IP; here each node has its own loopback port.
            "SLIMSCHED_RAFT_BIND": f"127.0.0.1:{self.raft_port(i)}",
            "SLIMSCHED_HTTP_HOST": "127.0.0.1",
            "SLIMSCHED_HTTP_PORT": str(self.http[i]),
            "SLIMSCHED_DATA_DIR": str(self.base / f"n{i}" / "raft"),
            "SLIMSCHED_BACKUP_DIR": str(self.base / f"n{i}" / "backup"),
            "SLIMSCHED_JOBS_CONFIGURATION": KUBE_JOBS,
            "SLIMSCHED_KUBE_URL": self.kube_url,
            "SLIMSCHED_RAFT_PASSWORD": PASSWORD,
        }

    def start(self) -> None:
        for i in range(3):
            with open(self.base / f"node-{i}.log", "ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "slimsched", "serve"], env=self.env(i), stdout=out, stderr=out
                    )
                )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for i in range(3):
            try:
                _, body = request(f"{self.url(i)}/status", timeout=1)
            except OSError:
                return []
            out.append(body)
        return out

    def agreed_leader(self) -> bool:
        st = self.statuses()
        return len(st) == 3 and len({s["Leader"] for s in st} - {None}) == 1

    def all_connected(self) -> bool:
        st = self.statuses()
        return len(st) == 3 and all(len(s.get("ConnectedPeers") or ()) == 2 for s in st)

    def rss_kib(self, i: int) -> int:
        with open(f"/proc/{self.procs[i].pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def write_replicates(self, on: int) -> None:
        """A schedule created on node ``on`` is listed by every node (and is deleted again)."""
        status, body = request(f"{self.url(on)}/job-schedules/fibonacci", "POST", {"Schedule": "0 0 * * *"})
        assert status == 201, body
        sid = body["Id"]
        wait_until(
            lambda: all(
                sid in [s["Id"] for s in request(f"{self.url(i)}/job-schedules/fibonacci")[1]]
                for i in range(3)
            ),
            10,
            "the schedule on every node",
        )
        status, _ = request(f"{self.url(on)}/job-schedules/fibonacci/{sid}", "DELETE")
        assert status == 204


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatefulSetNodes]:
    with EmulatorThread(pending_seconds=0.1, run_seconds=0.6) as url:
        n = StatefulSetNodes(tmp_path_factory.mktemp("secure"), url)
        n.start()
        try:
            wait_until(n.agreed_leader, 30, "one agreed leader among the password-protected nodes")
            yield n
        finally:
            n.stop()


def _frame(message: object) -> bytes:
    """A frame as pysyncobj reads it without a password: int32 length, zlib(pickle)."""
    data = zlib.compress(pickle.dumps(message), 3)
    return struct.pack("i", len(data)) + data


def _send_and_read(port: int, data: bytes, within: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` to 127.0.0.1:``port``; return what came back and whether the node closed."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as s:
        s.sendall(data)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
    return got, False


class _Touch:
    """Unpickling this creates a file: what a stranger's code would do in the node."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


# -- finding 1: the documented deployment starts and works ------------------------------------------


def test_password_protected_cluster_elects_replicates_and_runs_a_job(nodes: StatefulSetNodes) -> None:
    wait_until(nodes.all_connected, 15, "every node connected to both peers")
    leader = str(nodes.statuses()[0]["Leader"])
    follower = next(i for i in range(3) if f"127.0.0.1:{nodes.raft_port(i)}" != leader)
    nodes.write_replicates(on=follower)
    status, run = request(f"{nodes.url(follower)}/job/fibonacci", "POST", {"Args": ["10"]})
    assert status == 202, run

    def succeeded() -> bool:
        runs = request(f"{nodes.url((follower + 1) % 3)}/job/fibonacci")[1]
        return [r["Status"] for r in runs if r["Id"] == run["Id"]] == ["Succeeded"]

    wait_until(succeeded, 30, "the run to succeed in the emulator")


def test_a_node_without_password_refuses_to_start_and_names_the_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMSCHED_")}
    (http,) = free_ports(1)
    env.update(
        SLIMSCHED_HTTP_HOST="127.0.0.1", SLIMSCHED_HTTP_PORT=str(http), SLIMSCHED_DATA_DIR=str(tmp_path)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "slimsched", "serve"], env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "SLIMSCHED_RAFT_PASSWORD" in err and "SLIMSCHED_RAFT_NETWORK_PRIVATE=true" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "raft.journal").exists()


# -- finding 2: a stranger without the password -----------------------------------------------------


def test_a_strangers_pickle_never_runs_and_the_node_keeps_working(
    nodes: StatefulSetNodes, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    port = nodes.raft_port(0)
    for attempt in (
        _frame(_Touch(str(target))),  # as the first frame (the handshake's place)
        _frame(b"k" * 32) + _frame(_Touch(str(target))),  # after a would-be handshake
        _frame(_Touch(str(target))) * 3,
    ):
        got, closed = _send_and_read(port, attempt)
        assert closed and got == b"", "the node must drop a stranger's frame without answering"
        assert not target.exists(), "a stranger's pickle ran in the node"
    assert nodes.procs[0].poll() is None
    wait_until(nodes.all_connected, 15, "every node still connected to both peers")
    nodes.write_replicates(on=0)
    assert not target.exists()


@pytest.mark.parametrize(
    "message",
    [["status"], "readonly", ["add", "127.0.0.1:1"]],
    ids=["status", "read-only-replica", "add-member"],
)
def test_a_stranger_gets_nothing_from_the_raft_port(nodes: StatefulSetNodes, message: object) -> None:
    for i in range(3):
        got, closed = _send_and_read(nodes.raft_port(i), _frame(message))
        assert closed and got == b"", f"node {i} answered a stranger's {message!r}: {got[:80]!r}"
    st = nodes.statuses()
    assert all(s["Peers"] and len(s["Peers"]) == 2 for s in st), st


# -- finding 4: frame lengths are capped before authentication --------------------------------------


@pytest.mark.parametrize(
    "length", [2**31 - 1, -1, HANDSHAKE_FRAME_BYTES + 1], ids=["2GiB", "negative", "cap+1"]
)
def test_a_stranger_announcing_a_large_frame_is_dropped_at_once(nodes: StatefulSetNodes, length: int) -> None:
    got, closed = _send_and_read(nodes.raft_port(1), struct.pack("i", length), within=3.0)
    assert closed and got == b""


def test_a_strangers_64_mib_stream_costs_at_most_the_cap(nodes: StatefulSetNodes) -> None:
    wait_until(nodes.all_connected, 15, "every node connected to both peers")
    node = 2
    before = nodes.rss_kib(node)
    peak = before
    sent = 0
    chunk = os.urandom(64 * 1024)
    dropped = False
    with socket.create_connection(("127.0.0.1", nodes.raft_port(node)), timeout=5) as s:
        try:
            s.sendall(struct.pack("i", 64 * 1024 * 1024))
            while sent < 64 * 1024 * 1024:
                s.sendall(chunk)
                sent += len(chunk)
                peak = max(peak, nodes.rss_kib(node))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            dropped = True
        for _ in range(20):  # what the node read before it dropped the connection
            peak = max(peak, nodes.rss_kib(node))
            time.sleep(0.01)
    growth = (peak - before) * 1024
    print(f"64 MiB stream: {sent} bytes sent before the drop, RSS +{growth} bytes")
    assert dropped, "the node kept reading a stranger's 64 MiB frame"
    assert sent < 16 * 1024 * 1024  # what the two sockets' buffers absorb, not the frame
    assert growth < HANDSHAKE_FRAME_BYTES + 4 * 1024 * 1024
    wait_until(nodes.all_connected, 15, "every node still connected to both peers")


def test_the_largest_command_a_follower_forwards_fits_the_cap(nodes: StatefulSetNodes) -> None:
    """A schedule whose request body is near the body cap, created on a follower, is forwarded to
    the leader whole (pysyncobj's apply_command): the cap must let it through."""
    leader = str(nodes.statuses()[0]["Leader"])
    follower = next(i for i in range(3) if f"127.0.0.1:{nodes.raft_port(i)}" != leader)
    filler = base64.b64encode(os.urandom(700 * 1024)).decode()  # incompressible, ~0.93 MiB
    status, body = request(
        f"{nodes.url(follower)}/job-schedules/fibonacci", "POST", {"Schedule": "0 0 * * *", "Args": [filler]}
    )
    assert status == 201, body
    status, _ = request(f"{nodes.url(follower)}/job-schedules/fibonacci/{body['Id']}", "DELETE")
    assert status == 204


def test_a_strangers_idle_connections_are_few_and_short_lived(nodes: StatefulSetNodes) -> None:
    """Connections that never identify a peer: at most MAX_UNIDENTIFIED_CONNECTIONS are held,
    each for about UNIDENTIFIED_SECONDS (pysyncobj kept a silent one open for good)."""
    count = MAX_UNIDENTIFIED_CONNECTIONS + 36
    socks: list[tuple[socket.socket, float]] = []
    try:
        for _ in range(count):
            socks.append(
                (socket.create_connection(("127.0.0.1", nodes.raft_port(1)), timeout=5), time.monotonic())
            )
        lifetimes: list[float] = []
        with selectors.DefaultSelector() as sel:
            for s, opened in socks:
                sel.register(s, selectors.EVENT_READ, opened)
            deadline = time.monotonic() + UNIDENTIFIED_SECONDS + 10
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.1):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    with contextlib.suppress(OSError):
                        if sock.recv(4096):
                            continue
                    lifetimes.append(time.monotonic() - key.data)
                    sel.unregister(sock)
        early = sum(1 for t in lifetimes if t < 1.0)
        print(f"{count} idle connections: {early} dropped at once, the rest after {max(lifetimes):.1f} s")
        assert len(lifetimes) == count, f"{count - len(lifetimes)} idle connections still open"
        assert early >= count - MAX_UNIDENTIFIED_CONNECTIONS
        assert max(lifetimes) < UNIDENTIFIED_SECONDS + 3
    finally:
        for s, _ in socks:
            s.close()
    wait_until(nodes.all_connected, 15, "every node still connected to both peers")
