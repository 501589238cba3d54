"""Private jobs over real HTTP: only in-cluster callers, judged by the connection's own peer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, UnixConnector, web

from slimsched.access import AccessPolicy
from slimsched.api import create_app
from slimsched.raft import RaftNode
from tests.conftest import ManualClock, api_context

PRIVATE = "/job/secret-job"
POD_IP = "10.244.1.7"


@dataclass
class Servers:
    tcp: str
    unix_path: str


@pytest.fixture
async def servers(raft: RaftNode, tmp_path: Path) -> AsyncIterator[Servers]:
    async def pod_ips() -> Collection[str]:
        return {POD_IP}

    ctx = api_context(
        raft,
        ManualClock(),
        access=AccessPolicy.build(["192.168.0.0/16"], ["127.0.0.1/32"]),
        pod_ips=pod_ips,
    )
    runner = web.AppRunner(create_app(ctx))
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    unix_path = str(tmp_path / "api.sock")
    await web.UnixSite(runner, unix_path).start()
    port = runner.addresses[0][1]
    try:
        yield Servers(f"http://127.0.0.1:{port}", unix_path)
    finally:
        await runner.cleanup()


async def _post(
    session: ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    async with session.post(url, json={}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_outside_peer_is_refused_even_with_forged_forwarded_for(servers: Servers) -> None:
    # A Unix-socket peer has no IP address: it stands for a caller outside every trusted network.
    async with ClientSession(connector=UnixConnector(path=servers.unix_path)) as outside:
        status, body = await _post(outside, f"http://slimsched{PRIVATE}")
        assert (status, body["Error"]) == (403, "private_job")
        status, body = await _post(outside, f"http://slimsched{PRIVATE}", {"X-Forwarded-For": "192.168.3.4"})
        assert (status, body["Error"]) == (403, "private_job"), "X-Forwarded-For from a non-proxy is ignored"
        # Public jobs accept anyone.
        status, _ = await _post(outside, "http://slimsched/job/fibonacci")
        assert status == 202


@pytest.mark.parametrize(
    ("forwarded_for", "status"),
    [
        (None, 202),  # loopback peer: the node itself, a sidecar
        ("192.168.3.4", 202),  # via the trusted proxy, from a trusted CIDR
        (POD_IP, 202),  # via the trusted proxy, from a pod of the namespace
        ("203.0.113.9", 403),  # via the trusted proxy, from the internet
        ("192.168.3.4, 203.0.113.9", 403),  # the right-most untrusted hop decides
        ("not-an-ip", 403),
    ],
    ids=["loopback", "trusted-cidr", "pod-ip", "internet", "spoofed-left-hop", "garbage"],
)
async def test_private_job_via_trusted_proxy(
    servers: Servers, forwarded_for: str | None, status: int
) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    async with ClientSession() as session:
        got, body = await _post(session, f"{servers.tcp}{PRIVATE}", headers)
        assert got == status, body
        async with session.get(f"{servers.tcp}/job-schedules/secret-job", headers=headers) as resp:
            assert resp.status == (200 if status == 202 else 403), "schedules follow the job's visibility"


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "proxies", "pods", "inside"),
    [
        ("10.1.2.3", None, ["10.0.0.0/8"], [], (), True),
        ("10.1.2.3", None, ["10.1.2.0/24"], [], (), True),
        ("10.1.3.3", None, ["10.1.2.0/24"], [], (), False),
        ("110.1.2.3", None, ["10.0.0.0/8"], [], (), False),  # no substring match
        ("::ffff:10.1.2.3", None, ["10.0.0.0/8"], [], (), True),  # IPv4-mapped IPv6
        ("::1", None, [], [], (), True),
        ("203.0.113.5", "10.1.2.3", ["10.0.0.0/8"], [], (), False),  # XFF from a non-proxy ignored
        ("10.9.9.9", "203.0.113.5", ["10.0.0.0/8"], ["10.9.9.9/32"], (), False),
        ("10.9.9.9", "10.1.1.1", ["10.1.0.0/16"], ["10.9.9.9/32"], (), True),
        ("172.17.0.5", None, [], [], ("172.17.0.5",), True),  # a pod of the namespace
        ("172.17.0.6", None, [], [], ("172.17.0.5",), False),
        (None, None, ["0.0.0.0/0"], [], (), False),
    ],
)
def test_access_policy_table(
    peer: str | None,
    xff: str | None,
    trusted: list[str],
    proxies: list[str],
    pods: tuple[str, ...],
    inside: bool,
) -> None:
    policy = AccessPolicy.build(trusted, proxies)
    caller = policy.caller(peer, xff)
    assert policy.in_cluster(caller, pods) is inside
