"""DNS lookups for peers written with a name (``remote_address: vpn.example.org``).

The IKE layer asks for a peer's address at every initiation (start, each retry) through
the resolver the shell hands the daemon core (:class:`~ipsecd.daemon.core.DaemonCore`'s
``resolver``); tests hand in a table instead.  This one asks the system
(``getaddrinfo``: /etc/hosts, DNS, nsswitch) in a worker thread and waits at most
``timeout`` seconds, so a DNS server that does not answer stalls the event loop (and the
data plane) for that long at worst.  A lookup that ran out of time keeps running; its
answer is kept and given to the next question for the same name, as is the last answer
when a lookup fails (the record may be gone for a moment).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import threading

from ipsecd.config.schema import IpAddress

DEFAULT_TIMEOUT = 2.0


def lookup(name: str, version: int) -> list[IpAddress]:
    """``getaddrinfo`` for ``name`` in one IP version: its addresses in the system's order.

    Raises OSError (``socket.gaierror``) when the name does not resolve.
    """
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
    found: list[IpAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in found:
            found.append(address)
    return found


class SystemResolver:
    """The daemon's resolver: the system's lookup, bounded in time (module docstring)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        # Made by the first lookup: most configs name no host, and the pool's module
        # (concurrent.futures.thread, with queue) then stays unimported.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int], list[IpAddress]] = {}
        self._running: dict[tuple[str, int], concurrent.futures.Future[list[IpAddress]]] = {}

    def __call__(self, name: str, version: int) -> list[IpAddress]:
        key = (name, version)
        with self._lock:
            future = self._running.get(key)
            if future is None:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="ipsecd-dns"
                    )
                future = self._pool.submit(lookup, name, version)
                self._running[key] = future
        future.add_done_callback(lambda done: self._done(key, done))
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                last = self._last.get(key)
            if last:
                return last
            raise OSError(f"no answer within {self.timeout:g} s") from None
        except OSError:
            with self._lock:
                last = self._last.get(key)
            if last:
                return last
            raise

    def _done(
        self, key: tuple[str, int], future: concurrent.futures.Future[list[IpAddress]]
    ) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]
            if not future.cancelled() and future.exception() is None:
                self._last[key] = future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
