"""Dead peer detection and restart recovery (RFC 7296 §2.4, §2.21.4), sans-I/O.

strongSwan's ``ike_dpd`` task and its ``dpd_delay``/``dpd_action`` settings:

* **Liveness.**  When nothing came in from the peer for ``dpd_delay``
  seconds (no IKE message, no ESP packet: the shell reports inbound ESP
  through ``IkeManager.child_usage(..., packets_in=...)``), an empty
  INFORMATIONAL request goes out.  It is retransmitted on the normal schedule
  (``gateway.retransmit_timeout``/``retransmit_tries``); no answer means the
  peer is dead, and so does any other unanswered request of an established
  IKE SA.  ``dpd_action`` then decides: ``restart`` (initiate again at once),
  ``clear`` (stay down) or ``hold`` (the manager reports ``PeerDead`` and the
  shell arms the peer's trap, as for ``start: trap``: the next packet for its
  selectors initiates it; or the peer itself comes back).
* **INITIAL_CONTACT.**  The first IKE SA with a peer carries N(INITIAL_CONTACT)
  in its IKE_AUTH request; a peer that sends it has forgotten every other IKE
  SA with us (it restarted), so those are removed without a Delete.
* **Duplicates.**  When both ends initiate at once (both restart after an
  outage), two IKE SAs come up; the one with the smaller (SPIi, SPIr) is
  deleted by both ends, which pick the same one.
* **INVALID_IKE_SPI.**  A request for an IKE SA we do not know (the peer's SA
  outlived our restart) is answered, unprotected and rate limited, with
  N(INVALID_IKE_SPI).  Receiving one is only a hint, since anyone could have
  sent it (§2.21.4): the IKE SA it names is left alone, but with
  ``dpd_action: restart`` a new IKE SA with INITIAL_CONTACT is set up beside
  it and replaces it once up (``IkeManager.initiate(..., replace=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ipsecd.ike import message as codec
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.events import Address, OutgoingDatagram
from ipsecd.ike.exchanges.informational import LivenessCheck
from ipsecd.ike.payloads import Notify
from ipsecd.ike.sa import IkeSa, IkeState

INVALID_SPI_RATE = 10  # INVALID_IKE_SPI answers per second at most (all sources together)
INVALID_SPI_RESPONSE_LEN = 36  # IKE header + a Notify without SPI or data


def last_seen(sa: IkeSa) -> float:
    """When the peer last proved it is alive (IKE or ESP from it), or the SA came up."""
    return max(sa.last_peer_activity, sa.established_at or sa.created_at)


def due(sa: IkeSa) -> float | None:
    """When the next liveness check is due; None while one is pointless.

    An outstanding request already checks liveness through its retransmissions.
    """
    delay = sa.peer.dpd_delay
    if (
        not delay
        or sa.state is not IkeState.ESTABLISHED
        or sa.rekeyed_to is not None
        or sa.outstanding is not None
        or sa.tasks
    ):
        return None
    return last_seen(sa) + delay


def check(sa: IkeSa, now: float) -> None:
    """Send the liveness check if the peer has been silent for ``dpd_delay``."""
    when = due(sa)
    if when is not None and now >= when:
        sa.count("dpd_checks_sent")
        sa.queue(LivenessCheck(), now)


def describe(sa: IkeSa) -> dict[str, object]:
    """DPD part of ``IkeManager.status()``."""
    delay = sa.peer.dpd_delay
    checking = sa.outstanding is not None and isinstance(sa.outstanding.task, LivenessCheck)
    return {
        "dpd_delay": delay,
        "dpd": "off" if not delay else "checking" if checking else "idle",
        "last_seen": last_seen(sa),
    }


def _settled(sa: IkeSa) -> bool:
    return (
        sa.state is IkeState.ESTABLISHED
        and sa.rekeyed_to is None
        and not sa.rekey_queued
        and not sa.replace_others
    )


def duplicate(sa: IkeSa, others: Iterable[IkeSa]) -> IkeSa | None:
    """The IKE SA to delete if ``sa``, just authenticated, duplicates another one with
    the same peer (crossing initiations).  RFC 7296 allows several, but one is enough:
    both ends pick the smaller (SPIi, SPIr) and Delete it (§1.4.1; simultaneous Deletes
    of one SA are answered normally).  None while a rekey is under way."""
    if not _settled(sa):
        return None
    for other in others:
        if other is not sa and other.peer_name == sa.peer_name and _settled(other):
            return min(sa, other, key=lambda s: (s.spi_i, s.spi_r))
    return None


class InvalidSpiResponder:
    """Answers requests for unknown IKE SAs with N(INVALID_IKE_SPI), at most
    :data:`INVALID_SPI_RATE` per second so it never serves as a reflector."""

    def __init__(self, rate: int = INVALID_SPI_RATE) -> None:
        self.rate = rate
        self._second = -1
        self._sent = 0

    def answer(
        self,
        header: codec.Header,
        request_len: int,
        local: Address,
        remote: Address,
        natt_port: int,
        now: float,
    ) -> OutgoingDatagram | None:
        """The response for ``header`` (a request), or None when not answered.

        Only protected exchanges (IKE_AUTH .. INFORMATIONAL) at least as long as the
        answer (no amplification), within the rate.  Same SPIs and message id, R flag
        set, I flag flipped (we answer as the other end), no SK payload: we have no
        keys (§2.21.4).
        """
        if not ExchangeType.IKE_AUTH <= header.exchange_type <= ExchangeType.INFORMATIONAL:
            return None
        if request_len < INVALID_SPI_RESPONSE_LEN:
            return None
        second = int(now)
        if second != self._second:
            self._second, self._sent = second, 0
        if self._sent >= self.rate:
            return None
        self._sent += 1
        data = codec.encode(
            codec.Message(
                spi_i=header.spi_i,
                spi_r=header.spi_r,
                exchange_type=ExchangeType.INFORMATIONAL,
                initiator=not header.initiator,
                response=True,
                message_id=header.message_id,
                payloads=(Notify(NotifyType.INVALID_IKE_SPI),),
            )
        )
        return OutgoingDatagram(data, local, remote, marker=local[1] == natt_port)
