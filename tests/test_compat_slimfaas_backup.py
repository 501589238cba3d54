"""``slimsched backup import-slimfaas``: a SlimFaas schedule backup migrates into a real cluster.

The file format is SlimFaas's (src/SlimFaas/Workers/ScheduleJobBackupData.cs and
ScheduleJobBackupWorker.cs, tests/SlimFaas.Tests/Workers/ScheduleJobBackup*Tests.cs): JSON
``{"Hashsets": {"ScheduleJob:<job>": {"<id>": base64(MemoryPack(ScheduleCreateJob))}}}``, with
the record of src/SlimFaas/Kubernetes/Models/CreateJob.cs.
"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched import slimfaas_backup as sb
from slimsched.emulator import EmulatorThread
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until


def _i32(v: int) -> bytes:
    return struct.pack("<i", v)


def _utf8(s: str) -> bytes:
    raw = s.encode()
    return _i32(~len(raw)) + _i32(len(s)) + raw


# ScheduleCreateJob("*/5 * * * *", ["42"]) with its defaults, assembled byte by byte from
# MemoryPack's format description (not from our encoder): member count, then each member.
HAND_MADE = (
    bytes([9])
    + _utf8("*/5 * * * *")  # Schedule (UTF-8, MemoryPack's default)
    + _i32(1)
    + _utf8("42")  # Args
    + _i32(0)  # Image ""
    + _i32(1)  # BackoffLimit
    + _i32(60)  # TtlSecondsAfterFinished
    + _utf8("Never")  # RestartPolicy
    + bytes([255])  # Resources null
    + _i32(-1)  # Environments null
    + _i32(-1)  # DependsOn null
)


def test_a_hand_made_record_decodes() -> None:
    record = sb.decode_schedule_create_job(HAND_MADE)
    assert record == {
        "Schedule": "*/5 * * * *",
        "Args": ["42"],
        "Image": "",
        "BackoffLimit": 1,
        "TtlSecondsAfterFinished": 60,
        "RestartPolicy": "Never",
        "Resources": None,
        "Environments": None,
        "DependsOn": None,
    }
    assert sb.encode_schedule_create_job(record) == HAND_MADE
    assert sb.request_body(record) == {"Schedule": "*/5 * * * *", "Args": ["42"]}


def test_utf16_strings_and_a_shorter_record_decode() -> None:
    """MemoryPack's UTF-16 option writes the char count; an older record may hold fewer members."""
    text = "0 0 * * é"
    record = sb.decode_schedule_create_job(bytes([2]) + _i32(len(text)) + text.encode("utf-16-le") + _i32(0))
    assert record["Schedule"] == text and record["Args"] == [] and record["TtlSecondsAfterFinished"] == 60


_text = st.text(st.characters(codec="utf-8"), max_size=12)
_refs = st.none() | st.fixed_dictionaries({"Name": _text, "Key": _text})


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "Schedule": _text.filter(bool),
            "Args": st.lists(_text, max_size=3),
            "Image": _text,
            "BackoffLimit": st.integers(-(2**31), 2**31 - 1),
            "TtlSecondsAfterFinished": st.integers(0, 2**31 - 1),
            "RestartPolicy": st.sampled_from(["Never", "OnFailure"]),
            "Resources": st.none()
            | st.fixed_dictionaries(
                {
                    "Requests": st.dictionaries(_text, _text, max_size=2),
                    "Limits": st.dictionaries(_text, _text, max_size=2),
                }
            ),
            "Environments": st.none()
            | st.lists(
                st.fixed_dictionaries({"Name": _text, "Value": _text}, optional={"SecretRef": _refs}),
                max_size=2,
            ),
            "DependsOn": st.none() | st.lists(_text, max_size=2),
        }
    )
)
def test_records_round_trip(record: dict[str, Any]) -> None:
    decoded = sb.decode_schedule_create_job(sb.encode_schedule_create_job(record))
    if record["Environments"] is not None:
        record = {
            **record,
            "Environments": [{k: v for k, v in e.items() if v is not None} for e in record["Environments"]],
        }
    assert decoded == record


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not JSON"),
        (b'{"Items": {}}', "Hashsets"),
        (b'{"Hashsets": {"ScheduleJob:x": {"a": "!!"}}}', "not base64"),
        (b'{"Hashsets": {"ScheduleJob:x": {"a": "AQI="}}}', "truncated"),
        (
            orjson.dumps({"Hashsets": {"ScheduleJob:x": {"a": base64.b64encode(HAND_MADE + b"x").decode()}}}),
            "left",
        ),
        (
            orjson.dumps({"Hashsets": {"ScheduleJob:x": {"a": base64.b64encode(bytes([12])).decode()}}}),
            "members",
        ),
    ],
)
def test_a_bad_file_is_refused_with_where(raw: bytes, says: str) -> None:
    with pytest.raises(sb.SlimFaasBackupError) as err:
        sb.read_backup(raw)
    assert says in str(err.value)


def test_the_ttl_field_and_other_hashsets_are_not_schedules() -> None:
    """SlimDataInterpreter.HashsetTtlField is skipped by SlimFaas's own backup; only ScheduleJob:."""
    raw = orjson.dumps(
        {
            "Hashsets": {
                "ScheduleJob:fib": {sb.TTL_FIELD: "AQ==", "id1": base64.b64encode(HAND_MADE).decode()},
                "Other:fib": {"x": "AQ=="},
            }
        }
    )
    [entry] = sb.read_backup(raw)
    assert (entry.job, entry.slimfaas_id, entry.body["Schedule"]) == ("fib", "id1", "*/5 * * * *")


JOBS = orjson.dumps(
    {
        "Configurations": {
            "fibonacci": {
                "Image": "axaguildev/fibonacci-batch:latest",
                "ImagesWhitelist": ["axaguildev/fibonacci-batch:*"],
                "Resources": {
                    "Requests": {"cpu": "400m", "memory": "400Mi"},
                    "Limits": {"cpu": "400m", "memory": "400Mi"},
                },
                "Visibility": "Public",
            },
            "Default": {"Image": "demo/default:1", "Visibility": "Public"},
        }
    }
).decode()

BACKUP: dict[str, dict[str, dict[str, Any]]] = {
    "fibonacci": {
        "7d3f6c1e-0000-4000-8000-000000000001": {"Schedule": "0 0 * * *", "Args": ["42"]},
        "7d3f6c1e-0000-4000-8000-000000000002": {
            "Schedule": "0 0 * * 0",
            "Args": ["43"],
            "Image": "axaguildev/fibonacci-batch:1.0.1",
            "DependsOn": ["fibonacci2"],
            "Resources": {
                "Requests": {"cpu": "200m", "memory": "200Mi"},
                "Limits": {"cpu": "200m", "memory": "200Mi"},
            },
            "Environments": [
                {"Name": "MODE", "Value": "fast"},
                {"Name": "TOKEN", "Value": "", "SecretRef": {"Name": "s", "Key": "k"}},
            ],
            "BackoffLimit": 0,  # not the record default (1): an explicit choice, carried over
        },
        # Refused by the cluster: the image is outside the whitelist.
        "7d3f6c1e-0000-4000-8000-000000000003": {
            "Schedule": "*/2 * * * *",
            "Args": [],
            "Image": "evil/miner:1",
        },
    },
    # ScheduleService files a schedule of an unconfigured job under Default.
    "Default": {"7d3f6c1e-0000-4000-8000-000000000004": {"Schedule": "30 6 * * *", "Args": ["x"]}},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = Path(tmp_path_factory.mktemp("import-slimfaas"))
    with EmulatorThread(pending_seconds=0.05, run_seconds=0.2) as url:
        c = LocalCluster.create(3, str(base), jobs_configuration=JOBS, env={"SLIMSCHED_KUBE_URL": url})
        c.start()
        try:
            c.wait_ready(timeout=30)
            yield c
        finally:
            c.stop()


def _run(path: Path, server: str, dry_run: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = sb.cli_import(str(path), server, dry_run, out, err)
    return code, out.getvalue(), err.getvalue()


def test_import_into_a_real_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "schedule-jobs-backup.json"
    path.write_bytes(sb.encode_backup(BACKUP))
    assert b"\n" in path.read_bytes(), "indented, as SlimFaas writes it (WriteIndented = true)"
    url = cluster.nodes[1].url

    code, out, err = _run(path, url, dry_run=True)
    assert code == 0 and out.count("would create:") == 4, out
    assert request(f"{url}/job-schedules/fibonacci")[1] == [], "a dry run sends nothing"

    code, out, err = _run(path, url)
    assert code == 1, "one schedule was refused"
    assert "3 created, 0 already there, 1 failed, of 4" in out, err
    assert "evil/miner:1" in err or "Image" in err, err

    def fib() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = request(f"{cluster.nodes[2].url}/job-schedules/fibonacci")[1]
        return listed

    wait_until(lambda: len(fib()) == 2, 10, "the imported schedules on another node")
    daily, weekly = sorted(fib(), key=lambda s: s["Schedule"])
    assert (daily["Schedule"], daily["Args"], daily["Image"], daily["DependsOn"]) == (
        "0 0 * * *",
        ["42"],
        "",
        [],
    )
    assert "BackoffLimit" not in daily, "a record's default BackoffLimit is not an override"
    assert weekly["Image"] == "axaguildev/fibonacci-batch:1.0.1" and weekly["DependsOn"] == ["fibonacci2"]
    assert weekly["Resources"] == {
        "Requests": {"cpu": "200m", "memory": "200Mi"},
        "Limits": {"cpu": "200m", "memory": "200Mi"},
    }
    assert weekly["BackoffLimit"] == 0
    envs = {e["Name"]: e for e in weekly["Environments"]}
    assert envs["MODE"]["Value"] == "fast" and envs["TOKEN"]["SecretKeyRef"] == {"Name": "s", "Key": "k"}
    assert [s["Schedule"] for s in request(f"{url}/job-schedules/default")[1]] == ["30 6 * * *"]

    # Run again, as an operator does (the command line): nothing new, the refused one refused again.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimsched",
            "backup",
            "import-slimfaas",
            str(path),
            "--server",
            cluster.nodes[0].url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "0 created, 3 already there, 1 failed, of 4" in proc.stdout, proc
    assert "Traceback" not in proc.stderr
    assert len(fib()) == 2


def test_unreachable_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(sb.encode_backup({"fib": {"a": {"Schedule": "* * * * *"}}}))
    code, _, err = _run(path, "http://127.0.0.1:9")
    assert code == 3 and "cannot reach" in err
    code, _, err = _run(tmp_path / "missing.json", "http://127.0.0.1:9")
    assert code == 1 and "cannot read" in err
