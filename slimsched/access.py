"""Who counts as an in-cluster caller, for Private jobs. Pure: addresses in, verdict out.

Only the connection's own peer address is trusted. ``X-Forwarded-For`` is read only when that
peer is a configured trusted proxy, and then its right-most address not itself a trusted proxy
is the caller. Addresses are compared exactly, as parsed IPs, never as substrings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from slimsched.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(values: Iterable[str], what: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ConfigError(f"{what}: {v!r} is not an IP address or CIDR") from e
    return tuple(out)


def _address(raw: str | None) -> Address | None:
    if not raw:
        return None
    try:
        addr = ipaddress.ip_address(raw.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True)
class AccessPolicy:
    trusted: tuple[Network, ...]
    proxies: tuple[Network, ...]

    @staticmethod
    def build(trusted_cidrs: Iterable[str], trusted_proxies: Iterable[str]) -> AccessPolicy:
        return AccessPolicy(
            trusted=_networks(trusted_cidrs, "SLIMSCHED_TRUSTED_CIDRS"),
            proxies=_networks(trusted_proxies, "SLIMSCHED_TRUSTED_PROXIES"),
        )

    def caller(self, peer: str | None, forwarded_for: str | None) -> Address | None:
        """The address the request comes from, honouring X-Forwarded-For only via a trusted proxy."""
        addr = _address(peer)
        if addr is None or not forwarded_for or not self._in(addr, self.proxies):
            return addr
        for hop in reversed(forwarded_for.split(",")):
            hop_addr = _address(hop)
            if hop_addr is None:
                return None
            if not self._in(hop_addr, self.proxies):
                return hop_addr
        return addr

    def in_cluster(self, caller: Address | None, pod_ips: Collection[str] = ()) -> bool:
        if caller is None:
            return False
        if caller.is_loopback:
            return True
        return self._in(caller, self.trusted) or str(caller) in pod_ips

    @staticmethod
    def _in(addr: Address, nets: tuple[Network, ...]) -> bool:
        return any(addr.version == n.version and addr in n for n in nets)
