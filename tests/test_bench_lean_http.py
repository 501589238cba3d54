"""bench/_lean_http.py, the write benchmark's load generator, against a real aiohttp server.

The benchmark's figures are only as good as its client's count of answers: each case checks the
client's count against the server's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench import _lean_http

SERVED = web.AppKey("served", list[str])


async def _ok(request: web.Request) -> web.Response:
    request.app[SERVED].append("ok")
    return web.json_response({"Id": "x" * len(await request.read())}, status=201)


async def _refused(request: web.Request) -> web.Response:
    request.app[SERVED].append("refused")
    return web.json_response({"Error": "invalid"}, status=400)


async def _chunked(request: web.Request) -> web.StreamResponse:
    request.app[SERVED].append("chunked")
    resp = web.StreamResponse(status=201)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"{}")
    await resp.write_eof()
    return resp


async def _bad_length(request: web.Request) -> web.StreamResponse:
    request.app[SERVED].append("bad length")
    assert request.transport is not None
    request.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: many\r\n\r\n{}")
    request.transport.close()
    return web.Response(status=201)


async def _every_other_closes(request: web.Request) -> web.Response:
    served = request.app[SERVED]
    served.append("flaky")
    if len(served) % 2 == 0:
        assert request.transport is not None
        request.transport.close()
    return web.json_response({}, status=201)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    app = web.Application()
    app[SERVED] = []
    app.router.add_post("/ok", _ok)
    app.router.add_post("/refused", _refused)
    app.router.add_post("/chunked", _chunked)
    app.router.add_post("/bad-length", _bad_length)
    app.router.add_post("/flaky", _every_other_closes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app[SERVED]
    finally:
        await runner.cleanup()


async def test_every_answer_is_counted_once(server: tuple[str, list[str]]) -> None:
    url, served = server
    lat, errors, elapsed = await _lean_http.load([url], "/ok", b'{"a": 1}', 4, 0.3, 201, warm_up=0)
    assert errors == 0 and len(lat) == len(served) > 4
    assert all(0 < t < elapsed for t in lat)


async def test_a_status_other_than_the_expected_one_is_an_error(server: tuple[str, list[str]]) -> None:
    url, served = server
    lat, errors, _ = await _lean_http.load([url], "/refused", b"{}", 2, 0.2, 201, warm_up=0)
    assert lat == [] and errors == len(served) > 2


@pytest.mark.parametrize("path", ["/chunked", "/bad-length"])
async def test_an_answer_it_cannot_frame_is_an_error_not_a_hang(
    server: tuple[str, list[str]], path: str
) -> None:
    url, served = server
    lat, errors, _ = await _lean_http.load([url], path, b"{}", 2, 0.2, 201, warm_up=0)
    assert lat == [] and errors == len(served) > 2


async def test_a_closed_connection_is_an_error_then_it_reconnects(server: tuple[str, list[str]]) -> None:
    url, served = server
    lat, errors, _ = await _lean_http.load([url], "/flaky", b"{}", 1, 0.3, 201, warm_up=0)
    assert len(lat) > 2 and errors > 2
    assert len(lat) + errors == len(served)


def test_only_plain_http_urls_with_a_port() -> None:
    host, port, request = _lean_http.prepare("http://127.0.0.1:8080", "/job/x", b"{}")
    assert (host, port) == ("127.0.0.1", 8080)
    assert request.startswith(b"POST /job/x HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n{}")
    for bad in ("https://127.0.0.1:8080", "http://127.0.0.1"):
        with pytest.raises(ValueError):
            _lean_http.prepare(bad, "/", b"")
