"""A small Kubernetes API server, over real HTTP, for tests and ``slimsched local``.

slimsched's dispatch code must be exercised through the same official client it uses against
a real cluster, so this emulator speaks the Kubernetes REST paths and JSON shapes that client
needs (batch/v1 Jobs and CronJobs, core/v1 Pods and pod logs, apps/v1 Deployments and
StatefulSets) and answers errors with ``Status`` objects (404 NotFound, 409 AlreadyExists...).

The objects and the job controller behind it are ``simcluster.SimCluster``'s.

Test hooks live under ``/_emulator/`` (JSON) and as methods of ``Emulator``; the creation log
records every create attempt so a test can prove that no Job name was created twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from slimsched.emulator_hooks import add_hook_routes
from slimsched.emulator_http import (
    API_MEDIA_TYPES,
    BadContinue,
    accepts_api_media_type,
    json_response,
    list_response,
    not_found,
    page,
    read_object,
    status,
)
from slimsched.labelselector import SelectorError, parse_label_selector, selector_matches
from slimsched.simcluster import DEFAULT_PENDING_SECONDS, DEFAULT_RUN_SECONDS, SimCluster, SimPod

T = TypeVar("T")

STOP_DEADLINE_SECONDS = 2.0
FOLLOW_LIMIT_SECONDS = 600.0
FOLLOW_WAKE_SECONDS = 1.0
MAX_BODY_BYTES = 4 * 1024 * 1024
# kube-apiserver's limit on a request's line and headers (Go's http.Server.MaxHeaderBytes): a
# label selector naming a hundred runs makes a URL of ~7 KiB, near aiohttp's default of 8190.
MAX_HEADER_BYTES = 1 << 20


class Emulator(SimCluster):
    """The emulated API server in front of a ``SimCluster``."""

    def __init__(
        self,
        *,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        run_seconds: float = DEFAULT_RUN_SECONDS,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        cronjob_versions: tuple[str, ...] = ("v1",),
    ) -> None:
        super().__init__(
            pending_seconds=pending_seconds,
            run_seconds=run_seconds,
            clock=clock,
            seed=seed,
            cronjob_versions=cronjob_versions,
        )
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self._stopping = False
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            shutdown_timeout=STOP_DEADLINE_SECONDS,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        sockets = runner.addresses
        bound_port = sockets[0][1]
        self.url = f"http://{host}:{bound_port}"
        self._controller = asyncio.create_task(self._control_loop(), name="emulator-job-controller")
        return self.url

    async def stop(self) -> None:
        """Stop the controller, end every log stream, close the server; bounded by a deadline."""
        self._stopping = True
        self._wake.set()
        self._notify()
        task, self._controller = self._controller, None
        if task is not None:
            with contextlib.suppress(TimeoutError):  # wait_for then has cancelled it
                await asyncio.wait_for(task, STOP_DEADLINE_SECONDS)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- HTTP -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        batch = "/apis/batch/v1/namespaces/{ns}"
        core = "/api/v1/namespaces/{ns}"
        apps = "/apis/apps/v1/namespaces/{ns}"
        app.router.add_post(f"{batch}/jobs", self._h_create_job)
        app.router.add_get(f"{batch}/jobs", self._h_list_jobs)
        app.router.add_get(f"{batch}/jobs/{{name}}", self._h_get_job)
        app.router.add_delete(f"{batch}/jobs/{{name}}", self._h_delete_job)
        for version in self.cronjob_versions:  # a version not served answers 404, as the API server
            cronjobs = f"/apis/batch/{version}/namespaces/{{ns}}/cronjobs"
            app.router.add_get(cronjobs, functools.partial(self._h_list_cronjobs, version))
            app.router.add_get(f"{cronjobs}/{{name}}", functools.partial(self._h_get_cronjob, version))
        app.router.add_get(f"{core}/pods", self._h_list_pods)
        app.router.add_get(f"{core}/pods/{{name}}", self._h_get_pod)
        app.router.add_get(f"{core}/pods/{{name}}/log", self._h_pod_log)
        app.router.add_get(f"{apps}/{{resource:deployments|statefulsets}}/{{name}}", self._h_get_workload)
        add_hook_routes(app, self)
        app.router.add_route("*", "/{tail:.*}", self._h_unknown)
        return app

    async def _h_unknown(self, request: web.Request) -> web.Response:
        return status(404, "NotFound", "the server could not find the requested resource")

    async def _h_create_job(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            # As kube-apiserver since 1.2: a body without a JSON (or YAML) Content-Type is refused.
            return status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        body = await read_object(request)
        if not isinstance(body, dict):
            return status(400, "BadRequest", "the request body is not a JSON object")
        return self._create_job(request.match_info["ns"], body)

    async def _h_list_jobs(self, request: web.Request) -> web.Response:
        return self._filtered("JobList", "batch/v1", request, ((k, sim.obj) for k, sim in self._jobs.items()))

    async def _h_get_job(self, request: web.Request) -> web.Response:
        sim = self._jobs.get((request.match_info["ns"], request.match_info["name"]))
        if sim is None:
            return not_found("jobs.batch", request.match_info["name"])
        return json_response(sim.obj)

    async def _h_delete_job(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        policy = request.query.get("propagationPolicy")
        if request.can_read_body:
            options = await read_object(request)
            if isinstance(options, dict) and options.get("propagationPolicy"):
                policy = str(options["propagationPolicy"])
        if policy not in (None, "Orphan", "Background", "Foreground"):
            return status(400, "BadRequest", f"unsupported propagationPolicy {policy!r}")
        sim = self._jobs.pop((ns, name), None)
        if sim is None:
            return not_found("jobs.batch", name)
        pod_key = (ns, sim.pod.obj["metadata"]["name"])
        if policy in ("Background", "Foreground"):
            self._pods.pop(pod_key, None)
        else:  # batch/v1 Jobs orphan their pods unless told otherwise
            sim.pod.obj["metadata"].pop("ownerReferences", None)
        self._notify()
        return json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": "batch",
                    "kind": "jobs",
                    "uid": sim.obj["metadata"]["uid"],
                },
            }
        )

    async def _h_list_cronjobs(self, version: str, request: web.Request) -> web.Response:
        items = ((k, {**obj, "apiVersion": f"batch/{version}"}) for k, obj in self._cronjobs.items())
        return self._filtered("CronJobList", f"batch/{version}", request, items)

    async def _h_get_cronjob(self, version: str, request: web.Request) -> web.Response:
        obj = self._cronjobs.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return not_found("cronjobs.batch", request.match_info["name"])
        return json_response({**obj, "apiVersion": f"batch/{version}"})

    async def _h_list_pods(self, request: web.Request) -> web.Response:
        return self._filtered("PodList", "v1", request, ((k, p.obj) for k, p in self._pods.items()))

    async def _h_get_pod(self, request: web.Request) -> web.Response:
        pod = self._pods.get((request.match_info["ns"], request.match_info["name"]))
        if pod is None:
            return not_found("pods", request.match_info["name"])
        return json_response(pod.obj)

    async def _h_get_workload(self, request: web.Request) -> web.Response:
        resource, name = request.match_info["resource"], request.match_info["name"]
        obj = self._workloads.get((resource, request.match_info["ns"], name))
        if obj is None:
            return not_found(f"{resource}.apps", name)
        return json_response(obj)

    def _filtered(
        self,
        kind: str,
        api_version: str,
        request: web.Request,
        objects: Iterable[tuple[tuple[str, str], dict[str, Any]]],
    ) -> web.Response:
        ns = request.match_info["ns"]
        try:
            reqs = parse_label_selector(request.query.get("labelSelector", ""))
        except SelectorError as e:
            return status(400, "BadRequest", str(e))
        # As the API server, a list names the kind once: its items carry no apiVersion and kind.
        items = [
            {k: v for k, v in obj.items() if k not in _LIST_ITEM_OMITS}
            for (obj_ns, _), obj in objects
            if obj_ns == ns and selector_matches(obj["metadata"].get("labels") or {}, reqs)
        ]
        try:
            query = request.query
            items, metadata = page(
                items, query.get("limit"), query.get("continue"), next(self._rv), selected=bool(reqs)
            )
        except BadContinue as e:
            return status(400, "BadRequest", str(e))
        return list_response(kind, api_version, items, metadata)

    async def _h_pod_log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if not accepts_api_media_type(request.headers.get("Accept", "")):
            # kube-apiserver negotiates a log like any answer, among its serializers only: a
            # client asking for text/plain gets 406 although the log is sent as text/plain.
            return status(
                406,
                "NotAcceptable",
                "only the following media types are accepted: " + ", ".join(API_MEDIA_TYPES),
            )
        pod = self._pods.get((ns, name))
        if pod is None:
            return not_found("pods", name)
        container = pod.obj["spec"]["containers"][0]["name"]
        if request.query.get("container") not in (None, container):
            return status(
                400, "BadRequest", f"container {request.query['container']} is not valid for pod {name}"
            )
        if not pod.started:
            waiting = pod.obj["status"]["containerStatuses"][0]["state"].get("waiting") or {}
            return status(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: '
                f"{waiting.get('reason', 'ContainerCreating')}",
            )
        try:
            tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
        except ValueError:
            return status(400, "BadRequest", "tailLines must be an integer")
        lines = pod.log if tail is None else pod.log[max(0, len(pod.log) - tail) :] if tail > 0 else []
        if request.query.get("follow") != "true":
            return web.Response(text="".join(f"{line}\n" for line in lines), content_type="text/plain")

        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await self._follow(response, ns, pod, lines)
        except ConnectionResetError:
            return response  # the reader went away
        await response.write_eof()
        return response

    async def _follow(self, response: web.StreamResponse, ns: str, pod: SimPod, lines: list[str]) -> None:
        """Write ``lines``, then every new line, until the pod ends or goes, or the emulator stops."""
        if lines:
            await response.write("".join(f"{line}\n" for line in lines).encode())
        sent = len(pod.log)
        give_up = time.monotonic() + FOLLOW_LIMIT_SECONDS
        while not self._stopping and time.monotonic() < give_up:
            changed = self._changed
            if sent < len(pod.log):
                chunk, sent = pod.log[sent:], len(pod.log)
                await response.write("".join(f"{line}\n" for line in chunk).encode())
                continue
            if pod.finished or self._pods.get((ns, pod.obj["metadata"]["name"])) is not pod:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), FOLLOW_WAKE_SECONDS)


_LIST_ITEM_OMITS = frozenset({"apiVersion", "kind"})


class EmulatorThread:
    """An ``Emulator`` on its own event loop in a daemon thread, for synchronous code.

    ``with EmulatorThread() as url:`` serves until the block ends. ``call(fn)`` runs
    ``fn(emulator)`` on the emulator's loop (its hooks are not thread-safe) and returns the result.
    """

    def __init__(self, **emulator_args: Any) -> None:
        self._args = emulator_args
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: Emulator | None = None
        self.url: str | None = None

    def __enter__(self) -> str:
        loop = asyncio.new_event_loop()
        started: Future[str] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._emulator = Emulator(**self._args)
                started.set_result(loop.run_until_complete(self._emulator.start()))
            except BaseException as e:
                started.set_exception(e)
                loop.close()
                return
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="slimsched-emulator", daemon=True)
        self._thread.start()
        self.url = started.result(timeout=10)
        return self.url

    def __exit__(self, *exc: object) -> None:
        loop, thread, emulator = self._loop, self._thread, self._emulator
        if loop is None or thread is None or emulator is None:
            return
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=STOP_DEADLINE_SECONDS * 3)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=STOP_DEADLINE_SECONDS)
        self._loop = self._thread = self._emulator = None

    def call(self, fn: Callable[[Emulator], T]) -> T:
        loop, emulator = self._loop, self._emulator
        if loop is None or emulator is None:
            raise RuntimeError("emulator thread not running")

        async def invoke() -> T:
            return fn(emulator)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout=10)


async def _serve(port: int, pending_seconds: float, run_seconds: float) -> None:
    emulator = Emulator(pending_seconds=pending_seconds, run_seconds=run_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(await emulator.start("127.0.0.1", port), flush=True)
    try:
        await stop.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m slimsched.emulator", description="Kubernetes API emulator on 127.0.0.1 (no auth)."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pending-seconds", type=float, default=DEFAULT_PENDING_SECONDS)
    parser.add_argument("--run-seconds", type=float, default=DEFAULT_RUN_SECONDS)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.pending_seconds, args.run_seconds))


if __name__ == "__main__":
    main()
