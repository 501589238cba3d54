"""The REST API over real HTTP against a real single-node Raft cluster: contract and bad input."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from slimsched import paging
from tests.conftest import ApiHarness

SCHEDULES = "/job-schedules/fibonacci"


async def test_schedule_lifecycle(api: ApiHarness) -> None:
    status, body = await api.call("POST", SCHEDULES, {"Schedule": "0 0 * * *", "Args": ["42"]})
    assert status == 201
    sid = body["Id"]
    status, listed = await api.call("GET", SCHEDULES)
    assert status == 200
    assert [(s["Id"], s["Name"], s["Schedule"], s["Args"]) for s in listed] == [
        (sid, "fibonacci", "0 0 * * *", ["42"])
    ]
    # The clock is 2023-11-14T22:13:20Z: the next midnight UTC follows.
    assert listed[0]["NextFireTime"] == "2023-11-15T00:00:00Z"
    status, paused = await api.call("PATCH", f"{SCHEDULES}/{sid}", {"Paused": True})
    assert status == 200 and paused["Paused"] is True and paused["NextFireTime"] is None
    status, ticks = await api.call("GET", f"{SCHEDULES}/{sid}/ticks")
    assert status == 200 and ticks == []
    assert (await api.call("DELETE", f"{SCHEDULES}/{sid}"))[0] == 204
    status, body = await api.call("DELETE", f"{SCHEDULES}/{sid}")
    assert status == 404 and body["Error"] == "not_found"
    assert (await api.call("GET", SCHEDULES)) == (200, [])


async def test_time_zone_and_seconds_field(api: ApiHarness) -> None:
    status, body = await api.call(
        "POST", SCHEDULES, {"Schedule": "0 9 * * *", "TimeZone": "Europe/Paris", "Args": []}
    )
    assert status == 201, body
    for expr in ("*/10 * * * * *", "0 0 * * * *"):  # six fields: seconds first (Quartz, Cronos)
        status, body = await api.call("POST", SCHEDULES, {"Schedule": expr})
        assert status == 201, body
    listed = {s["Schedule"]: s for s in (await api.call("GET", SCHEDULES))[1]}
    assert listed["0 9 * * *"]["NextFireTime"] == "2023-11-15T08:00:00Z"  # 09:00 in Paris, winter time
    assert listed["*/10 * * * * *"]["NextFireTime"] == "2023-11-14T22:13:30Z"
    assert listed["0 0 * * * *"]["NextFireTime"] == "2023-11-14T23:00:00Z"  # hourly


async def test_trigger_is_queued_with_positions(api: ApiHarness) -> None:
    ids = []
    for i in range(3):
        status, body = await api.call("POST", "/job/fibonacci", {"Args": [str(i)]})
        assert status == 202, body
        ids.append(body["Id"])
    status, runs = await api.call("GET", "/job/fibonacci")
    assert status == 200
    assert [(r["Id"], r["Status"], r["PositionInQueue"]) for r in runs] == [
        (ids[0], "Queued", 1),
        (ids[1], "Queued", 2),
        (ids[2], "Queued", 3),
    ]
    assert all(r["Name"].startswith("fibonacci-") and len(r["Name"]) <= 63 for r in runs)
    assert (await api.call("DELETE", f"/job/fibonacci/{ids[0]}"))[0] == 200
    runs = (await api.call("GET", "/job/fibonacci"))[1]
    assert [(r["Status"], r["PositionInQueue"]) for r in runs] == [
        ("Canceled", -1),
        ("Queued", 1),
        ("Queued", 2),
    ]
    status, body = await api.call("DELETE", "/job/fibonacci/nope")
    assert status == 404 and body["Error"] == "not_found"


async def test_empty_trigger_body_uses_configuration(api: ApiHarness) -> None:
    """No body at all (SlimFaas accepts it): the run executes the configuration as it stands."""
    status, body = await api.call("POST", "/job/fibonacci", raw=b"")
    assert status == 202, body
    spec = api.raft.read(lambda st: st.runs[body["Id"]].spec)
    assert spec.image == "axaguildev/fibonacci-batch:latest"
    assert spec.args == () and spec.environments == () and spec.depends_on == ()
    assert spec.resources.requests == {"cpu": "400m", "memory": "400Mi"}
    assert spec.resources.limits == {"cpu": "400m", "memory": "400Mi"}
    assert (spec.backoff_limit, spec.ttl_seconds_after_finished) == (2, 3600)
    status, with_args = await api.call("POST", "/job/fibonacci", {"Args": ["9"]})
    assert status == 202, with_args
    assert api.raft.read(lambda st: st.runs[with_args["Id"]].spec) == replace(spec, args=("9",))


# Issue 17 moved unknown fields, resources over the configuration, a raised BackoffLimit, and
# uppercase or '_' names out of this list: SlimFaas accepts them, so slimsched answers with a
# Warning header (tests/test_compat_requests.py), or a 400 in strict mode.
BAD: list[tuple[str, str, str, Any, bytes | None, int, str]] = [
    # id, method, path, json body, raw body, status, error code
    ("invalid-json", "POST", SCHEDULES, None, b"{not json", 400, "invalid_json"),
    ("empty-schedule-body", "POST", SCHEDULES, None, b"", 400, "invalid_json"),
    ("body-not-object", "POST", SCHEDULES, [1, 2], None, 400, "invalid_body"),
    ("missing-schedule", "POST", SCHEDULES, {"Args": ["1"]}, None, 400, "missing_field"),
    ("schedule-wrong-type", "POST", SCHEDULES, {"Schedule": 5}, None, 400, "invalid_field"),
    ("bad-cron", "POST", SCHEDULES, {"Schedule": "61 * * * *"}, None, 400, "invalid_cron"),
    ("cron-too-few-fields", "POST", SCHEDULES, {"Schedule": "* * *"}, None, 400, "invalid_cron"),
    ("cron-seven-fields", "POST", SCHEDULES, {"Schedule": "* * * * * * *"}, None, 400, "invalid_cron"),
    (
        "bad-time-zone",
        "POST",
        SCHEDULES,
        {"Schedule": "* * * * *", "TimeZone": "Mars/Olympus"},
        None,
        400,
        "invalid_time_zone",
    ),
    (
        "args-wrong-type",
        "POST",
        SCHEDULES,
        {"Schedule": "* * * * *", "Args": "42"},
        None,
        400,
        "invalid_field",
    ),
    (
        "image-not-whitelisted",
        "POST",
        "/job/fibonacci",
        {"Image": "evil/miner:1"},
        None,
        400,
        "image_not_allowed",
    ),
    (
        "bad-quantity",
        "POST",
        "/job/fibonacci",
        {"Resources": {"Requests": {"cpu": "lots"}}},
        None,
        400,
        "invalid_quantity",
    ),
    ("negative-backoff", "POST", "/job/fibonacci", {"BackoffLimit": -1}, None, 400, "invalid_field"),
    ("bool-as-int", "POST", "/job/fibonacci", {"BackoffLimit": True}, None, 400, "invalid_field"),
    ("unknown-job-needs-image", "POST", "/job/unknown-job", {}, None, 400, "image_required"),
    ("name-too-long", "POST", "/job/" + "a" * 41, {}, None, 400, "invalid_name"),
    ("name-dot", "GET", "/job-schedules/bad.name", None, None, 400, "invalid_name"),
    ("patch-paused-wrong-type", "PATCH", SCHEDULES + "/x", {"Paused": "yes"}, None, 400, "invalid_field"),
    ("patch-unknown-field", "PATCH", SCHEDULES + "/x", {"Schedule": "* * * * *"}, None, 400, "unknown_field"),
    ("patch-unknown-id", "PATCH", SCHEDULES + "/x", {"Paused": True}, None, 404, "not_found"),
    ("ticks-unknown-id", "GET", SCHEDULES + "/x/ticks", None, None, 404, "not_found"),
    ("delete-schedule-unknown", "DELETE", SCHEDULES + "/x", None, None, 404, "not_found"),
    ("no-route", "GET", "/nope", None, None, 404, "not_found"),
    ("wrong-method", "PUT", SCHEDULES, {}, None, 405, "method_not_allowed"),
    (
        "body-too-large",
        "POST",
        "/job/fibonacci",
        None,
        b'{"Args": ["' + b"x" * 70_000 + b'"]}',
        413,
        "body_too_large",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "raw", "status", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
async def test_bad_input(
    api: ApiHarness, method: str, path: str, body: Any, raw: bytes | None, status: int, code: str
) -> None:
    got_status, got = await api.call(method, path, body, raw=raw)
    assert (got_status, got["Error"]) == (status, code), got
    assert isinstance(got["Message"], str) and len(got["Message"]) > 10
    # Nothing was stored by a refused request.
    assert (await api.call("GET", SCHEDULES))[1] == []
    assert (await api.call("GET", "/job/fibonacci"))[1] == []


async def test_health_ready_status(api: ApiHarness) -> None:
    assert (await api.call("GET", "/health"))[0] == 200
    status, body = await api.call("GET", "/ready")
    assert status == 200 and body["Leader"] == api.raft.settings.raft_address
    status, body = await api.call("GET", "/status?hash=1")
    assert status == 200 and body["IsLeader"] is True and len(body["StateHash"]) == 64


async def _page(api: ApiHarness, path: str) -> tuple[list[dict[str, Any]], str | None]:
    async with api.session.get(api.url + path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp.headers.get("X-Continue")


async def test_a_page_token_survives_its_run_leaving_the_queue(api: ApiHarness) -> None:
    """The token names the last run served; if it left the queue meanwhile, the next page starts
    at the queue's head, so no run still queued is skipped."""
    ids = []
    for i in range(3):
        api.clock.now += 1
        ids.append((await api.call("POST", "/job/fibonacci", {"Args": [str(i)]}))[1]["Id"])
    page, token = await _page(api, "/job/fibonacci?limit=1")
    assert [r["Id"] for r in page] == ids[:1] and token
    assert (await api.call("DELETE", f"/job/fibonacci/{ids[0]}"))[0] == 200
    page, token = await _page(api, f"/job/fibonacci?limit=1&continue={token}")
    assert [(r["Id"], r["PositionInQueue"]) for r in page] == [(ids[1], 1)] and token
    page, token = await _page(api, f"/job/fibonacci?limit=5&continue={token}")
    assert [r["Id"] for r in page] == ids[2:] and token is None
    # The canceled run now leads the list (out of the queue, newest first), then the queue.
    whole, _ = await _page(api, "/job/fibonacci")
    assert [(r["Id"], r["Status"]) for r in whole] == [
        (ids[0], "Canceled"),
        (ids[1], "Queued"),
        (ids[2], "Queued"),
    ]
    assert [r["Id"] for r in (await _page(api, "/job/fibonacci?limit=2"))[0]] == ids[:2]


@pytest.mark.parametrize("key", [["x", 1], [0, "x", 5], [1, 2], [0, 1]])
@pytest.mark.parametrize("path", ["/job/fibonacci", SCHEDULES])
async def test_a_forged_page_token_is_a_400_not_a_500(api: ApiHarness, path: str, key: list[Any]) -> None:
    await api.call("POST", "/job/fibonacci", {})
    await api.call("POST", SCHEDULES, {"Schedule": "0 0 * * *"})
    scope = "runs/fibonacci" if path.startswith("/job/") else "schedules/fibonacci"
    status, body = await api.call("GET", f"{path}?limit=1&continue={paging.encode_token(scope, tuple(key))}")
    assert status == 400 and body["Error"] == "invalid_continue", body
