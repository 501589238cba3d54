"""Peer discovery tables: ordinals, error messages, and the settings that use them.

Why: every node must compute the same membership from its own pod name, or Raft splits; and a
misconfiguration (wrong replica count, a pod name without an ordinal) must stop start-up with a
sentence an operator can act on, not a cluster that never elects a leader.
"""

from __future__ import annotations

import pytest

from slimsched.discovery import local_peers, statefulset_peers
from slimsched.errors import ConfigError
from slimsched.settings import Settings

DOMAIN = "slimsched-raft.ns.svc.cluster.local"


def _dns(set_name: str, i: int, port: int = 3262) -> str:
    return f"{set_name}-{i}.{DOMAIN}:{port}"


@pytest.mark.parametrize(
    ("pod_name", "replicas", "set_name", "ordinal"),
    [
        ("slimsched-0", 3, "slimsched", 0),
        ("slimsched-1", 3, "slimsched", 1),
        ("slimsched-2", 3, "slimsched", 2),
        ("slimsched-0", 1, "slimsched", 0),
        ("slimsched-10", 11, "slimsched", 10),
        ("web-1-0", 2, "web-1", 0),  # the set name may itself end in digits
        ("a-4", 5, "a", 4),
    ],
)
def test_statefulset_peers_from_ordinal(pod_name: str, replicas: int, set_name: str, ordinal: int) -> None:
    me, peers = statefulset_peers(
        pod_name=pod_name, replicas=replicas, service="slimsched-raft", namespace="ns", port=3262
    )
    assert peers == tuple(_dns(set_name, i) for i in range(replicas))
    assert me == _dns(set_name, ordinal)
    assert me in peers


def test_every_node_derives_the_same_membership() -> None:
    views = [
        statefulset_peers(pod_name=f"slimsched-{i}", replicas=3, service="s", namespace="n", port=7000)
        for i in range(3)
    ]
    assert len({peers for _, peers in views}) == 1
    assert [me for me, _ in views] == list(views[0][1])


def test_port_is_used() -> None:
    me, _ = statefulset_peers(
        pod_name="slimsched-0", replicas=1, service="slimsched-raft", namespace="ns", port=4000
    )
    assert me == _dns("slimsched", 0, 4000)


def test_address_for_forms_a_loopback_cluster_through_the_same_path() -> None:
    def address_for(i: int) -> str:
        return f"127.0.0.1:{4100 + i}"

    views = [
        statefulset_peers(
            pod_name=f"slimsched-{i}", replicas=3, service="", namespace="", port=0, address_for=address_for
        )
        for i in range(3)
    ]
    expected = ("127.0.0.1:4100", "127.0.0.1:4101", "127.0.0.1:4102")
    assert views == [(expected[i], expected) for i in range(3)]


@pytest.mark.parametrize(
    ("pod_name", "replicas", "message"),
    [
        ("slimsched", 3, "not a StatefulSet pod name"),
        ("slimsched-", 3, "not a StatefulSet pod name"),
        ("-0", 3, "not a StatefulSet pod name"),
        ("slimsched-x", 3, "not a StatefulSet pod name"),
        ("slimsched-01", 3, "not a StatefulSet pod name"),  # ordinals have no leading zeros
        ("slimsched--1", 3, "not a StatefulSet pod name"),
        ("Slimsched-0", 3, "not a StatefulSet pod name"),
        ("", 3, "not a StatefulSet pod name"),
        ("slimsched-3", 3, "ordinal 3 but SLIMSCHED_REPLICAS is 3"),
        ("slimsched-7", 3, "ordinals must be 0..2"),
        ("slimsched-0", 0, "SLIMSCHED_REPLICAS must be at least 1, got 0"),
        ("slimsched-0", -2, "SLIMSCHED_REPLICAS must be at least 1, got -2"),
    ],
)
def test_statefulset_peers_errors(pod_name: str, replicas: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        statefulset_peers(pod_name=pod_name, replicas=replicas, service="s", namespace="n", port=3262)


@pytest.mark.parametrize(
    ("service", "namespace", "port", "message"),
    [
        ("", "ns", 3262, "SLIMSCHED_RAFT_SERVICE"),
        ("s", "", 3262, "SLIMSCHED_NAMESPACE"),
        ("s", "ns", 0, "SLIMSCHED_RAFT_PORT must be a TCP port"),
        ("s", "ns", 65536, "SLIMSCHED_RAFT_PORT must be a TCP port"),
    ],
)
def test_statefulset_peers_rejects_unusable_dns_parts(
    service: str, namespace: str, port: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        statefulset_peers(pod_name="slimsched-0", replicas=3, service=service, namespace=namespace, port=port)


def test_address_for_must_give_distinct_addresses() -> None:
    with pytest.raises(ConfigError, match="not distinct"):
        statefulset_peers(
            pod_name="slimsched-0",
            replicas=2,
            service="s",
            namespace="n",
            port=1,
            address_for=lambda _i: "127.0.0.1:4000",
        )


@pytest.mark.parametrize(
    ("nodes", "host", "base_port", "expected"),
    [
        (1, "127.0.0.1", 3262, ("127.0.0.1:3262",)),
        (3, "127.0.0.1", 3262, ("127.0.0.1:3262", "127.0.0.1:3263", "127.0.0.1:3264")),
        (2, "10.0.0.5", 9000, ("10.0.0.5:9000", "10.0.0.5:9001")),
        (2, "127.0.0.1", 65534, ("127.0.0.1:65534", "127.0.0.1:65535")),
    ],
)
def test_local_peers(nodes: int, host: str, base_port: int, expected: tuple[str, ...]) -> None:
    assert local_peers(nodes=nodes, host=host, base_port=base_port) == expected


def test_local_peers_defaults() -> None:
    assert local_peers(nodes=2) == ("127.0.0.1:3262", "127.0.0.1:3263")


@pytest.mark.parametrize(
    ("nodes", "base_port", "message"),
    [
        (0, 3262, "--nodes must be at least 1, got 0"),
        (-1, 3262, "--nodes must be at least 1"),
        (3, 65534, "last port"),
        (1, 0, "base port must be a TCP port"),
    ],
)
def test_local_peers_errors(nodes: int, base_port: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        local_peers(nodes=nodes, base_port=base_port)


def test_settings_from_statefulset_env() -> None:
    s = Settings.from_env(
        {"SLIMSCHED_POD_NAME": "slimsched-1", "SLIMSCHED_REPLICAS": "3", "SLIMSCHED_NAMESPACE": "ns"}
    )
    assert s.raft_address == _dns("slimsched", 1)
    assert s.peers == (_dns("slimsched", 0), _dns("slimsched", 2))  # every node but this one
    assert s.namespace == "ns"


def test_settings_from_statefulset_env_binds_to_pod_ip() -> None:
    s = Settings.from_env(
        {
            "SLIMSCHED_POD_NAME": "slimsched-0",
            "SLIMSCHED_POD_IP": "10.1.2.3",
            "SLIMSCHED_REPLICAS": "2",
            "SLIMSCHED_NAMESPACE": "prod",
            "SLIMSCHED_RAFT_SERVICE": "raft",
            "SLIMSCHED_RAFT_PORT": "4000",
        }
    )
    assert s.raft_address == "slimsched-0.raft.prod.svc.cluster.local:4000"
    assert s.peers == ("slimsched-1.raft.prod.svc.cluster.local:4000",)
    assert s.raft_bind == "10.1.2.3:4000"


def test_settings_reject_an_ordinal_beyond_the_replicas() -> None:
    with pytest.raises(ConfigError, match="ordinal 3"):
        Settings.from_env(
            {"SLIMSCHED_POD_NAME": "slimsched-3", "SLIMSCHED_REPLICAS": "3", "SLIMSCHED_NAMESPACE": "ns"}
        )


def test_explicit_address_and_peers_bypass_discovery() -> None:
    s = Settings.from_env(
        {
            "SLIMSCHED_POD_NAME": "not-a-statefulset-pod",
            "SLIMSCHED_RAFT_ADDRESS": "node-a:3262",
            "SLIMSCHED_PEERS": "node-a:3262, node-b:3262,node-c:3262",
        }
    )
    assert s.raft_address == "node-a:3262"
    assert s.peers == ("node-b:3262", "node-c:3262")


def test_compaction_entries_reach_the_raft_configuration() -> None:
    from slimsched.raft import tuned_conf

    assert Settings.from_env({}).timings.log_compaction_min_entries == 20000
    s = Settings.from_env({"SLIMSCHED_RAFT_COMPACTION_ENTRIES": "40000"})
    assert tuned_conf(s.timings).logCompactionMinEntries == 40000
    for bad in ("ten", "99", "-1"):
        with pytest.raises(ConfigError, match="SLIMSCHED_RAFT_COMPACTION_ENTRIES"):
            Settings.from_env({"SLIMSCHED_RAFT_COMPACTION_ENTRIES": bad})


def test_the_test_command_level_defaults_to_this_release_and_is_checked() -> None:
    from slimsched.statemachine import COMMAND_LEVEL

    assert Settings.from_env({}).test_command_level == COMMAND_LEVEL
    assert Settings.from_env({"SLIMSCHED_TEST_COMMAND_LEVEL": "1"}).test_command_level == 1
    for bad in ("0", str(COMMAND_LEVEL + 1), "two"):
        with pytest.raises(ConfigError, match="SLIMSCHED_TEST_COMMAND_LEVEL"):
            Settings.from_env({"SLIMSCHED_TEST_COMMAND_LEVEL": bad})
