"""IkeManager: every IKE SA of the daemon, driven by the shell (sans-I/O).

The API is the one in docs/CONTRACTS.md: the shell feeds datagrams and clock
values, drains :meth:`IkeManager.datagrams_to_send` and
:meth:`IkeManager.next_event`, and calls :meth:`IkeManager.handle_timer` at
:meth:`IkeManager.get_timer`.  The manager

* dispatches messages to IKE SAs by our SPI (RFC 7296 §2.6); an IKE_SA_INIT
  request with a zero responder SPI creates a responder SA for the peer
  matched by source address (the peer is confirmed by its ID in IKE_AUTH);
* initiates peers with ``start: initiate`` and retries them after a pause
  when a negotiation fails or the peer stops answering;
* sends NAT-keepalives every 20 s from the side behind a NAT (RFC 3948 §4);
* checks idle peers for liveness and acts on dead ones by their ``dpd_action``,
  sends and honours INITIAL_CONTACT, answers requests for unknown IKE SAs with
  INVALID_IKE_SPI (RFC 7296 §2.4, §2.21.4; see :mod:`ipsecd.ike.dpd`);
* rekeys CHILD_SAs and IKE SAs at their soft lifetime (time minus random
  jitter, bytes, packets, outbound sequence number nearing its end) and
  deletes CHILD_SAs at their hard lifetime (RFC 7296 §2.8, §2.18); the
  shell reports data-plane usage with :meth:`IkeManager.child_usage`;
* never raises out of :meth:`receive_datagram`: bad input is counted in
  :attr:`IkeManager.counters` and dropped.

Datagrams are :class:`~ipsecd.ike.events.OutgoingDatagram`: ``marker`` tells
the shell to prepend the 4-byte non-ESP marker (IKE on port 4500, RFC 3948
§2.2); keepalives (``b"\\xff"``, ``keepalive=True``) go out raw on port 4500.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import Any

from ipsecd.config.schema import ChildLifetime, IkeLifetime
from ipsecd.ike import dpd
from ipsecd.ike.child import LIVE_STATES, ChildSa, ChildState
from ipsecd.ike.events import (
    NAT_KEEPALIVE,
    Address,
    Event,
    NegotiationFailed,
    OutgoingDatagram,
    PeerDead,
)
from ipsecd.ike.exchanges import base
from ipsecd.ike.exchanges.rekey import random_unit
from ipsecd.ike.fragments import ReassemblyBudget
from ipsecd.ike.halfopen import DosLimits, HalfOpenTable
from ipsecd.ike.sa import IkeSa, IkeState, RetransmitPolicy

NAT_KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §4: default 20 seconds
USAGE_INTERVAL = 1.0  # how often the shell should report CHILD_SA usage (child_usage)
REKEYED_IKE_GRACE = 30.0  # a replaced IKE SA the peer does not delete is deleted by us
MAX_SEQ_32 = 2**32 - 1
MAX_SEQ_64 = 2**64 - 1


def seq_rekey_threshold(esn: bool) -> int:
    """Outbound sequence number at which a CHILD_SA is rekeyed: 7/8 of the space (RFC 4303
    §3.3.3 forbids wrapping; the SA must be replaced well before the last number)."""
    top = MAX_SEQ_64 if esn else MAX_SEQ_32
    return top - top // 8


DEFAULT_CHILD_LIFETIME = ChildLifetime()
DEFAULT_IKE_LIFETIME = IkeLifetime()


@dataclass
class _PeerState:
    retry_at: float | None = None
    last_error: str | None = None
    wanted: bool = False  # the operator (or start: initiate) wants this peer up
    held: bool = False  # dead peer with dpd_action hold: the next packet starts it


def _addr(value: Any) -> str:
    return str(value)


class IkeManager:
    """All IKE SAs (RFC 7296) of one daemon; see the module docstring."""

    def __init__(
        self,
        config: Any,
        now: float,
        *,
        policy: RetransmitPolicy | None = None,
        keepalive_interval: float = NAT_KEEPALIVE_INTERVAL,
    ) -> None:
        self.config = config
        gw = config.gateway
        self.policy = policy or RetransmitPolicy(
            initial=getattr(gw, "retransmit_timeout", 0.5),
            max_retransmits=getattr(gw, "retransmit_tries", 7),
            retry_pause=float(getattr(gw, "retry_interval", 30)),
        )
        self.keepalive_interval = keepalive_interval
        self.peers = {p.name: p for p in config.peers if getattr(p, "manual", None) is None}
        self.peer_state = {name: _PeerState() for name in self.peers}
        self.sas: dict[int, IkeSa] = {}  # by our SPI
        self.counters: dict[str, int] = {}
        # Responder SAs before IKE_AUTH, by (remote ip, SPIi); cookies and limits (§2.6).
        self.half_open = HalfOpenTable(DosLimits.from_gateway(gw), self.counters, now)
        self._outgoing: list[OutgoingDatagram] = []
        self._events: deque[Event] = deque()
        self._retired: list[IkeSa] = []
        self._retiring: set[int] = set()  # SPIs of SAs being deleted after a config change
        gw = config.gateway
        self.natt_port = int(getattr(gw, "port", 4500))
        self.ike_port = int(getattr(gw, "ike_port", 500))
        self.fragment_size: int | None = getattr(gw, "fragment_size", None)  # RFC 7383
        self.reassembly_budget = ReassemblyBudget()  # partial IKE fragments, all SAs together
        self._last_usage_check = now
        self._invalid_spi = dpd.InvalidSpiResponder()

    # ---- contract API ----------------------------------------------------

    def start(self, now: float) -> None:
        """Initiate every peer with ``start: initiate``."""
        for name, peer in self.peers.items():
            if peer.start == "initiate":
                self.initiate(name, now)

    def initiate(
        self, peer: str, now: float, *, on_demand: bool = False, replace: bool = False
    ) -> None:
        """Bring ``peer`` up (no-op if an IKE SA for it is up or being set up).

        ``on_demand``: started by traffic (``start: trap``), not kept up: after a
        failure or a Delete it is not retried; the next packet starts it again.  An
        established IKE SA that lost its last CHILD_SA gets a new one (CREATE_CHILD_SA).
        ``replace``: set up a new IKE SA beside the existing one, with INITIAL_CONTACT,
        and drop the older ones once it is up (the peer seems to have restarted).
        """
        if peer not in self.peers:
            raise KeyError(f"no IKE peer named {peer!r}")
        state = self.peer_state[peer]
        held, state.held = state.held, False
        # A held peer (dpd_action hold) brought back by traffic is kept up again if its
        # config says so; other on-demand starts are not.
        if not on_demand or (held and self.peers[peer].start == "initiate"):
            state.wanted = True
            state.retry_at = None
        existing = self._sa_for(peer, unauthenticated=False)
        if existing is not None and not replace:
            if on_demand and self._childless(existing):
                self.create_child(peer, now)
            return
        config = self.peers[peer]
        remote_port = int(getattr(config, "remote_port", None) or self.ike_port)
        local_port = self.natt_port if remote_port == self.natt_port else self.ike_port
        sa = IkeSa(
            peer=config,
            initiator=True,
            local=(_addr(config.local_address), local_port),
            remote=(_addr(config.remote_address), remote_port),
            natt_port=self.natt_port,
            policy=self.policy,
            created_at=now,
            counters=self.counters,
            gateway_fragment_size=self.fragment_size,
            reassembly_budget=self.reassembly_budget,
        )
        from ipsecd.ike.exchanges.sa_init import IkeSaInit

        # RFC 7296 §2.4: INITIAL_CONTACT only when no other IKE SA with this peer exists.
        others = [
            s
            for s in self.sas.values()
            if s.alive and s.peer_name == peer and not self.half_open.holds(s)
        ]
        sa.send_initial_contact = replace or not others
        sa.replace_others = replace
        sa.tasks.append(IkeSaInit(tuple(config.ike_proposals)))
        sa.kick(now)  # assigns SPIi while building the request
        self.sas[sa.local_spi] = sa
        self._collect(sa, now)

    def terminate(self, peer: str, now: float) -> None:
        """Delete the IKE SA of ``peer`` (RFC 7296 §1.4.1) and stop retrying it."""
        from ipsecd.ike.exchanges.informational import DeleteIkeSa

        if peer in self.peer_state:
            self.peer_state[peer].wanted = False
            self.peer_state[peer].retry_at = None
        for sa in [s for s in self.sas.values() if s.peer_name == peer]:
            if sa.state is IkeState.ESTABLISHED:
                sa.tasks.clear()
                sa.outstanding = None  # window 1: the Delete replaces whatever was pending
                sa.queue(DeleteIkeSa("terminated by operator"), now)
            else:
                sa.deleted("terminated by operator")
            self._collect(sa, now)

    def reconfigure(self, config: Any, now: float) -> dict[str, list[str]]:
        """Adopt a reloaded config (live reload).

        Peers whose config is unchanged keep their SAs untouched; removed and
        changed peers get a Delete for their IKE SA (RFC 7296 §1.4.1); changed
        and added peers are known from now on (the caller starts them).
        Returns the IKE peers by kind: added, changed, removed, unchanged.
        """
        new = {p.name: p for p in config.peers if getattr(p, "manual", None) is None}
        plan: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "unchanged": []}
        for name, old in self.peers.items():
            if name not in new:
                plan["removed"].append(name)
            elif new[name] != old:
                plan["changed"].append(name)
            else:
                plan["unchanged"].append(name)
        plan["added"] = [name for name in new if name not in self.peers]
        for name in plan["removed"] + plan["changed"]:
            self.terminate(name, now)
            # The old IKE SA finishes its Delete on its own; a new one may start beside it.
            self._retiring |= {s.local_spi for s in self.sas.values() if s.peer_name == name}
        self.config = config
        self.peers = new
        self.peer_state = {
            name: self.peer_state[name] if name in plan["unchanged"] else _PeerState()
            for name in new
        }
        return plan

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA (one Delete each; the shell exits afterwards)."""
        for peer in list(self.peers):
            self.terminate(peer, now)

    def receive_datagram(
        self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float
    ) -> None:
        """One IKE message (without non-ESP marker).  Never raises: drops are counted."""
        local = (str(local[0]), int(local[1]))
        remote = (str(remote[0]), int(remote[1]))
        try:
            self._receive(data, local, remote, now)
        except Exception:  # a bug or hostile input must not take the daemon down
            self._count("internal_error")

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [t for sa in self.sas.values() if (t := self._sa_timer(sa)) is not None]
        times += [s.retry_at for s in self.peer_state.values() if s.retry_at is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self.sas.values()):
            sa.handle_timer(now)
            if (
                sa.state is IkeState.ESTABLISHED
                and sa.nat_local
                and sa.rekeyed_to is None
                and now >= sa.last_keepalive + self.keepalive_interval
            ):
                self._keepalive(sa, now)
            self._lifetimes(sa, now)
            dpd.check(sa, now)
            self._collect(sa, now)
        if now >= self._usage_due:  # the shell reports usage when we wake it (child_usage)
            self._last_usage_check = now
        for name, state in self.peer_state.items():
            if state.retry_at is not None and now >= state.retry_at:
                state.retry_at = None
                self._count("connection_retries")
                self.initiate(name, now)

    def status(self) -> list[dict[str, Any]]:
        """One entry per IKE peer, for ipsecctl (plain data, no objects)."""
        entries: list[dict[str, Any]] = []
        for name in self.peers:
            state = self.peer_state[name]
            sa = self._sa_for(name)
            entry: dict[str, Any] = {
                "peer": name,
                "last_error": state.last_error,
                "ike_sas": sum(
                    s.alive and s.peer_name == name and not self.half_open.holds(s)
                    for s in self.sas.values()
                ),
            }
            if sa is None:
                entry["state"] = (
                    "held"  # dpd_action hold: the next packet for remote_ts starts it
                    if state.held
                    else "connecting"
                    if state.retry_at is not None
                    else "down"
                )
                if state.retry_at is not None:
                    entry["retry_at"] = state.retry_at
            else:
                algs = sa.ike_algorithms
                entry.update(
                    state=sa.state.value,
                    role="initiator" if sa.initiator else "responder",
                    local=f"{sa.local[0]}:{sa.local[1]}",
                    remote=f"{sa.remote[0]}:{sa.remote[1]}",
                    local_spi=f"{sa.local_spi:016x}",
                    remote_spi=f"{sa.remote_spi:016x}",
                    nat_local=sa.nat_local,
                    nat_remote=sa.nat_remote,
                    fragmentation=sa.fragmentation_active,  # RFC 7383, both sides agreed
                    algorithm=str(algs) if algs is not None else "",
                    established_at=sa.established_at,
                    rekey_at=sa.rekey_at,
                    children=[c.describe() for c in sa.children.values()],
                    **dpd.describe(sa),
                )
            entries.append(entry)
        return entries

    # ---- beyond the contract (tests, ipsecctl rekey/extra children later) --

    def create_child(
        self,
        peer: str,
        now: float,
        local_ts: tuple[Any, ...] | None = None,
        remote_ts: tuple[Any, ...] | None = None,
        proposals: tuple[Any, ...] | None = None,
    ) -> None:
        """Negotiate one more CHILD_SA with CREATE_CHILD_SA (RFC 7296 §1.3.1)."""
        from ipsecd.ike.exchanges.create_child import CreateChildSa

        sa = self._established(peer)
        cfg = self.peers[peer]
        sa.queue(
            CreateChildSa(
                tuple(local_ts or cfg.local_ts),
                tuple(remote_ts or cfg.remote_ts),
                tuple(proposals or cfg.esp_proposals),
            ),
            now,
        )
        self._collect(sa, now)

    def delete_child(self, peer: str, spi_in: int, now: float) -> None:
        """Delete one CHILD_SA by our inbound SPI (RFC 7296 §1.4.1)."""
        from ipsecd.ike.exchanges.informational import DeleteChildSa

        sa = self._established(peer)
        sa.queue(DeleteChildSa([spi_in]), now)
        self._collect(sa, now)

    def check_liveness(self, peer: str, now: float) -> None:
        """Send an empty INFORMATIONAL request (RFC 7296 §2.4)."""
        sa = self._established(peer)
        sa.queue_liveness_check(now)
        self._collect(sa, now)

    def ike_sa(self, peer: str) -> IkeSa | None:
        return self._sa_for(peer)

    def rekey(self, peer: str, now: float) -> None:
        """Rekey every CHILD_SA of ``peer`` now (RFC 7296 §2.8; ``ipsecctl rekey``)."""
        sa = self._established(peer)
        for child in list(sa.children.values()):
            self._rekey_child(sa, child, now)
        self._collect(sa, now)

    def rekey_ike(self, peer: str, now: float) -> None:
        """Rekey the IKE SA of ``peer`` now (RFC 7296 §2.18)."""
        sa = self._established(peer)
        self._rekey_ike(sa, now)
        self._collect(sa, now)

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
        for sa in list(self.sas.values()):
            child = sa.children.get(spi_in)
            if child is None or sa.peer_name != peer:
                continue
            child.bytes, child.packets = bytes, packets
            if packets_in is not None and packets_in > child.packets_in:
                child.packets_in = packets_in
                sa.last_peer_activity = max(sa.last_peer_activity, now)
            limits = self._child_lifetime(sa)
            esn = bool(child.algorithms and child.algorithms.esn)
            top = MAX_SEQ_64 if esn else MAX_SEQ_32
            if seq_out >= top and child.state is ChildState.INSTALLED:
                self._count("child_sa_sequence_exhausted")
                self._delete_child(sa, child, "outbound sequence numbers exhausted", now)
            elif (
                (limits.rekey_bytes and bytes >= limits.rekey_bytes)
                or (limits.rekey_packets and packets >= limits.rekey_packets)
                or seq_out >= seq_rekey_threshold(esn)
            ):
                self._rekey_child(sa, child, now)
            self._collect(sa, now)
            return

    # ---- internals -------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _sa_for(self, peer: str, *, unauthenticated: bool = True) -> IkeSa | None:
        """The peer's current IKE SA.  A half-open responder SA is only a guess until
        IKE_AUTH: it counts (for status) when it comes from the peer's address, and never
        keeps us from initiating or retrying (forged IKE_SA_INITs must not block a peer)."""
        found = [
            s
            for s in self.sas.values()
            if s.peer_name == peer
            and s.alive
            and s.rekeyed_to is None
            and not s.collision_pending
            and s.local_spi not in self._retiring
            and (not self.half_open.holds(s) or (unauthenticated and self._from_peer_address(s)))
        ]
        for preferred in (IkeState.ESTABLISHED, IkeState.AUTH_SENT, IkeState.INIT_SENT):
            for sa in found:
                if sa.state is preferred:
                    return sa
        return found[0] if found else None

    def _from_peer_address(self, sa: IkeSa) -> bool:
        try:
            return ipaddress.ip_address(sa.remote[0]) == ipaddress.ip_address(
                str(sa.peer.remote_address)
            )
        except ValueError:
            return False

    def _childless(self, sa: IkeSa) -> bool:
        """Established, no live CHILD_SA and none being created (on-demand start)."""
        from ipsecd.ike.exchanges.create_child import CreateChildSa

        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return False
        if any(c.state in LIVE_STATES for c in sa.children.values()):
            return False
        pending = [*sa.tasks, sa.outstanding.task if sa.outstanding is not None else None]
        return not any(isinstance(t, CreateChildSa) for t in pending)

    def _established(self, peer: str) -> IkeSa:
        sa = self._sa_for(peer)
        if sa is None or sa.state is not IkeState.ESTABLISHED:
            raise KeyError(f"no established IKE SA for peer {peer!r}")
        return sa

    def _sa_timer(self, sa: IkeSa) -> float | None:
        times = [t for t in (sa.next_timer(), dpd.due(sa)) if t is not None]
        if sa.state is IkeState.ESTABLISHED and sa.nat_local and sa.rekeyed_to is None:
            times.append(sa.last_keepalive + self.keepalive_interval)
        if sa.state is IkeState.ESTABLISHED:
            if sa.rekeyed_to is not None and sa.rekeyed_at is not None:
                times.append(sa.rekeyed_at + REKEYED_IKE_GRACE)
            elif sa.rekey_at is not None and not sa.rekey_queued:
                times.append(sa.rekey_at)
            for child in sa.children.values():
                if (
                    child.state is ChildState.INSTALLED
                    and child.rekey_at is not None
                    and not child.rekey_queued
                ):
                    times.append(child.rekey_at)
                if child.expire_at is not None and child.state in LIVE_STATES:
                    times.append(child.expire_at)
            if sa.children:
                times.append(self._usage_due)
        return min(times) if times else None

    # ---- lifetimes (RFC 7296 §2.8, §2.18) -----------------------------------

    @property
    def _usage_due(self) -> float:
        return self._last_usage_check + USAGE_INTERVAL

    def _child_lifetime(self, sa: IkeSa) -> ChildLifetime:
        return getattr(sa.peer, "child_lifetime", None) or DEFAULT_CHILD_LIFETIME

    def _schedule(self, sa: IkeSa, now: float) -> None:
        """Soft/hard limits for a new IKE SA or CHILD_SA: ``rekey_time - rand * U[0,1)``."""
        if sa.state is not IkeState.ESTABLISHED or sa.rekeyed_to is not None:
            return
        if sa.collision_pending:
            return
        if not sa.lifetime_set:
            sa.lifetime_set = True
            ike = getattr(sa.peer, "ike_lifetime", None) or DEFAULT_IKE_LIFETIME
            if ike.rekey_time:
                sa.rekey_at = now + ike.rekey_time - ike.rand_time * random_unit()
        limits = self._child_lifetime(sa)
        for child in sa.children.values():
            if child.lifetime_set or child.state not in LIVE_STATES:
                continue
            child.lifetime_set = True
            if limits.rekey_time and child.state is ChildState.INSTALLED:
                child.rekey_at = now + limits.rekey_time - limits.rand_time * random_unit()
            if limits.life_time:
                child.expire_at = now + limits.life_time

    def _lifetimes(self, sa: IkeSa, now: float) -> None:
        if sa.state is not IkeState.ESTABLISHED:
            return
        if sa.rekeyed_to is not None:
            if sa.rekeyed_at is not None and now >= sa.rekeyed_at + REKEYED_IKE_GRACE:
                from ipsecd.ike.exchanges.informational import DeleteIkeSa

                sa.rekeyed_at = None
                sa.queue(DeleteIkeSa("replaced by a rekey, not deleted by the peer"), now)
            return
        for child in list(sa.children.values()):
            if child.expire_at is not None and now >= child.expire_at:
                child.expire_at = None
                if child.state is not ChildState.DELETING:
                    self._count("child_sa_expired")
                    self._delete_child(sa, child, "hard lifetime (life_time) reached", now)
            elif (
                child.state is ChildState.INSTALLED
                and child.rekey_at is not None
                and now >= child.rekey_at
            ):
                self._rekey_child(sa, child, now)
        if sa.rekey_at is not None and now >= sa.rekey_at and not sa.rekey_queued:
            self._rekey_ike(sa, now)

    def _rekey_child(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        from ipsecd.ike.exchanges.rekey import RekeyChildSa

        if child.state is not ChildState.INSTALLED or child.rekey_queued or child.redundant:
            return
        child.rekey_queued = True
        child.rekey_at = None
        sa.queue(
            RekeyChildSa(
                child.spi_in,
                tuple(child.local_ts),
                tuple(child.remote_ts),
                tuple(sa.peer.esp_proposals),
            ),
            now,
        )

    def _rekey_ike(self, sa: IkeSa, now: float) -> None:
        from ipsecd.ike.exchanges.rekey import RekeyIkeSa

        if sa.rekey_queued or sa.rekeyed_to is not None:
            return
        sa.rekey_queued = True
        sa.rekey_at = None
        sa.queue(RekeyIkeSa(tuple(sa.peer.ike_proposals)), now)

    def _delete_child(self, sa: IkeSa, child: ChildSa, reason: str, now: float) -> None:
        from ipsecd.ike.exchanges.informational import DeleteChildSa

        sa.queue(DeleteChildSa([child.spi_in], reason), now)

    def _keepalive(self, sa: IkeSa, now: float) -> None:
        """RFC 3948 §2.3 NAT-keepalive: one 0xFF octet on the NAT-T port, no marker."""
        sa.last_keepalive = now
        self._count("nat_keepalives")
        self._outgoing.append(
            OutgoingDatagram(
                NAT_KEEPALIVE,
                (sa.local[0], self.natt_port),
                (sa.remote[0], sa.remote[1] if sa.remote[1] != self.ike_port else self.natt_port),
                marker=False,
                keepalive=True,
            )
        )

    def _receive(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        try:
            header = base.parse_header(data)
        except base.DecodeError:
            self._count("malformed")
            return
        if header.exchange == base.IKE_SA_INIT and not header.response and header.spi_r == 0:
            self._receive_init_request(data, header, local, remote, now)
            return
        # The I flag says whether the sender is the original initiator (§3.1).
        spi = header.spi_r if header.initiator_flag else header.spi_i
        sa = self.sas.get(spi)
        if sa is None or not sa.alive:
            self._count("unknown_spi")
            if not header.response and header.exchange != base.IKE_SA_INIT:
                # Perhaps we restarted and the peer did not: tell it (RFC 7296 §2.21.4).
                answer = self._invalid_spi.answer(
                    header, len(data), local, remote, self.natt_port, now
                )
                self._count("invalid_ike_spi_sent" if answer else "invalid_ike_spi_suppressed")
                if answer is not None:
                    self._outgoing.append(answer)
            return
        if header.exchange == base.IKE_SA_INIT and header.response and sa.spi_r == 0:
            pass  # our IKE_SA_INIT answered: the responder SPI is learned by the task
        elif sa.remote_spi and sa.remote_spi != (header.spi_r if sa.initiator else header.spi_i):
            self._count("unknown_spi")
            return
        sa.receive(data, header, local, remote, now)
        self._collect(sa, now)

    def _receive_init_request(
        self, data: bytes, header: Any, local: Address, remote: Address, now: float
    ) -> None:
        admission = self.half_open.admit(data, header.spi_i, header.message_id, remote[0], now)
        if admission.retransmit_of is not None:
            existing = admission.retransmit_of
            existing.receive(data, header, local, remote, now)  # retransmit -> cached answer
            self._collect(existing, now)
            return
        if admission.drop:
            return
        candidates = self._candidates(remote[0])
        if not candidates:
            self._count("unknown_peer")
            return
        if admission.reply is not None:  # COOKIE (§2.6): no state, no Diffie-Hellman
            marker = local[1] == self.natt_port
            self._outgoing.append(OutgoingDatagram(admission.reply, local, remote, marker=marker))
            return
        sa = IkeSa(
            peer=candidates[0],
            initiator=False,
            local=local,
            remote=remote,
            natt_port=self.natt_port,
            policy=self.policy,
            created_at=now,
            counters=self.counters,
            candidates=tuple(candidates),
            gateway_fragment_size=self.fragment_size,
            reassembly_budget=self.reassembly_budget,
        )
        sa.spi_i = header.spi_i
        sa.receive(data, header, local, remote, now)
        if self.half_open.refuse_amplification(data, [d.data for d in sa.outgoing]):
            sa.outgoing.clear()
            sa.deleted("answer would amplify the request")
        if sa.alive:
            self.half_open.add(sa, data, remote[0])
            self.sas[sa.local_spi] = sa
        self._collect(sa, now)

    def _candidates(self, address: str) -> list[Any]:
        """Peers an IKE_SA_INIT from ``address`` may belong to (confirmed by ID later)."""

        def same(a: Any, b: str) -> bool:
            try:
                return ipaddress.ip_address(str(a)) == ipaddress.ip_address(b)
            except ValueError:
                return str(a) in ("%any", "any", "0.0.0.0", "::")

        by_address = [p for p in self.peers.values() if same(p.remote_address, address)]
        return by_address or [p for p in self.peers.values() if p.auth is not None]

    def _collect(self, sa: IkeSa, now: float) -> None:
        """Move an SA's datagrams/events out and handle its end of life."""
        self._schedule(sa, now)
        if sa.outgoing:
            self._outgoing.extend(sa.outgoing)
            sa.outgoing.clear()
        state = self.peer_state.get(sa.peer_name)
        for event in sa.events:
            self._events.append(event)
            if isinstance(event, NegotiationFailed) and state is not None:
                state.last_error = event.reason
        sa.events.clear()
        if sa.state is IkeState.ESTABLISHED and state is not None:
            if sa.last_error is None:
                state.last_error = None
            if sa.last_keepalive == 0.0:
                sa.last_keepalive = now
        if sa.state is IkeState.ESTABLISHED:
            self.half_open.established(sa, now)
            if sa.initial_contact_received:
                sa.initial_contact_received = False
                self._forget_others(sa, now, "restarted (INITIAL_CONTACT)")
            if sa.replace_others:
                sa.replace_others = False
                self._forget_others(sa, now, "replaced after INVALID_IKE_SPI (restarted?)")
            if sa.check_duplicates:
                sa.check_duplicates = False
                self._delete_duplicate(sa, now)
        if sa.restart_hint:
            sa.restart_hint = False
            self._restart_hint(sa, now)
        while sa.spawned:  # the IKE SA that replaces this one (rekey, §2.18)
            new = sa.spawned.pop(0)
            self.sas[new.local_spi] = new
            new.kick(now)
            self._collect(new, now)
        if not sa.alive:
            if sa.rekey_collision is not None:
                # Gone before a simultaneous rekey was decided: the SA we created for the
                # peer's exchange is deleted like any replaced SA, after the grace period.
                orphan, sa.rekey_collision = sa.rekey_collision[0], None
                orphan.collision_pending = False
                orphan.rekeyed_to, orphan.rekeyed_at = sa, now
            if sa.reassembler is not None:
                sa.reassembler.clear()  # its partial fragments no longer count
            self.sas.pop(sa.local_spi, None)
            self._retiring.discard(sa.local_spi)
            self.half_open.discard(sa)
            if sa.peer_dead and state is not None:
                sa.peer_dead = False
                self._peer_dead(sa, state, now)
            if (
                state is not None
                and state.wanted
                and sa.initiator
                and state.retry_at is None
                and self._sa_for(sa.peer_name, unauthenticated=False) is None
            ):
                state.retry_at = now + self.policy.retry_pause

    # ---- dead peers and restarts (RFC 7296 §2.4) ------------------------------

    def _peer_dead(self, sa: IkeSa, state: _PeerState, now: float) -> None:
        """An established IKE SA went unanswered: apply the peer's ``dpd_action``."""
        action = getattr(sa.peer, "dpd_action", "restart")
        self._count(f"dpd_{action}")
        if sa.local_spi in self._retiring or sa.peer_name not in self.peers:
            return
        self._events.append(PeerDead(sa.peer_name, action))
        if action == "restart":
            self.initiate(sa.peer_name, now, on_demand=self._on_demand(sa, state))
        else:  # clear: stay down; hold: wait for traffic (the shell's trap) or the peer
            state.wanted = False
            state.retry_at = None
            state.held = action == "hold"

    def _restart_hint(self, sa: IkeSa, now: float) -> None:
        """INVALID_IKE_SPI came back for a request of ``sa``: the peer probably restarted.

        The hint may be forged, so ``sa`` itself is left alone (RFC 7296 §2.21.4); with
        ``dpd_action: restart`` a new IKE SA with INITIAL_CONTACT is set up beside it and
        replaces it once up.  Either way both sides end with the new one only.
        """
        name = sa.peer_name
        if (
            getattr(sa.peer, "dpd_action", "restart") != "restart"
            or name not in self.peers
            or sa.local_spi in self._retiring
            or any(s.alive and s.replace_others and s.peer_name == name for s in self.sas.values())
        ):
            return
        self._count("restart_hints_followed")
        self.initiate(name, now, replace=True, on_demand=self._on_demand(sa, self.peer_state[name]))

    @staticmethod
    def _on_demand(sa: IkeSa, state: _PeerState) -> bool:
        """A ``start: trap`` peer nobody asked to keep up is restarted once, as on demand."""
        return getattr(sa.peer, "start", "") == "trap" and not state.wanted

    def _delete_duplicate(self, sa: IkeSa, now: float) -> None:
        """Both ends initiated at once: Delete the IKE SA both ends agree on (ike/dpd.py)."""
        from ipsecd.ike.exchanges.informational import DeleteIkeSa

        others = [s for s in self.sas.values() if s.local_spi not in self._retiring]
        loser = dpd.duplicate(sa, others)
        if loser is not None:
            self._count("duplicate_ike_sa_deleted")
            loser.queue(DeleteIkeSa("duplicate IKE SA (both ends initiated)"), now)
            self._collect(loser, now)

    def _forget_others(self, sa: IkeSa, now: float, why: str) -> None:
        """N(INITIAL_CONTACT) (§2.4): the peer forgot its other IKE SAs with us; drop them
        (and their CHILD_SAs) without a Delete, which it could not decrypt anyway."""
        remote_id = sa.peer.auth.remote_id
        for other in list(self.sas.values()):
            if (
                other is not sa
                and other.state in (IkeState.ESTABLISHED, IkeState.DELETING)
                and other.peer.auth is not None
                and other.peer.auth.remote_id == remote_id
            ):
                self._count("initial_contact_deleted")
                other.deleted(f"peer {other.peer_name} {why}")
                self._collect(other, now)
