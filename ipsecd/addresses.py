"""How an address and port are written in logs, errors and status: ``ADDR:PORT``.

``192.0.2.1:500`` for IPv4, ``[2001:db8::1]:500`` for IPv6 (RFC 3986 §3.2.2, the form
``ss``, strongSwan and the config's ``gateway.metrics`` use), never a Python tuple.
Every layer may import this module: it imports nothing of ipsecd.
"""

from __future__ import annotations

import ipaddress
from typing import Any

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def format_address(address: tuple[Any, int] | str | IpAddress, port: int | None = None) -> str:
    """``(host, port)`` or ``host, port`` -> ``host:port`` (``[host]:port`` for IPv6).

    ``host`` may be text or an :mod:`ipaddress` object; without a port, the host alone
    (unbracketed).  A socket address of more than two items (IPv6: flow info, scope)
    keeps its first two.
    """
    if isinstance(address, tuple):
        host, port = str(address[0]), int(address[1])
    else:
        host = str(address)
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
