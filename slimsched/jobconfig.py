"""Job configurations (the SlimFaas ``JobsConfiguration`` format) and the override rules.

The configuration is the operator's fence around what API callers may run: which images,
how much CPU and memory, how many retries, for how long. A trigger (``POST /job/{name}``) or a
schedule (``POST /job-schedules/{name}``, or a ``Schedules`` entry of the configuration) may only
move inside that fence, and ``merge`` is the one place that decides, identically for all three.
Anything outside is a 400 with a stable code and a sentence naming the field, never a silent
cap (SlimFaas caps resources silently, so a caller never learns that a run got less than asked).

Parsing is tolerant of what SlimFaas clients and documentation send: property names in any
case (so the camelCase ``name``/``value``/``secretKeyRef`` of the SlimFaas docs work), the .NET
property names ``SecretRef``/``ConfigMapRef`` of an environment entry, enum values in any case,
and ``null`` for "not given". It is strict where SlimFaas is silently lossy: a wrong type or an
unknown key is an error naming its path, instead of a 500 or a dropped setting.

Everything here is pure: no I/O, no clock. ``parse_*`` take decoded JSON values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import NoReturn, TypeVar

from slimsched.errors import BadRequest, ConfigError
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    JobSpec,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Schedule,
    Visibility,
    Volume,
    VolumeKind,
    VolumeMount,
)
from slimsched.quantities import parse_quantity

DEFAULT_JOB = "Default"
MAX_JOB_NAME_LENGTH = 40

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_E = TypeVar("_E", RestartPolicy, Visibility, ConcurrencyPolicy)
_T = TypeVar("_T")


@dataclass(frozen=True)
class JobConfig:
    """One entry of ``Configurations``: what a job runs by default and the most it may ask for.

    ``images_whitelist`` holds shell-style wildcard patterns (``*``, ``?``, ``[abc]``, matched
    case-sensitively against the whole image reference; ``*`` also matches ``/`` and ``:``).
    ``None`` for ``ttl_seconds_after_finished`` / ``active_deadline_seconds`` means "no limit",
    so a request may then set any value. ``volume_mounts`` are both the mounts a run gets by
    default and the only ones a request may ask for; each names one of ``volumes``.
    """

    image: str = ""
    images_whitelist: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    depends_on: tuple[str, ...] = ()
    environments: tuple[EnvVar, ...] = ()
    backoff_limit: int = 1
    visibility: Visibility = Visibility.PRIVATE
    number_parallel_job: int = 1
    ttl_seconds_after_finished: int | None = None
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    active_deadline_seconds: int | None = None
    command: tuple[str, ...] = ()
    parallelism: int = 1
    completions: int = 1
    volumes: tuple[Volume, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()


_DEFAULT_RESOURCES = {"cpu": "100m", "memory": "100Mi"}

BUILTIN_DEFAULT = JobConfig(
    resources=Resources(requests=dict(_DEFAULT_RESOURCES), limits=dict(_DEFAULT_RESOURCES))
)
"""SlimFaas's built-in ``Default``: no image, empty whitelist, 100m CPU / 100Mi memory, Private.

With no image and an empty whitelist it admits no image at all, so an unknown job name cannot
run anything until the operator configures a ``Default`` with an ``Image`` or an
``ImagesWhitelist``: see ``merge`` for the image rule.
"""


@dataclass(frozen=True)
class ScheduleRequest:
    """A schedule as posted to ``/job-schedules/{name}`` or listed under ``Schedules``.

    ``schedule`` is the cron expression exactly as given; the cron module validates it.
    """

    schedule: str
    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    starting_deadline_seconds: int | None = None
    paused: bool = False
    overrides: JobOverrides = field(default_factory=JobOverrides)

    def to_schedule(self, *, id: str, job_name: str, created_at_ms: int, source: str = "api") -> Schedule:
        """The schedule this request declares (its cron expression trimmed)."""
        return Schedule(
            id=id,
            job_name=job_name,
            cron=self.schedule.strip(),
            overrides=self.overrides,
            time_zone=self.time_zone,
            concurrency_policy=self.concurrency_policy,
            starting_deadline_seconds=self.starting_deadline_seconds,
            paused=self.paused,
            created_at_ms=created_at_ms,
            source=source,
        )


def _builtin_configurations() -> dict[str, JobConfig]:
    return {DEFAULT_JOB: BUILTIN_DEFAULT}


@dataclass(frozen=True)
class JobsConfiguration:
    """The whole configuration: jobs by name (always including ``Default``) and their schedules."""

    configurations: Mapping[str, JobConfig] = field(default_factory=_builtin_configurations)
    schedules: Mapping[str, tuple[ScheduleRequest, ...]] = field(default_factory=dict)

    def job(self, name: str) -> JobConfig:
        """The configuration of job ``name``, or ``Default`` for a name the configuration lacks."""
        config = self.configurations.get(name)
        if config is None:
            config = self.configurations.get(DEFAULT_JOB, BUILTIN_DEFAULT)
        return config


def visibility_of(config: JobsConfiguration, name: str) -> Visibility:
    """Whether job ``name`` (or ``Default`` standing in for it) accepts calls from outside."""
    return config.job(name).visibility


def is_job_name(name: str) -> bool:
    """Whether ``name`` can name a job: a DNS-1123 label of at most 40 characters.

    The limit leaves room for the run suffix in the 63 characters of a Kubernetes Job name.
    """
    return len(name) <= MAX_JOB_NAME_LENGTH and _DNS_LABEL.fullmatch(name) is not None


# -- validation plumbing ---------------------------------------------------------------------------


class _Invalid(Exception):
    """A validation failure, converted to ``BadRequest`` or ``ConfigError`` by the public entry."""

    def __init__(self, code: str, path: str, detail: str) -> None:
        self.code = code
        self.path = path
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.path}: {self.detail}." if self.path else f"{self.detail[0].upper()}{self.detail[1:]}."


def _fail(code: str, path: str, detail: str) -> NoReturn:
    raise _Invalid(code, path, detail)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return f"the string {text}" if len(text) <= 40 else f'the string {text[:36]}..."'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _object(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        _fail("invalid_field", path, f"expected an object, got {_describe(value)}")
    return value


def _fields(
    obj: Mapping[str, object],
    names: Sequence[str],
    path: str,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """``obj``'s entries under their canonical names, matched case-insensitively; nulls dropped."""
    canonical = {name.lower(): name for name in names}
    for alias, target in (aliases or {}).items():
        canonical[alias.lower()] = target
    given: dict[str, str] = {}
    out: dict[str, object] = {}
    for key, value in obj.items():
        name = canonical.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            _fail(
                "unknown_field",
                _join(path, str(key)),
                f"unknown field; the fields accepted here are {', '.join(names)}",
            )
        if name in given:
            _fail(
                "duplicate_field",
                _join(path, name),
                f"given twice, as {given[name]!r} and {key!r}",
            )
        given[name] = key
        if value is not None:
            out[name] = value
    return out


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail("invalid_field", path, f"expected a string, got {_describe(value)}")
    return value


def _strs(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        _fail("invalid_field", path, f"expected a list of strings, got {_describe(value)}")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(value))


def _object_names(value: object, path: str) -> tuple[str, ...]:
    names = _strs(value, path)
    for i, name in enumerate(names):
        _check_object_name(name, f"{path}[{i}]")
    return names


def _check_object_name(name: str, path: str) -> None:
    if len(name) > 253 or _DNS_SUBDOMAIN.fullmatch(name) is None:
        _fail(
            "invalid_field",
            path,
            f"{_describe(name)} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')",
        )


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail("invalid_field", path, f"expected true or false, got {_describe(value)}")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int = _INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail("invalid_field", path, f"expected an integer, got {_describe(value)}")
    _check_range(value, path, minimum=minimum, maximum=maximum)
    return value


def _check_range(value: int, path: str, *, minimum: int, maximum: int = _INT32_MAX) -> None:
    if value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"at least {minimum}")
        _fail("invalid_field", path, f"expected {kind}, got {value}")
    if value > maximum:
        _fail("invalid_field", path, f"expected at most {maximum}, got {value}")


def _choice(value: object, path: str, kind: type[_E]) -> _E:
    text = _str(value, path)
    for member in kind:
        if member.value.lower() == text.lower():
            return member
    allowed = " or ".join(member.value for member in kind)
    _fail("invalid_field", path, f"expected {allowed}, got {_describe(value)}")


def _quantity(value: object, path: str) -> Fraction:
    text = _str(value, path)
    try:
        amount = parse_quantity(text)
    except ValueError as e:
        _fail("invalid_quantity", path, str(e))
    if amount < 0:
        _fail("invalid_quantity", path, f"a resource quantity cannot be negative, got {text!r}")
    return amount


class _Reader:
    """The fields of one JSON object, read by canonical name with their paths for messages."""

    def __init__(self, fields: Mapping[str, object], path: str) -> None:
        self.fields = fields
        self.path = path

    def at(self, name: str) -> str:
        return _join(self.path, name)

    def get(self, name: str, parse: Callable[[object, str], _T]) -> _T | None:
        return parse(self.fields[name], self.at(name)) if name in self.fields else None

    def integer(self, name: str, *, minimum: int, maximum: int = _INT32_MAX) -> int | None:
        if name not in self.fields:
            return None
        return _int(self.fields[name], self.at(name), minimum=minimum, maximum=maximum)

    def choice(self, name: str, kind: type[_E]) -> _E | None:
        return _choice(self.fields[name], self.at(name), kind) if name in self.fields else None


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


# -- parsing pieces shared by configurations, triggers and schedules ------------------------------


def _quantities(value: object, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, amount in _object(value, path).items():
        if not name:
            _fail("invalid_field", path, "a resource name cannot be empty")
        where = _join(path, name)
        _quantity(amount, where)
        out[name] = _str(amount, where)
    return out


def _resources(value: object, path: str) -> Resources:
    fields = _fields(_object(value, path), ("Requests", "Limits"), path)
    return Resources(
        requests=_quantities(fields.get("Requests", {}), _join(path, "Requests")),
        limits=_quantities(fields.get("Limits", {}), _join(path, "Limits")),
    )


def _required(r: _Reader, name: str, parse: Callable[[object, str], _T]) -> _T:
    value = r.get(name, parse)
    if value is None:
        _fail("missing_field", r.at(name), "required")
    return value


def _key_ref(value: object, path: str) -> KeyRef:
    r = _Reader(_fields(_object(value, path), ("Name", "Key"), path), path)
    return KeyRef(name=_required(r, "Name", _str), key=_required(r, "Key", _str))


def _field_path(value: object, path: str) -> str:
    # ApiVersion is accepted for copy-pasted Kubernetes manifests; "v1" is its only value.
    r = _Reader(_fields(_object(value, path), ("FieldPath", "ApiVersion"), path), path)
    api_version = r.get("ApiVersion", _str)
    if api_version not in (None, "v1"):
        _fail("invalid_field", r.at("ApiVersion"), f'expected "v1", got {_describe(api_version)}')
    return _required(r, "FieldPath", _str)


def _divisor(value: object, path: str) -> str:
    _quantity(value, path)
    return _str(value, path)


def _resource_field_ref(value: object, path: str) -> ResourceFieldRef:
    r = _Reader(_fields(_object(value, path), ("Resource", "ContainerName", "Divisor"), path), path)
    return ResourceFieldRef(
        resource=_required(r, "Resource", _str),
        container_name=r.get("ContainerName", _str),
        divisor=r.get("Divisor", _divisor),
    )


_ENV_FIELDS = ("Name", "Value", "SecretKeyRef", "ConfigMapKeyRef", "FieldRef", "ResourceFieldRef")
_ENV_ALIASES = {"SecretRef": "SecretKeyRef", "ConfigMapRef": "ConfigMapKeyRef"}


def _env_var(value: object, path: str) -> EnvVar:
    r = _Reader(_fields(_object(value, path), _ENV_FIELDS, path, _ENV_ALIASES), path)
    env = EnvVar(
        name=_required(r, "Name", _str),
        value=r.get("Value", _str),
        secret_key_ref=r.get("SecretKeyRef", _key_ref),
        config_map_key_ref=r.get("ConfigMapKeyRef", _key_ref),
        field_path=r.get("FieldRef", _field_path),
        resource_field_ref=r.get("ResourceFieldRef", _resource_field_ref),
    )
    _check_env_var(env, path)
    if env.value == "" and _env_sources(env) > 1:
        # SlimFaas clients send "Value": "" next to a reference, which Kubernetes tolerates too.
        env = replace(env, value=None)
    return env


def _env_sources(env: EnvVar) -> int:
    sources = (env.value, env.secret_key_ref, env.config_map_key_ref, env.field_path, env.resource_field_ref)
    return sum(source is not None for source in sources)


def _check_env_var(env: EnvVar, path: str) -> None:
    if not env.name or "=" in env.name:
        _fail(
            "invalid_field",
            _join(path, "Name"),
            "an environment variable name must be non-empty and without '='",
        )
    sources = _env_sources(env)
    if env.value == "" and sources > 1:
        sources -= 1
    if sources != 1:
        _fail(
            "invalid_field",
            path,
            f"environment variable {env.name!r} needs exactly one of Value, SecretKeyRef, "
            f"ConfigMapKeyRef, FieldRef or ResourceFieldRef, got {sources}",
        )


def _environments(value: object, path: str) -> tuple[EnvVar, ...]:
    if not isinstance(value, list):
        _fail("invalid_field", path, f"expected a list of environment variables, got {_describe(value)}")
    envs = tuple(_env_var(item, f"{path}[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for i, env in enumerate(envs):
        if env.name in seen:
            _fail("invalid_field", f"{path}[{i}].Name", f"{env.name!r} is already set earlier in this list")
        seen.add(env.name)
    return envs


def _quantity_text(value: object, path: str) -> str:
    _quantity(value, path)
    return _str(value, path)


def _object_name(value: object, path: str) -> str:
    name = _str(value, path)
    _check_object_name(name, path)
    return name


def _volume_name(value: object, path: str) -> str:
    name = _str(value, path)
    _check_volume_name(name, path)
    return name


def _check_volume_name(name: str, path: str) -> None:
    if len(name) > 63 or _DNS_LABEL.fullmatch(name) is None:
        _fail(
            "invalid_field",
            path,
            f"{_describe(name)} is not a volume name: use a DNS-1123 label (lowercase letters, digits "
            "and '-', starting and ending with a letter or digit) of at most 63 characters",
        )


def _medium(value: object, path: str) -> str | None:
    text = _str(value, path)
    if text == "":
        return None
    if text.lower() != "memory":
        _fail("invalid_field", path, f'expected "Memory" or "", got {_describe(value)}')
    return "Memory"


_VOLUME_SOURCE_FIELDS: Mapping[VolumeKind, tuple[str, ...]] = {
    VolumeKind.PERSISTENT_VOLUME_CLAIM: ("ClaimName", "ReadOnly"),
    VolumeKind.CONFIG_MAP: ("Name",),
    VolumeKind.SECRET: ("SecretName",),
    VolumeKind.EMPTY_DIR: ("Medium", "SizeLimit"),
}
_VOLUME_KINDS = "PersistentVolumeClaim, ConfigMap, Secret or EmptyDir"


def _volume(value: object, path: str) -> Volume:
    fields = _fields(_object(value, path), ("Name", *(kind.value for kind in VolumeKind)), path)
    r = _Reader(fields, path)
    name = _required(r, "Name", _volume_name)
    kinds = [kind for kind in VolumeKind if kind.value in fields]
    if len(kinds) != 1:
        _fail(
            "invalid_field", path, f"volume {name!r} needs exactly one of {_VOLUME_KINDS}, got {len(kinds)}"
        )
    [kind] = kinds
    where = r.at(kind.value)
    source = _Reader(_fields(_object(fields[kind.value], where), _VOLUME_SOURCE_FIELDS[kind], where), where)
    if kind is VolumeKind.EMPTY_DIR:
        return Volume(
            name=name,
            kind=kind,
            medium=source.get("Medium", _medium),
            size_limit=source.get("SizeLimit", _quantity_text),
        )
    return Volume(
        name=name,
        kind=kind,
        source=_required(source, _VOLUME_SOURCE_FIELDS[kind][0], _object_name),
        read_only=_or(source.get("ReadOnly", _bool), False),
    )


def _volumes(value: object, path: str) -> tuple[Volume, ...]:
    if not isinstance(value, list):
        _fail("invalid_field", path, f"expected a list of volumes, got {_describe(value)}")
    volumes = tuple(_volume(item, f"{path}[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for i, volume in enumerate(volumes):
        if volume.name in seen:
            _fail(
                "invalid_field",
                f"{path}[{i}].Name",
                f"{volume.name!r} is already declared earlier in this list",
            )
        seen.add(volume.name)
    return volumes


def _volume_mount(value: object, path: str) -> VolumeMount:
    r = _Reader(_fields(_object(value, path), ("Name", "MountPath", "ReadOnly", "SubPath"), path), path)
    return VolumeMount(
        name=_required(r, "Name", _str),
        mount_path=_required(r, "MountPath", _str),
        read_only=_or(r.get("ReadOnly", _bool), False),
        # An empty SubPath means the whole volume, as in Kubernetes.
        sub_path=r.get("SubPath", _str) or None,
    )


def _volume_mounts(value: object, path: str) -> tuple[VolumeMount, ...]:
    if not isinstance(value, list):
        _fail("invalid_field", path, f"expected a list of volume mounts, got {_describe(value)}")
    mounts = tuple(_volume_mount(item, f"{path}[{i}]") for i, item in enumerate(value))
    _check_volume_mounts(mounts, path)
    return mounts


def _check_volume_mounts(mounts: Sequence[VolumeMount], path: str) -> None:
    """Names are volume names, paths absolute and distinct, SubPaths relative; no '..' anywhere."""
    seen: set[str] = set()
    for i, mount in enumerate(mounts):
        where = f"{path}[{i}]"
        _check_volume_name(mount.name, _join(where, "Name"))
        if not mount.mount_path.startswith("/") or ".." in mount.mount_path.split("/"):
            _fail(
                "invalid_field",
                _join(where, "MountPath"),
                f"expected an absolute path without '..', got {_describe(mount.mount_path)}",
            )
        if mount.mount_path in seen:
            _fail(
                "invalid_field",
                _join(where, "MountPath"),
                f"{mount.mount_path!r} is already mounted earlier in this list",
            )
        seen.add(mount.mount_path)
        if mount.sub_path is not None and (
            mount.sub_path.startswith("/") or ".." in mount.sub_path.split("/")
        ):
            _fail(
                "invalid_field",
                _join(where, "SubPath"),
                f"expected a relative path without '..', got {_describe(mount.sub_path)}",
            )


def _check_mounts_declared(mounts: Sequence[VolumeMount], volumes: Sequence[Volume], path: str) -> None:
    declared = {volume.name for volume in volumes}
    for i, mount in enumerate(mounts):
        if mount.name not in declared:
            _fail("volume_not_allowed", f"{path}[{i}].Name", _undeclared_volume(mount.name, volumes))


def _undeclared_volume(name: str, volumes: Sequence[Volume]) -> str:
    if not volumes:
        return f"{name!r} is not a volume of this job, whose configuration declares no Volumes"
    declared = ", ".join(repr(volume.name) for volume in volumes)
    return f"{name!r} is not a volume of this job; its configuration declares {declared}"


# -- triggers and schedules ------------------------------------------------------------------------

_OVERRIDE_FIELDS = (
    "Image",
    "Args",
    "Command",
    "DependsOn",
    "Resources",
    "Environments",
    "BackoffLimit",
    "TtlSecondsAfterFinished",
    "RestartPolicy",
    "ActiveDeadlineSeconds",
    "Parallelism",
    "Completions",
    "VolumeMounts",
    "Volumes",
)
_SCHEDULE_FIELDS = ("Schedule", "TimeZone", "ConcurrencyPolicy", "StartingDeadlineSeconds", "Paused")


def _body(body: object, where: str) -> dict[str, object]:
    if not isinstance(body, dict):
        _fail("invalid_body", where, f"the request body must be a JSON object, not {_describe(body)}")
    return body


def _overrides(fields: Mapping[str, object], where: str) -> JobOverrides:
    r = _Reader(fields, where)
    if "Volumes" in fields:
        _fail(
            "volume_not_allowed",
            r.at("Volumes"),
            "a request cannot define volumes; list in VolumeMounts the mounts of the job configuration "
            "it wants, and the Job gets the configured volumes they use",
        )
    return JobOverrides(
        # An empty Image means "as configured", as in SlimFaas where "" is the default.
        image=r.get("Image", _str) or None,
        args=r.get("Args", _strs),
        command=r.get("Command", _strs),
        depends_on=r.get("DependsOn", _object_names),
        resources=r.get("Resources", _resources),
        environments=r.get("Environments", _environments),
        backoff_limit=r.integer("BackoffLimit", minimum=0),
        ttl_seconds_after_finished=r.integer("TtlSecondsAfterFinished", minimum=0),
        restart_policy=r.choice("RestartPolicy", RestartPolicy),
        active_deadline_seconds=r.integer("ActiveDeadlineSeconds", minimum=1, maximum=_INT64_MAX),
        parallelism=r.integer("Parallelism", minimum=1),
        completions=r.integer("Completions", minimum=1),
        volume_mounts=r.get("VolumeMounts", _volume_mounts),
    )


def parse_overrides(body: object, *, where: str = "") -> JobOverrides:
    """Validate the body of ``POST /job/{name}``; ``where`` prefixes the field paths in messages.

    Raises ``BadRequest`` with the code ``invalid_body``, ``unknown_field``, ``duplicate_field``
    (one field under two spellings), ``missing_field``, ``invalid_field`` or ``invalid_quantity``,
    or ``volume_not_allowed`` for a ``Volumes`` field (only the configuration defines volumes).
    Whether the values are allowed for the job is ``merge``'s business.
    """
    try:
        return _overrides(_fields(_body(body, where), _OVERRIDE_FIELDS, where), where)
    except _Invalid as e:
        raise BadRequest(e.code, e.message) from None


def _schedule_request(body: object, where: str) -> ScheduleRequest:
    fields = _fields(_body(body, where), _OVERRIDE_FIELDS + _SCHEDULE_FIELDS, where)
    r = _Reader(fields, where)
    schedule = r.get("Schedule", _str)
    if schedule is None:
        _fail("missing_field", r.at("Schedule"), 'required: a cron expression such as "0 0 * * *"')
    return ScheduleRequest(
        schedule=schedule,
        time_zone=_or(r.get("TimeZone", _str), "UTC"),
        concurrency_policy=_or(r.choice("ConcurrencyPolicy", ConcurrencyPolicy), ConcurrencyPolicy.ALLOW),
        starting_deadline_seconds=r.integer("StartingDeadlineSeconds", minimum=0, maximum=_INT64_MAX),
        paused=_or(r.get("Paused", _bool), False),
        overrides=_overrides(fields, where),
    )


def parse_schedule_request(body: object, *, where: str = "") -> ScheduleRequest:
    """Validate the body of ``POST /job-schedules/{name}`` or one ``Schedules`` entry.

    The body is a trigger body plus ``Schedule`` (required), ``TimeZone``,
    ``ConcurrencyPolicy``, ``StartingDeadlineSeconds`` and ``Paused``; the cron expression and
    the time zone are only type-checked here. Raises ``BadRequest`` with the codes of
    ``parse_overrides``.
    """
    try:
        return _schedule_request(body, where)
    except _Invalid as e:
        raise BadRequest(e.code, e.message) from None


# -- the configuration -----------------------------------------------------------------------------

_JOB_FIELDS = (
    "Image",
    "ImagesWhitelist",
    "Resources",
    "DependsOn",
    "Environments",
    "BackoffLimit",
    "Visibility",
    "NumberParallelJob",
    "TtlSecondsAfterFinished",
    "RestartPolicy",
    "ActiveDeadlineSeconds",
    "Command",
    "Parallelism",
    "Completions",
    "Volumes",
    "VolumeMounts",
)


def _job_config(value: object, path: str, *, default_resources: Resources) -> JobConfig:
    r = _Reader(_fields(_object(value, path), _JOB_FIELDS, path), path)
    resources = _or(r.get("Resources", _resources), default_resources)
    _check_limits_cover_requests(resources, r.at("Resources"))
    volumes = _or(r.get("Volumes", _volumes), ())
    volume_mounts = _or(r.get("VolumeMounts", _volume_mounts), ())
    _check_mounts_declared(volume_mounts, volumes, r.at("VolumeMounts"))
    return JobConfig(
        image=_or(r.get("Image", _str), ""),
        images_whitelist=_or(r.get("ImagesWhitelist", _strs), ()),
        resources=resources,
        depends_on=_or(r.get("DependsOn", _object_names), ()),
        environments=_or(r.get("Environments", _environments), ()),
        backoff_limit=_or(r.integer("BackoffLimit", minimum=0), 1),
        visibility=_or(r.choice("Visibility", Visibility), Visibility.PRIVATE),
        number_parallel_job=_or(r.integer("NumberParallelJob", minimum=1), 1),
        ttl_seconds_after_finished=r.integer("TtlSecondsAfterFinished", minimum=0),
        restart_policy=_or(r.choice("RestartPolicy", RestartPolicy), RestartPolicy.NEVER),
        active_deadline_seconds=r.integer("ActiveDeadlineSeconds", minimum=1, maximum=_INT64_MAX),
        command=_or(r.get("Command", _strs), ()),
        parallelism=_or(r.integer("Parallelism", minimum=1), 1),
        completions=_or(r.integer("Completions", minimum=1), 1),
        volumes=volumes,
        volume_mounts=volume_mounts,
    )


def _check_limits_cover_requests(resources: Resources, path: str) -> None:
    for name in resources.requests.keys() & resources.limits.keys():
        request, limit = resources.requests[name], resources.limits[name]
        if parse_quantity(limit) < parse_quantity(request):
            _fail(
                "limit_below_request",
                _join(path, f"Limits.{name}"),
                f"the limit {limit} is below the request {request}; a limit must be at least the request",
            )


def _job_name(key: str, path: str) -> None:
    if not is_job_name(key):
        _fail(
            "invalid_field",
            path,
            f"{key!r} is not a valid job name: use a DNS-1123 label (lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit) of at most {MAX_JOB_NAME_LENGTH} characters",
        )


def _configurations(value: object) -> dict[str, JobConfig]:
    out = _builtin_configurations()
    user_default = False
    for key, entry in _object(value, "Configurations").items():
        path = _join("Configurations", key)
        # SlimFaas looks names up case-insensitively, so "default" is its Default entry too.
        if key.lower() == DEFAULT_JOB.lower():
            if user_default:
                _fail("duplicate_field", path, "the Default entry is given twice")
            user_default = True
            out[DEFAULT_JOB] = _job_config(entry, path, default_resources=BUILTIN_DEFAULT.resources)
        else:
            _job_name(key, path)
            out[key] = _job_config(entry, path, default_resources=Resources())
    return out


def _schedules(value: object, jobs: JobsConfiguration) -> dict[str, tuple[ScheduleRequest, ...]]:
    out: dict[str, tuple[ScheduleRequest, ...]] = {}
    for key, entries in _object(value, "Schedules").items():
        path = _join("Schedules", key)
        _job_name(key, path)
        if not isinstance(entries, list):
            _fail("invalid_field", path, f"expected a list of schedules, got {_describe(entries)}")
        requests = []
        for i, entry in enumerate(entries):
            where = f"{path}[{i}]"
            request = _schedule_request(entry, where)
            try:
                _merge(jobs.job(key), request.overrides)
            except _Invalid as e:
                raise _Invalid(e.code, _join(where, e.path), e.detail) from None
            requests.append(request)
        out[key] = tuple(requests)
    return out


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"The jobs configuration gives the key {key!r} twice in one object.")
        out[key] = value
    return out


def parse_jobs_configuration(text: str | None) -> JobsConfiguration:
    """Parse ``{"Configurations": {...}, "Schedules": {...}}``; no text means only ``Default``.

    Job names are DNS-1123 labels of at most 40 characters; ``Default`` (in any case) replaces
    the built-in entry and keeps its resources when it sets none, as in SlimFaas. Every
    ``Schedules`` entry is checked against its job's configuration with ``merge`` here, so a
    schedule that could never run stops the start-up instead of failing at every tick.
    Raises ``ConfigError`` naming the path of the first problem.
    """
    if text is None or not text.strip():
        return JobsConfiguration()
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"The jobs configuration is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    try:
        if not isinstance(data, dict):
            _fail("invalid_body", "", f"the jobs configuration must be a JSON object, not {_describe(data)}")
        fields = _fields(data, ("Configurations", "Schedules"), "")
        configurations = _configurations(fields.get("Configurations", {}))
        jobs = JobsConfiguration(configurations=configurations)
        schedules = _schedules(fields.get("Schedules", {}), jobs)
    except _Invalid as e:
        raise ConfigError(e.message) from None
    return JobsConfiguration(configurations=configurations, schedules=schedules)


# -- merging ---------------------------------------------------------------------------------------


def merge(config: JobConfig, overrides: JobOverrides) -> JobSpec:
    """Apply a trigger's or a schedule's ``overrides`` to ``config``: the spec one run executes.

    Rules (a refusal is a ``BadRequest`` with the code in brackets):

    - Image: none or ``""`` means the configured one; when the configuration has no image the
      request must name one [image_required]. A named image is allowed when it equals the
      configured ``Image`` or matches a pattern of ``ImagesWhitelist`` [image_not_allowed]; so an
      empty whitelist admits only the configured image, and the built-in ``Default`` (no image,
      empty whitelist) admits none.
    - Resources: each requested quantity must parse [invalid_quantity] and be at most the
      configured one: a request at most the configured request (or, when only a limit is
      configured, that limit, which Kubernetes uses as the request), a limit at most the
      configured limit (any limit when the resource is configured with a request only, since
      adding a limit only lowers the ceiling) [resource_over_limit]. A resource the
      configuration does not name cannot be asked for [resource_not_configured]. Requested values
      replace configured ones by name, and every resulting limit must be at least its request
      [limit_below_request].
    - Environments merge by name, the request winning; configured order first, then new names.
    - DependsOn and Command replace the configured ones; Args come from the request only.
    - BackoffLimit, TtlSecondsAfterFinished, ActiveDeadlineSeconds, Parallelism, Completions may
      be lowered, never raised [over_limit]; a TTL or deadline the configuration leaves unset
      may be set to any value. RestartPolicy may go from OnFailure to Never, not back [over_limit].
    - VolumeMounts: none means the configured mounts; a list (``[]`` for none) replaces them,
      and each entry must be one of the configured mounts: the same Name [volume_not_allowed,
      naming ``VolumeMounts[i].Name``] and MountPath [``.MountPath``], ReadOnly when the
      configured mount is read-only [``.ReadOnly``: a request may make a mount read-only, never
      writable], and the configured SubPath when there is one [``.SubPath``]; without a
      configured SubPath it may pick one. The Job carries exactly the configured volumes its
      mounts use, in configuration order; a request cannot define volumes.
    - Values out of range, malformed environment variables or volume mounts, and a MountPath
      given twice [invalid_field], since overrides can also come from stored schedules that
      never went through ``parse_overrides``.
    """
    try:
        return _merge(config, overrides)
    except _Invalid as e:
        raise BadRequest(e.code, e.message) from None


def _merge(config: JobConfig, overrides: JobOverrides) -> JobSpec:
    volumes, volume_mounts = _merge_volumes(config, overrides.volume_mounts)
    return JobSpec(
        image=_merge_image(config, overrides.image),
        args=overrides.args if overrides.args is not None else (),
        command=overrides.command if overrides.command is not None else config.command,
        depends_on=overrides.depends_on if overrides.depends_on is not None else config.depends_on,
        resources=_merge_resources(config.resources, overrides.resources),
        environments=_merge_environments(config.environments, overrides.environments),
        backoff_limit=_lowered("BackoffLimit", config.backoff_limit, overrides.backoff_limit, minimum=0),
        ttl_seconds_after_finished=_lowered_optional(
            "TtlSecondsAfterFinished",
            config.ttl_seconds_after_finished,
            overrides.ttl_seconds_after_finished,
            minimum=0,
        ),
        restart_policy=_merge_restart_policy(config.restart_policy, overrides.restart_policy),
        active_deadline_seconds=_lowered_optional(
            "ActiveDeadlineSeconds",
            config.active_deadline_seconds,
            overrides.active_deadline_seconds,
            minimum=1,
            maximum=_INT64_MAX,
        ),
        parallelism=_lowered("Parallelism", config.parallelism, overrides.parallelism, minimum=1),
        completions=_lowered("Completions", config.completions, overrides.completions, minimum=1),
        volumes=volumes,
        volume_mounts=volume_mounts,
    )


def _merge_image(config: JobConfig, image: str | None) -> str:
    if not image:
        if not config.image:
            _fail("image_required", "Image", "this job has no configured image, so the request must name one")
        return config.image
    if image == config.image or any(fnmatchcase(image, pattern) for pattern in config.images_whitelist):
        return image
    if config.images_whitelist:
        allowed = ", ".join(
            repr(p) for p in ((config.image,) if config.image else ()) + config.images_whitelist
        )
        _fail("image_not_allowed", "Image", f"{image!r} is not allowed for this job; allowed: {allowed}")
    if config.image:
        _fail(
            "image_not_allowed",
            "Image",
            f"{image!r} is not allowed for this job, which has no ImagesWhitelist: only its configured "
            f"image {config.image!r} may run",
        )
    _fail(
        "image_not_allowed",
        "Image",
        f"{image!r} is not allowed: this job's configuration has neither an Image nor an ImagesWhitelist, "
        "so it admits no image",
    )


def _merge_resources(config: Resources, requested: Resources | None) -> Resources:
    if requested is None:
        return Resources(requests=dict(config.requests), limits=dict(config.limits))
    requests = dict(config.requests)
    limits = dict(config.limits)
    for name, text in requested.requests.items():
        path = f"Resources.Requests.{name}"
        amount = _quantity(text, path)
        bound = config.requests.get(name, config.limits.get(name))
        if bound is None:
            _not_configured(name, path)
        elif amount > parse_quantity(bound):
            _over(path, text, bound)
        requests[name] = text
    for name, text in requested.limits.items():
        path = f"Resources.Limits.{name}"
        amount = _quantity(text, path)
        bound = config.limits.get(name)
        if bound is None and name not in config.requests:
            _not_configured(name, path)
        elif bound is not None and amount > parse_quantity(bound):
            _over(path, text, bound)
        limits[name] = text
    merged = Resources(requests=requests, limits=limits)
    _check_limits_cover_requests(merged, "Resources")
    return merged


def _not_configured(name: str, path: str) -> NoReturn:
    _fail(
        "resource_not_configured",
        path,
        f"the job configuration sets no {name!r} resource, so a request cannot ask for one",
    )


def _over(path: str, asked: str, allowed: str) -> NoReturn:
    _fail(
        "resource_over_limit", path, f"asks for {asked}, more than the {allowed} the job configuration allows"
    )


def _merge_environments(
    config: tuple[EnvVar, ...], requested: tuple[EnvVar, ...] | None
) -> tuple[EnvVar, ...]:
    if requested is None:
        return config
    merged = {env.name: env for env in config}
    for i, env in enumerate(requested):
        _check_env_var(env, f"Environments[{i}]")
        merged[env.name] = env  # an existing name keeps its configured position
    return tuple(merged.values())


def _lowered(name: str, configured: int, requested: int | None, *, minimum: int) -> int:
    if requested is None:
        return configured
    _check_range(requested, name, minimum=minimum)
    if requested > configured:
        _fail(
            "over_limit",
            name,
            f"{requested} is above the {configured} the job configuration allows; a request may lower it, "
            "never raise it",
        )
    return requested


def _lowered_optional(
    name: str, configured: int | None, requested: int | None, *, minimum: int, maximum: int = _INT32_MAX
) -> int | None:
    if requested is None:
        return configured
    _check_range(requested, name, minimum=minimum, maximum=maximum)
    if configured is not None and requested > configured:
        _fail(
            "over_limit",
            name,
            f"{requested} is above the {configured} the job configuration allows; a request may lower it, "
            "never raise it",
        )
    return requested


def _merge_restart_policy(configured: RestartPolicy, requested: RestartPolicy | None) -> RestartPolicy:
    if requested is None or requested == configured:
        return configured
    if requested == RestartPolicy.ON_FAILURE:
        _fail(
            "over_limit",
            "RestartPolicy",
            "OnFailure is not allowed for a job configured with Never; a request may only switch "
            "OnFailure to Never",
        )
    return requested


def _merge_volumes(
    config: JobConfig, requested: tuple[VolumeMount, ...] | None
) -> tuple[tuple[Volume, ...], tuple[VolumeMount, ...]]:
    mounts = config.volume_mounts
    if requested is not None:
        _check_volume_mounts(requested, "VolumeMounts")
        for i, mount in enumerate(requested):
            _check_mount_allowed(config, mount, f"VolumeMounts[{i}]")
        mounts = requested
    used = {mount.name for mount in mounts}
    return tuple(volume for volume in config.volumes if volume.name in used), mounts


def _check_mount_allowed(config: JobConfig, mount: VolumeMount, path: str) -> None:
    candidates = [m for m in config.volume_mounts if m.name == mount.name]
    if not candidates:
        if all(volume.name != mount.name for volume in config.volumes):
            _fail("volume_not_allowed", _join(path, "Name"), _undeclared_volume(mount.name, config.volumes))
        _fail(
            "volume_not_allowed",
            _join(path, "Name"),
            f"the job configuration mounts volume {mount.name!r} nowhere, so a request cannot mount it",
        )
    declared = next((m for m in candidates if m.mount_path == mount.mount_path), None)
    if declared is None:
        allowed = ", ".join(repr(m.mount_path) for m in candidates)
        _fail(
            "volume_not_allowed",
            _join(path, "MountPath"),
            f"volume {mount.name!r} may not be mounted at {mount.mount_path!r}; the job configuration "
            f"mounts it at {allowed}",
        )
    if declared.read_only and not mount.read_only:
        _fail(
            "volume_not_allowed",
            _join(path, "ReadOnly"),
            f"the job configuration mounts {mount.name!r} at {mount.mount_path!r} read-only; a request may "
            "make a mount read-only, never writable, so set ReadOnly to true",
        )
    if declared.sub_path is not None and mount.sub_path != declared.sub_path:
        _fail(
            "volume_not_allowed",
            _join(path, "SubPath"),
            f"the job configuration mounts only {declared.sub_path!r} of {mount.name!r} at "
            f"{mount.mount_path!r}, so SubPath must be {declared.sub_path!r}",
        )
