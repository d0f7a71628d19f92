"""What the sans-I/O IKE layer tells its shell (the daemon).

Small immutable classes in the style of h11's events: the shell drains them
with :meth:`IkeManager.next_event` and reacts (install a CHILD_SA in the data
plane, remove it, log a failure).  Nothing here does I/O.

Outgoing datagrams are described by :class:`OutgoingDatagram`, which carries
what the shell needs to frame them (RFC 3948 §2.2 non-ESP marker for IKE on
the NAT-T port, no marker for the one-octet NAT-keepalive, RFC 3948 §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.selectors import TrafficSelector

Address = tuple[str, int]


@dataclass(frozen=True)
class OutgoingDatagram:
    """One UDP payload for the shell to send from ``local`` to ``remote``.

    ``marker`` says whether the shell must prepend the 4-byte non-ESP marker
    (RFC 3948 §2.2): True for IKE messages sent on the NAT-T port (4500),
    False for IKE on port 500.  A NAT-keepalive has ``keepalive`` True and no
    ``data``: its one octet is written by the NAT-T framing
    (:func:`ipsecd.esp.udp_encap.frame`), the one place that knows it.
    """

    data: bytes
    local: Address
    remote: Address
    marker: bool = False
    keepalive: bool = False


@dataclass(frozen=True)
class ChildSaParams:
    """Everything the data plane needs to install one CHILD_SA pair (RFC 7296 §2.17).

    ``*_in`` keys protect what the peer sends to us (we decrypt with them);
    ``*_out`` keys protect what we send.  ``spi_in`` is the SPI we chose and
    put in our SA payload; ``spi_out`` the one the peer chose.
    """

    spi_in: int
    spi_out: int
    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    esn: bool
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    remote: Address


class Event:
    """Base class of everything :meth:`IkeManager.next_event` returns."""

    __slots__ = ()


@dataclass(frozen=True)
class IkeSaEstablished(Event):
    """IKE_AUTH completed: the IKE SA is authenticated (RFC 7296 §1.2)."""

    peer: str
    local_spi: int
    remote_spi: int
    local: Address
    remote: Address
    nat_local: bool  # we are behind a NAT (RFC 7296 §2.23)
    nat_remote: bool  # the peer is behind a NAT


@dataclass(frozen=True)
class ChildSaEstablished(Event):
    """A CHILD_SA is fully negotiated and may be installed.

    ``outbound_active`` False: install the inbound SA only and keep sending
    with the SA this one replaces until :class:`ChildSaOutboundActivated`
    (the responder of a rekey, RFC 7296 §2.8: the initiator may not have
    the new inbound SA yet, and a redundant SA of a simultaneous rekey is
    never used).
    """

    peer: str
    child: ChildSaParams
    outbound_active: bool = True


@dataclass(frozen=True)
class ChildSaOutboundActivated(Event):
    """Start sending with the CHILD_SA whose inbound SPI is ``spi_in`` (installed earlier
    with ``outbound_active=False``): the SA it replaced is gone."""

    peer: str
    spi_in: int


@dataclass(frozen=True)
class ChildSaDeleted(Event):
    """A CHILD_SA was deleted (RFC 7296 §1.4.1) and must be removed from the data plane."""

    peer: str
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class IkeSaDeleted(Event):
    """The IKE SA is gone, and with it every CHILD_SA it created (RFC 7296 §1.4.1)."""

    peer: str
    reason: str


@dataclass(frozen=True)
class NegotiationFailed(Event):
    """A negotiation failed; ``reason`` is operator-readable text."""

    peer: str
    reason: str


@dataclass(frozen=True)
class PeerDead(Event):
    """Dead peer detection gave up on ``peer`` (RFC 7296 §2.4); its SAs are gone.

    ``action`` is its ``dpd_action``: ``restart`` (initiating again already), ``clear``
    (stays down) or ``hold``: the shell arms the peer's trap, so the next packet for
    its selectors starts it again (``initiate(peer, now, on_demand=True)``).
    """

    peer: str
    action: str


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    """The peer's address or port changed (NAT rebinding, RFC 7296 §2.23).

    The shell must send ESP of this peer's CHILD_SAs to ``remote`` from now on.
    """

    peer: str
    local: Address
    remote: Address
