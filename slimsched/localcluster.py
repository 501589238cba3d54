"""A cluster of ``slimsched serve`` processes on 127.0.0.1, for local mode, tests and chaos runs.

Each node is its own process, so one can be SIGKILLed, SIGSTOPped or restarted (with or without
its data directory) while the others go on. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

# The image runs nodes with PYTHONOPTIMIZE=2 (deploy/Dockerfile): without the docstrings of every
# imported module an idle node holds about 2.5 MiB less. Local nodes run the same way.
NODE_PYTHON_FLAGS = ("-OO",)


def serve_command(
    python: str,
    raft_address: str,
    peers: Sequence[str],
    http_port: int,
    data_dir: str,
    raft_bind: str | None = None,
) -> list[str]:
    """The command line of one ``slimsched serve`` node on 127.0.0.1, run as production runs it.

    Raft listens on ``raft_bind`` (default: ``raft_address``, a loopback address), never on every
    interface: pysyncobj would otherwise bind 0.0.0.0 and expose the node to the network.
    """
    return [
        python,
        *NODE_PYTHON_FLAGS,
        "-m",
        "slimsched",
        "serve",
        "--raft-address",
        raft_address,
        "--raft-bind",
        raft_bind or raft_address,
        "--peers",
        ",".join(peers),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--data-dir",
        data_dir,
    ]


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (and released), distinct."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _nofile_setter(limit: int) -> Callable[[], None]:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return set_limit


@dataclass
class LocalNode:
    index: int
    raft_address: str
    http_port: int
    data_dir: str
    backup_dir: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Where the node really binds its Raft port (SLIMSCHED_RAFT_BIND) when peers reach it through
    # a proxy at ``raft_address`` (the chaos harness's partition proxy); None: bind raft_address.
    raft_bind: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    base_dir: str
    nodes: list[LocalNode]
    jobs_configuration: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: str | None = None
    python: str = sys.executable
    # The cluster's Raft password (unless ``env`` sets SLIMSCHED_RAFT_PASSWORD): nodes run as in
    # production, where a node without one refuses to start.
    raft_password: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Tests: the open-files limit (soft and hard) each node starts with.
    rlimit_nofile: int | None = None

    @staticmethod
    def create(
        n: int,
        base_dir: str,
        *,
        http_ports: list[int] | None = None,
        raft_ports: list[int] | None = None,
        jobs_configuration: str | None = None,
        env: Mapping[str, str] | None = None,
        backups: bool = False,
        raft_bind_ports: list[int] | None = None,
        python: str | None = None,
    ) -> LocalCluster:
        ports = free_ports(2 * n) if http_ports is None or raft_ports is None else []
        http = http_ports or ports[:n]
        raft = raft_ports or ports[n:]
        nodes = [
            LocalNode(
                index=i,
                raft_address=f"127.0.0.1:{raft[i]}",
                http_port=http[i],
                data_dir=os.path.join(base_dir, f"node-{i}", "raft"),
                backup_dir=os.path.join(base_dir, f"node-{i}", "backup") if backups else None,
                raft_bind=f"127.0.0.1:{raft_bind_ports[i]}" if raft_bind_ports else None,
            )
            for i in range(n)
        ]
        return LocalCluster(
            base_dir,
            nodes,
            jobs_configuration,
            dict(env or {}),
            os.path.join(base_dir, "logs"),
            python or sys.executable,
        )

    def _command(self, node: LocalNode) -> list[str]:
        peers = [n.raft_address for n in self.nodes]
        return serve_command(
            self.python, node.raft_address, peers, node.http_port, node.data_dir, node.raft_bind
        )

    def start(self, index: int | None = None) -> None:
        for node in self.nodes if index is None else [self.nodes[index]]:
            if node.running:
                continue
            env = {**os.environ, **self.env}
            if "SLIMSCHED_RAFT_PASSWORD" not in self.env:
                env["SLIMSCHED_RAFT_PASSWORD"] = self.raft_password
            if self.jobs_configuration is not None:
                env["SLIMSCHED_JOBS_CONFIGURATION"] = self.jobs_configuration
            if node.backup_dir is not None:
                env["SLIMSCHED_BACKUP_DIR"] = node.backup_dir
            os.makedirs(node.data_dir, exist_ok=True)
            out: Any = subprocess.DEVNULL
            if self.log_dir is not None:
                os.makedirs(self.log_dir, exist_ok=True)
                out = open(os.path.join(self.log_dir, f"node-{node.index}.log"), "ab")  # noqa: SIM115
            try:
                node.proc = subprocess.Popen(
                    self._command(node),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=None if self.rlimit_nofile is None else _nofile_setter(self.rlimit_nofile),
                )
            finally:
                if out is not subprocess.DEVNULL:
                    out.close()

    def signal(self, index: int, sig: int) -> None:
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill(self, index: int) -> None:
        """SIGKILL the node and reap it."""
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def terminate(self, index: int, timeout: float = 20.0) -> int | None:
        """SIGTERM the node and wait for it; SIGKILL if it outlives ``timeout``. Returns its exit code."""
        proc = self.nodes[index].proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def wipe(self, index: int) -> None:
        """Delete a stopped node's Raft data (never its backup)."""
        node = self.nodes[index]
        assert not node.running, "stop a node before wiping its data"
        shutil.rmtree(node.data_dir, ignore_errors=True)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every running node at once, then wait for each (SIGKILL past ``timeout``)."""
        running = [n for n in self.nodes if n.running and n.proc is not None]
        for node in running:
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGCONT)
            os.kill(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in running:
            self.terminate(node.index, timeout=max(0.1, deadline - time.monotonic()))

    # -- observation (blocking HTTP with short timeouts) -----------------------------------------

    def get_json(self, index: int, path: str, timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(self.nodes[index].url + path, timeout=timeout) as resp:
            return orjson.loads(resp.read())

    def status(self, index: int) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.get_json(index, "/status")
            return result
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def leader_index(self) -> int | None:
        """The node that says it leads, if every running node agrees on who leads."""
        leaders = set()
        for node in self.nodes:
            if node.running:
                st = self.status(node.index)
                if st is None or st.get("Leader") is None:
                    return None
                leaders.add(st["Leader"])
        if len(leaders) != 1:
            return None
        (address,) = leaders
        for node in self.nodes:
            if node.raft_address == address and node.running:
                return node.index
        return None

    def wait_leader(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            idx = self.leader_index()
            if idx is not None:
                return idx
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout} s")

    def wait_ready(self, index: int | None = None, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = [n.index for n in self.nodes if n.running] if index is None else [index]
        while pending and time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                self.get_json(pending[0], "/ready", timeout=1.0)
                pending.pop(0)
                continue
            time.sleep(0.05)
        if pending:
            raise TimeoutError(f"nodes {pending} not ready within {timeout} s")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
