"""One test per kind of config error: exact message, file and line.

Every message reads ``FILE:LINE: key.path: message``; the tests parse as
``t.yaml`` from a temporary directory, so paths in messages are short.
"""

from __future__ import annotations

import os

import pytest

from ipsecd.config import ConfigError, load_config
from ipsecd.config.errors import ConfigErrors
from ipsecd.config.fields import At, Field, Section, duration
from ipsecd.config.yamltree import load_yaml
from tests.unit.test_config_support import (
    BASE,
    KEY_IN,
    KEY_OUT,
    PSK,
    SECOND_PEER,
    error,
    parse,
    write_keys,
    write_secret,
    write_secret_files,
)

MANUAL = """\
gateway:
  listen: [192.0.2.1]
peers:
  - name: lab
    remote_address: 192.0.2.2
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
    manual:
      algorithm: aes128gcm16
      spi_in: 0x1001
      spi_out: 0x1002
      key_file: lab.keys
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_secret_files(tmp_path)


def check(text: str, expected: str) -> ConfigError:
    exc = error(text)
    assert str(exc) == expected
    return exc


def test_the_base_files_are_valid():
    assert parse(BASE).peers[0].name == "site-b"
    assert parse(MANUAL).peers[0].manual.key_in == KEY_IN


def test_error_attributes():
    exc = check(
        BASE.replace("10.2.0.0/24", "10.2.0.0/33"),
        "t.yaml:7: peers[0].remote_ts[0]: '10.2.0.0/33' is not an IPv4/IPv6 prefix",
    )
    assert (exc.file, exc.line, exc.key) == ("t.yaml", 7, "peers[0].remote_ts[0]")
    assert exc.message == "'10.2.0.0/33' is not an IPv4/IPv6 prefix"


# -- structure: unknown, missing, repeated keys ------------------------------------------------


def test_unknown_key_suggests_the_close_one():
    check(
        BASE.replace("remote_address", "remote_adress"),
        "t.yaml:5: peers[0].remote_adress: unknown key 'remote_adress';"
        " did you mean 'remote_address'?",
    )


def test_unknown_key_without_close_match_lists_the_keys():
    check(
        BASE.replace("  listen:", "  colour: red\n  listen:"),
        "t.yaml:2: gateway.colour: unknown key 'colour'; expected one of: tun, mtu, addresses,"
        " listen, port, ike_port, control_socket, metrics, retransmit_timeout,"
        " retransmit_tries, retry_interval, cookie_threshold, half_open_per_source,"
        " half_open_limit, fragment_size, offload, wakeup_interval_ms, user, set_forwarding",
    )


def test_unknown_top_level_key():
    check(
        BASE.replace("peers:", "peer:"), "t.yaml:3: peer: unknown key 'peer'; did you mean 'peers'?"
    )


def test_inline_psk_is_an_unknown_key_and_not_echoed():
    exc = check(
        BASE.replace("psk_file: b.psk", "psk: hunter2hunter2"),
        "t.yaml:9: peers[0].auth.psk: unknown key 'psk'; did you mean 'psk_file'?",
    )
    assert "hunter2" not in str(exc)


def test_missing_required_key():
    check(
        BASE.replace("    remote_address: 192.0.2.2\n", ""),
        "t.yaml:4: peers[0]: missing required key 'remote_address'",
    )


def test_missing_top_level_section():
    check(BASE[BASE.index("peers:") :], "t.yaml:1: missing required key 'gateway'")


def test_key_given_twice():
    check(
        BASE + "    remote_address: 192.0.2.9\n",
        "t.yaml:10: peers[0].remote_address: key given twice (first at line 5); remove one",
    )


def test_list_item_given_twice():
    check(
        BASE.replace("[192.0.2.1]", "[192.0.2.1, 192.0.2.1]"),
        "t.yaml:2: gateway.listen[1]: '192.0.2.1' is listed twice (also item [0])",
    )


def test_empty_list():
    check(
        BASE.replace("local_ts: [10.1.0.0/24]", "local_ts: []"),
        "t.yaml:6: peers[0].local_ts: needs at least 1 item",
    )


def test_no_peers():
    check("gateway:\n  listen: [192.0.2.1]\npeers: []\n", "t.yaml:3: peers: needs at least 1 item")


# -- types ------------------------------------------------------------------------------------


def test_wrong_type_string_for_integer():
    check(
        BASE.replace("  listen:", "  port: fourfivehundred\n  listen:"),
        "t.yaml:2: gateway.port: expected an integer, got a string ('fourfivehundred')",
    )


def test_wrong_type_boolean_is_not_an_integer():
    check(
        BASE.replace("  listen:", "  port: yes\n  listen:"),
        "t.yaml:2: gateway.port: expected an integer, got a boolean (true)",
    )


def test_wrong_type_scalar_for_list():
    check(
        BASE.replace("[192.0.2.1]", "192.0.2.1"),
        "t.yaml:2: gateway.listen: expected a list, got a string ('192.0.2.1'); write [192.0.2.1]",
    )


def test_wrong_type_scalar_for_section():
    check(
        BASE.replace("gateway:\n  listen: [192.0.2.1]", "gateway: 192.0.2.1"),
        "t.yaml:1: gateway: expected a mapping with keys tun, mtu, addresses, listen, port,"
        " ike_port, control_socket, metrics, retransmit_timeout, retransmit_tries,"
        " retry_interval, cookie_threshold, half_open_per_source, half_open_limit,"
        " fragment_size, offload, wakeup_interval_ms, user, set_forwarding;"
        " got a string ('192.0.2.1')",
    )


def test_top_level_not_a_mapping():
    check(
        "- gateway\n- peers\n",
        "t.yaml:1: expected a mapping at the top level with keys log, gateway, peers; got a list",
    )


def test_null_where_a_value_is_needed():
    check(
        BASE.replace("remote_address: 192.0.2.2", "remote_address:"),
        "t.yaml:5: peers[0].remote_address: expected an IP address, got nothing (null)",
    )


# -- values -----------------------------------------------------------------------------------


def test_bad_prefix_in_block_list():
    text = BASE.replace(
        "remote_ts: [10.2.0.0/24]", "remote_ts:\n      - 10.2.0.0/24\n      - 10.2.0.0/33"
    )
    check(text, "t.yaml:9: peers[0].remote_ts[1]: '10.2.0.0/33' is not an IPv4/IPv6 prefix")


def test_prefix_with_host_bits():
    check(
        BASE.replace("local_ts: [10.1.0.0/24]", "local_ts: [10.1.0.1/24]"),
        "t.yaml:6: peers[0].local_ts[0]: '10.1.0.1/24' has host bits set;"
        " did you mean 10.1.0.0/24?",
    )


def test_bad_ip_address():
    check(
        BASE.replace("192.0.2.2", "192.0.2.256"),
        "t.yaml:5: peers[0].remote_address: '192.0.2.256' is not an IPv4/IPv6 address",
    )


def test_bad_interface_address():
    check(
        BASE.replace("  listen:", "  addresses: [10.1.0.1]\n  listen:"),
        "t.yaml:2: gateway.addresses[0]: '10.1.0.1' needs a prefix length (e.g. 10.1.0.1/24)",
    )


def test_bad_choice_suggests():
    check(
        BASE.replace("  - name: site-b\n", "  - name: site-b\n    start: initate\n"),
        "t.yaml:5: peers[0].start: 'initate' is not valid; did you mean 'initiate'?",
    )


def test_bad_proposal_token():
    text = BASE + "    esp:\n      proposals: [aes256gcm16, aes512-sha256]\n"
    exc = error(text)
    assert (exc.line, exc.key) == (11, "peers[0].esp.proposals[1]")
    assert exc.message.startswith(
        "unknown ESP algorithm 'aes512' in proposal 'aes512-sha256' (known: aes128, "
    )


def test_inconsistent_proposal():
    check(
        BASE + "    ike:\n      proposals:\n        - aes256gcm16-sha256-x25519\n",
        "t.yaml:12: peers[0].ike.proposals[0]: proposal 'aes256gcm16-sha256-x25519': AEAD"
        " ciphers carry their own integrity; drop sha256",
    )


def test_bad_integer_range():
    check(
        BASE.replace("  listen:", "  mtu: 100\n  listen:"),
        "t.yaml:2: gateway.mtu: 100 is out of range 576..9000",
    )


def test_bad_peer_name():
    check(
        BASE.replace("name: site-b", "name: site b"),
        "t.yaml:4: peers[0].name: 'site b' is not a peer name (letters, digits, _.-)",
    )


def test_tun_name_too_long():
    check(
        BASE.replace("  listen:", "  tun: ipsec-tunnel-zero\n  listen:"),
        "t.yaml:2: gateway.tun: 'ipsec-tunnel-zero' is longer than 15 characters",
    )


def test_bad_metrics_endpoint():
    check(
        BASE.replace("  listen:", "  metrics: '::1:9810'\n  listen:"),
        "t.yaml:2: gateway.metrics: '::1:9810' is not ADDRESS:PORT (e.g. 127.0.0.1:9810 or"
        " [::1]:9810)",
    )


def test_bad_identity():
    check(
        BASE + "      remote_id: '@#zz'\n",
        "t.yaml:10: peers[0].auth.remote_id: identity '@#zz': @# must be followed by hex digits",
    )


def test_bad_duration():
    """No schema key takes a duration yet; a one-field section shows the message they will give."""
    spec = Section(Field("rekey_time", duration(min_seconds=60), 14400))
    tree = load_yaml("rekey_time: 1w\n", "t.yaml")
    with pytest.raises(ConfigError) as info:
        spec.read(tree, At("t.yaml", "peers[0]", 1))
    assert str(info.value) == (
        "t.yaml:1: peers[0].rekey_time: '1w' is not a duration (write 30s, 5m, 1h, 1d, 1h30m"
        " or seconds)"
    )
    with pytest.raises(ConfigError, match=r"'30s' \(30s\) is out of range 60s\.\.unbounded"):
        spec.read(load_yaml("rekey_time: 30s\n", "t.yaml"), At("t.yaml", "peers[0]", 1))
    assert (
        spec.read(load_yaml("rekey_time: 1h\n", "t.yaml"), At("t.yaml", "", 1))["rekey_time"]
        == 3600
    )


# -- cross-field checks -----------------------------------------------------------------------


def test_local_address_not_in_listen():
    check(
        BASE.replace("    local_ts:", "    local_address: 192.0.2.9\n    local_ts:"),
        "t.yaml:6: peers[0].local_address: 192.0.2.9 is not one of gateway.listen (192.0.2.1);"
        " ipsecd only sends from addresses it listens on",
    )


def test_no_listen_address_of_the_remote_version():
    check(
        BASE.replace("192.0.2.2", "'2001:db8::2'"),
        "t.yaml:5: peers[0].remote_address: peer 'site-b': 2001:db8::2 is IPv6 but"
        " gateway.listen has no IPv6 address; add one or set local_address",
    )


def test_local_and_remote_address_versions_differ():
    text = BASE.replace("[192.0.2.1]", "[192.0.2.1, '2001:db8::1']").replace(
        "    local_ts:", "    local_address: '2001:db8::1'\n    local_ts:"
    )
    check(
        text,
        "t.yaml:6: peers[0].local_address: 2001:db8::1 is IPv6 but remote_address"
        " 192.0.2.2 is IPv4",
    )


def test_same_port_for_ike_and_nat_t():
    check(
        BASE.replace("  listen:", "  ike_port: 4500\n  listen:"),
        "t.yaml:2: gateway.ike_port: ike_port and port are both 4500; IKE needs its own port"
        " (500) besides the NAT-T port (4500)",
    )


def test_neither_auth_nor_manual():
    check(
        BASE[: BASE.index("    auth:")],
        "t.yaml:4: peers[0]: peer 'site-b' needs an auth: section (IKE with a PSK) or a manual:"
        " section (static SAs)",
    )


def test_manual_peer_takes_no_ike_options():
    check(
        MANUAL + "    esp:\n      proposals: [aes128gcm16]\n",
        "t.yaml:13: peers[0].esp: peer 'lab' uses static SAs (manual: at line 8), which take"
        " no esp; remove one of the two",
    )


def test_manual_peer_takes_no_dead_peer_detection():
    check(
        MANUAL + "    dpd_delay: 10s\n",
        "t.yaml:13: peers[0].dpd_delay: peer 'lab' uses static SAs (manual: at line 8), which"
        " take no dpd_delay; remove one of the two",
    )


def test_dead_peer_detection_keys():
    peer = parse(BASE).peers[0]
    assert (peer.dpd_delay, peer.dpd_action) == (30, "restart")
    text = BASE.replace("    auth:", "    dpd_delay: 1m30s\n    dpd_action: hold\n    auth:")
    peer = parse(text).peers[0]
    assert (peer.dpd_delay, peer.dpd_action) == (90, "hold")
    assert parse(BASE.replace("    auth:", "    dpd_delay: 0\n    auth:")).peers[0].dpd_delay == 0
    exc = error(BASE.replace("    auth:", "    dpd_action: restrat\n    auth:"))
    assert exc.line == 8 and "restart" in exc.message


def test_duplicate_peer_name():
    text = BASE + SECOND_PEER.replace("site-c", "site-b")
    check(
        text,
        "t.yaml:10: peers[1].name: peer name 'site-b' is also used by peer 'site-b'"
        " (peers[0], line 4)",
    )


def test_duplicate_remote_endpoint():
    text = BASE + SECOND_PEER.replace("192.0.2.3", "192.0.2.2")
    check(
        text,
        "t.yaml:11: peers[1].remote_address: remote 192.0.2.2 port 500 is also used by"
        " peer 'site-b' (peers[0], line 4)",
    )


def test_same_remote_on_another_port_is_fine():
    text = BASE + SECOND_PEER.replace("192.0.2.3", "192.0.2.2") + "    remote_port: 4500\n"
    assert len(parse(text).peers) == 2


def test_duplicate_spi_in():
    second = (
        MANUAL[MANUAL.index("  - name: lab") :]
        .replace("name: lab", "name: lab2")
        .replace("192.0.2.2", "192.0.2.3")
        .replace("spi_out: 0x1002", "spi_out: 0x2002")
        .replace("10.2.0.0/24", "10.3.0.0/24")
    )
    check(
        MANUAL + second,
        "t.yaml:19: peers[1].manual.spi_in: spi_in 0x00001001 is also used"
        " by peer 'lab' (peers[0], line 4)",
    )


def test_duplicate_spi_out_towards_the_same_remote():
    second = (
        MANUAL[MANUAL.index("  - name: lab") :]
        .replace("name: lab", "name: lab2")
        .replace("spi_in: 0x1001", "spi_in: 0x2001")
        .replace("10.2.0.0/24", "10.3.0.0/24")
        + "    remote_port: 4500\n"
    )
    check(
        MANUAL + second,
        "t.yaml:20: peers[1].manual.spi_out: spi_out 0x00001002 towards"
        " 192.0.2.2 is also used by peer 'lab' (peers[0], line 4)",
    )


def test_spi_in_reserved_range():
    check(
        MANUAL.replace("spi_in: 0x1001", "spi_in: 255"),
        "t.yaml:10: peers[0].manual.spi_in: SPI 0xff is out of range 0x100..0xffffffff"
        " (RFC 4303 §2.1: 1-255 are reserved)",
    )


def test_manual_algorithm_must_be_one_transform_set():
    check(
        MANUAL.replace("algorithm: aes128gcm16", "algorithm: aes128gcm16-aes256gcm16"),
        "t.yaml:9: peers[0].manual.algorithm: 'aes128gcm16-aes256gcm16': a manual SA uses"
        " exactly one cipher (and one integrity algorithm unless the cipher is an AEAD),"
        " e.g. aes128gcm16 or aes128-sha256",
    )


def test_manual_algorithm_without_key_exchange_or_esn_token():
    exc = error(MANUAL.replace("algorithm: aes128gcm16", "algorithm: aes128gcm16-x25519"))
    assert exc.message == "'aes128gcm16-x25519': a manual SA has no key exchange; drop x25519"
    exc = error(MANUAL.replace("algorithm: aes128gcm16", "algorithm: aes128gcm16-esn"))
    assert exc.message == "'aes128gcm16-esn': write esn: true or esn: false instead of an esn token"


# -- secret files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o620, "writable"),
        (0o666, "readable and writable"),
        (0o601, "accessible"),
    ],
)
def test_psk_file_too_open(in_tmp, mode, words):
    write_secret(in_tmp / "b.psk", PSK, mode)
    check(
        BASE,
        f"t.yaml:9: peers[0].auth.psk_file: psk file b.psk is {words} by group/others"
        f" (mode {mode:04o}); chmod 600 it",
    )


def test_psk_file_too_open_absolute_path(in_tmp):
    path = write_secret(in_tmp / "b.psk", PSK, 0o644)
    exc = check(
        BASE.replace("b.psk", str(path)),
        f"t.yaml:9: peers[0].auth.psk_file: psk file"
        f" {path} is readable by group/others (mode 0644); chmod 600 it",
    )
    assert PSK.decode() not in str(exc)


def test_psk_file_missing(in_tmp):
    (in_tmp / "b.psk").unlink()
    check(BASE, "t.yaml:9: peers[0].auth.psk_file: psk file b.psk does not exist")


def test_psk_file_is_a_directory(in_tmp):
    (in_tmp / "b.psk").unlink()
    (in_tmp / "b.psk").mkdir(mode=0o700)
    check(BASE, "t.yaml:9: peers[0].auth.psk_file: psk file b.psk is not a regular file")


def test_psk_file_empty(in_tmp):
    write_secret(in_tmp / "b.psk", " \n")
    check(BASE, "t.yaml:9: peers[0].auth.psk_file: psk file b.psk is empty")


def test_psk_file_bad_hex(in_tmp):
    write_secret(in_tmp / "b.psk", "0xsecretsecret")
    exc = check(
        BASE,
        "t.yaml:9: peers[0].auth.psk_file: psk file b.psk starts with 0x but the rest is not hex",
    )
    assert "secretsecret" not in str(exc)


def test_manual_key_wrong_length(in_tmp):
    write_keys(in_tmp / "lab.keys", KEY_IN[:16])
    check(
        MANUAL,
        "t.yaml:12: peers[0].manual.key_file: key file lab.keys line 1: 'in' is 16"
        " bytes; aes128gcm16 needs 20 (16-byte aes128gcm16 key + 4-byte salt)",
    )


def test_manual_key_wrong_length_cbc(in_tmp):
    write_keys(in_tmp / "lab.keys", bytes(48), bytes(range(47)))
    check(
        MANUAL.replace("aes128gcm16", "aes128-sha256"),
        "t.yaml:12: peers[0].manual.key_file: key file lab.keys line 2: 'out' is 47 bytes;"
        " aes128-sha256 needs 48 (16-byte aes128 key + 32-byte sha256 key)",
    )


def test_manual_key_not_hex(in_tmp):
    write_secret(in_tmp / "lab.keys", f"in: {KEY_IN.hex()}\nout: zz{KEY_OUT.hex()}\n")
    exc = check(
        MANUAL, "t.yaml:12: peers[0].manual.key_file: key file lab.keys line 2: 'out' is not hex"
    )
    assert KEY_OUT.hex() not in str(exc)


def test_manual_key_file_missing_direction(in_tmp):
    write_secret(in_tmp / "lab.keys", f"in: {KEY_IN.hex()}\n")
    check(MANUAL, "t.yaml:12: peers[0].manual.key_file: key file lab.keys has no 'out' key")


def test_manual_key_file_unknown_key_not_echoed(in_tmp):
    write_secret(
        in_tmp / "lab.keys", f"in: {KEY_IN.hex()}\nout: {KEY_OUT.hex()}\n{KEY_OUT.hex()}: oops\n"
    )
    check(
        MANUAL,
        "t.yaml:12: peers[0].manual.key_file: key file lab.keys line 3: unknown key;"
        " expected only 'in' and 'out'",
    )


def test_manual_key_file_not_yaml(in_tmp):
    write_secret(in_tmp / "lab.keys", f"in: {KEY_IN.hex()}\n  out: [{KEY_OUT.hex()}\n")
    exc = error(MANUAL)
    assert exc.message.startswith("key file lab.keys is not valid YAML at line ")
    assert KEY_OUT.hex() not in str(exc) and KEY_IN.hex() not in str(exc)


def test_manual_keys_same_both_ways(in_tmp):
    write_keys(in_tmp / "lab.keys", KEY_IN, KEY_IN)
    check(
        MANUAL,
        "t.yaml:12: peers[0].manual.key_file: key file lab.keys: 'in' and 'out' are"
        " the same key; each direction needs its own (one key both ways repeats nonces)",
    )


def test_manual_key_file_too_open(in_tmp):
    write_keys(in_tmp / "lab.keys", mode=0o604)
    check(
        MANUAL,
        "t.yaml:12: peers[0].manual.key_file: key file lab.keys is readable by"
        " group/others (mode 0604); chmod 600 it",
    )


def test_manual_key_file_missing(in_tmp):
    (in_tmp / "lab.keys").unlink()
    check(MANUAL, "t.yaml:12: peers[0].manual.key_file: key file lab.keys does not exist")


# -- the file itself --------------------------------------------------------------------------


def test_yaml_syntax_error_has_file_and_line():
    text = BASE.replace("    local_ts: [10.1.0.0/24]", "    local_ts: [10.1.0.0/24\n")
    exc = error(text)
    assert (exc.file, exc.key) == ("t.yaml", None)
    assert exc.line == 8
    assert str(exc).startswith("t.yaml:8: YAML syntax error: ")


def test_yaml_bad_indentation():
    check(
        BASE.replace("  listen:", "   listen:").replace("gateway:\n", "gateway:\n  tun: x\n"),
        "t.yaml:3: YAML syntax error: mapping values are not allowed here (column 10)",
    )


def test_empty_file():
    check("", "t.yaml:1: the file is empty; it needs at least a gateway: and a peers: section")


def test_comments_only_file():
    check(
        "# nothing yet\n\n",
        "t.yaml:1: the file is empty; it needs at least a gateway: and a peers: section",
    )


def test_two_documents():
    exc = error(BASE + "---\n" + BASE)
    assert exc.line == 10 and "expected a single document" in exc.message


def test_config_file_missing(in_tmp):
    with pytest.raises(ConfigError) as info:
        load_config("nope.yaml")
    assert str(info.value) == "nope.yaml: cannot read config file: No such file or directory"
    assert info.value.line is None


def test_config_file_not_utf8(in_tmp):
    (in_tmp / "t.yaml").write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config("t.yaml")
    assert str(info.value) == "t.yaml:10: not UTF-8 text"


# -- secrets never leak -----------------------------------------------------------------------


def test_no_secret_in_any_error_message(in_tmp):
    """Break every secret-file rule once; the secret never shows in the message."""
    psk = b"0xdeadbeefdeadbeefdeadbeefdeadbeef"
    cases = [
        ("b.psk", psk, 0o644, BASE),
        ("b.psk", psk + b"zz", 0o600, BASE),
        ("lab.keys", f"in: {KEY_IN.hex()}\nout: {KEY_OUT.hex()}\n".encode(), 0o644, MANUAL),
        ("lab.keys", f"in: {KEY_IN.hex()}\nout: {KEY_OUT.hex()}00\n".encode(), 0o600, MANUAL),
        ("lab.keys", f"in: {KEY_IN.hex()}\nout: {KEY_IN.hex()}\n".encode(), 0o600, MANUAL),
        ("lab.keys", f"{KEY_IN.hex()}: {KEY_OUT.hex()}\n".encode(), 0o600, MANUAL),
        ("lab.keys", f"- {KEY_IN.hex()}\n".encode(), 0o600, MANUAL),
        ("lab.keys", f"in: '{KEY_IN.hex()}\n".encode(), 0o600, MANUAL),
    ]
    for name, content, mode, text in cases:
        write_secret(in_tmp / name, content, mode)
        exc = error(text)
        message = str(exc) + repr(exc)
        for secret in (psk.decode(), psk[2:].decode(), KEY_IN.hex(), KEY_OUT.hex()):
            assert secret not in message, (name, message)
        assert KEY_IN.hex()[:8] not in message and KEY_OUT.hex()[:8] not in message


# -- hardening: overlapping remote_ts, PSK owner, every error at once -------------------------


def test_identical_remote_ts_names_both_peers_and_lines():
    check(
        BASE + SECOND_PEER.replace("10.3.0.0/24", "10.2.0.0/24"),
        "t.yaml:13: peers[1].remote_ts[0]: 10.2.0.0/24 is the same as 10.2.0.0/24 in remote_ts"
        " of peer 'site-b' (t.yaml:7, peers[0].remote_ts[0]); peer 'site-c' and peer 'site-b'"
        " would both claim that traffic: make the remote_ts of different peers disjoint",
    )


def test_overlapping_remote_ts_is_refused():
    text = BASE + SECOND_PEER.replace("[10.3.0.0/24]", "[10.3.0.0/24, 10.2.0.128/25]")
    exc = error(text)
    assert str(exc).startswith(
        "t.yaml:13: peers[1].remote_ts[1]: 10.2.0.128/25 overlaps 10.2.0.0/24 in remote_ts of"
        " peer 'site-b' (t.yaml:7, peers[0].remote_ts[0])"
    )


def test_psk_file_owned_by_another_user(in_tmp):
    os.chown(in_tmp / "b.psk", 54321, -1)
    message = str(error(BASE))
    assert message.startswith(
        "t.yaml:9: peers[0].auth.psk_file: psk file b.psk is owned by uid 54321; it must be"
        " owned by root (uid 0)"
    )
    assert message.endswith("(chown it)")


def test_every_error_is_reported_with_its_line():
    text = (
        BASE.replace("192.0.2.2", "192.0.2.999")
        .replace("10.1.0.0/24", "10.1.0.0/33")
        .replace("  listen:", "  colour: red\n  listen:")
    )
    exc = error(text)
    assert isinstance(exc, ConfigErrors)
    assert [str(e) for e in exc.all] == [
        "t.yaml:2: gateway.colour: unknown key 'colour'; expected one of: tun, mtu, addresses,"
        " listen, port, ike_port, control_socket, metrics, retransmit_timeout,"
        " retransmit_tries, retry_interval, cookie_threshold, half_open_per_source,"
        " half_open_limit, fragment_size, offload, wakeup_interval_ms, user, set_forwarding",
        "t.yaml:6: peers[0].remote_address: '192.0.2.999' is not an IPv4/IPv6 address",
        "t.yaml:7: peers[0].local_ts[0]: '10.1.0.0/33' is not an IPv4/IPv6 prefix",
    ]
    assert str(exc) == "\n".join(str(e) for e in exc.all)
    assert (exc.file, exc.line) == ("t.yaml", 2)  # the first one, for single-error callers


def test_errors_of_several_peers_and_cross_checks_together():
    text = BASE + SECOND_PEER.replace("site-c", "site-b").replace("10.3.0.0/24", "10.2.0.0/24")
    text = text.replace("192.0.2.3", "192.0.2.2")
    lines = [str(e).split(": ", 2)[1] for e in error(text).all]
    assert lines == ["peers[1].name", "peers[1].remote_address", "peers[1].remote_ts[0]"]


def test_misspelt_required_key_is_one_error():
    exc = error(BASE.replace("remote_address", "remote_adress"))
    assert len(exc.all) == 1
