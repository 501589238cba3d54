"""A small Kubernetes API server, over real HTTP, for tests and ``slimsched local``.

slimsched's dispatch code must be exercised through the same official client it uses against
a real cluster, so this emulator speaks the Kubernetes REST paths and JSON shapes that client
needs (batch/v1 Jobs and CronJobs, core/v1 Pods and pod logs, apps/v1 Deployments and
StatefulSets) and answers errors with ``Status`` objects (404 NotFound, 409 AlreadyExists...).

A simulated job controller runs each Job with one pod: Pending for ``pending_seconds``, Running
for ``run_seconds``, then Succeeded, unless the image was told to fail, to sit in
ImagePullBackOff or to hang, or ``activeDeadlineSeconds`` runs out first. The phase of a job is
a pure function of its plan and the time (``phase_at``); the controller only sleeps until the
next transition and is woken by new jobs, so an idle emulator costs nothing.

Test hooks live under ``/_emulator/`` (JSON) and as methods of ``Emulator``; the creation log
records every create attempt so a test can prove that no Job name was created twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import heapq
import itertools
import math
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from slimsched.emulator_hooks import add_hook_routes
from slimsched.emulator_http import (
    API_MEDIA_TYPES,
    accepts_api_media_type,
    json_response,
    list_response,
    not_found,
    read_object,
    status,
)
from slimsched.jobtimeline import JobPlan, Mode, Phase, PhaseAt, timeline
from slimsched.labelselector import SelectorError, parse_label_selector, selector_matches

T = TypeVar("T")

DEFAULT_PENDING_SECONDS = 0.2
DEFAULT_RUN_SECONDS = 0.5
STOP_DEADLINE_SECONDS = 2.0
FOLLOW_LIMIT_SECONDS = 600.0
FOLLOW_WAKE_SECONDS = 1.0
POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_BODY_BYTES = 4 * 1024 * 1024

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def rfc3339(t: float) -> str:
    """A Kubernetes ``metav1.Time``: UTC, whole seconds, ``Z``."""
    return _rfc3339_second(math.floor(t))


@functools.lru_cache(maxsize=16)  # a create stamps the same second 3 times, a burst hundreds
def _rfc3339_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- in-memory objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateAttempt:
    namespace: str
    name: str
    outcome: str  # "created", "conflict" or "invalid"
    at: str
    at_unix: float = 0.0  # the same instant, not rounded to the second (benchmarks measure lateness)


@dataclass(frozen=True)
class ImageBehaviour:
    mode: Mode = Mode.SUCCEED
    pending_seconds: float | None = None
    run_seconds: float | None = None
    # What the container prints when it starts; None: the emulator's own start and exit lines.
    log: tuple[str, ...] | None = None


@dataclass
class _Pod:
    obj: dict[str, Any]
    log: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.obj["status"].get("phase") in ("Succeeded", "Failed")

    @property
    def started(self) -> bool:
        return bool(self.log) or self.obj["status"].get("phase") != "Pending"


@dataclass
class _SimJob:
    obj: dict[str, Any]
    plan: JobPlan
    pod: _Pod
    script: tuple[str, ...] | None = None  # ImageBehaviour.log
    applied: int = 1  # how many entries of the timeline have been applied
    phase: Phase = Phase.PENDING
    finished_at: float | None = None
    _timeline: tuple[JobPlan, list[PhaseAt]] | None = None

    def timeline(self) -> list[PhaseAt]:
        """``timeline(self.plan)``, computed again only when the plan is replaced (finish_job)."""
        if self._timeline is None or self._timeline[0] is not self.plan:
            self._timeline = (self.plan, timeline(self.plan))
        return self._timeline[1]


class Emulator:
    """The emulated API server and its job controller, on one asyncio loop."""

    def __init__(
        self,
        *,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        run_seconds: float = DEFAULT_RUN_SECONDS,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        cronjob_versions: tuple[str, ...] = ("v1",),
    ) -> None:
        """``cronjob_versions``: the batch versions CronJobs are served in (Kubernetes 1.20 serves
        only v1beta1, 1.21 to 1.24 both, 1.25 on only v1); the first one is their storage version."""
        if not cronjob_versions or set(cronjob_versions) - {"v1", "v1beta1"}:
            raise ValueError(f"cronjob_versions must be some of v1 and v1beta1, not {cronjob_versions!r}")
        self.cronjob_versions = cronjob_versions
        self.pending_seconds = pending_seconds
        self.run_seconds = run_seconds
        self._clock = clock
        self._random = random.Random(seed)
        self._rv = itertools.count(1)
        self._jobs: dict[tuple[str, str], _SimJob] = {}
        self._due: list[tuple[float, int, tuple[str, str], _SimJob]] = []  # (next change, seq, key, job)
        self._seq = itertools.count()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._workloads: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._images: dict[str, ImageBehaviour] = {}
        self._creations: list[CreateAttempt] = []
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopping = False
        self._controller: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self._stopping = False
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=STOP_DEADLINE_SECONDS)
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

    # --- test hooks (Python) ----------------------------------------------------------------

    def set_image_behaviour(
        self,
        image: str,
        mode: Mode | str,
        *,
        pending_seconds: float | None = None,
        run_seconds: float | None = None,
        log: Iterable[str] | None = None,
    ) -> ImageBehaviour:
        """What Jobs created from now on with ``image`` do (jobs already created keep their plan).

        ``log``: the lines its container prints as it starts (else the emulator's own lines).
        """
        behaviour = ImageBehaviour(
            Mode(mode), pending_seconds, run_seconds, None if log is None else tuple(log)
        )
        self._images[image] = behaviour
        return behaviour

    def set_timing(self, *, pending_seconds: float | None = None, run_seconds: float | None = None) -> None:
        if pending_seconds is not None:
            self.pending_seconds = pending_seconds
        if run_seconds is not None:
            self.run_seconds = run_seconds

    def set_workload(
        self, kind: str, name: str, *, replicas: int, ready_replicas: int, namespace: str = "default"
    ) -> dict[str, Any]:
        """Create or update a Deployment or StatefulSet with these replica counts."""
        resource = {"deployment": "deployments", "statefulset": "statefulsets"}.get(kind.lower().rstrip("s"))
        if resource is None:
            raise ValueError(f"unknown workload kind {kind!r}")
        key = (resource, namespace, name)
        obj = self._workloads.get(key)
        if obj is None:
            obj = {
                "apiVersion": "apps/v1",
                "kind": "Deployment" if resource == "deployments" else "StatefulSet",
                "metadata": self._new_meta(namespace, name, {"app": name}),
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
                "status": {},
            }
            self._workloads[key] = obj
        obj["spec"]["replicas"] = replicas
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        obj["status"] = {
            "replicas": replicas,
            "readyReplicas": ready_replicas,
            "availableReplicas": ready_replicas,
            "observedGeneration": 1,
        }
        if ready_replicas == 0:
            del obj["status"]["readyReplicas"]  # the API server omits zero counts
            del obj["status"]["availableReplicas"]
        return copy.deepcopy(obj)

    def put_cronjob(self, name: str, obj: Mapping[str, Any], *, namespace: str = "default") -> dict[str, Any]:
        """Create or replace a CronJob; ``obj`` may hold metadata (labels, annotations) and spec."""
        meta_in = dict(obj.get("metadata") or {})
        meta = self._new_meta(namespace, name, dict(meta_in.get("labels") or {}))
        if meta_in.get("annotations"):
            meta["annotations"] = dict(meta_in["annotations"])
        cronjob = {
            "apiVersion": f"batch/{self.cronjob_versions[0]}",
            "kind": "CronJob",
            "metadata": meta,
            "spec": copy.deepcopy(dict(obj.get("spec") or {})),
            "status": {},
        }
        self._cronjobs[(namespace, name)] = cronjob
        return copy.deepcopy(cronjob)

    def job(self, name: str, *, namespace: str = "default") -> dict[str, Any] | None:
        """The Job object as the API would show it (a copy), or None."""
        sim = self._jobs.get((namespace, name))
        return None if sim is None else _json_copy(sim.obj)

    def creations(self) -> list[CreateAttempt]:
        return list(self._creations)

    def finish_job(self, name: str, *, succeeded: bool, namespace: str = "default") -> bool:
        """End a job now (useful with images in the ``hang`` mode); False if unknown or finished."""
        sim = self._jobs.get((namespace, name))
        if sim is None or sim.phase.finished:
            return False
        now = max(self._clock(), sim.timeline()[sim.applied - 1].since)
        sim.plan = replace(sim.plan, forced_at=now, forced_success=succeeded)
        self._advance((namespace, name), sim, now)
        self._step(now)
        self._wake.set()
        return True

    def append_log(self, pod_name: str, lines: list[str], *, namespace: str = "default") -> bool:
        pod = self._pods.get((namespace, pod_name))
        if pod is None:
            return False
        pod.log.extend(lines)
        self._notify()
        return True

    # --- the job controller -----------------------------------------------------------------

    async def _control_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            next_change = self._step(self._clock())
            timeout = None if next_change is None else max(0.0, next_change - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _step(self, now: float) -> float | None:
        """Apply every transition due at ``now``, in order; return the time of the next one.

        A finished Job with ``ttlSecondsAfterFinished`` is deleted with its pod once the TTL has
        passed, as Kubernetes' TTL controller does, so listings do not grow without end. Jobs
        wait in a heap keyed by their next change, so a step costs what is due, not every Job
        kept (a burst of creates was quadratic).
        """
        while self._due and self._due[0][0] <= now:
            _, _, key, sim = heapq.heappop(self._due)
            if self._jobs.get(key) is not sim:
                continue  # deleted, or replaced by a Job of the same name
            self._advance(key, sim, now)
        return self._due[0][0] if self._due else None

    def _advance(self, key: tuple[str, str], sim: _SimJob, now: float) -> None:
        """Apply what is due for one Job at ``now`` and queue it for its next change."""
        next_change: float | None = None
        if not sim.phase.finished:
            events = sim.timeline()
            for event in events[sim.applied :]:
                if event.since > now:
                    next_change = event.since
                    break
                self._transition(sim, event)
                sim.applied += 1
                if sim.phase.finished:
                    sim.finished_at = event.since
                    break
        if sim.phase.finished:
            ttl = sim.obj["spec"].get("ttlSecondsAfterFinished")
            if ttl is None or sim.finished_at is None:
                return
            due = sim.finished_at + float(ttl)
            if due <= now:
                del self._jobs[key]
                self._pods.pop((key[0], sim.pod.obj["metadata"]["name"]), None)
                return
            next_change = due
        if next_change is not None:
            heapq.heappush(self._due, (next_change, next(self._seq), key, sim))

    def _transition(self, sim: _SimJob, at: PhaseAt) -> None:
        ts = rfc3339(at.since)
        job, pod = sim.obj, sim.pod.obj
        container = job["spec"]["template"]["spec"]["containers"][0]
        cstatus = pod["status"]["containerStatuses"][0]
        was_running = sim.phase is Phase.RUNNING
        sim.phase = at.phase
        job["metadata"]["resourceVersion"] = str(next(self._rv))
        pod["metadata"]["resourceVersion"] = str(next(self._rv))
        if at.phase is Phase.IMAGE_PULL_BACK_OFF:
            cstatus["state"] = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{container["image"]}"',
                }
            }
        elif at.phase is Phase.RUNNING:
            job["status"]["ready"] = 1
            pod["status"].update(phase="Running", startTime=ts)
            pod["status"]["conditions"] = [
                {"type": t, "status": "True", "lastTransitionTime": ts}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ]
            cstatus.update(ready=True, started=True, state={"running": {"startedAt": ts}})
            if sim.script is not None:
                sim.pod.log.extend(sim.script)
                self._notify()
                return
            args = " ".join(container.get("args") or [])
            sim.pod.log.append(
                f"emulator: container {container['name']} started, image {container['image']}"
                + (f", args {args}" if args else "")
            )
        elif at.phase.finished:
            exit_code = self._finish(job, pod, at, ts)
            if was_running and sim.script is None:
                sim.pod.log.append(f"emulator: container {container['name']} exited with code {exit_code}")
        self._notify()

    @staticmethod
    def _finish(job: dict[str, Any], pod: dict[str, Any], at: PhaseAt, ts: str) -> int:
        """Write the end of a job into the Job and its pod, as the job controller does; the exit code."""
        ok = at.phase is Phase.SUCCEEDED
        status = job["status"]
        status.pop("active", None)
        status["ready"] = 0
        if ok:
            status["succeeded"] = job["spec"].get("completions") or 1
            status["completionTime"] = ts
            reason, message = "CompletionsReached", "Reached expected number of succeeded pods"
            types = ("SuccessCriteriaMet", "Complete")
        else:
            status["failed"] = 1
            reason = str(at.reason)
            message = (
                "Job was active longer than specified deadline"
                if reason == "DeadlineExceeded"
                else "Job has reached the specified backoff limit"
            )
            types = ("FailureTarget", "Failed")
        status.setdefault("conditions", []).extend(
            {
                "type": t,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": ts,
                "lastTransitionTime": ts,
            }
            for t in types
        )

        exit_code = 0 if ok else (137 if at.reason == "DeadlineExceeded" else 1)
        pod["status"]["phase"] = "Succeeded" if ok else "Failed"
        if at.reason == "DeadlineExceeded":
            pod["status"]["reason"] = "DeadlineExceeded"
        cstatus = pod["status"]["containerStatuses"][0]
        started_at = cstatus["state"].get("running", {}).get("startedAt", ts)
        cstatus.update(
            ready=False,
            started=False,
            state={
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if ok else "Error",
                    "startedAt": started_at,
                    "finishedAt": ts,
                }
            },
        )
        for cond in pod["status"].get("conditions") or ():
            if cond["type"] in ("Ready", "ContainersReady"):
                cond.update(status="False", lastTransitionTime=ts, reason="PodCompleted")
        return exit_code

    def _notify(self) -> None:
        """Wake everything waiting for a change (log followers)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- object helpers ---------------------------------------------------------------------

    def _new_meta(self, namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.UUID(int=self._random.getrandbits(128), version=4)),
            "resourceVersion": str(next(self._rv)),
            "generation": 1,
            "creationTimestamp": rfc3339(self._clock()),
            "labels": labels,
        }

    def _pod_suffix(self) -> str:
        return "".join(self._random.choice(POD_SUFFIX_ALPHABET) for _ in range(5))

    def _create_job(self, namespace: str, body: dict[str, Any]) -> web.Response:
        """Create a Job from ``body``, which it takes over (parsed from the request, not copied)."""
        now = self._clock()
        ts = rfc3339(now)
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        problem = _job_problem(body)
        if problem is not None:
            self._creations.append(CreateAttempt(namespace, name, "invalid", ts))
            return status(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: {problem}',
                {"name": name, "group": "batch", "kind": "Job"},
            )
        if meta.get("namespace") not in (None, "", namespace):
            return status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if (namespace, name) in self._jobs:
            self._creations.append(CreateAttempt(namespace, name, "conflict", ts))
            return status(
                409,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                {"name": name, "group": "batch", "kind": "jobs"},
            )

        job = body
        job["apiVersion"], job["kind"] = "batch/v1", "Job"
        new_meta = self._new_meta(namespace, name, dict(meta.get("labels") or {}))
        uid = new_meta["uid"]
        controller_labels = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        new_meta["labels"] = {**new_meta["labels"], **controller_labels}
        if meta.get("annotations"):
            new_meta["annotations"] = dict(meta["annotations"])
        job["metadata"] = new_meta
        spec = job["spec"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template = spec["template"]
        template["metadata"] = template.get("metadata") or {}
        template["metadata"]["labels"] = {**(template["metadata"].get("labels") or {}), **controller_labels}
        job["status"] = {"startTime": ts, "active": 1, "ready": 0, "uncountedTerminatedPods": {}}

        pod_name = f"{name}-{self._pod_suffix()}"
        container = template["spec"]["containers"][0]
        pod_meta = self._new_meta(namespace, pod_name, dict(template["metadata"]["labels"]))
        pod_meta["generateName"] = f"{name}-"
        if template["metadata"].get("annotations"):
            pod_meta["annotations"] = dict(template["metadata"]["annotations"])
        pod_meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": pod_meta,
            "spec": {**_json_copy(template["spec"]), "nodeName": "emulator-node"},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": ts}],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
        }
        behaviour = self._images.get(container["image"], ImageBehaviour())
        deadline = spec.get("activeDeadlineSeconds")
        plan = JobPlan(
            created_at=now,
            mode=behaviour.mode,
            pending_seconds=_first(behaviour.pending_seconds, self.pending_seconds),
            run_seconds=_first(behaviour.run_seconds, self.run_seconds),
            active_deadline_seconds=int(deadline) if deadline is not None else None,
        )
        sim = _SimJob(job, plan, _Pod(pod), behaviour.log)
        self._jobs[(namespace, name)] = sim
        self._pods[(namespace, pod_name)] = sim.pod
        self._creations.append(CreateAttempt(namespace, name, "created", ts, now))
        self._advance((namespace, name), sim, now)
        self._step(now)
        self._wake.set()
        return json_response(job, status=201)

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
        return list_response(kind, api_version, items, next(self._rv))

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

    async def _follow(self, response: web.StreamResponse, ns: str, pod: _Pod, lines: list[str]) -> None:
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


def _job_problem(body: Mapping[str, Any]) -> str | None:
    """Why the API server would reject this Job (the checks the emulator cares about), or None."""
    if body.get("kind") not in (None, "Job") or body.get("apiVersion") not in (None, "batch/v1"):
        return "kind must be Job in batch/v1"
    name = (body.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        return "metadata.name: Required value"
    if len(name) > 63 or _DNS_LABEL.fullmatch(name) is None:
        return f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label of at most 63 characters"
    pod_spec = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "spec.template.spec.containers: Required value"
    for c in containers:
        if not isinstance(c, dict) or not c.get("name") or not c.get("image"):
            return "spec.template.spec.containers: name and image are required"
    deadline = (body.get("spec") or {}).get("activeDeadlineSeconds")
    if deadline is not None and (type(deadline) is not int or deadline <= 0):
        return f"spec.activeDeadlineSeconds: Invalid value: {deadline!r}: must be greater than 0"
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        return 'spec.template.spec.restartPolicy: Unsupported value: supported values: "OnFailure", "Never"'
    return None


def _json_copy(obj: Any) -> Any:
    """A deep copy of plain JSON data (several times faster than ``copy.deepcopy``)."""
    return orjson.loads(orjson.dumps(obj))


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


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
