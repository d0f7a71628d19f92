"""Peer policy: which peers we keep up, when we retry, what a dead peer means.

strongSwan's ``start_action``, ``keyingtries``/retry and ``dpd_action`` in one
place, sans-I/O.  :class:`PeerPolicy` decides; the manager
(:mod:`ipsecd.ike.manager`) acts (initiates, deletes, reports).

* ``start: initiate`` peers are brought up at start and kept up: after a
  failure or a Delete, a new attempt follows ``retry_pause`` seconds later;
* ``start: trap`` peers are brought up by traffic (on demand) and not kept up;
* ``dpd_action`` of a dead peer (RFC 7296 §2.4): ``restart`` initiates again
  at once, ``clear`` stays down, ``hold`` waits for traffic (the shell's trap)
  or the peer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ipsecd.config.schema import Config, Identity, IpAddress, PeerConfig
from ipsecd.ike.scheduler import TimerHeap


@dataclass
class PeerState:
    retry_at: float | None = None
    last_error: str | None = None
    wanted: bool = False  # the operator (or start: initiate) wants this peer up
    held: bool = False  # dead peer with dpd_action hold: the next packet starts it


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
            self._by_address.setdefault(peer.remote_address, []).append(peer)
            if peer.auth is not None:
                self._by_remote_id.setdefault(peer.auth.remote_id, []).append(peer.name)
        self._authenticated = [p for p in peers.values() if p.auth is not None]

    def to_start(self) -> list[str]:
        return [name for name, peer in self.peers.items() if peer.start == "initiate"]

    def wanted_up(self, name: str, *, on_demand: bool) -> None:
        """``initiate`` was called: a held peer brought back by traffic is kept up again if
        its config says so; other on-demand starts are not."""
        state = self.state[name]
        held, state.held = state.held, False
        if not on_demand or (held and self.peers[name].start == "initiate"):
            state.wanted = True
            self.set_retry(name, None)

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

    def due_retries(self, now: float) -> list[str]:
        due = self.retries.pop_due(now)
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

    def candidates(self, address: str) -> list[PeerConfig]:
        """Peers an IKE_SA_INIT from ``address`` may belong to (confirmed by ID in IKE_AUTH)."""
        try:
            by_address = self._by_address.get(ipaddress.ip_address(address), [])
        except ValueError:
            by_address = []
        return list(by_address or self._authenticated)

    def same_remote_id(self, identity: Identity) -> list[str]:
        """Peers whose ``remote_id`` is ``identity`` (N(INITIAL_CONTACT), RFC 7296 §2.4)."""
        return self._by_remote_id.get(identity, [])

    def reconfigure(self, config: Config) -> dict[str, list[str]]:
        """Adopt a reloaded config; returns the IKE peers by kind (added, changed, removed,
        unchanged).  Unchanged peers keep their state; the others start afresh."""
        new = ike_peers(config)
        plan: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "unchanged": []}
        for name, old in self.peers.items():
            if name not in new:
                plan["removed"].append(name)
            elif new[name] != old:
                plan["changed"].append(name)
            else:
                plan["unchanged"].append(name)
        plan["added"] = [name for name in new if name not in self.peers]
        return plan

    def adopt(self, config: Config, plan: dict[str, list[str]]) -> None:
        new = ike_peers(config)
        for name in self.state:
            if name not in plan["unchanged"]:
                self.retries.set(name, None)
        self._set_peers(new)
        self.state = {
            name: self.state[name] if name in plan["unchanged"] else PeerState() for name in new
        }
