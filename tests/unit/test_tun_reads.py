"""TunDevice.read_batch on a socket pair standing in for /dev/net/tun (no root needed):
what a TUN reader with offloads gets comes out as packets and super-segments."""

from __future__ import annotations

import os
import socket

from ipsecd.dataplane.offload import ZERO_VNET_HDR, TcpSuperSegment, split_super_segment
from ipsecd.dataplane.tun import TunDevice
from tests.unit.test_offload import as_super_segment, tcp_ip


def test_super_segments_and_packets_come_out_of_one_batch() -> None:
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun = TunDevice.on_fd(ours.detach(), offload=True)
    try:
        header, raw = as_super_segment(tcp_ip(4, os.urandom(1386 * 5 + 9)), 1386)
        plain = tcp_ip(4, b"x" * 600, seq=5)
        kernel.send(header + raw)
        kernel.send(ZERO_VNET_HDR + plain)
        kernel.send(header + raw)
        reads = tun.read_batch(8)
        assert [type(r) for r in reads] == [TcpSuperSegment, bytes, TcpSuperSegment]
        expected = split_super_segment(header, raw)
        for read in (reads[0], reads[2]):
            assert isinstance(read, TcpSuperSegment)
            assert read.packets() == expected
        assert reads[1] == plain
        assert tun.super_segments == 2 and tun.read_errors == 0
    finally:
        kernel.close()
        os.close(tun.fd)
