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
    put in our SA payload; ``spi_out`` the one the peer chose.  ``protocol``
    ``ah`` has no cipher (``encr`` None, empty encryption keys).  ``mode`` is
    ``tunnel`` or ``transport`` (RFC 4301 §4.1); ``encap`` True carries the
    SA's packets in UDP (RFC 3948), False directly over IP (protocol 50/51);
    ``nat``: IKE detected a NAT (or a peer forcing UDP encapsulation).
    """

    spi_in: int
    spi_out: int
    encr: EncrAlgorithm | None
    integ: IntegAlgorithm | None
    esn: bool
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    remote: Address
    name: str = ""  # the configured child it was negotiated for (peers[].children[].name)
    local: Address | None = None  # our IKE endpoint; None: the peer's local_address
    mode: str = "tunnel"
    protocol: str = "esp"
    encap: bool = True
    nat: bool = False  # a NAT was detected: transport mode fixes TCP/UDP checksums


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
    algorithm: str = ""  # the IKE proposal, additional key exchanges included (RFC 9370)
    auth: str = ""  # how each side authenticated, with the identities (and PPK, RFC 8784)


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
    """A CHILD_SA was deleted (RFC 7296 §1.4.1) and must be removed from the data plane.

    ``rekeyed``: a new CHILD_SA replaced it (§2.8), so its inbound side may still get what
    the peer sent before switching (the data plane keeps it a few seconds).
    """

    peer: str
    spi_in: int
    spi_out: int
    reason: str
    name: str = ""  # the configured child (peers[].children[].name)
    rekeyed: bool = False


@dataclass(frozen=True)
class IkeSaDeleted(Event):
    """The IKE SA is gone, and with it every CHILD_SA it created (RFC 7296 §1.4.1)."""

    peer: str
    reason: str


@dataclass(frozen=True)
class NegotiationFailed(Event):
    """A negotiation failed; ``reason`` is operator-readable text.  ``child``: the
    configured child whose CHILD_SA failed (None: the IKE SA, or every child with it)."""

    peer: str
    reason: str
    child: str | None = None


@dataclass(frozen=True)
class ChildSaNarrowed(Event):
    """The responder narrowed a CHILD_SA we proposed (RFC 7296 §2.9): traffic between
    ``local_uncovered`` and the child's remote_ts, or between its local_ts and
    ``remote_uncovered``, has no SA (address ranges; empty: that side is covered)."""

    peer: str
    child: str
    local_uncovered: tuple[TrafficSelector, ...]
    remote_uncovered: tuple[TrafficSelector, ...]


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
class PeerClosed(Event):
    """The peer deleted our last IKE SA with it (``what`` ``ike-sa``) or the last CHILD_SA
    of the configured child ``child`` (``child-sa``), RFC 7296 §1.4.1, and ``action`` is
    the ``close_action`` (of that child; for the IKE SA, the peer's, from its children's):
    ``start`` (the manager initiates again or re-creates the CHILD_SA), ``none``, or
    ``trap``: the shell arms the trap of the child (for the IKE SA: of each child whose
    close_action is trap), so the next packet for its selectors starts it again."""

    peer: str
    what: str
    action: str
    child: str | None = None  # child-sa: the configured child (its close_action)


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    """The peer's address or port changed (NAT rebinding, RFC 7296 §2.23).

    The shell must send ESP of this peer's CHILD_SAs to ``remote`` from now on.
    """

    peer: str
    local: Address
    remote: Address


@dataclass(frozen=True)
class UnauthenticatedFailure(Event):
    """A negotiation with an initiator that never authenticated failed (issue 12).

    Before IKE_AUTH completes a responder knows only where a request came from, so
    the failure is the source's (``source``: address and port), never a configured
    peer's: the shell logs and counts it (rate-limited per source) and leaves every
    peer's state and ``last_error`` alone.
    """

    source: Address
    reason: str


@dataclass(frozen=True)
class IkeRetransmit(Event):
    """Our request went unanswered and was sent again (RFC 7296 §2.1).

    ``number`` counts the retransmissions of this request (1 for the first), of at
    most ``limit``; ``next_timeout`` is how long we now wait before the next one (or
    before giving up after the last).
    """

    peer: str
    exchange: str
    message_id: int
    number: int
    limit: int
    next_timeout: float
    remote: Address
