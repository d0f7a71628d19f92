"""Drop oversized UDP datagrams in the kernel: a classic BPF socket filter (socket(7)).

ipsecd drops IKE datagrams larger than ``gateway.max_ike_datagram`` before reading
anything in them (:mod:`ipsecd.ike.inbox`), but reading them at all costs a copy per
datagram: a flood of 64 KB datagrams to the IKE port cost the daemon a second of CPU per
15 s.  With this filter on the IKE port's socket the kernel drops them before they are
queued.  On a UDP socket the filter sees a datagram from its UDP header on, after IP
reassembly, so the program compares ``len`` with the payload limit plus 8 bytes.

Only for a socket without UDP GRO (the IKE port): a GRO receive glues many datagrams
together, and the filter would see their sum.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
UDP_HEADER_LEN = 8
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = the packet's length
_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K: A > k ? jt : jf
_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)


def drop_larger_than(sock: socket.socket, payload: int) -> None:
    """Have the kernel drop datagrams whose UDP payload exceeds ``payload`` bytes.

    Raises :class:`OSError` where the kernel refuses the filter.
    """
    program = [
        (_LD_LEN, 0, 0, 0),
        (_JGT_K, 0, 1, payload + UDP_HEADER_LEN),
        (_RET_K, 0, 0, 0),
        (_RET_K, 0, 0, 0xFFFFFFFF),
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it
