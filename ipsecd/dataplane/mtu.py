"""TUN MTU from the ESP-in-UDP (or AH) overhead (RFC 4303 §2, RFC 3948 §2.1, RFC 4302 §2).

An inner packet of size N leaves as outer IP + UDP(8) + SPI(4) + seq(4) + IV +
ciphertext(N + pad + 2, a multiple of the cipher block) + ICV.  The largest N
that still fits the path MTU is the TUN MTU, so the kernel fragments or sends
"packet too big" before we would have to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ipsecd.ah.header import ah_length
from ipsecd.crypto.proposals import Proposal

UDP_HEADER = 8
ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header
IP_HEADER = {4: 20, 6: 40}
MIN_MTU = 576


def max_inner_size(
    block_size: int, iv_size: int, icv_size: int, outer_version: int, path_mtu: int = 1500
) -> int:
    """Largest inner packet that fits ``path_mtu`` after ESP-in-UDP encapsulation."""
    room = path_mtu - IP_HEADER[outer_version] - UDP_HEADER - ESP_HEADER - iv_size - icv_size
    block = max(block_size, 4)
    return (room // block) * block - ESP_TRAILER


def tun_mtu(proposals: Iterable[Proposal], outer_version: int, path_mtu: int = 1500) -> int:
    """The TUN MTU that fits every transform the proposals allow (worst case: ESP in UDP
    and tunnel mode; AH proposals in tunnel mode)."""
    proposals = list(proposals)
    sizes = [
        max_inner_size(encr.block_size, encr.iv_size, icv, outer_version, path_mtu)
        for p in proposals
        for encr in p.encryption
        for icv in ([encr.icv_size] if encr.aead else [i.icv_len for i in p.integrity])
    ]
    sizes += [
        ah_max_inner(i.icv_len, outer_version, path_mtu)
        for p in proposals
        if p.protocol == "ah"
        for i in p.integrity
    ]
    return max(MIN_MTU, min(sizes)) if sizes else path_mtu - 100


def ah_max_inner(icv_len: int, outer_version: int, path_mtu: int = 1500) -> int:
    """Largest inner packet that fits ``path_mtu`` in tunnel-mode AH (RFC 4302 §2)."""
    return path_mtu - IP_HEADER[outer_version] - ah_length(icv_len, outer_version)


def largest_fitting(overhead: Callable[[int], int], room: int) -> int:
    """The largest ``n`` with ``n + overhead(n) <= room`` (ESP pads, so the overhead
    depends on ``n`` by less than one cipher block)."""
    n = max(0, room - overhead(room))
    while n > 0 and n + overhead(n) > room:
        n -= 1
    while (n + 1) + overhead(n + 1) <= room:
        n += 1
    return n


def sa_max_inner(
    overhead: Callable[[int], int],
    outer_version: int,
    *,
    transport: bool,
    udp: bool,
    path_mtu: int = 1500,
) -> int:
    """The largest packet from TUN one SA carries within ``path_mtu`` (per outer family).

    ``overhead(n)``: what the SA adds to ``n`` bytes it protects.  Tunnel mode adds an
    outer IP header around the whole packet; transport mode protects what follows the
    packet's own (option-less) header; ``udp`` adds RFC 3948's UDP header.
    """
    room = path_mtu - (UDP_HEADER if udp else 0) - IP_HEADER[outer_version]
    # Tunnel: the inner packet is what is protected.  Transport: the payload is, and the
    # packet's own header is the outer one: the same room, plus that header again.
    protected = largest_fitting(overhead, room)
    return protected + (IP_HEADER[outer_version] if transport else 0)
