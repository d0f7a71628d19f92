"""The systemd notify protocol (sd_notify(3)): datagrams to $NOTIFY_SOCKET.

A few lines, so written here rather than pulled in: READY=1, STATUS=…,
WATCHDOG=1, RELOADING=1, STOPPING=1.  Without NOTIFY_SOCKET every call is a
no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # A leading '@' names an abstract socket.
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        if self._sock is None or self.address is None:
            return False
        # A newline inside a value would start a new field: flatten it.
        message = "\n".join(
            f"{k.upper()}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()
        )
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds, when systemd asks for pings (sd_watchdog_enabled)."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2_000_000 if value > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
