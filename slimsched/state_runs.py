"""Commands on runs: enqueue, cancel, the leader's barrier, dispatch claims and status moves."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from slimsched import codec
from slimsched.model import RunStatus
from slimsched.state_store import OK, Result, State, add_run, error, prune_finished, put_run


def enqueue_run(state: State, cmd: dict[str, Any]) -> Result:
    run = codec.run_from_dict(cmd["run"])
    if run.id in state.runs:
        return error("conflict", f"run {run.id} already exists")
    if run.status is not RunStatus.QUEUED:
        return error("invalid", "a new run must be Queued")
    add_run(state, run)
    return Result("ok", value={"Id": run.id})


def cancel_run(state: State, cmd: dict[str, Any]) -> Result:
    run = state.runs.get(str(cmd["run_id"]))
    if run is None or run.job_name != cmd["job_name"]:
        return error("not_found", f"no run {cmd['run_id']} for job {cmd['job_name']}")
    previous = run.status
    if not previous.terminal:
        put_run(
            state,
            replace(run, status=RunStatus.CANCELED, finished_at_ms=int(cmd["at"]), reason="DeletedByApi"),
        )
    return Result("ok", value={"Id": run.id, "PreviousStatus": previous.value, "KubeName": run.kube_name})


def barrier(state: State, cmd: dict[str, Any]) -> Result:
    return OK


def start_dispatch(state: State, cmd: dict[str, Any]) -> Result:
    run = state.runs.get(str(cmd["run_id"]))
    if run is None:
        return error("not_found", f"no run {cmd['run_id']}")
    if run.status is not RunStatus.QUEUED:
        return error("conflict", f"run {run.id} is {run.status.value}, not Queued")
    put_run(
        state,
        replace(
            run,
            status=RunStatus.DISPATCHING,
            dispatch_term=int(cmd["term"]),
            dispatch_index=int(cmd["index"]),
        ),
    )
    return OK


def run_status(state: State, cmd: dict[str, Any]) -> Result:
    """Move a dispatched run to a status observed on Kubernetes; terminal runs stay put."""
    run = state.runs.get(str(cmd["run_id"]))
    if run is None:
        return error("not_found", f"no run {cmd['run_id']}")
    status = RunStatus(cmd["status"])
    if run.status.terminal:
        return error("conflict", f"run {run.id} already ended as {run.status.value}")
    expect = cmd.get("expect")
    if expect is not None and run.status.value != expect:
        # A conditional move ("Dispatched": Dispatching -> Pending) that another update overtook.
        return error("conflict", f"run {run.id} is {run.status.value}, not {expect}")
    if status is RunStatus.QUEUED:
        return error("invalid", "a run cannot go back to Queued")
    at = int(cmd["at"])
    put_run(
        state,
        replace(
            run,
            status=status,
            started_at_ms=run.started_at_ms if run.started_at_ms is not None else at,
            finished_at_ms=at if status.terminal else None,
            reason=cmd.get("reason", run.reason),
        ),
    )
    if status.terminal:
        prune_finished(state, run.job_name)
    return OK
