"""The lean request path to the API server: aiohttp on the leader's event loop, orjson, no client layers.

Issue 18 took the hot calls off the official client's request path (thread pool, ``call_api``,
urllib3): there a Job create cost 0.7-0.9 ms of CPU and a list page held a thread and the GIL
the leader needs at second 0. Here a request is one aiohttp call on kept-alive connections;
everything it needs comes from the official client's ``Configuration`` object, passed in (this
module never imports ``kubernetes``): host, TLS (CA file or data, client certificate,
``verify_ssl``, ``assert_hostname``, ``tls_server_name``) and the Authorization header, read
through ``auth_settings()`` so that the refresh hook (an in-cluster token that rotates, an exec
plugin) keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson

from slimsched.errors import KubeError

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
CONNECTIONS = 64  # kept-alive connections; the leader has at most 32 creates in flight (its cap)
AUTH_REFRESH_SECONDS = 5.0  # how stale the Authorization header may get (a 401 refreshes it)


def status_message(body: bytes | str, reason: str | None) -> str:
    """The ``message`` of a Status body, else the HTTP reason."""
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        status = orjson.loads(body)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    return reason or "error"


def ssl_context(configuration: Any) -> ssl.SSLContext | None:
    """The TLS settings of the client's configuration, as urllib3 would apply them; None: plain HTTP."""
    if not str(configuration.host).startswith("https:"):
        return None
    cadata = configuration.ca_cert_data
    if isinstance(cadata, bytes):
        cadata = cadata.decode("ascii")
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert, cadata=cadata)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    return context


class LeanTransport:
    """Requests over aiohttp keep-alive connections, on the event loop: no thread, no client layers.

    The session is made lazily in the loop of the first request (an idle node opens nothing).
    The Authorization header comes from ``configuration.auth_settings()``, which calls the
    client's refresh hook; it is read again every ``AUTH_REFRESH_SECONDS`` (in ``executor``: a
    hook may read a file or run an exec plugin) and at once after a 401, then the request is
    sent once more.
    """

    def __init__(self, configuration: Any, executor: ThreadPoolExecutor, clock: Callable[[], float]) -> None:
        self._configuration = configuration
        self._executor = executor
        self._clock = clock
        self._base = str(configuration.host).rstrip("/")
        self._ssl = ssl_context(configuration)
        self._server_hostname: str | None = configuration.tls_server_name or None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._authorization: str | None = None
        self._auth_read_at = -1e18

    def _auth_header(self) -> str | None:
        bearer = self._configuration.auth_settings().get("BearerToken")
        value = None if bearer is None else bearer.get("value")
        return None if value is None else str(value)

    async def _headers(self, force: bool = False) -> dict[str, str]:
        now = self._clock()
        if force or now - self._auth_read_at >= AUTH_REFRESH_SECONDS:
            loop = asyncio.get_running_loop()
            self._authorization = await loop.run_in_executor(self._executor, self._auth_header)
            self._auth_read_at = now
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            tls: ssl.SSLContext | bool = self._ssl if self._ssl is not None else False
            connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=tls)
            timeout = aiohttp.ClientTimeout(connect=REQUEST_TIMEOUT[0], sock_read=REQUEST_TIMEOUT[1])
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
            )
            self._loop = loop
        return self._session

    async def request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        also_ok: Collection[int] = (),
    ) -> tuple[int, bytes]:
        """(status, body) of a 2xx answer or one in ``also_ok``; else ``KubeError`` (with its status)."""
        url = self._base + path
        headers = await self._headers()
        for attempt in (1, 2):
            try:
                async with self._session_here().request(
                    method,
                    url,
                    params=list(query),
                    data=body,
                    headers=headers,
                    server_hostname=self._server_hostname,
                ) as response:
                    answer = await response.read()
                    status = response.status
                    reason = response.reason
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                raise KubeError(f"{what}: {type(e).__name__}: {e}") from e
            if 200 <= status <= 299 or status in also_ok:
                return status, answer
            if status == 401 and attempt == 1:
                sent = headers.get("Authorization")
                headers = await self._headers(force=True)
                if headers.get("Authorization") != sent:
                    continue  # the token rotated since it was read
            raise KubeError(f"{what}: HTTP {status}: {status_message(answer, reason)}", status=status)
        raise AssertionError("unreachable")

    async def get_object(self, what: str, path: str, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """A GET answered with a JSON object (a list page, say), parsed."""
        _, answer = await self.request(what, "GET", path, query=query)
        try:
            data = orjson.loads(answer)
        except orjson.JSONDecodeError as e:
            raise KubeError(f"{what}: the API server's answer is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise KubeError(f"{what}: the API server did not answer with a JSON object")
        return data

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            with contextlib.suppress(RuntimeError):  # its loop is gone: nothing left to close
                await self._session.close()
        self._session = None
