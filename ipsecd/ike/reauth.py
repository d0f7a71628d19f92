"""Reauthentication and crossing initiations: which IKE SA survives (RFC 7296 §2.8.3, §2.4).

Two IKE SAs with one peer come up in two ways that look alike on the wire:

* **reauthentication** (§2.8.3): a side with an established IKE SA sets up a new one (a
  full IKE_AUTH, new CHILD_SAs) and deletes the old one once the new one stands
  (make-before-break: strongSwan's ``make_before_break = yes``, its default from 6.0, and
  ipsecd's ``reauth_time``).  The new IKE SA *replaces* the old one: the side that
  started it deletes the old one; the other side keeps both until then, or for
  :data:`REAUTH_GRACE` seconds;
* **crossing initiations**: both ends initiate at once (start-up, both restarting after
  an outage); one of the two pairs must go, and both ends must pick the same one: the
  smaller (SPIi, SPIr) is deleted, by both ends.

The rules, applied by the manager when an IKE SA authenticates (:func:`classify`):

1. an IKE SA we initiated: if it reauthenticates one of ours, that one is replaced by it;
   any other established IKE SA of the peer crossed it, and every pair but the largest
   is deleted (:func:`crossing_losers`);
2. an IKE SA the peer initiated while no initiation of ours is outstanding, and that
   began (its IKE_SA_INIT arrived) before, or less than :data:`CROSSING_WINDOW` seconds
   after, an IKE SA we initiated was established: it crossed ours (its IKE_SA_INIT was a
   retransmission of an initiation the peer began before ours was up), and we decide as
   in rule 1 (:func:`crossed_ours`).  The peer may decide too: an ipsecd peer applies
   rule 1 to the same two pairs and picks the same one; strongSwan with ``unique = no``
   (swanctl's default) keeps every IKE SA and decides nothing, so we must;
3. an IKE SA the peer initiated otherwise while no initiation of ours is outstanding:
   it replaces our established IKE SAs with the peer (the peer reauthenticates: it
   deletes the old ones once its new CHILD_SAs stand);
4. an IKE SA the peer initiated while an initiation of ours is outstanding: a crossing,
   decided by rule 1 when ours authenticates (on this end, or on the peer's).

Why both ends always end with the same pair: of the two crossing IKE SAs, each end
authenticates the peer's before it gets the answer to its own unless the answers
crossed; the IKE_AUTH response of one SA leaves its responder only after the request
arrived, so at least one end authenticates its own SA last and applies rule 1 with
both present.  The other end applied rule 2 (the same decision), rule 3 (kept the new
one, waits: the crossing came late) or rule 4 (waits) and follows the Delete.

Telling rule 2 from rule 3 takes a clock: on the wire, a crossing IKE_SA_INIT retransmitted
after ours was established looks like a reauthentication's.  A peer does not reauthenticate
an IKE SA seconds after setting it up, so an IKE SA that young was crossed.  A crossing that
comes later still ends with one pair: rule 3 keeps the peer's, and the old one is deleted
after :data:`REAUTH_GRACE` seconds when the peer does not.

N(INITIAL_CONTACT) (§2.4) must not undo this: it is sent only while the sender has no
other established IKE SA with us (decided when IKE_AUTH is built, :func:`no_initial_contact`),
and only IKE SAs established before the new one's IKE_SA_INIT arrived are taken as forgotten
(:func:`forgotten_by`); a crossing IKE SA of ours is established after that.
"""

from __future__ import annotations

from collections.abc import Iterable

from ipsecd.ike.child import ChildSa
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.exchanges.create_child import CreateChildSa
from ipsecd.ike.lifecycle import LIVE_STATES, IkeState
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import Payload
from ipsecd.ike.sa import IkeSa, ReauthComplete, TaskResult

#: Seconds a peer may take to delete the IKE SA its reauthentication replaced.  strongSwan
#: deletes it as soon as the new CHILD_SAs stand; after this long we delete it ourselves.
REAUTH_GRACE = 10.0

#: Seconds after an IKE SA of ours was established within which an IKE SA the peer began
#: crossed it rather than reauthenticates it (rule 2).  Longer than the gap between our
#: establishment and the peer's next retransmission of a crossing IKE_SA_INIT when the
#: peer retransmits quickly (0.1-1.2 s measured with charon at 1 s), and clear of the
#: shortest reauth_time in the interop tests (5 s: at 5.0 charon's reauthentications
#: were sometimes taken for crossings and deleted).  A crossing retransmitted later (strongSwan's
#: default first retransmission is at 4 s) is rule 3's: one pair is left after
#: :data:`REAUTH_GRACE`.
CROSSING_WINDOW = 3.0

#: Seconds we keep an IKE SA of ours that lost a crossing we decided as the responder of
#: the winner (rule 2), so that the peer has our IKE_AUTH response, and the winner's
#: CHILD_SAs, before the loser's go.  An ipsecd peer deletes it at once (rule 1).
CROSSING_GRACE = 2.0

#: An initiation of ours that has not authenticated yet.
_INITIATING = (IkeState.CREATED, IkeState.INIT_SENT, IkeState.AUTH_SENT)


def settled(sa: IkeSa) -> bool:
    """Established and nothing under way that would replace it (a rekey, a restart)."""
    return (
        sa.state is IkeState.ESTABLISHED
        and sa.rekeyed_to is None
        and not sa.rekey_queued
        and not sa.replace_others
        and not sa.collision_pending
    )


def initiating(sa: IkeSa) -> bool:
    """An IKE SA of ours that has not authenticated yet."""
    return sa.initiator and sa.state in _INITIATING


def current(sa: IkeSa) -> IkeSa:
    """``sa``, or the IKE SA its rekeys moved to (§2.18): a reauthentication replaces
    whichever of them is current when it authenticates."""
    while sa.rekeyed_to is not None and not sa.reauthenticated:
        sa = sa.rekeyed_to
    return sa


def crossing_losers(sa: IkeSa, others: Iterable[IkeSa]) -> list[IkeSa]:
    """Rules 1 and 2: the IKE SAs to delete when ``sa`` authenticated beside ``others``
    of the same peer (a crossing): all settled ones but the largest (SPIi, SPIr).  RFC 7296 allows
    several; one is enough, and both ends pick the same one (§1.4.1: simultaneous
    Deletes of one SA are answered normally).  None while a rekey is under way."""
    if not settled(sa):
        return []
    rivals = [sa, *(o for o in others if o is not sa and settled(o))]
    if len(rivals) < 2:
        return []
    keep = max(rivals, key=lambda s: (s.spi_i, s.spi_r))
    return [r for r in rivals if r is not keep]


def crossed_ours(sa: IkeSa, others: Iterable[IkeSa]) -> bool:
    """Rule 2: ``sa``, authenticated by the peer, began before, or less than
    :data:`CROSSING_WINDOW` seconds after, an established IKE SA that we initiated with
    IKE_SA_INIT (not a rekey's successor) was established: both ends initiated at once.
    Not while an initiation of ours is outstanding (rule 4 decides then)."""
    if sa.initiator or not settled(sa) or any(initiating(o) for o in others):
        return False
    return any(
        o is not sa
        and o.initiator
        and o.init_request  # began with our IKE_SA_INIT (a rekey's successor did not)
        and settled(o)
        and o.established_at is not None
        and sa.created_at < o.established_at + CROSSING_WINDOW
        for o in others
    )


def replaced_by_peer(sa: IkeSa, others: list[IkeSa]) -> list[IkeSa]:
    """Rules 3 and 4: our IKE SAs that ``sa``, authenticated by the peer, replaces;
    none while an initiation of ours is outstanding (a crossing), or when ``sa`` crossed
    one of ours (rule 2, :func:`crossed_ours`)."""
    if sa.initiator or not settled(sa) or any(initiating(o) for o in others):
        return []
    if crossed_ours(sa, others):
        return []
    return [o for o in others if o is not sa and settled(o)]


def replace(old: IkeSa, new: IkeSa, now: float, *, crossed: bool = False) -> None:
    """``new``, a reauthentication, takes over from ``old``: ``old`` keeps its CHILD_SAs
    until it is deleted, but is no longer used, rekeyed or checked for liveness.
    ``crossed``: ``old`` lost a crossing to ``new`` (rule 2), deleted after
    :data:`CROSSING_GRACE` unless the peer deletes it first."""
    old.rekeyed_to, old.rekeyed_at, old.reauthenticated = new, now, True
    old.crossed = crossed


def unreplace(old: IkeSa, survivor: IkeSa | None) -> None:
    """The IKE SA that replaced ``old`` is gone before ``old`` (the peer deleted it as
    the loser of a crossing): ``survivor`` replaces ``old`` instead, or nothing does."""
    if survivor is not None:
        old.rekeyed_to = survivor
        return
    old.rekeyed_to = old.rekeyed_at = None
    old.reauthenticated = old.crossed = False


def forgotten_by(sa: IkeSa, others: Iterable[IkeSa]) -> list[IkeSa]:
    """The IKE SAs that ``sa``'s N(INITIAL_CONTACT) says the peer forgot (§2.4): those
    established before ``sa`` began (its IKE_SA_INIT).  One established later crossed it
    (the peer sent INITIAL_CONTACT while it had none established) and is still the
    peer's.  Ordered by serial numbers, not the clock, so ties cannot happen."""
    return [
        o
        for o in others
        if o is not sa
        and o.state in (IkeState.ESTABLISHED, IkeState.DELETING)
        and (o.established_seq is None or o.established_seq < sa.began_seq)
    ]


def no_initial_contact(others: Iterable[IkeSa]) -> None:
    """An IKE SA with the peer is established: initiations of ours that have not sent
    IKE_AUTH yet no longer carry N(INITIAL_CONTACT) (§2.4: only the first IKE SA does),
    unless they are meant to replace every other one (a restart hint)."""
    for other in others:
        pending = other.state in (IkeState.CREATED, IkeState.INIT_SENT)
        if other.initiator and pending and not other.replace_others:
            other.send_initial_contact = False


def to_recreate(old: IkeSa, new: IkeSa) -> list[ChildSa]:
    """CHILD_SAs of ``old`` that ``new`` does not have yet (the first came with IKE_AUTH):
    one (local_ts, remote_ts) each, to be created again over ``new`` (§2.8.3)."""
    have = {(c.local_ts, c.remote_ts) for c in new.children.values() if c.state in LIVE_STATES}
    missing: dict[tuple[object, object], ChildSa] = {}
    for child in old.children.values():
        key = (child.local_ts, child.remote_ts)
        if child.state in LIVE_STATES and not child.redundant and key not in have:
            missing.setdefault(key, child)
    return list(missing.values())


def recreate(old: IkeSa, new: IkeSa, now: float) -> None:
    """Queue on ``new`` the CREATE_CHILD_SAs for ``old``'s other CHILD_SAs, then
    :class:`FinishReauth`, which deletes ``old`` when its turn comes."""
    for child in to_recreate(old, new):
        proposals = new.child_config(child.name).child_proposals  # its configured child's
        task = CreateChildSa(
            child.local_ts,
            child.remote_ts,
            proposals,
            name=child.name,
            mode=child.mode,
            protocol=child.protocol,
        )
        new.queue(task, now)
    new.queue(FinishReauth(old), now)


class FinishReauth:
    """Queued on a reauthentication's new IKE SA behind the CHILD_SAs it re-creates
    (strongSwan's ``ike_reauth_complete``): no exchange of its own; when its turn comes
    the manager deletes the old IKE SA (:class:`~ipsecd.ike.sa.ReauthComplete`)."""

    exchange_type = ExchangeType.INFORMATIONAL
    name = "reauthentication complete"

    def __init__(self, old: IkeSa) -> None:
        self.old = old

    def build_request(self, sa: IkeSa, now: float) -> list[Payload] | None:
        sa.signals.append(ReauthComplete(self.old))
        return None

    def process_response(self, sa: IkeSa, message: Message, now: float) -> TaskResult:
        return TaskResult.DONE  # never sent

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        pass

    def timed_out(self, sa: IkeSa, reason: str, now: float) -> None:
        pass
