"""The OpenAPI document (slimsched/openapi.json): valid, complete, served, and true to a real node.

The schemathesis test generates requests from the document (valid ones, invalid ones, and valid
ones naming a job and ids that exist) against a real single-node Raft cluster behind a real HTTP
server, and checks every answer against the document: a documented status, the documented content
type, headers and body schema, invalid input refused with a 4xx, and no 5xx (the one exception:
the documented 503 of a run's logs on a node without Kubernetes). Every body and query example
of the document must succeed too.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson
import pytest
import requests
import schemathesis
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from slimsched import api, backup, jobconfig, statemachine
from slimsched.access import AccessPolicy
from slimsched.codec import run_to_dict
from slimsched.jobmanifest import kube_job_name
from slimsched.model import JobSpec, Run, RunStatus
from slimsched.raft import RaftNode
from slimsched.settings import Settings
from slimsched.statemachine import encode_command
from tests.conftest import ApiHarness, ManualClock, api_context

DOCUMENT: dict[str, Any] = json.loads(
    importlib.resources.files("slimsched").joinpath("openapi.json").read_text(encoding="utf-8")
)
Case = schemathesis.Case[Any]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Per operation and per pass: about 800 requests, 20 s on 2 cores. Raise it for a deeper search:
# SLIMSCHED_OPENAPI_EXAMPLES=1000 pytest tests/test_openapi.py -k schemathesis
MAX_EXAMPLES = int(os.environ.get("SLIMSCHED_OPENAPI_EXAMPLES", "30"))


def _load(document: dict[str, Any]) -> OpenApiSchema:
    return schemathesis.openapi.from_dict(copy.deepcopy(document), config=schemathesis.Config())


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def _schemas(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document: under ``schema`` keys and in components.schemas."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}/{key}"
            if key == "schema" or path == "/components/schemas":
                yield where, value
            else:
                yield from _schemas(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schemas(value, f"{path}/{i}")


def test_document_is_valid_openapi() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    _load(DOCUMENT).validate()  # the OpenAPI 3.1 meta-schema
    # The meta-schema does not look inside Schema Objects: check those against JSON Schema 2020-12.
    found = list(_schemas(DOCUMENT))
    assert len(found) > 30
    for where, schema in found:
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as e:
            raise AssertionError(f"{where} is not a valid JSON Schema: {e}") from e


def test_a_broken_document_is_refused() -> None:
    broken = copy.deepcopy(DOCUMENT)
    del broken["paths"]["/health"]["get"]["responses"]["200"]["description"]
    with pytest.raises(jsonschema_rs.ValidationError):
        _load(broken).validate()


def test_document_covers_exactly_the_routes() -> None:
    # The routes a node really serves: the API's table plus the admin routes the node adds.
    admin = backup.admin_routes(RaftNode(Settings()), AccessPolicy.build([], []))
    routes = {(method, path) for method, path, _ in (*api.ROUTES, *admin)}
    assert ("GET", "/openapi.json") in routes
    documented = _operations(DOCUMENT)
    assert documented - routes == set(), "documented operations the app does not serve"
    assert routes - documented == set(), "routes missing from slimsched/openapi.json"


def test_path_parameters_match_the_templates() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method in (m for m in item if m in METHODS):
            params = item.get("parameters", []) + item[method].get("parameters", [])
            declared = {p["name"] for p in params if p.get("in") == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), f"{method.upper()} {path}"


def test_request_bodies_list_the_fields_the_parsers_accept() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    overrides = set(jobconfig._OVERRIDE_FIELDS)
    assert set(schemas["TriggerRequest"]["properties"]) == overrides
    assert set(schemas["ScheduleRequest"]["properties"]) == overrides | set(jobconfig._SCHEDULE_FIELDS)
    assert schemas["ScheduleRequest"]["required"] == ["Schedule"]
    assert set(schemas["EnvVarRequest"]["properties"]) == set(jobconfig._ENV_FIELDS) | set(
        jobconfig._ENV_ALIASES
    )
    assert schemas["PauseRequest"]["required"] == ["Paused"]


async def test_the_document_is_served(api: ApiHarness) -> None:
    async with api.session.get(api.url + "/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert orjson.loads(await resp.read()) == DOCUMENT


# Requests that answered 500 (an unhandled exception), found while checking the document.
FIXED: list[tuple[str, str, Any, int, str]] = [
    (
        "POST",
        "/job-schedules/fibonacci",
        {"Schedule": "* * * * *", "TimeZone": "America"},
        400,
        "invalid_time_zone",
    ),
    (
        "POST",
        "/job-schedules/fibonacci",
        {"Schedule": "* * * * *", "TimeZone": "a" * 300},
        400,
        "invalid_time_zone",
    ),
    ("GET", "/job/fibonacci/x/logs?tail=%C2%B2", None, 400, "invalid_query"),  # ?tail=²
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"), FIXED, ids=["tz-dir", "tz-long", "tail-²"]
)
async def test_input_that_used_to_be_a_server_error(
    api: ApiHarness, method: str, path: str, body: Any, status: int, code: str
) -> None:
    got_status, got = await api.call(method, path, body)
    assert (got_status, got["Error"]) == (status, code), got


# -- schemathesis against a real node -----------------------------------------------------------

LOGS = "GET /job/{name}/{id}/logs"


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """No 5xx, except the documented 503 of the logs of a run on a node without Kubernetes."""
    if response.status_code >= 500 and not (case.operation.label == LOGS and response.status_code == 503):
        raise AssertionError(f"server error {response.status_code}: {response.text[:1000]}")


CHECKS: list[CheckFunction] = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Seeded:
    """Ids of things that exist on the node, so generated requests also reach the success paths."""

    schedule: str
    queued_run: str
    running_run: str


async def _seed(url: str, raft: RaftNode, clock: ManualClock) -> Seeded:
    async with ClientSession() as session:

        async def post(path: str, body: Any) -> str:
            async with session.post(url + path, data=orjson.dumps(body)) as resp:
                assert resp.status in (201, 202), await resp.text()
                return str((await resp.json())["Id"])

        schedule = await post(
            "/job-schedules/fibonacci",
            {
                "Schedule": "*/5 * * * *",
                "Args": ["1"],
                "TimeZone": "Europe/Paris",
                "Resources": {"Requests": {"cpu": "100m"}, "Limits": {"cpu": "200m"}},
                "Environments": [
                    {"Name": "A", "Value": "1"},
                    {"Name": "B", "SecretKeyRef": {"Name": "s", "Key": "k"}},
                    {"Name": "C", "ConfigMapKeyRef": {"Name": "c", "Key": "k"}},
                    {"Name": "D", "FieldRef": {"FieldPath": "metadata.name"}},
                    {"Name": "E", "ResourceFieldRef": {"Resource": "limits.cpu", "Divisor": "1m"}},
                ],
                "BackoffLimit": 1,
                "TtlSecondsAfterFinished": 60,
                "RestartPolicy": "Never",
                "Command": ["run"],
                "DependsOn": ["db"],
                "ActiveDeadlineSeconds": 60,
                "Parallelism": 1,
                "Completions": 1,
            },
        )
        queued = await post("/job/fibonacci", {"Args": ["2"]})
        running = await post("/job/fibonacci", {})
        finished = await post("/job/fibonacci", {})

    async def commit(kind: str, **fields: Any) -> None:
        result = await raft.submit(encode_command(kind, rid=uuid.uuid4().hex, **fields))
        assert result.ok, result

    # The node announces its command level, as a node does at start: schedule actions need it.
    await commit("hello", node=raft.settings.raft_address, level=statemachine.COMMAND_LEVEL)
    now_ms = int(clock() * 1000)
    # Runs the leader dispatched, that Kubernetes reports running and succeeded.
    for i, (run, status) in enumerate([(running, "Running"), (finished, "Succeeded")]):
        await commit("start_dispatch", run_id=run, term=1, index=i + 1)
        await commit("run_status", run_id=run, status=status, at=now_ms)
    # A tick ledger with a skipped tick and a fired one (whose run joins the queue).
    tick = int(clock()) // 300 * 300
    await commit("fire_tick", schedule_id=schedule, tick=tick - 300, at=now_ms, outcome="skipped", reason="x")
    fired = Run(
        id=f"{schedule}-{tick}",
        job_name="fibonacci",
        spec=JobSpec(image="axaguildev/fibonacci-batch:latest"),
        status=RunStatus.QUEUED,
        queued_at_ms=now_ms,
        kube_name=kube_job_name("fibonacci", f"{schedule}-{tick}"),
        schedule_id=schedule,
        tick=tick,
    )
    await commit(
        "fire_tick", schedule_id=schedule, tick=tick, at=now_ms, outcome="fired", run=run_to_dict(fired)
    )
    return Seeded(schedule=schedule, queued_run=queued, running_run=running)


@dataclass
class Fuzzer:
    """Runs schemathesis cases against the node, collecting every failure instead of stopping."""

    base_url: str
    session: requests.Session
    failures: list[str] = field(default_factory=list)
    statuses: dict[tuple[str, int], int] = field(default_factory=dict)

    def send(self, case: Case, checks: list[CheckFunction]) -> int:
        response = case.call(base_url=self.base_url, session=self.session, timeout=10)
        key = (case.operation.label, response.status_code)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        case.validate_response(response, checks=checks)
        return response.status_code

    def examples(self, schema: OpenApiSchema, seeded: Seeded) -> None:
        """Each example of the document (bodies, query parameters) succeeds, answered as documented."""
        for path, item in DOCUMENT["paths"].items():
            for method in (m for m in item if m in METHODS):
                operation = schema[path][method]
                knowns = _known(path, seeded)
                known = knowns[0] if knowns else None
                content = item[method].get("requestBody", {}).get("content", {}).get("application/json", {})
                cases = {
                    name: operation.Case(
                        path_parameters=known, body=example["value"], media_type="application/json"
                    )
                    for name, example in content.get("examples", {}).items()
                }
                for param in item[method].get("parameters", []):
                    for name, example in param.get("examples", {}).items():
                        cases[name] = operation.Case(
                            path_parameters=known, query={param["name"]: example["value"]}
                        )
                for name, case in cases.items():
                    try:
                        status = self.send(case, CHECKS)
                        assert status < 300, f"answered {status}"
                    except (Exception, BaseExceptionGroup) as e:
                        self.failures.append(f"== {method.upper()} {path} example {name!r}\n{e}")

    def fuzz(self, label: str, strategy: st.SearchStrategy[Case], checks: list[CheckFunction]) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=(Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Case) -> None:
            self.send(case, checks)

        try:
            check()
        except (Exception, BaseExceptionGroup) as e:  # FailureGroup is a BaseExceptionGroup
            self.failures.append(f"== {label}\n{e}")


def _known(path: str, seeded: Seeded) -> list[dict[str, str]]:
    """Path parameters naming things that exist (one set per kind of answer they lead to)."""
    if "{id}" not in path:
        return [{"name": "fibonacci"}] if "{name}" in path else []
    if path.startswith("/job-schedules/"):
        return [{"name": "fibonacci", "id": seeded.schedule}]
    if path.endswith("/logs"):  # 503 without Kubernetes; 409 not started
        return [
            {"name": "fibonacci", "id": seeded.running_run},
            {"name": "fibonacci", "id": seeded.queued_run},
        ]
    return [{"name": "fibonacci", "id": seeded.queued_run}]


Pass = tuple[str, st.SearchStrategy[Case], list[CheckFunction]]


def _passes(schema: OpenApiSchema, seeded: Seeded) -> Iterator[Pass]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    # DELETEs last, so the other operations still find the seeded schedule and runs.
    operations.sort(key=lambda op: op.method == "delete")
    for operation in operations:
        label = operation.label
        yield f"{label} [valid]", operation.as_strategy(), CHECKS
        if operation.path_parameters or operation.query or operation.body:
            negative = operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)
            yield f"{label} [invalid]", negative, [*CHECKS, negative_data_rejection]
        for known in _known(operation.path, seeded):
            yield f"{label} [{known}]", operation.as_strategy(path_parameters=known), CHECKS


async def test_schemathesis_against_a_real_node(raft: RaftNode) -> None:
    clock = ManualClock()
    server = TestServer(api.create_app(api_context(raft, clock)), host="127.0.0.1")
    await server.start_server()
    try:
        base_url = str(server.make_url("")).rstrip("/")
        seeded = await _seed(base_url, raft, clock)
        schema = _load(DOCUMENT)
        with requests.Session() as session:
            fuzzer = Fuzzer(base_url, session)
            started = time.monotonic()
            await asyncio.to_thread(fuzzer.examples, schema, seeded)
            for label, strategy, checks in _passes(schema, seeded):
                await asyncio.to_thread(fuzzer.fuzz, label, strategy, checks)
            elapsed = time.monotonic() - started
    finally:
        await server.close()
    print(f"\nschemathesis: {sum(fuzzer.statuses.values())} requests in {elapsed:.1f} s")
    for (operation, status), count in sorted(fuzzer.statuses.items()):
        print(f"  {operation:40} {status} x{count}")
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    # The requests reached past validation: every operation answered 2xx at least once.
    succeeded = {operation for (operation, status) in fuzzer.statuses if status < 300}
    # Logs need Kubernetes, a restore applies only to an empty cluster, and this node keeps no
    # backup to overwrite: none of them can succeed here.
    assert succeeded >= {
        f"{m} {p}"
        for m, p in _operations(DOCUMENT)
        if not p.endswith("/logs") and p not in (backup.ADMIN_RESTORE_PATH, backup.ADMIN_OVERWRITE_PATH)
    }


def _concrete(path: str) -> str:
    return path.replace("{name}", "fibonacci").replace("{id}", "x")


async def test_other_methods_are_405_with_allow(api: ApiHarness) -> None:
    """The document's methods are the only ones: any other is 405 naming them in Allow."""
    for path, item in DOCUMENT["paths"].items():
        documented = {m.upper() for m in item if m in METHODS}
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            async with api.session.request(method, api.url + _concrete(path)) as resp:
                body = orjson.loads(await resp.read())
                assert (resp.status, body["Error"]) == (405, "method_not_allowed"), (method, path)
                assert {m.strip() for m in resp.headers["Allow"].split(",")} == documented, (method, path)
