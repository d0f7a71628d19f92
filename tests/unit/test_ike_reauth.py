"""Reauthentication, crossing initiations and close_action (RFC 7296 §2.8.3, §2.4, §1.4.1).

Two IkeManagers over the in-memory network with a fake clock (``ike_pair_support``).
The crossing tests hold back every IKE_SA_INIT and IKE_AUTH message and release them in
each possible order of the two exchanges; whatever the order, both ends must keep the same
single IKE SA with one working CHILD_SA pair, and a peer's reauthentication must never
cost the tunnel its new IKE SA.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsecd.daemon.core import trap_key
from ipsecd.ike import events as ev
from ipsecd.ike import payloads as pl
from ipsecd.ike.exchanges.informational import DeleteIkeSa
from ipsecd.ike.reauth import CROSSING_GRACE, CROSSING_WINDOW, REAUTH_GRACE
from ipsecd.ike.sa import REPLACED_SA_RETRANSMITS, IkeSa
from ipsecd.selectors import TrafficSelector
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import (
    DropFirst,
    IkePair,
    Sent,
    assert_one_working_pair,
    ike_sas,
    installed_spis,
    side_a,
    side_b,
)
from tests.unit.test_trap import packet

IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL = 34, 35, 36, 37
INITIAL_CONTACT = 16384
FAST = {"retransmit_timeout": 0.5, "retransmit_tries": 2, "retry_interval": "30s"}
REAUTH = {"ike_reauth_time": "600s", "ike_rand_time": "0"}


def is_response(sent: Sent) -> bool:
    return bool(sent.data[19] & 0x20)


def counter(pair: IkePair, side: str, name: str) -> int:
    return pair.mgr(side).counters.get(name, 0)


def assert_in_use(pair: IkePair) -> tuple[IkeSa, IkeSa]:
    """:func:`assert_one_working_pair`, and each side sends with that CHILD_SA pair."""
    a_sa, b_sa = assert_one_working_pair(pair)
    (a_spi,) = installed_spis(pair, "a")
    (b_spi,) = installed_spis(pair, "b")
    assert pair.dataplane["a"].sending_spi() == b_spi
    assert pair.dataplane["b"].sending_spi() == a_spi
    return a_sa, b_sa


def watch_continuity(pair: IkePair) -> list[str]:
    """From now on, after every delivery: each side has a CHILD_SA to send with (the
    tunnel never goes down).  Returns the list the violations are written to."""
    gaps: list[str] = []
    check = pair._check_make_before_break

    def continuity() -> None:
        check()
        for side in "ab":
            if pair.dataplane[side].sending_spi() is None:
                gaps.append(f"{side} has no CHILD_SA at {pair.now}")

    pair._check_make_before_break = continuity  # type: ignore[method-assign]
    return gaps


# ---- holding IKE_SA_INIT/IKE_AUTH back and releasing them in a chosen order -----------------


class Holdback:
    """Holds every IKE_SA_INIT and IKE_AUTH message; :meth:`release` delivers the oldest
    held message of one exchange chain.  Chain 1 is the IKE SA that side ``a`` initiates
    (a's requests, b's responses), chain 2 the one ``b`` initiates.  Other messages
    (Deletes, CREATE_CHILD_SA) travel at once."""

    def __init__(self, pair: IkePair) -> None:
        self.pair = pair
        self.held: list[Sent] = []
        pair.net.drop = self._hold

    def _hold(self, sent: Sent) -> bool:
        if sent.data[18] in (IKE_SA_INIT, IKE_AUTH):
            self.held.append(sent)
            return True
        return False

    @staticmethod
    def chain(sent: Sent) -> int:
        return 1 if (sent.sender == "a") != is_response(sent) else 2

    def release(self, chain: int) -> None:
        found = next((s for s in self.held if self.chain(s) == chain), None)
        assert found is not None, f"nothing of chain {chain} held: {self.held}"
        self.held.remove(found)
        self._deliver(found)

    def _deliver(self, sent: Sent) -> None:
        pair = self.pair
        receiver = pair.a if sent.sender == "b" else pair.b
        dst = pair.net.translate_in(sent.dst)
        assert dst is not None
        sent.delivered = True
        receiver.receive_datagram(pair.net.tamper(sent), dst, sent.src, pair.now)
        pair.pump()

    def open(self) -> None:
        """Stop holding; deliver what is still held, oldest first."""
        self.pair.net.drop = lambda sent: False
        while self.held:
            self._deliver(self.held.pop(0))


def interleavings() -> Iterator[tuple[int, ...]]:
    """Every order of two 4-message chains (IKE_SA_INIT and IKE_AUTH, request and
    response, each chain in its own order): C(8, 4) = 70."""
    for ones in itertools.combinations(range(8), 4):
        yield tuple(1 if i in ones else 2 for i in range(8))


ORDERS = list(interleavings())


def run_order(pair: IkePair, hold: Holdback, order: tuple[int, ...]) -> None:
    for chain in order:
        hold.release(chain)
    hold.open()
    pair.pump()


# ---- 1. crossing initiations: every order, one IKE SA, the same on both ends -----------------


def crossing(tmp_path: Path, order: tuple[int, ...], *, cleartext: bool = False) -> IkePair:
    """Both sides start at once (both ``start: initiate``); their IKE_SA_INIT and IKE_AUTH
    messages are delivered in ``order``, the rest as it comes."""
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST, start="initiate"), start=False)
    if cleartext:
        pair.record_cleartext()
    hold = Holdback(pair)
    pair.a.start(pair.now)
    pair.b.start(pair.now)
    pair.pump()
    run_order(pair, hold, order)
    return pair


@pytest.mark.parametrize("order", ORDERS, ids=["".join(map(str, o)) for o in ORDERS])
def test_crossing_initiations_in_every_order_leave_one_pair(tmp_path: Path, order) -> None:
    pair = crossing(tmp_path, order)
    assert_in_use(pair)
    # Both ends agreed at once: one Delete decided it (or two of the same SA), nobody
    # dropped an SA the other end kept, nobody waits for a grace period or a retry.
    assert counter(pair, "a", "initial_contact_deleted") == 0
    assert counter(pair, "b", "initial_contact_deleted") == 0
    deleted = counter(pair, "a", "duplicate_ike_sa_deleted") + counter(
        pair, "b", "duplicate_ike_sa_deleted"
    )
    assert deleted in (1, 2)
    pair.advance(100)  # and it stays that way: no retries, no further deletes
    assert_in_use(pair)
    assert pair.of_type("a", ev.NegotiationFailed) == pair.of_type("b", ev.NegotiationFailed) == []
    assert counter(pair, "a", "connection_retries") == counter(pair, "b", "connection_retries") == 0


def auth_requests(pair: IkePair, sender: str) -> list[Any]:
    return [
        c
        for c in pair.cleartext
        if c.sender == sender and c.exchange_type == IKE_AUTH and not c.response
    ]


def notify_types(payloads: list[object]) -> list[int]:
    return [p.notify_type for p in payloads if isinstance(p, pl.Notify)]


def test_initial_contact_is_decided_when_ike_auth_is_built(tmp_path: Path) -> None:
    """b's IKE_SA_INIT crosses a's whole exchange: by the time b sends its IKE_AUTH it has
    an IKE SA with a, so no INITIAL_CONTACT (RFC 7296 §2.4: only the first IKE SA)."""
    pair = crossing(tmp_path, (1, 1, 1, 1, 2, 2, 2, 2), cleartext=True)
    (a_request,) = auth_requests(pair, "a")
    (b_request,) = auth_requests(pair, "b")
    assert INITIAL_CONTACT in notify_types(a_request.payloads)
    assert INITIAL_CONTACT not in notify_types(b_request.payloads)
    assert_in_use(pair)


def test_initial_contact_of_a_crossing_spares_the_other_pair(tmp_path: Path) -> None:
    """Both IKE_AUTH requests carry INITIAL_CONTACT (built before either side had an SA);
    a finishes its own exchange before b's request arrives.  a must not take b's
    INITIAL_CONTACT for a restart: its own pair was established after b's began."""
    # Both IKE_SA_INITs answered, both IKE_AUTH requests out; then a's exchange ends
    # before b's IKE_AUTH request reaches a.
    pair = crossing(tmp_path, (1, 2, 1, 2, 1, 2, 1, 2), cleartext=True)
    for side in "ab":
        (request,) = auth_requests(pair, side)
        assert INITIAL_CONTACT in notify_types(request.payloads)
    assert counter(pair, "a", "initial_contact_deleted") == 0
    assert counter(pair, "b", "initial_contact_deleted") == 0
    assert_in_use(pair)


def _won_with_initial_contact(tmp_path: Path, drop: Any) -> Iterator[tuple[IkePair, tuple]]:
    """Every crossing order where a's IKE SA won carrying INITIAL_CONTACT and a deletes
    b's, b deciding nothing itself (as charon, ``unique = no``), ``drop`` deciding which
    datagrams are lost from then on."""
    for n, order in enumerate(ORDERS):
        pair = IkePair(
            tmp_path / str(n), side_a(**FAST), side_b(**FAST, start="initiate"), start=False
        )
        decides_nothing(pair, "b")
        marked: list[IkeSa] = []
        mgr = pair.mgr("a")
        decide = mgr._delete_duplicates

        def recording(
            sa: IkeSa, losers: list[IkeSa], now: float, decide: Any = decide, marked: Any = marked
        ) -> None:
            decide(sa, losers, now)
            marked.extend(x for x in losers if x.duplicate_delete)

        mgr._delete_duplicates = recording  # type: ignore[method-assign]
        hold = Holdback(pair)
        pair.net.drop = lambda s, hold=hold: hold._hold(s) or drop(s)
        pair.a.start(pair.now)
        pair.b.start(pair.now)
        pair.pump()
        for chain in order:
            hold.release(chain)
        pair.pump()
        if marked:
            yield pair, order


def test_a_duplicate_the_peer_dropped_on_our_initial_contact_ends_after_one_retransmit(
    tmp_path: Path,
) -> None:
    """Our IKE_AUTH carried INITIAL_CONTACT and won the crossing: charon drops its own
    duplicate on it ("destroying duplicate IKE_SA ..., received INITIAL_CONTACT") and never
    answers a Delete for it; seen in CI, two IKE SAs for 10 s and more.  Here b's answers
    to a's Deletes are lost: a is left with one IKE SA after one retransmission (0.5 +
    1 s), not its whole budget, and does not take the peer for dead."""
    seen = 0
    for pair, order in _won_with_initial_contact(
        tmp_path, lambda s: s.sender == "b" and s.data[18] == INFORMATIONAL
    ):
        seen += 1
        assert len(ike_sas(pair, "a")) == 2, order  # the Delete is out, unanswered
        pair.advance(0.6)
        assert len(ike_sas(pair, "a")) == 2, order  # retransmitted once
        pair.advance(1.1)
        (kept,) = ike_sas(pair, "a")
        assert kept.initiator and kept.send_initial_contact, order
        assert counter(pair, "a", "retransmits") >= 1
        assert kept.state.value == "established"  # silence did not count as a dead peer
        assert counter(pair, "a", "connection_retries") == 0
    assert seen > 0  # the orders where ours won with INITIAL_CONTACT (12 of 70)


def test_a_duplicate_the_peer_still_set_up_goes_on_the_retransmitted_delete(
    tmp_path: Path,
) -> None:
    """CI, charon 6.1: our INITIAL_CONTACT reached charon while its own SA was still
    being set up (our IKE_AUTH answer crossed our request), so charon kept it, and our
    Delete overtook the answer and was ignored ("ignoring INFORMATIONAL in IKE_SA state
    CONNECTING"); a one-way Delete left charon sending through a CHILD_SA we had
    removed.  Here a's first Delete is lost: the retransmission reaches b, and both ends
    keep one and the same pair."""
    lose_first_delete = DropFirst("a", INFORMATIONAL)
    seen = 0
    for pair, order in _won_with_initial_contact(tmp_path, lose_first_delete):
        seen += 1
        pair.net.drop = lambda s: False
        pair.advance(0.6)
        pair.pump()
        assert_in_use(pair)
        assert len(ike_sas(pair, "a")) == len(ike_sas(pair, "b")) == 1, order
        lose_first_delete.lost.clear()
    assert seen > 0


# ---- 1b. a peer that decides nothing about a crossing (strongSwan, unique = no) -------------


def decides_nothing(pair: IkePair, side: str) -> None:
    """``side`` keeps every IKE SA of a crossing, as charon with ``unique = no`` does."""
    pair.mgr(side)._delete_duplicates = lambda sa, losers, now: None  # type: ignore[method-assign]


def test_late_crossing_with_a_peer_that_decides_nothing(tmp_path: Path) -> None:
    """Issue 14's crossing with charon (tests/netns/test_restart.py): b's IKE_SA_INIT, a
    retransmission, reaches a only after a's own IKE SA is up, so on a it looks like a
    reauthentication (nothing of a's outstanding); b keeps both.  a decides the crossing
    (reauth rule 2) and both ends keep one pair within CROSSING_GRACE, whichever pair wins."""
    a_kept = set()
    for seed in range(12):
        pair = IkePair(
            tmp_path / str(seed),
            side_a(**FAST),
            side_b(**FAST, start="initiate"),
            start=False,
            random_bytes=seeded(seed),
        )
        decides_nothing(pair, "b")
        gaps = watch_continuity(pair)
        hold = Holdback(pair)
        pair.a.start(pair.now)
        pair.b.start(pair.now)
        pair.pump()
        for chain in (1, 1, 1, 1):  # a's IKE SA is set up while b's IKE_SA_INIT is held
            hold.release(chain)
        (ours,) = ike_sas(pair, "a")
        pair.advance(0.4)  # b's retransmission comes a little later
        hold.open()
        pair.pump()
        pair.advance(CROSSING_GRACE + 0.5)
        a_sa, _ = assert_in_use(pair)
        a_kept.add(a_sa is ours)
        assert counter(pair, "a", "duplicate_ike_sa_deleted") == 1
        assert counter(pair, "a", "ike_sa_replaced_by_peer") == 0
        assert gaps == [], seed
    assert a_kept == {True, False}  # both orders of the SPI pairs were tried


@pytest.mark.parametrize("after", [CROSSING_WINDOW - 1, CROSSING_WINDOW + 1])
def test_a_peer_ike_sa_beside_a_young_one_of_ours_is_a_crossing(
    tmp_path: Path, after: float
) -> None:
    """Within CROSSING_WINDOW of our IKE SA's establishment a second IKE SA from the peer
    crossed ours (decided at once); later it is a reauthentication (kept, the old one
    deleted by the peer or after REAUTH_GRACE)."""
    quiet = {**FAST, "dpd_delay": "0"}
    pair = IkePair(tmp_path, side_a(**quiet), side_b(**quiet))
    decides_nothing(pair, "b")
    pair.advance(after)
    pair.b._initiate_sa(pair.b.peers["a"], pair.now, send_initial_contact=False, children=("a",))
    pair.pump()
    crossing = after < CROSSING_WINDOW
    assert counter(pair, "a", "duplicate_ike_sa_deleted") == int(crossing)
    assert counter(pair, "a", "ike_sa_replaced_by_peer") == int(not crossing)
    pair.advance((CROSSING_GRACE if crossing else REAUTH_GRACE) + 0.5)
    assert_in_use(pair)


# ---- 2. the peer reauthenticates (make-before-break) ----------------------------------------


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.mark.parametrize("who", ["a", "b"])  # the original initiator or the responder
def test_peer_reauthentication_keeps_the_new_ike_sa_whatever_the_spis(
    tmp_path: Path, who: str
) -> None:
    """The bug of issue 14: the old rule deleted the SA with the smaller SPI pair, the
    replacement about half the time.  Over seeds that give both orders of the SPIs, the
    side that did not reauthenticate keeps the new IKE SA and the peer deletes the old."""
    other = "b" if who == "a" else "a"
    orders = set()
    for seed in range(12):
        path = tmp_path / str(seed)
        a = side_a(**FAST, **(REAUTH if who == "a" else {}))
        b = side_b(**FAST, **(REAUTH if who == "b" else {}))
        pair = IkePair(path, a, b, random_bytes=seeded(seed))
        gaps = watch_continuity(pair)
        (old,) = ike_sas(pair, other)
        pair.advance(601)
        (new,) = ike_sas(pair, other)
        assert new is not old
        orders.add((new.spi_i, new.spi_r) < (old.spi_i, old.spi_r))
        assert_in_use(pair)
        assert counter(pair, other, "ike_sa_replaced_by_peer") == 1
        assert counter(pair, who, "ike_sa_reauthenticated") == 1
        for side in "ab":
            assert counter(pair, side, "duplicate_ike_sa_deleted") == 0
            assert counter(pair, side, "peer_closed_ike_sa") == 0
        assert gaps == []
        assert pair.status(other)["last_event"]["event"] == "reauthenticated-by-peer"
        assert pair.status(who)["last_event"]["event"] == "reauthenticated"
    assert orders == {True, False}  # both orders of the SPI pairs were tried


def test_three_reauthentications_in_a_row_lose_nothing(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST, ike_reauth_time="8s"))
    gaps = watch_continuity(pair)
    pair.check_make_before_break = True  # b reauthenticates: its own sends are safe
    spis = {ike_sas(pair, "a")[0].spi_i}
    for n in range(1, 4):
        pair.advance(8)
        a_sa, _ = assert_in_use(pair)
        spis.add(a_sa.spi_i)
        assert counter(pair, "b", "ike_sa_reauthenticated") == n
    assert len(spis) == 4
    assert gaps == []
    # The reauthentication is a new IKE SA and a new CHILD_SA, never a dead peer or a close.
    for side in "ab":
        assert pair.of_type(side, ev.NegotiationFailed) == []
        assert pair.of_type(side, ev.PeerClosed) == []
        assert len(pair.established(side)) == 4


def test_reauthentication_does_not_send_initial_contact(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST, **REAUTH), side_b(**FAST))
    pair.record_cleartext()
    pair.advance(601)
    (request,) = auth_requests(pair, "a")
    assert INITIAL_CONTACT not in notify_types(request.payloads)
    assert counter(pair, "b", "initial_contact_deleted") == 0


def test_reauth_time_has_jitter_and_survives_ike_rekeys(tmp_path: Path) -> None:
    """rand_time jitters the reauthentication; an IKE rekey (§2.18) does not postpone it."""
    a = side_a(**FAST, ike_reauth_time="100s", ike_rand_time="10s", ike_rekey_time="30s")
    pair = IkePair(tmp_path, a, side_b(**FAST, ike_rekey_time="1h"))
    (sa,) = ike_sas(pair, "a")
    assert sa.reauth_at is not None and 90 <= sa.reauth_at - sa.established_at <= 100
    due = sa.reauth_at
    pair.advance(75)  # two or three IKE rekeys
    assert counter(pair, "a", "ike_sa_rekeyed") >= 2
    assert counter(pair, "a", "ike_sa_reauthenticated") == 0
    (current,) = ike_sas(pair, "a")
    assert current.reauth_at == due
    pair.advance(due - pair.now + 1)
    assert counter(pair, "a", "ike_sa_reauthenticated") == 1
    assert_in_use(pair)


def test_reauthentication_recreates_every_child_before_deleting_the_old(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST, **REAUTH), side_b(**FAST))
    extra = (
        (TrafficSelector.from_prefix("10.1.0.128/25"),),
        (TrafficSelector.from_prefix("10.2.0.0/25"),),
    )
    pair.a.create_child("b", pair.now, *extra)
    pair.pump()
    gaps = watch_continuity(pair)  # (b sends on a new CHILD_SA at once, as for any new one)
    pair.advance(601)
    (a_sa,) = ike_sas(pair, "a")
    (b_sa,) = ike_sas(pair, "b")
    assert (a_sa.spi_i, a_sa.spi_r) == (b_sa.spi_i, b_sa.spi_r)
    assert len(a_sa.children) == len(b_sa.children) == 2
    assert {(c.local_ts, c.remote_ts) for c in a_sa.children.values()} >= {extra}
    assert gaps == []
    # The old IKE SA went only after the second CHILD_SA stood on the new one.
    log = pair.event_log
    second = max(
        i for i, (s, e) in enumerate(log) if s == "a" and isinstance(e, ev.ChildSaEstablished)
    )
    gone = [i for i, (s, e) in enumerate(log) if s == "a" and isinstance(e, ev.IkeSaDeleted)]
    assert gone and gone[0] > second


def test_failed_reauthentication_keeps_the_old_ike_sa_and_tries_again(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST, **REAUTH), side_b(**FAST))
    (old,) = ike_sas(pair, "a")
    pair.net.drop = lambda sent: sent.sender == "b" and sent.data[18] == IKE_SA_INIT
    pair.advance(601 + 4)  # the new IKE SA gives up after 3.5 s
    assert counter(pair, "a", "ike_sa_reauth_failed") == 1
    assert ike_sas(pair, "a") == [old] and old.rekeyed_to is None
    assert pair.status("a")["state"] == "established"
    pair.net.drop = lambda sent: False
    pair.advance(30)  # retry_interval later
    assert counter(pair, "a", "ike_sa_reauthenticated") == 1
    pair.advance(60)  # b's half-open leftovers of the failed attempt expire
    assert_in_use(pair)


def test_replaced_ike_sa_whose_delete_goes_unanswered_is_gone_after_three_retransmits(
    tmp_path: Path,
) -> None:
    """The peer neither deletes the replaced IKE SA nor answers our Delete for it (charon
    5.9 drops its side of a rekey collision unannounced): our courtesy Delete gives up after
    REPLACED_SA_RETRANSMITS (0.5 + 1 + 2 + 4 s), not the seven of a live SA (~2 min)."""
    quiet = {**FAST, "dpd_delay": "0", "retransmit_tries": 7}
    pair = IkePair(tmp_path, side_a(**quiet), side_b(**quiet, **REAUTH))
    (old,) = ike_sas(pair, "a")
    pair.net.drop = lambda s: s.sender == "b" and s.data[18] == INFORMATIONAL
    pair.advance(601 + REAUTH_GRACE)
    assert old.alive and old.outstanding is not None  # our Delete, unanswered so far
    pair.advance(sum(0.5 * 2**n for n in range(REPLACED_SA_RETRANSMITS + 1)) + 0.1)
    assert not old.alive
    (gone,) = [e for e in pair.of_type("a", ev.IkeSaDeleted)]
    assert "not deleted by the peer (peer did not confirm" in gone.reason
    assert counter(pair, "a", "retransmits") == REPLACED_SA_RETRANSMITS
    pair.net.drop = lambda s: False
    pair.advance(60)
    assert_in_use(pair)


def test_peer_that_never_deletes_the_old_ike_sa(tmp_path: Path) -> None:
    """The peer's reauthentication Delete for the old IKE SA is lost: we delete it
    ourselves after REAUTH_GRACE seconds."""
    quiet = {**FAST, "dpd_delay": "0", "retransmit_tries": 5}  # no liveness checks
    pair = IkePair(tmp_path, side_a(**quiet), side_b(**quiet, **REAUTH))
    (old,) = ike_sas(pair, "a")
    pair.net.drop = lambda s: s.sender == "b" and s.data[18] == INFORMATIONAL and not is_response(s)
    pair.advance(601)
    assert old.alive and old.rekeyed_to is not None  # replaced, waiting for the peer
    assert pair.status("a")["local_spi"] != f"{old.local_spi:016x}"  # status shows the new
    pair.advance(REAUTH_GRACE)
    assert not old.alive
    (gone,) = [e for e in pair.of_type("a", ev.IkeSaDeleted)]
    # b gave its unanswered Delete up after REPLACED_SA_RETRANSMITS and forgot the SA: it
    # answers ours with INVALID_IKE_SPI.
    assert gone.reason == "deleted (the peer no longer had it: INVALID_IKE_SPI)", gone
    pair.net.drop = lambda s: False
    pair.advance(60)
    assert_in_use(pair)


def test_both_ends_reauthenticate_at_once_in_every_order(tmp_path: Path) -> None:
    for n, order in enumerate(ORDERS):
        pair = IkePair(tmp_path / str(n), side_a(**FAST, **REAUTH), side_b(**FAST, **REAUTH))
        gaps = watch_continuity(pair)
        hold = Holdback(pair)
        pair.advance(600)  # both reauth timers fire now (rand_time 0)
        assert len(hold.held) == 2, order
        run_order(pair, hold, order)
        pair.advance(REAUTH_GRACE + 1)
        assert_in_use(pair)
        assert gaps == [], order
        for side in "ab":
            assert pair.of_type(side, ev.NegotiationFailed) == [], order
            assert counter(pair, side, "peer_closed_ike_sa") == 0, order


def test_break_before_make_reauthentication_by_the_peer(tmp_path: Path) -> None:
    """charon 5.9's default: Delete the old IKE SA, then initiate a new one at once.
    close_action start waits retry_interval, so the peer's new IKE SA comes first and
    no crossing initiation of ours follows."""
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST))
    b_sa = pair.b.ike_sa("a")
    b_sa.queue(DeleteIkeSa("reauthenticating (break-before-make)"), pair.now)
    pair.b._collect(b_sa, pair.now)
    pair.pump()
    assert pair.status("a")["next_attempt_in_seconds"] is None  # status(now) not given
    (entry,) = pair.a.status(pair.now)
    assert entry["state"] == "connecting" and entry["next_attempt_in_seconds"] == 30.0
    pair.b.initiate("a", pair.now)
    pair.pump()
    (entry,) = pair.a.status(pair.now)
    assert entry["state"] == "established" and entry["next_attempt_in_seconds"] is None
    pair.advance(100)
    assert_in_use(pair)
    assert counter(pair, "a", "connection_retries") == 0
    assert counter(pair, "a", "duplicate_ike_sa_deleted") == 0


# ---- 3. close_action: the peer deletes the only CHILD_SA or the IKE SA ----------------------


def delete_only_child(pair: IkePair) -> None:
    (spi,) = installed_spis(pair, "b")
    pair.b.delete_child("a", spi, pair.now)
    pair.pump()


def test_peer_deletes_the_only_child_close_action_start_recreates_it(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST))  # start: initiate -> start
    delete_only_child(pair)
    assert_in_use(pair)
    assert len(pair.established("a")) == 2
    (closed,) = pair.of_type("a", ev.PeerClosed)
    assert (closed.what, closed.action) == ("child-sa", "start")
    event = pair.status("a")["last_event"]
    assert event == {
        "event": "peer-deleted-child-sa",
        "at": pair.now,
        "message": "peer deleted the CHILD_SA; close_action start: re-creating it",
    }


@pytest.mark.parametrize("action", ["none", "trap"])
def test_peer_deletes_the_only_child_without_recreating(tmp_path: Path, action: str) -> None:
    pair = IkePair(tmp_path, side_a(**FAST, close_action=action), side_b(**FAST))
    delete_only_child(pair)
    entry = pair.status("a")
    assert entry["state"] == "established" and entry["children"] == []
    assert entry["last_event"]["event"] == "peer-deleted-child-sa"
    assert f"close_action {action}" in entry["last_event"]["message"]
    (closed,) = pair.of_type("a", ev.PeerClosed)
    assert (closed.what, closed.action) == ("child-sa", action)
    pair.advance(60)
    assert installed_spis(pair, "a") == set()
    pair.a.initiate("b", pair.now, on_demand=True)  # what the trap does on the next packet
    pair.pump()
    assert_in_use(pair)


def test_a_rekey_or_our_own_delete_is_not_a_close(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST))
    pair.b.rekey("a", pair.now)  # the peer deletes the old CHILD_SA after its rekey
    pair.pump()
    (spi,) = installed_spis(pair, "a")
    pair.a.delete_child("b", spi, pair.now)  # and our own Delete is ours
    pair.pump()
    assert pair.of_type("a", ev.PeerClosed) == []
    assert counter(pair, "a", "peer_deleted_child_sa") == 0


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_peer_closes_the_ike_sa_close_action_start(tmp_path: Path, role: str) -> None:
    """Issue 14 item 3: charon stopped (SIGTERM, one Delete).  ``start: initiate`` peers
    default to close_action start: the status says what happened and when the next
    attempt is, and it comes, whichever side had initiated the closed IKE SA."""
    b_start = "initiate" if role == "responder" else "respond"
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST, start=b_start), start=False)
    (pair.b if role == "responder" else pair.a).start(pair.now)
    pair.pump()
    pair.advance(3)
    pair.b.shutdown(pair.now)
    pair.pump()
    (entry,) = pair.a.status(pair.now + 3)
    assert entry["state"] == "connecting"
    assert entry["next_attempt_in_seconds"] == 27.0
    assert entry["last_event"] == {
        "event": "peer-closed-ike-sa",
        "at": pair.now,
        "message": "peer closed the IKE SA; close_action start: initiating again after"
        " retry_interval",
    }
    assert entry["last_error"] is None
    (closed,) = pair.of_type("a", ev.PeerClosed)
    assert (closed.what, closed.action) == ("ike-sa", "start")
    pair.advance(30)
    assert counter(pair, "a", "connection_retries") == 1
    assert_in_use(pair)


@pytest.mark.parametrize("action", ["none", "trap"])
def test_peer_closes_the_ike_sa_close_action_none_or_trap(tmp_path: Path, action: str) -> None:
    pair = IkePair(tmp_path, side_a(**FAST, close_action=action), side_b(**FAST))
    pair.b.shutdown(pair.now)
    pair.pump()
    (entry,) = pair.a.status(pair.now)
    assert entry["state"] == ("held" if action == "trap" else "down")
    assert entry["next_attempt_in_seconds"] is None
    assert entry["last_event"]["event"] == "peer-closed-ike-sa"
    pair.advance(120)
    assert ike_sas(pair, "a") == []
    assert counter(pair, "a", "connection_retries") == 0


def test_close_action_respond_default_is_none(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST))
    assert pair.b_config.peers[0].close_action == "none"
    assert pair.a_config.peers[0].close_action == "start"
    pair.a.shutdown(pair.now)
    pair.pump()
    assert pair.b.status(pair.now)[0]["state"] == "down"


def test_status_entries_always_carry_the_new_keys(tmp_path: Path) -> None:
    pair = IkePair(tmp_path, side_a(**FAST), side_b(**FAST), start=False)
    (entry,) = pair.a.status(pair.now)
    assert entry["last_event"] is None and entry["next_attempt_in_seconds"] is None
    pair.a.start(pair.now)
    pair.pump()
    (entry,) = pair.a.status(pair.now)
    assert entry["last_event"] is None and entry["next_attempt_in_seconds"] is None


# ---- 4. the shell: close_action trap arms the trap --------------------------------------------


def test_close_action_trap_in_the_daemon_core(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(**FAST, close_action="trap"), side_b(**FAST))
    assert r.status_a()["state"] == "established"
    (spi,) = [sa.inbound.spi for sa in r.core.sad]
    (b_spi,) = r.b.ike_sa("a").children
    r.b.delete_child("a", b_spi, r.now)
    r.pump()
    assert len(r.core.sad) == 0 and r.status_a()["state"] == "established"
    assert r.core.trap.state(trap_key("b", "b")) is not None  # armed: the next packet re-creates it
    r.from_tun([packet("10.1.0.5", "10.2.0.7")])  # the trap re-creates the CHILD_SA
    assert len(r.core.sad) == 1 and spi not in {sa.inbound.spi for sa in r.core.sad}
    assert r.decrypted_at_b()[-1:] == [packet("10.1.0.5", "10.2.0.7")]
