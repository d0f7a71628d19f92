"""Peer policy: which peers we keep up, when we retry, what a dead peer means.

strongSwan's ``start_action``, ``keyingtries``/retry and ``dpd_action`` in one
place, sans-I/O.  :class:`PeerPolicy` decides; the manager
(:mod:`ipsecd.ike.manager`) acts (initiates, deletes, reports).

* ``start: initiate`` peers are brought up at start and kept up: after a
  failure or a Delete, a new attempt follows ``retry_pause`` seconds later;
* ``start: trap`` peers are brought up by traffic (on demand) and not kept up;
* ``dpd_action`` of a dead peer (RFC 7296 §2.4): ``restart`` initiates again
  at once, ``clear`` stays down, ``hold`` waits for traffic (the shell's trap)
  or the peer;
* ``close_action`` of a peer that deleted the IKE SA (§1.4.1): ``start``
  initiates again after ``retry_pause`` (a peer reauthenticating break-before-make
  or restarting comes first), ``trap`` waits for traffic, ``none`` stays down.

What happened last to a peer, and what comes next, is its :class:`LastEvent`
(``ipsecctl status``: "peer closed the IKE SA at 12:03:04; next attempt in 27 s").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipsecd.config.schema import Config, Identity, IpAddress, PeerConfig
from ipsecd.ike.candidates import Candidates
from ipsecd.ike.scheduler import TimerHeap

#: The shell's DNS lookup: (name, IP version) -> addresses, empty when it fails.
Resolver = Callable[[str, int], Sequence[IpAddress]]


@dataclass(frozen=True)
class LastEvent:
    """Something that changed a peer's tunnels without an error: ``event`` is a word
    (``peer-closed-ike-sa``, ``peer-deleted-child-sa``, ``reauthenticated``,
    ``reauthenticated-by-peer``, ``peer-dead``), ``at`` the manager's clock, ``message``
    what happened and what comes next, for an operator."""

    event: str
    at: float
    message: str

    def describe(self) -> dict[str, object]:
        return {"event": self.event, "at": self.at, "message": self.message}


#: What a peer's Delete means for us, by what it deleted and ``close_action``.
_CLOSED = {
    "ike-sa": "peer closed the IKE SA",
    "child-sa": "peer deleted the CHILD_SA",
}
_NEXT = {
    ("ike-sa", "start"): "initiating again after retry_interval",
    ("ike-sa", "trap"): "the next packet for remote_ts starts it again",
    ("ike-sa", "none"): "down until the peer connects or `ipsecctl up`",
    ("child-sa", "start"): "re-creating it",
    ("child-sa", "trap"): "the next packet for remote_ts re-creates it",
    ("child-sa", "none"): "the IKE SA stays up without one",
}


def close_message(what: str, action: str) -> str:
    """The :class:`LastEvent` message of a peer's Delete of ``what`` (``ike-sa`` or
    ``child-sa``): what happened and what ``close_action`` does next."""
    return f"{_CLOSED[what]}; close_action {action}: {_NEXT[(what, action)]}"


@dataclass(slots=True)
class PeerState:
    retry_at: float | None = None
    last_error: str | None = None
    wanted: bool = False  # the operator (or start: initiate) wants this peer up
    held: bool = False  # dpd_action hold / close_action trap: the next packet starts it
    last_event: LastEvent | None = None
    children: tuple[str, ...] = ()  # the configured children kept up (start: initiate, up)
    resolved: IpAddress | None = None  # the address a DNS name last resolved to


#: Kinds of a reload plan: peers whose IKE SA starts afresh, stays, or goes.  ``updated``
#: peers keep their IKE SA; only children were added, removed or changed.
PLAN_KINDS = ("added", "changed", "updated", "removed", "unchanged")
CHILD_PLAN_KINDS = ("added", "changed", "removed", "unchanged")


def child_plan(old: PeerConfig, new: PeerConfig) -> dict[str, list[str]]:
    """The children of one peer by kind (added, changed, removed, unchanged)."""
    before = {c.name: c for c in old.children}
    after = {c.name: c for c in new.children}
    plan: dict[str, list[str]] = {kind: [] for kind in CHILD_PLAN_KINDS}
    for name, child in after.items():
        kind = (
            "added" if name not in before else "unchanged" if before[name] == child else "changed"
        )
        plan[kind].append(name)
    plan["removed"] = [name for name in before if name not in after]
    return plan


def ike_peers(config: Config) -> dict[str, PeerConfig]:
    """The peers IKE negotiates for (manual peers have static SAs)."""
    return {p.name: p for p in config.peers if p.manual is None}


class PeerPolicy:
    """The configured IKE peers and what we want of each (see the module docstring)."""

    def __init__(self, config: Config, retry_pause: float) -> None:
        self.retry_pause = retry_pause
        self.state: dict[str, PeerState] = {}
        self.retries: TimerHeap[str] = TimerHeap()
        self._set_peers(ike_peers(config))
        self.state = {name: PeerState() for name in self.peers}

    def _set_peers(self, peers: dict[str, PeerConfig]) -> None:
        self.peers = peers
        self._by_address: dict[IpAddress, list[PeerConfig]] = {}
        self._by_remote_id: dict[Identity, list[str]] = {}
        for peer in peers.values():
            if peer.remote_address is not None:
                self._by_address.setdefault(peer.remote_address, []).append(peer)
            if peer.auth is not None:
                self._by_remote_id.setdefault(peer.auth.remote_id, []).append(peer.name)
        self._authenticated = Candidates([p for p in peers.values() if p.auth is not None])
        # remote_address any: any source may be theirs; IKE_AUTH tells by the ID (§2.15).
        self._anywhere = Candidates([p for p in self._authenticated if p.responds_only])
        # Candidates by source address, for the addresses some peer has (bounded by the
        # peers): the same object for every request, so its index is built once.
        self._candidates: dict[IpAddress, Candidates] = {}
        self._resolved_at: dict[IpAddress, list[PeerConfig]] | None = None

    def to_start(self) -> list[str]:
        return [name for name, peer in self.peers.items() if peer.start == "initiate"]

    def children_to_start(self, name: str) -> tuple[str, ...]:
        """The children an initiation of ``name`` sets up when none are named: the ones kept
        up (start: initiate, ipsecctl up), else every child ipsecd may start."""
        peer = self.peers[name]
        kept = self.state[name].children or tuple(
            c.name for c in peer.children if c.start == "initiate"
        )
        return (
            kept
            or tuple(c.name for c in peer.children if c.start != "respond")
            or (peer.children[0].name,)
        )

    def wanted_up(self, name: str, *, on_demand: bool, children: tuple[str, ...] = ()) -> None:
        """``initiate`` was called: a held peer brought back by traffic is kept up again if
        its config says so; other on-demand starts are not.  ``children``: the configured
        children asked for, kept up from now on unless on demand."""
        state = self.state[name]
        held, state.held = state.held, False
        if not on_demand or (held and self.peers[name].start == "initiate"):
            state.wanted = True
            self.set_retry(name, None)
            state.children = tuple(dict.fromkeys((*state.children, *children)))

    def not_wanted(self, name: str) -> None:
        if name in self.state:
            self.state[name].wanted = False
            self.set_retry(name, None)

    def set_retry(self, name: str, when: float | None) -> None:
        self.state[name].retry_at = when
        self.retries.set(name, when)

    def initiator_gone(self, name: str, now: float) -> None:
        """Our last initiated IKE SA with ``name`` ended: retry if the peer is wanted."""
        state = self.state.get(name)
        if state is not None and state.wanted and state.retry_at is None:
            self.set_retry(name, now + self.retry_pause)

    def due_retries(self, now: float, limit: int | None = None) -> list[str]:
        due = self.retries.pop_due(now, limit)
        for name in due:
            self.state[name].retry_at = None
        return due

    def next_retry(self) -> float | None:
        return self.retries.next()

    def on_demand(self, peer: PeerConfig) -> bool:
        """A ``start: trap`` peer nobody asked to keep up is restarted once, as on demand."""
        state = self.state.get(peer.name)
        return peer.start == "trap" and not (state is not None and state.wanted)

    def dead(self, peer: PeerConfig) -> str:
        """Dead peer detection gave up (RFC 7296 §2.4): apply and return ``dpd_action``.

        ``clear`` and ``hold`` stop wanting the peer; ``restart`` leaves the decision to
        initiate again to the caller.
        """
        action = peer.dpd_action
        if action != "restart":
            state = self.state[peer.name]
            state.wanted = False
            self.set_retry(peer.name, None)
            state.held = action == "hold"
        return action

    def closed(self, peer: PeerConfig, now: float) -> str:
        """The peer deleted our last IKE SA with it (RFC 7296 §1.4.1): apply and return
        ``close_action``.  ``start`` wants the peer up and retries after ``retry_pause``;
        ``trap`` and ``none`` stop wanting it (``trap``: the next packet starts it)."""
        action = peer.close_action
        state = self.state[peer.name]
        state.held = action == "trap" and peer.start != "trap"  # a trap peer is just down
        state.wanted = action == "start"
        self.set_retry(peer.name, now + self.retry_pause if state.wanted else None)
        return action

    def address_of(self, peer: PeerConfig) -> IpAddress | None:
        """The peer's address: written, or what its DNS name last resolved to."""
        if peer.remote_address is not None:
            return peer.remote_address
        state = self.state.get(peer.name)
        return state.resolved if state is not None else None

    def resolved(self, name: str, address: IpAddress) -> None:
        """The DNS name of peer ``name`` resolved to ``address`` (used from now on)."""
        self.state[name].resolved = address
        self._candidates.clear()
        self._resolved_at = None

    def candidates(self, address: str) -> Candidates:
        """Peers an IKE_SA_INIT from ``address`` may belong to (confirmed by ID in IKE_AUTH):
        the peers at that address (written or resolved), then those with
        ``remote_address: any``; every authenticated peer when none of them fits."""
        try:
            source: IpAddress | None = ipaddress.ip_address(address)
        except ValueError:
            source = None
        if source is None:
            return self._anywhere or self._authenticated
        cached = self._candidates.get(source)
        if cached is not None:
            return cached
        by_address = list(self._by_address.get(source, []))
        if self._resolved_at is None:  # what the DNS names resolved to, by address
            self._resolved_at = {}
            for name, state in self.state.items():
                peer = self.peers.get(name)
                if state.resolved is not None and peer is not None and peer.remote_address is None:
                    self._resolved_at.setdefault(state.resolved, []).append(peer)
        by_address += self._resolved_at.get(source, [])
        if not by_address:
            return self._anywhere or self._authenticated
        here = {id(p) for p in by_address}
        found = Candidates(by_address + [p for p in self._anywhere if id(p) not in here])
        self._candidates[source] = found
        return found

    def same_remote_id(self, identity: Identity) -> list[str]:
        """Peers whose ``remote_id`` is ``identity`` (N(INITIAL_CONTACT), RFC 7296 §2.4)."""
        return self._by_remote_id.get(identity, [])

    def reconfigure(
        self, config: Config
    ) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
        """Adopt a reloaded config: the IKE peers by kind (:data:`PLAN_KINDS`), and the
        children by kind (:func:`child_plan`) of every ``updated`` peer.  Unchanged and
        updated peers keep their state; the others start afresh."""
        new = ike_peers(config)
        plan: dict[str, list[str]] = {kind: [] for kind in PLAN_KINDS}
        children: dict[str, dict[str, list[str]]] = {}
        for name, old in self.peers.items():
            if name not in new:
                plan["removed"].append(name)
            elif new[name] == old:
                plan["unchanged"].append(name)
            elif new[name].without_children() == old.without_children():
                plan["updated"].append(name)
                children[name] = child_plan(old, new[name])
            else:
                plan["changed"].append(name)
        plan["added"] = [name for name in new if name not in self.peers]
        return plan, children

    def adopt(self, config: Config, plan: dict[str, list[str]]) -> None:
        new = ike_peers(config)
        kept = set(plan["unchanged"]) | set(plan["updated"])
        for name in self.state:
            if name not in kept:
                self.retries.set(name, None)
        self._set_peers(new)
        self.state = {name: self.state[name] if name in kept else PeerState() for name in new}
        self._resolved_at = None
        for name in plan["updated"]:  # children no longer configured are no longer kept up
            state, names = self.state[name], {c.name for c in new[name].children}
            state.children = tuple(c for c in state.children if c in names)
