"""Config loading: a complete file round trip, the example configs, identities, durations."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from ipsecd.config import (
    AuthConfig,
    ConfigError,
    GatewayConfig,
    Identity,
    LogConfig,
    ManualSaConfig,
    load_config,
    parse_duration,
)
from ipsecd.crypto.registry import ENCRYPTION, INTEGRITY
from ipsecd.selectors import TrafficSelector
from tests.unit.test_config_support import (
    BASE,
    PSK,
    parse,
    write_keys,
    write_secret,
)

ETC = Path(__file__).resolve().parents[2] / "etc"

FULL = """\
log:
  level: debug
  format: json
gateway:
  tun: vpn0
  mtu: 1400
  addresses: [10.1.0.1/24, "2001:db8:1::1/64"]
  listen: [192.0.2.1, "2001:db8::1"]
  port: 14500
  ike_port: 1500
  control_socket: /tmp/ipsecd.sock
  metrics: "[::1]:9810"
peers:
  - name: site-b
    remote_address: 192.0.2.2
    remote_port: 4500
    local_address: 192.0.2.1
    start: respond
    local_ts: [10.1.0.0/24, "2001:db8:1::/64"]
    remote_ts:
      - 10.2.0.0/24
      - 10.3.0.7
    ike:
      proposals: [aes128gcm16-prfsha384-ecp384]
    esp:
      proposals: [chacha20poly1305, aes256-sha512-modp3072-esn]
    auth:
      psk_file: b.psk
      local_id: "@gw-a.example.org"
      remote_id: admin@example.org
  - name: lab
    remote_address: "2001:db8::2"
    local_ts: ["2001:db8:1::/64"]
    remote_ts: ["2001:db8:2::/64"]
    manual:
      algorithm: aes128-sha256
      esn: true
      spi_in: 0x1001
      spi_out: "0x1002"
      key_file: lab.keys
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_secret(tmp_path / "b.psk", PSK + b"\n")
    return tmp_path


def test_full_file_round_trip(in_tmp):
    cbc_in = bytes(range(16)) + bytes(range(32, 64))  # aes128 key + sha256 key
    cbc_out = bytes(range(100, 148))
    write_keys(in_tmp / "lab.keys", cbc_in, cbc_out)
    config = parse(FULL)

    assert config.path == Path("t.yaml")
    assert config.log == LogConfig("debug", "json")
    assert config.gateway == GatewayConfig(
        tun="vpn0",
        mtu=1400,
        addresses=(
            ipaddress.ip_interface("10.1.0.1/24"),
            ipaddress.ip_interface("2001:db8:1::1/64"),
        ),
        listen=(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")),
        port=14500,
        ike_port=1500,
        control_socket=Path("/tmp/ipsecd.sock"),
        metrics=("::1", 9810),
    )
    b, lab = config.peers
    assert config.peer("lab") is lab
    assert b.name == "site-b"
    assert b.remote_address == ipaddress.ip_address("192.0.2.2")
    assert (b.remote_port, b.local_address, b.start) == (
        4500,
        ipaddress.ip_address("192.0.2.1"),
        "respond",
    )
    assert b.local_ts == (
        TrafficSelector.from_prefix("10.1.0.0/24"),
        TrafficSelector.from_prefix("2001:db8:1::/64"),
    )
    assert b.remote_ts == (
        TrafficSelector.from_prefix("10.2.0.0/24"),
        TrafficSelector.from_prefix("10.3.0.7/32"),
    )
    assert [str(p) for p in b.ike_proposals] == ["aes128gcm16-prfsha384-ecp384"]
    assert [p.encryption[0].name for p in b.esp_proposals] == ["chacha20poly1305", "aes256"]
    assert b.esp_proposals[1].esn == (True,)
    assert b.auth == AuthConfig(
        psk=PSK,
        psk_file=Path("b.psk"),
        local_id=Identity("FQDN", "gw-a.example.org"),
        remote_id=Identity("RFC822_ADDR", "admin@example.org"),
    )
    assert b.manual is None

    assert lab.local_address == ipaddress.ip_address("2001:db8::1")  # first IPv6 listen
    assert (lab.remote_port, lab.start) == (500, "initiate")
    assert lab.auth is None and lab.ike_proposals == () and lab.esp_proposals == ()
    assert lab.manual == ManualSaConfig(
        encr=ENCRYPTION["aes128"],
        integ=INTEGRITY["sha256"],
        esn=True,
        spi_in=0x1001,
        spi_out=0x1002,
        key_in=cbc_in,
        key_out=cbc_out,
        key_file=Path("lab.keys"),
    )
    assert lab.manual.keys_in == (bytes(range(16)), bytes(range(32, 64)))
    assert lab.manual.keys_out == (cbc_out[:16], cbc_out[16:])
    assert lab.manual.key_len == 48


def test_defaults():
    config = parse(BASE)
    assert config.log == LogConfig("info", "auto")
    gw = config.gateway
    assert (gw.tun, gw.mtu, gw.addresses, gw.port, gw.ike_port, gw.metrics) == (
        "ipsec0",
        None,
        (),
        4500,
        500,
        None,
    )
    assert gw.control_socket == Path("/run/ipsecd/ipsecd.sock")
    (peer,) = config.peers
    assert (peer.remote_port, peer.start) == (500, "initiate")
    assert peer.local_address == ipaddress.ip_address("192.0.2.1")
    assert [str(p) for p in peer.ike_proposals] == [
        "aes256gcm16-prfsha256-x25519",
        "aes128-sha256-ecp256",
    ]
    assert [str(p) for p in peer.esp_proposals] == ["aes256gcm16", "aes128-sha256"]
    assert peer.auth.local_id == Identity("IPV4_ADDR", "192.0.2.1")
    assert peer.auth.remote_id == Identity("IPV4_ADDR", "192.0.2.2")
    assert peer.auth.psk == PSK  # stripped of the trailing newline


def test_config_is_frozen_and_comparable():
    a, b = parse(BASE), parse(BASE)
    assert a == b  # the daemon's reload compares configs
    with pytest.raises(AttributeError):
        a.peers[0].name = "x"  # type: ignore[misc]
    with pytest.raises(KeyError, match="no peer named 'nope'"):
        a.peer("nope")


def test_null_section_means_defaults():
    assert parse("log:\n" + BASE).log == LogConfig()


def test_merge_keys_and_anchors_work():
    text = """\
gateway:
  listen: [192.0.2.1]
peers:
  - &b
    name: site-b
    remote_address: 192.0.2.2
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
    auth: {psk_file: b.psk}
  - <<: *b
    name: site-c
    remote_address: 192.0.2.3
    remote_ts: [10.3.0.0/24]
"""
    b, c = parse(text).peers
    assert c.local_ts == b.local_ts and c.auth.psk == PSK
    assert str(c.remote_ts[0]) == "10.3.0.0/24"
    assert c.remote_address == ipaddress.ip_address("192.0.2.3")


@pytest.mark.parametrize(
    ("content", "psk"),
    [
        (b"  plain text key, long enough \n", b"plain text key, long enough"),
        (
            b"0x00112233445566778899aabbccddeeff\n",
            bytes.fromhex("00112233445566778899aabbccddeeff"),
        ),
        (
            b"0X0011:2233:4455:6677:8899:aabb:ccdd:eeff\n",
            bytes.fromhex("00112233445566778899aabbccddeeff"),
        ),
        (b"0sc2VjcmV0LWtleS0xNi1ieXRlcw==\n", b"secret-key-16-bytes"),
    ],
)
def test_psk_file_formats(in_tmp, content, psk):
    write_secret(in_tmp / "b.psk", content, 0o400)
    assert parse(BASE).peers[0].auth.psk == psk


@pytest.mark.parametrize(
    ("content", "size"), [(b"short", 5), (b"0x0011223344", 5), (b"0sc2VjcmV0LWtleQ==", 10)]
)
def test_psk_under_16_bytes_is_refused(in_tmp, content, size):
    write_secret(in_tmp / "b.psk", content)
    with pytest.raises(ConfigError) as info:
        parse(BASE)
    assert str(info.value) == (
        f"t.yaml:9: peers[0].auth.psk_file: psk file b.psk: PSK has {size} bytes; at least 16"
        " are required (make one with: openssl rand -hex 32 | sed 's/^/0x/'), or set"
        " auth.allow_weak_psk: true for a lab"
    )


def test_allow_weak_psk_accepts_a_short_one(in_tmp):
    write_secret(in_tmp / "b.psk", b"short")
    config = parse(BASE + "      allow_weak_psk: true\n")
    assert config.peers[0].auth.psk == b"short"
    assert config.peers[0].auth.allow_weak_psk


def test_relative_secret_paths_follow_the_config_file(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ipsecd.yaml").write_text(BASE)
    write_secret(sub / "b.psk", "sub-dir key, 16+ bytes")
    config = load_config(sub / "ipsecd.yaml")
    assert config.peers[0].auth.psk == b"sub-dir key, 16+ bytes"
    assert config.peers[0].auth.psk_file == sub / "b.psk"


def test_secrets_never_in_repr(in_tmp):
    write_keys(in_tmp / "lab.keys", bytes(range(48)), bytes(range(100, 148)))
    config = parse(FULL)
    text = repr(config) + str(config)
    lab = config.peer("lab").manual
    for secret in (PSK, lab.key_in, lab.key_out, *lab.keys_in, *lab.keys_out):
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert PSK.decode() not in text


# -- example configs in etc/ ----------------------------------------------------------------


def _install_examples(tmp_path: Path) -> None:
    """Copy etc/*.yaml with /etc/ipsecd/ pointing at tmp_path, plus their secret files in
    tmp_path/secrets/ (the install script's /etc/ipsecd/secrets/)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for src in ETC.glob("*.yaml"):
        text = src.read_text().replace("/etc/ipsecd/", f"{tmp_path}/")
        (tmp_path / src.name).write_text(text)
    for name in ("site-b.psk", "site-a-b.psk"):
        write_secret(secrets / name, "0x" + "5a" * 32)
    example = (ETC / "site.keys.example").read_text()
    write_secret(secrets / "site-a.keys", example)
    key_in = re.search(r"^in: (.*)$", example, re.M)[1]
    key_out = re.search(r"^out: (.*)$", example, re.M)[1]
    write_secret(secrets / "site-b.keys", f"in: {key_out}\nout: {key_in}\n")


EXAMPLES = sorted(p.name for p in ETC.glob("*.yaml"))


def test_examples_are_all_there():
    assert {"ipsecd.yaml", "site-a.psk.yaml", "site-b.psk.yaml"} <= set(EXAMPLES)
    assert {"site-a.manual.yaml", "site-b.manual.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_pass_ipsecd_check_without_warnings(tmp_path, monkeypatch, capsys, name):
    """Every file in etc/ passes `ipsecd check`, and on a gateway connected to the LAN that
    its local_ts names (address: the TUN's /32) and to the WAN, nothing warns."""
    from ipsecd.cli.ipsecd import main
    from ipsecd.config.warnings import ConnectedRoute, config_warnings
    from ipsecd.daemon import preflight

    _install_examples(tmp_path)
    monkeypatch.setattr(preflight, "connected_routes", list)
    monkeypatch.setattr(preflight, "read_sysctl", lambda _name: "1")
    assert main(["check", str(tmp_path / name)]) == 0
    assert capsys.readouterr().err == ""
    config = load_config(tmp_path / name)
    tun = config.gateway.addresses
    routes = [
        ConnectedRoute(net, "lan", tun[0].ip if tun else None)
        for net in config.peers[0].local_ts[0].networks()
    ] + [
        ConnectedRoute(ipaddress.ip_interface(f"{a}/24").network, "wan", a)
        for a in config.gateway.listen
    ]
    assert config_warnings(config, routes) == []
    assert all(a.network.prefixlen == a.max_prefixlen for a in tun), "a TUN prefix takes a route"
    for peer in config.peers:  # secrets live in /etc/ipsecd/secrets/
        secret = peer.auth.psk_file if peer.auth else peer.manual.key_file
        assert secret.parent == tmp_path / "secrets"


def test_example_sites_mirror_each_other(tmp_path):
    _install_examples(tmp_path)
    for kind in ("psk", "manual"):
        a = load_config(tmp_path / f"site-a.{kind}.yaml").peers[0]
        b = load_config(tmp_path / f"site-b.{kind}.yaml").peers[0]
        assert (a.local_address, a.remote_address) == (b.remote_address, b.local_address)
        assert (a.local_ts, a.remote_ts) == (b.remote_ts, b.local_ts)
        if kind == "psk":
            assert a.auth.psk == b.auth.psk
            assert {a.start, b.start} == {"initiate", "respond"}
        else:
            assert (a.manual.spi_in, a.manual.spi_out) == (b.manual.spi_out, b.manual.spi_in)
            assert (a.manual.key_in, a.manual.key_out) == (b.manual.key_out, b.manual.key_in)


def test_reference_config_documents_every_key():
    """etc/ipsecd.yaml is the operator's reference: every schema key appears in it."""
    from ipsecd.config import sections

    text = (ETC / "ipsecd.yaml").read_text()
    doc = (ETC.parent / "docs" / "configuration.md").read_text()
    for table in (
        sections.LOG,
        sections.GATEWAY,
        sections.PEER,
        sections.IKE,
        sections.ESP,
        sections.AUTH,
        sections.MANUAL,
    ):
        for key in table.by_key:
            assert re.search(rf"^\s*#?\s*(- )?{key}:", text, re.M), key
            assert f"`{key}`" in doc, key


# -- identities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "type_", "id_type", "data", "shown"),
    [
        ("192.0.2.1", "IPV4_ADDR", 1, bytes([192, 0, 2, 1]), "192.0.2.1"),
        ("2001:DB8::1", "IPV6_ADDR", 5, ipaddress.ip_address("2001:db8::1").packed, "2001:db8::1"),
        ("@gw.example.org", "FQDN", 2, b"gw.example.org", "gw.example.org"),
        ("gw.example.org", "FQDN", 2, b"gw.example.org", "gw.example.org"),
        ("site-b", "FQDN", 2, b"site-b", "site-b"),
        ("admin@example.org", "RFC822_ADDR", 3, b"admin@example.org", "admin@example.org"),
        ("@#0a1B2c", "KEY_ID", 11, b"\x0a\x1b\x2c", "@#0a1b2c"),
    ],
)
def test_identity_parse(text, type_, id_type, data, shown):
    ident = Identity.parse(text)
    assert (ident.type, ident.id_type, ident.data, str(ident)) == (type_, id_type, data, shown)
    assert Identity.parse(str(ident)) == ident


@pytest.mark.parametrize("text", ["", "@", "@#", "@#zz", "a b", "@a@b", "user@"])
def test_identity_parse_rejects(text):
    with pytest.raises(ValueError):
        Identity.parse(text)


# -- durations (ready for rekey_time, dpd_delay, ...) ------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (90, 90),
        ("45", 45),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "1w", "1.5h", "-5", "h", "5 m", True, None, -1, 1.5])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)
