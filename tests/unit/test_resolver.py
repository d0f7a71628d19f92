"""The shell's DNS resolver: system lookups bounded in time, the last answer kept."""

from __future__ import annotations

import ipaddress
import socket
import threading

import pytest

from ipsecd.daemon import resolver as resolver_module
from ipsecd.daemon.resolver import SystemResolver, lookup


def test_lookup_asks_the_system_in_one_ip_version():
    assert lookup("localhost", 4) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(OSError):
        lookup("does-not-exist.invalid", 4)


def test_a_slow_lookup_is_bounded_and_its_answer_kept(monkeypatch):
    release = threading.Event()
    answers = {"gw.example.org": ["192.0.2.9"]}

    def slow(name: str, version: int):
        release.wait(5)
        if name not in answers:
            raise socket.gaierror(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in answers[name]]

    monkeypatch.setattr(resolver_module, "lookup", slow)
    r = SystemResolver(timeout=0.05)
    try:
        with pytest.raises(OSError, match="no answer within 0.05 s"):
            r("gw.example.org", 4)
        release.set()
        assert r("gw.example.org", 4) == [ipaddress.ip_address("192.0.2.9")]  # the late answer
        del answers["gw.example.org"]  # the record goes away for a moment
        assert r("gw.example.org", 4) == [ipaddress.ip_address("192.0.2.9")]  # the last one
        with pytest.raises(OSError):
            r("other.example.org", 4)
    finally:
        r.close()
