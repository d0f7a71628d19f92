"""The lifecycle of an IKE SA and of a CHILD_SA: states, events, transitions, deadlines.

One table per SA kind, in the style of h11's state machine: a reader can
check every line against RFC 7296, and ``grep`` finds each transition here
and nowhere else (``IkeSa.transition`` and ``ChildSa.transition`` are the
only writers of ``state``).

IKE SA (RFC 7296 §1.2, §1.4.1, §2.6, §2.18)::

    state        event            next         who / why
    CREATED      INIT_SENT        INIT_SENT    initiator: IKE_SA_INIT request out (§1.2)
    INIT_SENT    INIT_RETRY       INIT_SENT    COOKIE (§2.6) or INVALID_KE_PAYLOAD (§1.3)
    INIT_SENT    AUTH_SENT        AUTH_SENT    IKE_SA_INIT answered, IKE_AUTH request out
    CREATED      INIT_ANSWERED    HALF_OPEN    responder: IKE_SA_INIT answered
    AUTH_SENT    AUTH_DONE        ESTABLISHED  initiator: IKE_AUTH response verified
    HALF_OPEN    AUTH_DONE        ESTABLISHED  responder: IKE_AUTH request verified
    CREATED      REKEY_DONE       ESTABLISHED  the successor of a rekeyed IKE SA (§2.18)
    ESTABLISHED  DELETE_SENT      DELETING     our Delete is outstanding (§1.4.1)
    any          DELETED          DELETED      a Delete exchange done (either side), or
                                               a stateless end (INVALID_KE_PAYLOAD, §1.3)
    any          FAILED           DELETED      negotiation or liveness failure
    any          TIMEOUT          DELETED      the state's deadline passed

CHILD_SA (RFC 7296 §1.3, §1.4.1, §2.8)::

    CREATING   ESTABLISHED      INSTALLED
    CREATING   FAILED           DELETED
    INSTALLED  REKEY_STARTED    REKEYING   our CREATE_CHILD_SA with N(REKEY_SA) is out
    REKEYING   REKEY_FAILED     INSTALLED  refused or collided; retried later
    INSTALLED  REKEYED          REKEYED    replaced by the peer's rekey (§2.8)
    REKEYING   REKEYED          REKEYED    replaced by our rekey (or the peer's, §2.8.1)
    REKEYED    REKEYED          REKEYED
    INSTALLED  DELETE_SENT      DELETING
    REKEYING   DELETE_SENT      DELETING
    REKEYED    DELETE_SENT      DELETING
    INSTALLED  DELETE_RECEIVED  DELETED
    REKEYING   DELETE_RECEIVED  DELETED
    REKEYED    DELETE_RECEIVED  DELETED
    DELETING   DELETE_RECEIVED  DELETED
    DELETING   DELETED          DELETED    our Delete answered
    any live   IKE_GONE         DELETED    its IKE SA ended (§1.4.1)
    any        TIMEOUT          DELETED    the state's deadline passed

**Every state that is neither final nor steady has a deadline**, set by
:func:`ike_deadline` / :func:`child_deadline` when the state is entered and
enforced by the manager's timer.  The steady states (ESTABLISHED, INSTALLED)
end by their lifetimes (``rekey_time``, ``life_time``, RFC 7296 §2.8) and by
dead peer detection (§2.4) instead.  The retransmission schedule normally ends
an exchange first; a deadline is the backstop that no code path can forget,
and the only end of a HALF_OPEN responder SA (§2.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar


class IkeState(Enum):
    """IKE SA states (RFC 7296 §1.2 exchange order)."""

    CREATED = "created"  # initiator: nothing sent yet; responder: request being answered
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request outstanding
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request outstanding
    ESTABLISHED = "established"
    DELETING = "deleting"  # we sent a Delete for the IKE SA
    DELETED = "deleted"  # final: gone (deleted, failed or timed out)


class IkeEvent(Enum):
    INIT_SENT = "init_sent"
    INIT_RETRY = "init_retry"
    INIT_ANSWERED = "init_answered"
    AUTH_SENT = "auth_sent"
    AUTH_DONE = "auth_done"
    REKEY_DONE = "rekey_done"
    DELETE_SENT = "delete_sent"
    DELETED = "deleted"
    FAILED = "failed"
    TIMEOUT = "timeout"


_S, _E = IkeState, IkeEvent

IKE_TRANSITIONS: dict[tuple[IkeState, IkeEvent], IkeState] = {
    (_S.CREATED, _E.INIT_SENT): _S.INIT_SENT,
    (_S.INIT_SENT, _E.INIT_RETRY): _S.INIT_SENT,
    (_S.INIT_SENT, _E.AUTH_SENT): _S.AUTH_SENT,
    (_S.CREATED, _E.INIT_ANSWERED): _S.HALF_OPEN,
    (_S.AUTH_SENT, _E.AUTH_DONE): _S.ESTABLISHED,
    (_S.HALF_OPEN, _E.AUTH_DONE): _S.ESTABLISHED,
    (_S.CREATED, _E.REKEY_DONE): _S.ESTABLISHED,
    (_S.ESTABLISHED, _E.DELETE_SENT): _S.DELETING,
    **{(s, _E.DELETED): _S.DELETED for s in IkeState},
    **{(s, _E.FAILED): _S.DELETED for s in IkeState},
    **{(s, _E.TIMEOUT): _S.DELETED for s in IkeState},
}


class ChildState(Enum):
    CREATING = "creating"
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA with N(REKEY_SA) is outstanding
    REKEYED = "rekeyed"  # replaced by a new CHILD_SA, waiting for the Delete
    DELETING = "deleting"
    DELETED = "deleted"


class ChildEvent(Enum):
    ESTABLISHED = "established"
    FAILED = "failed"
    REKEY_STARTED = "rekey_started"
    REKEY_FAILED = "rekey_failed"
    REKEYED = "rekeyed"
    DELETE_SENT = "delete_sent"
    DELETE_RECEIVED = "delete_received"
    DELETED = "deleted"
    IKE_GONE = "ike_gone"
    TIMEOUT = "timeout"


_C, _CE = ChildState, ChildEvent

#: States in which the data plane holds the SA (it was announced by ChildSaEstablished).
LIVE_STATES = frozenset({_C.INSTALLED, _C.REKEYING, _C.REKEYED, _C.DELETING})

CHILD_TRANSITIONS: dict[tuple[ChildState, ChildEvent], ChildState] = {
    (_C.CREATING, _CE.ESTABLISHED): _C.INSTALLED,
    (_C.CREATING, _CE.FAILED): _C.DELETED,
    (_C.INSTALLED, _CE.REKEY_STARTED): _C.REKEYING,
    (_C.REKEYING, _CE.REKEY_FAILED): _C.INSTALLED,
    (_C.INSTALLED, _CE.REKEYED): _C.REKEYED,
    (_C.REKEYING, _CE.REKEYED): _C.REKEYED,
    (_C.REKEYED, _CE.REKEYED): _C.REKEYED,
    (_C.INSTALLED, _CE.DELETE_SENT): _C.DELETING,
    (_C.REKEYING, _CE.DELETE_SENT): _C.DELETING,
    (_C.REKEYED, _CE.DELETE_SENT): _C.DELETING,
    (_C.INSTALLED, _CE.DELETE_RECEIVED): _C.DELETED,
    (_C.REKEYING, _CE.DELETE_RECEIVED): _C.DELETED,
    (_C.REKEYED, _CE.DELETE_RECEIVED): _C.DELETED,
    (_C.DELETING, _CE.DELETE_RECEIVED): _C.DELETED,
    (_C.DELETING, _CE.DELETED): _C.DELETED,
    **{(s, _CE.IKE_GONE): _C.DELETED for s in (_C.CREATING, *LIVE_STATES)},
    **{(s, _CE.TIMEOUT): _C.DELETED for s in ChildState},
}


class IllegalTransition(RuntimeError):
    """A bug: the code asked for a transition the table does not have."""


@dataclass(frozen=True)
class RetransmitPolicy:
    """RFC 7296 §2.1 retransmission timing, and the deadlines derived from it.

    The request is resent ``initial * factor**n`` seconds after the previous
    send, ``max_retransmits`` times; after the last wait the peer is declared
    dead.  Defaults: 0.5, 1, 2, ... 64 s, 7 retransmits, giving up after
    127.5 s.  ``retry_pause`` is how long an initiating peer waits before the
    next connection attempt; ``half_open_timeout`` how long a responder keeps
    an SA that never saw IKE_AUTH (§2.6).
    """

    initial: float = 0.5
    factor: float = 2.0
    max_retransmits: int = 7
    retry_pause: float = 30.0
    half_open_timeout: float = 30.0

    def give_up_after(self) -> float:
        return sum(self.initial * self.factor**n for n in range(self.max_retransmits + 1))

    @property
    def exchange_deadline(self) -> float:
        """Backstop for a state that waits for one exchange: the whole retransmission
        schedule plus one initial interval (the schedule ends the exchange first)."""
        return self.give_up_after() + self.initial


def ike_deadline(state: IkeState, policy: RetransmitPolicy) -> float | None:
    """Seconds an IKE SA may stay in ``state``; None for the steady and final states."""
    if state is IkeState.HALF_OPEN:
        return policy.half_open_timeout
    if state in (IkeState.CREATED, IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.DELETING):
        return policy.exchange_deadline
    return None  # ESTABLISHED: lifetimes and DPD; DELETED: final


def child_deadline(state: ChildState, policy: RetransmitPolicy) -> float | None:
    """Seconds a CHILD_SA may stay in ``state``; None for the steady and final states.

    REKEYED waits for the Delete of whoever initiated the surviving rekey (§2.8):
    two exchange deadlines, since that Delete may wait behind one other exchange.
    """
    if state in (ChildState.CREATING, ChildState.REKEYING, ChildState.DELETING):
        return policy.exchange_deadline
    if state is ChildState.REKEYED:
        return 2 * policy.exchange_deadline
    return None  # INSTALLED: lifetimes; DELETED: final


S = TypeVar("S", IkeState, ChildState)
E = TypeVar("E", IkeEvent, ChildEvent)


def _next(table: Mapping[tuple[S, E], S], state: S, event: E, what: str) -> S:
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"{what}: no transition {event.value!r} from {state.value}"
        ) from None


def next_ike_state(state: IkeState, event: IkeEvent, what: str) -> IkeState:
    """The state ``event`` leads to from ``state`` (IllegalTransition: a bug)."""
    return _next(IKE_TRANSITIONS, state, event, f"IKE SA {what}")


def next_child_state(state: ChildState, event: ChildEvent, what: str) -> ChildState:
    return _next(CHILD_TRANSITIONS, state, event, f"CHILD_SA {what}")
