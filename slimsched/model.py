"""The data slimsched replicates: schedules, runs and their job specs, as frozen dataclasses.

Everything here is a value: no I/O, no clock. Times are integers (milliseconds since the epoch
for events, whole seconds for cron ticks) put in by whoever proposes a command, so that
applying the same commands always gives the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class KeyRef:
    """A key of a Secret or ConfigMap (``secretKeyRef`` / ``configMapKeyRef``)."""

    name: str
    key: str


@dataclass(frozen=True)
class ResourceFieldRef:
    resource: str
    container_name: str | None = None
    divisor: str | None = None


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: a literal value or exactly one reference."""

    name: str
    value: str | None = None
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None
    field_path: str | None = None
    resource_field_ref: ResourceFieldRef | None = None


@dataclass(frozen=True)
class Resources:
    """Requests and limits by resource name, quantities kept as the user wrote them."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


class VolumeKind(StrEnum):
    PERSISTENT_VOLUME_CLAIM = "PersistentVolumeClaim"
    CONFIG_MAP = "ConfigMap"
    SECRET = "Secret"
    EMPTY_DIR = "EmptyDir"


@dataclass(frozen=True)
class Volume:
    """A pod volume a job configuration declares, of one of four kinds.

    ``source`` is the name of the PersistentVolumeClaim (``claimName``), ConfigMap (``name``) or
    Secret (``secretName``) and ``None`` for an EmptyDir. ``read_only`` is the claim's
    ``readOnly``; ``medium`` (``"Memory"``, or ``None`` for the node's disk) and ``size_limit``
    (a quantity) belong to an EmptyDir. A field that does not belong to ``kind`` stays at its
    default.
    """

    name: str
    kind: VolumeKind
    source: str | None = None
    read_only: bool = False
    medium: str | None = None
    size_limit: str | None = None


@dataclass(frozen=True)
class VolumeMount:
    """Where the container sees volume ``name``; ``sub_path`` mounts one path inside it."""

    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str | None = None


class Visibility(StrEnum):
    PUBLIC = "Public"
    PRIVATE = "Private"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


@dataclass(frozen=True, slots=True)  # slots: one per schedule, 100,000 of them
class JobOverrides:
    """What a trigger or a schedule asks to change; ``None`` means "as configured"."""

    image: str | None = None
    args: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    depends_on: tuple[str, ...] | None = None
    resources: Resources | None = None
    environments: tuple[EnvVar, ...] | None = None
    backoff_limit: int | None = None
    ttl_seconds_after_finished: int | None = None
    restart_policy: RestartPolicy | None = None
    active_deadline_seconds: int | None = None
    parallelism: int | None = None
    completions: int | None = None
    volume_mounts: tuple[VolumeMount, ...] | None = None


@dataclass(frozen=True)
class JobSpec:
    """The merged, validated specification one run executes."""

    image: str
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    environments: tuple[EnvVar, ...] = ()
    backoff_limit: int = 1
    ttl_seconds_after_finished: int | None = None
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    active_deadline_seconds: int | None = None
    parallelism: int = 1
    completions: int = 1
    volumes: tuple[Volume, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()


class RunStatus(StrEnum):
    QUEUED = "Queued"
    DISPATCHING = "Dispatching"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Dispatched and not finished: what ``NumberParallelJob`` counts."""
        return self in _ACTIVE


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED})
_ACTIVE = frozenset(
    {RunStatus.DISPATCHING, RunStatus.PENDING, RunStatus.RUNNING, RunStatus.IMAGE_PULL_BACK_OFF}
)


@dataclass(frozen=True)
class Run:
    """One execution of a job: queued by a trigger or by a fired cron tick."""

    id: str
    job_name: str
    spec: JobSpec
    status: RunStatus
    queued_at_ms: int
    kube_name: str
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    schedule_id: str | None = None
    tick: int | None = None
    reason: str | None = None
    dispatch_term: int | None = None
    dispatch_index: int | None = None


@dataclass(frozen=True, slots=True)  # slots: ~190 bytes less per schedule than a __dict__
class Schedule:
    """A cron schedule of a job, with the overrides each of its runs applies."""

    id: str
    job_name: str
    cron: str
    overrides: JobOverrides = field(default_factory=JobOverrides)
    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    starting_deadline_seconds: int | None = None  # None: the newest missed tick fires whatever its age
    paused: bool = False
    created_at_ms: int = 0
    source: str = "api"


class TickOutcome(StrEnum):
    FIRED = "fired"
    SKIPPED = "skipped"
    MISSED = "missed"


@dataclass(frozen=True)
class TickRecord:
    """One line of a schedule's tick ledger."""

    tick: int
    outcome: TickOutcome
    recorded_at_ms: int
    run_id: str | None = None
    lateness_ms: int | None = None
    reason: str | None = None
