"""The IKE SA table of a manager: by our SPI (RFC 7296 §2.6), and by peer.

strongSwan's ``ike_sa_manager`` without the locking: messages find their IKE SA by
the SPI we chose; the peer policy and the status find a peer's SAs through an
index kept in the order the SAs entered the table, so nothing scans every SA.
"""

from __future__ import annotations

from collections.abc import Iterator

from ipsecd.ike.sa import IkeSa


class SaTable:
    """Every IKE SA of one manager (see the module docstring)."""

    def __init__(self) -> None:
        self.by_spi: dict[int, IkeSa] = {}
        self._by_peer: dict[str, dict[int, int]] = {}  # peer -> our SPI -> serial
        self._peer_of: dict[int, str] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self.by_spi)

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(list(self.by_spi.values()))

    def get(self, spi: int) -> IkeSa | None:
        return self.by_spi.get(spi)

    def holds(self, sa: IkeSa) -> bool:
        return self.by_spi.get(sa.local_spi) is sa

    def add(self, sa: IkeSa) -> None:
        if self.holds(sa):
            return
        self.by_spi[sa.local_spi] = sa
        self._serial += 1
        self._peer_of.pop(sa.local_spi, None)
        self.reindex(sa)

    def reindex(self, sa: IkeSa) -> None:
        """Follow ``sa`` to its peer (a responder SA learns its peer in IKE_AUTH)."""
        spi, name = sa.local_spi, sa.peer_name
        old = self._peer_of.get(spi)
        if old == name:
            return
        serial = self._serial
        if old is not None:
            serial = self._by_peer[old].pop(spi)
        self._peer_of[spi] = name
        self._by_peer.setdefault(name, {})[spi] = serial

    def remove(self, sa: IkeSa) -> bool:
        """Forget ``sa``; False if it was never in the table (a refused IKE_SA_INIT)."""
        spi = sa.local_spi
        if not self.holds(sa):
            return False
        del self.by_spi[spi]
        name = self._peer_of.pop(spi, None)
        if name is not None:
            self._by_peer[name].pop(spi, None)
            if not self._by_peer[name]:
                del self._by_peer[name]
        return True

    def of_peer(self, peer: str) -> list[IkeSa]:
        """The SAs of ``peer`` in the order they entered the table (O(k log k), k small)."""
        index = self._by_peer.get(peer)
        if not index:
            return []
        found = (self.by_spi.get(spi) for spi in sorted(index, key=index.__getitem__))
        return [sa for sa in found if sa is not None]
