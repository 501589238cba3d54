"""The CLI client (``slimsched get|trigger|logs|pause|resume|backfill``) against a real 3-node cluster.

Commands run in-process through ``cli.main`` (real HTTP to real node processes); the exit codes
of a real ``slimsched`` process are checked once each for usage and an unreachable server.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from slimsched import cli
from slimsched.client import EXIT_API_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, table, when
from slimsched.localcluster import free_ports
from tests.helpers import KubeCluster, request, wait_until


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "-o", "json")
    assert code == EXIT_OK, err
    return orjson.loads(out)


def test_the_client_against_a_real_cluster(kc: KubeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    server = ("--server", kc.node_url(1))
    status, body = request(f"{kc.node_url(0)}/job-schedules/fibonacci", "POST", {"Schedule": "0 * * * *"})
    assert status == 201, body
    sid = body["Id"]

    # The leader's /status tells how far each peer has replicated the log.
    leader = kc.cluster.wait_leader()
    st = kc.cluster.get_json(leader, "/status")
    assert set(st["MatchIndex"]) == set(st["Peers"])
    assert all(0 < i <= st["CommitIndex"] for i in st["MatchIndex"].values()), st
    assert "MatchIndex" not in kc.cluster.get_json((leader + 1) % 3, "/status")

    jobs = {j["Name"]: j for j in _json(capsys, "get", "jobs", *server)}
    assert jobs["fibonacci"]["Schedules"] == 1 and jobs["fibonacci"]["Visibility"] == "Public"
    schedules = _json(capsys, "get", "schedules", *server)
    assert [s["Id"] for s in schedules] == [sid]
    code, out, _ = _run(capsys, "get", "schedules", "fibonacci", *server)
    assert code == EXIT_OK
    header, row = out.splitlines()
    assert header.split()[:3] == ["JOB", "ID", "SCHEDULE"] and sid in row

    assert _json(capsys, "pause", "fibonacci", sid, *server)["Paused"] is True
    assert _json(capsys, "get", "schedules", "fibonacci", *server)[0]["NextFireTime"] is None
    assert _json(capsys, "resume", "fibonacci", sid, *server)["Paused"] is False

    code, out, err = _run(capsys, "trigger", "fibonacci", "--arg", "42", *server)
    assert code == EXIT_OK, err
    run_id = out.strip()

    def succeeded() -> bool:
        runs = _json(capsys, "get", "runs", "fibonacci", *server)
        return any(r["Id"] == run_id and r["Status"] == "Succeeded" for r in runs)

    wait_until(succeeded, 30, "the triggered run to succeed")
    code, out, err = _run(capsys, "logs", "fibonacci", run_id, *server)
    assert code == EXIT_OK, err
    assert "args 42" in out and "exited with code 0" in out

    # A schedule trigger retried with its request id is one run.
    first = _json(capsys, "trigger", "fibonacci", "--schedule", sid, "--request-id", "cli-1", *server)
    again = _json(capsys, "trigger", "fibonacci", "--schedule", sid, "--request-id", "cli-1", *server)
    assert first["Id"] == again["Id"] and (first["Duplicate"], again["Duplicate"]) == (False, True)
    # logs -f follows the manual run until its pod ends (the emulator's run lasts 0.6 s).
    wait_until(
        lambda: kc.run("fibonacci", first["Id"])["Status"] in ("Running", "Succeeded"), 30, "the run to start"
    )
    code, out, err = _run(capsys, "logs", "-f", "fibonacci", first["Id"], *server)
    assert code == EXIT_OK, err
    assert out.rstrip().endswith("exited with code 0")

    # Backfill the two hours before the schedule existed: two runs, then nothing twice.
    code, out, err = _run(
        capsys,
        "backfill",
        "fibonacci",
        sid,
        "--start",
        "2020-01-01T00:00:00Z",
        "--end",
        "2020-01-01T01:00:00Z",
        *server,
    )
    assert code == EXIT_OK, err
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["fired", "fired"]
    again_fill = _json(
        capsys,
        "backfill",
        "fibonacci",
        sid,
        "--start",
        "2020-01-01T00:00:00Z",
        "--end",
        "2020-01-01T01:00:00Z",
        *server,
    )
    assert (len(again_fill["Fired"]), len(again_fill["AlreadyFired"])) == (0, 2)
    ticks = _json(capsys, "get", "ticks", "fibonacci", "--schedule", sid, *server)
    # (an hourly cron tick may land in between, with no reason)
    assert [t["Reason"] for t in ticks if t.get("Reason")] == ["manual", "backfill", "backfill"]

    # Errors: the API's code on stderr and exit 1; an argument clash is a usage error.
    code, _, err = _run(capsys, "pause", "fibonacci", "no-such-schedule", *server)
    assert code == EXIT_API_ERROR and "not_found" in err
    code, _, err = _run(capsys, "trigger", "fibonacci", "--schedule", sid, "--arg", "x", *server)
    assert code == EXIT_USAGE and "--arg" in err


def test_exit_codes_of_a_real_process() -> None:
    (port,) = free_ports(1)  # nothing listens there
    unreachable = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimsched",
            "get",
            "jobs",
            "--server",
            f"http://127.0.0.1:{port}",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == EXIT_UNREACHABLE, unreachable.stderr
    assert "cannot reach" in unreachable.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "slimsched", "get", "everything"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == EXIT_USAGE and "invalid choice" in usage.stderr


def test_table_and_time_formatting() -> None:
    rendered = table(
        [{"a": "x", "b": None}, {"a": "longer", "b": 3}], [("A", lambda r: r["a"]), ("B", lambda r: r["b"])]
    )
    assert rendered.splitlines() == ["A       B", "x       -", "longer  3"]
    assert when(1_700_000_000_000) == "2023-11-14T22:13:20Z"
    assert when(638_355_968_000_000_000) == "2023-11-14T22:13:20Z"  # .NET ticks of the same instant
    assert when(-1) == when(None) == "-"
