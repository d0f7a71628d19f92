"""Drop oversized UDP datagrams in the kernel: a classic BPF socket filter (socket(7)).

ipsecd drops IKE datagrams larger than ``gateway.max_ike_datagram`` before reading
anything in them (:mod:`ipsecd.ike.inbox`), but reading them at all costs a copy per
datagram: a flood of 64 KB datagrams to the IKE port cost the daemon a second of CPU per
15 s.  With this filter on the IKE port's socket the kernel drops them before they are
queued.  On a UDP socket the filter sees a datagram from its UDP header on, after IP
reassembly, so the program compares ``len`` with the payload limit plus 8 bytes.

Only for a socket without UDP GRO (the IKE port): a GRO receive glues many datagrams
together, and the filter would see their sum.

:func:`steer_non_esp` is the other program here: a reuseport selector (socket(7),
``SO_ATTACH_REUSEPORT_CBPF``) that hands the NAT-T port's IKE datagrams to a socket of
their own (:func:`ipsecd.dataplane.udp.natt_sockets`).
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
UDP_HEADER_LEN = 8
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = the packet's length
_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K: A > k ? jt : jf
_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = the 32-bit word at offset k
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: A == k ? jt : jf


def _attach(sock: socket.socket, option: int, program: list[tuple[int, int, int, int]]) -> None:
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)  # the kernel copies it


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
    _attach(sock, SO_ATTACH_FILTER, program)


def steer_non_esp(sock: socket.socket) -> None:
    """In ``sock``'s SO_REUSEPORT group, datagrams that start with the non-ESP marker (four
    zero octets: IKE, RFC 3948 §2.2) go to the group's second socket, all others (ESP,
    whose SPI is never 0, and one-octet NAT-keepalives) to its first.

    The selector sees a datagram from its UDP payload on (the kernel pulls the UDP header
    first); a load past the end (a keepalive) ends the program with 0, the first socket.
    A UDP GRO run is sorted by its first datagram.  Raises :class:`OSError` where the
    kernel refuses it.
    """
    program = [
        (_LD_ABS_W, 0, 0, 0),
        (_JEQ_K, 0, 1, 0),
        (_RET_K, 0, 0, 1),
        (_RET_K, 0, 0, 0),
    ]
    _attach(sock, SO_ATTACH_REUSEPORT_CBPF, program)
