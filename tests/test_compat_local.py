"""``slimsched local`` as a SlimFaas user starts it: with SlimFaas__JobsConfiguration in the
environment (docs/jobs.md's way of giving the configuration), one clear line for a port in use,
and a help text with its default for every option of ``local``, ``serve`` and the backup import.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import orjson
import pytest

from slimsched import cli
from tests.helpers import request, wait_until
from tests.test_cli import _consecutive_free_ports

# docs/jobs.md's configuration, with a job name only it has.
SLIMFAAS_CONFIG = orjson.dumps(
    {
        "Configurations": {
            "fibonacci": {"Image": "axaguildev/fibonacci-batch:latest", "Visibility": "Public"},
            "only-in-env": {"Image": "demo/env:1", "Visibility": "Public"},
        },
        "Schedules": {"fibonacci": [{"Schedule": "0 0 * * *", "Args": ["42"]}]},
    }
).decode()


def _local(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slimsched", "local", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLIMSCHED_", "SlimFaas__", "SlimData__"))
    }
    return {**env, **extra}


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    base = _consecutive_free_ports(4)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 1))
        holder.listen()
        proc = _local(
            ["--nodes", "2", "--http-port", str(base), "--raft-port", str(base + 2)], _env(), tmp_path
        )
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"port {base + 1}" in lines[0] and "HTTP port of node 1" in lines[0], err


def test_a_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    base = _consecutive_free_ports(2)
    proc = _local(
        ["--nodes", "1", "--http-port", str(base), "--raft-port", str(base + 1)],
        _env(SlimFaas__JobsConfiguration='{"Configurations": [1, 2]}'),
        tmp_path,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_jobs_config_file_is_one_clear_line(tmp_path: Path) -> None:
    base = _consecutive_free_ports(2)
    proc = _local(
        [
            "--nodes",
            "1",
            "--http-port",
            str(base),
            "--raft-port",
            str(base + 1),
            "--jobs-config",
            "nope.json",
        ],
        _env(),
        tmp_path,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    assert err.strip() == "slimsched: cannot read --jobs-config nope.json: No such file or directory", err


def test_local_honours_slimfaas_jobs_configuration(tmp_path: Path) -> None:
    base = _consecutive_free_ports(2)
    backups = tmp_path / "backups"
    proc = _local(
        ["--nodes", "1", "--http-port", str(base), "--raft-port", str(base + 1)],
        _env(SlimFaas__JobsConfiguration=SLIMFAAS_CONFIG, SlimData__BackupDirectory=str(backups)),
        tmp_path,
    )
    url = f"http://127.0.0.1:{base}"

    def has_the_job() -> bool:
        try:
            status, jobs = request(f"{url}/jobs/status", timeout=2)
        except (urllib.error.URLError, OSError):
            return False
        return status == 200 and "only-in-env" in {j["Name"] for j in jobs}

    try:
        wait_until(has_the_job, 40, "the node to serve the job of SlimFaas__JobsConfiguration")
        wait_until(
            lambda: [s["Schedule"] for s in request(f"{url}/job-schedules/fibonacci")[1]] == ["0 0 * * *"],
            20,
            "the schedule the configuration declares",
        )
        # SlimData__BackupDirectory, as SlimFaas reads it: one directory per node of the cluster.
        wait_until(lambda: (backups / "node-0").is_dir(), 20, "the node's backup directory")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "job configuration from SlimFaas__JobsConfiguration" in out, out
    assert "demo configuration" not in out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("path", [["local"], ["serve"], ["backup", "import-slimfaas"]])
def test_every_option_has_a_help_text_with_its_default(path: list[str]) -> None:
    parser = cli.build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    for action in _options(parser):
        assert action.help and "default" in action.help, (path, action.option_strings)
