"""The real tier: a real kube-apiserver, etcd and kube-controller-manager (``realk8s.sh``), once per session.

Cases marked ``realk8s`` need ``../shared/tools/realk8s.sh`` (or ``$REALK8S_SH``) beside the
checkout, installed (``bash ../shared/tools/realk8s.sh install``, cached under
``$REALK8S_HOME``, default ~/.cache/realk8s). They are deselected from a plain ``pytest``
(pyproject's ``addopts``) and run with ``pytest -m realk8s``; without the tool they skip, and the
session ends with one line saying what is missing (they fail instead with REALK8S_REQUIRED=1, as
in .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimsched.emulator import EmulatorThread
from tests.realk8s.backends import Backend, EmulatorBackend, RealBackend
from tests.realk8s.images import ImageWebhook
from tests.realk8s.kubeadmin import Credentials, KubeAdmin

REPO = Path(__file__).resolve().parents[2]
UP_READY_SECONDS = 240.0
DOWN_SECONDS = 60.0
_unavailable: list[str] = []


def realk8s_script() -> Path:
    return Path(os.environ.get("REALK8S_SH") or REPO.parent / "shared" / "tools" / "realk8s.sh")


def realk8s_home() -> Path:
    return Path(os.environ.get("REALK8S_HOME") or Path.home() / ".cache" / "realk8s")


def why_unavailable() -> str | None:
    script = realk8s_script()
    if not script.is_file():
        return f"{script} not found (the real control plane tool; set REALK8S_SH to its path)"
    if not (realk8s_home() / "bin" / "kube-apiserver").is_file():
        return f"realk8s is not installed in {realk8s_home()}: run 'bash {script} install'"
    for tool in ("etcd", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH: run 'bash {script} install'"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unavailable:
        terminalreporter.write_line(f"realk8s tier skipped: {_unavailable[0]}")


@dataclass
class RealK8s:
    kubeconfig: str
    admin: KubeAdmin
    webhook: ImageWebhook
    workdir: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _left_over(children: dict[int, str]) -> list[str]:
    """The control plane's processes still running (by the PIDs `up` recorded, checked by name)."""
    left = []
    for pid, name in children.items():
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            if _alive(pid) and (name in cmdline or "fake-kubelet" in cmdline):
                left.append(f"{name} (pid {pid})")
    return left


def _ready(home: Path, pid: int) -> bool:
    """This `up` (its PID in up.pid, under the lock) has written its kubeconfig since it started."""
    try:
        recorded = int((home / "up.pid").read_text().strip() or 0)
        return recorded == pid and (home / "kubeconfig").stat().st_mtime >= (home / "up.pid").stat().st_mtime
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def realk8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealK8s]:
    """`realk8s.sh up` in a session of its own, ready; stopped by its PID with SIGTERM at the end."""
    missing = why_unavailable()
    if missing is not None:
        if os.environ.get("REALK8S_REQUIRED") == "1":  # .ci/run: the tier must run, not skip
            pytest.fail(f"realk8s tier: {missing}", pytrace=False)
        _unavailable.append(missing)
        pytest.skip(f"realk8s tier: {missing}")
    script, home = realk8s_script(), realk8s_home()
    workdir = tmp_path_factory.mktemp("realk8s")
    up_log = workdir / "realk8s-up.log"
    with open(up_log, "wb") as out:
        up = subprocess.Popen(
            ["bash", str(script), "up"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    children: dict[int, str] = {}
    webhook: ImageWebhook | None = None
    admin: KubeAdmin | None = None
    try:
        kubeconfig = home / "kubeconfig"
        deadline = time.monotonic() + UP_READY_SECONDS
        while not _ready(home, up.pid):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"realk8s up did not get ready: {up_log.read_text()[-3000:]}")
            time.sleep(0.2)
        for line in (home / "run" / "pids").read_text().splitlines():
            pid, name = line.split(maxsplit=1)
            children[int(pid)] = name
        admin = KubeAdmin(Credentials.from_kubeconfig(str(kubeconfig)))
        webhook = ImageWebhook(str(workdir))
        webhook.register(admin)
        yield RealK8s(str(kubeconfig), admin, webhook, str(workdir))
    finally:
        if webhook is not None:
            if admin is not None:
                with contextlib.suppress(Exception):
                    webhook.unregister(admin)
            webhook.close()
        if up.poll() is None:
            os.kill(up.pid, signal.SIGTERM)
            try:
                up.wait(DOWN_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(up.pid, signal.SIGKILL)
                up.wait(10)
                subprocess.run(["bash", str(script), "down"], timeout=DOWN_SECONDS, check=False)
        left = _left_over(children)
        assert not left, f"realk8s left processes running: {left}"


@pytest.fixture(params=["emulator", pytest.param("realk8s", marks=pytest.mark.realk8s)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each contract case runs on the emulator (plain runs) and on the real server (``-m realk8s``)."""
    if request.param == "emulator":
        emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.5)
        with emulator:
            yield EmulatorBackend(emulator)
        return
    real: RealK8s = request.getfixturevalue("realk8s")
    backend = RealBackend(real.admin, real.webhook, real.workdir)
    try:
        yield backend
    finally:
        backend.close()
