"""Job configuration: quantities, parsing of configurations/triggers/schedules, override rules."""

from __future__ import annotations

import json
from dataclasses import replace
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimsched import codec
from slimsched.errors import BadRequest, ConfigError
from slimsched.jobconfig import (
    BUILTIN_DEFAULT,
    DEFAULT_JOB,
    JobConfig,
    JobsConfiguration,
    ScheduleRequest,
    collecting,
    merge,
    parse_jobs_configuration,
    parse_overrides,
    parse_schedule_request,
    visibility_of,
)
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    JobSpec,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Visibility,
    VolumeMount,
)
from slimsched.quantities import parse_quantity

# -- quantities ------------------------------------------------------------------------------------

VALID_QUANTITIES = [
    ("0", Fraction(0)),
    ("1", Fraction(1)),
    ("007", Fraction(7)),
    ("1.5", Fraction(3, 2)),
    ("1.", Fraction(1)),
    (".5", Fraction(1, 2)),
    ("+2", Fraction(2)),
    ("-2", Fraction(-2)),
    ("100m", Fraction(1, 10)),
    ("0.4", Fraction(2, 5)),
    ("1n", Fraction(1, 10**9)),
    ("1u", Fraction(1, 10**6)),
    ("2k", Fraction(2000)),
    ("3M", Fraction(3 * 10**6)),
    ("1G", Fraction(10**9)),
    ("1T", Fraction(10**12)),
    ("1P", Fraction(10**15)),
    ("1E", Fraction(10**18)),
    ("1Ki", Fraction(1024)),
    ("100Mi", Fraction(100 * 2**20)),
    ("1.5Gi", Fraction(3 * 2**29)),
    ("1Ti", Fraction(2**40)),
    ("1Pi", Fraction(2**50)),
    ("1Ei", Fraction(2**60)),
    ("1e3", Fraction(1000)),
    ("1E3", Fraction(1000)),
    ("1e+3", Fraction(1000)),
    ("25e-2", Fraction(1, 4)),
    ("1e03", Fraction(1000)),
    ("1e00000000001", Fraction(10)),
    ("1e-1000", Fraction(1, 10**9)),
    ("0.1n", Fraction(1, 10**9)),
    ("1e-12", Fraction(1, 10**9)),
    ("-0.1n", Fraction(-1, 10**9)),
    ("1.0000000001", Fraction(1_000_000_001, 10**9)),
    ("8Ei", Fraction(2**63 - 1)),
]


@pytest.mark.parametrize(("text", "expected"), VALID_QUANTITIES, ids=[t for t, _ in VALID_QUANTITIES])
def test_parse_quantity_valid(text: str, expected: Fraction) -> None:
    assert parse_quantity(text) == expected


INVALID_QUANTITIES = [
    ("empty", ""),
    ("space-before", " 1"),
    ("space-after", "1 "),
    ("inner-space", "1 Gi"),
    ("sign-only", "-"),
    ("dot-only", "."),
    ("word", "ten"),
    ("bare-suffix", "Mi"),
    ("upper-k", "1K"),
    ("bytes", "1KB"),
    ("lower-mi", "1mi"),
    ("gib", "1GiB"),
    ("e-without-digits", "1e"),
    ("e-sign-only", "1e+"),
    ("fractional-exponent", "1e1.5"),
    ("two-dots", "1.5.5"),
    ("suffix-then-digits", "1m3"),
    ("exponent-after-suffix", "1Ee3"),
    ("two-suffixes", "1kMi"),
    ("double-sign", "--1"),
    ("unicode-digit", "\u0661"),
    ("huge-exponent", "1e1001"),
    ("endless-exponent", "1e" + "9" * 5000),
    ("too-many-digits", "1" * 1001),
]


@pytest.mark.parametrize("text", [t for _, t in INVALID_QUANTITIES], ids=[i for i, _ in INVALID_QUANTITIES])
def test_parse_quantity_invalid(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_quantity(text)


def test_parse_quantity_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        parse_quantity(1)  # type: ignore[arg-type]


# -- parse_overrides -------------------------------------------------------------------------------


def _bad_request(call: Any, body: object) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        call(body)
    return info.value


BAD_OVERRIDES: list[tuple[str, object, str, str]] = [
    ("list-body", [], "invalid_body", "JSON object"),
    ("string-body", "x", "invalid_body", "JSON object"),
    ("null-body", None, "invalid_body", "JSON object"),
    ("two-inexact-spellings", {"image": "a", "IMAGE": "b"}, "duplicate_field", "Image"),
    ("image-int", {"Image": 1}, "invalid_field", "Image"),
    ("args-string", {"Args": "42"}, "invalid_field", "Args"),
    ("args-int-item", {"Args": [42]}, "invalid_field", "Args[0]"),
    ("command-object", {"Command": {}}, "invalid_field", "Command"),
    ("depends-on-item", {"DependsOn": [None]}, "invalid_field", "DependsOn[0]"),
    ("depends-on-bad-name", {"DependsOn": ["Not_A_Name"]}, "invalid_field", "DependsOn[0]"),
    ("resources-list", {"Resources": []}, "invalid_field", "Resources"),
    ("requests-list", {"Resources": {"Requests": ["cpu"]}}, "invalid_field", "Resources.Requests"),
    ("quantity-int", {"Resources": {"Limits": {"cpu": 1}}}, "invalid_field", "Resources.Limits.cpu"),
    ("quantity-bad", {"Resources": {"Limits": {"cpu": "1x"}}}, "invalid_quantity", "Resources.Limits.cpu"),
    ("quantity-negative", {"Resources": {"Requests": {"memory": "-1Mi"}}}, "invalid_quantity", "negative"),
    ("resource-name-empty", {"Resources": {"Requests": {"": "1"}}}, "invalid_field", "Resources.Requests"),
    ("environments-object", {"Environments": {"A": "b"}}, "invalid_field", "Environments"),
    ("env-not-object", {"Environments": ["A=b"]}, "invalid_field", "Environments[0]"),
    ("env-no-name", {"Environments": [{"Value": "b"}]}, "missing_field", "Environments[0].Name"),
    ("env-empty-name", {"Environments": [{"Name": "", "Value": "b"}]}, "invalid_field", "Name"),
    ("env-name-equals", {"Environments": [{"Name": "A=B", "Value": "b"}]}, "invalid_field", "Name"),
    (
        "env-value-int",
        {"Environments": [{"Name": "A", "Value": 3}]},
        "invalid_field",
        "Environments[0].Value",
    ),
    (
        "secret-ref-no-key",
        {"Environments": [{"Name": "A", "SecretKeyRef": {"Name": "s"}}]},
        "missing_field",
        "Environments[0].SecretKeyRef.Key",
    ),
    (
        "secret-ref-string",
        {"Environments": [{"Name": "A", "SecretKeyRef": "s"}]},
        "invalid_field",
        "Environments[0].SecretKeyRef",
    ),
    (
        "field-ref-no-path",
        {"Environments": [{"Name": "A", "FieldRef": {}}]},
        "missing_field",
        "FieldRef.FieldPath",
    ),
    (
        "field-ref-api-version",
        {"Environments": [{"Name": "A", "FieldRef": {"FieldPath": "x", "ApiVersion": "v2"}}]},
        "invalid_field",
        "FieldRef.ApiVersion",
    ),
    (
        "resource-field-ref-no-resource",
        {"Environments": [{"Name": "A", "ResourceFieldRef": {"Divisor": "1m"}}]},
        "missing_field",
        "ResourceFieldRef.Resource",
    ),
    (
        "resource-field-ref-bad-divisor",
        {"Environments": [{"Name": "A", "ResourceFieldRef": {"Resource": "limits.cpu", "Divisor": "x"}}]},
        "invalid_quantity",
        "ResourceFieldRef.Divisor",
    ),
    ("backoff-negative", {"BackoffLimit": -1}, "invalid_field", "BackoffLimit"),
    ("backoff-float", {"BackoffLimit": 1.0}, "invalid_field", "BackoffLimit"),
    ("backoff-bool", {"BackoffLimit": True}, "invalid_field", "BackoffLimit"),
    ("backoff-string", {"BackoffLimit": "1"}, "invalid_field", "BackoffLimit"),
    ("backoff-over-int32", {"BackoffLimit": 2**31}, "invalid_field", "BackoffLimit"),
    ("ttl-negative", {"TtlSecondsAfterFinished": -5}, "invalid_field", "TtlSecondsAfterFinished"),
    ("deadline-zero", {"ActiveDeadlineSeconds": 0}, "invalid_field", "ActiveDeadlineSeconds"),
    ("parallelism-zero", {"Parallelism": 0}, "invalid_field", "Parallelism"),
    ("completions-negative", {"Completions": -1}, "invalid_field", "Completions"),
    ("restart-always", {"RestartPolicy": "Always"}, "invalid_field", "RestartPolicy"),
    ("restart-int", {"RestartPolicy": 1}, "invalid_field", "RestartPolicy"),
]


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [(b, c, n) for _, b, c, n in BAD_OVERRIDES],
    ids=[i for i, *_ in BAD_OVERRIDES],
)
def test_parse_overrides_refuses(body: object, code: str, named: str) -> None:
    error = _bad_request(parse_overrides, body)
    assert error.code == code
    assert error.status == 400
    assert named in error.message
    assert error.message.endswith(".")


def test_parse_overrides_empty_body_changes_nothing() -> None:
    assert parse_overrides({}) == JobOverrides()


def test_parse_overrides_reads_every_field() -> None:
    body = {
        "Image": "axaguildev/fibonacci-batch:1.0.1",
        "Args": ["42", "43"],
        "Command": ["/bin/run"],
        "DependsOn": ["fibonacci2"],
        "Resources": {"Requests": {"cpu": "200m", "memory": "200Mi"}, "Limits": {"cpu": "200m"}},
        "Environments": [
            {"Name": "PLAIN", "Value": "1"},
            {"Name": "SECRET", "SecretKeyRef": {"Name": "s", "Key": "k"}},
            {"Name": "CONFIG", "ConfigMapKeyRef": {"Name": "c", "Key": "k"}},
            {"Name": "POD", "FieldRef": {"FieldPath": "metadata.name", "ApiVersion": "v1"}},
            {"Name": "CPU", "ResourceFieldRef": {"Resource": "limits.cpu", "Divisor": "1m"}},
        ],
        "BackoffLimit": 0,
        "TtlSecondsAfterFinished": 100,
        "RestartPolicy": "Never",
        "ActiveDeadlineSeconds": 600,
        "Parallelism": 2,
        "Completions": 3,
    }
    assert parse_overrides(body) == JobOverrides(
        image="axaguildev/fibonacci-batch:1.0.1",
        args=("42", "43"),
        command=("/bin/run",),
        depends_on=("fibonacci2",),
        resources=Resources(requests={"cpu": "200m", "memory": "200Mi"}, limits={"cpu": "200m"}),
        environments=(
            EnvVar("PLAIN", value="1"),
            EnvVar("SECRET", secret_key_ref=KeyRef("s", "k")),
            EnvVar("CONFIG", config_map_key_ref=KeyRef("c", "k")),
            EnvVar("POD", field_path="metadata.name"),
            EnvVar("CPU", resource_field_ref=ResourceFieldRef("limits.cpu", divisor="1m")),
        ),
        backoff_limit=0,
        ttl_seconds_after_finished=100,
        restart_policy=RestartPolicy.NEVER,
        active_deadline_seconds=600,
        parallelism=2,
        completions=3,
    )


TOLERATED_OVERRIDES: list[tuple[str, object, JobOverrides]] = [
    ("camel-case", {"image": "a", "backoffLimit": 0}, JobOverrides(image="a", backoff_limit=0)),
    ("upper-case", {"IMAGE": "a", "ARGS": ["1"]}, JobOverrides(image="a", args=("1",))),
    ("null-is-absent", {"Image": None, "Args": None, "BackoffLimit": None}, JobOverrides()),
    ("empty-image-is-configured", {"Image": ""}, JobOverrides()),
    (
        "restart-policy-any-case",
        {"restartPolicy": "onfailure"},
        JobOverrides(restart_policy=RestartPolicy.ON_FAILURE),
    ),
    (
        "resources-camel-case",
        {"resources": {"requests": {"cpu": "1"}, "limits": {}}},
        JobOverrides(resources=Resources(requests={"cpu": "1"}, limits={})),
    ),
    (
        "env-camel-case-docs",
        {"environments": [{"name": "MY_ENV", "value": "someValue"}]},
        JobOverrides(environments=(EnvVar("MY_ENV", value="someValue"),)),
    ),
    (
        "env-camel-case-refs",
        {"environments": [{"name": "S", "secretKeyRef": {"name": "n", "key": "k"}}]},
        JobOverrides(environments=(EnvVar("S", secret_key_ref=KeyRef("n", "k")),)),
    ),
    (
        "env-dotnet-ref-names",
        {
            "Environments": [
                {"Name": "S", "SecretRef": {"Name": "n", "Key": "k"}},
                {"Name": "C", "ConfigMapRef": {"Name": "m", "Key": "k"}},
            ]
        },
        JobOverrides(
            environments=(
                EnvVar("S", secret_key_ref=KeyRef("n", "k")),
                EnvVar("C", config_map_key_ref=KeyRef("m", "k")),
            )
        ),
    ),
    (
        "env-empty-value-beside-ref",
        {"Environments": [{"Name": "S", "Value": "", "SecretKeyRef": {"Name": "n", "Key": "k"}}]},
        JobOverrides(environments=(EnvVar("S", secret_key_ref=KeyRef("n", "k")),)),
    ),
    (
        "env-empty-value",
        {"Environments": [{"Name": "E", "Value": ""}]},
        JobOverrides(environments=(EnvVar("E", value=""),)),
    ),
    ("empty-lists", {"Args": [], "DependsOn": []}, JobOverrides(args=(), depends_on=())),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b, e) for _, b, e in TOLERATED_OVERRIDES],
    ids=[i for i, *_ in TOLERATED_OVERRIDES],
)
def test_parse_overrides_tolerates(body: object, expected: JobOverrides) -> None:
    assert parse_overrides(body) == expected


# What SlimFaas accepts and reads one way, read the same way with a note saying how (the API's
# Warning header). Each changed a 400 into this: issue 17 (SlimFaas's System.Text.Json ignores
# unknown members and reads only the exact PascalCase name; its CreateJobAsync keeps the first
# reference of an environment variable and sends a missing Value as an empty one).
ADJUSTED_OVERRIDES: list[tuple[str, object, JobOverrides, list[tuple[str, str]]]] = [
    (
        "unknown-field",
        {"Imagee": "x", "Args": ["1"]},
        JobOverrides(args=("1",)),
        [("unknown_field", "Imagee")],
    ),
    ("schedule-in-trigger", {"Schedule": "* * * * *"}, JobOverrides(), [("unknown_field", "Schedule")]),
    (
        "exact-spelling-wins",
        {"image": "b", "Image": "a"},
        JobOverrides(image="a"),
        [("duplicate_field", "image")],
    ),
    (
        "exact-spelling-wins-when-first",
        {"Image": "a", "image": "b"},
        JobOverrides(image="a"),
        [("duplicate_field", "image")],
    ),
    (
        "resources-unknown",
        {"Resources": {"Request": {"cpu": "1"}, "Limits": {"cpu": "1"}}},
        JobOverrides(resources=Resources(requests={}, limits={"cpu": "1"})),
        [("unknown_field", "Resources.Request")],
    ),
    (
        "env-no-source-is-empty",
        {"Environments": [{"Name": "A"}]},
        JobOverrides(environments=(EnvVar("A", value=""),)),
        [],
    ),
    (
        "env-reference-beats-value",
        {"Environments": [{"Name": "A", "Value": "v", "FieldRef": {"FieldPath": "metadata.name"}}]},
        JobOverrides(environments=(EnvVar("A", field_path="metadata.name"),)),
        [("env_source_ignored", "Environments[0].Value")],
    ),
    (
        "env-secret-beats-config-map",
        {
            "Environments": [
                {
                    "Name": "A",
                    "ConfigMapRef": {"Name": "c", "Key": "k"},
                    "SecretRef": {"Name": "s", "Key": "k"},
                }
            ]
        },
        JobOverrides(environments=(EnvVar("A", secret_key_ref=KeyRef("s", "k")),)),
        [("env_source_ignored", "Environments[0].ConfigMapKeyRef")],
    ),
    (
        "env-unknown-key",
        {"Environments": [{"Name": "A", "Value": "v", "Optional": True}]},
        JobOverrides(environments=(EnvVar("A", value="v"),)),
        [("unknown_field", "Environments[0].Optional")],
    ),
    (
        "env-duplicate-name-last-wins",
        {
            "Environments": [
                {"Name": "A", "Value": "1"},
                {"Name": "B", "Value": "b"},
                {"Name": "A", "Value": "2"},
            ]
        },
        JobOverrides(environments=(EnvVar("A", value="2"), EnvVar("B", value="b"))),
        [("env_duplicate", "Environments[2].Name")],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected", "notes"),
    [(b, e, n) for _, b, e, n in ADJUSTED_OVERRIDES],
    ids=[i for i, *_ in ADJUSTED_OVERRIDES],
)
def test_parse_overrides_adjusts_with_a_note(
    body: object, expected: JobOverrides, notes: list[tuple[str, str]]
) -> None:
    with collecting() as got:
        assert parse_overrides(body) == expected
    assert [(n.code, n.path) for n in got] == notes
    assert all(n.message.endswith(".") for n in got)


def test_notes_outside_a_collecting_block_are_dropped() -> None:
    assert parse_overrides({"Imagee": "x"}) == JobOverrides()
    with collecting() as outer:
        with collecting() as inner:
            parse_overrides({"A": 1})
        parse_overrides({"B": 1})
    assert [n.path for n in inner] == ["A"] and [n.path for n in outer] == ["B"]


def test_parse_overrides_where_prefixes_paths() -> None:
    error = _bad_request(lambda b: parse_overrides(b, where="Schedules.x[0]"), {"BackoffLimit": "1"})
    assert error.message.startswith("Schedules.x[0].BackoffLimit: expected an integer")


# -- parse_schedule_request ------------------------------------------------------------------------


def test_parse_schedule_request_defaults() -> None:
    assert parse_schedule_request({"Schedule": "0 0 * * *", "Args": ["42"]}) == ScheduleRequest(
        schedule="0 0 * * *", overrides=JobOverrides(args=("42",))
    )


def test_parse_schedule_request_reads_every_field() -> None:
    body = {
        "schedule": "*/5 * * * *",
        "timeZone": "Europe/Paris",
        "concurrencyPolicy": "forbid",
        "startingDeadlineSeconds": 0,
        "paused": True,
        "image": "img",
        "backoffLimit": 0,
    }
    assert parse_schedule_request(body) == ScheduleRequest(
        schedule="*/5 * * * *",
        time_zone="Europe/Paris",
        concurrency_policy=ConcurrencyPolicy.FORBID,
        starting_deadline_seconds=0,
        paused=True,
        overrides=JobOverrides(image="img", backoff_limit=0),
    )


def test_parse_schedule_request_does_not_judge_the_cron_expression() -> None:
    assert parse_schedule_request({"Schedule": "not a cron"}).schedule == "not a cron"


BAD_SCHEDULES: list[tuple[str, object, str, str]] = [
    ("list-body", [{"Schedule": "* * * * *"}], "invalid_body", "JSON object"),
    ("no-schedule", {"Args": ["1"]}, "missing_field", "Schedule"),
    ("null-schedule", {"Schedule": None}, "missing_field", "Schedule"),
    ("schedule-int", {"Schedule": 5}, "invalid_field", "Schedule"),
    ("time-zone-int", {"Schedule": "* * * * *", "TimeZone": 1}, "invalid_field", "TimeZone"),
    ("policy-unknown", {"Schedule": "* * * * *", "ConcurrencyPolicy": "Skip"}, "invalid_field", "Allow"),
    (
        "deadline-negative",
        {"Schedule": "* * * * *", "StartingDeadlineSeconds": -1},
        "invalid_field",
        "Starting",
    ),
    (
        "deadline-string",
        {"Schedule": "* * * * *", "StartingDeadlineSeconds": "60"},
        "invalid_field",
        "Starting",
    ),
    ("paused-string", {"Schedule": "* * * * *", "Paused": "yes"}, "invalid_field", "Paused"),
    ("override-type", {"Schedule": "* * * * *", "Parallelism": "2"}, "invalid_field", "Parallelism"),
    (
        "override-quantity",
        {"Schedule": "* * * * *", "Resources": {"Limits": {"memory": "lots"}}},
        "invalid_quantity",
        "Resources.Limits.memory",
    ),
    ("two-inexact-spellings", {"schedule": "* * * * *", "SCHEDULE": "@daily"}, "duplicate_field", "Schedule"),
]


def test_parse_schedule_request_ignores_unknown_fields_with_a_note() -> None:
    """SlimFaas's ListScheduleJob answers carry an Id: posting one back works (issue 17)."""
    with collecting() as notes:
        request = parse_schedule_request(
            {"Schedule": "* * * * *", "Cron": "x", "Id": "x", "schedule": "@daily"}
        )
    assert request.schedule == "* * * * *"
    assert [(n.code, n.path) for n in notes] == [
        ("unknown_field", "Cron"),
        ("unknown_field", "Id"),
        ("duplicate_field", "schedule"),
    ]


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [(b, c, n) for _, b, c, n in BAD_SCHEDULES],
    ids=[i for i, *_ in BAD_SCHEDULES],
)
def test_parse_schedule_request_refuses(body: object, code: str, named: str) -> None:
    error = _bad_request(parse_schedule_request, body)
    assert error.code == code
    assert named in error.message


# -- merge -----------------------------------------------------------------------------------------

FIB = JobConfig(
    image="axaguildev/fibonacci-batch:latest",
    images_whitelist=("axaguildev/fibonacci-batch:*", "registry.local/tools/*"),
    resources=Resources(
        requests={"cpu": "400m", "memory": "400Mi"},
        limits={"cpu": "1", "memory": "400Mi", "nvidia.com/gpu": "2"},
    ),
    depends_on=("fibonacci1",),
    environments=(EnvVar("A", value="config-a"), EnvVar("B", value="config-b")),
    backoff_limit=3,
    ttl_seconds_after_finished=3600,
    restart_policy=RestartPolicy.ON_FAILURE,
    active_deadline_seconds=600,
    command=("/bin/fib",),
    parallelism=4,
    completions=4,
)
STRICT = JobConfig(image="busybox:1.36", resources=Resources(requests={"cpu": "100m"}))
UNBOUNDED = replace(FIB, ttl_seconds_after_finished=None, active_deadline_seconds=None)
NEVER = replace(FIB, restart_policy=RestartPolicy.NEVER)
DEFAULT_WITH_WHITELIST = replace(BUILTIN_DEFAULT, images_whitelist=("*",))

ALLOWED_MERGES: list[tuple[str, JobConfig, JobOverrides]] = [
    ("nothing", FIB, JobOverrides()),
    ("configured-image", FIB, JobOverrides(image="axaguildev/fibonacci-batch:latest")),
    ("whitelisted-tag", FIB, JobOverrides(image="axaguildev/fibonacci-batch:1.0.1")),
    ("whitelisted-path", FIB, JobOverrides(image="registry.local/tools/x:1")),
    ("configured-image-without-whitelist", STRICT, JobOverrides(image="busybox:1.36")),
    ("default-whitelist-star", DEFAULT_WITH_WHITELIST, JobOverrides(image="anything:1")),
    ("lower-request", FIB, JobOverrides(resources=Resources(requests={"cpu": "200m"}))),
    ("equal-request", FIB, JobOverrides(resources=Resources(requests={"cpu": "400m", "memory": "400Mi"}))),
    (
        "equal-in-other-units",
        FIB,
        JobOverrides(resources=Resources(requests={"cpu": "0.4", "memory": "419430400"})),
    ),
    ("lower-limit", FIB, JobOverrides(resources=Resources(limits={"cpu": "500m"}))),
    ("lower-backoff", FIB, JobOverrides(backoff_limit=0)),
    ("equal-backoff", FIB, JobOverrides(backoff_limit=3)),
    ("lower-ttl", FIB, JobOverrides(ttl_seconds_after_finished=0)),
    ("any-ttl-when-unbounded", UNBOUNDED, JobOverrides(ttl_seconds_after_finished=10**9)),
    ("lower-deadline", FIB, JobOverrides(active_deadline_seconds=1)),
    ("any-deadline-when-unbounded", UNBOUNDED, JobOverrides(active_deadline_seconds=10**12)),
    ("lower-parallelism", FIB, JobOverrides(parallelism=1)),
    ("lower-completions", FIB, JobOverrides(completions=2)),
    ("on-failure-to-never", FIB, JobOverrides(restart_policy=RestartPolicy.NEVER)),
    ("never-stays-never", NEVER, JobOverrides(restart_policy=RestartPolicy.NEVER)),
]


@pytest.mark.parametrize(
    ("config", "overrides"),
    [(c, o) for _, c, o in ALLOWED_MERGES],
    ids=[i for i, *_ in ALLOWED_MERGES],
)
def test_merge_allows(config: JobConfig, overrides: JobOverrides) -> None:
    spec = merge(config, overrides)
    if overrides.image:
        assert spec.image == overrides.image
    if overrides.resources is not None:
        for name, amount in overrides.resources.requests.items():
            assert spec.resources.requests[name] == amount
        for name, amount in overrides.resources.limits.items():
            assert spec.resources.limits[name] == amount


REFUSED_MERGES: list[tuple[str, JobConfig, JobOverrides, str, tuple[str, ...]]] = [
    (
        "image-not-whitelisted",
        FIB,
        JobOverrides(image="evil/miner:1"),
        "image_not_allowed",
        ("evil/miner:1",),
    ),
    ("image-case-matters", FIB, JobOverrides(image="AXAGUILDEV/fibonacci-batch:1"), "image_not_allowed", ()),
    (
        "image-no-whitelist",
        STRICT,
        JobOverrides(image="busybox:latest"),
        "image_not_allowed",
        ("busybox:1.36",),
    ),
    ("default-needs-image", BUILTIN_DEFAULT, JobOverrides(), "image_required", ("Image",)),
    ("default-admits-no-image", BUILTIN_DEFAULT, JobOverrides(image="busybox"), "image_not_allowed", ()),
    (
        "quantity-malformed",
        FIB,
        JobOverrides(resources=Resources(limits={"cpu": "lots"})),
        "invalid_quantity",
        ("Resources.Limits.cpu",),
    ),
    (
        "quantity-negative",
        FIB,
        JobOverrides(resources=Resources(requests={"cpu": "-1"})),
        "invalid_quantity",
        ("Resources.Requests.cpu",),
    ),
    ("backoff-negative", FIB, JobOverrides(backoff_limit=-1), "invalid_field", ("BackoffLimit",)),
    (
        "ttl-negative",
        UNBOUNDED,
        JobOverrides(ttl_seconds_after_finished=-1),
        "invalid_field",
        ("TtlSeconds",),
    ),
    (
        "deadline-zero",
        UNBOUNDED,
        JobOverrides(active_deadline_seconds=0),
        "invalid_field",
        ("ActiveDeadline",),
    ),
    ("parallelism-zero", FIB, JobOverrides(parallelism=0), "invalid_field", ("Parallelism",)),
    (
        "env-without-source",
        FIB,
        JobOverrides(environments=(EnvVar("X"),)),
        "invalid_field",
        ("Environments[0]",),
    ),
    (
        "env-two-sources",
        FIB,
        JobOverrides(environments=(EnvVar("X", value="1", field_path="metadata.name"),)),
        "invalid_field",
        ("exactly one",),
    ),
]


@pytest.mark.parametrize(
    ("config", "overrides", "code", "named"),
    [(c, o, code, n) for _, c, o, code, n in REFUSED_MERGES],
    ids=[i for i, *_ in REFUSED_MERGES],
)
def test_merge_refuses(config: JobConfig, overrides: JobOverrides, code: str, named: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as info:
        merge(config, overrides)
    assert info.value.code == code
    for fragment in named:
        assert fragment in info.value.message


# Issue 17: SlimFaas's docs make BackoffLimit, TtlSecondsAfterFinished and RestartPolicy plain
# overrides, and its JobResourceValidator caps resources instead of refusing them; our own
# additions (ActiveDeadlineSeconds, Parallelism, Completions) are capped the same way. These
# were 400s (over_limit, resource_over_limit, resource_not_configured, limit_below_request).
# SlimFaas: tests/SlimFaas.Tests/Jobs/JobResourceValidatorTests.cs (capped to the configured
# value, keys the configuration lacks dropped).
ADJUSTED_MERGES: list[tuple[str, JobConfig, JobOverrides, dict[str, object], list[tuple[str, str]]]] = [
    ("backoff-raised", FIB, JobOverrides(backoff_limit=4), {"backoff_limit": 4}, []),
    (
        "ttl-raised",
        FIB,
        JobOverrides(ttl_seconds_after_finished=3601),
        {"ttl_seconds_after_finished": 3601},
        [],
    ),
    (
        "never-to-on-failure",
        NEVER,
        JobOverrides(restart_policy=RestartPolicy.ON_FAILURE),
        {"restart_policy": RestartPolicy.ON_FAILURE},
        [],
    ),
    (
        "deadline-raised",
        FIB,
        JobOverrides(active_deadline_seconds=601),
        {"active_deadline_seconds": 600},
        [("capped", "ActiveDeadlineSeconds")],
    ),
    ("parallelism-raised", FIB, JobOverrides(parallelism=5), {"parallelism": 4}, [("capped", "Parallelism")]),
    ("completions-raised", FIB, JobOverrides(completions=5), {"completions": 4}, [("capped", "Completions")]),
    (
        "request-over",
        FIB,
        JobOverrides(resources=Resources(requests={"cpu": "401m"})),
        {"resources": FIB.resources},
        [("resource_capped", "Resources.Requests.cpu")],
    ),
    (
        "request-over-by-a-byte",
        FIB,
        JobOverrides(resources=Resources(requests={"memory": "419430401"})),
        {"resources": FIB.resources},
        [("resource_capped", "Resources.Requests.memory")],
    ),
    (
        "limit-over",
        FIB,
        JobOverrides(resources=Resources(limits={"memory": "1Gi", "cpu": "500m"})),
        {
            "resources": Resources(
                requests=FIB.resources.requests, limits={**FIB.resources.limits, "cpu": "500m"}
            )
        },
        [("resource_capped", "Resources.Limits.memory")],
    ),
    (
        "limit-only-resource-as-request",
        FIB,
        JobOverrides(resources=Resources(requests={"nvidia.com/gpu": "1"})),
        {"resources": FIB.resources},
        [("resource_ignored", "Resources.Requests.nvidia.com/gpu")],
    ),
    (
        "unconfigured-request",
        STRICT,
        JobOverrides(resources=Resources(requests={"memory": "1Mi"})),
        {"resources": STRICT.resources},
        [("resource_ignored", "Resources.Requests.memory")],
    ),
    (
        "limit-on-request-only-resource",
        STRICT,
        JobOverrides(resources=Resources(limits={"cpu": "150m"})),
        {"resources": STRICT.resources},
        [("resource_ignored", "Resources.Limits.cpu")],
    ),
    (
        "resource-names-are-case-sensitive",
        STRICT,
        JobOverrides(resources=Resources(requests={"CPU": "1m"})),
        {"resources": STRICT.resources},
        [("resource_ignored", "Resources.Requests.CPU")],
    ),
    (
        "limit-below-configured-request",
        FIB,
        JobOverrides(resources=Resources(limits={"cpu": "300m"})),
        {
            "resources": Resources(
                requests={**FIB.resources.requests, "cpu": "300m"},
                limits={**FIB.resources.limits, "cpu": "300m"},
            )
        },
        [("request_lowered", "Resources.Requests.cpu")],
    ),
    (
        "limit-below-own-request",
        FIB,
        JobOverrides(resources=Resources(requests={"cpu": "300m"}, limits={"cpu": "200m"})),
        {
            "resources": Resources(
                requests={**FIB.resources.requests, "cpu": "200m"},
                limits={**FIB.resources.limits, "cpu": "200m"},
            )
        },
        [("request_lowered", "Resources.Requests.cpu")],
    ),
]


@pytest.mark.parametrize(
    ("config", "overrides", "expected", "notes"),
    [(c, o, e, n) for _, c, o, e, n in ADJUSTED_MERGES],
    ids=[i for i, *_ in ADJUSTED_MERGES],
)
def test_merge_adjusts_with_a_note(
    config: JobConfig, overrides: JobOverrides, expected: dict[str, object], notes: list[tuple[str, str]]
) -> None:
    with collecting() as got:
        spec = merge(config, overrides)
    for attr, value in expected.items():
        assert getattr(spec, attr) == value, attr
    assert [(n.code, n.path) for n in got] == notes


def test_merge_caps_resources_as_slimfaas_job_resource_validator() -> None:
    """SlimFaas: tests/SlimFaas.Tests/Jobs/JobResourceValidatorTests.cs, its four cases."""
    config = JobConfig(
        image="i",
        resources=Resources(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1000m", "memory": "2Gi"}
        ),
    )
    cases = [
        # ShouldUseRequestedValues_WhenWithinLimits
        (
            ({"cpu": "400m", "memory": "512Mi"}, {"cpu": "800m", "memory": "1.5Gi"}),
            ({"cpu": "400m", "memory": "512Mi"}, {"cpu": "800m", "memory": "1.5Gi"}),
        ),
        # ShouldUseDefaultValues_WhenRequestedValuesExceedLimits
        (
            ({"cpu": "600m", "memory": "2Gi"}, {"cpu": "1500m", "memory": "3Gi"}),
            ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "1000m", "memory": "2Gi"}),
        ),
        # ShouldUseDefaultValues_WhenKeyIsMissingInRequestedConfig
        (({}, {"cpu": "800m"}), ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "800m", "memory": "2Gi"})),
    ]
    for (asked_requests, asked_limits), (requests, limits) in cases:
        spec = merge(config, JobOverrides(resources=Resources(requests=asked_requests, limits=asked_limits)))
        assert spec.resources == Resources(requests=requests, limits=limits)
    # ShouldHandleMixedUnitsCorrectly
    mixed = JobConfig(
        image="i",
        resources=Resources(
            requests={"cpu": "1000m", "memory": "2Gi"}, limits={"cpu": "2000m", "memory": "4Gi"}
        ),
    )
    asked = Resources(requests={"cpu": "1", "memory": "2048Mi"}, limits={"cpu": "2500m", "memory": "5Gi"})
    assert merge(mixed, JobOverrides(resources=asked)).resources == Resources(
        requests={"cpu": "1", "memory": "2048Mi"}, limits={"cpu": "2000m", "memory": "4Gi"}
    )


def test_merge_without_overrides_runs_the_configuration() -> None:
    spec = merge(FIB, JobOverrides())
    assert spec.image == FIB.image
    assert spec.args == ()
    assert spec.command == FIB.command
    assert spec.depends_on == FIB.depends_on
    assert spec.resources == FIB.resources
    assert spec.environments == FIB.environments
    assert (spec.backoff_limit, spec.ttl_seconds_after_finished, spec.active_deadline_seconds) == (
        3,
        3600,
        600,
    )
    assert (spec.restart_policy, spec.parallelism, spec.completions) == (RestartPolicy.ON_FAILURE, 4, 4)


def test_merge_environments_by_name_request_wins_config_order_first() -> None:
    spec = merge(
        FIB,
        JobOverrides(environments=(EnvVar("C", value="new-c"), EnvVar("A", value="request-a"))),
    )
    assert spec.environments == (
        EnvVar("A", value="request-a"),
        EnvVar("B", value="config-b"),
        EnvVar("C", value="new-c"),
    )


def test_merge_empty_environments_keep_the_configured_ones() -> None:
    assert merge(FIB, JobOverrides(environments=())).environments == FIB.environments


def test_merge_replaces_depends_on_command_and_takes_args() -> None:
    spec = merge(FIB, JobOverrides(depends_on=(), command=("/bin/other",), args=("42",)))
    assert (spec.depends_on, spec.command, spec.args) == ((), ("/bin/other",), ("42",))


def test_merge_resources_replace_by_name_and_keep_the_rest() -> None:
    spec = merge(FIB, JobOverrides(resources=Resources(requests={"cpu": "200m"}, limits={"cpu": "200m"})))
    assert spec.resources == Resources(
        requests={"cpu": "200m", "memory": "400Mi"},
        limits={"cpu": "200m", "memory": "400Mi", "nvidia.com/gpu": "2"},
    )


def test_merge_does_not_share_the_configured_mappings() -> None:
    spec = merge(FIB, JobOverrides())
    assert spec.resources.requests is not FIB.resources.requests


def test_merge_default_takes_image_from_its_whitelist() -> None:
    assert merge(DEFAULT_WITH_WHITELIST, JobOverrides(image="busybox")).image == "busybox"
    with pytest.raises(BadRequest) as info:
        merge(DEFAULT_WITH_WHITELIST, JobOverrides())
    assert info.value.code == "image_required"


# -- parse_jobs_configuration ----------------------------------------------------------------------

# The example of the SlimFaas documentation ("Jobs", section 2), without its "#" comments.
SLIMFAAS_EXAMPLE = """
{
  "Configurations": {
    "fibonacci": {
      "Image": "axaguildev/fibonacci-batch:latest",
      "ImagesWhitelist": [],
      "Resources": {
        "Requests": {"cpu": "400m", "memory": "400Mi"},
        "Limits": {"cpu": "400m", "memory": "400Mi"}
      },
      "DependsOn": ["fibonacci1"],
      "Environments": [],
      "BackoffLimit": 1,
      "Visibility": "Public",
      "NumberParallelJob": 2,
      "TtlSecondsAfterFinished": 36000,
      "RestartPolicy": "Never"
    }
  },
  "Schedules": {
    "fibonacci": [
      {"Schedule": "0 0 * * *", "Args": ["42"]},
      {"Schedule": "0 0 * * 0", "Args": ["42"], "DependsOn": ["fibonacci2"]}
    ]
  }
}
"""


def test_parse_slimfaas_documentation_example() -> None:
    jobs = parse_jobs_configuration(SLIMFAAS_EXAMPLE)
    assert set(jobs.configurations) == {"fibonacci", DEFAULT_JOB}
    assert jobs.configurations["fibonacci"] == JobConfig(
        image="axaguildev/fibonacci-batch:latest",
        resources=Resources(
            requests={"cpu": "400m", "memory": "400Mi"}, limits={"cpu": "400m", "memory": "400Mi"}
        ),
        depends_on=("fibonacci1",),
        backoff_limit=1,
        visibility=Visibility.PUBLIC,
        number_parallel_job=2,
        ttl_seconds_after_finished=36000,
        restart_policy=RestartPolicy.NEVER,
    )
    assert jobs.configurations[DEFAULT_JOB] == BUILTIN_DEFAULT
    assert jobs.schedules == {
        "fibonacci": (
            ScheduleRequest(schedule="0 0 * * *", overrides=JobOverrides(args=("42",))),
            ScheduleRequest(
                schedule="0 0 * * 0", overrides=JobOverrides(args=("42",), depends_on=("fibonacci2",))
            ),
        )
    }
    assert visibility_of(jobs, "fibonacci") is Visibility.PUBLIC
    assert visibility_of(jobs, "unknown") is Visibility.PRIVATE


@pytest.mark.parametrize("text", [None, "", "  \n"], ids=["none", "empty", "blank"])
def test_no_configuration_means_only_default(text: str | None) -> None:
    jobs = parse_jobs_configuration(text)
    assert jobs == JobsConfiguration()
    assert jobs.job("anything") == BUILTIN_DEFAULT


def test_builtin_default_is_slimfaas_default() -> None:
    assert BUILTIN_DEFAULT.image == ""
    assert BUILTIN_DEFAULT.images_whitelist == ()
    assert BUILTIN_DEFAULT.resources == Resources(
        requests={"cpu": "100m", "memory": "100Mi"}, limits={"cpu": "100m", "memory": "100Mi"}
    )
    assert BUILTIN_DEFAULT.visibility is Visibility.PRIVATE
    assert (BUILTIN_DEFAULT.number_parallel_job, BUILTIN_DEFAULT.backoff_limit) == (1, 1)
    assert BUILTIN_DEFAULT.restart_policy is RestartPolicy.NEVER


def test_empty_objects_mean_only_default() -> None:
    assert parse_jobs_configuration('{"Configurations": {}, "Schedules": {}}') == JobsConfiguration()


def test_user_default_replaces_the_builtin_one() -> None:
    jobs = parse_jobs_configuration(
        json.dumps(
            {
                "Configurations": {
                    "Default": {
                        "Image": "busybox:1.36",
                        "ImagesWhitelist": ["busybox:*"],
                        "Resources": {"Requests": {"cpu": "50m"}, "Limits": {"cpu": "50m"}},
                        "Visibility": "Public",
                    }
                }
            }
        )
    )
    default = jobs.job("never-configured")
    assert default == jobs.configurations[DEFAULT_JOB]
    assert default.image == "busybox:1.36"
    assert default.resources == Resources(requests={"cpu": "50m"}, limits={"cpu": "50m"})
    assert visibility_of(jobs, "never-configured") is Visibility.PUBLIC
    assert merge(default, JobOverrides()).image == "busybox:1.36"
    assert merge(default, JobOverrides(image="busybox:latest")).image == "busybox:latest"


def test_user_default_without_resources_keeps_the_builtin_resources() -> None:
    jobs = parse_jobs_configuration('{"Configurations": {"default": {"Image": "busybox"}}}')
    assert jobs.configurations[DEFAULT_JOB].resources == BUILTIN_DEFAULT.resources
    assert jobs.configurations[DEFAULT_JOB].image == "busybox"


def test_a_configured_job_without_resources_may_ask_for_none() -> None:
    jobs = parse_jobs_configuration('{"Configurations": {"bare": {"Image": "busybox"}}}')
    assert jobs.job("bare").resources == Resources()
    with collecting() as notes:
        spec = merge(jobs.job("bare"), JobOverrides(resources=Resources(requests={"cpu": "1m"})))
    assert spec.resources == Resources()
    assert [n.code for n in notes] == ["resource_ignored"]


def test_configuration_keys_are_case_insensitive() -> None:
    jobs = parse_jobs_configuration(
        json.dumps(
            {
                "configurations": {
                    "fibonacci": {
                        "image": "img",
                        "imagesWhitelist": ["img:*"],
                        "resources": {"requests": {"cpu": "1"}, "LIMITS": {"cpu": "2"}},
                        "numberParallelJob": 3,
                        "visibility": "public",
                        "restartPolicy": "onFailure",
                        "environments": [{"name": "A", "configMapKeyRef": {"name": "c", "key": "k"}}],
                        "ttlSecondsAfterFinished": 5,
                        "activeDeadlineSeconds": 7,
                        "command": ["x"],
                        "parallelism": 2,
                        "completions": 2,
                        "backoffLimit": 0,
                        "dependsOn": [],
                    }
                },
                "schedules": {"fibonacci": [{"schedule": "@hourly", "timeZone": "Europe/Paris"}]},
            }
        )
    )
    config = jobs.job("fibonacci")
    assert config == JobConfig(
        image="img",
        images_whitelist=("img:*",),
        resources=Resources(requests={"cpu": "1"}, limits={"cpu": "2"}),
        environments=(EnvVar("A", config_map_key_ref=KeyRef("c", "k")),),
        backoff_limit=0,
        visibility=Visibility.PUBLIC,
        number_parallel_job=3,
        ttl_seconds_after_finished=5,
        restart_policy=RestartPolicy.ON_FAILURE,
        active_deadline_seconds=7,
        command=("x",),
        parallelism=2,
        completions=2,
    )
    assert jobs.schedules["fibonacci"][0].time_zone == "Europe/Paris"


def _config_error(document: object) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(ConfigError) as info:
        parse_jobs_configuration(text)
    return str(info.value)


BAD_CONFIGURATIONS: list[tuple[str, object, str]] = [
    ("not-json", "{", "not valid JSON"),
    ("not-object", "[]", "must be a JSON object"),
    ("duplicate-json-key", '{"Configurations": {"a": {}, "a": {}}}', "'a' twice"),
    ("configurations-list", {"Configurations": []}, "Configurations: expected an object"),
    ("job-not-object", {"Configurations": {"fib": "img"}}, "Configurations.fib: expected an object"),
    (
        "wrong-integer-type",
        {"Configurations": {"fibonacci": {"NumberParallelJob": "2"}}},
        "Configurations.fibonacci.NumberParallelJob: expected an integer",
    ),
    (
        "zero-parallel-jobs",
        {"Configurations": {"fibonacci": {"NumberParallelJob": 0}}},
        "Configurations.fibonacci.NumberParallelJob: expected a positive integer",
    ),
    (
        "volume-mount-of-undeclared-volume",
        {"Configurations": {"fib": {"VolumeMounts": [{"Name": "data", "MountPath": "/data"}]}}},
        "Configurations.fib.VolumeMounts[0].Name: 'data' is not a volume of this job",
    ),
    (
        "visibility-unknown",
        {"Configurations": {"fib": {"Visibility": "Internal"}}},
        "Configurations.fib.Visibility: expected Public or Private",
    ),
    (
        "whitelist-string",
        {"Configurations": {"fib": {"ImagesWhitelist": "img:*"}}},
        "Configurations.fib.ImagesWhitelist: expected a list of strings",
    ),
    (
        "bad-quantity",
        {"Configurations": {"fib": {"Resources": {"Limits": {"memory": "1GB"}}}}},
        "Configurations.fib.Resources.Limits.memory",
    ),
    (
        "limit-below-request",
        {"Configurations": {"fib": {"Resources": {"Requests": {"cpu": "2"}, "Limits": {"cpu": "1"}}}}},
        "Configurations.fib.Resources.Limits.cpu",
    ),
    ("default-twice", {"Configurations": {"Default": {}, "default": {}}}, "names the same job as 'Default'"),
    ("schedules-list", {"Schedules": []}, "Schedules: expected an object"),
    ("schedule-entries-object", {"Schedules": {"fib": {}}}, "Schedules.fib: expected a list of schedules"),
    ("schedule-missing-cron", {"Schedules": {"fib": [{"Args": []}]}}, "Schedules.fib[0].Schedule: required"),
    (
        "schedule-wrong-type",
        {"Schedules": {"fib": [{"Schedule": "* * * * *", "Paused": 1}]}},
        "Schedules.fib[0].Paused: expected true or false",
    ),
    (
        "schedule-for-default-without-image",
        {"Schedules": {"fib": [{"Schedule": "* * * * *"}]}},
        "Schedules.fib[0].Image",
    ),
    (
        "env-name-empty",
        {"Configurations": {"fib": {"Environments": [{"name": ""}]}}},
        "Configurations.fib.Environments[0].Name",
    ),
    (
        "names-collide-in-any-case",
        {"Configurations": {"Fib": {}, "fib": {}}},
        "job names are case-insensitive",
    ),
    (
        "schedule-image-not-allowed",
        {
            "Configurations": {"fib": {"Image": "img"}},
            "Schedules": {"fib": [{"Schedule": "* * * * *", "Image": "other"}]},
        },
        "Schedules.fib[0].Image",
    ),
]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [(d, f) for _, d, f in BAD_CONFIGURATIONS],
    ids=[i for i, *_ in BAD_CONFIGURATIONS],
)
def test_parse_jobs_configuration_refuses(document: object, fragment: str) -> None:
    assert fragment in _config_error(document)


# Issue 17: what SlimFaas starts with, slimsched starts with, saying in a note what it ignored or
# read differently (logged once, listed in /status). Each of these stopped the start-up before.
ADJUSTED_CONFIGURATIONS: list[tuple[str, object, list[tuple[str, str]]]] = [
    ("unknown-top-level", {"Jobs": {}}, [("unknown_field", "Jobs")]),
    (
        "unknown-job-field",
        {"Configurations": {"fib": {"Imag": "x"}}},
        [("unknown_field", "Configurations.fib.Imag")],
    ),
    (
        "uppercase-name",
        {"Configurations": {"Fibonacci": {}}},
        [("name_lowercased", "Configurations.Fibonacci")],
    ),
    ("underscore-name", {"Configurations": {"fib_1": {}}}, []),
    ("leading-dash-name", {"Configurations": {"-fib": {}}}, []),
    (
        "too-long-name",
        {"Configurations": {"a" * 41: {}}},
        [("invalid_job_name", "Configurations." + "a" * 41)],
    ),
    ("empty-name", {"Configurations": {"": {}}}, [("invalid_job_name", "Configurations.")]),
    ("dotted-name", {"Configurations": {"fib.v2": {}}}, [("invalid_job_name", "Configurations.fib.v2")]),
    ("schedule-uppercase-job", {"Schedules": {"Fib": []}}, [("name_lowercased", "Schedules.Fib")]),
    ("env-without-value", {"Configurations": {"fib": {"Environments": [{"name": "A"}]}}}, []),
    (
        "schedule-over-the-configuration",
        {
            "Configurations": {"fib": {"Image": "img", "Resources": {"Limits": {"cpu": "1"}}}},
            "Schedules": {"fib": [{"Schedule": "* * * * *", "Resources": {"Limits": {"cpu": "2"}}}]},
        },
        [("resource_capped", "Schedules.fib[0].Resources.Limits.cpu")],
    ),
    (
        "schedule-raises-backoff",
        {
            "Configurations": {"fib": {"Image": "img"}},
            "Schedules": {"fib": [{"Schedule": "* * * * *", "BackoffLimit": 2}]},
        },
        [],
    ),
]


@pytest.mark.parametrize(
    ("document", "notes"),
    [(d, n) for _, d, n in ADJUSTED_CONFIGURATIONS],
    ids=[i for i, *_ in ADJUSTED_CONFIGURATIONS],
)
def test_parse_jobs_configuration_adjusts_with_a_note(document: object, notes: list[tuple[str, str]]) -> None:
    jobs = parse_jobs_configuration(json.dumps(document))
    assert [(n.code, n.path) for n in jobs.notes] == notes
    assert DEFAULT_JOB in jobs.configurations


def test_slimfaas_test_configurations_start() -> None:
    """Keys SlimFaas does not know start, as in its own test.

    SlimFaas: tests/SlimFaas.Tests/Jobs/JobConfigurationTests.cs::
    Constructeur_JsonValide_DoitParserLaConfigurationCorrectement.

    Keys SlimFaas does not know (Name, Something), mixed-case job names, Limits before Requests.
    """
    jobs = parse_jobs_configuration(
        """{"Configurations": {
            "Default": {"Name": "MaFonctionParDefaut", "Something": ["arg1", "arg2"],
                        "Resources": {"Limits": {"cpu": "500m", "memory": "512Mi"},
                                      "Requests": {"cpu": "200m", "memory": "256Mi"}}},
            "AutreFunction": {"Name": "AutreFunction", "Something": [],
                              "Resources": {"Limits": {"cpu": "1000m", "memory": "1Gi"},
                                            "Requests": {"cpu": "500m", "memory": "512Mi"}}}}}"""
    )
    assert jobs.configurations[DEFAULT_JOB].resources == Resources(
        requests={"cpu": "200m", "memory": "256Mi"}, limits={"cpu": "500m", "memory": "512Mi"}
    )
    assert jobs.job("autrefunction").resources.limits == {"cpu": "1000m", "memory": "1Gi"}
    assert sorted(n.path for n in jobs.notes) == [
        "Configurations.AutreFunction",
        "Configurations.AutreFunction.Name",
        "Configurations.AutreFunction.Something",
        "Configurations.Default.Name",
        "Configurations.Default.Something",
    ]


def test_job_names_of_exactly_forty_characters_are_accepted() -> None:
    name = "a" * 39 + "1"
    jobs = parse_jobs_configuration(json.dumps({"Configurations": {name: {"Image": "x"}}}))
    assert jobs.job(name).image == "x"


def test_schedule_for_an_unconfigured_job_uses_default() -> None:
    jobs = parse_jobs_configuration(
        json.dumps(
            {
                "Configurations": {"Default": {"ImagesWhitelist": ["busybox:*"]}},
                "Schedules": {"cleanup": [{"Schedule": "@daily", "Image": "busybox:1.36"}]},
            }
        )
    )
    assert jobs.schedules["cleanup"][0].overrides.image == "busybox:1.36"


# -- properties ------------------------------------------------------------------------------------

_UNITS = {"cpu": "m", "memory": "Mi"}


@st.composite
def _configs(draw: st.DrawFn) -> JobConfig:
    """Valid configurations: each of cpu/memory with a request, a limit, both (limit >= request) or none."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for name, suffix in _UNITS.items():
        sizes = sorted(draw(st.lists(st.integers(0, 4000), min_size=2, max_size=2)))
        shape = draw(st.sampled_from(["both", "both", "request", "limit", "none"]))
        if shape in ("both", "request"):
            requests[name] = f"{sizes[0]}{suffix}"
        if shape in ("both", "limit"):
            limits[name] = f"{sizes[1]}{suffix}"
    return JobConfig(
        image=draw(st.sampled_from(["img:1", "img:1", ""])),
        images_whitelist=draw(st.sampled_from([(), ("img:*",), ("*",)])),
        resources=Resources(requests=requests, limits=limits),
        environments=(EnvVar("A", value="a"),),
        backoff_limit=draw(st.integers(0, 6)),
        ttl_seconds_after_finished=draw(st.none() | st.integers(0, 1000)),
        restart_policy=draw(st.sampled_from(RestartPolicy)),
        active_deadline_seconds=draw(st.none() | st.integers(1, 1000)),
        parallelism=draw(st.integers(1, 5)),
        completions=draw(st.integers(1, 5)),
    )


@st.composite
def _resource_cases(draw: st.DrawFn) -> tuple[JobConfig, Resources]:
    """A configuration and asks around its sizes (up to 20 % above), so that many merges succeed."""
    config = replace(draw(_configs()), image="img:1")
    configured = {**config.resources.requests, **config.resources.limits}

    def asks() -> dict[str, str]:
        out: dict[str, str] = {}
        for name, text in configured.items():
            if draw(st.booleans()):
                size = int(text.removesuffix(_UNITS[name]))
                out[name] = f"{draw(st.integers(0, size + size // 5 + 1))}{_UNITS[name]}"
        return out

    return config, Resources(requests=asks(), limits=asks())


def _mostly_none(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.none(), strategy)


_quantity_texts = st.one_of(
    st.builds(
        lambda n, unit: f"{n}{unit}", st.integers(-10, 4000), st.sampled_from(["m", "Mi", "", "Gi", "e2"])
    ),
    st.decimals(min_value=0, max_value=5, places=4).map(str),
    st.text(max_size=6),
)
_resource_maps = st.dictionaries(
    st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "CPU"]) | st.text(max_size=5),
    _quantity_texts,
    max_size=2,
)
_ints = _mostly_none(st.integers(-1, 6) | st.integers(-3, 2**40))
_env_vars = st.builds(
    EnvVar,
    name=st.sampled_from(["A", "B", "C"]) | st.text(max_size=4),
    value=st.text(max_size=3) | st.none(),
    secret_key_ref=_mostly_none(st.just(KeyRef("s", "k"))),
    field_path=_mostly_none(st.just("metadata.name")),
)
_overrides = st.builds(
    JobOverrides,
    image=_mostly_none(st.sampled_from(["", "img:1", "img:2", "evil:1"]) | st.text(max_size=8)),
    args=_mostly_none(st.lists(st.text(max_size=3), max_size=2).map(tuple)),
    command=_mostly_none(st.lists(st.text(max_size=3), max_size=2).map(tuple)),
    depends_on=_mostly_none(st.lists(st.text(max_size=3), max_size=2).map(tuple)),
    resources=st.none() | st.builds(Resources, requests=_resource_maps, limits=_resource_maps),
    environments=_mostly_none(st.lists(_env_vars, max_size=3).map(tuple)),
    backoff_limit=_ints,
    ttl_seconds_after_finished=_ints,
    restart_policy=_mostly_none(st.sampled_from(RestartPolicy)),
    active_deadline_seconds=_ints,
    parallelism=_ints,
    completions=_ints,
)


_volume_mounts = _mostly_none(
    st.lists(
        st.builds(
            VolumeMount,
            name=st.text(max_size=4),
            mount_path=st.text(max_size=4),
            read_only=st.booleans(),
            sub_path=st.none() | st.text(max_size=4),
        ),
        max_size=2,
    ).map(tuple)
)


@settings(max_examples=300, deadline=None)
@given(overrides=_overrides, volume_mounts=_volume_mounts)
def test_overrides_survive_the_json_codec(
    overrides: JobOverrides, volume_mounts: tuple[VolumeMount, ...] | None
) -> None:
    """Every field set comes back and none appears from nowhere (snapshots, backups, commands)."""
    overrides = replace(overrides, volume_mounts=volume_mounts)
    encoded = codec.overrides_to_dict(overrides)
    assert None not in encoded.values()
    assert codec.overrides_from_dict(json.loads(json.dumps(encoded))) == overrides


def _assert_within_the_configuration(config: JobConfig, overrides: JobOverrides, spec: JobSpec) -> None:
    configured = config.resources
    for name, amount in spec.resources.requests.items():
        assert name in configured.requests
        assert 0 <= parse_quantity(amount) <= parse_quantity(configured.requests[name])
    for name, amount in spec.resources.limits.items():
        assert name in configured.limits
        assert 0 <= parse_quantity(amount) <= parse_quantity(configured.limits[name])
        if name in spec.resources.requests:
            assert parse_quantity(amount) >= parse_quantity(spec.resources.requests[name])
    # Plain overrides (issue 17: SlimFaas's docs), ceilings for our own additions.
    assert spec.backoff_limit == (
        config.backoff_limit if overrides.backoff_limit is None else overrides.backoff_limit
    )
    assert spec.restart_policy is (overrides.restart_policy or config.restart_policy)
    assert 1 <= spec.parallelism <= config.parallelism
    assert 1 <= spec.completions <= config.completions
    ceiling = config.active_deadline_seconds
    assert ceiling is None or (
        spec.active_deadline_seconds is not None and spec.active_deadline_seconds <= ceiling
    )
    assert spec.image == config.image or any(fnmatchcase(spec.image, p) for p in config.images_whitelist)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs(), overrides=_overrides)
def test_merge_refuses_only_with_bad_request_and_never_exceeds_the_configuration(
    config: JobConfig, overrides: JobOverrides
) -> None:
    try:
        spec = merge(config, overrides)
    except BadRequest as e:
        assert e.status == 400 and e.code and e.message
        return
    _assert_within_the_configuration(config, overrides, spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_resource_cases())
def test_merged_resources_never_exceed_the_configuration(case: tuple[JobConfig, Resources]) -> None:
    """Within the configuration; what was asked and fits is kept; each change has a note naming it."""
    config, asked = case
    with collecting() as notes:
        spec = merge(config, JobOverrides(resources=asked))
    _assert_within_the_configuration(config, JobOverrides(resources=asked), spec)
    noted = {n.path for n in notes}
    for kind, wanted, got, bounds in (
        ("Limits", asked.limits, spec.resources.limits, config.resources.limits),
        ("Requests", asked.requests, spec.resources.requests, config.resources.requests),
    ):
        for name, amount in wanted.items():
            fits = name in bounds and parse_quantity(amount) <= parse_quantity(bounds[name])
            if kind == "Requests" and name in spec.resources.limits:
                fits = fits and parse_quantity(amount) <= parse_quantity(spec.resources.limits[name])
            assert (got.get(name) == amount) if fits else (f"Resources.{kind}.{name}" in noted)


@settings(max_examples=200, deadline=None)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_parsers_refuse_only_with_bad_request(body: object) -> None:
    for parse in (parse_overrides, parse_schedule_request):
        try:
            parse(body)
        except BadRequest as e:
            assert e.code and e.message
