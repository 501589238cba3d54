"""Shared fixtures: a real single-node Raft cluster behind a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from slimsched import jobconfig
from slimsched.access import AccessPolicy
from slimsched.api import ApiContext, create_app
from slimsched.backup import admin_routes
from slimsched.emulator import EmulatorThread
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.raft import RaftNode
from slimsched.settings import RaftTimings, Settings
from tests.helpers import KUBE_JOBS, KubeCluster

JOBS = """{
  "Configurations": {
    "fibonacci": {
      "Image": "axaguildev/fibonacci-batch:latest",
      "ImagesWhitelist": ["axaguildev/fibonacci-batch:*"],
      "Resources": {
        "Requests": {"cpu": "400m", "memory": "400Mi"},
        "Limits": {"cpu": "400m", "memory": "400Mi"}
      },
      "BackoffLimit": 2,
      "Visibility": "Public",
      "NumberParallelJob": 2,
      "TtlSecondsAfterFinished": 3600,
      "RestartPolicy": "Never"
    },
    "secret-job": {"Image": "internal/tool:1", "Visibility": "Private"}
  }
}"""


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if cond():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class ApiHarness:
    url: str
    session: ClientSession
    raft: RaftNode
    clock: ManualClock

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as resp:
            text = await resp.read()
            return resp.status, (orjson.loads(text) if text else None)


_ids = itertools.count()


@pytest.fixture
async def raft(tmp_path: Path) -> AsyncIterator[RaftNode]:
    """A real single-node Raft cluster on 127.0.0.1, leader and ready."""
    (raft_port,) = free_ports(1)
    node = RaftNode(
        Settings(
            raft_address=f"127.0.0.1:{raft_port}",
            data_dir=str(tmp_path / "raft"),
            timings=RaftTimings(raft_min_timeout=0.31, raft_max_timeout=0.35),
        )
    )
    node.start()
    try:
        await wait_for(lambda: node.status().ready, 10, "single-node leader")
        yield node
    finally:
        node.stop()


def api_context(raft: RaftNode, clock: ManualClock, **changes: Any) -> ApiContext:
    fields: dict[str, Any] = {
        "raft": raft,
        "jobs": jobconfig.parse_jobs_configuration(JOBS),
        "access": AccessPolicy.build(["10.0.0.0/8"], []),
        "clock": clock,
        "new_id": lambda: f"id{next(_ids)}",
        "max_body_bytes": 64 * 1024,
    }
    fields.update(changes)
    ctx = ApiContext(**fields)
    ctx.extra_routes = admin_routes(raft, ctx.access)  # as a node serves them
    return ctx


@pytest.fixture
async def api(raft: RaftNode) -> AsyncIterator[ApiHarness]:
    clock = ManualClock()
    server = TestServer(create_app(api_context(raft, clock)), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            yield ApiHarness(str(server.make_url("")).rstrip("/"), session, raft, clock)
    finally:
        await server.close()


@pytest.fixture
def kc(tmp_path: Path) -> Iterator[KubeCluster]:
    """A 3-node cluster of processes dispatching to the Kubernetes API emulator."""
    emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.6)
    with emulator as url:
        cluster = LocalCluster.create(
            3, str(tmp_path), jobs_configuration=KUBE_JOBS, env={"SLIMSCHED_KUBE_URL": url}
        )
        cluster.start()
        try:
            cluster.wait_ready(timeout=30)
            yield KubeCluster(cluster, emulator, url)
        finally:
            cluster.stop()
