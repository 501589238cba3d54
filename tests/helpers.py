"""Helpers shared by the integration tests: blocking HTTP, condition waits, a cluster with Kubernetes."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from slimsched.emulator import EmulatorThread
from slimsched.jsonhttp import request_json
from slimsched.localcluster import LocalCluster

T = TypeVar("T")

request = request_json


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


KUBE_JOBS = orjson.dumps(
    {
        "Configurations": {
            "fibonacci": {"Image": "demo/fib:1", "Visibility": "Public", "NumberParallelJob": 2},
            "ticker": {"Image": "demo/tick:1", "Visibility": "Public", "NumberParallelJob": 100},
            "runner": {
                "Image": "demo/runner:1",
                "ImagesWhitelist": ["demo/*"],
                "Visibility": "Public",
                "NumberParallelJob": 10,
                "Resources": {"Limits": {"cpu": "500m", "memory": "256Mi"}},
                "Parallelism": 2,
                "Completions": 4,
            },
            "needs-db": {"Image": "demo/db-client:1", "Visibility": "Public", "DependsOn": ["db"]},
            "backlog": {
                "Image": "demo/backlog:1",
                "Visibility": "Public",
                "DependsOn": ["store"],
                "NumberParallelJob": 1000,
            },
        }
    }
).decode()


class KubeCluster:
    """A LocalCluster dispatching to an in-process Kubernetes API emulator."""

    def __init__(self, cluster: LocalCluster, emulator: EmulatorThread, url: str) -> None:
        self.cluster = cluster
        self.emulator = emulator
        self.kube_url = url

    def created_names(self) -> list[str]:
        return [c.name for c in self.emulator.call(lambda e: e.creations()) if c.outcome == "created"]

    def jobs(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.kube_url}/apis/batch/v1/namespaces/default/jobs", timeout=5) as r:
            items: list[dict[str, Any]] = orjson.loads(r.read())["items"]
            return items

    def node_url(self, i: int) -> str:
        return self.cluster.nodes[i].url

    def any_url(self) -> str:
        for node in self.cluster.nodes:
            if node.running:
                return node.url
        raise AssertionError("no node running")

    def runs(self, job: str) -> list[dict[str, Any]]:
        status, body = request(f"{self.any_url()}/job/{job}", timeout=3)
        assert status == 200, body
        return list(body)

    def run(self, job: str, run_id: str) -> dict[str, Any]:
        for r in self.runs(job):
            if r["Id"] == run_id:
                return r
        raise AssertionError(f"no run {run_id} of {job}")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    deadline: float = 5.0,
    what: str = "",
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until ``done`` holds for its value; fail after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"{what or 'condition'} not met within {deadline}s; last value: {value!r}")
        await asyncio.sleep(interval)
