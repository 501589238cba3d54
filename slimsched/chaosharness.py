"""The chaos harness's base: its cluster, its HTTP calls to the nodes, and health checks.

``slimsched.chaos`` builds the harness from this base, the fault injector
(``slimsched.chaosfaults``) and the load clients (``slimsched.chaosload``); they share the state
set up here: the cluster, the partition proxy, the client log and the violations noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from slimsched import chaosbackup
from slimsched.chaoscheck import Answer, ClientLog, Violation
from slimsched.chaosplan import (
    ALL_KINDS,
    BACKUP_INTERVAL_SECONDS,
    BACKUP_KINDS,
    EXERCISED_SAMPLES,
    POINT_FAULT_POINTS,
    FaultKind,
    FaultRecord,
)
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.partitionproxy import PartitionProxy

TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled"})

# Every job name is served by the Default entry: public, an image the emulator runs quickly, and
# a parallelism that never makes a run wait on another.
JOBS_CONFIGURATION = orjson.dumps(
    {
        "Configurations": {
            "Default": {"Image": "chaos/worker:1", "Visibility": "Public", "NumberParallelJob": 100}
        }
    }
).decode()

# Bounds of every wait.
CLIENT_TIMEOUT = 6.0  # more than the nodes' 5 s commit deadline
STATUS_TIMEOUT = 1.0
POLL_SECONDS = 0.05
LEADER_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class ChaosConfig:
    nodes: int = 3
    duration: float = 60.0  # seconds of load and faults
    interval: float = 5.0  # planned spacing of faults
    seed: int = 1
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    base_dir: str | None = None  # None: a temporary directory, removed unless violations are found
    every_second_schedules: int = 3
    trigger_clients: int = 2
    trigger_rate: float = 3.0  # per trigger client, per second
    churn_rate: float = 2.5  # schedule creates/deletes per second
    recovery_timeout: float = 30.0
    quiesce_timeout: float = 60.0
    node_env: Mapping[str, str] = field(default_factory=dict)
    verbose: bool = False
    crash_points: tuple[str, ...] = POINT_FAULT_POINTS


@dataclass(frozen=True)
class Health:
    leader: int
    term: int
    commit_index: int


class HarnessBase:
    def __init__(self, config: ChaosConfig, base_dir: str, kube_url: str) -> None:
        if config.nodes < 3:
            raise ValueError("a chaos run needs at least 3 nodes (a fault must leave a majority)")
        self.config = config
        self.kube_url = kube_url
        self.rng = random.Random(config.seed)
        n = config.nodes
        self.backups_on = bool(BACKUP_KINDS & set(config.kinds))
        backup_env = {"SLIMSCHED_BACKUP_INTERVAL_SECONDS": str(BACKUP_INTERVAL_SECONDS)}
        self.watch = chaosbackup.BackupWatch()
        self.load_open = asyncio.Event()  # cleared while a cold start stops the cluster
        self.load_open.set()
        self.in_flight = 0
        self.no_request = asyncio.Event()  # set while no client request is in flight
        self.no_request.set()
        # Each cold start: (wall clock of the last ledger read before it, of the cluster's stop).
        self.cold_starts: list[tuple[float, float]] = []
        ports = free_ports(3 * n)
        http, front, back = ports[:n], ports[n : 2 * n], ports[2 * n :]
        self.cluster = LocalCluster.create(
            n,
            base_dir,
            http_ports=http,
            raft_ports=front,
            raft_bind_ports=back,
            jobs_configuration=JOBS_CONFIGURATION,
            backups=self.backups_on,  # the interval below is unused without them
            env={
                **config.node_env,
                **backup_env,
                "SLIMSCHED_KUBE_URL": kube_url,
                "SLIMSCHED_LOG_LEVEL": "WARNING",
                # The partition proxy reads the first (unencrypted) frame of each Raft connection:
                # an inherited password would make every connection unidentifiable.
                "SLIMSCHED_RAFT_PASSWORD": "",
                "SLIMSCHED_RAFT_NETWORK_PRIVATE": "true",  # 127.0.0.1 only
            },
        )
        self.front = [node.raft_address for node in self.cluster.nodes]
        self.proxy = PartitionProxy({node.raft_address: str(node.raft_bind) for node in self.cluster.nodes})
        self.log = ClientLog()
        self.faults: list[FaultRecord] = []
        self.notes: list[Violation] = []
        self.paused: set[int] = set()
        self.stop_load = asyncio.Event()
        self.t0 = 0.0
        self._seq = 0
        self._tick_jobs = 0
        self._measurements: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.counters: dict[tuple[int, int], dict[str, float]] = {}  # (node, pid) -> samples
        self.armed: set[int] = set()

    def say(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.t0:7.2f}s] {message}", file=sys.stderr, flush=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    # -- HTTP --------------------------------------------------------------------------------

    async def call(
        self, index: int, method: str, path: str, body: Any = None, timeout: float = CLIENT_TIMEOUT
    ) -> Answer:
        url = self.cluster.nodes[index].url + path
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    parsed = raw.decode(errors="replace")
                return Answer(resp.status, parsed)
        except aiohttp.ClientConnectorError:
            return Answer(None, None, sent=False)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return Answer(None, None)

    def pick_node(self) -> int:
        up = [n.index for n in self.cluster.nodes if n.running and n.index not in self.paused]
        return self.rng.choice(up) if up else 0

    async def op(self, name: str, method: str, path: str, body: Any = None) -> Answer:
        # A cold start under way: no new request, even once the load is told to stop (the cold
        # start opens the gate again when it ends, whatever happens).
        await self.load_open.wait()
        self.in_flight += 1
        self.no_request.clear()
        try:
            answer = await self.call(self.pick_node(), method, path, body)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.no_request.set()
        self.log.count(name, answer)
        return answer

    async def statuses(
        self, indices: Iterable[int], *, with_hash: bool = False
    ) -> dict[int, dict[str, Any] | None]:
        idx = list(indices)
        path = "/status?hash=1" if with_hash else "/status"
        answers = await asyncio.gather(*(self.call(i, "GET", path, timeout=STATUS_TIMEOUT) for i in idx))
        return {
            i: (a.body if a.status == 200 and isinstance(a.body, dict) else None)
            for i, a in zip(idx, answers, strict=True)
        }

    def index_of(self, address: str | None) -> int | None:
        return self.front.index(address) if address in self.front else None

    # -- health and failover ---------------------------------------------------------------------

    async def wait_healthy(self, timeout: float) -> Health | None:
        """Every node up and connected, one agreed leader, each node applied what it committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target: tuple[int, int] | None = None  # (leader, its commit index when first agreed)
        while loop.time() < deadline:
            everyone_up = (
                all(n.running for n in self.cluster.nodes) and not self.paused and not self.proxy.cut_links
            )
            sts = await self.statuses(range(len(self.cluster.nodes)))
            views = [s for s in sts.values() if s is not None]
            leaders = {s.get("Leader") for s in views}
            if everyone_up and len(views) == len(sts) and len(leaders) == 1:
                leader = self.index_of(leaders.pop())
                lst = sts.get(leader) if leader is not None else None
                if leader is not None and lst is not None and lst.get("IsLeader"):
                    if target is None or target[0] != leader:
                        target = (leader, int(lst["CommitIndex"]))
                    if all(int(s["AppliedIndex"]) >= target[1] for s in views):
                        return Health(leader, int(lst["Term"]), int(lst["CommitIndex"]))
            await asyncio.sleep(0.1)
        return None

    def backup_dir(self, index: int) -> str:
        return str(self.cluster.nodes[index].backup_dir)

    async def scrape(self) -> None:
        """Read the exercised-path counters of every running node (kept per process)."""
        for node in self.cluster.nodes:
            if not node.running or node.index in self.paused or node.proc is None:
                continue
            a = await self.call(node.index, "GET", "/metrics", timeout=STATUS_TIMEOUT)
            if a.status != 200 or not isinstance(a.body, str):
                continue
            values: dict[str, float] = {}
            for line in a.body.splitlines():
                for label, sample in EXERCISED_SAMPLES.items():
                    if line.startswith(sample + " "):
                        values[label] = float(line.split()[1])
            self.counters[(node.index, node.proc.pid)] = values

    def exercised(self) -> dict[str, int]:
        return {
            label: int(sum(v.get(label, 0.0) for v in self.counters.values())) for label in EXERCISED_SAMPLES
        }

    async def get_ok(self, index: int, path: str) -> Any:
        for _ in range(5):
            a = await self.call(index, "GET", path)
            if a.status == 200:
                return a.body
            if a.status == 404:
                return None
            await asyncio.sleep(0.2)
        raise RuntimeError(f"GET {path} on node {index} kept failing")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(timeout, 0.0))
    return event.is_set()
