"""The HTTP server's edge against slow, numerous and malformed clients (issue 16).

- Headers: aiohttp closes a connection whose request is not complete ``keepalive_timeout`` after
  it opened (or after its last response); the node sets that to the header timeout.
- Bodies: ``body_deadline_middleware`` fails the read of a body that has not fully arrived within
  the body timeout (plus the time a large body needs at MIN_BODY_BYTES_PER_SECOND) with 408, and
  closes the connection.
- Connections: ``GuardedSite`` answers 503 and closes at once past a cap on open connections, so
  that a flood cannot take the file descriptors that Raft needs (pysyncobj lost its listening
  socket at the open-files limit). The cap leaves FD_RESERVE descriptors under RLIMIT_NOFILE,
  which the entry point raises to its hard limit (``raise_nofile_limit``).
- Low-level errors (a request line or header too long, too many headers, a raw non-ASCII path)
  get the API's JSON error body instead of aiohttp's text/plain 400 (``JsonErrorsHandler``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, InvalidURLError, LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from slimsched.errors import ApiError

log = logging.getLogger(__name__)

# Descriptors kept for Raft (a connection per peer each way, the journal, the dump), the
# Kubernetes client's pool, backups, logs, and the one accept burst asyncio may take past the cap
# (it accepts up to its backlog, 100, per readiness event, before the handlers register).
FD_RESERVE = 256
MIN_HTTP_CONNECTIONS = 16
MIN_BODY_BYTES_PER_SECOND = 1024 * 1024


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-files soft limit to its hard limit; return (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, e)
        return soft, soft
    return soft, hard


def connection_cap(configured: int) -> int:
    """Open HTTP connections allowed: ``configured``, within the open-files limit less FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = configured if soft == resource.RLIM_INFINITY else soft - FD_RESERVE
    return max(MIN_HTTP_CONNECTIONS, min(configured, room))


def _error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"Error": code, "Message": message})


def low_level_error(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for an error aiohttp found before any handler ran."""
    if isinstance(exc, LineTooLong):
        # aiohttp names the part it was reading: the URL (a bytearray of it) or a header.
        if "bytearray(b'/" in str(exc) or "bytearray(b'h" in str(exc):
            return 414, "uri_too_long", "the request line is too long"
        return 431, "header_too_large", "a request header is too long"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return 431, "too_many_headers", "the request has too many headers"
    if isinstance(exc, InvalidURLError):
        return 400, "invalid_path", "the request path must be ASCII, with other bytes percent-encoded"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_request", "the request is not HTTP"
    if status >= 500:
        return status, "internal", "an internal error occurred; it has been logged"
    return status, "bad_request", "the request could not be parsed as HTTP"


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering its own parse errors with the API's JSON body."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        # A stranger's garbage is not the node's error: no traceback per bad request.
        log.debug("low-level HTTP error from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already")
        status, code, text = low_level_error(status, exc)
        resp = web.Response(
            body=_error_body(status, code, text), status=status, content_type="application/json"
        )
        resp.force_close()
        return resp


_TOO_MANY = _error_body(503, "too_many_connections", "this node has too many open connections; retry later")
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_TOO_MANY)).encode() + b"\r\n\r\n" + _TOO_MANY
)


class _Refuse(asyncio.Protocol):
    """A connection past the cap: one 503 written, then closed (its descriptor freed at once)."""

    def __init__(self, on_refused: Callable[[], None]) -> None:
        self._on_refused = on_refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._on_refused()
        transport.write(_REFUSAL)
        transport.close()


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite, building ``JsonErrorsHandler`` connections up to ``max_connections``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self.max_connections = max_connections
        self._on_refused = on_refused

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server._connections) >= self.max_connections:
                return _Refuse(self._on_refused)
            return JsonErrorsHandler(server, loop=server._loop, **server._kwargs)

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class BodyTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, "body_timeout", f"the request body did not arrive within {seconds:g} s")


def body_deadline_middleware(timeout_seconds: float) -> Middleware:
    """Fail the body's read with 408 (and close the connection) once it is overdue."""

    @web.middleware
    async def body_deadline(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            return await handler(request)
        seconds = timeout_seconds + (request.content_length or 0) / MIN_BODY_BYTES_PER_SECOND
        expired = False

        def expire() -> None:
            nonlocal expired
            if not content.is_eof():
                expired = True
                content.set_exception(BodyTimeout(seconds))

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            resp = await handler(request)
        finally:
            timer.cancel()
        if expired:
            resp.force_close()  # the rest of the body is never read
        return resp

    return body_deadline
