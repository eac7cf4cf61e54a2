"""Whether an address is this machine: where overnight may run without API keys."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost"; a Unix socket (None) is local too."""
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
