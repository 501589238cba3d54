"""The emulator's test hooks over HTTP, under ``/_emulator/`` (JSON), for tests in other processes.

Each hook calls one of ``Emulator``'s Python hooks; they are kept apart from the emulated API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web

from slimsched.emulator_http import json_response, not_found, opt_float, read_object, status
from slimsched.jobtimeline import Mode


class EmulatorHooks(Protocol):
    """What the HTTP hooks need of the emulator."""

    pending_seconds: float
    run_seconds: float

    def set_image_behaviour(
        self,
        image: str,
        mode: Mode | str,
        *,
        pending_seconds: float | None = None,
        run_seconds: float | None = None,
        log: Iterable[str] | None = None,
    ) -> Any: ...

    def set_timing(
        self, *, pending_seconds: float | None = None, run_seconds: float | None = None
    ) -> None: ...

    def set_workload(
        self, kind: str, name: str, *, replicas: int, ready_replicas: int, namespace: str = "default"
    ) -> dict[str, Any]: ...

    def put_cronjob(
        self, name: str, obj: Mapping[str, Any], *, namespace: str = "default"
    ) -> dict[str, Any]: ...

    def finish_job(self, name: str, *, succeeded: bool, namespace: str = "default") -> bool: ...

    def append_log(self, pod_name: str, lines: list[str], *, namespace: str = "default") -> bool: ...

    def creations(self) -> list[Any]: ...

    def job(self, name: str, *, namespace: str = "default") -> dict[str, Any] | None: ...


class _Hooks:
    def __init__(self, emulator: EmulatorHooks) -> None:
        self.emulator = emulator

    async def image(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            return status(400, "BadRequest", 'expected {"image": str, "mode": str}')
        log = body.get("log")
        if log is not None and not (isinstance(log, list) and all(isinstance(x, str) for x in log)):
            return status(400, "BadRequest", "log must be a list of strings")
        try:
            behaviour = self.emulator.set_image_behaviour(
                body["image"],
                str(body.get("mode", Mode.SUCCEED)),
                pending_seconds=opt_float(body.get("pendingSeconds")),
                run_seconds=opt_float(body.get("runSeconds")),
                log=log,
            )
        except ValueError as e:
            return status(400, "BadRequest", str(e))
        return json_response({"image": body["image"], "mode": behaviour.mode.value})

    async def timing(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        if not isinstance(body, dict):
            return status(400, "BadRequest", "expected a JSON object")
        try:
            self.emulator.set_timing(
                pending_seconds=opt_float(body.get("pendingSeconds")),
                run_seconds=opt_float(body.get("runSeconds")),
            )
        except (TypeError, ValueError) as e:
            return status(400, "BadRequest", str(e))
        return json_response(
            {"pendingSeconds": self.emulator.pending_seconds, "runSeconds": self.emulator.run_seconds}
        )

    async def workload(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        if not isinstance(body, dict):
            return status(400, "BadRequest", "expected a JSON object")
        replicas, ready = body.get("replicas", 1), body.get("readyReplicas", 0)
        if not isinstance(replicas, int) or not isinstance(ready, int):
            return status(400, "BadRequest", "replicas and readyReplicas must be integers")
        obj = self.emulator.set_workload(
            request.match_info["resource"],
            request.match_info["name"],
            replicas=replicas,
            ready_replicas=ready,
            namespace=request.match_info["ns"],
        )
        return json_response(obj)

    async def cronjob(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        if not isinstance(body, dict):
            return status(400, "BadRequest", "expected a JSON object")
        return json_response(
            self.emulator.put_cronjob(request.match_info["name"], body, namespace=request.match_info["ns"])
        )

    async def finish(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        succeeded = bool(body.get("succeeded", True)) if isinstance(body, dict) else True
        ns, name = request.match_info["ns"], request.match_info["name"]
        if not self.emulator.finish_job(name, succeeded=succeeded, namespace=ns):
            return status(404, "NotFound", f'no unfinished job "{name}"')
        return json_response(self.emulator.job(name, namespace=ns))

    async def log(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        lines = body.get("lines") if isinstance(body, dict) else None
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            return status(400, "BadRequest", 'expected {"lines": [str, ...]}')
        if not self.emulator.append_log(
            request.match_info["name"], lines, namespace=request.match_info["ns"]
        ):
            return not_found("pods", request.match_info["name"])
        return json_response({"appended": len(lines)})

    async def creations(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "items": [
                    {
                        "namespace": c.namespace,
                        "name": c.name,
                        "outcome": c.outcome,
                        "at": c.at,
                        "atUnix": c.at_unix,
                    }
                    for c in self.emulator.creations()
                ]
            }
        )


def add_hook_routes(app: web.Application, emulator: EmulatorHooks) -> None:
    hooks, at = _Hooks(emulator), "/_emulator"
    app.router.add_put(f"{at}/images", hooks.image)
    app.router.add_put(f"{at}/timing", hooks.timing)
    app.router.add_put(
        f"{at}/namespaces/{{ns}}/{{resource:deployments|statefulsets}}/{{name}}", hooks.workload
    )
    app.router.add_put(f"{at}/namespaces/{{ns}}/cronjobs/{{name}}", hooks.cronjob)
    app.router.add_post(f"{at}/namespaces/{{ns}}/jobs/{{name}}/finish", hooks.finish)
    app.router.add_post(f"{at}/namespaces/{{ns}}/pods/{{name}}/log", hooks.log)
    app.router.add_get(f"{at}/creations", hooks.creations)
