"""TUN MTU from the ESP-in-UDP overhead (RFC 4303 §2, RFC 3948 §2.1).

An inner packet of size N leaves as outer IP + UDP(8) + SPI(4) + seq(4) + IV +
ciphertext(N + pad + 2, a multiple of the cipher block) + ICV.  The largest N
that still fits the path MTU is the TUN MTU, so the kernel fragments or sends
"packet too big" before we would have to.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    """The TUN MTU that fits every transform the proposals allow (worst case)."""
    sizes = [
        max_inner_size(encr.block_size, encr.iv_size, icv, outer_version, path_mtu)
        for p in proposals
        for encr in p.encryption
        for icv in ([encr.icv_size] if encr.aead else [i.icv_len for i in p.integrity])
    ]
    return max(MIN_MTU, min(sizes)) if sizes else path_mtu - 100
