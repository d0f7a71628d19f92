"""Addresses as ADDR:PORT (``[v6]:port``), never tuples; OS errors that say where."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from ipsecd.addresses import format_address
from ipsecd.dataplane.udp import UdpSocket
from ipsecd.oserrors import OSErrorAt


@pytest.mark.parametrize(
    ("address", "port", "text"),
    [
        (("192.0.2.1", 500), None, "192.0.2.1:500"),
        (("2001:db8::1", 4500), None, "[2001:db8::1]:4500"),
        (("2001:db8::1", 4500, 0, 0), None, "[2001:db8::1]:4500"),  # an AF_INET6 sockaddr
        ("192.0.2.1", 500, "192.0.2.1:500"),
        (ipaddress.ip_address("2001:db8::2"), 500, "[2001:db8::2]:500"),
        (ipaddress.ip_address("2001:db8::2"), None, "2001:db8::2"),
        ((ipaddress.ip_address("198.51.100.7"), 4500), None, "198.51.100.7:4500"),
    ],
)
def test_format_address(address, port, text) -> None:
    assert format_address(address, port) == text


def test_os_error_at_keeps_errno_and_says_where() -> None:
    cause = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    exc = OSErrorAt("cannot bind UDP 192.0.2.1:500", cause)
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL
    assert str(exc) == "cannot bind UDP 192.0.2.1:500: [Errno 99] Cannot assign requested address"


def test_os_error_at_drops_the_tuples_of_wrapped_messages() -> None:
    """asyncio writes the address as a tuple into its own message: only the errno stays."""
    cause = OSError(98, "error while attempting to bind on address ('::1', 9810, 0, 0): in use")
    assert str(OSErrorAt("cannot listen on [::1]:9810 (metrics)", cause)) == (
        "cannot listen on [::1]:9810 (metrics): [Errno 98] Address already in use"
    )
    assert str(OSErrorAt("x", OSError("no errno"))) == "x: no errno"


def test_bind_failure_names_the_endpoint() -> None:
    with pytest.raises(OSError) as info:
        UdpSocket("192.0.2.1", 500)  # TEST-NET-1: not an address of this machine
    assert str(info.value) == (
        "cannot bind UDP 192.0.2.1:500: [Errno 99] Cannot assign requested address"
    )
    assert info.value.errno == errno.EADDRNOTAVAIL


def test_bind_failure_in_use_names_the_endpoint() -> None:
    first = UdpSocket("127.0.0.1", 0)
    port = first.sock.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf"^cannot bind UDP 127\.0\.0\.1:{port}: \[Errno 98\]"):
            UdpSocket("127.0.0.1", port)
    finally:
        first.close()
