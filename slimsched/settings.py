"""Node settings, built in one place from the environment (and CLI flags layered on top).

Only the entry point calls ``Settings.from_env``; everything else receives a ``Settings``. The
names in ``ENV_VARS`` are the complete list of variables the code reads, which the deployment
tests compare with what the StatefulSet sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from slimsched.crashpoints import Break, Point, parse_breaks, parse_crash_at
from slimsched.errors import ConfigError
from slimsched.statemachine import COMMAND_LEVEL

T = TypeVar("T")

ENV_VARS: frozenset[str] = frozenset(
    {
        "SLIMSCHED_HTTP_HOST",
        "SLIMSCHED_HTTP_PORT",
        "SLIMSCHED_RAFT_ADDRESS",
        "SLIMSCHED_RAFT_BIND",
        "SLIMSCHED_RAFT_PORT",
        "SLIMSCHED_PEERS",
        "SLIMSCHED_POD_NAME",
        "SLIMSCHED_POD_IP",
        "SLIMSCHED_REPLICAS",
        "SLIMSCHED_RAFT_SERVICE",
        "SLIMSCHED_PEER_ADDRESS_TEMPLATE",
        "SLIMSCHED_NAMESPACE",
        "SLIMSCHED_DATA_DIR",
        "SLIMSCHED_RAFT_PASSWORD",
        "SLIMSCHED_RAFT_NETWORK_PRIVATE",
        "SLIMSCHED_JOBS_CONFIGURATION",
        "SLIMSCHED_JOBS_CONFIGURATION_FILE",
        "SlimFaas__JobsConfiguration",
        "SLIMSCHED_BACKUP_DIR",
        "SlimData__BackupDirectory",
        "SLIMSCHED_BACKUP_INTERVAL_SECONDS",
        "SlimData__BackupIntervalSeconds",
        "SLIMSCHED_TRUSTED_CIDRS",
        "SLIMSCHED_TRUSTED_PROXIES",
        "SLIMSCHED_MAX_BODY_BYTES",
        "SLIMSCHED_HTTP_HEADER_TIMEOUT_SECONDS",
        "SLIMSCHED_HTTP_BODY_TIMEOUT_SECONDS",
        "SLIMSCHED_MAX_HTTP_CONNECTIONS",
        "SLIMSCHED_COMMIT_TIMEOUT_SECONDS",
        "SLIMSCHED_RAFT_COMPACTION_ENTRIES",
        "SLIMSCHED_KUBE_MODE",
        "SLIMSCHED_KUBE_URL",
        "SLIMSCHED_CRONJOB_REFRESH_SECONDS",
        "KUBECONFIG",
        "SLIMSCHED_LOG_LEVEL",
        "SLIMSCHED_STRICT",
        "SLIMSCHED_TEST_BREAK_FIRE_DEDUP",
        "SLIMSCHED_TEST_COMMAND_LEVEL",
        "SLIMSCHED_TEST_CRASH_AT",
        "SLIMSCHED_TEST_STOP_AT",
        "SLIMSCHED_TEST_STALL_ELECTED_SECONDS",
        "SLIMSCHED_TEST_BREAK",
    }
)


@dataclass(frozen=True)
class RaftTimings:
    """pysyncobj timings, tuned per DESIGN.md's measured facts."""

    raft_min_timeout: float = 0.4
    raft_max_timeout: float = 1.0
    leader_fallback_timeout: float = 2.5
    connection_retry_time: float = 1.0
    # A snapshot encodes the whole state in a thread sharing the GIL: the write p99 at 24
    # clients was 18-48 ms with 5,000 entries between snapshots, 15-19 ms with 20,000. Counted
    # in commands (raft.compaction_due), since a batch entry holds many.
    log_compaction_min_entries: int = 20000
    log_compaction_min_time: float = 300.0
    # Once writes stop, the log (up to ~0.8 KB a command in memory) is compacted without waiting
    # for either threshold: a restart then replays a short journal, and the next burst reuses the
    # log's memory. RSS does not drop (bench_memory): the freed entries share pymalloc arenas
    # with the state, and the journal file's pages stay mapped.
    idle_compaction_seconds: float = 30.0
    idle_compaction_entries: int = 1000


@dataclass(frozen=True)
class Settings:
    raft_address: str = "127.0.0.1:3262"
    peers: tuple[str, ...] = ()
    raft_bind: str | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 5000
    data_dir: str = "data"
    raft_password: str | None = None
    # Only trusted hosts can reach the Raft port: a node may then run without a password.
    raft_network_private: bool = False
    jobs_configuration: str | None = None
    backup_dir: str | None = None
    backup_interval_seconds: float = 60.0
    trusted_cidrs: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    namespace: str = "default"
    max_body_bytes: int = 1024 * 1024
    # A request's line and headers must arrive within this (from the connection, or its last
    # response); its body within the body timeout (plus 1 s per MiB announced). Slow clients
    # are closed, never kept (issue 16).
    http_header_timeout_seconds: float = 15.0
    http_body_timeout_seconds: float = 30.0
    # Open HTTP connections per node, within RLIMIT_NOFILE less what Raft and the rest keep.
    max_http_connections: int = 1000
    commit_timeout_seconds: float = 5.0
    kube_mode: str = "auto"
    kube_url: str | None = None
    cronjob_refresh_seconds: float = 30.0
    kubeconfig: str | None = None
    log_level: str = "INFO"
    # Strict mode: a request slimsched would adjust as SlimFaas does (a resource capped, an unknown
    # field ignored, a name lowercased) is refused with 400 instead of answered with a Warning.
    strict: bool = False
    # Test only (slimsched chaos proves its checker can fail): skip the FireTick duplicate check.
    test_break_fire_dedup: bool = False
    # Test only (a rolling upgrade without an old build): apply and announce as a node of the
    # release with this command level would; 1 is the release before ``hello`` and ``batch``,
    # 2 the release before ``restore_part``.
    test_command_level: int = COMMAND_LEVEL
    # Test only (slimsched.crashpoints): SIGKILL this node at a named point of the leader's
    # protocol, and leader rules turned off, so that tests reach exact states and prove each rule.
    test_crash_at: tuple[tuple[Point, int], ...] = ()
    test_stop_at: tuple[tuple[Point, int], ...] = ()
    test_stall_elected_seconds: float = 0.0
    test_breaks: frozenset[Break] = frozenset()
    timings: RaftTimings = field(default_factory=RaftTimings)

    @property
    def node_id(self) -> str:
        return self.raft_address

    def require_raft_security(self) -> None:
        """Refuse to run Raft without a password unless the network was declared private.

        pysyncobj unpickles every frame it receives: without a password, whoever reaches the Raft
        port runs code in the node (issue 16). With one, every frame is authenticated (Fernet)
        before it is unpickled. Called by the entry point, not by ``from_env``: tests and tools
        that only read settings need no password.
        """
        if self.raft_password is None and not self.raft_network_private:
            raise ConfigError(
                "SLIMSCHED_RAFT_PASSWORD is not set: set it (the same secret on every node), or set "
                "SLIMSCHED_RAFT_NETWORK_PRIVATE=true if only trusted hosts can reach the Raft port "
                "(without a password, anyone who can reach it can run code in the node)"
            )

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        port = _int(e, "SLIMSCHED_RAFT_PORT", 3262)
        pod_name = e.get("SLIMSCHED_POD_NAME")
        raft_address = e.get("SLIMSCHED_RAFT_ADDRESS")
        peers = _list(e.get("SLIMSCHED_PEERS", ""))
        namespace = e.get("SLIMSCHED_NAMESPACE") or _pod_namespace() or "default"
        if raft_address is None and pod_name:
            from slimsched.discovery import address_template, statefulset_peers

            template = e.get("SLIMSCHED_PEER_ADDRESS_TEMPLATE")
            service = e.get("SLIMSCHED_RAFT_SERVICE", "slimsched-raft")
            raft_address, derived = statefulset_peers(
                pod_name=pod_name,
                replicas=_int(e, "SLIMSCHED_REPLICAS", 3),
                service=service,
                namespace=namespace,
                port=port,
                address_for=address_template(
                    template, pod_name=pod_name, service=service, namespace=namespace, port=port
                )
                if template
                else None,
            )
            peers = peers or derived
        raft_address = raft_address or f"127.0.0.1:{port}"
        bind = e.get("SLIMSCHED_RAFT_BIND")
        if bind is None and e.get("SLIMSCHED_POD_IP"):
            bind = f"{e['SLIMSCHED_POD_IP']}:{port}"
        return Settings(
            raft_address=raft_address,
            peers=tuple(p for p in peers if p != raft_address),
            raft_bind=bind,
            http_host=e.get("SLIMSCHED_HTTP_HOST", "0.0.0.0"),
            http_port=_int(e, "SLIMSCHED_HTTP_PORT", 5000),
            data_dir=e.get("SLIMSCHED_DATA_DIR", "data"),
            raft_password=e.get("SLIMSCHED_RAFT_PASSWORD") or None,
            raft_network_private=_bool(e, "SLIMSCHED_RAFT_NETWORK_PRIVATE"),
            jobs_configuration=_jobs_configuration(e),
            backup_dir=e.get("SLIMSCHED_BACKUP_DIR") or e.get("SlimData__BackupDirectory") or None,
            backup_interval_seconds=_float(
                e,
                "SLIMSCHED_BACKUP_INTERVAL_SECONDS",
                _float(e, "SlimData__BackupIntervalSeconds", 60.0),
            ),
            trusted_cidrs=_list(e.get("SLIMSCHED_TRUSTED_CIDRS", "")),
            trusted_proxies=_list(e.get("SLIMSCHED_TRUSTED_PROXIES", "")),
            namespace=namespace,
            max_body_bytes=_int(e, "SLIMSCHED_MAX_BODY_BYTES", 1024 * 1024),
            http_header_timeout_seconds=_positive(e, "SLIMSCHED_HTTP_HEADER_TIMEOUT_SECONDS", 15.0),
            http_body_timeout_seconds=_positive(e, "SLIMSCHED_HTTP_BODY_TIMEOUT_SECONDS", 30.0),
            max_http_connections=int(_positive(e, "SLIMSCHED_MAX_HTTP_CONNECTIONS", 1000)),
            commit_timeout_seconds=_float(e, "SLIMSCHED_COMMIT_TIMEOUT_SECONDS", 5.0),
            kube_mode=e.get("SLIMSCHED_KUBE_MODE", "auto"),
            kube_url=e.get("SLIMSCHED_KUBE_URL") or None,
            cronjob_refresh_seconds=_float(e, "SLIMSCHED_CRONJOB_REFRESH_SECONDS", 30.0),
            kubeconfig=e.get("KUBECONFIG") or None,
            log_level=e.get("SLIMSCHED_LOG_LEVEL", "INFO"),
            strict=_strict(e),
            test_break_fire_dedup=e.get("SLIMSCHED_TEST_BREAK_FIRE_DEDUP") == "1",
            test_command_level=_command_level(e),
            test_crash_at=_test_setting(parse_crash_at, e, "SLIMSCHED_TEST_CRASH_AT"),
            test_breaks=_test_setting(parse_breaks, e, "SLIMSCHED_TEST_BREAK"),
            test_stop_at=_test_setting(parse_crash_at, e, "SLIMSCHED_TEST_STOP_AT"),
            test_stall_elected_seconds=_float(e, "SLIMSCHED_TEST_STALL_ELECTED_SECONDS", 0.0),
            timings=RaftTimings(log_compaction_min_entries=_compaction_entries(e)),
        )


def _strict(e: Mapping[str, str]) -> bool:
    raw = e.get("SLIMSCHED_STRICT", "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ConfigError(f"SLIMSCHED_STRICT must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def _test_setting(parse: Callable[[str | None], T], e: Mapping[str, str], name: str) -> T:
    try:
        return parse(e.get(name))
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from err


def _command_level(e: Mapping[str, str]) -> int:
    level = _int(e, "SLIMSCHED_TEST_COMMAND_LEVEL", COMMAND_LEVEL)
    if not 1 <= level <= COMMAND_LEVEL:
        raise ConfigError(f"SLIMSCHED_TEST_COMMAND_LEVEL must be between 1 and {COMMAND_LEVEL}, got {level}")
    return level


def _compaction_entries(e: Mapping[str, str]) -> int:
    """Commands logged between snapshots (a batch entry counts each of its commands).

    More holds more of the log in memory (~0.8 KB a command) and snapshots the whole state less
    often (each snapshot's encoding shares the GIL: the write path's p99 tail)."""
    entries = _int(e, "SLIMSCHED_RAFT_COMPACTION_ENTRIES", RaftTimings.log_compaction_min_entries)
    if entries < 100:
        raise ConfigError(f"SLIMSCHED_RAFT_COMPACTION_ENTRIES must be at least 100, got {entries}")
    return entries


def _jobs_configuration(e: Mapping[str, str]) -> str | None:
    inline = e.get("SLIMSCHED_JOBS_CONFIGURATION") or e.get("SlimFaas__JobsConfiguration")
    if inline:
        return inline
    path = e.get("SLIMSCHED_JOBS_CONFIGURATION_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"cannot read SLIMSCHED_JOBS_CONFIGURATION_FILE {path}: {err}") from err


def _pod_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in raw.split(",") if x.strip())


def _bool(e: Mapping[str, str], name: str) -> bool:
    raw = e.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {e[name]!r}")


def _int(e: Mapping[str, str], name: str, default: int) -> int:
    raw = e.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from err


def _positive(e: Mapping[str, str], name: str, default: float) -> float:
    value = _float(e, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value:g}")
    return value


def _float(e: Mapping[str, str], name: str, default: float) -> float:
    raw = e.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from err
