"""charon's real IKE_SA_INIT messages through our codec and our responder (RFC 7296 §1.2).

Two charons negotiate on the namespace topology while udp/500 is captured; the
request and response must parse with :func:`ipsecd.ike.message.parse_message`, their
SA payloads must decode (``proposal_codec``) to the proposal charon was configured
with, and an :class:`~ipsecd.ike.manager.IkeManager` configured to match must answer
charon's request with a response that parses and selects that proposal.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsecd.config import parse_config
from ipsecd.crypto.proposals import parse_proposal
from ipsecd.ike import payloads as pl
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import parse_message
from ipsecd.ike.proposal_codec import to_proposal
from tests.lab.strongswan import StrongSwan, capture_ike_sa_init_exchange
from tests.lab.topology import GW_B_WAN_IP, Topology

pytestmark = pytest.mark.strongswan

IKE_SA_INIT = 34
N_NAT_DETECTION_SOURCE_IP = 16388
N_NAT_DETECTION_DESTINATION_IP = 16389
PROPOSALS = [
    ("aes256gcm16-prfsha256-x25519", 31),
    ("aes128-sha256-ecp256", 19),
    ("aes256-sha384-modp2048", 14),
]


def _same_algorithms(got, want) -> None:
    assert got.encryption == want.encryption, (str(got), str(want))
    assert got.integrity == want.integrity, (str(got), str(want))
    assert got.prf == want.prf, (str(got), str(want))
    assert got.ke == want.ke, (str(got), str(want))


def _check_init(data: bytes, response: bool, configured: str, group: int) -> None:
    msg = parse_message(data)
    assert msg.exchange_type == IKE_SA_INIT and msg.message_id == 0
    assert msg.response is response and msg.initiator is not response
    assert msg.unsupported_critical is None
    (sa,) = msg.find_all(pl.SecurityAssociation)
    (proposal,) = sa.proposals  # charon offers exactly one; the answer is one (§2.7)
    assert proposal.protocol_id == 1 and proposal.spi == b""
    _same_algorithms(to_proposal(proposal, "ike"), parse_proposal(configured, "ike"))
    (ke,) = msg.find_all(pl.KeyExchange)
    assert ke.group == group
    (nonce,) = msg.find_all(pl.Nonce)
    assert 16 <= len(nonce.data) <= 256
    assert len(nonce.data) == 32  # charon's default nonce size
    kinds = [n.notify_type for n in msg.notifies()]
    assert N_NAT_DETECTION_SOURCE_IP in kinds and N_NAT_DETECTION_DESTINATION_IP in kinds
    for n in msg.notifies():
        if n.notify_type in (N_NAT_DETECTION_SOURCE_IP, N_NAT_DETECTION_DESTINATION_IP):
            assert len(n.data) == 20  # SHA-1 (RFC 7296 §2.23)


def _responder(tmp_path: Path, topo: Topology, ike: str) -> IkeManager:
    psk = tmp_path / "b.psk"
    psk.write_text("ipsecd-capture-test-psk\n")
    os.chmod(psk, 0o600)
    text = f"""\
gateway:
  listen: [{GW_B_WAN_IP}]
peers:
  - name: a
    remote_address: {topo.gw_a_wan_ip}
    start: respond
    local_ts: [10.2.0.0/24]
    remote_ts: [10.1.0.0/24]
    ike:
      proposals: [{ike}]
    esp:
      proposals: [aes128gcm16]
    auth:
      psk_file: {psk}
"""
    return IkeManager(parse_config(text, tmp_path / "b.yaml"), 0.0)


@pytest.mark.parametrize(("ike", "group"), PROPOSALS)
def test_charon_ike_sa_init_through_codec_and_responder(
    topology: Topology, tmp_path: Path, ike: str, group: int, strongswan: StrongSwan
) -> None:
    request, response = capture_ike_sa_init_exchange(
        topology,
        ike_proposals=ike,
        esp_proposals="aes128gcm16",
        out_dir=tmp_path / "cap",
        swan=strongswan,
    )
    _check_init(request, False, ike, group)
    _check_init(response, True, ike, group)
    assert response[:8] == request[:8] and response[8:16] != bytes(8)

    # Our responder answers charon's request and selects charon's proposal.
    manager = _responder(tmp_path, topology, ike)
    manager.receive_datagram(request, (GW_B_WAN_IP, 500), (topology.gw_a_wan_ip, 500), 1.0)
    (answer,) = manager.datagrams_to_send()
    assert answer.remote == (topology.gw_a_wan_ip, 500) and not answer.marker
    assert manager.counters.get("internal_error") is None, manager.counters
    _check_init(answer.data, True, ike, group)
    ours = parse_message(answer.data)
    assert ours.spi_i == int.from_bytes(request[:8], "big") and ours.spi_r != 0
    assert manager.next_event() is None  # no failure, no half-installed CHILD_SA
    (entry,) = manager.status()
    assert entry["state"] == "half-open" and entry["children"] == []
    _same_algorithms(parse_proposal(entry["algorithm"], "ike"), parse_proposal(ike, "ike"))
