"""The pieces shared by configurations, triggers and schedules: resources, environment variables,
volumes and volume mounts, read from decoded JSON (see ``jsonfields`` for errors and notes).

Where SlimFaas (and Kubernetes behind it) would accept an entry and read it one way, so does
this module, with a note saying how: an environment variable with a value and a reference keeps
the reference (SlimFaas's order: SecretRef, ConfigMapRef, FieldRef, ResourceFieldRef, then
Value), one without any source is set to the empty string, and a name given twice in one list
keeps its last entry, as the container runtime does. What Kubernetes would refuse (an empty
name, a malformed quantity, a volume path with '..') stays an error.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from slimsched.jsonfields import (
    Reader,
    as_bool,
    as_object,
    as_quantity,
    as_str,
    as_strs,
    describe,
    fail,
    fields,
    join,
    note,
    or_default,
)
from slimsched.model import (
    EnvVar,
    KeyRef,
    ResourceFieldRef,
    Resources,
    Volume,
    VolumeKind,
    VolumeMount,
)

_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def object_names(value: object, path: str) -> tuple[str, ...]:
    names = as_strs(value, path)
    for i, name in enumerate(names):
        _check_object_name(name, f"{path}[{i}]")
    return names


def _check_object_name(name: str, path: str) -> None:
    if len(name) > 253 or _DNS_SUBDOMAIN.fullmatch(name) is None:
        fail(
            "invalid_field",
            path,
            f"{describe(name)} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')",
        )


def _quantities(value: object, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, amount in as_object(value, path).items():
        if not name:
            fail("invalid_field", path, "a resource name cannot be empty")
        where = join(path, name)
        as_quantity(amount, where)
        out[name] = as_str(amount, where)
    return out


def read_resources(value: object, path: str) -> Resources:
    given = fields(as_object(value, path), ("Requests", "Limits"), path)
    return Resources(
        requests=_quantities(given.get("Requests", {}), join(path, "Requests")),
        limits=_quantities(given.get("Limits", {}), join(path, "Limits")),
    )


def _key_ref(value: object, path: str) -> KeyRef:
    r = Reader(fields(as_object(value, path), ("Name", "Key"), path), path)
    return KeyRef(name=r.required("Name", as_str), key=r.required("Key", as_str))


def _field_path(value: object, path: str) -> str:
    # ApiVersion is accepted for copy-pasted Kubernetes manifests; "v1" is its only value.
    r = Reader(fields(as_object(value, path), ("FieldPath", "ApiVersion"), path), path)
    api_version = r.get("ApiVersion", as_str)
    if api_version not in (None, "v1"):
        fail("invalid_field", r.at("ApiVersion"), f'expected "v1", got {describe(api_version)}')
    return r.required("FieldPath", as_str)


def _divisor(value: object, path: str) -> str:
    as_quantity(value, path)
    return as_str(value, path)


def _resource_field_ref(value: object, path: str) -> ResourceFieldRef:
    r = Reader(fields(as_object(value, path), ("Resource", "ContainerName", "Divisor"), path), path)
    return ResourceFieldRef(
        resource=r.required("Resource", as_str),
        container_name=r.get("ContainerName", as_str),
        divisor=r.get("Divisor", _divisor),
    )


ENV_FIELDS = ("Name", "Value", "SecretKeyRef", "ConfigMapKeyRef", "FieldRef", "ResourceFieldRef")
ENV_ALIASES = {"SecretRef": "SecretKeyRef", "ConfigMapRef": "ConfigMapKeyRef"}


def _env_var(value: object, path: str) -> EnvVar:
    r = Reader(fields(as_object(value, path), ENV_FIELDS, path, ENV_ALIASES), path)
    env = EnvVar(
        name=r.required("Name", as_str),
        value=r.get("Value", as_str),
        secret_key_ref=r.get("SecretKeyRef", _key_ref),
        config_map_key_ref=r.get("ConfigMapKeyRef", _key_ref),
        field_path=r.get("FieldRef", _field_path),
        resource_field_ref=r.get("ResourceFieldRef", _resource_field_ref),
    )
    _check_env_name(env.name, path)
    refs = [name for name, ref in _env_refs(env) if ref is not None]
    if refs:
        if env.value:
            note("env_source_ignored", join(path, "Value"), f"ignored, since {refs[0]} is given too")
        for extra in refs[1:]:
            note("env_source_ignored", join(path, extra), f"ignored, since {refs[0]} is given too")
        # SlimFaas's CreateJobAsync takes the first reference in this order and drops the rest.
        keep = refs[0]
        return EnvVar(
            name=env.name,
            secret_key_ref=env.secret_key_ref if keep == "SecretKeyRef" else None,
            config_map_key_ref=env.config_map_key_ref if keep == "ConfigMapKeyRef" else None,
            field_path=env.field_path if keep == "FieldRef" else None,
            resource_field_ref=env.resource_field_ref if keep == "ResourceFieldRef" else None,
        )
    if env.value is None:
        # SlimFaas's Value is a plain string: absent, it sets the variable to "" (so does Kubernetes).
        return replace(env, value="")
    return env


def _env_refs(env: EnvVar) -> tuple[tuple[str, object], ...]:
    return (
        ("SecretKeyRef", env.secret_key_ref),
        ("ConfigMapKeyRef", env.config_map_key_ref),
        ("FieldRef", env.field_path),
        ("ResourceFieldRef", env.resource_field_ref),
    )


def _check_env_name(name: str, path: str) -> None:
    if not name or "=" in name:
        fail(
            "invalid_field",
            join(path, "Name"),
            "an environment variable name must be non-empty and without '='",
        )


def check_env_var(env: EnvVar, path: str) -> None:
    """A stored variable (already read by ``read_environments``) has a name and one source."""
    _check_env_name(env.name, path)
    sources = sum(ref is not None for _, ref in _env_refs(env)) + (env.value is not None)
    if sources != 1:
        fail(
            "invalid_field",
            path,
            f"environment variable {env.name!r} needs exactly one of Value, SecretKeyRef, "
            f"ConfigMapKeyRef, FieldRef or ResourceFieldRef, got {sources}",
        )


def read_environments(value: object, path: str) -> tuple[EnvVar, ...]:
    """A list of variables; a name given twice keeps its last entry, at its first position."""
    if not isinstance(value, list):
        fail("invalid_field", path, f"expected a list of environment variables, got {describe(value)}")
    out: dict[str, EnvVar] = {}
    for i, item in enumerate(value):
        env = _env_var(item, f"{path}[{i}]")
        if env.name in out:
            note(
                "env_duplicate",
                f"{path}[{i}].Name",
                f"{env.name!r} is set earlier in this list too; this later entry wins",
            )
        out[env.name] = env
    return tuple(out.values())


def quantity_text(value: object, path: str) -> str:
    as_quantity(value, path)
    return as_str(value, path)


def _object_name(value: object, path: str) -> str:
    name = as_str(value, path)
    _check_object_name(name, path)
    return name


def _volume_name(value: object, path: str) -> str:
    name = as_str(value, path)
    check_volume_name(name, path)
    return name


def check_volume_name(name: str, path: str) -> None:
    if len(name) > 63 or _DNS_LABEL.fullmatch(name) is None:
        fail(
            "invalid_field",
            path,
            f"{describe(name)} is not a volume name: use a DNS-1123 label (lowercase letters, digits "
            "and '-', starting and ending with a letter or digit) of at most 63 characters",
        )


def _medium(value: object, path: str) -> str | None:
    text = as_str(value, path)
    if text == "":
        return None
    if text.lower() != "memory":
        fail("invalid_field", path, f'expected "Memory" or "", got {describe(value)}')
    return "Memory"


_VOLUME_SOURCE_FIELDS: Mapping[VolumeKind, tuple[str, ...]] = {
    VolumeKind.PERSISTENT_VOLUME_CLAIM: ("ClaimName", "ReadOnly"),
    VolumeKind.CONFIG_MAP: ("Name",),
    VolumeKind.SECRET: ("SecretName",),
    VolumeKind.EMPTY_DIR: ("Medium", "SizeLimit"),
}
_VOLUME_KINDS = "PersistentVolumeClaim, ConfigMap, Secret or EmptyDir"


def _volume(value: object, path: str) -> Volume:
    given = fields(
        as_object(value, path), ("Name", *(kind.value for kind in VolumeKind)), path, unknown_is_error=True
    )
    r = Reader(given, path)
    name = r.required("Name", _volume_name)
    kinds = [kind for kind in VolumeKind if kind.value in given]
    if len(kinds) != 1:
        fail("invalid_field", path, f"volume {name!r} needs exactly one of {_VOLUME_KINDS}, got {len(kinds)}")
    [kind] = kinds
    where = r.at(kind.value)
    source = Reader(
        fields(
            as_object(given[kind.value], where), _VOLUME_SOURCE_FIELDS[kind], where, unknown_is_error=True
        ),
        where,
    )
    if kind is VolumeKind.EMPTY_DIR:
        return Volume(
            name=name,
            kind=kind,
            medium=source.get("Medium", _medium),
            size_limit=source.get("SizeLimit", quantity_text),
        )
    return Volume(
        name=name,
        kind=kind,
        source=source.required(_VOLUME_SOURCE_FIELDS[kind][0], _object_name),
        read_only=or_default(source.get("ReadOnly", as_bool), False),
    )


def read_volumes(value: object, path: str) -> tuple[Volume, ...]:
    if not isinstance(value, list):
        fail("invalid_field", path, f"expected a list of volumes, got {describe(value)}")
    volumes = tuple(_volume(item, f"{path}[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for i, volume in enumerate(volumes):
        if volume.name in seen:
            fail(
                "invalid_field",
                f"{path}[{i}].Name",
                f"{volume.name!r} is already declared earlier in this list",
            )
        seen.add(volume.name)
    return volumes


def _volume_mount(value: object, path: str) -> VolumeMount:
    mount_fields = ("Name", "MountPath", "ReadOnly", "SubPath")
    r = Reader(fields(as_object(value, path), mount_fields, path, unknown_is_error=True), path)
    return VolumeMount(
        name=r.required("Name", as_str),
        mount_path=r.required("MountPath", as_str),
        read_only=or_default(r.get("ReadOnly", as_bool), False),
        # An empty SubPath means the whole volume, as in Kubernetes.
        sub_path=r.get("SubPath", as_str) or None,
    )


def read_volume_mounts(value: object, path: str) -> tuple[VolumeMount, ...]:
    if not isinstance(value, list):
        fail("invalid_field", path, f"expected a list of volume mounts, got {describe(value)}")
    mounts = tuple(_volume_mount(item, f"{path}[{i}]") for i, item in enumerate(value))
    check_volume_mounts(mounts, path)
    return mounts


def check_volume_mounts(mounts: Sequence[VolumeMount], path: str) -> None:
    """Names are volume names, paths absolute and distinct, SubPaths relative; no '..' anywhere."""
    seen: set[str] = set()
    for i, mount in enumerate(mounts):
        where = f"{path}[{i}]"
        check_volume_name(mount.name, join(where, "Name"))
        if not mount.mount_path.startswith("/") or ".." in mount.mount_path.split("/"):
            fail(
                "invalid_field",
                join(where, "MountPath"),
                f"expected an absolute path without '..', got {describe(mount.mount_path)}",
            )
        if mount.mount_path in seen:
            fail(
                "invalid_field",
                join(where, "MountPath"),
                f"{mount.mount_path!r} is already mounted earlier in this list",
            )
        seen.add(mount.mount_path)
        if mount.sub_path is not None and (
            mount.sub_path.startswith("/") or ".." in mount.sub_path.split("/")
        ):
            fail(
                "invalid_field",
                join(where, "SubPath"),
                f"expected a relative path without '..', got {describe(mount.sub_path)}",
            )


def check_mounts_declared(mounts: Sequence[VolumeMount], volumes: Sequence[Volume], path: str) -> None:
    declared = {volume.name for volume in volumes}
    for i, mount in enumerate(mounts):
        if mount.name not in declared:
            fail("volume_not_allowed", f"{path}[{i}].Name", undeclared_volume(mount.name, volumes))


def undeclared_volume(name: str, volumes: Sequence[Volume]) -> str:
    if not volumes:
        return f"{name!r} is not a volume of this job, whose configuration declares no Volumes"
    declared = ", ".join(repr(volume.name) for volume in volumes)
    return f"{name!r} is not a volume of this job; its configuration declares {declared}"


# -- triggers and schedules ------------------------------------------------------------------------
