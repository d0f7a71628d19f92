"""End to end with manual (static) SAs: two ipsecd daemons, real traffic, hostile input.

Topology: hostA — gwA ══ 192.0.2.0/24 ══ gwB — hostB, built fresh per test.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from tests.lab.daemons import REPO, start_manual_pair
from tests.lab.topology import HOST_A_IP, HOST_B_IP, Topology, run

# Sends hostile datagrams to a UDP endpoint from inside a namespace, from port 4500 of
# src_ip.  A raw socket writes the UDP header itself (checksum 0: none, RFC 768): the
# daemon in that namespace holds port 4500 without SO_REUSEADDR, so it cannot be shared.
_HOSTILE_PY = r"""
import os, socket, struct, sys, json
dst = (sys.argv[1], int(sys.argv[2]))
packets = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.bind((sys.argv[3], 0))
for p in packets:
    s.sendto(struct.pack("!HHHH", 4500, dst[1], 8 + len(p), 0) + p, (dst[0], 0))
"""


def _send_from(topo: Topology, ns: str, src_ip: str, dst: tuple[str, int], packets: list[bytes]):
    import json

    subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _HOSTILE_PY, dst[0], str(dst[1]), src_ip],
        input=json.dumps([p.hex() for p in packets]).encode(),
        check=True,
        timeout=30,
    )


@pytest.mark.parametrize("algorithm", ["aes128gcm16", "aes256-sha256"])
def test_manual_tunnel_carries_ping_and_tcp(topology: Topology, algorithm: str) -> None:
    gw_a, gw_b = start_manual_pair(topology, algorithm)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10), gw_a.log_text()
    stats = topology.ping(topology.host_a, HOST_B_IP, count=20)
    assert stats.loss == 0.0
    result = topology.tcp_transfer(topology.host_b, topology.host_a, HOST_A_IP, 50 * 1024 * 1024)
    assert result.ok, result
    status = gw_a.peer_status()
    assert status["state"] == "manual" and status["up"]
    (child,) = status["children"]
    # hostA's ACKs are few: it receives merged super-segments (one ACK per GSO packet).
    assert child["packets_in"] > 30000 and child["packets_out"] > 100
    assert not any(child["drops"].values()), child["drops"]
    # The transfer took the offloaded path: gwB read TCP super-segments from its TUN and
    # sent ESP with UDP GSO; gwA received with UDP GRO and wrote merged GSO packets.
    data_b, data_a = gw_b.status()["dataplane"], gw_a.status()["dataplane"]
    assert data_b["tun_super_segments_read"] > 0 and data_b["udp_gso_sends"] > 0, data_b
    assert data_a["udp_gro_receives"] > 0 and data_a["tun_gso_writes"] > 0, data_a
    assert data_a["tun_write_errors"] == data_b["tun_read_errors"] == 0
    assert data_a["bulk_path"] == data_b["bulk_path"] == "loaded"  # numpy after the drop
    assert gw_b.peer_status()["children"][0]["spi_in"] == "00001001"


def test_internet_link_shows_only_esp_in_udp(topology: Topology) -> None:
    start_manual_pair(topology)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)
    (ns, iface), _ = topology.internet_ends
    cap = topology.start_capture(ns, iface)
    topology.ping(topology.host_a, HOST_B_IP, count=10)
    topology.tcp_transfer(topology.host_a, topology.host_b, HOST_B_IP, 2 * 1024 * 1024)
    packets = cap.stop()
    assert len(packets) > 20
    inner = [bytes(map(int, ip.split("."))) for ip in (HOST_A_IP, HOST_B_IP)]
    for p in packets:
        assert (p.proto, p.sport, p.dport) == (17, 4500, 4500), p
        assert {p.src, p.dst} == {"192.0.2.1", "192.0.2.2"}, p
        assert struct.unpack("!I", p.payload[:4])[0] in (0x1001, 0x2002)
        # The inner addresses never appear in the clear (the payload is ciphertext).
        assert not any(addr + other in p.payload for addr in inner for other in inner)


def test_hostile_datagrams_are_counted_and_forwarding_continues(topology: Topology) -> None:
    gw_a, gw_b = start_manual_pair(topology)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)
    # Record a genuine ESP packet from gwB to gwA to replay it later.
    (ns, iface), _ = topology.internet_ends
    cap = topology.start_capture(ns, iface, "udp and src host 192.0.2.2")
    topology.ping(topology.host_a, HOST_B_IP, count=3)
    genuine = [p.payload for p in cap.stop()]
    assert genuine
    hostile = (
        [
            b"",  # empty
            b"\x01",  # one byte, not a keepalive
            b"\x00\x00\x20\x02",  # truncated header
            genuine[0][:20],  # truncated ESP
            os.urandom(200),  # random
            struct.pack("!II", 0xBADBAD, 7) + os.urandom(100),  # unknown SPI
            genuine[0],  # replay
            # Forged: fresh sequence numbers (they pass the replay check) with the old ICV,
            # and with a flipped bit in the ciphertext.
            genuine[0][:4] + struct.pack("!I", 5000) + genuine[0][8:],
            genuine[0][:4]
            + struct.pack("!I", 5001)
            + genuine[0][8:30]
            + bytes([genuine[0][30] ^ 1])
            + genuine[0][31:],
        ]
        + [os.urandom(n) for n in range(8, 64, 7)]
    )
    _send_from(topology, topology.gw_b, "192.0.2.2", ("192.0.2.1", 4500), hostile)
    stats = topology.ping(topology.host_a, HOST_B_IP, count=10)
    assert stats.loss == 0.0
    status = gw_a.status()
    assert gw_a.proc.poll() is None
    drops = status["peers"][0]["children"][0]["drops"]
    assert drops.get("replay", 0) >= 1
    assert drops.get("bad_icv", 0) >= 2
    assert status["drops"].get("unknown_spi", 0) >= 1
    assert status["drops"].get("too_short", 0) >= 2


def test_sigterm_removes_tun_and_routes(topology: Topology) -> None:
    gw_a, gw_b = start_manual_pair(topology)
    links = run(topology.gw_a, "ip", "-o", "link", "show").stdout
    assert "ipseca" in links
    assert "10.2.0.0/24 dev ipseca" in run(topology.gw_a, "ip", "route").stdout
    assert gw_a.stop() == 0
    assert "ipseca" not in run(topology.gw_a, "ip", "-o", "link", "show").stdout
    assert "10.2.0.0/24" not in run(topology.gw_a, "ip", "route").stdout
    assert not gw_a.socket.exists()


def test_broken_config_never_starts(topology: Topology, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  tun: ipsecx\n  listen: [192.0.2.1]\n  tunn: 1\npeers: []\n")
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            topology.gw_a,
            sys.executable,
            "-m",
            "ipsecd.cli.ipsecd",
            "run",
            "--config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 2
    assert f"{bad}:4: gateway.tunn" in proc.stderr
    assert "ipsecx" not in run(topology.gw_a, "ip", "-o", "link", "show").stdout
