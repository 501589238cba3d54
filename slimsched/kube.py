"""The Kubernetes edge: an async facade over the official client, the only importer of ``kubernetes``.

The official client blocks, so every call runs in this client's own thread pool and the event
loop never waits on the network. Requests go through the client's ``ApiClient`` (its
configuration, authentication with token refresh, TLS and connection pool) by path, not through
the generated ``BatchV1Api``/``CoreV1Api``/``AppsV1Api`` classes: importing those three builds
pydantic validators and model classes for every operation of their groups, 28 MiB of RSS for
the eight operations used here, and validating arguments costs about 200 us of CPU per call.
Answers are returned as plain dicts in the API's own camelCase JSON (read raw and parsed with
orjson, never through the client's model classes), so the pure code in ``jobmanifest`` reads
exactly what a cluster or the emulator sent. Client exceptions become ``KubeError`` (with the
HTTP status when there is one); the outcomes that dispatching treats as normal (409 on create,
404 on get/delete) are answered as values instead.

The hot calls leave the client's request path (issue 18): creating a Job (a burst of hundreds at
second 0 of a busy minute) and the list pages of the leader's status poll (thousands of Jobs alive
until their TTL) go through ``kubelean.LeanTransport``, aiohttp on the event loop with everything
taken from the client's ``Configuration``. A configuration with an HTTP proxy keeps the client's
path for them too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import should_bypass_proxies
from kubernetes.config.config_exception import ConfigException

from slimsched.errors import KubeError
from slimsched.kubelean import REQUEST_TIMEOUT, LeanTransport, status_message

T = TypeVar("T")

FOLLOW_TIMEOUT = (5.0, 3600.0)  # a followed container may be quiet for long, not forever
# Items per list page. A page is parsed on the leader's event loop in one call (orjson holds the
# GIL): 500 Jobs of a real API server (1.4 MB, half of it managedFields) took 7-45 ms there with
# 4,000 runs active, 100 take a fifth of it.
LIST_PAGE_SIZE = 100
MAX_LIST_PAGES = 1000
CALL_THREADS = 8
LOG_STREAM_THREADS = 16

_BATCH = "/apis/batch/v1/namespaces/{namespace}"
# CronJob is batch/v1 since Kubernetes 1.21 and was batch/v1beta1 until 1.25: tried in this order.
_CRONJOB_PATHS = (
    "/apis/batch/v1/namespaces/{namespace}/cronjobs",
    "/apis/batch/v1beta1/namespaces/{namespace}/cronjobs",
)
# A pod's log is text, but kube-apiserver negotiates it as one of its serializers and answers 406
# to ``Accept: text/plain``; this is what kubectl (client-go) sends.
_LOG_ACCEPT = "application/json, */*"
_APPS = "/apis/apps/v1/namespaces/{namespace}"
_CORE = "/api/v1/namespaces/{namespace}"


def _api_error_message(e: ApiException) -> str:
    """The ``message`` of the Status object the API server sent, or the HTTP reason."""
    reason = getattr(e, "reason", None)
    return status_message(getattr(e, "body", None) or b"", None if reason is None else str(reason))


class KubeClient:
    """Jobs, pods, workloads, cronjobs and pod logs of one namespace, as plain dicts."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        call_threads: int = CALL_THREADS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.list_page_size = LIST_PAGE_SIZE  # items per list page (the API server's ``limit``)
        self._api = api_client
        self._calls = ThreadPoolExecutor(call_threads, thread_name_prefix="slimsched-kube")
        configuration = api_client.configuration
        # Through a proxy the client's own path goes on (its proxy handling is not redone here).
        proxied = bool(configuration.proxy) and not should_bypass_proxies(
            configuration.host, configuration.no_proxy or ""
        )
        self._lean = None if proxied else LeanTransport(configuration, self._calls, clock)
        # A followed log holds a thread while it waits for the next line: kept apart so that
        # log readers can never starve job dispatch.
        self._streams = ThreadPoolExecutor(LOG_STREAM_THREADS, thread_name_prefix="slimsched-kube-log")
        self._cronjob_path = _CRONJOB_PATHS[0]

    @classmethod
    def from_url(cls, url: str, namespace: str, call_threads: int = CALL_THREADS) -> KubeClient:
        """A client of a plain-HTTP API server without authentication (the emulator)."""
        configuration = k8s.Configuration()
        configuration.host = url.rstrip("/")
        return cls(k8s.ApiClient(configuration), namespace, call_threads)

    @classmethod
    def in_cluster(cls, namespace: str) -> KubeClient:
        """A client using the pod's service account."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise KubeError(f"cannot load the in-cluster configuration: {e}") from e
        return cls(k8s.ApiClient(configuration), namespace)

    @classmethod
    def from_kubeconfig(
        cls, path: str | None, namespace: str, call_threads: int = CALL_THREADS
    ) -> KubeClient:
        """A client of the current context of a kubeconfig file (None: the default location)."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=configuration
            )
        except (ConfigException, OSError) as e:
            raise KubeError(f"cannot load kubeconfig {path or '(default)'}: {e}") from e
        return cls(k8s.ApiClient(configuration), namespace, call_threads)

    @property
    def configuration(self) -> Any:
        """The official client's ``Configuration``: host, TLS, token (and its refresh hook)."""
        return self._api.configuration

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._streams.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._calls, fn)
        except ApiException as e:
            status = getattr(e, "status", None)
            raise KubeError(f"{what}: HTTP {status}: {_api_error_message(e)}", status=status) from e
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise KubeError(f"{what}: {type(e).__name__}: {e}") from e

    def _send(
        self,
        method: str,
        path: str,
        name: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        accept: str = "application/json",
    ) -> urllib3.BaseHTTPResponse:
        """One request, blocking: the unread response to a 2xx answer, else ``ApiException``."""
        path_params = {"namespace": self.namespace}
        if name is not None:
            path_params["name"] = name
        headers = {"Accept": accept}
        if body is not None:
            # The client adds no Content-Type by itself, and kube-apiserver refuses a body
            # without one (415).
            headers["Content-Type"] = "application/json"
        # The body is already plain JSON (built by jobmanifest): it is handed to the REST layer
        # as it is, not walked again by ``sanitize_for_serialization`` (27 -> 6 us for a Job).
        method, url, header_params, _, post_params = self._api.param_serialize(
            method=method,
            resource_path=path,
            path_params=path_params,
            query_params=list(query),
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        data = None if body is None else dict(body)
        response = self._api.call_api(method, url, header_params, data, post_params, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException(http_resp=response)
        raw: urllib3.BaseHTTPResponse = response.response
        return raw

    async def _json(
        self,
        what: str,
        method: str,
        path: str,
        name: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            response = self._send(method, path, name, query, body)
            try:
                data = orjson.loads(response.data)
            finally:
                response.release_conn()
            if not isinstance(data, dict):
                raise ValueError("the API server did not answer with a JSON object")
            return data

        return await self._run(what, call)

    async def _list(self, what: str, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query = [("limit", str(self.list_page_size))]
        if label_selector is not None:
            query.append(("labelSelector", label_selector))
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page_query = query + ([("continue", token)] if token else [])
            if self._lean is None:
                page = await self._json(what, "GET", path, query=page_query)
            else:
                page = await self._lean.get_object(what, path.format(namespace=self.namespace), page_query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items
        raise KubeError(f"{what}: more than {MAX_LIST_PAGES} pages")

    # --- jobs -------------------------------------------------------------------------------

    async def create_job(self, manifest: Mapping[str, Any]) -> bool:
        """Create a Job: True if created, False if one of that name already exists (HTTP 409)."""
        if self._lean is None:
            return await self.create_job_through_client(manifest)
        name = (manifest.get("metadata") or {}).get("name")
        path = _BATCH.format(namespace=self.namespace) + "/jobs"
        status, _ = await self._lean.request(
            f"create job {name}", "POST", path, body=orjson.dumps(manifest), also_ok=(409,)
        )
        return status != 409

    async def create_job_through_client(self, manifest: Mapping[str, Any]) -> bool:
        """``create_job`` through the official client's request path (a proxy; the benchmark's baseline)."""
        name = (manifest.get("metadata") or {}).get("name")
        try:
            await self._json(f"create job {name}", "POST", _BATCH + "/jobs", body=manifest)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def get_job(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._json(f"get job {name}", "GET", _BATCH + "/jobs/{name}", name)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    async def list_jobs(self, label_selector: str) -> list[dict[str, Any]]:
        return await self._list(f"list jobs {label_selector}", _BATCH + "/jobs", label_selector)

    async def delete_job(self, name: str) -> bool:
        """Delete a Job and (foreground) its pods: False if there was no such Job."""
        try:
            await self._json(
                f"delete job {name}",
                "DELETE",
                _BATCH + "/jobs/{name}",
                name,
                query=[("propagationPolicy", "Foreground")],
            )
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True

    # --- pods, workloads, cronjobs ----------------------------------------------------------

    async def list_pods(self, label_selector: str) -> list[dict[str, Any]]:
        return await self._list(f"list pods {label_selector}", _CORE + "/pods", label_selector)

    async def workload_ready(self, name: str) -> bool:
        """A Deployment (else a StatefulSet) ``name`` has all its replicas ready; missing: False."""
        for kind, resource in (("deployment", "deployments"), ("statefulset", "statefulsets")):
            try:
                obj = await self._json(f"get {kind} {name}", "GET", f"{_APPS}/{resource}/{{name}}", name)
            except KubeError as e:
                if e.status == 404:
                    continue
                raise
            wanted = (obj.get("spec") or {}).get("replicas")
            wanted = 1 if wanted is None else int(wanted)
            ready = int((obj.get("status") or {}).get("readyReplicas") or 0)
            return ready >= wanted
        return False

    async def list_cronjobs(self) -> list[dict[str, Any]]:
        """The namespace's CronJobs, from batch/v1 or, on a server without it, batch/v1beta1.

        The version that answered last is tried first; a 404 (the resource is not served: a
        list in a namespace never answers 404 otherwise) moves on to the other one.
        """
        last: KubeError | None = None
        for path in (self._cronjob_path, *(p for p in _CRONJOB_PATHS if p != self._cronjob_path)):
            try:
                items = await self._list(f"list cronjobs ({path.split('/')[3]})", path)
            except KubeError as e:
                if e.status != 404:
                    raise
                last = e
                continue
            self._cronjob_path = path
            return items
        assert last is not None
        raise last

    # --- logs -------------------------------------------------------------------------------

    def _open_log(
        self, pod_name: str, query: Sequence[tuple[str, str]], timeout: tuple[float, float]
    ) -> urllib3.BaseHTTPResponse:
        path = _CORE + "/pods/{name}/log"
        return self._send("GET", path, pod_name, query, timeout=timeout, accept=_LOG_ACCEPT)

    async def read_pod_log(self, pod_name: str, tail_lines: int | None = None) -> str:
        def call() -> str:
            query = [] if tail_lines is None else [("tailLines", str(tail_lines))]
            response = self._open_log(pod_name, query, REQUEST_TIMEOUT)
            try:
                return response.data.decode("utf-8", errors="replace")
            finally:
                response.release_conn()

        return await self._run(f"read log of pod {pod_name}", call)

    async def stream_pod_log(self, pod_name: str) -> AsyncGenerator[str, None]:
        """The pod's log lines (without their newline) as they are written, until the pod ends."""
        what = f"follow log of pod {pod_name}"
        response = await self._run(
            what, lambda: self._open_log(pod_name, [("follow", "true")], FOLLOW_TIMEOUT)
        )
        lines: Iterator[bytes] = iter(response)
        exhausted = False
        try:
            while True:
                line = await self._run(what, lambda: next(lines, None), self._streams)
                if line is None:
                    exhausted = True
                    return
                yield line.decode("utf-8", errors="replace").removesuffix("\n")
        finally:
            if exhausted:
                response.release_conn()
            else:
                # The consumer left early (or was cancelled) while a reader thread may still
                # be blocked on the socket: shutting it down wakes that thread; the half-read
                # connection is closed, never returned to the pool.
                response.shutdown()
                response.close()
