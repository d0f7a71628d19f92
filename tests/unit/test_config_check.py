"""``ipsecd check FILE...``: every error of every file, exit codes, ``--print``."""

from __future__ import annotations

import pytest

from ipsecd.cli.ipsecd import main
from ipsecd.config.effective import effective_yaml
from ipsecd.daemon import preflight
from tests.unit.test_config_support import BASE, PSK, SECOND_PEER, parse, write_secret_files

SECOND = SECOND_PEER.replace("10.3.0.0/24", "10.2.0.0/16")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    # This machine's routes and sysctls are not the test's: no warnings from them here
    # (tests/unit/test_preflight.py has those).
    monkeypatch.setattr(preflight, "connected_routes", list)
    monkeypatch.setattr(preflight, "read_sysctl", lambda _name: "1")
    monkeypatch.chdir(tmp_path)
    write_secret_files(tmp_path)
    (tmp_path / "good.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text(BASE.replace("192.0.2.2", "192.0.2.x") + SECOND)
    return tmp_path


def test_every_file_and_every_error(capsys):
    assert main(["check", "good.yaml", "bad.yaml", "missing.yaml"]) == 1
    out, err = capsys.readouterr()
    assert "good.yaml: OK, 1 peer(s)" in out
    assert err.splitlines() == [
        "error: bad.yaml:5: peers[0].remote_address: '192.0.2.x' is not an IPv4/IPv6 address",
        "error: bad.yaml:13: peers[1].remote_ts[0]: 10.2.0.0/16 overlaps 10.2.0.0/24 in"
        " remote_ts of peer 'site-b' (bad.yaml:7, peers[0].remote_ts[0]); peer 'site-c' and"
        " peer 'site-b' would both claim that traffic: make the remote_ts of different peers"
        " disjoint",
        "bad.yaml: 2 errors",
        "error: missing.yaml: cannot read config file: No such file or directory",
        "missing.yaml: 1 error",
    ]


def test_all_valid_exits_0(capsys):
    assert main(["check", "good.yaml", "good.yaml"]) == 0
    assert capsys.readouterr().out.count("OK") == 2


def test_print_shows_defaults_and_no_secret(capsys):
    assert main(["check", "--print", "good.yaml"]) == 0
    out = capsys.readouterr().out
    assert "  half_open_per_source: 5\n" in out
    assert "    life_time: 3960\n" in out
    assert "psk_file: b.psk" in out
    assert PSK.decode() not in out and PSK.hex() not in out


def test_printed_config_loads_to_the_same_effective_config(in_tmp):
    config = parse(BASE)
    text = effective_yaml(config)
    again = parse(text)
    assert effective_yaml(again) == text
    assert again.peers == config.peers or again.peers[0].auth == config.peers[0].auth


def test_print_of_a_manual_peer_hides_its_keys(capsys):
    text = BASE.replace(
        "    auth:\n      psk_file: b.psk\n",
        "    manual:\n      algorithm: aes128gcm16\n      spi_in: 0x1001\n      spi_out: 0x1002\n"
        "      key_file: lab.keys\n",
    )
    config = parse(text)
    shown = effective_yaml(config)
    assert "spi_in: '0x1001'" in shown and "key_file: lab.keys" in shown
    assert config.peers[0].manual.key_in.hex() not in shown
    assert effective_yaml(parse(shown)) == shown
