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
their own (:func:`ipsecd.dataplane.udp.natt_sockets`).  On that socket,
:func:`drop_init_requests` is put on while new requests are over their share of the
daemon's time (a flood): the kernel then drops IKE_SA_INIT requests there unread, as it
drops everything that reaches the IKE port while the daemon leaves it unread, and lets
the messages of established IKE SAs through.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct

from ipsecd.esp.udp_encap import NON_ESP_MARKER
from ipsecd.ike.constants import ExchangeType, HeaderFlag

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
UDP_HEADER_LEN = 8
_LD_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN: A = the packet's length
_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K: A > k ? jt : jf
_RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop)
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = the 32-bit word at offset k
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: A == k ? jt : jf
_LD_ABS_B = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = the octet at offset k
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: A & k ? jt : jf


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


def drop_init_requests(sock: socket.socket) -> None:
    """Have the kernel drop IKE_SA_INIT requests (SPIr 0, R flag clear: RFC 7296 §3.1)
    that reach ``sock``, the NAT-T port's IKE socket, until :func:`detach`; messages with
    a responder SPI (established or half-open IKE SAs) and answers to our own
    IKE_SA_INIT pass.  Datagrams too short to hold the marker and an IKE header are
    dropped too (a load past the end ends the program with 0).  Raises
    :class:`OSError` where the kernel refuses the filter.
    """
    ike = UDP_HEADER_LEN + len(NON_ESP_MARKER)  # the IKE header, from the UDP header on
    program = [
        (_LD_ABS_W, 0, 0, ike + 8),  # SPIr, first half
        (_JEQ_K, 0, 7, 0),  # not 0: keep
        (_LD_ABS_W, 0, 0, ike + 12),  # SPIr, second half
        (_JEQ_K, 0, 5, 0),
        (_LD_ABS_B, 0, 0, ike + 18),  # exchange type
        (_JEQ_K, 0, 3, ExchangeType.IKE_SA_INIT),
        (_LD_ABS_B, 0, 0, ike + 19),  # flags
        (_JSET_K, 1, 0, HeaderFlag.RESPONSE),  # an answer: keep
        (_RET_K, 0, 0, 0),  # a new IKE_SA_INIT request: drop
        (_RET_K, 0, 0, 0xFFFFFFFF),
    ]
    _attach(sock, SO_ATTACH_FILTER, program)


def detach(sock: socket.socket) -> None:
    """Remove ``sock``'s socket filter (:func:`drop_init_requests`); none is fine."""
    with contextlib.suppress(OSError):  # ENOENT: no filter attached
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
