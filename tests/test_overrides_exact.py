"""Exact refusals and notes of the override merge: code, field path and sentence.

A user reads these sentences (the API's 400 and Warning headers, the configuration reader's
errors); mutation testing found several unchecked (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from slimsched import jsonfields, overrides
from slimsched.errors import BadRequest
from slimsched.jobtypes import JobConfig
from slimsched.model import JobOverrides, Resources, Volume, VolumeKind, VolumeMount


def _refusal(config: JobConfig, wanted: JobOverrides) -> tuple[str, str, str]:
    with pytest.raises(jsonfields.Invalid) as err:
        overrides.merge_or_invalid(config, wanted)
    return err.value.code, err.value.path, err.value.detail


def test_image_refusals_say_which_images_are_allowed() -> None:
    assert _refusal(JobConfig(), JobOverrides()) == (
        "image_required",
        "Image",
        "this job has no configured image, so the request must name one",
    )
    listed = JobConfig(image="a:1", images_whitelist=("b:*", "c:?"))
    assert _refusal(listed, JobOverrides(image="evil:1")) == (
        "image_not_allowed",
        "Image",
        "'evil:1' is not allowed for this job; allowed: 'a:1', 'b:*', 'c:?'",
    )
    only_list = JobConfig(images_whitelist=("b:*",))
    assert _refusal(only_list, JobOverrides(image="evil:1")) == (
        "image_not_allowed",
        "Image",
        "'evil:1' is not allowed for this job; allowed: 'b:*'",
    )
    assert _refusal(JobConfig(image="a:1"), JobOverrides(image="evil:1")) == (
        "image_not_allowed",
        "Image",
        "'evil:1' is not allowed for this job, which has no ImagesWhitelist: only its configured image "
        "'a:1' may run",
    )
    assert _refusal(JobConfig(), JobOverrides(image="evil:1")) == (
        "image_not_allowed",
        "Image",
        "'evil:1' is not allowed: this job's configuration has neither an Image nor an ImagesWhitelist, "
        "so it admits no image",
    )
    assert overrides.merge_or_invalid(only_list, JobOverrides(image="b:7")).image == "b:7"


def test_a_resource_the_configuration_does_not_set_is_ignored_with_a_note() -> None:
    config = JobConfig(image="a:1", resources=Resources(requests={"cpu": "100m"}, limits={"cpu": "200m"}))
    with jsonfields.collecting() as notes:
        spec = overrides.merge_or_invalid(
            config, JobOverrides(resources=Resources(requests={"memory": "1Gi", "cpu": "1"}))
        )
    assert spec.resources.requests == {"cpu": "100m"}
    assert [(n.code, n.path, n.detail) for n in notes] == [
        (
            "resource_ignored",
            "Resources.Requests.memory",
            "ignored: the job configuration sets no 'memory' in Requests, so a request cannot ask for one",
        ),
        ("resource_capped", "Resources.Requests.cpu", "1 capped to the 100m the job configuration allows"),
    ]


def test_schedule_request_errors_name_where_they_come_from() -> None:
    with pytest.raises(jsonfields.Invalid) as err:
        overrides.read_schedule_request({"Args": ["1"]}, "Schedules.fib[0]")
    assert (err.value.code, err.value.path) == ("missing_field", "Schedules.fib[0].Schedule")
    with pytest.raises(jsonfields.Invalid) as err:
        overrides.read_schedule_request({"Schedule": "* * * * *", "Nope": 1, "Args": 5}, "Schedules.fib[0]")
    assert err.value.path.startswith("Schedules.fib[0]"), err.value.path
    with pytest.raises(jsonfields.Invalid) as err:
        overrides.read_schedule_request([], "Schedules.fib[0]")
    assert err.value.path == "Schedules.fib[0]" or err.value.message.startswith("Schedules.fib[0]")


def test_an_unknown_field_of_a_schedule_entry_is_noted_where_it_stands() -> None:
    with jsonfields.collecting() as notes:
        overrides.read_schedule_request({"Schedule": "* * * * *", "Nope": 1}, "Schedules.fib[0]")
        overrides.parse_schedule_request({"Schedule": "* * * * *", "Nope": 1}, where="Schedules.fib[1]")
    assert [n.path for n in notes] == ["Schedules.fib[0].Nope", "Schedules.fib[1].Nope"], notes
    with pytest.raises(jsonfields.Invalid) as err:
        overrides.read_schedule_request("nope", "Schedules.fib[2]")
    assert err.value.path == "Schedules.fib[2]", err.value.path


def test_capped_and_lowered_values_are_noted_exactly_and_the_bound_itself_is_not() -> None:
    config = JobConfig(
        image="a:1",
        parallelism=2,
        resources=Resources(requests={"cpu": "100m"}, limits={"cpu": "200m", "memory": "1Gi"}),
    )
    with jsonfields.collecting() as notes:
        at_bound = overrides.merge_or_invalid(config, JobOverrides(parallelism=2))
    assert (at_bound.parallelism, notes) == (2, [])
    with jsonfields.collecting() as notes:
        over = overrides.merge_or_invalid(
            config,
            JobOverrides(
                parallelism=3,
                resources=Resources(requests={"cpu": "100m"}, limits={"cpu": "50m"}),
            ),
        )
    assert over.parallelism == 2
    assert over.resources == Resources(requests={"cpu": "50m"}, limits={"cpu": "50m", "memory": "1Gi"})
    assert [(n.code, n.path, n.detail) for n in notes] == [
        (
            "request_lowered",
            "Resources.Requests.cpu",
            "100m lowered to the limit 50m: a request cannot exceed its limit",
        ),
        ("capped", "Parallelism", "3 capped to the 2 the job configuration allows"),
    ]


def test_volume_refusals_name_the_declared_volumes_and_the_read_only_rule() -> None:
    data = Volume(name="data", kind=VolumeKind.EMPTY_DIR)
    config = JobConfig(
        image="a:1",
        volumes=(data, Volume(name="cache", kind=VolumeKind.EMPTY_DIR)),
        volume_mounts=(VolumeMount(name="data", mount_path="/data", read_only=True),),
    )
    assert _refusal(config, JobOverrides(volume_mounts=(VolumeMount(name="logs", mount_path="/l"),))) == (
        "volume_not_allowed",
        "VolumeMounts[0].Name",
        "'logs' is not a volume of this job; its configuration declares 'data', 'cache'",
    )
    writable = JobOverrides(volume_mounts=(VolumeMount(name="data", mount_path="/data", read_only=False),))
    assert _refusal(config, writable) == (
        "volume_not_allowed",
        "VolumeMounts[0].ReadOnly",
        "the job configuration mounts 'data' at '/data' read-only; a request may make a mount read-only, "
        "never writable, so set ReadOnly to true",
    )


def _bad_request(read: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(BadRequest) as err:
        read()
    return err.value.code, err.value.message


def test_request_refusals_say_where_and_what_exactly() -> None:
    assert _bad_request(lambda: overrides.parse_overrides([1], where="Jobs.fib")) == (
        "invalid_body",
        "Jobs.fib: the request body must be a JSON object, not a list.",
    )
    assert _bad_request(lambda: overrides.parse_overrides({"Volumes": []}, where="Jobs.fib")) == (
        "volume_not_allowed",
        "Jobs.fib.Volumes: a request cannot define volumes; list in VolumeMounts the mounts of the job "
        "configuration it wants, and the Job gets the configured volumes they use.",
    )
    too_long = 2**63
    assert _bad_request(lambda: overrides.parse_overrides({"ActiveDeadlineSeconds": too_long})) == (
        "invalid_field",
        f"ActiveDeadlineSeconds: expected at most {too_long - 1}, got {too_long}.",
    )
    schedule = {"Schedule": "* * * * *", "StartingDeadlineSeconds": too_long}
    assert _bad_request(lambda: overrides.parse_schedule_request(schedule)) == (
        "invalid_field",
        f"StartingDeadlineSeconds: expected at most {too_long - 1}, got {too_long}.",
    )
    with jsonfields.collecting() as notes:
        overrides.parse_overrides({"Image": "a", "Nope": 1}, where="Jobs.fib")
    assert [(n.code, n.path, n.detail) for n in notes] == [
        ("unknown_field", "Jobs.fib.Nope", "unknown field, ignored")
    ]


def test_the_smallest_values_a_request_may_ask_for_are_accepted() -> None:
    smallest = {"TtlSecondsAfterFinished": 0, "ActiveDeadlineSeconds": 1, "Parallelism": 1, "Completions": 1}
    assert overrides.parse_overrides({**smallest, "BackoffLimit": 0}) == JobOverrides(
        backoff_limit=0, ttl_seconds_after_finished=0, active_deadline_seconds=1, parallelism=1, completions=1
    )
    largest = overrides.parse_overrides({"ActiveDeadlineSeconds": 2**63 - 1})
    assert largest.active_deadline_seconds == 2**63 - 1


def test_stored_overrides_out_of_range_are_refused_by_their_field_name() -> None:
    config = JobConfig(image="a:1")
    assert _refusal(config, JobOverrides(backoff_limit=-1)) == (
        "invalid_field",
        "BackoffLimit",
        "expected a non-negative integer, got -1",
    )
    assert _refusal(config, JobOverrides(ttl_seconds_after_finished=-1)) == (
        "invalid_field",
        "TtlSecondsAfterFinished",
        "expected a non-negative integer, got -1",
    )


def test_an_active_deadline_is_capped_with_a_note_above_the_configured_one_only() -> None:
    config = JobConfig(image="a:1", active_deadline_seconds=60)
    with jsonfields.collecting() as notes:
        at_bound = overrides.merge_or_invalid(config, JobOverrides(active_deadline_seconds=60))
    assert (at_bound.active_deadline_seconds, notes) == (60, [])
    with jsonfields.collecting() as notes:
        over = overrides.merge_or_invalid(config, JobOverrides(active_deadline_seconds=61))
    assert over.active_deadline_seconds == 60
    assert [(n.code, n.path, n.detail) for n in notes] == [
        ("capped", "ActiveDeadlineSeconds", "61 capped to the 60 the job configuration allows")
    ]
    unbounded = overrides.merge_or_invalid(JobConfig(image="a:1"), JobOverrides(active_deadline_seconds=61))
    assert unbounded.active_deadline_seconds == 61
