"""Which Kubernetes listings a status poll makes: by run id while few runs are active."""

from __future__ import annotations

from typing import Any

from slimsched.jobmanifest import LABEL_MANAGED_BY, MANAGED_BY, kube_job_name
from slimsched.leader import LIST_BY_RUN_ID_MAX, RUN_IDS_PER_SELECTOR, Leader
from slimsched.model import JobSpec, Run, RunStatus


def _runs(n: int) -> list[Run]:
    return [
        Run(
            id=f"r{i}",
            job_name="j",
            spec=JobSpec(image="i"),
            status=RunStatus.RUNNING,
            queued_at_ms=0,
            kube_name=kube_job_name("j", f"r{i}"),
        )
        for i in range(n)
    ]


async def _selectors(n: int) -> list[str]:
    asked: list[str] = []

    async def list_fn(selector: str) -> list[dict[str, Any]]:
        asked.append(selector)
        return [{"selector": selector}]

    found = await Leader._list_of(_runs(n), list_fn)
    assert [o["selector"] for o in found] == asked, "every listing's items are returned, in order"
    return asked


async def test_few_active_runs_are_listed_by_run_id_in_chunks() -> None:
    asked = await _selectors(RUN_IDS_PER_SELECTOR + 1)
    assert len(asked) == 2
    assert asked[0].startswith("slimsched/run-id in (r0,r1,")
    assert asked[0].count(",") == RUN_IDS_PER_SELECTOR - 1
    assert asked[1] == f"slimsched/run-id in (r{RUN_IDS_PER_SELECTOR})"


async def test_many_active_runs_are_listed_with_one_paged_listing() -> None:
    assert await _selectors(LIST_BY_RUN_ID_MAX + 1) == [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
    assert len(await _selectors(LIST_BY_RUN_ID_MAX)) == LIST_BY_RUN_ID_MAX // RUN_IDS_PER_SELECTOR
