"""strongSwan ↔ strongSwan over the namespace topology: proves the harness end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.strongswan import (
    Charon,
    StrongSwan,
    capture_ike_sa_init,
    capture_ike_sa_init_exchange,
    start_pair,
)
from tests.lab.topology import GW_A_WAN_IP, GW_B_WAN_IP, HOST_A_IP, HOST_B_IP, Topology

pytestmark = pytest.mark.strongswan

IKE_SA_INIT = 34  # exchange type, RFC 7296 §3.1


def test_tunnel_up_ping_and_tcp(topology: Topology, strongswan: StrongSwan) -> None:
    a, b = start_pair(
        topology,
        strongswan,
        ike_proposals="aes256gcm16-prfsha256-x25519",
        esp_proposals="aes128gcm16",
    )
    timing = a.initiate()
    assert timing.wall_seconds < 5
    child_a = a.wait_for_child_sa()
    child_b = b.wait_for_child_sa()
    assert child_a["encr-alg"] == "AES_GCM_16" and child_a["encr-keysize"] == "128"
    assert child_a["spi-in"] == child_b["spi-out"] and child_a["spi-out"] == child_b["spi-in"]
    ike = a.list_sas()[0]
    assert ike["state"] == "ESTABLISHED"
    assert (ike["encr-alg"], ike["prf-alg"], ike["dh-group"]) == (
        "AES_GCM_16",
        "PRF_HMAC_SHA2_256",
        "CURVE_25519",
    )

    with topology.start_capture(topology.gw_b, "wan") as cap:
        stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
        result = topology.tcp_transfer(topology.host_a, topology.host_b, HOST_B_IP, 3_000_000)
        back = topology.tcp_transfer(topology.host_b, topology.host_a, HOST_A_IP, 1_000_000)
    assert stats.loss == 0.0, stats
    assert result.ok and back.ok, (result, back)
    # kernel-libipsec: every tunnelled packet is ESP in UDP/4500 between the gateways.
    pkts = cap.packets()
    assert len(pkts) > 100
    assert {(p.proto, p.sport, p.dport) for p in pkts} == {(17, 4500, 4500)}
    assert {(p.src, p.dst) for p in pkts} <= {
        (GW_A_WAN_IP, GW_B_WAN_IP),
        (GW_B_WAN_IP, GW_A_WAN_IP),
    }
    assert int(a.child_sas()[0]["packets-out"]) > 0


def test_terminate_removes_sas(topology: Topology, strongswan: StrongSwan) -> None:
    a, b = start_pair(topology, strongswan)
    a.initiate()
    assert topology.ping(topology.host_a, HOST_B_IP, count=2).received == 2
    a.terminate()
    assert a.list_sas() == []
    b_sas = b.list_sas()
    assert b_sas == [] or all(sa["state"] != "ESTABLISHED" for sa in b_sas)


def test_stop_kills_charon(topology: Topology, strongswan: StrongSwan) -> None:
    charon = Charon(topology, topology.gw_a, swan=strongswan).start()
    assert charon.cpu_seconds() >= 0
    assert strongswan.version.startswith(strongswan.label)
    # A root's mounts live in charon's own mount namespace: none is seen from here.
    assert str(strongswan.root or "/nonexistent") not in Path("/proc/self/mountinfo").read_text()
    charon.stop()
    assert charon.proc is not None and charon.proc.poll() is not None


def test_capture_ike_sa_init(topology: Topology, tmp_path: Path, strongswan: StrongSwan) -> None:
    out = tmp_path / "ike"
    request = capture_ike_sa_init(topology, out_dir=out, swan=strongswan)
    assert (out / "ike_sa_init_request.bin").read_bytes() == request
    # IKE header (RFC 7296 §3.1): SPIi, SPIr = 0, next payload SA (33), version 2.0,
    # exchange type IKE_SA_INIT, flags Initiator, message id 0, length = whole message.
    assert len(request) >= 28
    assert request[8:16] == bytes(8)
    assert request[16] == 33
    assert request[17] == 0x20
    assert request[18] == IKE_SA_INIT
    assert request[19] & 0x08
    assert int.from_bytes(request[20:24], "big") == 0
    assert int.from_bytes(request[24:28], "big") == len(request)


def test_capture_ike_sa_init_exchange_response(topology: Topology, strongswan: StrongSwan) -> None:
    request, response = capture_ike_sa_init_exchange(topology, swan=strongswan)
    assert response[:8] == request[:8]  # same SPIi
    assert response[8:16] != bytes(8)  # responder chose its SPI
    assert response[18] == IKE_SA_INIT and response[19] & 0x20  # Response flag
