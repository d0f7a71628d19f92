"""INFORMATIONAL exchanges (RFC 7296 §1.4): Delete and liveness checks.

strongSwan's ``child_delete``, ``ike_delete`` and ``ike_dpd`` tasks::

    HDR, SK {[N,] [D,] ...}  -->
                         <--  HDR, SK {[N,] [D,] ...}

* Deleting CHILD_SAs (§1.4.1): a Delete payload for protocol ESP lists the
  sender's *inbound* SPIs; the answer lists the responder's inbound SPIs of
  the same pairs.
* Deleting the IKE SA: a Delete payload for protocol IKE, no SPIs; the
  answer is empty and both sides then forget the IKE SA and its children.
* Liveness (§2.4): an empty request, answered with an empty response.
"""

from __future__ import annotations

from ipsecd.ike.constants import ExchangeType, ProtocolId
from ipsecd.ike.errors import AUTHENTICATION_FAILED
from ipsecd.ike.lifecycle import ChildEvent, ChildState, IkeEvent, IkeState
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import Delete, Payload
from ipsecd.ike.sa import IkeSa, TaskResult


class DeleteChildSa:
    """Initiator: delete CHILD_SAs identified by our inbound SPIs."""

    exchange_type = ExchangeType.INFORMATIONAL
    name = "INFORMATIONAL (delete CHILD_SA)"

    def __init__(self, spis_in: list[int], reason: str = "deleted locally") -> None:
        self.spis_in = spis_in
        self.reason = reason

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        spis = [s for s in self.spis_in if s in sa.children]
        if not spis:
            return None
        for spi in spis:
            if sa.children[spi].state in (
                ChildState.INSTALLED,
                ChildState.REKEYING,
                ChildState.REKEYED,
            ):
                sa.child_transition(sa.children[spi], ChildEvent.DELETE_SENT, now)
        self.spis_in = spis
        return [Delete(ProtocolId.ESP, tuple(spis))]

    def process_response(self, sa: IkeSa, message: Message | None, now: float) -> TaskResult:
        # Whatever the peer answers, our side of these CHILD_SAs is gone.
        for spi in self.spis_in:
            child = sa.children.get(spi)
            if child is not None:
                sa.remove_child(child, self.reason, now, ChildEvent.DELETED)
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        self.process_response(sa, None, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)


class DeleteIkeSa:
    """Initiator: delete the IKE SA (and implicitly all its CHILD_SAs, §1.4.1)."""

    exchange_type = ExchangeType.INFORMATIONAL
    name = "INFORMATIONAL (delete IKE SA)"

    def __init__(self, reason: str = "deleted locally") -> None:
        self.reason = reason

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        if sa.state is IkeState.ESTABLISHED:
            sa.transition(IkeEvent.DELETE_SENT, now)
        return [Delete(ProtocolId.IKE, ())]

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        sa.deleted(self.reason, now)
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.deleted(self.reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        # The peer is gone; deleting is what we wanted anyway.
        sa.deleted(f"{self.reason} (peer did not confirm: {reason})", now)


class LivenessCheck:
    """Initiator: an empty INFORMATIONAL request (RFC 7296 §2.4, strongSwan ``ike_dpd``)."""

    exchange_type = ExchangeType.INFORMATIONAL
    name = "INFORMATIONAL (liveness check)"

    def build_request(self, sa: IkeSa, now: float) -> list[Payload]:
        return []

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        sa.last_peer_activity = now
        return TaskResult.DONE

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(f"peer {sa.peer_name} is dead: {reason}", now)


def respond(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """Responder: process Delete payloads and notifies, answer (RFC 7296 §1.4.1)."""
    if message.notify(AUTHENTICATION_FAILED) is not None:
        # The initiator could not verify our AUTH (RFC 7296 §2.21.2).
        me = sa.peer.auth.local_id if sa.peer.auth is not None else "?"
        sa.after_response = lambda: sa.fail(
            f"peer {sa.peer_name} rejected our authentication (AUTHENTICATION_FAILED):"
            f" we are {me}; check the PSK and the identity the peer expects",
            now,
        )
        return []
    delete_ike = False
    ours: list[int] = []
    for delete in message.find_all(Delete):
        if delete.protocol_id == ProtocolId.IKE:
            delete_ike = True
        elif delete.protocol_id == ProtocolId.ESP:
            for spi_out in delete.spis:
                child = next((c for c in sa.children.values() if c.spi_out == spi_out), None)
                if child is None:
                    continue  # already gone (simultaneous delete): nothing to answer, §1.4.1
                if child.state is not ChildState.DELETING:
                    ours.append(child.spi_in)
                sa.remove_child(child, "deleted by peer", now, ChildEvent.DELETE_RECEIVED)
    if delete_ike:
        if sa.rekey_collision is not None:
            # The peer won a simultaneous rekey (§2.8.2) and deletes the old SA before our
            # own exchange ended (its answer lost or late): its new SA takes the children.
            sa.yield_to(sa.rekey_collision[0], now)
            sa.rekey_collision = None
        sa.after_response = lambda: sa.deleted("deleted by peer", now)
        return []
    return [Delete(ProtocolId.ESP, tuple(ours))] if ours else []
