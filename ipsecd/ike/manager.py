"""IkeManager: every IKE SA of the daemon, driven by the shell (sans-I/O).

The shell feeds datagrams and clock values, drains :meth:`IkeManager.datagrams_to_send`
and :meth:`IkeManager.next_event`, and calls :meth:`IkeManager.handle_timer` at
:meth:`IkeManager.get_timer`.  Split along strongSwan's lines:

* this module: the SA table and the dispatch of messages to IKE SAs by our SPI
  (RFC 7296 §2.6) — an IKE_SA_INIT request that decodes creates a responder SA
  for the peers matched by source address (confirmed by ID in IKE_AUTH); answers
  to unknown SPIs (INVALID_IKE_SPI, §2.21.4); the signals IKE SAs raise
  (:mod:`ipsecd.ike.sa`: duplicates, INITIAL_CONTACT, dead peers, restarts, rekeys,
  reauthentications, Deletes from the peer and its ``close_action``);
* :mod:`ipsecd.ike.reauth`: a reauthentication (§2.8.3) told from a crossing
  initiation, and which IKE SA survives either;
* :mod:`ipsecd.ike.scheduler`: retransmits, state deadlines, lifetimes and rekeys
  (§2.8, §2.18), liveness checks (§2.4), NAT-keepalives (RFC 3948 §4), on a timer heap;
* :mod:`ipsecd.ike.policy`: start actions, retries, ``dpd_action``;
* :mod:`ipsecd.ike.halfopen`: cookies and half-open limits (§2.6).

:meth:`receive_datagram` never raises: bad input is counted in
:attr:`IkeManager.counters` and dropped.  The daemon uses the two-step form instead,
so that IKE work never delays ESP (issue 12): :meth:`enqueue_datagram` does only the
cheap checks and queues (:mod:`ipsecd.ike.inbox`), :meth:`process_queued` does the
work for as long as the shell's time budget allows.  Datagrams are
:class:`~ipsecd.ike.events.OutgoingDatagram`: ``marker`` tells the shell to prepend
the 4-byte non-ESP marker (IKE on port 4500, RFC 3948 §2.2); keepalives
(``b"\\xff"``, ``keepalive=True``) go out raw on port 4500.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from ipsecd.config.schema import ChildConfig, Config, IpAddress, PeerConfig
from ipsecd.crypto.proposals import Proposal
from ipsecd.ike import dpd, events, reauth
from ipsecd.ike import message as codec
from ipsecd.ike.closed import ClosedAnswers
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.events import (
    Address,
    Event,
    NegotiationFailed,
    OutgoingDatagram,
    PeerAddressChanged,
    PeerDead,
    UnauthenticatedFailure,
)
from ipsecd.ike.exchanges import RESPONDERS
from ipsecd.ike.exchanges.create_child import CreateChildSa
from ipsecd.ike.exchanges.informational import DeleteChildSa, DeleteIkeSa, LivenessCheck
from ipsecd.ike.exchanges.sa_init import IkeSaInit
from ipsecd.ike.fragments import ReassemblyBudget
from ipsecd.ike.halfopen import DosLimits, HalfOpenTable
from ipsecd.ike.inbox import IkeInbox, Received, is_init_request
from ipsecd.ike.lifecycle import LIVE_STATES, ChildState
from ipsecd.ike.policy import LastEvent, PeerPolicy, PeerState, Resolver, close_message
from ipsecd.ike.sa import (
    Authenticated,
    ChildExpired,
    IkeSa,
    IkeState,
    PeerDeletedChild,
    PeerDeletedIkeSa,
    PeerUnresponsive,
    RandomBytes,
    ReauthComplete,
    ReauthDue,
    RestartHint,
    RetransmitPolicy,
    SaContext,
    SaSignal,
    Successor,
    WallClock,
    utc_now,
)
from ipsecd.ike.satable import SaTable
from ipsecd.ike.scheduler import NAT_KEEPALIVE_INTERVAL, Scheduler, seq_rekey_threshold
from ipsecd.ike.status import peer_status
from ipsecd.ike.trace import Trace, describe, notify_label
from ipsecd.selectors import TrafficSelector

__all__ = ["IkeManager", "USAGE_INTERVAL", "seq_rekey_threshold"]


def _address(address: tuple[str, int]) -> Address:
    """A socket address as (text, int): the two first items of whatever the socket gave."""
    return (str(address[0]), int(address[1]))


USAGE_INTERVAL = 1.0  # how often the shell should report CHILD_SA usage (child_usage)
TIMER_SLICE = 64  # due IKE SAs (and due peer retries) handle_timer takes on per call


class IkeManager:
    """All IKE SAs (RFC 7296) of one daemon; see the module docstring."""

    def __init__(
        self,
        config: Config,
        now: float,
        *,
        policy: RetransmitPolicy | None = None,
        keepalive_interval: float = NAT_KEEPALIVE_INTERVAL,
        random_bytes: RandomBytes = os.urandom,
        wall_clock: WallClock = utc_now,
        trace: Trace | None = None,
        work_clock: Callable[[], float] | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        self.config = config
        # Peers written with a DNS name: the shell's resolver, asked at every initiation
        # (start, each retry); None: such peers cannot be initiated.
        self.resolve = resolve
        gw = config.gateway
        self.policy = policy or RetransmitPolicy(
            initial=gw.retransmit_timeout,
            max_retransmits=gw.retransmit_tries,
            retry_pause=float(gw.retry_interval),
        )
        self.random_bytes = random_bytes
        self.peer_policy = PeerPolicy(config, self.policy.retry_pause)
        self.table = SaTable()
        self.sas = self.table.by_spi  # by our SPI
        self.counters: dict[str, int] = {}
        # Responder SAs before IKE_AUTH, by (remote ip, SPIi); cookies and limits (§2.6).
        self.half_open = HalfOpenTable(DosLimits.from_gateway(gw), self.counters, now)
        # work_clock: the shell's clock for how long work takes, for the share of new
        # requests (inbox.py), enforced under pressure: while cookies are demanded.
        self.inbox = IkeInbox(
            self.counters,
            gw.max_ike_datagram,
            now,
            work_clock,
            pressure=self.half_open.cookies_required_at,
        )
        self.trace = trace
        self._outgoing: list[OutgoingDatagram] = []
        self._events: deque[Event] = deque()
        self._retiring: set[int] = set()  # SPIs of SAs being deleted after a config change
        self.natt_port = gw.port
        self.ike_port = gw.ike_port
        self.fragment_size: int | None = gw.fragment_size  # RFC 7383
        self.reassembly_budget = ReassemblyBudget()  # partial IKE fragments, all SAs together
        self.context = SaContext(
            natt_port=self.natt_port,
            policy=self.policy,
            responders=RESPONDERS,
            random_bytes=random_bytes,
            counters=self.counters,
            gateway_fragment_size=self.fragment_size,
            reassembly_budget=self.reassembly_budget,
            wall_clock=wall_clock,  # certificate validity (RFC 5280 §6.1.3)
            trace=trace,
        )
        self._last_usage_check = now
        self._invalid_spi = dpd.InvalidSpiResponder()
        self.closed = ClosedAnswers()  # answers to the Deletes of gone IKE SAs (closed.py)
        self.scheduler = Scheduler(
            keepalive_interval=keepalive_interval,
            natt_port=self.natt_port,
            ike_port=self.ike_port,
            random_bytes=random_bytes,
            count=self._count,
            send=self._outgoing.append,
        )

    @property
    def peers(self) -> dict[str, PeerConfig]:
        """The IKE peers by name (PeerConfig)."""
        return self.peer_policy.peers

    @property
    def peer_state(self) -> dict[str, PeerState]:
        return self.peer_policy.state

    # ---- contract API ----------------------------------------------------

    def start(self, now: float) -> None:
        """Initiate every peer with ``start: initiate``."""
        for name in self.peer_policy.to_start():
            self.initiate(name, now)

    def initiate(
        self,
        peer: str,
        now: float,
        *,
        on_demand: bool = False,
        replace: bool = False,
        children: tuple[str, ...] | None = None,
    ) -> None:
        """Bring ``peer`` up (no-op if an IKE SA for it is up or being set up).

        ``children``: the configured children to set up, the first with IKE_AUTH, the
        others with CREATE_CHILD_SA (RFC 7296 §1.3.1); None: the ones it keeps up
        (:meth:`PeerPolicy.children_to_start`).  On an established IKE SA, the ones
        without a CHILD_SA (none installed, none being created) get one.
        ``on_demand``: started by traffic (``start: trap``), not kept up: after a
        failure or a Delete it is not retried; the next packet starts it again.
        ``replace``: set up a new IKE SA beside the existing one, with INITIAL_CONTACT,
        and drop the older ones once it is up (the peer seems to have restarted).
        ValueError for a peer with ``remote_address: any`` (it connects to us).
        """
        if peer not in self.peers:
            raise KeyError(f"no IKE peer named {peer!r}")
        config = self.peers[peer]
        if config.responds_only:
            raise ValueError(
                f"peer {peer!r} has remote_address any: ipsecd learns its address when it"
                " connects and cannot initiate it"
            )
        wanted = children if children else self.peer_policy.children_to_start(peer)
        self.peer_policy.wanted_up(peer, on_demand=on_demand, children=wanted)
        existing = self._sa_for(peer, unauthenticated=False)
        if existing is not None and not replace:
            if existing.initiator and existing.state is not IkeState.ESTABLISHED:
                existing.wanted_children = tuple(
                    dict.fromkeys((*existing.wanted_children, *wanted))
                )
            else:
                self._create_missing(existing, wanted, now)
                self._collect(existing, now)
            return
        # RFC 7296 §2.4: INITIAL_CONTACT only when no other IKE SA with this peer exists
        # (checked again when IKE_AUTH is built: reauth.no_initial_contact).
        others = [s for s in self._of_peer(peer) if s.alive and not self.half_open.holds(s)]
        self._initiate_sa(
            config,
            now,
            send_initial_contact=replace or not others,
            replace=replace,
            children=wanted,
        )

    def _initiate_sa(
        self,
        config: PeerConfig,
        now: float,
        *,
        send_initial_contact: bool,
        replace: bool = False,
        reauth_of: IkeSa | None = None,
        children: tuple[str, ...] = (),
    ) -> IkeSa | None:
        """A new IKE SA as initiator, IKE_SA_INIT sent (``reauth_of``: the IKE SA it is
        to replace, RFC 7296 §2.8.3; ``children``: the configured children it sets up).
        None when the peer's DNS name does not resolve (reported, retried)."""
        address = (
            config.remote_address
            or (ipaddress.ip_address(reauth_of.remote[0]) if reauth_of is not None else None)
            or self._resolve(config, now)
        )
        if address is None:
            return None
        remote_port = config.remote_port or self.ike_port
        local_port = self.natt_port if remote_port == self.natt_port else self.ike_port
        sa = self._new_sa(
            peer=config,
            initiator=True,
            local=(str(config.local_address), local_port),
            remote=(str(address), remote_port),
            now=now,
            send_initial_contact=send_initial_contact,
            replace_others=replace,
        )
        sa.reauth_of = reauth_of
        sa.wanted_children = children
        sa.tasks.append(IkeSaInit(config.ike_proposals))
        sa.kick(now)  # assigns SPIi while building the request
        self.table.add(sa)
        self._collect(sa, now)
        return sa

    def terminate(self, peer: str, now: float) -> None:
        """Delete the IKE SA of ``peer`` (RFC 7296 §1.4.1) and stop retrying it."""
        self.peer_policy.not_wanted(peer)
        for sa in self._of_peer(peer):
            if sa.state is IkeState.ESTABLISHED:
                sa.tasks.clear()
                sa.outstanding = None  # window 1: the Delete replaces whatever was pending
                sa.queue(DeleteIkeSa("terminated by operator"), now)
            else:
                sa.deleted("terminated by operator", now)
            self._collect(sa, now)

    def reconfigure(self, config: Config, now: float) -> dict[str, Any]:
        """Adopt a reloaded config (live reload).

        Peers whose config is unchanged keep their SAs untouched; removed and
        changed peers get a Delete for their IKE SA (RFC 7296 §1.4.1); changed
        and added peers are known from now on (the caller starts them).  A peer
        whose IKE settings are the same and only children differ is ``updated``:
        its IKE SA and unchanged children stay, removed and changed children get a
        Delete for their CHILD_SAs (the caller starts the added and changed ones).
        Returns the IKE peers by kind (:data:`~ipsecd.ike.policy.PLAN_KINDS`) and,
        under ``children``, each updated peer's children by kind.
        """
        plan, children = self.peer_policy.reconfigure(config)
        for name in plan["removed"] + plan["changed"]:
            self.terminate(name, now)
            # The old IKE SA finishes its Delete on its own; a new one may start beside it.
            self._retiring |= {s.local_spi for s in self._of_peer(name)}
        self.config = config
        self.peer_policy.adopt(config, plan)
        for name in plan["updated"]:
            # The IKE SA stays: it reads the new children from now on; the CHILD_SAs of
            # removed and changed children are deleted (the caller starts the new ones).
            new = self.peers[name]
            for sa in self._of_peer(name):
                sa.peer = new
            gone = children[name]["removed"] + children[name]["changed"]
            self._delete_children(name, gone, "child removed or changed by a reload", now)
        return {**plan, "children": children}

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA (one Delete each; the shell exits afterwards)."""
        for peer in list(self.peers):
            self.terminate(peer, now)

    def receive_datagram(
        self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float
    ) -> None:
        """One IKE message (without non-ESP marker), at once.  Never raises: drops are
        counted."""
        header = self.inbox.check(data)
        if header is not None:
            self._handle(Received(bytes(data), header, _address(local), _address(remote)), now)

    def enqueue_datagram(
        self,
        data: bytes | memoryview,
        local: tuple[str, int],
        remote: tuple[str, int],
        now: float,
    ) -> None:
        """Take one IKE message for later (:meth:`process_queued`) after the cheap checks
        only: its size and header (:mod:`ipsecd.ike.inbox`).  Messages for an IKE SA we
        hold are queued apart from new IKE_SA_INIT requests and unknown SPIs."""
        header = self.inbox.check(data)
        if header is None:
            return
        remote = _address(remote)
        known = self._for_known_sa(header, remote)
        data = bytes(data)
        verified = (
            not known
            and is_init_request(header)
            and (self.half_open.cookies_required_at(now) or self.inbox.backlogged())
            and self.half_open.carries_valid_cookie(data, header.spi_i, remote[0], now)
        )
        self.inbox.offer(Received(data, header, _address(local), remote, verified), known, now)

    def intake_paused_for(self, now: float) -> float:
        """Seconds during which the IKE port may stay unread: new requests would be dropped
        (:mod:`ipsecd.ike.inbox`), and no IKE_SA_INIT of ours waits for its answer there."""
        pause = self.inbox.paused_for(now)
        if pause and any(sa.state is IkeState.INIT_SENT for sa in self.sas.values()):
            return 0.0  # O(SAs), but only while paused: not per event
        return pause

    def pending(self) -> int:
        """IKE messages queued by :meth:`enqueue_datagram`, not processed yet."""
        return len(self.inbox)

    def next_step_waiting(self, now: float) -> bool:
        """Exactly one message waits, and it is an exchange's next step for an IKE SA we
        hold, or a new request to an idle responder (no half-open SA, no COOKIE demanded,
        no backlog).  Other new requests wait for their share of the time (ike/inbox.py):
        taken in the reader's turn while others were half-open, a burst of 1000
        IKE_SA_INITs came up 1.7x slower (bench/README.md)."""
        if len(self.inbox) != 1:
            return False
        if self.inbox.only_known():
            return True
        return not (
            len(self.half_open)
            or self.inbox.backlogged()
            or self.half_open.cookies_required_at(now)
        )

    def process_queued(self, now: float, more: Callable[[], bool] = lambda: True) -> int:
        """Process queued messages while ``more()`` says so (at least one); returns how
        many.  The shell's ``more`` is its time budget for IKE work per wake-up."""
        return self.inbox.drain(
            lambda item: self._handle(item, now),
            more,
            now,
            known_now=lambda item: self._for_known_sa(item.header, item.remote),
        )

    def _handle(self, item: Received, now: float) -> None:
        try:
            self._receive(item.data, item.header, item.local, item.remote, now)
        except Exception:  # a bug or hostile input must not take the daemon down
            self._count("internal_error")

    def _for_known_sa(self, header: codec.Header, remote: Address) -> bool:
        """Whether a message belongs to an IKE SA we hold (by our SPI, RFC 7296 §2.6), or
        retransmits the IKE_SA_INIT of a half-open one (answered from its cache)."""
        # An answer to our own IKE_SA_INIT may have SPIr 0 too (COOKIE, INVALID_KE_PAYLOAD):
        # it is for our SA, found below by SPIi, not a new request.
        if is_init_request(header):
            return self.half_open.get((remote[0], header.spi_i)) is not None
        sa = self.sas.get(header.spi_r if header.initiator else header.spi_i)
        return sa is not None and sa.alive

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out = list(self._outgoing)
        self._outgoing.clear()  # the scheduler appends to this very list
        return out

    def events_waiting(self) -> bool:
        """:meth:`next_event` has one."""
        return bool(self._events)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` has work: O(log n) in the number of SAs."""
        times = [
            t
            for t in (self.scheduler.timers.next(), self.peer_policy.next_retry())
            if t is not None
        ]
        if self.scheduler.usage_reported:
            times.append(self._usage_due)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """The IKE SAs and peer retries due at ``now``: at most :data:`TIMER_SLICE` of
        each per call, the rest stay due (:meth:`get_timer` says so at once), so that the
        shell reads its sockets between slices (1000 tunnels up at once have their DPD due
        at once: some 160 ms of work in one piece otherwise, ESP waiting behind it)."""
        for spi in self.scheduler.timers.pop_due(now, TIMER_SLICE):
            sa = self.sas.get(spi)
            if sa is None:
                continue
            self.scheduler.run(sa, now)
            self._collect(sa, now)
        if now >= self._usage_due:  # the shell reports usage when we wake it (child_usage)
            self._last_usage_check = now
        for name in self.peer_policy.due_retries(now, TIMER_SLICE):
            self._count("connection_retries")
            self.initiate(name, now)

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """One entry per IKE peer, for ipsecctl (plain data, no objects); ``now`` gives
        ``next_attempt_in_seconds`` (ipsecd.ike.status)."""
        return [self._peer_status(name, now) for name in self.peers]

    def peer_status(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        """The :meth:`status` entry of one IKE peer (None: no IKE peer of that name),
        without building every peer's (the daemon asks per event of a waiting command)."""
        return self._peer_status(name, now) if name in self.peers else None

    def _peer_status(self, name: str, now: float | None) -> dict[str, Any]:
        return peer_status(
            name,
            self.peer_state[name],
            self._sa_for(name),
            ike_sas=sum(s.alive and not self.half_open.holds(s) for s in self._of_peer(name)),
            now=now,
        )

    # ---- beyond the contract (tests, ipsecctl rekey/extra children) --------

    def create_child(
        self,
        peer: str,
        now: float,
        local_ts: tuple[TrafficSelector, ...] | None = None,
        remote_ts: tuple[TrafficSelector, ...] | None = None,
        proposals: tuple[Proposal, ...] | None = None,
        *,
        child: str = "",
    ) -> None:
        """Negotiate one more CHILD_SA with CREATE_CHILD_SA (RFC 7296 §1.3.1): of the
        configured child ``child`` (the peer's first if not named), its selectors and
        proposals unless given."""
        sa = self._established(peer)
        self._queue_child(sa, sa.child_config(child), now, local_ts, remote_ts, proposals)
        self._collect(sa, now)

    def _queue_child(
        self,
        sa: IkeSa,
        cfg: ChildConfig,
        now: float,
        local_ts: tuple[TrafficSelector, ...] | None = None,
        remote_ts: tuple[TrafficSelector, ...] | None = None,
        proposals: tuple[Proposal, ...] | None = None,
    ) -> None:
        sa.queue(
            CreateChildSa(
                tuple(local_ts or cfg.local_ts),
                tuple(remote_ts or cfg.remote_ts),
                tuple(proposals or cfg.child_proposals),
                name=cfg.name,
                mode=cfg.mode,
                protocol=cfg.protocol,
            ),
            now,
        )

    def _create_missing(self, sa: IkeSa, names: tuple[str, ...], now: float) -> None:
        """CREATE_CHILD_SA for each configured child of ``names`` that ``sa`` (established)
        has no CHILD_SA of, installed or being created."""
        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return
        if any(isinstance(t, DeleteIkeSa) for t in sa.tasks):
            return  # being deleted (its first CHILD_SA failed)
        have = self._present(sa)
        for name in names:
            cfg = sa.peer.child(name)
            if cfg is not None and name not in have:
                self._queue_child(sa, cfg, now)
                have.add(name)

    @staticmethod
    def _present(sa: IkeSa) -> set[str]:
        """The configured children ``sa`` has a CHILD_SA of (installed, not being deleted)
        or is creating one of."""
        pending = [*sa.tasks, sa.outstanding.task if sa.outstanding is not None else None]
        going = {spi for t in pending if isinstance(t, DeleteChildSa) for spi in t.spis_in}
        have = {
            c.name
            for c in sa.children.values()
            if c.state in LIVE_STATES
            and c.state is not ChildState.DELETING
            and c.spi_in not in going
        }
        return have | {t.name_of_child for t in pending if isinstance(t, CreateChildSa)}

    def _delete_children(self, peer: str, names: list[str], reason: str, now: float) -> None:
        """Delete the CHILD_SAs of the configured children ``names`` of ``peer`` (and drop
        their pending creations and rekeys); the IKE SA and its other children stay."""
        if not names:
            return
        for sa in self._of_peer(peer):
            sa.tasks = [
                t
                for t in sa.tasks
                if not (isinstance(t, CreateChildSa) and t.name_of_child in names)
            ]
            spis = [
                c.spi_in
                for c in sa.children.values()
                if c.name in names and c.state in LIVE_STATES and c.state is not ChildState.DELETING
            ]
            if spis and sa.state is IkeState.ESTABLISHED:
                sa.queue(DeleteChildSa(spis, reason), now)
                self._collect(sa, now)

    def delete_child(self, peer: str, spi_in: int, now: float) -> None:
        """Delete one CHILD_SA by our inbound SPI (RFC 7296 §1.4.1)."""
        sa = self._established(peer)
        sa.queue(DeleteChildSa([spi_in]), now)
        self._collect(sa, now)

    def check_liveness(self, peer: str, now: float) -> None:
        """Send an empty INFORMATIONAL request (RFC 7296 §2.4)."""
        sa = self._established(peer)
        sa.queue(LivenessCheck(), now)
        self._collect(sa, now)

    def ike_sa(self, peer: str) -> IkeSa | None:
        return self._sa_for(peer)

    def rekey(self, peer: str, now: float) -> None:
        """Rekey every CHILD_SA of ``peer`` now (RFC 7296 §2.8; ``ipsecctl rekey``)."""
        sa = self._established(peer)
        for child in list(sa.children.values()):
            self.scheduler.rekey_child(sa, child, now)
        self._collect(sa, now)

    def rekey_ike(self, peer: str, now: float) -> None:
        """Rekey the IKE SA of ``peer`` now (RFC 7296 §2.18)."""
        sa = self._established(peer)
        self.scheduler.rekey_ike(sa, now)
        self._collect(sa, now)

    def peer_moved(self, peer: str, spi_in: int, remote: Address, now: float) -> None:
        """Authentic ESP of CHILD_SA ``spi_in`` came from ``remote``, not from the endpoint
        the IKE SA knows (the data plane verified its ICV and replay window).

        A peer behind a NAT (RFC 7296 §2.23) is followed there: its NAT mapping changed
        (rebinding, another uplink), as strongSwan does without MOBIKE.  A peer not
        behind a NAT is not moved by ESP; only its authenticated IKE moves it.
        """
        for sa in self._of_peer(peer):
            if spi_in not in sa.children or sa.state is not IkeState.ESTABLISHED:
                continue
            if sa.nat_remote and sa.rekeyed_to is None and sa.remote != remote:
                sa.remote = remote
                self._count("peer_address_updated")
                self._events.append(PeerAddressChanged(peer, sa.local, remote))
                self._collect(sa, now)
            return

    def child_usage(
        self,
        peer: str,
        spi_in: int,
        bytes: int,  # noqa: A002 - the RFC's word
        packets: int,
        now: float,
        *,
        seq_out: int = 0,
        packets_in: int | None = None,
    ) -> None:
        """Data-plane usage of one CHILD_SA (by our inbound SPI), for its soft/hard limits.

        ``bytes``/``packets``: inner bytes and packets of the busier direction since the
        SA was installed; ``seq_out``: the last outbound ESP sequence number;
        ``packets_in``: inbound packets, whose growth proves the peer alive (no liveness
        check needed, RFC 7296 §2.4).  Call every :data:`USAGE_INTERVAL` seconds or so;
        unknown SPIs (manual SAs) are ignored.
        """
        for sa in self._of_peer(peer):
            child = sa.children.get(spi_in)
            if child is None:
                continue
            self.scheduler.child_usage(
                sa, child, bytes, packets, now, seq_out=seq_out, packets_in=packets_in
            )
            self._collect(sa, now)
            return

    # ---- the SA table ------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _new_sa(
        self,
        *,
        peer: PeerConfig,
        initiator: bool,
        local: Address,
        remote: Address,
        now: float,
        spi_i: int = 0,
        candidates: tuple[PeerConfig, ...] = (),
        send_initial_contact: bool = False,
        replace_others: bool = False,
    ) -> IkeSa:
        """The one factory of IKE SAs that start with IKE_SA_INIT (rekeys: IkeSa.successor)."""
        sa = IkeSa(peer, initiator, local, remote, self.context, now, spi_i=spi_i)
        sa.candidates = candidates
        sa.send_initial_contact, sa.replace_others = send_initial_contact, replace_others
        return sa

    def _of_peer(self, peer: str) -> list[IkeSa]:
        return self.table.of_peer(peer)

    def _sa_for(self, peer: str, *, unauthenticated: bool = True) -> IkeSa | None:
        """The peer's current IKE SA.  A half-open responder SA is only a guess until
        IKE_AUTH: it counts (for status) when it comes from the peer's address, and never
        keeps us from initiating or retrying (forged IKE_SA_INITs must not block a peer)."""
        found = [
            s
            for s in self._of_peer(peer)
            if s.alive
            and s.rekeyed_to is None
            and not s.collision_pending
            and s.local_spi not in self._retiring
            and (not self.half_open.holds(s) or (unauthenticated and self._from_peer_address(s)))
        ]
        for preferred in (
            IkeState.ESTABLISHED,
            IkeState.AUTH_SENT,
            IkeState.INTERMEDIATE_SENT,
            IkeState.INIT_SENT,
        ):
            for sa in found:
                if sa.state is preferred:
                    return sa
        return found[0] if found else None

    def _from_peer_address(self, sa: IkeSa) -> bool:
        try:
            source = ipaddress.ip_address(sa.remote[0])
        except ValueError:
            return False
        return source == self.peer_policy.address_of(sa.peer)

    def _resolve(self, config: PeerConfig, now: float) -> IpAddress | None:
        """The address of a peer written with a DNS name, resolved now (at every start and
        retry); None after a failure, which is reported and retried like any other."""
        version = config.local_address.version
        found = list(self.resolve(config.remote_host, version)) if self.resolve else []
        address = next((a for a in found if a.version == version), None)
        if address is None:
            self._count("dns_failures")
            reason = (
                f"cannot resolve {config.remote_host} to an IPv{version} address"
                f" (local_address {config.local_address} is IPv{version})"
            )
            self.peer_state[config.name].last_error = reason
            self._events.append(NegotiationFailed(config.name, reason))
            self.peer_policy.initiator_gone(config.name, now)  # retried if wanted
            return None
        self.peer_policy.resolved(config.name, address)
        return address

    def _established(self, peer: str) -> IkeSa:
        sa = self._sa_for(peer)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            raise KeyError(f"no established IKE SA for peer {peer!r}")
        return sa

    def usage_due(self, now: float) -> bool:
        """Whether :meth:`handle_timer` at ``now`` wants CHILD_SA usage (``child_usage``)
        first: every ``USAGE_INTERVAL`` while CHILD_SAs exist, not at every timer."""
        return self.scheduler.usage_reported and now >= self._usage_due

    @property
    def _usage_due(self) -> float:
        return self._last_usage_check + USAGE_INTERVAL

    # ---- dispatch ------------------------------------------------------------

    def _receive(
        self, data: bytes, header: codec.Header, local: Address, remote: Address, now: float
    ) -> None:
        exchange = header.exchange_type
        if exchange == ExchangeType.IKE_SA_INIT and not header.response and header.spi_r == 0:
            self._receive_init_request(data, header, local, remote, now)
            return
        # The I flag says whether the sender is the original initiator (§3.1).
        spi = header.spi_r if header.initiator else header.spi_i
        sa = self.sas.get(spi)
        if sa is None or not sa.alive:
            if not header.response and self._answer_closed(data, header, spi, remote, now):
                return
            self._count("unknown_spi")
            if not header.response and exchange != ExchangeType.IKE_SA_INIT:
                # Perhaps we restarted and the peer did not: tell it (RFC 7296 §2.21.4).
                answer = self._invalid_spi.answer(
                    header, len(data), local, remote, self.natt_port, now
                )
                self._count("invalid_ike_spi_sent" if answer else "invalid_ike_spi_suppressed")
                if answer is not None:
                    self._send_stateless(
                        answer,
                        ExchangeType.INFORMATIONAL,
                        header.message_id,
                        NotifyType.INVALID_IKE_SPI,
                    )
            return
        if exchange == ExchangeType.IKE_SA_INIT and header.response and sa.spi_r == 0:
            pass  # our IKE_SA_INIT answered: the responder SPI is learned by the task
        elif sa.remote_spi and sa.remote_spi != (header.spi_r if sa.initiator else header.spi_i):
            self._count("unknown_spi")
            return
        sa.receive(data, header, local, remote, now)
        self._collect(sa, now)

    def _answer_closed(
        self, data: bytes, header: codec.Header, spi: int, remote: Address, now: float
    ) -> bool:
        """A retransmitted Delete of an IKE SA that is gone: answered again from
        :attr:`closed` (True), or not about such a Delete at all (False)."""
        remote_spi = header.spi_i if header.initiator else header.spi_r
        outcome, entry = self.closed.answer(spi, remote_spi, header.message_id, data, remote, now)
        if outcome == "unknown_spi":
            return False
        self._count(outcome)
        if entry is not None:
            marker = entry.local[1] == self.natt_port
            self._outgoing.extend(
                OutgoingDatagram(datagram, entry.local, entry.cached.source, marker=marker)
                for datagram in entry.cached.datagrams
            )
        return True

    def _receive_init_request(
        self, data: bytes, header: codec.Header, local: Address, remote: Address, now: float
    ) -> None:
        """A new IKE_SA_INIT (SPIr 0).  Nothing is kept for a request that does not decode,
        and only a responder SA that sent its answer counts as half-open (§2.6)."""
        admission = self.half_open.admit(
            data,
            header.spi_i,
            header.message_id,
            remote[0],
            now,
            backlogged=self.inbox.backlogged(),
        )
        if admission.retransmit_of is not None:
            existing = admission.retransmit_of
            existing.receive(data, header, local, remote, now)  # retransmit -> cached answer
            self._collect(existing, now)
            return
        if admission.drop:
            return
        candidates = self.peer_policy.candidates(remote[0])
        if not candidates:
            self._count("unknown_peer")
            return
        if admission.reply is not None:
            # COOKIE (§2.6) or UNSUPPORTED_CRITICAL_PAYLOAD (§2.5): no state, no Diffie-Hellman.
            marker = local[1] == self.natt_port
            answer = OutgoingDatagram(admission.reply, local, remote, marker=marker)
            self._send_stateless(
                answer, ExchangeType.IKE_SA_INIT, header.message_id, admission.reply_notify
            )
            return
        try:
            codec.parse_message(data)
        except MalformedMessage:
            self._count("malformed")  # no state at all for what we cannot read
            return
        sa = self._new_sa(
            peer=candidates[0],
            initiator=False,
            local=local,
            remote=remote,
            now=now,
            candidates=candidates,
            spi_i=header.spi_i,
        )
        sa.receive(data, header, local, remote, now)
        # An answer is bounded by the request (3x), an error notify by 1x (halfopen.py).
        error = sa.state is not IkeState.HALF_OPEN
        if self.half_open.refuse_amplification(data, [d.data for d in sa.outgoing], error=error):
            sa.outgoing.clear()
            sa.deleted("answer would amplify the request", now)
        if sa.state is IkeState.HALF_OPEN:  # answered: half-open until IKE_AUTH
            self.half_open.add(sa, data, remote[0])
            self.table.add(sa)
        elif sa.alive:  # nothing answered, nothing kept
            sa.deleted("IKE_SA_INIT request not answered", now)
        self._collect(sa, now)

    def _send_stateless(
        self, answer: OutgoingDatagram, exchange: int, message_id: int, notify: int
    ) -> None:
        """An answer no IKE SA keeps, of one notify (COOKIE, UNSUPPORTED_CRITICAL_PAYLOAD,
        INVALID_IKE_SPI)."""
        if self.trace is not None:
            line = describe(
                "sending", exchange, True, message_id, [notify_label(notify)],
                answer.local, answer.remote,
            )  # fmt: skip
            self.trace(line, answer.remote, False)
        self._outgoing.append(answer)

    # ---- after every step of an SA: datagrams, events, signals, the timer ------

    def _collect(self, sa: IkeSa, now: float) -> None:
        """Move an SA's datagrams/events out, act on its signals, reschedule it."""
        reported = self.scheduler.usage_reported
        self._collect_sa(sa, now)
        if not reported and self.scheduler.usage_reported:
            # The first CHILD_SA after none: its usage is due an interval from now, not at
            # once for the time the daemon had none (a timer right after each handshake
            # of an idle daemon, 0.1-0.16 ms of its CPU then).
            self._last_usage_check = now

    def _collect_sa(self, sa: IkeSa, now: float) -> None:
        if self.table.holds(sa):
            self.table.reindex(sa)
        self.scheduler.schedule_lifetimes(sa, now)
        self._drain(sa, now)
        seen: list[SaSignal] = []
        while sa.signals:
            signals, sa.signals = sa.signals, []
            seen += signals
            for signal in signals:
                self._signal(sa, signal, now)
            self._drain(sa, now)
        if not sa.alive:
            self._gone(sa, seen, now)
        elif self.half_open.holds(sa):
            # Its peer is a guess until IKE_AUTH (every half-open SA of a burst from
            # ``remote_address: any`` peers guesses the first): it has no relatives yet,
            # and rescheduling the guess's SAs made each step O(burst).
            self.scheduler.reschedule(sa)
        elif self.table.holds(sa):
            self._reschedule_peer(sa.peer_name, sa)

    def _drain(self, sa: IkeSa, now: float) -> None:
        if sa.outgoing:
            self._outgoing.extend(sa.outgoing)
            sa.outgoing.clear()
        state = self.peer_state.get(sa.peer_name)
        for event in sa.events:
            self._events.append(event)
            if isinstance(event, NegotiationFailed) and state is not None:
                state.last_error = event.reason
            elif isinstance(event, UnauthenticatedFailure):
                self._count("unauthenticated_failures")  # the source's, not the peer's
        sa.events.clear()
        if sa.state is IkeState.ESTABLISHED:
            if state is not None and sa.last_error is None:
                state.last_error = None
            if sa.last_keepalive == 0.0:
                sa.last_keepalive = now
            self.half_open.established(sa, now)

    def _reschedule_peer(self, peer: str, sa: IkeSa | None = None) -> None:
        """Recompute the timers of every SA of ``peer``: a step of one IKE SA (``sa``) can
        change its relatives (rekey successors and collisions, RFC 7296 §2.8.2), never
        a half-open SA that only guesses it belongs to ``peer``."""
        for other in self._of_peer(peer):
            if other is sa or not self.half_open.holds(other):
                self.scheduler.reschedule(other)

    def _signal(self, sa: IkeSa, signal: SaSignal, now: float) -> None:
        if isinstance(signal, Authenticated):
            if sa.state is not IkeState.ESTABLISHED:
                return  # already being deleted again (its first CHILD_SA failed)
            if signal.initial_contact:
                self._forget_others(sa, now, "restarted (INITIAL_CONTACT)", all_of_them=False)
            if sa.replace_others:
                sa.replace_others = False
                self._forget_others(sa, now, "replaced after INVALID_IKE_SPI (restarted?)")
            self._authenticated(sa, now)
            if sa.initiator and sa.state is IkeState.ESTABLISHED:
                # The children after the first (RFC 7296 §1.3.1).
                self._create_missing(sa, sa.wanted_children, now)
        elif isinstance(signal, ReauthDue):
            self._reauthenticate(sa, now)
        elif isinstance(signal, ReauthComplete):
            self._reauth_complete(signal.old, now)
        elif isinstance(signal, PeerDeletedChild):
            self._child_closed(sa, signal.name, now)
        elif isinstance(signal, RestartHint):
            self._restart_hint(sa, now)
        elif isinstance(signal, Successor):
            new = signal.sa
            self.table.add(new)
            new.kick(now)
            self._collect(new, now)
        elif isinstance(signal, ChildExpired):
            child = sa.children.get(signal.spi_in)
            if child is not None:
                self._count("child_sa_rekeyed_not_deleted")
                sa.queue(DeleteChildSa([child.spi_in], "replaced, not deleted by the peer"), now)
        # PeerUnresponsive and PeerDeletedIkeSa are acted on once the SA is gone (_gone).

    def _gone(self, sa: IkeSa, signals: list[SaSignal], now: float) -> None:
        """The end of an IKE SA: out of every table; retry or dpd_action for its peer."""
        if sa.rekey_collision is not None:
            # Gone before a simultaneous rekey was decided: the SA we created for the
            # peer's exchange is deleted like any replaced SA, after the grace period.
            orphan, sa.rekey_collision = sa.rekey_collision[0], None
            orphan.collision_pending = False
            orphan.rekeyed_to, orphan.rekeyed_at = sa, now
            self.scheduler.reschedule(orphan)
        if sa.reassembler is not None:
            sa.reassembler.clear()  # its partial fragments no longer count
        cached = sa.cached_response
        if cached is not None and any(isinstance(s, PeerDeletedIkeSa) for s in signals):
            self.closed.keep(sa.local_spi, sa.remote_spi, cached, sa.local, now)
        if self.table.remove(sa):
            self.scheduler.forget(sa)
        retiring = sa.local_spi in self._retiring
        self._retiring.discard(sa.local_spi)
        self.half_open.discard(sa)
        name = sa.peer_name
        self._replacement_gone(sa, now)
        if any(isinstance(s, PeerUnresponsive) for s in signals) and name in self.peer_state:
            self._peer_dead(sa, now)
        elif (
            any(isinstance(s, PeerDeletedIkeSa) for s in signals)
            and name in self.peer_state
            and not retiring
            and self._sa_for(name, unauthenticated=False) is None
        ):
            self._ike_closed(sa, now)
        if sa.initiator and self._sa_for(name, unauthenticated=False) is None:
            self.peer_policy.initiator_gone(name, now)
        self._reschedule_peer(name)

    # ---- dead peers and restarts (RFC 7296 §2.4) ------------------------------

    def _peer_dead(self, sa: IkeSa, now: float) -> None:
        """An established IKE SA went unanswered: apply the peer's ``dpd_action``."""
        action = sa.peer.dpd_action
        self._count(f"dpd_{action}")
        if sa.local_spi in self._retiring or sa.peer_name not in self.peers:
            return
        self._events.append(PeerDead(sa.peer_name, action))
        self._last_event(
            sa.peer_name, "peer-dead", now, f"peer did not answer (DPD); dpd_action {action}"
        )
        on_demand = self.peer_policy.on_demand(sa.peer)
        if sa.peer.responds_only:
            return  # remote_address any: it comes back to us
        if self.peer_policy.dead(sa.peer) == "restart":
            self.initiate(sa.peer_name, now, on_demand=on_demand)

    def _restart_hint(self, sa: IkeSa, now: float) -> None:
        """INVALID_IKE_SPI came back for a request of ``sa``: the peer probably restarted.

        The hint may be forged, so ``sa`` itself is left alone (RFC 7296 §2.21.4); with
        ``dpd_action: restart`` a new IKE SA with INITIAL_CONTACT is set up beside it and
        replaces it once up.  Either way both sides end with the new one only.
        """
        name = sa.peer_name
        if (
            sa.peer.dpd_action != "restart"
            or sa.peer.responds_only
            or name not in self.peers
            or sa.local_spi in self._retiring
            or any(s.alive and s.replace_others for s in self._of_peer(name))
        ):
            return
        self._count("restart_hints_followed")
        self.initiate(name, now, replace=True, on_demand=self.peer_policy.on_demand(sa.peer))

    def _forget_others(self, sa: IkeSa, now: float, why: str, *, all_of_them: bool = True) -> None:
        """N(INITIAL_CONTACT) (§2.4): the peer forgot its other IKE SAs with us; drop them
        (and their CHILD_SAs) without a Delete, which it could not decrypt anyway.  Not
        ``all_of_them``: only those established before ``sa`` began (reauth.forgotten_by);
        one established since crossed ``sa`` and is still the peer's."""
        assert sa.peer.auth is not None
        for name in self.peer_policy.same_remote_id(sa.peer.auth.remote_id):
            others = [o for o in self._of_peer(name) if o is not sa]
            if not all_of_them:
                others = reauth.forgotten_by(sa, others)
            for other in others:
                if other.state in (IkeState.ESTABLISHED, IkeState.DELETING):
                    self._count("initial_contact_deleted")
                    other.deleted(f"peer {other.peer_name} {why}", now)
                    self._collect(other, now)

    # ---- reauthentication and crossing initiations (RFC 7296 §2.8.3; ike/reauth.py) ----

    def _last_event(self, peer: str, event: str, now: float, message: str) -> None:
        state = self.peer_state.get(peer)
        if state is not None:
            state.last_event = LastEvent(event, now, message)

    def _authenticated(self, sa: IkeSa, now: float) -> None:
        """``sa`` authenticated beside other IKE SAs of its peer: a reauthentication
        replaces, a crossing is decided (the rules of :mod:`ipsecd.ike.reauth`)."""
        name = sa.peer_name
        if name in self.peer_state:
            self.peer_policy.set_retry(name, None)  # up (the peer may have come back)
        others = [
            o
            for o in self._of_peer(name)
            if o is not sa and o.alive and o.local_spi not in self._retiring
        ]
        reauth.no_initial_contact(others)
        if sa.initiator:
            self._ours_authenticated(sa, others, now)
        else:
            self._theirs_authenticated(sa, others, now)

    def _ours_authenticated(self, sa: IkeSa, others: list[IkeSa], now: float) -> None:
        """Rule 1: our reauthentication replaces its old IKE SA; any other established
        IKE SA of the peer crossed ours, and all pairs but the largest are deleted."""
        old = reauth.current(sa.reauth_of) if sa.reauth_of is not None else None
        sa.reauth_of = None
        if old is not None and (
            old.state is not IkeState.ESTABLISHED or old.rekeyed_to is not None
        ):
            old = None  # gone meanwhile, or the peer's reauthentication replaced it
        losers = reauth.crossing_losers(sa, [o for o in others if o is not old])
        if old is not None and sa in losers:
            # The peer reauthenticated at the same moment and its IKE SA won: the peer
            # deletes old; should its attempt fail, ours is tried again later.
            old.reauth_at = now + self.policy.retry_pause
        elif old is not None:
            reauth.replace(old, sa, now)
            reauth.recreate(old, sa, now)  # then ReauthComplete deletes old
            self._count("ike_sa_reauthenticated")
            self._last_event(
                sa.peer_name,
                "reauthenticated",
                now,
                "IKE SA reauthenticated (reauth_time): the new IKE SA and CHILD_SAs replace"
                " the old ones",
            )
        self._delete_duplicates(sa, losers, now)

    def _delete_duplicates(self, sa: IkeSa, losers: list[IkeSa], now: float) -> None:
        """The losers of a crossing (``sa`` just authenticated) go, by a Delete each.

        One the peer initiated, when ours (``sa``) carried N(INITIAL_CONTACT): a peer that
        acts on it (RFC 7296 §2.4; strongSwan does: "destroying duplicate IKE_SA ...,
        received INITIAL_CONTACT") drops that SA silently if it was up when the notify
        came, and then never answers our Delete; but if the notify came while it was
        still setting that SA up (our IKE_AUTH answer crossed our request), it keeps the
        SA, sends through its CHILD_SA, and ignores a Delete that overtakes our answer
        (charon: "ignoring INFORMATIONAL in IKE_SA state CONNECTING").  We cannot tell
        which: the Delete goes with one retransmission (DUPLICATE_DELETE_RETRANSMITS),
        the loser's CHILD_SAs stay installed inbound until it ends, and silence ends it
        without taking the peer for dead."""
        for loser in losers:
            self._count("duplicate_ike_sa_deleted")
            reason = "duplicate IKE SA (both ends initiated)"
            if loser is not sa and not loser.initiator and sa.initiator and sa.send_initial_contact:
                loser.duplicate_delete = True
            loser.queue(DeleteIkeSa(reason), now)
            if loser is not sa:
                self._collect(loser, now)

    def _theirs_authenticated(self, sa: IkeSa, others: list[IkeSa], now: float) -> None:
        """Rules 2 to 4: the peer's new IKE SA crossed one of ours that was just set up
        (decided here, as the peer does, if it decides at all); with no initiation of
        ours outstanding, it replaces ours (the peer deletes them); otherwise ours
        decides when it is up."""
        if reauth.crossed_ours(sa, others):
            self._crossed_ours(sa, reauth.crossing_losers(sa, others), now)
            return
        replaced = reauth.replaced_by_peer(sa, others)
        for old in replaced:
            reauth.replace(old, sa, now)
            self._count("ike_sa_replaced_by_peer")
        if replaced:
            self._hold_outbound(sa)
            self._last_event(
                sa.peer_name,
                "reauthenticated-by-peer",
                now,
                "the peer set up a new IKE SA beside ours (reauthentication): it replaces"
                " the old one, which the peer deletes",
            )

    def _crossed_ours(self, sa: IkeSa, losers: list[IkeSa], now: float) -> None:
        """Rule 2: the peer's ``sa`` and one of ours crossed.  If ``sa`` loses, it goes at
        once (the peer has ours up).  If ours loses, the peer may not have ``sa`` up
        before our IKE_AUTH response arrives: ours keeps carrying traffic and is
        deleted after CROSSING_GRACE, unless the peer deletes it first (rule 1)."""
        if sa in losers:
            self._delete_duplicates(sa, losers, now)
            return
        for loser in losers:
            self._count("duplicate_ike_sa_deleted")
            reauth.replace(loser, sa, now, crossed=True)
            self.scheduler.reschedule(loser)
        if losers:
            self._hold_outbound(sa)

    def _hold_outbound(self, new: IkeSa) -> None:
        """The peer's reauthentication: keep sending with the old CHILD_SAs until the old
        IKE SA is deleted, as a rekey responder does (§2.8): the peer installs the new
        ones only when our IKE_AUTH response arrives.  Their ChildSaEstablished events,
        queued already, install them inbound only."""
        held = set()
        for child in new.children.values():
            if child.state in LIVE_STATES and child.outbound_active:
                child.outbound_active = False
                held.add(child.spi_in)
        self._events = deque(
            events.ChildSaEstablished(e.peer, e.child, outbound_active=False)
            if isinstance(e, events.ChildSaEstablished)
            and e.peer == new.peer_name
            and e.child.spi_in in held
            else e
            for e in self._events
        )

    def _reauthenticate(self, old: IkeSa, now: float) -> None:
        """``reauth_time`` of ``old`` passed: a new IKE SA without INITIAL_CONTACT (the
        peer keeps ``old`` until we delete it, make-before-break, §2.8.3)."""
        name = old.peer_name
        if (
            name not in self.peers
            or old.local_spi in self._retiring
            or old.peer.responds_only  # remote_address any: the peer reauthenticates
            or self._sa_for(name, unauthenticated=False) is not old
        ):
            return
        self._count("ike_sa_reauths_started")
        # The new IKE_AUTH carries the first of old's children; reauth.recreate the others.
        live = (c.name for c in old.children.values() if c.state in LIVE_STATES)
        self._initiate_sa(
            self.peers[name],
            now,
            send_initial_contact=False,
            reauth_of=old,
            children=tuple(dict.fromkeys(live)),
        )

    def _reauth_complete(self, old: IkeSa, now: float) -> None:
        """The reauthentication's CHILD_SAs stand: delete the IKE SA it replaced."""
        if old.state is not IkeState.ESTABLISHED:
            return  # the peer deleted it first
        old.tasks.clear()  # whatever was queued for it is moot
        old.queue(DeleteIkeSa("reauthenticated: replaced by a new IKE SA"), now)
        self._collect(old, now)

    def _replacement_gone(self, sa: IkeSa, now: float) -> None:
        """``sa`` ended: IKE SAs it was to replace by a reauthentication are restored
        (it lost a crossing), or retried later (it never authenticated)."""
        name = sa.peer_name
        new = sa.rekeyed_to
        if sa.reauthenticated and new is not None and new.alive:
            for child in list(new.children.values()):  # the new CHILD_SAs carry traffic now
                if child.replaces is None and not child.redundant:
                    new.activate_outbound(child)
            self._drain(new, now)
        for other in self._of_peer(name):
            if other.rekeyed_to is sa and other.reauthenticated:
                survivors = [s for s in self._of_peer(name) if s is not other and reauth.settled(s)]
                reauth.unreplace(other, survivors[0] if survivors else None)
        old = sa.reauth_of
        if old is not None:
            old = reauth.current(old)
            if old.state is IkeState.ESTABLISHED and old.rekeyed_to is None:
                self._count("ike_sa_reauth_failed")
                old.reauth_at = now + self.policy.retry_pause

    # ---- the peer deleted an IKE SA or a CHILD_SA: close_action (RFC 7296 §1.4.1) ----

    def _ike_closed(self, sa: IkeSa, now: float) -> None:
        """The peer deleted our last IKE SA with it (not a rekey or reauthentication)."""
        name = sa.peer_name
        action = self.peer_policy.closed(sa.peer, now)
        self._count("peer_closed_ike_sa")
        self._events.append(events.PeerClosed(name, "ike-sa", action))
        self._last_event(name, "peer-closed-ike-sa", now, close_message("ike-sa", action))

    def _child_closed(self, sa: IkeSa, child: str, now: float) -> None:
        """The peer deleted a CHILD_SA of the configured child ``child`` of ``sa``: that
        child's ``close_action`` once none of its CHILD_SAs is left."""
        name = sa.peer_name
        config = sa.peer.child(child)
        if (
            name not in self.peers
            or config is None
            or sa.local_spi in self._retiring
            or child in self._present(sa)
            or self._sa_for(name, unauthenticated=False) is not sa
        ):
            return
        action = config.close_action
        self._count("peer_deleted_child_sa")
        self._events.append(events.PeerClosed(name, "child-sa", action, child=child))
        if action == "start":
            self._queue_child(sa, config, now)
        message = close_message("child-sa", action)
        if len(sa.peer.children) > 1:
            message += f" (child {child})"
        self._last_event(name, "peer-deleted-child-sa", now, message)
