"""Slow, numerous and malformed HTTP clients against real nodes (issue 16, findings 3 and 7).

The nodes run with an open-files limit of NOFILE (soft and hard, set before exec), a 2 s header
and body timeout, and a flood of FLOOD incomplete requests (127.0.0.1) against node 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.localcluster import LocalCluster, free_ports
from tests.helpers import request, wait_until

NOFILE = 300
FLOOD = 400
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.create(
        3,
        str(tmp_path_factory.mktemp("slow")),
        jobs_configuration=DEMO_JOBS_CONFIGURATION,
        env={
            "SLIMSCHED_KUBE_MODE": "none",
            "SLIMSCHED_HTTP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
            "SLIMSCHED_HTTP_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
        },
    )
    c.rlimit_nofile = NOFILE
    c.start()
    try:
        c.wait_ready(timeout=30)
        c.wait_leader(timeout=30)
        yield c
    finally:
        c.stop()


def _connected(c: LocalCluster, i: int) -> bool:
    st = c.status(i)
    return st is not None and len(st.get("ConnectedPeers") or ()) == len(c.nodes) - 1


def _metric(c: LocalCluster, i: int, name: str) -> float:
    with urllib.request.urlopen(c.nodes[i].url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _raw(port: int, data: bytes, within: float = 5.0) -> bytes:
    """Send ``data``, return everything the node sends until it closes (bounded)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as s:
        s.sendall(data)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
    return got


def _json_error(raw: bytes) -> tuple[int, str, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    ctype = next(
        (v.strip() for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-type"), ""
    )
    return status, ctype, orjson.loads(body)


def _write_replicates(c: LocalCluster, on: int, to: int) -> None:
    status, body = request(c.nodes[on].url + "/job-schedules/fibonacci", "POST", {"Schedule": "0 0 * * *"})
    assert status == 201, body
    wait_until(
        lambda: body["Id"] in [s["Id"] for s in request(c.nodes[to].url + "/job-schedules/fibonacci")[1]],
        10,
        f"the schedule on node {to}",
    )


# -- finding 3: slow clients do not cut a node out of Raft ------------------------------------------


def test_a_flood_of_incomplete_requests_is_capped_timed_out_and_leaves_raft_alone(
    cluster: LocalCluster,
) -> None:
    c = cluster
    wait_until(lambda: all(_connected(c, i) for i in range(3)), 15, "every node connected to its peers")
    port = c.nodes[0].http_port
    flood: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /job/fibonacci HTTP/1.1\r\nHost: x\r\nContent-Length: 10")  # never ends
            flood.append(s)
        flooded = time.monotonic()
        # Past the cap, connections are answered 503 and closed at once; the others are held.
        refused = 0
        for s in flood:
            s.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                first = s.recv(4096)
                if first.startswith(b"HTTP/1.1 503"):
                    refused += 1
        assert refused >= FLOOD - NOFILE, f"only {refused} of {FLOOD} refused at a limit of {NOFILE} files"
        assert _metric(c, 0, "slimsched_http_connections_refused_total") >= refused

        # Raft still accepts on node 0 (a stranger's frame is read and dropped), and it stays in.
        got = _raw(int(c.nodes[0].raft_address.rsplit(":", 1)[1]), b"\x10\0\0\0junk-junk-junk-")
        assert got == b""
        assert _metric(c, 0, "slimsched_raft_listener_up") == 1
        _write_replicates(c, on=1, to=0)
        _write_replicates(c, on=0, to=2)
        assert request(c.nodes[0].url + "/health", timeout=5)[0] == 200

        # The held connections are closed once their request is overdue.
        def all_closed() -> bool:
            for s in flood:
                if s.fileno() == -1:
                    continue
                s.settimeout(0.001)
                try:
                    if s.recv(4096) == b"":
                        s.close()
                except TimeoutError:
                    return False
                except OSError:
                    s.close()
            return True

        wait_until(all_closed, TIMEOUT + 10, "every incomplete request closed")
        print(
            f"{FLOOD} incomplete requests opened in {flooded - started:.1f} s: {refused} refused at once, "
            f"all closed {time.monotonic() - flooded:.1f} s after the last was opened"
        )
    finally:
        for s in flood:
            s.close()
    wait_until(lambda: all(_connected(c, i) for i in range(3)), 15, "every node still connected")


def test_incomplete_requests_are_closed_after_the_header_timeout(cluster: LocalCluster) -> None:
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", cluster.nodes[1].http_port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
            socks.append(s)
        opened = time.monotonic()
        closed_at = []
        for s in socks:
            s.settimeout(max(0.01, opened + TIMEOUT + 10 - time.monotonic()))
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while s.recv(4096):
                    pass
                closed_at.append(time.monotonic() - opened)
        print(f"20 incomplete requests closed after {min(closed_at):.1f}-{max(closed_at):.1f} s")
        assert len(closed_at) == 20 and max(closed_at) < TIMEOUT + 3, closed_at
    finally:
        for s in socks:
            s.close()


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closed(cluster: LocalCluster) -> None:
    started = time.monotonic()
    raw = _raw(
        cluster.nodes[1].http_port,
        b"POST /job/fibonacci HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",
        within=TIMEOUT + 10,
    )
    elapsed = time.monotonic() - started
    status, ctype, body = _json_error(raw)
    assert (status, ctype, body["Error"]) == (408, "application/json", "body_timeout"), raw
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + 5


def _listening_fd(pid: int, port: int) -> int:
    """The descriptor number, in process ``pid``, of its socket listening on 127.0.0.1:``port``."""
    inode = None
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inode = fields[9]
    assert inode is not None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return int(fd)
    raise AssertionError("listening socket not found")


def test_a_lost_raft_listener_fails_health_ready_and_metrics(tmp_path: Path) -> None:
    """The listener is broken from outside (pidfd_getfd, then shutdown): the node must say so."""
    c = LocalCluster.create(
        3, str(tmp_path), jobs_configuration=DEMO_JOBS_CONFIGURATION, env={"SLIMSCHED_KUBE_MODE": "none"}
    )
    c.start()
    try:
        c.wait_ready(timeout=30)
        proc = c.nodes[2].proc
        assert proc is not None
        fd = _listening_fd(proc.pid, int(c.nodes[2].raft_address.rsplit(":", 1)[1]))
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(proc.pid)
        try:
            local = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
            if local < 0:
                pytest.skip(f"pidfd_getfd is not permitted here (errno {ctypes.get_errno()})")
            with socket.socket(fileno=local) as listener:
                listener.shutdown(socket.SHUT_RDWR)
        finally:
            os.close(pidfd)

        def health_fails() -> bool:
            try:
                return request(c.nodes[2].url + "/health", timeout=2)[0] == 503
            except (OSError, urllib.error.URLError):
                return False

        wait_until(health_fails, 10, "/health to fail")
        status, body = request(c.nodes[2].url + "/health", timeout=2)
        assert body["Error"] == "raft_listener_lost", body
        status, body = request(c.nodes[2].url + "/ready", timeout=2)
        assert (status, body["Error"]) == (503, "raft_listener_lost"), body
        assert _metric(c, 2, "slimsched_raft_listener_up") == 0
        assert request(c.nodes[0].url + "/health", timeout=2)[0] == 200
    finally:
        c.stop()


# -- finding 7: low-level HTTP errors answer with the JSON error body -------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            431,
            "too_many_headers",
        ),
        ("GET /job/f\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, "invalid_path"),
        (b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    ],
    ids=["request-line", "header", "header-count", "utf8-path", "raw-bytes-path", "garbage"],
)
def test_low_level_http_errors_answer_json(cluster: LocalCluster, raw: bytes, status: int, code: str) -> None:
    got = _raw(cluster.nodes[2].http_port, raw)
    assert _json_error(got)[:2] == (status, "application/json"), got[:300]
    body = _json_error(got)[2]
    assert body["Error"] == code and isinstance(body["Message"], str) and body["Message"], body


def test_the_entry_point_raises_the_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    (http,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMSCHED_")}
    env.update(
        SLIMSCHED_HTTP_HOST="127.0.0.1",
        SLIMSCHED_HTTP_PORT=str(http),
        SLIMSCHED_DATA_DIR=str(tmp_path),
        SLIMSCHED_KUBE_MODE="none",
        SLIMSCHED_RAFT_PASSWORD="limits-test-password",
        SLIMSCHED_RAFT_ADDRESS=f"127.0.0.1:{free_ports(1)[0]}",
    )
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimsched", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{http}"), 30, "the node to serve")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(li for li in limits.splitlines() if li.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _healthy(url: str) -> bool:
    try:
        return request(url + "/health", timeout=1)[0] == 200
    except (OSError, urllib.error.URLError):
        return False
