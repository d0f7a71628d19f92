"""OS errors that say where they happened: the address, device or file.

``[Errno 99] Cannot assign requested address`` alone leaves an operator guessing which
of the daemon's sockets failed; :class:`OSErrorAt` reads
``cannot bind UDP 192.0.2.1:500: [Errno 99] Cannot assign requested address``.  It stays
an :class:`OSError` with the original ``errno``, so callers that catch ``OSError`` (or
test ``errno``) keep working.  Every layer may import this module.
"""

from __future__ import annotations

import os


class OSErrorAt(OSError):
    """``OSErrorAt("cannot bind UDP 192.0.2.1:500", exc)``: ``exc`` with what failed where.

    The cause is written as ``[Errno N] text`` from its errno alone: messages that wrap an
    errno themselves (asyncio's ``error while attempting to bind on address ('::1', 9810,
    0, 0): ...``) would otherwise bring their tuples back in.
    """

    def __init__(self, what: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.what = what
        if cause.errno is not None:
            self.cause = f"[Errno {cause.errno}] {os.strerror(cause.errno)}"
        else:
            self.cause = str(cause) or type(cause).__name__

    def __str__(self) -> str:
        return f"{self.what}: {self.cause}"
