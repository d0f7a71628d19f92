"""The data plane beyond tunnel-mode ESP in UDP: transport mode, AH, ESP/AH directly over
IP, the RFC 3948 checksum fix-up, and packets that do not fit (ICMP "too big", fragments).

Two gateways' SAs are built by the daemon's own factory (``core.child_sa``) from mirrored
``ChildSaParams`` and joined by an in-memory "network": UDP datagrams go to
``from_udp``, raw IP packets to ``from_raw`` (IPv6 ones without their header and rebuilt,
as the raw socket and the shell do).  Raw packets are also checked with scapy's
independent ESP/AH.
"""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.daemon.core import child_sa
from ipsecd.dataplane.icmp import fragment_ipv4, too_big
from ipsecd.dataplane.processor import TOO_BIG, PacketProcessor
from ipsecd.dataplane.rawip import reconstruct_ipv6
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.counters import DropReason
from ipsecd.esp.transport import internet_checksum
from ipsecd.ike.events import ChildSaParams
from ipsecd.selectors import TrafficSelector
from tests.lab.packets import TCP, ipv4, ipv6

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")
from scapy.layers.inet import IP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402

GCM = ENCRYPTION["aes128gcm16"]
SHA256 = INTEGRITY["sha256"]
OUTER = {4: ("192.0.2.1", "192.0.2.2"), 6: ("2001:db8::1", "2001:db8::2")}
SITES = {4: ("10.1.0.0/24", "10.2.0.0/24"), 6: ("fd00:1::/64", "fd00:2::/64")}
HOSTS = {4: ("10.1.0.2", "10.2.0.2"), 6: ("fd00:1::2", "fd00:2::2")}

# (mode, protocol, udp): every valid combination (AH never travels in UDP).
KINDS = [
    ("tunnel", "esp", True),
    ("tunnel", "esp", False),
    ("transport", "esp", True),
    ("transport", "esp", False),
    ("tunnel", "ah", False),
    ("transport", "ah", False),
]


def tcp_segment(src: bytes, dst: bytes, payload: bytes = b"hello over transport mode") -> bytes:
    """A TCP segment with a valid checksum over the pseudo header of ``src`` -> ``dst``."""
    header = bytearray(struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 5 << 4, 0x18, 65535, 0, 0))
    segment = header + payload
    pseudo = src + dst + (struct.pack("!BBH", 0, TCP, len(segment)) if len(src) == 4 else
                          struct.pack("!I3xB", len(segment), TCP))  # fmt: skip
    struct.pack_into("!H", segment, 16, internet_checksum(pseudo + segment))
    return bytes(segment)


def checksum_ok(packet: bytes) -> bool:
    if packet[0] >> 4 == 4:
        src, dst, body = packet[12:16], packet[16:20], packet[20:]
        pseudo = src + dst + struct.pack("!BBH", 0, packet[9], len(body))
    else:
        src, dst, body = packet[8:24], packet[24:40], packet[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(body), packet[6])
    return internet_checksum(pseudo + body) == 0


def packet_for(version: int, mode: str, size: int = 0, df: bool = True) -> bytes:
    """What TUN would deliver: between the hosts (tunnel) or the gateways (transport)."""
    src, dst = (HOSTS if mode == "tunnel" else OUTER)[version]
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    segment = tcp_segment(s, d, os.urandom(size) if size else b"hello over transport mode")
    if version == 4:
        packet = bytearray(ipv4(src, dst, segment, proto=TCP, ident=0x1234))
        if df:
            packet[6] = 0x40
            packet[10:12] = b"\0\0"
            struct.pack_into("!H", packet, 10, internet_checksum(bytes(packet[:20])))
        return bytes(packet)
    return ipv6(src, dst, segment, next_header=TCP)


def params(
    version: int, mode: str, protocol: str, udp: bool, side: str, keys: dict[str, bytes]
) -> ChildSaParams:
    a, b = OUTER[version]
    if mode == "transport":
        ts_a, ts_b = f"{a}/{32 if version == 4 else 128}", f"{b}/{32 if version == 4 else 128}"
    else:
        ts_a, ts_b = SITES[version]
    local_ts, remote_ts = (ts_a, ts_b) if side == "a" else (ts_b, ts_a)
    ah = protocol == "ah"
    k_in, k_out = (keys["ba"], keys["ab"]) if side == "a" else (keys["ab"], keys["ba"])
    return ChildSaParams(
        spi_in=0x2002 if side == "a" else 0x1001,
        spi_out=0x1001 if side == "a" else 0x2002,
        encr=None if ah else GCM,
        integ=SHA256 if ah else None,
        esn=False,
        encr_key_in=b"" if ah else k_in[:20],
        integ_key_in=k_in if ah else b"",
        encr_key_out=b"" if ah else k_out[:20],
        integ_key_out=k_out if ah else b"",
        local_ts=(TrafficSelector.from_prefix(local_ts),),
        remote_ts=(TrafficSelector.from_prefix(remote_ts),),
        remote=(b if side == "a" else a, 4500),
        mode=mode,
        protocol=protocol,
        encap=udp,
    )


class Gateways:
    """Gateway A and B, each a SaDatabase + PacketProcessor with one CHILD_SA."""

    def __init__(self, version: int, mode: str, protocol: str, udp: bool) -> None:
        self.keys = keys = {"ab": os.urandom(32), "ba": os.urandom(32)}
        self.version = version
        a, b = OUTER[version]
        self.sa_a = child_sa("b", params(version, mode, protocol, udp, "a", keys), (a, 4500), 0)
        self.sa_b = child_sa("a", params(version, mode, protocol, udp, "b", keys), (b, 4500), 0)
        self.a, self.b = PacketProcessor(SaDatabase()), PacketProcessor(SaDatabase())
        self.a.sad.install(self.sa_a)
        self.b.sad.install(self.sa_b)

    def send(self, packets: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """A's TUN -> the wire -> B's TUN; returns (what B wrote to TUN, the wire packets)."""
        udp = self.a.from_tun(packets)
        raw = self.a.raw_to_send()
        wire: list[bytes] = []
        to_tun: list[bytes] = []
        for datagrams in udp.values():
            wire += datagrams
            sender = (OUTER[self.version][0], 4500)
            to_tun += self.b.from_udp([(d, sender) for d in datagrams])[0]
        for (_local_ip, protocol, _remote_ip), packets_ in raw.items():
            wire += packets_
            to_tun += self.b.from_raw([as_received(p) for p in packets_], protocol)
        return to_tun, wire


def as_received(packet: bytes) -> bytes:
    """What the shell hands ``from_raw``: IPv4 as the socket gives it; IPv6 rebuilt from
    the payload, the addresses and the hop limit (the socket strips the header)."""
    if packet[0] >> 4 == 4:
        return packet
    return reconstruct_ipv6(packet[40:], packet[8:24], packet[24:40], packet[6], packet[7])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("mode", "protocol", "udp"), KINDS)
def test_every_kind_crosses(version: int, mode: str, protocol: str, udp: bool) -> None:
    gw = Gateways(version, mode, protocol, udp)
    packet = packet_for(version, mode)
    (got,), wire = gw.send([packet])
    if not udp:
        # Whole IP packets between the gateways, protocol 50 or 51.
        (outer,) = wire
        proto = outer[9] if version == 4 else outer[6]
        assert proto == (51 if protocol == "ah" else 50)
        a, b = OUTER[version]
        assert IP(outer).src == a if version == 4 else IPv6(outer).src == a
        assert (IP(outer).dst if version == 4 else IPv6(outer).dst) == b
    if mode == "tunnel" or not udp:
        assert got == packet  # the inner packet, or the host's own header kept on the wire
    else:
        # Transport over UDP: the header is rebuilt from the addresses (RFC 3948 §3.1.2).
        header = 20 if version == 4 else 40
        assert got[header:] == packet[header:] and checksum_ok(got)
        assert got[12:20] == packet[12:20] if version == 4 else got[8:40] == packet[8:40]
    assert gw.sa_b.inbound.packets == 1 and gw.sa_a.outbound.packets == 1


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("protocol", ["esp", "ah"])
def test_scapy_opens_what_goes_directly_over_ip(version: int, mode: str, protocol: str) -> None:
    """The whole IP packets for the raw sockets are ESP/AH as scapy knows them."""
    gw = Gateways(version, mode, protocol, udp=False)
    packet = packet_for(version, mode)
    _, (wire,) = gw.send([packet])
    key = gw.keys["ab"]  # A's outbound keys
    if protocol == "ah":
        sa = scapy_ipsec.SecurityAssociation(
            scapy_ipsec.AH, spi=0x1001, auth_algo="SHA2-256-128", auth_key=key
        )
    else:
        sa = scapy_ipsec.SecurityAssociation(
            scapy_ipsec.ESP, spi=0x1001, crypt_algo="AES-GCM", crypt_key=key[:20]
        )
    if mode == "tunnel":
        a, b = OUTER[version]
        sa.tunnel_header = IP(src=a, dst=b) if version == 4 else IPv6(src=a, dst=b)
    opened = sa.decrypt(IP(wire) if version == 4 else IPv6(wire))
    if mode == "tunnel":
        assert bytes(opened) == packet
    else:
        header = 20 if version == 4 else 40
        assert bytes(opened)[header:] == packet[header:]


def test_ipv4_identification_is_ours_before_the_icv() -> None:
    """AH covers the Identification; a raw socket fills in a 0 after the fact."""
    gw = Gateways(4, "transport", "ah", udp=False)
    packet = bytearray(packet_for(4, "transport"))
    packet[4:6] = b"\0\0"
    packet[10:12] = b"\0\0"
    struct.pack_into("!H", packet, 10, internet_checksum(bytes(packet[:20])))
    (got,), (wire,) = gw.send([bytes(packet)])
    assert wire[4:6] != b"\0\0"
    assert got[20:] == bytes(packet)[20:]
    _, (tunnel_wire,) = Gateways(4, "tunnel", "ah", udp=False).send([packet_for(4, "tunnel")])
    assert tunnel_wire[4:6] != b"\0\0" and tunnel_wire[6] & 0x40  # our ID, DF set


def test_transport_over_udp_behind_a_nat_fixes_the_checksum() -> None:
    """The sender's TCP checksum covers its private address; the rebuilt packet carries
    the NAT's, and the checksum is made right again (RFC 3948 §3.1.2)."""
    gw = Gateways(4, "transport", "esp", udp=True)
    packet = packet_for(4, "transport")
    datagrams = next(iter(gw.a.from_tun([packet]).values()))
    nat = ("203.0.113.9", 40501)
    gw.sa_b.remote, gw.sa_b.nat = nat, True  # as IKE installs it after detecting the NAT
    (got,) = gw.b.from_udp([(d, nat) for d in datagrams])[0]
    assert got[12:16] == ipaddress.ip_address("203.0.113.9").packed
    assert checksum_ok(got) and got[20:36] == packet[20:36] and got[38:] == packet[38:]
    assert not checksum_ok(got[:12] + packet[12:16] + got[16:])  # the sender's was different
    # Without the NAT flag, a packet from an address the SA does not name is refused.
    gw.sa_b.nat = False
    gw.sa_b.remote = ("192.0.2.1", 4500)
    again = gw.a.from_tun([packet])
    (datagrams,) = again.values()
    assert gw.b.from_udp([(d, ("192.0.2.1", 4500)) for d in datagrams])[0] != []


def test_transport_packet_outside_the_selectors_is_dropped() -> None:
    gw = Gateways(4, "transport", "esp", udp=False)
    gw.a.from_tun([packet_for(4, "transport")])
    ((wire,),) = gw.a.raw_to_send().values()
    forged = bytearray(wire)
    forged[12:16] = ipaddress.ip_address("192.0.2.66").packed  # not covered by the ICV
    assert gw.b.from_raw([bytes(forged)], 50) == []
    assert gw.sa_b.inbound.drops[DropReason.OUTSIDE_SELECTORS] == 1


def test_ah_in_udp_and_unknown_spis_are_dropped() -> None:
    gw = Gateways(4, "tunnel", "ah", udp=False)
    _, (wire,) = gw.send([packet_for(4, "tunnel")])
    ah = wire[20:]
    assert gw.b.from_udp([(ah, ("192.0.2.1", 4500))])[0] == []
    assert gw.b.drops[DropReason.UNKNOWN_SPI] == 1
    assert gw.b.from_raw([wire], 50) == []  # an AH packet on the ESP socket
    assert gw.b.drops[DropReason.FRAGMENT] + gw.b.drops[DropReason.MALFORMED] == 1


# ---- packets that do not fit ------------------------------------------------------------


@pytest.mark.parametrize(("mode", "protocol", "udp"), KINDS)
def test_ipv6_too_big_gets_packet_too_big(mode: str, protocol: str, udp: bool) -> None:
    gw = Gateways(6, mode, protocol, udp)
    limit = gw.sa_a.max_inner
    assert 1280 <= limit < 1500
    big = packet_for(6, mode, size=limit)
    assert len(big) > limit
    delivered, wire = gw.send([big])
    assert delivered == wire == []
    (icmp,) = gw.a.packets_to_tun()
    assert gw.a.drops[TOO_BIG] == 1
    parsed = IPv6(icmp)
    assert parsed.nh == 58 and parsed.src == IPv6(big).dst and parsed.dst == IPv6(big).src
    assert parsed.payload.type == 2 and parsed.payload.mtu == limit
    assert bytes(parsed.payload)[8:48] == big[:40]  # the invoking packet's header
    # scapy recomputes the checksum: ours must be the same.
    assert IPv6(bytes(parsed)).payload.cksum == parsed.payload.cksum


@pytest.mark.parametrize(("mode", "protocol", "udp"), KINDS)
def test_ipv4_df_too_big_gets_fragmentation_needed(mode: str, protocol: str, udp: bool) -> None:
    gw = Gateways(4, mode, protocol, udp)
    limit = gw.sa_a.max_inner
    big = packet_for(4, mode, size=limit, df=True)
    assert gw.send([big]) == ([], [])
    (icmp,) = gw.a.packets_to_tun()
    parsed = IP(icmp)
    assert (parsed.proto, parsed.payload.type, parsed.payload.code) == (1, 3, 4)
    assert parsed.payload.nexthopmtu == limit
    assert parsed.src == IP(big).dst and parsed.dst == IP(big).src
    assert internet_checksum(icmp[20:]) == 0 and internet_checksum(icmp[:20]) == 0


@pytest.mark.parametrize("udp", [True, False])
def test_ipv4_without_df_is_fragmented_before_tunnelling(udp: bool) -> None:
    gw = Gateways(4, "tunnel", "esp", udp)
    big = packet_for(4, "tunnel", size=3000, df=False)
    delivered, wire = gw.send([big])
    assert gw.a.packets_to_tun() == []
    assert len(delivered) == 3 and all(len(p) <= gw.sa_a.max_inner for p in delivered)
    assert all(len(w) <= 1500 - (28 if udp else 0) for w in wire)
    offset = lambda p: struct.unpack("!H", p[6:8])[0] & 0x1FFF  # noqa: E731
    payload = b"".join(p[20:] for p in sorted(delivered, key=offset))
    assert payload == big[20:]


def test_small_ipv6_always_passes_even_when_the_tunnel_is_smaller() -> None:
    gw = Gateways(6, "tunnel", "esp", True)
    gw.sa_a.max_inner = 1200  # a path below the IPv6 minimum MTU
    packet = packet_for(6, "tunnel", size=1200)
    assert len(packet) <= 1280
    assert len(gw.send([packet])[0]) == 1


def test_too_big_messages_are_rate_limited() -> None:
    clock = [0.0]
    sad = SaDatabase()
    gw = Gateways(6, "tunnel", "esp", True)
    sad.install(gw.sa_a)
    proc = PacketProcessor(sad, clock=lambda: clock[0])
    big = packet_for(6, "tunnel", size=gw.sa_a.max_inner)
    proc.from_tun([big] * 50)
    assert len(proc.packets_to_tun()) == 20  # the burst
    clock[0] = 0.1
    proc.from_tun([big] * 50)
    assert len(proc.packets_to_tun()) == 10  # 100 per second
    assert proc.drops["icmp_rate_limited"] == 70


def test_no_error_about_an_error() -> None:
    error = too_big(packet_for(6, "tunnel"), 1300)
    assert error is not None and too_big(error, 1300) is None
    v4_error = too_big(packet_for(4, "tunnel"), 1300)
    assert v4_error is not None and too_big(v4_error, 1300) is None


def test_fragments_keep_only_copied_options() -> None:
    options = bytes([0x94, 4, 0, 0]) + bytes([7, 7, 4]) + bytes(4) + b"\x00"  # RA (copied), RR
    header = bytearray(ipv4("10.1.0.2", "10.2.0.2", proto=17))
    header[0] = 0x40 | (20 + len(options)) // 4
    body = os.urandom(100)
    packet = bytearray(bytes(header[:20]) + options + body)
    struct.pack_into("!H", packet, 2, len(packet))
    first, second = fragment_ipv4(bytes(packet), 100)
    assert first[20:32] == options
    assert (second[0] & 0x0F) * 4 == 24 and second[20:24] == bytes([0x94, 4, 0, 0])
    assert first[32:] + second[24:] == body
    assert struct.unpack("!H", first[6:8])[0] == 0x2000
    assert struct.unpack("!H", second[6:8])[0] == (100 - 32) // 8 * 8 // 8


def test_installed_sa_shape() -> None:
    gw = Gateways(4, "transport", "ah", udp=False)
    sa: InstalledChildSa = gw.sa_a
    assert (sa.mode, sa.protocol, sa.encap, sa.fast) == ("transport", "ah", False, False)
    assert sa.algorithm == "ah-sha256"
    assert sa.max_inner == 1500 - 28  # AH with HMAC-SHA-256-128 is 28 bytes over IPv4
    assert Gateways(4, "tunnel", "esp", True).sa_a.fast


@pytest.mark.parametrize("version", [4, 6])
def test_hostile_raw_input_never_raises(version: int) -> None:
    """Anyone can send protocol 50/51 to a gateway (an off-path spoofer included): every
    mangled packet is dropped and counted, none raises or reaches TUN."""
    import random

    rng = random.Random(version)
    for mode, protocol in (("tunnel", "ah"), ("transport", "ah"), ("transport", "esp")):
        gw = Gateways(version, mode, protocol, udp=False)
        _, (wire,) = gw.send([packet_for(version, mode)])
        number = 51 if protocol == "ah" else 50
        received = as_received(wire)
        for _ in range(400):
            mangled = bytearray(received)
            for _ in range(rng.randint(1, 4)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            cut = bytes(mangled[: rng.randint(0, len(mangled))]) if rng.random() < 0.3 else None
            for packet in (bytes(mangled), cut):
                if packet is not None:
                    assert gw.b.from_raw([packet], number) == [] or packet == received
        assert gw.b.from_raw([b""], number) == []
