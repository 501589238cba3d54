"""Raft peer discovery: every node's address from facts a node knows about itself.

Why this exists: in Kubernetes a node is a StatefulSet pod, whose name (``slimsched-2``) carries
its ordinal, and whose stable DNS name under the headless Service is
``<pod>.<service>.<namespace>.svc.cluster.local``. Given the replica count, every node can compute
the full, identical peer list with no API call and no shared configuration, which is what Raft
needs (all nodes must agree on the membership). ``local_peers`` does the same for ``slimsched
local`` on one host.

Pure: no I/O, no DNS lookups. Names are resolved later by pysyncobj, which retries a peer that
does not resolve yet (a pod that is still starting), so it is not an error here. A cluster whose
DNS domain is not ``cluster.local`` sets ``SLIMSCHED_RAFT_ADDRESS``/``SLIMSCHED_PEERS``
explicitly instead.

Tests form a cluster on 127.0.0.1 through the same code path by passing ``address_for``, which
maps an ordinal to an address (for example ``lambda i: f"127.0.0.1:{4000 + i}"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from slimsched.errors import ConfigError

# A StatefulSet pod is named "<statefulset>-<ordinal>"; the ordinal never has leading zeros.
# The set name is matched greedily so that a set named "web-1" gives pod "web-1-0" -> ("web-1", 0).
_POD_NAME = re.compile(r"^(?P<set>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")


def statefulset_peers(
    *,
    pod_name: str,
    replicas: int,
    service: str,
    namespace: str,
    port: int,
    address_for: Callable[[int], str] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """Return (this node's Raft address, every node's address including this one's).

    The addresses are ``<set>-<i>.<service>.<namespace>.svc.cluster.local:<port>`` for ``i`` in
    ``range(replicas)``, in ordinal order, unless ``address_for`` maps ordinals to addresses.
    Raises ``ConfigError`` when the pod name has no ordinal, the ordinal is not below
    ``replicas``, or ``replicas``, ``port``, ``service`` or ``namespace`` is unusable.
    """
    if replicas < 1:
        raise ConfigError(f"SLIMSCHED_REPLICAS must be at least 1, got {replicas}")
    match = _POD_NAME.match(pod_name)
    if match is None:
        raise ConfigError(
            f"SLIMSCHED_POD_NAME {pod_name!r} is not a StatefulSet pod name "
            "(expected '<statefulset>-<ordinal>', e.g. 'slimsched-0')"
        )
    set_name, ordinal = match["set"], int(match["ordinal"])
    if ordinal >= replicas:
        raise ConfigError(
            f"pod {pod_name!r} has ordinal {ordinal} but SLIMSCHED_REPLICAS is {replicas}: "
            f"ordinals must be 0..{replicas - 1} (is SLIMSCHED_REPLICAS the StatefulSet's replicas?)"
        )
    if address_for is None:
        _check_port(port, "SLIMSCHED_RAFT_PORT")
        if not service:
            raise ConfigError("SLIMSCHED_RAFT_SERVICE must name the headless Service, got ''")
        if not namespace:
            raise ConfigError("SLIMSCHED_NAMESPACE must not be empty")
        domain = f"{service}.{namespace}.svc.cluster.local"

        def address_for(i: int) -> str:
            return f"{set_name}-{i}.{domain}:{port}"

    addresses = tuple(address_for(i) for i in range(replicas))
    if len(set(addresses)) != replicas:
        raise ConfigError(f"peer addresses are not distinct: {', '.join(addresses)}")
    return addresses[ordinal], addresses


def address_template(
    template: str, *, pod_name: str, service: str, namespace: str, port: int
) -> Callable[[int], str]:
    """``address_for`` from ``SLIMSCHED_PEER_ADDRESS_TEMPLATE``.

    The template may use ``{set}``, ``{ordinal}``, ``{service}``, ``{namespace}`` and ``{port}``,
    e.g. ``{set}-{ordinal}.{service}.{namespace}.svc.example.org:{port}`` for a cluster whose DNS
    domain is not ``cluster.local``, or ``127.0.0.1:{port}{ordinal}`` for a cluster on one host.
    """
    set_name = pod_name.rsplit("-", 1)[0]
    fields = {"set": set_name, "service": service, "namespace": namespace, "port": port}
    try:
        template.format(ordinal=0, **fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"SLIMSCHED_PEER_ADDRESS_TEMPLATE {template!r} is not usable: {e}") from e

    def address_for(i: int) -> str:
        return template.format(ordinal=i, **fields)

    return address_for


def local_peers(*, nodes: int, host: str = "127.0.0.1", base_port: int = 3262) -> tuple[str, ...]:
    """Return the Raft addresses of a ``nodes``-node cluster on one host: ports base_port, +1, ..."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    _check_port(base_port, "base port")
    _check_port(base_port + nodes - 1, f"last port (base {base_port} + {nodes - 1} nodes)")
    return tuple(f"{host}:{base_port + i}" for i in range(nodes))


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be a TCP port (1-65535), got {port}")
