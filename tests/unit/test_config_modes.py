"""Config of the CHILD_SA's mode and protocol, and of ``encap``: values and refusals.

The combinations that cannot work are refused with file:line and what to write
instead: AH in UDP (``encap: always``), AH with ESP proposals, ``ah_proposals``
for ESP, transport mode with subnet selectors, AH proposals with a cipher.
"""

from __future__ import annotations

import pytest

from ipsecd.config.effective import effective_yaml
from tests.unit.test_config_support import BASE, error, parse, write_secret_files

# Lines 1-9 as BASE; the esp section starts at line 10.
TRANSPORT = """\
gateway:
  listen: [192.0.2.1]
peers:
  - name: site-b
    remote_address: 192.0.2.2
    encap: auto
    local_ts: [192.0.2.1/32]
    remote_ts: [192.0.2.2/32]
    auth:
      psk_file: b.psk
    esp:
      mode: transport
      protocol: ah
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_secret_files(tmp_path)


def test_defaults_are_tunnel_esp_in_udp():
    peer = parse(BASE).peers[0]
    (child,) = peer.children
    assert (child.mode, child.protocol, peer.encap) == ("tunnel", "esp", "always")
    assert child.ah_proposals == ()
    assert child.child_proposals == child.esp_proposals == peer.esp_proposals
    assert [str(p) for p in child.esp_proposals] == ["aes256gcm16", "aes128-sha256"]


def test_transport_ah_host_to_host():
    peer = parse(TRANSPORT).peers[0]
    (child,) = peer.children
    assert (child.mode, child.protocol, peer.encap) == ("transport", "ah", "auto")
    assert peer.esp_proposals == child.esp_proposals == ()
    assert [str(p) for p in child.child_proposals] == ["sha256"]
    assert child.child_proposals[0].protocol == "ah"


def test_ah_proposals_are_read_in_strongswan_syntax():
    text = TRANSPORT + "      ah_proposals: [sha512-esn, sha256-sha384-modp2048]\n"
    (first, second) = parse(text).peers[0].children[0].ah_proposals
    assert [a.name for a in first.integrity] == ["sha512"] and first.esn == (True,)
    assert [a.name for a in second.integrity] == ["sha256", "sha384"]
    assert [k.name for k in second.ke] == ["modp2048"] and not second.encryption


def test_ipv6_transport_selectors_are_the_two_addresses():
    text = (
        TRANSPORT.replace("192.0.2.1/32", "2001:db8::1/128")
        .replace("192.0.2.2/32", "2001:db8::2/128")
        .replace("[192.0.2.1]", '["2001:db8::1"]')
        .replace("192.0.2.2", "2001:db8::2")
    )
    peer = parse(text).peers[0]
    assert str(peer.local_ts[0]) == "2001:db8::1/128"


def test_ah_in_udp_is_refused():
    text = TRANSPORT.replace("    encap: auto\n", "")
    assert str(error(text)) == (
        "t.yaml:12: peers[0].esp.protocol: peer 'site-b': AH cannot be carried in UDP"
        " (RFC 3948 encapsulates ESP only), and encap is 'always' (the default); set"
        " encap: auto on the peer: AH then travels directly over IP (protocol 51), and the"
        " CHILD_SA is refused when a NAT is detected"
    )
    written = TRANSPORT.replace("encap: auto", "encap: always")
    assert "and encap is 'always';" in str(error(written))


def test_ah_with_esp_proposals_is_refused():
    text = TRANSPORT + "      proposals: [aes128gcm16]\n"
    assert str(error(text)) == (
        "t.yaml:14: peers[0].esp.proposals: peer 'site-b' uses AH (protocol: ah), which has no"
        " encryption (RFC 4302): write its integrity algorithms as ah_proposals (e.g."
        " [sha256]) instead of proposals"
    )


def test_ah_proposal_with_a_cipher_is_refused():
    text = TRANSPORT + "      ah_proposals: [aes128-sha256]\n"
    assert str(error(text)) == (
        "t.yaml:14: peers[0].esp.ah_proposals[0]: 'aes128' in AH proposal 'aes128-sha256': AH"
        " protects integrity only and has no encryption (RFC 4302); name integrity algorithms"
        " only (e.g. sha256), or use ESP to encrypt"
    )


def test_ah_proposals_with_esp_are_refused():
    text = BASE + "    esp:\n      ah_proposals: [sha256]\n"
    assert str(error(text)) == (
        "t.yaml:11: peers[0].esp.ah_proposals: peer 'site-b': ah_proposals are for protocol:"
        " ah, but this CHILD_SA uses ESP (protocol: esp, the default); add protocol: ah or"
        " remove ah_proposals"
    )


def test_transport_with_subnet_selectors_is_refused():
    text = BASE + "    esp:\n      mode: transport\n"
    assert str(error(text)) == (
        "t.yaml:6: peers[0].local_ts[0]: peer 'site-b' uses transport mode (esp.mode:"
        " transport), which protects the gateways' own packets: local_ts must be this"
        " gateway's address 192.0.2.1 (write local_ts: [192.0.2.1/32]), not 10.1.0.0/24; use"
        " mode: tunnel for subnets and other hosts"
    )


def test_transport_with_another_host_as_remote_ts_is_refused():
    text = TRANSPORT.replace("remote_ts: [192.0.2.2/32]", "remote_ts: [192.0.2.2/32, 10.2.0.9]")
    assert "t.yaml:8: peers[0].remote_ts[1]:" in str(error(text))
    assert "remote_ts must be the peer's address 192.0.2.2 (write remote_ts: [192.0.2.2/32])" in (
        str(error(text))
    )


def test_mode_and_protocol_words_are_checked():
    assert "'tunel' is not valid; did you mean 'tunnel'?" in str(
        error(TRANSPORT.replace("mode: transport", "mode: tunel"))
    )
    assert "'auto-detect' is not valid" in str(
        error(TRANSPORT.replace("encap: auto", "encap: auto-detect"))
    )


@pytest.mark.parametrize("table", [253, 254, 255])
def test_kernel_routing_tables_are_refused(table: int):
    text = BASE.replace("  listen:", f"  route_table: {table}\n  listen:")
    assert "ipsecd needs a table of its own (e.g. 4500)" in str(error(text))


def _modes(peer):
    return [
        (c.name, c.mode, c.protocol, c.child_proposals, c.local_ts, c.remote_ts)
        for c in peer.children
    ]


def test_effective_config_reads_back_the_same(tmp_path):
    for text in (TRANSPORT, BASE + "    encap: auto\n    esp:\n      mode: tunnel\n"):
        config = parse(text)
        again = parse(effective_yaml(config))
        (a, b) = (again.peers[0], config.peers[0])
        assert a.encap == b.encap and _modes(a) == _modes(b)
        assert (again.gateway.fwmark, again.gateway.route_table) == (0x4500, 4500)


MIXED = """\
gateway:
  listen: [192.0.2.1]
peers:
  - name: site-b
    remote_address: 192.0.2.2
    encap: auto
    auth:
      psk_file: b.psk
    children:
      - name: lan
        local_ts: [10.1.0.0/24]
        remote_ts: [10.2.0.0/24]
      - name: hosts
        local_ts: [192.0.2.1/32]
        remote_ts: [192.0.2.2/32]
        esp:
          mode: transport
          protocol: ah
"""


def test_children_of_one_peer_differ_in_mode_and_protocol():
    peer = parse(MIXED).peers[0]
    lan, hosts = peer.children
    assert (lan.mode, lan.protocol, hosts.mode, hosts.protocol) == (
        "tunnel",
        "esp",
        "transport",
        "ah",
    )
    assert [str(p) for p in hosts.child_proposals] == ["sha256"]
    assert peer.esp_proposals == lan.esp_proposals
    again = parse(effective_yaml(parse(MIXED))).peers[0]
    assert _modes(again) == _modes(peer)


def test_a_childs_mode_error_names_the_child():
    text = MIXED.replace("remote_ts: [192.0.2.2/32]", "remote_ts: [10.2.9.0/24]")
    assert str(error(text)).startswith(
        "t.yaml:15: peers[0].children[1].remote_ts[0]: peer 'site-b' child 'hosts' uses"
        " transport mode (esp.mode: transport)"
    )
    ah_in_udp = MIXED.replace("    encap: auto\n", "")
    assert "peer 'site-b' child 'hosts': AH cannot be carried in UDP" in str(error(ah_in_udp))


def test_transport_selectors_of_a_peer_known_by_name_are_single_hosts():
    text = MIXED.replace("remote_address: 192.0.2.2", "remote_address: gw-b.example.net")
    assert parse(text).peers[0].children[1].mode == "transport"
    wide = text.replace("remote_ts: [192.0.2.2/32]", "remote_ts: [192.0.2.0/24]")
    assert "each of remote_ts must be one host (the peer's address)" in str(error(wide))
