"""The cluster the emulator simulates: its objects, its job controller, and hooks to steer them.

A simulated job controller runs each Job with one pod: Pending for ``pending_seconds``, Running
for ``run_seconds``, then Succeeded, unless the image was told to fail, to sit in
ImagePullBackOff or to hang, or ``activeDeadlineSeconds`` runs out first. The phase of a job is
a pure function of its plan and the time (``jobtimeline.phase_at``); the controller only sleeps
until the next transition and is woken by new jobs, so an idle emulator costs nothing. The API
server in front of it is ``emulator.Emulator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import heapq
import itertools
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from slimsched.emulator_http import json_response, status
from slimsched.jobtimeline import JobPlan, Mode, Phase, PhaseAt, timeline

DEFAULT_PENDING_SECONDS = 0.2
DEFAULT_RUN_SECONDS = 0.5
POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

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
class SimPod:
    obj: dict[str, Any]
    log: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.obj["status"].get("phase") in ("Succeeded", "Failed")

    @property
    def started(self) -> bool:
        return bool(self.log) or self.obj["status"].get("phase") != "Pending"


@dataclass
class SimJob:
    obj: dict[str, Any]
    plan: JobPlan
    pod: SimPod
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


class SimCluster:
    """The simulated objects and job controller, on one asyncio loop (no HTTP)."""

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
        self._jobs: dict[tuple[str, str], SimJob] = {}
        self._due: list[tuple[float, int, tuple[str, str], SimJob]] = []  # (next change, seq, key, job)
        self._seq = itertools.count()
        self._pods: dict[tuple[str, str], SimPod] = {}
        self._workloads: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._images: dict[str, ImageBehaviour] = {}
        self._creations: list[CreateAttempt] = []
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopping = False
        self._controller: asyncio.Task[None] | None = None

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

    def _advance(self, key: tuple[str, str], sim: SimJob, now: float) -> None:
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

    def _transition(self, sim: SimJob, at: PhaseAt) -> None:
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
        sim = SimJob(job, plan, SimPod(pod), behaviour.log)
        self._jobs[(namespace, name)] = sim
        self._pods[(namespace, pod_name)] = sim.pod
        self._creations.append(CreateAttempt(namespace, name, "created", ts, now))
        self._advance((namespace, name), sim, now)
        self._step(now)
        self._wake.set()
        return json_response(job, status=201)


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
