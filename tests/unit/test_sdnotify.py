"""ipsecd.daemon.sdnotify.Notifier against a fake $NOTIFY_SOCKET (sd_notify(3)).

systemd listens on an AF_UNIX datagram socket named by $NOTIFY_SOCKET: a file
system path, or an abstract name written with a leading ``@``.  Each
notification is one datagram of newline-separated ``VARIABLE=value``
assignments.  Here a test binds that socket itself and reads what the
Notifier sends.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecd.daemon.sdnotify import Notifier


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A file-system NOTIFY_SOCKET, as systemd uses (/run/systemd/notify)."""
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract NOTIFY_SOCKET: ``@name`` in the variable, ``\\0name`` on the wire."""
    name = f"ipsecd-test-notify-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    yield "@" + name, sock
    sock.close()


def test_ready_and_status_in_one_datagram(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.enabled
    assert notifier.notify(ready=1, status="1 of 2 tunnels up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=1 of 2 tunnels up"
    notifier.close()


def test_address_from_environment(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier()
    assert notifier.enabled and notifier.address == address
    assert notifier.notify(status="starting")
    assert sock.recv(4096) == b"STATUS=starting"
    notifier.close()


def test_abstract_socket(
    abstract_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier()
    assert notifier.address == "\0" + address[1:]
    assert notifier.notify(ready=1)
    assert sock.recv(4096) == b"READY=1"
    notifier.close()


def test_watchdog_reloading_stopping(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.notify(watchdog=1)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.notify(watchdog=1, status="2 of 2 tunnels up")
    assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=2 of 2 tunnels up"
    assert notifier.notify(reloading=1)
    assert sock.recv(4096) == b"RELOADING=1"
    assert notifier.notify(stopping=1)
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.address is None
    assert notifier.notify(ready=1, status="x") is False
    assert notifier.notify(watchdog=1) is False
    notifier.close()  # harmless
    assert Notifier("").enabled is False


def test_vanished_listener_does_not_raise(tmp_path: Path) -> None:
    """systemd gone (or socket removed): notify reports False, the daemon keeps running."""
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.enabled
    assert notifier.notify(ready=1) is False
    notifier.close()


def test_closed_notifier_is_a_no_op(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    notifier.close()
    assert not notifier.enabled
    assert notifier.notify(ready=1) is False
    notifier.close()  # twice is fine
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


# -- watchdog_interval (sd_watchdog_enabled(3)) ----------------------------------------------
def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # WatchdogSec=30s
    assert Notifier().watchdog_interval() == 15.0


def test_watchdog_interval_for_this_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 1.0


def test_watchdog_meant_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier().watchdog_interval() is None


@pytest.mark.parametrize("usec", [None, "", "soon"])
def test_no_watchdog(monkeypatch: pytest.MonkeyPatch, usec: str | None) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert Notifier().watchdog_interval() is None


@pytest.mark.parametrize("usec", ["0", "-5"])
def test_non_positive_watchdog_usec_is_no_watchdog(
    monkeypatch: pytest.MonkeyPatch, usec: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert Notifier().watchdog_interval() is None
