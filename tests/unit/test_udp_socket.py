"""UdpSocket and TunDevice batching on real file descriptors (loopback, a pipe; no root)."""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest

from ipsecd.dataplane import udp
from ipsecd.dataplane.offload import ZERO_VNET_HDR
from ipsecd.dataplane.sockfilter import detach, drop_init_requests
from ipsecd.dataplane.tun import TunDevice
from ipsecd.dataplane.udp import SMALL_RECEIVE, UdpSocket


@pytest.fixture
def pair():
    ours = UdpSocket("127.0.0.1", 0)
    ours.local = ours.sock.getsockname()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    yield ours, sender
    ours.close()
    sender.close()


def _wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2.0)[0]


def test_lone_small_datagram_is_a_whole_burst(pair) -> None:
    """A small first datagram ends the burst (no receive for EAGAIN); the rest comes next."""
    ours, sender = pair
    sender.sendto(b"a" * 84, ours.local)
    sender.sendto(b"b" * 84, ours.local)
    _wait_readable(ours.sock)
    first = ours.recv_batch()
    assert [bytes(d) for d, _ in first] == [b"a" * 84]
    assert first[0][1] == sender.getsockname()
    _wait_readable(ours.sock)
    assert [bytes(d) for d, _ in ours.recv_batch()] == [b"b" * 84]
    assert ours.recv_batch() == []


def test_large_datagrams_are_drained_in_one_burst(pair) -> None:
    ours, sender = pair
    sizes = [SMALL_RECEIVE, 1400, 1300, 60]
    for i, n in enumerate(sizes):
        sender.sendto(bytes([i]) * n, ours.local)
    _wait_readable(ours.sock)
    got = [bytes(d) for d, _ in ours.recv_batch()]
    assert got == [bytes([i]) * n for i, n in enumerate(sizes)]


def _tun_on(fd: int) -> TunDevice:
    """A TunDevice with virtio headers whose file descriptor is ``fd`` (no device)."""
    tun = TunDevice.__new__(TunDevice)
    tun.fd, tun.offload, tun.write_errors, tun.gso_writes = fd, True, 0, 0
    return tun


def test_single_packet_is_written_with_a_zero_virtio_header() -> None:
    r, w = os.pipe()
    try:
        tun = _tun_on(w)
        packet = bytes([0x45]) + bytes(83)
        tun.write_batch([packet])
        assert os.read(r, 4096) == bytes(ZERO_VNET_HDR) + packet
        assert tun.write_errors == 0 and tun.gso_writes == 0
    finally:
        os.close(r)
        os.close(w)


def test_single_packet_write_error_is_counted() -> None:
    r, w = os.pipe()
    os.close(r)  # EPIPE on write (SIGPIPE is ignored by Python)
    try:
        tun = _tun_on(w)
        tun.write_batch([bytes([0x45]) + bytes(83)])
        assert tun.write_errors == 1
    finally:
        os.close(w)


def test_only_a_gro_run_asks_for_the_bulk_path(pair, monkeypatch) -> None:
    """The bulk path (numpy) loads on the first GRO run, not on the first datagram: an IKE
    message on the NAT-T port must not pay for it (the first handshake after start)."""
    ours, sender = pair
    asked: list[int] = []
    monkeypatch.setattr(udp, "bulk", lambda: asked.append(1))  # "not there": None
    sender.sendto(b"a" * 84, ours.local)
    sender.sendto(b"b" * 1400, ours.local)
    sender.sendto(b"c" * 1400, ours.local)
    for _ in range(2):
        _wait_readable(ours.sock)
        ours.recv_batch()
    assert asked == []
    if not ours.gro:
        pytest.skip("no UDP_GRO on this kernel")
    segment = struct.pack("=H", 100)
    sender.sendmsg([b"d" * 300], [(socket.SOL_UDP, udp.UDP_SEGMENT, segment)], 0, ours.local)
    _wait_readable(ours.sock)
    got = ours.recv_batch()
    assert [bytes(d) for d, _ in got] == [b"d" * 100] * 3  # split: no bulk path
    assert asked == [1]


def _free_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def _drain(sock: UdpSocket) -> list[bytes]:
    got: list[bytes] = []
    while select.select([sock.sock], [], [], 0.2)[0]:
        got += [bytes(d) for d, _ in sock.recv_batch()]  # type: ignore[arg-type]
    return got


@pytest.mark.parametrize("offload", [True, False])
def test_the_natt_port_sorts_ike_from_esp_in_the_kernel(offload: bool) -> None:
    """natt_sockets: the non-ESP marker (IKE) to the second socket, ESP and keepalives to
    the first (RFC 3948 §2.2), so that an IKE flood never queues ahead of ESP."""
    port = _free_port()
    esp, ike = udp.natt_sockets("127.0.0.1", port, offload, None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert ike is not None
        sent = {
            "ike": [b"\x00\x00\x00\x00" + b"IKE header", b"\x00\x00\x00\x00"],
            "esp": [b"\x12\x34\x56\x78" + b"\x00" * 20, b"\xff", b"\x00\x00", b"\x00\x00\x00\x01"],
        }
        for datagram in (*sent["ike"], *sent["esp"]):
            sender.sendto(datagram, ("127.0.0.1", port))
        assert _drain(esp) == sent["esp"]
        assert _drain(ike) == sent["ike"]
        # Taken is taken: a second daemon (or anyone) is refused as with one socket.
        with pytest.raises(OSError, match=rf"^cannot bind UDP 127\.0\.0\.1:{port}: \[Errno 98\]"):
            udp.natt_sockets("127.0.0.1", port, offload, None)
    finally:
        sender.close()
        esp.close()
        if ike is not None:
            ike.close()


def _ike(spi_r: int, exchange: int, flags: int) -> bytes:
    """A non-ESP marker and an IKE header (RFC 7296 §3.1) with no payload."""
    return b"\x00" * 4 + struct.pack("!QQBBBBII", 7, spi_r, 0, 0x20, exchange, flags, 0, 28)


@pytest.mark.parametrize("offload", [True, False])
def test_under_a_flood_the_kernel_drops_only_new_requests_on_the_natt_port(offload: bool) -> None:
    """drop_init_requests on the NAT-T port's IKE socket (while new requests are over their
    share): IKE_SA_INIT requests are dropped unread; established IKE SAs' messages,
    answers to our own IKE_SA_INIT and ESP still arrive; after detach all arrive again."""
    port = _free_port()
    esp, ike = udp.natt_sockets("127.0.0.1", port, offload, None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert ike is not None
        drop_init_requests(ike.sock)
        request = _ike(0, 34, 0x08)
        kept = [
            _ike(0, 34, 0x20),  # an answer to our IKE_SA_INIT (COOKIE, INVALID_KE_PAYLOAD)
            _ike(0x1122, 35, 0x08),  # IKE_AUTH
            _ike(1, 37, 0x28),  # INFORMATIONAL answer, SPIr's low half only
            _ike(1 << 40, 34, 0x08),  # SPIr's high half only
        ]
        short = b"\x00" * 4 + b"IKE"
        for datagram in (request, *kept, short):
            sender.sendto(datagram, ("127.0.0.1", port))
        sender.sendto(b"\x12\x34\x56\x78" + b"\x00" * 20, ("127.0.0.1", port))
        assert _drain(ike) == kept
        assert _drain(esp) == [b"\x12\x34\x56\x78" + b"\x00" * 20]
        detach(ike.sock)
        detach(ike.sock)  # none attached: fine
        sender.sendto(request, ("127.0.0.1", port))
        assert _drain(ike) == [request]
    finally:
        sender.close()
        esp.close()
        if ike is not None:
            ike.close()


def test_the_natt_port_never_joins_a_group_another_socket_holds() -> None:
    port = _free_port()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", port))
    try:
        with pytest.raises(OSError, match=r"\[Errno 98\]"):
            udp.natt_sockets("127.0.0.1", port, True, None)
    finally:
        other.close()


def test_the_natt_port_is_one_socket_where_the_kernel_refuses_the_selector(monkeypatch) -> None:
    def refuse(sock: socket.socket) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(udp, "steer_non_esp", refuse)
    port = _free_port()
    esp, ike = udp.natt_sockets("127.0.0.1", port, True, None)
    try:
        assert ike is None
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"\x00\x00\x00\x00IKE", ("127.0.0.1", port))
        sender.close()
        assert _drain(esp) == [b"\x00\x00\x00\x00IKE"]  # all on the one socket
    finally:
        esp.close()
