"""Several CHILD_SAs per peer and dynamic peer addresses in the config (issue 15).

``children:`` lists a peer's CHILD_SAs; the peer's own local_ts/remote_ts/esp/start
are the shorthand for one child named after the peer.  ``remote_address`` may be a DNS
name or ``any``.  Each refusal names its file and line.
"""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.config import ConfigError
from ipsecd.config.effective import effective_yaml
from ipsecd.config.schema import Identity
from ipsecd.selectors import TrafficSelector
from tests.unit.test_config_errors import MANUAL
from tests.unit.test_config_support import BASE, error, parse, write_secret_files

# Line numbers matter: the tests assert them.
TWO_CHILDREN = """\
gateway:
  listen: [192.0.2.1]
peers:
  - name: site-b
    remote_address: 192.0.2.2
    children:
      - name: lan
        local_ts: [10.1.0.0/24]
        remote_ts: [10.2.0.0/24]
      - name: dmz
        local_ts: [10.1.1.0/24]
        remote_ts: [10.2.1.0/24]
        start: trap
        esp:
          proposals: [aes128gcm16]
          rekey_time: 20m
    auth:
      psk_file: b.psk
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_secret_files(tmp_path)


def ts(prefix: str) -> TrafficSelector:
    return TrafficSelector.from_prefix(prefix)


def test_the_shorthand_is_one_child_named_after_the_peer():
    (peer,) = parse(BASE).peers
    (child,) = peer.children
    assert child.name == "site-b" and child.start == "initiate"
    assert child.local_ts == (ts("10.1.0.0/24"),) and child.remote_ts == (ts("10.2.0.0/24"),)
    assert [str(p) for p in child.esp_proposals] == ["aes256gcm16", "aes128-sha256"]
    assert child.lifetime.rekey_time == 3600
    # The peer-wide views the rest of the daemon reads (routes, MTU, start).
    assert peer.remote_ts == child.remote_ts and peer.start == "initiate"


def test_children_each_with_their_own_selectors_proposals_lifetimes_start():
    (peer,) = parse(TWO_CHILDREN).peers
    lan, dmz = peer.children
    assert (lan.name, lan.start, dmz.name, dmz.start) == ("lan", "initiate", "dmz", "trap")
    assert [str(p) for p in dmz.esp_proposals] == ["aes128gcm16"]
    assert dmz.lifetime.rekey_time == 1200 and lan.lifetime.rekey_time == 3600
    assert peer.remote_ts == (ts("10.2.0.0/24"), ts("10.2.1.0/24"))
    assert peer.local_ts == (ts("10.1.0.0/24"), ts("10.1.1.0/24"))
    assert peer.start == "initiate" and peer.child("dmz") is dmz and peer.child("x") is None


def test_effective_config_loads_back_to_the_same_config(tmp_path):
    for text in (BASE, TWO_CHILDREN):
        config = parse(text)
        printed = effective_yaml(config)
        (tmp_path / "e.yaml").write_text(printed)
        again = parse(printed)
        assert again.peers == config.peers
    assert "children:" in effective_yaml(parse(TWO_CHILDREN))
    assert "children:" not in effective_yaml(parse(BASE))


def test_duplicate_child_names_are_refused():
    text = TWO_CHILDREN.replace("name: dmz", "name: lan")
    assert str(error(text)) == (
        "t.yaml:10: peers[0].children[1].name: child name 'lan' is also used by"
        " peers[0].children[0].name (line 7); the children of a peer need distinct names"
    )


def test_overlapping_remote_ts_of_two_children_is_refused():
    text = TWO_CHILDREN.replace("remote_ts: [10.2.1.0/24]", "remote_ts: [10.2.0.128/25]")
    message = str(error(text))
    assert message.startswith(
        "t.yaml:12: peers[0].children[1].remote_ts[0]: 10.2.0.128/25 overlaps 10.2.0.0/24 in"
        " remote_ts of child 'lan' (t.yaml:9, peers[0].children[0].remote_ts[0]); children"
        " 'lan' and 'dmz' of peer 'site-b' would both claim that traffic"
    )
    assert "one child with all of them in its local_ts" in message


def test_a_child_overlapping_another_peer_is_refused_as_between_peers():
    second = """\
  - name: site-c
    remote_address: 192.0.2.3
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.1.0/24]
    auth:
      psk_file: b.psk
"""
    message = str(error(TWO_CHILDREN + second))
    assert message.startswith(
        "t.yaml:22: peers[1].remote_ts[0]: 10.2.1.0/24 is the same as 10.2.1.0/24 in remote_ts"
        " of peer 'site-b' (t.yaml:12, peers[0].children[1].remote_ts[0])"
    )


def test_peer_level_child_keys_beside_children_are_refused():
    text = TWO_CHILDREN.replace("    children:\n", "    start: trap\n    children:\n")
    assert str(error(text)) == (
        "t.yaml:6: peers[0].start: peer 'site-b' lists children: (line 7); start belongs in"
        " each child there, not on the peer"
    )


def test_a_peer_without_selectors_nor_children_says_what_is_missing():
    text = BASE.replace("    local_ts: [10.1.0.0/24]\n", "")
    assert str(error(text)) == (
        "t.yaml:4: peers[0]: missing required key 'local_ts' (or a children: list, each child"
        " with its own local_ts and remote_ts)"
    )


def test_a_child_without_selectors_is_refused_at_its_line():
    text = TWO_CHILDREN.replace("        remote_ts: [10.2.0.0/24]\n", "")
    assert str(error(text)) == "t.yaml:7: peers[0].children[0]: missing required key 'remote_ts'"


def test_manual_peers_take_no_children():
    text = TWO_CHILDREN.replace(
        "    auth:\n      psk_file: b.psk\n",
        "    manual:\n      algorithm: aes128gcm16\n      spi_in: 0x1001\n      spi_out: 0x1002\n"
        "      key_file: lab.keys\n",
    )
    assert "write local_ts and remote_ts on the peer instead of children:" in str(error(text))


# -- dynamic addresses ------------------------------------------------------------------------


def test_a_dns_name_is_kept_and_expects_its_fqdn_identity():
    (peer,) = parse(BASE.replace("192.0.2.2", "VPN.Example.org.")).peers
    assert peer.remote_address is None and peer.remote_host == "vpn.example.org"
    assert peer.dynamic and not peer.responds_only
    assert peer.local_address == ipaddress.ip_address("192.0.2.1")
    assert peer.auth.remote_id == Identity("FQDN", "vpn.example.org")


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("192.0.2.x", "'192.0.2.x' is not an IPv4/IPv6 address"),
        ("10.0.0.300", "'10.0.0.300' is not an IPv4/IPv6 address"),
        ("vpn.example.123", "'vpn.example.123' is not a DNS name: its last label is a number"),
        ("vpn_b.example.org", "'vpn_b.example.org' is neither an IP address nor a DNS name"),
        ("-vpn.example.org", "'-vpn.example.org' is neither an IP address nor a DNS name"),
    ],
)
def test_what_is_neither_an_address_nor_a_name(written, message):
    assert message in str(error(BASE.replace("192.0.2.2", written)))


def test_any_needs_a_remote_id_and_responds():
    with pytest.raises(ConfigError) as exc:
        parse(BASE.replace("192.0.2.2", "any"))
    assert str(exc.value) == (
        "t.yaml:8: peers[0].auth: peer 'site-b' has remote_address any: it is known only by its"
        " identity, so auth.remote_id is required (the ID the peer sends in IKE_AUTH)"
    )
    text = BASE.replace("192.0.2.2", "any") + "      remote_id: '@site-b.example.org'\n"
    (peer,) = parse(text).peers
    assert peer.responds_only and peer.remote_address is None and peer.remote_host == "any"
    assert peer.children[0].start == "respond" and peer.start == "respond"


def test_any_refuses_to_initiate():
    text = (
        BASE.replace("192.0.2.2", "any").replace("    auth:", "    start: trap\n    auth:")
        + "      remote_id: '@site-b.example.org'\n"
    )
    assert str(error(text)).startswith(
        "t.yaml:8: peers[0].start: peer 'site-b' has remote_address any: its address is learned"
        " when it connects, so ipsecd cannot trap it; write start: respond"
    )


def test_two_any_peers_with_one_remote_id_are_refused():
    one = BASE.replace("192.0.2.2", "any") + "      remote_id: '@site-b.example.org'\n"
    two = (
        one.split("peers:\n")[1]
        .replace("site-b\n", "site-c\n", 1)
        .replace("10.2.0.0/24", "10.3.0.0/24")
    )
    message = str(error(one + two))
    assert message.startswith(
        "t.yaml:17: peers[1].auth.remote_id: remote_id site-b.example.org of a peer with"
        " remote_address any is also used by peer 'site-b'"
    )


def test_manual_peers_need_an_address():
    text = MANUAL.replace("192.0.2.2", "lab.example.org")
    assert str(error(text)) == (
        "t.yaml:5: peers[0].remote_address: peer 'lab' uses static SAs (manual: at line 8),"
        " which need the peer's IP address, not 'lab.example.org'"
    )
