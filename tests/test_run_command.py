"""POST /job's compact ``enqueue_run`` command (issue 18): the same run, the same state, fewer bytes.

The command leaves out the spec fields at ``spec_from_dict``'s defaults, which every release
has filled in since the first one, so a node of the previous release decodes it to the very Run
the full encoding gives. Snapshots and fingerprints keep the full encoding (``run_to_dict``,
rewritten for speed): its bytes are checked here against the encoder it replaced, kept below
as the reference, since nodes of mixed releases compare fingerprints.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched import codec
from slimsched.jobmanifest import kube_job_name
from slimsched.model import (
    EnvVar,
    JobSpec,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Run,
    RunStatus,
    Volume,
    VolumeKind,
    VolumeMount,
)
from slimsched.statemachine import State, apply, encode_command, fingerprint
from tests.helpers import KubeCluster, request, wait_until

# -- strategies ------------------------------------------------------------------------------------

names = st.text(max_size=6)
strs = st.lists(names, max_size=3).map(tuple)
opt_int = st.none() | st.integers(-2, 2**40)
key_refs = st.builds(KeyRef, name=names, key=names)
envs = st.one_of(
    st.builds(EnvVar, name=names, value=names),
    st.builds(EnvVar, name=names, secret_key_ref=key_refs),
    st.builds(EnvVar, name=names, config_map_key_ref=key_refs),
    st.builds(EnvVar, name=names, field_path=names),
    st.builds(
        EnvVar,
        name=names,
        resource_field_ref=st.builds(
            ResourceFieldRef, resource=names, container_name=st.none() | names, divisor=st.none() | names
        ),
    ),
)
quantities = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), names, max_size=2)
volumes = st.one_of(
    st.builds(
        Volume,
        name=names,
        kind=st.just(VolumeKind.PERSISTENT_VOLUME_CLAIM),
        source=names,
        read_only=st.booleans(),
    ),
    st.builds(
        Volume, name=names, kind=st.sampled_from([VolumeKind.CONFIG_MAP, VolumeKind.SECRET]), source=names
    ),
    st.builds(
        Volume,
        name=names,
        kind=st.just(VolumeKind.EMPTY_DIR),
        medium=st.none() | names,
        size_limit=st.none() | names,
    ),
)
mounts = st.builds(
    VolumeMount, name=names, mount_path=names, read_only=st.booleans(), sub_path=st.none() | names
)
# Small integers on purpose: the defaults (1, None, Never) come up often, and their neighbours.
specs = st.builds(
    JobSpec,
    image=names,
    args=strs,
    command=strs,
    depends_on=strs,
    resources=st.builds(Resources, requests=quantities, limits=quantities),
    environments=st.lists(envs, max_size=2).map(tuple),
    backoff_limit=st.integers(0, 3),
    ttl_seconds_after_finished=st.none() | st.integers(0, 3),
    restart_policy=st.sampled_from(RestartPolicy),
    active_deadline_seconds=st.none() | st.integers(0, 3),
    parallelism=st.integers(0, 3),
    completions=st.integers(0, 3),
    volumes=st.lists(volumes, max_size=2).map(tuple),
    volume_mounts=st.lists(mounts, max_size=2).map(tuple),
)
runs = st.builds(
    Run,
    id=names,
    job_name=names,
    spec=specs,
    status=st.sampled_from(RunStatus),
    queued_at_ms=st.integers(0, 2**45),
    kube_name=names,
    started_at_ms=opt_int,
    finished_at_ms=opt_int,
    schedule_id=st.none() | names,
    tick=opt_int,
    reason=st.none() | names,
    dispatch_term=opt_int,
    dispatch_index=opt_int,
)


# -- the encoder snapshots used before issue 18, kept as the reference of their bytes ------------


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _reference_spec_to_dict(s: JobSpec) -> dict[str, Any]:
    return _drop_none(
        {
            "Image": s.image,
            "Args": list(s.args),
            "Command": list(s.command),
            "DependsOn": list(s.depends_on),
            "Resources": codec.resources_to_dict(s.resources),
            "Environments": [codec.env_to_dict(e) for e in s.environments],
            "BackoffLimit": s.backoff_limit,
            "TtlSecondsAfterFinished": s.ttl_seconds_after_finished,
            "RestartPolicy": s.restart_policy.value,
            "ActiveDeadlineSeconds": s.active_deadline_seconds,
            "Parallelism": s.parallelism,
            "Completions": s.completions,
            "Volumes": [codec.volume_to_dict(v) for v in s.volumes] if s.volumes else None,
            "VolumeMounts": [codec.volume_mount_to_dict(m) for m in s.volume_mounts]
            if s.volume_mounts
            else None,
        }
    )


def _reference_run_to_dict(r: Run) -> dict[str, Any]:
    return _drop_none(
        {
            "Id": r.id,
            "JobName": r.job_name,
            "Spec": _reference_spec_to_dict(r.spec),
            "Status": r.status.value,
            "QueuedAt": r.queued_at_ms,
            "KubeName": r.kube_name,
            "StartedAt": r.started_at_ms,
            "FinishedAt": r.finished_at_ms,
            "ScheduleId": r.schedule_id,
            "Tick": r.tick,
            "Reason": r.reason,
            "DispatchTerm": r.dispatch_term,
            "DispatchIndex": r.dispatch_index,
        }
    )


@settings(max_examples=300, deadline=None)
@given(runs)
def test_snapshot_encoding_of_a_run_is_byte_for_byte_the_previous_one(run: Run) -> None:
    assert orjson.dumps(codec.run_to_dict(run)) == orjson.dumps(_reference_run_to_dict(run))
    assert codec.run_to_dict(run) == _reference_run_to_dict(run)
    assert codec.run_from_dict(orjson.loads(orjson.dumps(codec.run_to_dict(run)))) == run


# -- the compact command -----------------------------------------------------------------------


def _wire(d: dict[str, Any]) -> dict[str, Any]:
    """What a node reads out of a committed entry: the dict through orjson and back."""
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(d))
    return decoded


@settings(max_examples=300, deadline=None)
@given(spec=specs, run_id=names, job=names, queued_at=st.integers(0, 2**45), kube_name=names)
def test_compact_command_decodes_to_the_run_and_state_the_full_encoding_gives(
    spec: JobSpec, run_id: str, job: str, queued_at: int, kube_name: str
) -> None:
    run = Run(
        id=run_id,
        job_name=job,
        spec=spec,
        status=RunStatus.QUEUED,
        queued_at_ms=queued_at,
        kube_name=kube_name,
    )
    compact = codec.queued_run_command(run_id, job, spec, queued_at, kube_name)
    full = _reference_run_to_dict(run)
    assert codec.run_from_dict(_wire(compact)) == codec.run_from_dict(_wire(full)) == run
    assert len(orjson.dumps(compact)) <= len(orjson.dumps(full))
    # Applied on two nodes, one fed each form: the same result and the same fingerprint.
    states = (State(), State())
    results = [
        apply(state, encode_command("enqueue_run", rid="r1", run=form))
        for state, form in zip(states, (compact, full), strict=True)
    ]
    assert results[0] == results[1] and results[0].ok
    assert fingerprint(states[0]) == fingerprint(states[1])
    assert states[0].runs[run_id] == run


def test_compact_command_leaves_out_exactly_the_defaults() -> None:
    assert codec.spec_to_command(JobSpec(image="img:1")) == {"Image": "img:1"}
    spec = JobSpec(
        image="img:1",
        args=("42",),
        resources=Resources(limits={"cpu": "1"}),
        backoff_limit=0,
        restart_policy=RestartPolicy.ON_FAILURE,
        parallelism=2,
        completions=1,
        ttl_seconds_after_finished=60,
    )
    assert codec.spec_to_command(spec) == {
        "Image": "img:1",
        "Args": ["42"],
        "Resources": {"Requests": {}, "Limits": {"cpu": "1"}},
        "BackoffLimit": 0,
        "TtlSecondsAfterFinished": 60,
        "RestartPolicy": "OnFailure",
        "Parallelism": 2,
    }
    command = codec.queued_run_command("r1", "job", spec, 5, kube_job_name("job", "r1"))
    assert command == {
        "Id": "r1",
        "JobName": "job",
        "Spec": codec.spec_to_command(spec),
        "Status": "Queued",
        "QueuedAt": 5,
        "KubeName": kube_job_name("job", "r1"),
    }


# -- decoded specs remembered by their JSON --------------------------------------------------------


def _decode_error(d: dict[str, Any]) -> str | None:
    try:
        codec.run_from_dict(d)
    except Exception as e:  # apply turns any exception into its error result
        return f"{type(e).__name__}: {e}"
    return None


@settings(max_examples=200, deadline=None)
@given(run=runs, compact=st.booleans())
def test_remembered_specs_decode_as_a_fresh_decoding(run: Run, compact: bool) -> None:
    d = _wire(codec.run_to_dict(run))
    if compact:
        d["Spec"] = _wire(codec.spec_to_command(run.spec))
    fresh = codec.spec_from_dict(d["Spec"])
    first, again = codec.run_from_dict(d), codec.run_from_dict(_wire(d))
    assert first == again == run and first.spec == fresh


wrong_values = st.sampled_from([None, 1.5, True, "x", 7, [], {}, [1], {"a": 1}])


@settings(max_examples=200, deadline=None)
@given(spec=specs, field=st.sampled_from(list(codec.spec_to_dict(JobSpec(image="i")))), value=wrong_values)
def test_a_malformed_spec_fails_the_same_way_every_time(spec: JobSpec, field: str, value: Any) -> None:
    """Nothing malformed is remembered: the second decoding fails exactly as the first (the
    message lands in the replicated results, which fingerprints compare)."""
    d = _wire(codec.run_to_dict(Run("r", "j", spec, RunStatus.QUEUED, 1, "k")))
    d["Spec"][field] = value
    try:
        codec.spec_from_dict(d["Spec"])
    except Exception as e:  # apply turns any exception into its error result
        expected: str | None = f"{type(e).__name__}: {e}"
    else:
        expected = None
    assert _decode_error(d) == expected
    assert _decode_error(d) == expected


def test_the_memo_of_specs_is_bounded() -> None:
    for i in range(codec.SPEC_MEMO_SIZE * 2 + 3):
        spec = JobSpec(image="img:1", args=(str(i),))
        assert codec.run_from_dict(_wire(codec.queued_run_command(f"r{i}", "j", spec, i, "k"))).spec == spec
        assert len(codec._SPEC_MEMO) <= codec.SPEC_MEMO_SIZE


# -- over a real 3-node cluster --------------------------------------------------------------------


def test_post_job_runs_to_succeeded_and_every_node_holds_the_same_state(kc: KubeCluster) -> None:
    """Both spec shapes (configured non-defaults and all defaults), sent to every node: each run's
    Job carries the merged spec, each run succeeds, and the three nodes agree on one state hash."""
    sent = [
        ("runner", {"Args": ["x"], "Resources": {"Limits": {"cpu": "250m"}}}, 0),
        ("fibonacci", {}, 1),
        ("runner", {"Completions": 1}, 2),
    ]
    run_ids: list[tuple[str, str]] = []
    for job, body, node in sent:
        status, got = request(f"{kc.node_url(node)}/job/{job}", "POST", body)
        assert status == 202, got
        run_ids.append((job, str(got["Id"])))

    def all_succeeded_everywhere() -> bool:
        for i in range(3):
            status, listed = request(f"{kc.node_url(i)}/job/runner", timeout=3)
            status2, listed2 = request(f"{kc.node_url(i)}/job/fibonacci", timeout=3)
            if status != 200 or status2 != 200:
                return False
            by_id = {r["Id"]: r["Status"] for r in [*listed, *listed2]}
            if any(by_id.get(run_id) != "Succeeded" for _, run_id in run_ids):
                return False
        return True

    wait_until(all_succeeded_everywhere, 30, "every run Succeeded as seen from every node")
    jobs = {j["metadata"]["labels"]["slimsched/run-id"]: j["spec"] for j in kc.jobs()}
    first, defaults, third = (jobs[run_id] for _, run_id in run_ids)
    container = first["template"]["spec"]["containers"][0]
    assert (first["parallelism"], first["completions"], container["args"]) == (2, 4, ["x"])
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert container["image"] == "demo/runner:1"
    plain = defaults["template"]["spec"]
    assert (defaults["parallelism"], defaults["completions"], defaults["backoffLimit"]) == (1, 1, 1)
    assert plain["restartPolicy"] == "Never" and plain["containers"][0]["image"] == "demo/fib:1"
    assert third["completions"] == 1
    hashes: set[str] = set()

    def one_hash() -> bool:
        hashes.clear()
        hashes.update(kc.cluster.get_json(i, "/status?hash=1")["StateHash"] for i in range(3))
        return len(hashes) == 1

    wait_until(one_hash, 10, f"the three nodes to agree on one state hash (saw {hashes})")
