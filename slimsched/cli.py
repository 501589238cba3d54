"""Command line: ``slimsched serve`` runs one node, ``slimsched local`` a whole cluster on 127.0.0.1.

This is the only place that reads the environment: flags are layered over ``Settings.from_env``.
``local`` starts each node as its own ``slimsched serve`` process (a node can then be killed
alone, as in production) and stops them all by PID on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from slimsched import client, jobconfig
from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.discovery import local_peers
from slimsched.errors import ConfigError
from slimsched.localcluster import free_ports, serve_command
from slimsched.settings import Settings

log = logging.getLogger("slimsched")

# Under the StatefulSet's 30 s terminationGracePeriodSeconds, with room to spare.
SHUTDOWN_DEADLINE_SECONDS = 25.0


def _serve_settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    changes: dict[str, object] = {}
    if args.raft_address:
        changes["raft_address"] = args.raft_address
    if args.raft_bind:
        changes["raft_bind"] = args.raft_bind
    if args.peers is not None:
        changes["peers"] = tuple(
            p for p in args.peers.split(",") if p and p != (args.raft_address or s.raft_address)
        )
    if args.http_port is not None:
        changes["http_port"] = args.http_port
    if args.http_host:
        changes["http_host"] = args.http_host
    if args.data_dir:
        changes["data_dir"] = args.data_dir
    if args.jobs_config:
        changes["jobs_configuration"] = _read_jobs_file(args.jobs_config)
    settings = dataclasses.replace(s, **changes)  # type: ignore[arg-type]
    settings.require_raft_security()
    return settings


async def _serve(settings: Settings) -> int:
    from slimsched.httpguard import raise_nofile_limit
    from slimsched.node import Node

    before, after = raise_nofile_limit()  # descriptors for HTTP connections and Raft alike
    if after != before:
        log.info("open-files limit raised from %d to %d", before, after)

    jobs = jobconfig.parse_jobs_configuration(settings.jobs_configuration)
    node = Node(settings, jobs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    print(f"slimsched node {settings.node_id} ready on {node.http_url}", flush=True)
    await stop.wait()
    log.info("signal received: shutting down")
    stopping = asyncio.get_running_loop().create_task(node.stop(), name="node-stop")
    await asyncio.wait({stopping}, timeout=SHUTDOWN_DEADLINE_SECONDS)
    if not stopping.done():
        # A shutdown that hangs is a bug: leave its evidence, and still leave.
        for task in asyncio.all_tasks():
            log.error("still running at the shutdown deadline: %r", task, stack_info=False)
            for frame in task.get_stack(limit=5):
                log.error("  %s:%d %s", frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        logging.shutdown()
        os._exit(1)
    stopping.result()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _serve_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.raft_password is None:
        log.warning(
            "Raft runs WITHOUT a password (SLIMSCHED_RAFT_NETWORK_PRIVATE=true): whoever reaches %s "
            "can run code in this node",
            settings.raft_bind or settings.raft_address,
        )
    return asyncio.run(_serve(settings))


def cmd_local(args: argparse.Namespace) -> int:
    n = args.nodes
    if n < 1:
        raise ConfigError("--nodes must be at least 1")
    raft = local_peers(nodes=n, base_port=args.raft_port)
    base = os.path.abspath(args.data_dir)
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if not env.get("SLIMSCHED_RAFT_PASSWORD"):
        # One secret per cluster, given to its nodes only (in their environment, never argv).
        env["SLIMSCHED_RAFT_PASSWORD"] = secrets.token_urlsafe(32)
    _check_local_ports(args.http_port, raft, n)
    _local_jobs_configuration(args, env)
    if args.kubeconfig:
        env.update(SLIMSCHED_KUBE_MODE="kubeconfig", KUBECONFIG=os.path.abspath(args.kubeconfig))
        print(f"dispatching to the cluster of {args.kubeconfig}", flush=True)
    elif env.get("SLIMSCHED_KUBE_MODE") in ("kubeconfig", "in-cluster") or (
        env.get("SLIMSCHED_KUBE_MODE") == "url" and env.get("SLIMSCHED_KUBE_URL")
    ):
        print(f"dispatching as SLIMSCHED_KUBE_MODE={env['SLIMSCHED_KUBE_MODE']} says", flush=True)
    else:
        (port,) = free_ports(1)
        emulator = subprocess.Popen([sys.executable, "-m", "slimsched.emulator", "--port", str(port)])
        procs.append(emulator)
        env.update(SLIMSCHED_KUBE_MODE="url", SLIMSCHED_KUBE_URL=f"http://127.0.0.1:{port}")
        print(
            f"no --kubeconfig given: dispatching to the embedded Kubernetes API emulator at "
            f"http://127.0.0.1:{port} (pid {emulator.pid})",
            flush=True,
        )
    for i in range(n):
        data_dir = os.path.join(base, f"node-{i}")
        cmd = serve_command(sys.executable, raft[i], raft, args.http_port + i, data_dir)
        if args.jobs_config:
            cmd += ["--jobs-config", args.jobs_config]
        procs.append(subprocess.Popen(cmd, env=_node_env(env, i)))
        print(
            f"node {i}: http://127.0.0.1:{args.http_port + i}  raft {raft[i]}  pid {procs[-1].pid}",
            flush=True,
        )

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    failed = [p.returncode for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 0 if stopping and not failed else 1


def _read_jobs_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --jobs-config {path}: {getattr(e, 'strerror', None) or e}") from e


def _local_jobs_configuration(args: argparse.Namespace, env: dict[str, str]) -> None:
    """The job configuration ``local`` runs, as ``serve`` reads it: ``--jobs-config``, else
    SLIMSCHED_JOBS_CONFIGURATION, SlimFaas__JobsConfiguration or SLIMSCHED_JOBS_CONFIGURATION_FILE
    from the environment, else the demo. Parsed once here, so a bad one is one line, not N."""
    if args.jobs_config:
        text: str | None = _read_jobs_file(args.jobs_config)
        source = args.jobs_config
    else:
        text = Settings.from_env(env).jobs_configuration
        source = next((v for v in _JOBS_VARS if env.get(v)), "")
    if text is None:
        env["SLIMSCHED_JOBS_CONFIGURATION"] = DEMO_JOBS_CONFIGURATION
        print(
            "no --jobs-config nor SlimFaas__JobsConfiguration given: using the demo configuration "
            "(job 'fibonacci', Public)",
            flush=True,
        )
        return
    jobs = jobconfig.parse_jobs_configuration(text)
    print(f"job configuration from {source}: jobs {', '.join(sorted(jobs.configurations))}", flush=True)


_JOBS_VARS = (
    "SLIMSCHED_JOBS_CONFIGURATION",
    "SlimFaas__JobsConfiguration",
    "SLIMSCHED_JOBS_CONFIGURATION_FILE",
)


def _node_env(env: dict[str, str], index: int) -> dict[str, str]:
    """Node ``index``'s environment: a backup directory set for the cluster (SLIMSCHED_BACKUP_DIR
    or SlimFaas's SlimData__BackupDirectory) becomes one subdirectory per node, as each pod of the
    StatefulSet has its own volume."""
    backup = env.get("SLIMSCHED_BACKUP_DIR") or env.get("SlimData__BackupDirectory")
    if not backup:
        return env
    return {**env, "SLIMSCHED_BACKUP_DIR": os.path.join(os.path.abspath(backup), f"node-{index}")}


def _check_local_ports(http_port: int, raft: Sequence[str], nodes: int) -> None:
    """One clear line for a port in use (rather than a node's traceback after the others started)."""
    wanted = [(http_port + i, f"HTTP port of node {i} (--http-port)") for i in range(nodes)]
    wanted += [(int(a.rsplit(":", 1)[1]), f"Raft port of node {i} (--raft-port)") for i, a in enumerate(raft)]
    for port, what in wanted:
        if not 1 <= port <= 65535:
            raise ConfigError(f"{what} would be {port}, outside 1-65535")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as e:
                raise ConfigError(
                    f"port {port}, the {what}, is not free on 127.0.0.1 ({e.strerror}): "
                    "choose other ports or stop what holds it"
                ) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimsched",
        description="A replicated cron and job scheduler for Kubernetes: 'serve' runs one node, "
        "'local' a whole cluster on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one node (settings from SLIMSCHED_* variables and flags)")
    serve.add_argument(
        "--raft-address",
        help="this node's Raft address host:port (default: SLIMSCHED_RAFT_ADDRESS, else derived from "
        "SLIMSCHED_POD_NAME and the Raft service, else 127.0.0.1:SLIMSCHED_RAFT_PORT)",
    )
    serve.add_argument(
        "--raft-bind", help="host:port the Raft port listens on (default: the pod IP, else all interfaces)"
    )
    serve.add_argument(
        "--peers",
        help="comma-separated Raft addresses of all nodes, self dropped (default: SLIMSCHED_PEERS, "
        "else derived from SLIMSCHED_REPLICAS)",
    )
    serve.add_argument("--http-host", help="HTTP listen address (default: SLIMSCHED_HTTP_HOST, else 0.0.0.0)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default: SLIMSCHED_HTTP_PORT, else 5000)")
    serve.add_argument("--data-dir", help="Raft data directory (default: SLIMSCHED_DATA_DIR, else data)")
    serve.add_argument(
        "--jobs-config",
        help="a file holding the SlimFaas-format job configuration (default: SLIMSCHED_JOBS_CONFIGURATION, "
        "SlimFaas__JobsConfiguration or SLIMSCHED_JOBS_CONFIGURATION_FILE, else only Default)",
    )
    serve.set_defaults(func=cmd_serve)

    local = sub.add_parser(
        "local",
        help="run an N-node cluster on 127.0.0.1",
        description="Run an N-node cluster on 127.0.0.1, each node a 'slimsched serve' process. The "
        "nodes read the same environment as 'serve' (SlimFaas__JobsConfiguration, SLIMSCHED_*, "
        "SlimData__BackupDirectory: one subdirectory per node); the flags below win over it.",
    )
    local.add_argument("--nodes", type=int, default=3, help="how many nodes (default: %(default)s)")
    local.add_argument(
        "--data-dir", default="data/local", help="Raft data, one subdirectory per node (default: %(default)s)"
    )
    local.add_argument(
        "--jobs-config",
        help="a file holding the SlimFaas-format job configuration (default: SLIMSCHED_JOBS_CONFIGURATION, "
        "SlimFaas__JobsConfiguration or SLIMSCHED_JOBS_CONFIGURATION_FILE, else a demo)",
    )
    local.add_argument(
        "--kubeconfig",
        help="dispatch to this cluster (default: SLIMSCHED_KUBE_MODE if set, else the embedded API emulator)",
    )
    local.add_argument(
        "--http-port", type=int, default=5000, help="HTTP port of node 0, then +1 each (default: %(default)s)"
    )
    local.add_argument(
        "--raft-port", type=int, default=3262, help="Raft port of node 0, then +1 each (default: %(default)s)"
    )
    local.set_defaults(func=cmd_local)

    sub.add_parser(
        "chaos",
        add_help=False,
        help="fault-injection run of a local cluster with an invariant checker (slimsched chaos --help)",
    )

    # The client: get, trigger, logs, pause, resume, backfill (slimsched/client.py).
    client.add_subcommands(sub, os.environ.get("SLIMSCHED_SERVER", client.DEFAULT_SERVER))

    backup = sub.add_parser("backup", help="check or restore a schedule backup file (see backup/RUNBOOK.md)")
    backup_sub = backup.add_subparsers(dest="backup_command", required=True)
    verify = backup_sub.add_parser("verify", help="check a backup file's hashes and content")
    verify.add_argument("file")
    verify.set_defaults(func=cmd_backup_verify)
    restore = backup_sub.add_parser("restore", help="verify a backup, then load it into an empty cluster")
    restore.add_argument("file")
    restore.add_argument("--to", required=True, metavar="URL", help="any node's HTTP URL (http://host:5000)")
    restore.set_defaults(func=cmd_backup_restore)
    slimfaas = backup_sub.add_parser(
        "import-slimfaas",
        help="create the schedules of a SlimFaas schedule-jobs-backup.json in a cluster",
        description="Read a SlimFaas schedule backup "
        "(SlimData__BackupDirectory/schedule-jobs-backup.json) and create each of its schedules "
        "through POST /job-schedules/{job} of a running cluster. A schedule "
        "the job already has (same Schedule, Args, Image, DependsOn) is skipped.",
    )
    slimfaas.add_argument("file", help="the SlimFaas backup file")
    slimfaas.add_argument(
        "--server",
        default=os.environ.get("SLIMSCHED_SERVER", "http://127.0.0.1:5000"),
        metavar="URL",
        help="any node's HTTP URL (default: SLIMSCHED_SERVER, else %(default)s)",
    )
    slimfaas.add_argument(
        "--dry-run", action="store_true", help="print what would be created and send nothing (default: off)"
    )
    slimfaas.set_defaults(func=cmd_backup_import_slimfaas)
    overwrite = backup_sub.add_parser(
        "overwrite", help="make one node write its state over its backup even if that backup is newer"
    )
    overwrite.add_argument("--node", required=True, metavar="URL", help="that node's HTTP URL")
    overwrite.set_defaults(func=cmd_backup_overwrite)
    return parser


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from slimsched.backup import cli_verify

    return cli_verify(args.file, sys.stdout, sys.stderr)


def cmd_backup_overwrite(args: argparse.Namespace) -> int:
    from slimsched.backup import cli_overwrite

    return cli_overwrite(args.node, sys.stdout, sys.stderr)


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from slimsched.backup import cli_restore

    return cli_restore(args.file, args.to, sys.stdout, sys.stderr)


def cmd_backup_import_slimfaas(args: argparse.Namespace) -> int:
    from slimsched.slimfaas_backup import cli_import

    return cli_import(args.file, args.server, args.dry_run, sys.stdout, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["chaos"]:  # the chaos harness parses its own flags
        from slimsched.chaos import main as chaos_main

        return chaos_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(f"slimsched: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
