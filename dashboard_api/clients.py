"""Who the client is, for the limiters: the peer address, or behind a trusted proxy the
address that proxy saw.

`X-Forwarded-For` is believed only when the peer is one of `api.trusted_proxies` (networks;
none by default: anyone can write that header). Then the entries are read from the right,
skipping trusted proxies, and the first other one is the client; an entry that is not an
address ends the walk at the last proxy (a proxy always appends what it saw, so this only
happens when the header is forged before the first proxy). IPv6 clients are keyed by their
/64, which is what one subscriber gets: counting single addresses in it would give an
attacker 2**64 fresh budgets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """Parse `trusted_proxies` entries ("10.0.0.0/8", "127.0.0.1", "::1"); ValueError if bad."""
    return tuple(ipaddress.ip_network(s.strip(), strict=False) for s in specs)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The limiter key of the client of a request whose TCP peer is `peer`."""
    address = peer or "unknown"
    if not trusted or not _trusted(address, trusted) or not forwarded_for:
        return _key(address)
    for entry in reversed([e.strip() for e in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            break
        address = entry
        if not _trusted(entry, trusted):
            break
    return _key(address)


def client_of(scope: Mapping[str, Any], trusted: Sequence[Network]) -> str:
    """`client_address` of an ASGI request scope."""
    peer = scope.get("client")
    forwarded = None
    if trusted:
        values = [
            v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"
        ]
        forwarded = ",".join(values) if values else None
    return client_address(peer[0] if peer else None, forwarded, trusted)
