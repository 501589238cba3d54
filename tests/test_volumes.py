"""Volumes and VolumeMounts: configuration, requests, override rules, codec and Job manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched import codec
from slimsched.errors import BadRequest, ConfigError
from slimsched.jobconfig import (
    JobConfig,
    merge,
    parse_jobs_configuration,
    parse_overrides,
    parse_schedule_request,
)
from slimsched.jobmanifest import build_job_manifest, kube_job_name
from slimsched.model import (
    JobOverrides,
    JobSpec,
    Run,
    RunStatus,
    Volume,
    VolumeKind,
    VolumeMount,
)

DATA = Volume("data", VolumeKind.PERSISTENT_VOLUME_CLAIM, source="fib-data")
MODELS = Volume("models", VolumeKind.PERSISTENT_VOLUME_CLAIM, source="models", read_only=True)
SETTINGS = Volume("settings", VolumeKind.CONFIG_MAP, source="fib-settings")
CREDENTIALS = Volume("credentials", VolumeKind.SECRET, source="fib-credentials")
SCRATCH = Volume("scratch", VolumeKind.EMPTY_DIR, medium="Memory", size_limit="64Mi")
SPARE = Volume("spare", VolumeKind.EMPTY_DIR)

DATA_MOUNT = VolumeMount("data", "/data")
RESULTS_MOUNT = VolumeMount("data", "/results", sub_path="results")
MODELS_MOUNT = VolumeMount("models", "/models", read_only=True)
SETTINGS_MOUNT = VolumeMount("settings", "/etc/fib", read_only=True)
CREDENTIALS_MOUNT = VolumeMount("credentials", "/var/run/creds", read_only=True)
SCRATCH_MOUNT = VolumeMount("scratch", "/tmp")

FIB = JobConfig(
    image="fib:1",
    volumes=(DATA, MODELS, SETTINGS, CREDENTIALS, SCRATCH, SPARE),
    volume_mounts=(DATA_MOUNT, RESULTS_MOUNT, MODELS_MOUNT, SETTINGS_MOUNT, CREDENTIALS_MOUNT, SCRATCH_MOUNT),
)
NO_VOLUMES = JobConfig(image="fib:1")

FIB_DOCUMENT: dict[str, Any] = {
    "Image": "fib:1",
    "Volumes": [
        {"Name": "data", "PersistentVolumeClaim": {"ClaimName": "fib-data"}},
        {"Name": "models", "PersistentVolumeClaim": {"ClaimName": "models", "ReadOnly": True}},
        {"Name": "settings", "ConfigMap": {"Name": "fib-settings"}},
        {"Name": "credentials", "Secret": {"SecretName": "fib-credentials"}},
        {"Name": "scratch", "EmptyDir": {"Medium": "Memory", "SizeLimit": "64Mi"}},
        {"Name": "spare", "EmptyDir": {}},
    ],
    "VolumeMounts": [
        {"Name": "data", "MountPath": "/data"},
        {"Name": "data", "MountPath": "/results", "SubPath": "results"},
        {"Name": "models", "MountPath": "/models", "ReadOnly": True},
        {"Name": "settings", "MountPath": "/etc/fib", "ReadOnly": True},
        {"Name": "credentials", "MountPath": "/var/run/creds", "ReadOnly": True},
        {"Name": "scratch", "MountPath": "/tmp"},
    ],
}


def _parse(job: dict[str, Any], schedules: list[dict[str, Any]] | None = None) -> Any:
    document: dict[str, Any] = {"Configurations": {"fib": job}}
    if schedules is not None:
        document["Schedules"] = {"fib": schedules}
    return parse_jobs_configuration(json.dumps(document))


# -- configuration ---------------------------------------------------------------------------------


def test_configuration_reads_every_kind_of_volume_and_the_mounts() -> None:
    assert _parse(FIB_DOCUMENT).job("fib") == FIB


def test_configuration_keys_and_medium_are_case_insensitive_and_empty_values_mean_unset() -> None:
    jobs = _parse(
        {
            "image": "fib:1",
            "volumes": [
                {"name": "scratch", "emptyDir": {"medium": "memory", "sizeLimit": "1Gi"}},
                {"name": "disk", "emptyDir": {"medium": ""}},
            ],
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp", "readOnly": None, "subPath": ""},
                {"name": "disk", "mountPath": "/disk"},
            ],
        }
    )
    config = jobs.job("fib")
    assert config.volumes == (
        Volume("scratch", VolumeKind.EMPTY_DIR, medium="Memory", size_limit="1Gi"),
        Volume("disk", VolumeKind.EMPTY_DIR),
    )
    assert config.volume_mounts == (VolumeMount("scratch", "/tmp"), VolumeMount("disk", "/disk"))


def test_a_configuration_without_volumes_has_none() -> None:
    config = _parse({"Image": "fib:1"}).job("fib")
    assert (config.volumes, config.volume_mounts) == ((), ())
    assert merge(config, JobOverrides()).volumes == ()


def _with(**changes: Any) -> dict[str, Any]:
    return {**FIB_DOCUMENT, **changes}


def _volume(entry: dict[str, Any]) -> dict[str, Any]:
    return _with(Volumes=[entry], VolumeMounts=[])


def _mount(entry: dict[str, Any]) -> dict[str, Any]:
    return _with(VolumeMounts=[entry])


BAD_CONFIGURATIONS: list[tuple[str, dict[str, Any], str]] = [
    (
        "mount-of-undeclared-volume",
        _mount({"Name": "cache", "MountPath": "/cache"}),
        "Configurations.fib.VolumeMounts[0].Name: 'cache' is not a volume of this job; its configuration "
        "declares 'data', 'models'",
    ),
    (
        "mount-without-any-volume",
        {"Image": "fib:1", "VolumeMounts": [{"Name": "data", "MountPath": "/data"}]},
        "Configurations.fib.VolumeMounts[0].Name: 'data' is not a volume of this job, whose configuration "
        "declares no Volumes",
    ),
    ("volumes-object", _with(Volumes={"data": {}}), "Configurations.fib.Volumes: expected a list of volumes"),
    ("volume-string", _with(Volumes=["data"]), "Configurations.fib.Volumes[0]: expected an object"),
    (
        "volume-without-name",
        _volume({"EmptyDir": {}}),
        "Configurations.fib.Volumes[0].Name: required",
    ),
    (
        "volume-uppercase-name",
        _volume({"Name": "Data", "EmptyDir": {}}),
        'Configurations.fib.Volumes[0].Name: the string "Data" is not a volume name',
    ),
    ("volume-name-too-long", _volume({"Name": "a" * 64, "EmptyDir": {}}), "at most 63 characters"),
    (
        "volume-without-kind",
        _volume({"Name": "data"}),
        "Configurations.fib.Volumes[0]: volume 'data' needs exactly one of PersistentVolumeClaim, ConfigMap, "
        "Secret or EmptyDir, got 0",
    ),
    (
        "volume-of-two-kinds",
        _volume({"Name": "data", "EmptyDir": {}, "Secret": {"SecretName": "s"}}),
        "needs exactly one of PersistentVolumeClaim, ConfigMap, Secret or EmptyDir, got 2",
    ),
    (
        "volume-unknown-kind",
        _volume({"Name": "data", "HostPath": {"Path": "/"}}),
        "Volumes[0].HostPath: unknown",
    ),
    (
        "volume-declared-twice",
        _with(Volumes=[{"Name": "data", "EmptyDir": {}}, {"Name": "data", "EmptyDir": {}}]),
        "Configurations.fib.Volumes[1].Name: 'data' is already declared earlier",
    ),
    (
        "claim-without-name",
        _volume({"Name": "data", "PersistentVolumeClaim": {"ReadOnly": True}}),
        "Configurations.fib.Volumes[0].PersistentVolumeClaim.ClaimName: required",
    ),
    (
        "claim-bad-name",
        _volume({"Name": "data", "PersistentVolumeClaim": {"ClaimName": "Fib_Data"}}),
        'Volumes[0].PersistentVolumeClaim.ClaimName: the string "Fib_Data" is not a Kubernetes object name',
    ),
    (
        "claim-read-only-string",
        _volume({"Name": "data", "PersistentVolumeClaim": {"ClaimName": "d", "ReadOnly": "yes"}}),
        "Volumes[0].PersistentVolumeClaim.ReadOnly: expected true or false",
    ),
    (
        "config-map-unknown-field",
        _volume({"Name": "settings", "ConfigMap": {"Name": "s", "DefaultMode": 420}}),
        "Volumes[0].ConfigMap.DefaultMode: unknown field",
    ),
    (
        "secret-without-name",
        _volume({"Name": "creds", "Secret": {}}),
        "Volumes[0].Secret.SecretName: required",
    ),
    (
        "secret-as-string",
        _volume({"Name": "creds", "Secret": "creds"}),
        "Volumes[0].Secret: expected an object",
    ),
    (
        "empty-dir-medium",
        _volume({"Name": "scratch", "EmptyDir": {"Medium": "Disk"}}),
        'Volumes[0].EmptyDir.Medium: expected "Memory" or ""',
    ),
    (
        "empty-dir-size-limit",
        _volume({"Name": "scratch", "EmptyDir": {"SizeLimit": "1GB"}}),
        "Volumes[0].EmptyDir.SizeLimit",
    ),
    (
        "empty-dir-negative-size-limit",
        _volume({"Name": "scratch", "EmptyDir": {"SizeLimit": "-1Gi"}}),
        "cannot be negative",
    ),
    (
        "mounts-object",
        _with(VolumeMounts={}),
        "Configurations.fib.VolumeMounts: expected a list of volume mounts",
    ),
    ("mount-without-path", _mount({"Name": "data"}), "VolumeMounts[0].MountPath: required"),
    (
        "mount-relative-path",
        _mount({"Name": "data", "MountPath": "data"}),
        "VolumeMounts[0].MountPath: expected an absolute path",
    ),
    ("mount-dot-dot", _mount({"Name": "data", "MountPath": "/data/../etc"}), "VolumeMounts[0].MountPath"),
    (
        "mount-path-twice",
        _with(VolumeMounts=[{"Name": "data", "MountPath": "/x"}, {"Name": "scratch", "MountPath": "/x"}]),
        "Configurations.fib.VolumeMounts[1].MountPath: '/x' is already mounted earlier",
    ),
    (
        "mount-absolute-sub-path",
        _mount({"Name": "data", "MountPath": "/data", "SubPath": "/etc"}),
        "VolumeMounts[0].SubPath: expected a relative path",
    ),
    (
        "mount-sub-path-escapes",
        _mount({"Name": "data", "MountPath": "/data", "SubPath": "a/../../b"}),
        "VolumeMounts[0].SubPath",
    ),
    (
        "mount-read-only-int",
        _mount({"Name": "data", "MountPath": "/data", "ReadOnly": 1}),
        "VolumeMounts[0].ReadOnly: expected true or false",
    ),
    (
        "mount-unknown-field",
        _mount({"Name": "data", "MountPath": "/data", "MountPropagation": "None"}),
        "VolumeMounts[0].MountPropagation: unknown field",
    ),
]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [(d, f) for _, d, f in BAD_CONFIGURATIONS],
    ids=[i for i, *_ in BAD_CONFIGURATIONS],
)
def test_configuration_refuses(document: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(document)
    assert fragment in str(info.value)


BAD_CONFIGURED_SCHEDULES: list[tuple[str, dict[str, Any], str]] = [
    (
        "undeclared-path",
        {"Schedule": "@daily", "VolumeMounts": [{"Name": "data", "MountPath": "/elsewhere"}]},
        "Schedules.fib[0].VolumeMounts[0].MountPath: volume 'data' may not be mounted at '/elsewhere'",
    ),
    (
        "writable-models",
        {"Schedule": "@daily", "VolumeMounts": [{"Name": "models", "MountPath": "/models"}]},
        "Schedules.fib[0].VolumeMounts[0].ReadOnly",
    ),
    (
        "defines-a-volume",
        {"Schedule": "@daily", "Volumes": [{"Name": "x", "EmptyDir": {}}]},
        "Schedules.fib[0].Volumes: a request cannot define volumes",
    ),
]


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [(s, f) for _, s, f in BAD_CONFIGURED_SCHEDULES],
    ids=[i for i, *_ in BAD_CONFIGURED_SCHEDULES],
)
def test_configured_schedules_are_checked_against_the_declared_mounts(
    schedule: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(FIB_DOCUMENT, [schedule])
    assert fragment in str(info.value)


def test_configured_schedule_may_narrow_the_mounts() -> None:
    jobs = _parse(
        FIB_DOCUMENT, [{"Schedule": "@daily", "VolumeMounts": [{"Name": "data", "MountPath": "/data"}]}]
    )
    [request] = jobs.schedules["fib"]
    assert request.overrides.volume_mounts == (DATA_MOUNT,)


# -- triggers and schedules: parsing ---------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, object, str, str]] = [
    ("mounts-string", "/data", "invalid_field", "VolumeMounts: expected a list of volume mounts"),
    ("mount-string", ["data:/data"], "invalid_field", "VolumeMounts[0]: expected an object"),
    ("mount-without-name", [{"MountPath": "/data"}], "missing_field", "VolumeMounts[0].Name: required"),
    ("mount-name-int", [{"Name": 1, "MountPath": "/data"}], "invalid_field", "VolumeMounts[0].Name"),
    ("mount-bad-name", [{"Name": "my_data", "MountPath": "/data"}], "invalid_field", "VolumeMounts[0].Name"),
    (
        "mount-relative",
        [{"Name": "data", "MountPath": "./data"}],
        "invalid_field",
        "VolumeMounts[0].MountPath",
    ),
    (
        "mount-twice",
        [{"Name": "data", "MountPath": "/data"}, {"Name": "data", "MountPath": "/data", "ReadOnly": True}],
        "invalid_field",
        "VolumeMounts[1].MountPath",
    ),
    ("sub-path-int", [{"Name": "data", "MountPath": "/d", "SubPath": 3}], "invalid_field", "SubPath"),
    (
        "read-only-string",
        [{"Name": "data", "MountPath": "/d", "ReadOnly": "true"}],
        "invalid_field",
        "ReadOnly",
    ),
    (
        "unknown-field",
        [{"Name": "data", "MountPath": "/d", "Foo": 1}],
        "unknown_field",
        "VolumeMounts[0].Foo",
    ),
]


@pytest.mark.parametrize("parse", [parse_overrides, parse_schedule_request], ids=["trigger", "schedule"])
@pytest.mark.parametrize(
    ("mounts", "code", "named"),
    [(m, c, n) for _, m, c, n in BAD_REQUESTS],
    ids=[i for i, *_ in BAD_REQUESTS],
)
def test_requests_refuse_malformed_mounts(parse: Any, mounts: object, code: str, named: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(
            {"Schedule": "@daily", "VolumeMounts": mounts}
            if parse is parse_schedule_request
            else {"VolumeMounts": mounts}
        )
    assert (info.value.status, info.value.code) == (400, code)
    assert named in info.value.message


@pytest.mark.parametrize(
    "volumes", [[], ["data"], [{"Name": "data", "PersistentVolumeClaim": {"ClaimName": "x"}}]]
)
def test_requests_cannot_define_volumes(volumes: object) -> None:
    with pytest.raises(BadRequest) as info:
        parse_overrides({"Volumes": volumes})
    assert info.value.code == "volume_not_allowed"
    assert info.value.message.startswith("Volumes: a request cannot define volumes")


def test_requests_read_mounts() -> None:
    body = {
        "VolumeMounts": [
            {"Name": "data", "MountPath": "/data", "ReadOnly": True, "SubPath": "in"},
            {"name": "scratch", "mountPath": "/tmp", "subPath": ""},
        ]
    }
    expected = (VolumeMount("data", "/data", read_only=True, sub_path="in"), VolumeMount("scratch", "/tmp"))
    assert parse_overrides(body).volume_mounts == expected
    assert parse_schedule_request({"Schedule": "@daily", **body}).overrides.volume_mounts == expected
    assert parse_overrides({"VolumeMounts": None}).volume_mounts is None
    assert parse_overrides({"VolumeMounts": []}).volume_mounts == ()


# -- merging ---------------------------------------------------------------------------------------

ALLOWED: list[tuple[str, tuple[VolumeMount, ...] | None, tuple[Volume, ...], tuple[VolumeMount, ...]]] = [
    ("as-configured", None, FIB.volumes[:5], FIB.volume_mounts),
    ("none", (), (), ()),
    ("one", (SCRATCH_MOUNT,), (SCRATCH,), (SCRATCH_MOUNT,)),
    (
        "configuration-order-of-volumes",
        (SCRATCH_MOUNT, DATA_MOUNT, MODELS_MOUNT),
        (DATA, MODELS, SCRATCH),
        (SCRATCH_MOUNT, DATA_MOUNT, MODELS_MOUNT),
    ),
    ("one-volume-two-paths", (RESULTS_MOUNT, DATA_MOUNT), (DATA,), (RESULTS_MOUNT, DATA_MOUNT)),
    (
        "made-read-only",
        (replace(DATA_MOUNT, read_only=True),),
        (DATA,),
        (replace(DATA_MOUNT, read_only=True),),
    ),
    (
        "sub-path-chosen-where-none-declared",
        (replace(DATA_MOUNT, sub_path="run/42"),),
        (DATA,),
        (replace(DATA_MOUNT, sub_path="run/42"),),
    ),
    ("declared-sub-path-repeated", (RESULTS_MOUNT,), (DATA,), (RESULTS_MOUNT,)),
]


@pytest.mark.parametrize(
    ("mounts", "volumes", "expected"),
    [(m, v, e) for _, m, v, e in ALLOWED],
    ids=[i for i, *_ in ALLOWED],
)
def test_merge_allows(
    mounts: tuple[VolumeMount, ...] | None, volumes: tuple[Volume, ...], expected: tuple[VolumeMount, ...]
) -> None:
    spec = merge(FIB, JobOverrides(volume_mounts=mounts))
    assert spec.volumes == volumes
    assert spec.volume_mounts == expected


REFUSED: list[tuple[str, JobConfig, tuple[VolumeMount, ...], str, str]] = [
    (
        "undeclared-volume",
        FIB,
        (VolumeMount("cache", "/cache"),),
        "volume_not_allowed",
        "VolumeMounts[0].Name: 'cache' is not a volume of this job",
    ),
    (
        "job-without-volumes",
        NO_VOLUMES,
        (DATA_MOUNT,),
        "volume_not_allowed",
        "VolumeMounts[0].Name: 'data' is not a volume of this job, whose configuration declares no Volumes",
    ),
    (
        "declared-but-never-mounted",
        FIB,
        (VolumeMount("spare", "/spare"),),
        "volume_not_allowed",
        "VolumeMounts[0].Name: the job configuration mounts volume 'spare' nowhere",
    ),
    (
        "other-path",
        FIB,
        (SCRATCH_MOUNT, VolumeMount("data", "/")),
        "volume_not_allowed",
        "VolumeMounts[1].MountPath: volume 'data' may not be mounted at '/'; the job configuration mounts it "
        "at '/data', '/results'",
    ),
    (
        "path-of-another-volume",
        FIB,
        (VolumeMount("scratch", "/data"),),
        "volume_not_allowed",
        "VolumeMounts[0].MountPath",
    ),
    (
        "writable-over-read-only",
        FIB,
        (replace(MODELS_MOUNT, read_only=False),),
        "volume_not_allowed",
        "VolumeMounts[0].ReadOnly",
    ),
    (
        "sub-path-left-out",
        FIB,
        (replace(RESULTS_MOUNT, sub_path=None),),
        "volume_not_allowed",
        "VolumeMounts[0].SubPath: the job configuration mounts only 'results'",
    ),
    (
        "sub-path-escapes",
        FIB,
        (replace(RESULTS_MOUNT, sub_path="results/.."),),
        "invalid_field",
        "VolumeMounts[0].SubPath",
    ),
    (
        "other-sub-path",
        FIB,
        (replace(RESULTS_MOUNT, sub_path="other"),),
        "volume_not_allowed",
        "VolumeMounts[0].SubPath",
    ),
    # Overrides of stored schedules never went through parse_overrides: merge checks the shape too.
    (
        "stored-relative-path",
        FIB,
        (VolumeMount("data", "data"),),
        "invalid_field",
        "VolumeMounts[0].MountPath",
    ),
    ("stored-bad-name", FIB, (VolumeMount("Data", "/data"),), "invalid_field", "VolumeMounts[0].Name"),
    (
        "stored-twice",
        FIB,
        (DATA_MOUNT, replace(DATA_MOUNT, read_only=True)),
        "invalid_field",
        "VolumeMounts[1].MountPath",
    ),
]


@pytest.mark.parametrize(
    ("config", "mounts", "code", "named"),
    [(c, m, code, n) for _, c, m, code, n in REFUSED],
    ids=[i for i, *_ in REFUSED],
)
def test_merge_refuses(config: JobConfig, mounts: tuple[VolumeMount, ...], code: str, named: str) -> None:
    with pytest.raises(BadRequest) as info:
        merge(config, JobOverrides(volume_mounts=mounts))
    assert (info.value.status, info.value.code) == (400, code)
    assert named in info.value.message


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"VolumeMounts": [{"Name": "models", "MountPath": "/models", "ReadOnly": True}]}, True),
        ({"VolumeMounts": [{"Name": "models", "MountPath": "/models"}]}, False),
        ({"VolumeMounts": [{"Name": "models", "MountPath": "/models", "ReadOnly": False}]}, False),
        ({"VolumeMounts": [{"Name": "data", "MountPath": "/results", "SubPath": "results"}]}, True),
        ({"VolumeMounts": [{"Name": "data", "MountPath": "/results"}]}, False),
    ],
)
def test_trigger_and_schedule_bodies_end_to_end(body: dict[str, Any], allowed: bool) -> None:
    config = _parse(FIB_DOCUMENT).job("fib")
    for overrides in (
        parse_overrides(body),
        parse_schedule_request({"Schedule": "@daily", **body}).overrides,
    ):
        if allowed:
            assert merge(config, overrides).volume_mounts == overrides.volume_mounts
        else:
            with pytest.raises(BadRequest) as info:
                merge(config, overrides)
            assert info.value.code == "volume_not_allowed"


@st.composite
def _mount_variants(draw: st.DrawFn) -> VolumeMount:
    """Declared mounts, sometimes moved, made writable, given another SubPath, or not declared."""
    mount = draw(
        st.sampled_from([*FIB.volume_mounts, VolumeMount("spare", "/spare"), VolumeMount("x", "/x")])
    )
    return replace(
        mount,
        mount_path=draw(st.sampled_from([mount.mount_path, mount.mount_path, "/other"])),
        read_only=draw(st.booleans()),
        sub_path=draw(st.sampled_from([mount.sub_path, mount.sub_path, None, "sub"])),
    )


@settings(max_examples=200, deadline=None)
@given(mounts=st.none() | st.lists(_mount_variants(), max_size=4).map(tuple))
def test_merged_mounts_stay_within_the_declared_ones(mounts: tuple[VolumeMount, ...] | None) -> None:
    try:
        spec = merge(FIB, JobOverrides(volume_mounts=mounts))
    except BadRequest as e:
        assert e.code in {"volume_not_allowed", "invalid_field"}
        return
    for mount in spec.volume_mounts:
        [declared] = [
            m for m in FIB.volume_mounts if (m.name, m.mount_path) == (mount.name, mount.mount_path)
        ]
        assert mount.read_only or not declared.read_only
        assert declared.sub_path is None or mount.sub_path == declared.sub_path
    assert spec.volumes == tuple(v for v in FIB.volumes if v.name in {m.name for m in spec.volume_mounts})


# -- Job manifest ----------------------------------------------------------------------------------


def _run(spec: JobSpec) -> Run:
    return Run(
        id="run-0001",
        job_name="fib",
        spec=spec,
        status=RunStatus.DISPATCHING,
        queued_at_ms=1_700_000_000_000,
        kube_name=kube_job_name("fib", "run-0001"),
    )


def _pod_spec(spec: JobSpec) -> dict[str, Any]:
    manifest = build_job_manifest(_run(spec), namespace="jobs", raft_term=1, raft_index=2, schedule_id=None)
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def test_manifest_carries_volumes_and_mounts() -> None:
    pod = _pod_spec(merge(FIB, JobOverrides()))
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "fib-data"}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        {"name": "settings", "configMap": {"name": "fib-settings"}},
        {"name": "credentials", "secret": {"secretName": "fib-credentials"}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    [container] = pod["containers"]
    assert container["volumeMounts"] == [
        {"name": "data", "mountPath": "/data"},
        {"name": "data", "mountPath": "/results", "subPath": "results"},
        {"name": "models", "mountPath": "/models", "readOnly": True},
        {"name": "settings", "mountPath": "/etc/fib", "readOnly": True},
        {"name": "credentials", "mountPath": "/var/run/creds", "readOnly": True},
        {"name": "scratch", "mountPath": "/tmp"},
    ]


def test_manifest_empty_dir_without_settings() -> None:
    spec = JobSpec(image="fib:1", volumes=(SPARE,), volume_mounts=(VolumeMount("spare", "/spare"),))
    assert _pod_spec(spec)["volumes"] == [{"name": "spare", "emptyDir": {}}]


@pytest.mark.parametrize("mounts", [None, ()], ids=["as-configured", "none"])
def test_manifest_leaves_volumes_out_when_there_are_none(mounts: tuple[VolumeMount, ...] | None) -> None:
    config = NO_VOLUMES if mounts is None else FIB
    pod = _pod_spec(merge(config, JobOverrides(volume_mounts=mounts)))
    assert "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]


# -- codec -----------------------------------------------------------------------------------------


def test_codec_encodes_volumes_with_pascal_case_keys() -> None:
    spec = merge(FIB, JobOverrides())
    encoded = codec.spec_to_dict(spec)
    assert encoded["Volumes"] == [
        {"Name": "data", "PersistentVolumeClaim": {"ClaimName": "fib-data", "ReadOnly": False}},
        {"Name": "models", "PersistentVolumeClaim": {"ClaimName": "models", "ReadOnly": True}},
        {"Name": "settings", "ConfigMap": {"Name": "fib-settings"}},
        {"Name": "credentials", "Secret": {"SecretName": "fib-credentials"}},
        {"Name": "scratch", "EmptyDir": {"Medium": "Memory", "SizeLimit": "64Mi"}},
    ]
    assert encoded["VolumeMounts"][1] == {
        "Name": "data",
        "MountPath": "/results",
        "ReadOnly": False,
        "SubPath": "results",
    }
    assert codec.spec_from_dict(encoded) == spec
    assert codec.spec_from_dict(json.loads(json.dumps(encoded))) == spec


def test_codec_leaves_out_what_is_not_set_and_reads_old_dicts() -> None:
    encoded = codec.spec_to_dict(JobSpec(image="fib:1"))
    assert "Volumes" not in encoded and "VolumeMounts" not in encoded
    assert codec.spec_from_dict({"Image": "fib:1"}) == JobSpec(image="fib:1")
    assert "VolumeMounts" not in codec.overrides_to_dict(JobOverrides())
    assert codec.overrides_from_dict({}).volume_mounts is None
    assert codec.overrides_to_dict(JobOverrides(volume_mounts=())) == {"VolumeMounts": []}
    assert codec.overrides_from_dict({"VolumeMounts": []}).volume_mounts == ()


@pytest.mark.parametrize(
    "volume",
    [
        {"Name": "x"},
        {"Name": "x", "EmptyDir": {}, "Secret": {"SecretName": "s"}},
        {"Name": "x", "Secret": "s"},
        {"Name": "x", "Secret": {}},
        {"Name": 1, "EmptyDir": {}},
        {"Name": "x", "PersistentVolumeClaim": {"ClaimName": "c", "ReadOnly": "no"}},
        {"Name": "x", "EmptyDir": {}, "Extra": 1},
    ],
)
def test_codec_refuses_malformed_volumes(volume: dict[str, Any]) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        codec.spec_from_dict({"Image": "fib:1", "Volumes": [volume]})


_names = st.sampled_from(["data", "scratch", "a-1"])
_volumes = st.one_of(
    st.builds(
        Volume,
        name=_names,
        kind=st.just(VolumeKind.PERSISTENT_VOLUME_CLAIM),
        source=st.sampled_from(["c", "claim.x"]),
        read_only=st.booleans(),
    ),
    st.builds(
        Volume,
        name=_names,
        kind=st.sampled_from([VolumeKind.CONFIG_MAP, VolumeKind.SECRET]),
        source=st.sampled_from(["s", "settings"]),
    ),
    st.builds(
        Volume,
        name=_names,
        kind=st.just(VolumeKind.EMPTY_DIR),
        medium=st.none() | st.just("Memory"),
        size_limit=st.none() | st.sampled_from(["1Gi", "500M"]),
    ),
)
_mounts = st.builds(
    VolumeMount,
    name=_names,
    mount_path=st.text(min_size=1, max_size=6),
    read_only=st.booleans(),
    sub_path=st.none() | st.text(max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(
    volumes=st.lists(_volumes, max_size=3).map(tuple),
    mounts=st.lists(_mounts, max_size=3).map(tuple),
    requested=st.none() | st.lists(_mounts, max_size=3).map(tuple),
)
def test_codec_round_trips(
    volumes: tuple[Volume, ...], mounts: tuple[VolumeMount, ...], requested: tuple[VolumeMount, ...] | None
) -> None:
    spec = JobSpec(image="fib:1", volumes=volumes, volume_mounts=mounts)
    assert codec.spec_from_dict(json.loads(json.dumps(codec.spec_to_dict(spec)))) == spec
    overrides = JobOverrides(volume_mounts=requested)
    assert codec.overrides_from_dict(json.loads(json.dumps(codec.overrides_to_dict(overrides)))) == overrides
