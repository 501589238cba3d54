"""``slimsched local``, the README's first command: a cluster that dispatches, and stops whole."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

from slimsched.localcluster import free_ports
from tests.helpers import request, wait_until


def _consecutive_free_ports(count: int) -> int:
    """A base port such that base .. base + count - 1 are all free on 127.0.0.1 right now."""
    for _ in range(50):
        (base,) = free_ports(1)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports in 50 tries")


def _ready(url: str) -> bool:
    try:
        return request(f"{url}/ready", timeout=2)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(p) for p in f.read().split()]


def _is_node(pid: int) -> bool:
    return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def _listeners(base: int, count: int) -> set[tuple[str, int]]:
    """(IPv4 address, port) of the listening sockets on ports base .. base + count - 1."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port = local.split(":")
        if state == "0A" and base <= int(port, 16) < base + count:
            found.add((socket.inet_ntoa(bytes.fromhex(addr)[::-1]), int(port, 16)))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child of the local process that exited but was not reaped yet is gone for our purpose
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_local_cluster_dispatches_runs_with_optimized_nodes_and_stops_on_sigterm(tmp_path: Path) -> None:
    http, raft = _consecutive_free_ports(3), _consecutive_free_ports(3)
    urls = [f"http://127.0.0.1:{http + i}" for i in range(3)]
    with open(tmp_path / "local.log", "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "slimsched", "local", "--nodes", "3"),
                *("--http-port", str(http), "--raft-port", str(raft), "--data-dir", str(tmp_path / "data")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    children: list[int] = []
    try:
        wait_until(lambda: all(_ready(u) for u in urls), 60, "three ready nodes")
        children = _children(proc.pid)
        node_cmdlines = [
            Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
            for c in children
            if b"serve" in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        assert len(node_cmdlines) == 3
        assert all(cmd[1] == b"-OO" for cmd in node_cmdlines), node_cmdlines  # as the image runs them
        # Raft on loopback only, with one generated password shared by the cluster's nodes.
        assert _listeners(raft, 3) == {("127.0.0.1", raft + i) for i in range(3)}
        passwords = {_environ(c).get("SLIMSCHED_RAFT_PASSWORD") for c in children if _is_node(c)}
        assert len(passwords) == 1 and len(passwords.pop() or "") >= 32

        status, body = request(f"{urls[1]}/job/fibonacci", "POST", {"Args": ["10"]})
        assert status == 202, body

        def succeeded() -> bool:
            runs = request(f"{urls[2]}/job/fibonacci")[1]
            return [r["Status"] for r in runs if r["Id"] == body["Id"]] == ["Succeeded"]

        wait_until(succeeded, 30, "the run to succeed in the embedded emulator")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # Seen before anything is killed here: what outlived ``slimsched local`` on its own.
        survivors = [c for c in children if _alive(c)]
        for c in survivors:
            os.kill(c, signal.SIGKILL)
    assert proc.returncode == 0, (tmp_path / "local.log").read_text(errors="replace")
    assert len(children) == 4  # three nodes and the emulator
    assert not survivors, "a process of the local cluster outlived it"
