"""KubeClient's lean request path (issue 18: Job creates, list pages) against a real aiohttp server over TLS.

What it must keep from the official client: the kubeconfig's CA (a server it does not vouch for
is refused), the Authorization header as the client's Configuration gives it at the time (a
refresh hook that rotates the token is honoured, at once after a 401), and the contracts of
``create_job`` (True created, False on 409, anything else a ``KubeError`` with the status and the
Status message) and of the lists (every page followed; an answer that is not a JSON object is a
``KubeError``). The same calls are checked on a real kube-apiserver by
tests/realk8s/test_contract.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from slimsched.errors import KubeError
from slimsched.kube import KubeClient
from slimsched.localcluster import free_ports
from tests.tlscerts import Tls, make_tls

NAMESPACE = "fast"


@dataclass
class FakeApiServer:
    """Answers Job creates like kube-apiserver: 401 to a wrong token, 409 to a known name."""

    url: str
    accepted_token: str = "good"
    names: set[str] = field(default_factory=set)
    authorizations: list[str | None] = field(default_factory=list)
    broken: bool = False
    garbage: bool = False

    async def create(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {self.accepted_token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if request.content_type != "application/json":
            return self._status(415, "UnsupportedMediaType", "no JSON")
        if self.broken:
            return self._status(500, "InternalError", "etcdserver: request timed out")
        body = orjson.loads(await request.read())
        name = body["metadata"]["name"]
        if name in self.names:
            return self._status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        self.names.add(name)
        return web.json_response(body, status=201)

    async def list(self, request: web.Request) -> web.Response:
        """Jobs in name order, ``limit`` at a time, the next page's first name as the token."""
        self.authorizations.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {self.accepted_token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if self.garbage:
            return web.Response(body=b"<html>a proxy's error page</html>", content_type="text/html")
        names = sorted(n for n in self.names if n >= request.query.get("continue", ""))
        limit = int(request.query.get("limit", "0")) or len(names)
        metadata = {"continue": names[limit]} if limit < len(names) else {}
        items = [{"metadata": {"name": n}} for n in names[:limit]]
        return web.json_response({"kind": "JobList", "metadata": metadata, "items": items})

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        return web.json_response(body, status=code)


@pytest.fixture
async def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


@pytest.fixture
async def server(tls: Tls) -> AsyncIterator[FakeApiServer]:
    (port,) = free_ports(1)
    fake = FakeApiServer(url=f"https://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", fake.create)
    app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs", fake.list)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server).start()
    try:
        yield fake
    finally:
        await runner.cleanup()


def kubeconfig(tmp: Path, server: str, ca_pem: bytes, token: str) -> str:
    path = tmp / f"kubeconfig-{token}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": server,
                            "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return str(path)


def job(name: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NAMESPACE}}


async def test_created_then_409_then_a_server_error_with_its_status_and_message(
    server: FakeApiServer, tls: Tls, tmp_path: Path
) -> None:
    client = KubeClient.from_kubeconfig(kubeconfig(tmp_path, server.url, tls.ca_pem, "good"), NAMESPACE)
    try:
        assert await client.create_job(job("a")) is True
        assert await client.create_job(job("a")) is False
        assert server.names == {"a"}
        server.broken = True
        with pytest.raises(KubeError) as info:
            await client.create_job(job("b"))
        assert info.value.status == 500
        assert "etcdserver: request timed out" in str(info.value)
        assert server.authorizations == ["Bearer good"] * 3
    finally:
        await client.close()


async def test_a_wrong_token_is_a_401_kube_error(server: FakeApiServer, tls: Tls, tmp_path: Path) -> None:
    client = KubeClient.from_kubeconfig(kubeconfig(tmp_path, server.url, tls.ca_pem, "stolen"), NAMESPACE)
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(job("a"))
        assert info.value.status == 401
        assert server.names == set()
        # The header was read again after the 401; unchanged, the create was not sent twice.
        assert server.authorizations == ["Bearer stolen"]
    finally:
        await client.close()


def rotating_client(
    server: FakeApiServer, tls: Tls, tmp_path: Path
) -> tuple[KubeClient, list[str], list[str]]:
    """A client whose refresh hook gives ``current[0]`` (first "Bearer good"), each call in ``hook_calls``."""
    client = KubeClient.from_kubeconfig(kubeconfig(tmp_path, server.url, tls.ca_pem, "good"), NAMESPACE)
    current = ["Bearer good"]
    hook_calls: list[str] = []

    def refresh(configuration: Any) -> None:  # what load_incluster_config's hook does with the file
        hook_calls.append(current[0])
        configuration.api_key["BearerToken"] = current[0]

    client.configuration.refresh_api_key_hook = refresh
    return client, current, hook_calls


async def test_a_rotated_token_is_read_from_the_refresh_hook_after_a_401(
    server: FakeApiServer, tls: Tls, tmp_path: Path
) -> None:
    client, current, hook_calls = rotating_client(server, tls, tmp_path)
    try:
        assert await client.create_job(job("a")) is True
        current[0] = "Bearer rotated"
        server.accepted_token = "rotated"  # the old token is refused from now on
        assert await client.create_job(job("b")) is True
        assert server.authorizations == ["Bearer good", "Bearer good", "Bearer rotated"]
        assert hook_calls == ["Bearer good", "Bearer rotated"]
        assert await client.create_job(job("c")) is True
        assert server.authorizations[-1] == "Bearer rotated"
    finally:
        await client.close()


async def test_a_list_follows_every_page_with_a_rotated_token_and_refuses_what_is_not_json(
    server: FakeApiServer, tls: Tls, tmp_path: Path
) -> None:
    client, current, _ = rotating_client(server, tls, tmp_path)
    client.list_page_size = 2
    try:
        server.names.update({"a", "b", "c", "d", "e"})
        found = await client.list_jobs("slimsched/managed-by=slimsched")
        assert [j["metadata"]["name"] for j in found] == ["a", "b", "c", "d", "e"]
        assert server.authorizations == ["Bearer good"] * 3, "three pages of at most 2"
        current[0] = "Bearer rotated"
        server.accepted_token = "rotated"
        found = await client.list_jobs("slimsched/managed-by=slimsched")
        assert [j["metadata"]["name"] for j in found] == ["a", "b", "c", "d", "e"]
        # One 401 with the header read earlier, then the three pages with the rotated token.
        assert server.authorizations[3:] == ["Bearer good"] + ["Bearer rotated"] * 3
        server.garbage = True
        with pytest.raises(KubeError) as info:
            await client.list_jobs("slimsched/managed-by=slimsched")
        assert "not JSON" in str(info.value) and info.value.status is None
    finally:
        await client.close()


async def test_a_server_outside_the_kubeconfigs_ca_is_refused(server: FakeApiServer, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    client = KubeClient.from_kubeconfig(kubeconfig(tmp_path, server.url, other.ca_pem, "good"), NAMESPACE)
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(job("a"))
        assert info.value.status is None
        assert "certificate" in str(info.value).lower()
        assert server.authorizations == [], "nothing reached the server"
    finally:
        await client.close()


async def test_an_unreachable_server_is_a_kube_error_without_status(tls: Tls, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    client = KubeClient.from_kubeconfig(
        kubeconfig(tmp_path, f"https://127.0.0.1:{port}", tls.ca_pem, "good"), NAMESPACE
    )
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(job("a"))
        assert info.value.status is None
    finally:
        await client.close()
