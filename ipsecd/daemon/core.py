"""The daemon core: every decision of a running ipsecd, without I/O (aioquic's shape).

The asyncio shell (:mod:`ipsecd.daemon.app`) owns the TUN device, the UDP sockets,
the timers and the signals; it feeds this core what they deliver and carries out
what the core asks for:

* :meth:`DaemonCore.from_tun` / :meth:`DaemonCore.from_udp` take bursts with the
  current time; :meth:`DaemonCore.datagrams_to_send` (ESP and IKE, framed for the
  wire, in order) and :meth:`DaemonCore.packets_to_tun` give what goes out;
* IKE in a UDP burst is only queued (after cheap checks); while
  :meth:`DaemonCore.ike_pending`, the shell calls :meth:`DaemonCore.run_ike`, which
  works through the queue for at most :data:`IKE_SLICE` seconds, after the burst's ESP
  went out: IKE work never holds up ESP (issue 12);
* :meth:`DaemonCore.get_timer` says when :meth:`DaemonCore.handle_timer` is due;
* :meth:`DaemonCore.routes_to_change` lists the TUN routes to add or remove
  (at start and after :meth:`DaemonCore.reload`);
* :meth:`DaemonCore.control` runs ``ipsecctl up/down/rekey``,
  :meth:`DaemonCore.reload` applies a new config, :meth:`DaemonCore.status` gives
  the typed status model that ``ipsecctl`` and the metrics read.

Inside: IKE events install and remove CHILD_SAs (one factory for negotiated and
manual SAs), ``start: trap`` peers are initiated by their first packet
(:mod:`ipsecd.dataplane.trap`), the TUN MTU follows the configured proposals.
Unit tests drive it with plain calls, fake devices and a fake clock.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipsecd.config import Config, PeerConfig
from ipsecd.crypto.proposals import Proposal
from ipsecd.daemon import logs
from ipsecd.daemon.ikelog import IkeLog
from ipsecd.daemon.status import (
    DaemonStatus,
    DataplaneStatus,
    OnDemandStatus,
    PeerStatus,
    child_status,
)
from ipsecd.dataplane.mtu import tun_mtu
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import Address, InstalledChildSa, SaDatabase
from ipsecd.dataplane.trap import TrapQueue
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.esp.udp_encap import frame
from ipsecd.ike import events as ev
from ipsecd.ike.manager import IkeManager
from ipsecd.selectors import format_selectors

if TYPE_CHECKING:
    from ipsecd.dataplane.tun import IpNetwork

#: ESP or IKE datagrams from one local endpoint to one remote endpoint, ready to send.
Batch = tuple[Address, Address, list[bytes]]

PLAN_KINDS = ("added", "removed", "changed", "unchanged")
# Seconds of IKE work per wake-up (run_ike, by the work clock): ESP waits no longer.
IKE_SLICE = 0.002


@dataclass(frozen=True)
class RouteChange:
    """Route ``network`` into the TUN device (``add``) or take the route away."""

    network: IpNetwork
    add: bool


def manual_params(config: Config, peer: PeerConfig) -> ev.ChildSaParams:
    """The static CHILD_SA of a ``manual`` peer as negotiated parameters (RFC 4301 §4.5):
    the key of each direction is the encryption key followed by the integrity key."""
    m = peer.manual
    assert m is not None, peer.name
    n = m.encr.keymat_len
    return ev.ChildSaParams(
        spi_in=m.spi_in,
        spi_out=m.spi_out,
        encr=m.encr,
        integ=m.integ,
        esn=m.esn,
        encr_key_in=m.key_in[:n],
        integ_key_in=m.key_in[n:],
        encr_key_out=m.key_out[:n],
        integ_key_out=m.key_out[n:],
        local_ts=peer.local_ts,
        remote_ts=peer.remote_ts,
        remote=(str(peer.remote_address), config.gateway.port),
    )


def child_sa(peer: str, child: ev.ChildSaParams, local: Address, now: float) -> InstalledChildSa:
    """The data-plane CHILD_SA for negotiated (or manual) parameters."""
    inbound = InboundEspSa(
        child.spi_in,
        encr=child.encr,
        integ=child.integ,
        encr_keymat=child.encr_key_in,
        integ_key=child.integ_key_in,
        esn=child.esn,
        src_selectors=child.remote_ts,
        dst_selectors=child.local_ts,
    )
    outbound = OutboundEspSa(
        child.spi_out,
        encr=child.encr,
        integ=child.integ,
        encr_keymat=child.encr_key_out,
        integ_key=child.integ_key_out,
        esn=child.esn,
    )
    return InstalledChildSa(
        peer=peer,
        inbound=inbound,
        outbound=outbound,
        local_ts=child.local_ts,
        remote_ts=child.remote_ts,
        local=local,
        remote=child.remote,
        installed_at=now,
    )


def esp_proposals(peer: PeerConfig) -> tuple[Proposal, ...]:
    """What ESP may carry for ``peer``: its proposals, or its manual transform."""
    m = peer.manual
    if m is None:
        return peer.esp_proposals
    return (Proposal("esp", (m.encr,), (m.integ,) if m.integ else (), (), ()),)


def _seconds_until(when: Any, now: float) -> float | None:
    return round(max(0.0, when - now), 1) if isinstance(when, int | float) else None


def _ike_peers(config: Config) -> list[str]:
    return [p.name for p in config.peers if p.manual is None]


class DaemonCore:
    """One gateway's SAs, traps and IKE manager; see the module docstring.

    ``random_bytes`` is the source of SPIs, nonces and jitter, handed to the IKE
    manager (tests fix it); ``work_clock`` measures how long IKE work takes: the slice of
    :meth:`run_ike` and new requests' share of the time (:mod:`ipsecd.ike.inbox`).
    """

    def __init__(
        self,
        config: Config,
        now: float,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        work_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.random_bytes = random_bytes
        self.work_clock = work_clock
        self.log = logs.get_logger()
        self.started_at = now
        self.now = now  # the time of the call being handled (the trap's clock)
        self.ike_log = IkeLog(self.log, lambda: self.now)
        self.counters: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.sad = SaDatabase()
        self.processor = PacketProcessor(self.sad)
        # start: trap -- packets without SA wait here while their tunnel is negotiated.
        self.trap = TrapQueue(self.counters, clock=lambda: self.now)
        self.processor.no_sa = self.trap.offer
        self.ike: IkeManager | None = None
        gw = config.gateway  # the same for the daemon's lifetime (reload refuses changes)
        self._endpoints = [(str(a), port) for a in gw.listen for port in (gw.port, gw.ike_port)]
        self._sockets = frozenset(self._endpoints)
        self._outbox: list[Batch] = []
        self._to_tun: list[bytes] = []
        self._routes: list[RouteChange] = []
        self._status_line = ""
        for peer in config.peers:
            self._route(peer, add=True)
            self._arm(peer, now)
        if _ike_peers(config):
            self.ike = self._ike_manager(config, now)
        self._sas_changed()

    def _ike_manager(self, config: Config, now: float) -> IkeManager:
        return IkeManager(
            config,
            now,
            random_bytes=self.random_bytes,
            trace=self.ike_log.trace,
            work_clock=self.work_clock,
        )

    # -- what the shell opens --------------------------------------------------------------
    def endpoints(self) -> list[Address]:
        """The local UDP endpoints to listen on: each address, ESP (NAT-T) and IKE port."""
        return list(self._endpoints)

    def mtu(self) -> int:
        """The TUN MTU: configured, or the largest inner packet every ESP transform any
        peer may use fits into a 1500-byte path (RFC 4303 §2, RFC 3948 §2.1)."""
        gw = self.config.gateway
        if gw.mtu is not None:
            return gw.mtu
        proposals = [p for peer in self.config.peers for p in esp_proposals(peer)]
        versions = {peer.remote_address.version for peer in self.config.peers}
        return min(tun_mtu(proposals, v) for v in versions or {4})

    def start(self, now: float) -> None:
        """Initiate the ``start: initiate`` peers (after the shell opened everything)."""
        self.now = now
        if self.ike is not None:
            self.ike.start(now)
            self._pump(now)

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA; their Deletes are in :meth:`datagrams_to_send`."""
        self.now = now
        if self.ike is not None:
            self.ike.shutdown(now)
            self._send_ike()

    # -- what the shell carries out -------------------------------------------------------
    def datagrams_to_send(self) -> list[Batch]:
        out, self._outbox = self._outbox, []
        return out

    def packets_to_tun(self) -> list[bytes]:
        out, self._to_tun = self._to_tun, []
        return out

    def routes_to_change(self) -> list[RouteChange]:
        out, self._routes = self._routes, []
        return out

    def get_timer(self) -> float | None:
        times = [self.ike.get_timer() if self.ike is not None else None]
        times.append(self.ike_log.next_summary())
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=`` (sd_notify); cheap enough for every burst."""
        return self._status_line

    def _sas_changed(self) -> None:
        """SAs were installed or removed (events, start, reload): recount the tunnels."""
        up = len({sa.peer for sa in self.sad})
        self._status_line = f"{up} of {len(self.config.peers)} tunnels up"

    def status(
        self, now: float, *, tun: str | None, listen: Iterable[Address], dataplane: DataplaneStatus
    ) -> DaemonStatus:
        """The status model at ``now``; the shell tells what only its devices know."""
        ike = self.ike
        described, rekey_in = self._ike_status(now)
        return DaemonStatus(
            tun=tun,
            mtu=self.mtu(),
            uptime_seconds=round(now - self.started_at, 1),
            listen=tuple(f"{a}:{p}" for a, p in listen),
            peers=tuple(
                self._peer_status(peer, described.get(peer.name), rekey_in, now)
                for peer in self.config.peers
            ),
            drops={str(k): v for k, v in self.processor.drops.items() if v},
            counters=dict(self.counters),
            dataplane=dataplane,
            ike_counters=dict(ike.counters) if ike is not None else {},
            ike_dos=ike.half_open.status(now) if ike is not None else None,
        )

    def _ike_status(self, now: float) -> tuple[dict[str, dict[str, Any]], dict[str, float | None]]:
        """The IKE manager's entries by peer, times made relative to ``now``; and the
        seconds to each CHILD_SA's rekey, by inbound SPI (hex)."""
        entries: dict[str, dict[str, Any]] = {}
        rekey_in: dict[str, float | None] = {}
        if self.ike is None:
            return entries, rekey_in
        for described in self.ike.status():
            entry = dict(described)
            entry["rekey_in_seconds"] = _seconds_until(entry.pop("rekey_at", None), now)
            last_seen = entry.pop("last_seen", None)
            if isinstance(last_seen, int | float):  # DPD: how long the peer is silent
                entry["last_seen_seconds"] = round(max(0.0, now - last_seen), 1)
            for child in entry.get("children", []):
                rekey_in[child["spi_in"]] = _seconds_until(child.pop("rekey_at", None), now)
            entries[entry.get("peer", "")] = entry
        return entries, rekey_in

    def _peer_status(
        self,
        peer: PeerConfig,
        ike: dict[str, Any] | None,
        rekey_in: dict[str, float | None],
        now: float,
    ) -> PeerStatus:
        children = tuple(
            child_status(sa, now, rekey_in.get(f"{sa.inbound.spi:08x}"))
            for sa in self.sad.for_peer(peer.name)
        )
        if peer.manual is not None:
            state = "manual" if children else "down"
        elif ike is not None:
            state = str(ike.get("state", "unknown"))
        else:
            state = "down"
        trap_state = self.trap.state(peer.name)
        return PeerStatus(
            name=peer.name,
            mode="manual" if peer.manual is not None else "ike",
            state=state,
            up=bool(children),
            remote=f"{peer.remote_address}:{peer.remote_port}",
            local=str(peer.local_address),
            local_ts=format_selectors(peer.local_ts),
            remote_ts=format_selectors(peer.remote_ts),
            ike=ike,
            children=children,
            last_error=self.last_error.get(peer.name) or (ike or {}).get("last_error"),
            on_demand=None
            if trap_state is None
            else OnDemandStatus(trap_state.value, self.trap.queued(peer.name)),
        )

    # -- packets -----------------------------------------------------------------------------
    def from_tun(self, packets: list[bytes], now: float) -> None:
        """A burst of inner packets: sealed for their CHILD_SA, or waiting for it (trap)."""
        self.now = now
        self._send_inner(packets)
        self._start_on_demand(now)

    def from_udp(
        self, datagrams: list[tuple[bytes | memoryview, Address]], local: Address, now: float
    ) -> None:
        """A burst received on ``local``: IKE on the IKE port, ESP/IKE/keepalives on the
        NAT-T port (RFC 3948 §2.2)."""
        self.now = now
        gw = self.config.gateway
        if local[1] == gw.ike_port and local[1] != gw.port:
            for data, remote in datagrams:
                self._ike_receive(data, local, remote, now)
            return
        to_tun, ike, moved = self.processor.from_udp(datagrams)
        self._to_tun += to_tun
        for data, remote in ike:
            self._ike_receive(data, local, remote, now)
        if moved:
            # Authentic ESP from an unexpected endpoint: counted; the endpoint itself only
            # follows authenticated IKE (PeerAddressChanged), as strongSwan does.
            self.counters["esp_from_new_address"] += len(moved)

    def _send_inner(self, packets: list[bytes]) -> None:
        """Seal inner packets: a TUN burst, or the packets that waited for their CHILD_SA."""
        for (local, remote), datagrams in self.processor.from_tun(packets).items():
            if local not in self._sockets:
                self.counters["no_socket"] += len(datagrams)
                continue
            self._outbox.append((local, remote, datagrams))

    def _start_on_demand(self, now: float) -> None:
        """Initiate the trap peers whose first packet just arrived (once per negotiation)."""
        triggers = self.trap.take_triggers()
        if not triggers:
            return
        for name in triggers:
            if self.ike is None or name not in _ike_peers(self.config):
                self.trap.failed(name)
                continue
            self.log.info("on-demand start: traffic for the peer's selectors", peer=name)
            self.ike.initiate(name, now, on_demand=True)
        self._pump(now)

    # -- IKE ---------------------------------------------------------------------------------
    def _ike_receive(
        self, data: bytes | memoryview, local: Address, remote: Address, now: float
    ) -> None:
        """Queue one IKE message after the cheap checks; :meth:`run_ike` processes it."""
        if self.ike is None:
            self.counters["ike_without_ike_peers"] += 1
            return
        self.ike.enqueue_datagram(data, local, remote, now)

    def ike_port_pause(self, now: float) -> float:
        """Seconds the shell may leave the IKE port unread: new requests would be dropped
        meanwhile anyway (their share of the daemon's time is used up), and only new
        requests arrive there (IKE moves to the NAT-T port after IKE_SA_INIT)."""
        return self.ike.intake_paused_for(now) if self.ike is not None else 0.0

    def ike_pending(self) -> bool:
        """IKE messages wait for :meth:`run_ike`."""
        return self.ike is not None and self.ike.pending() > 0

    def run_ike(self, now: float) -> None:
        """Process queued IKE messages for at most :data:`IKE_SLICE` seconds of work (at
        least one message), then apply what they caused; the rest waits for the next call."""
        self.now = now
        if self.ike is None or not self.ike.pending():
            return
        deadline = self.work_clock() + IKE_SLICE
        self.ike.process_queued(now, lambda: self.work_clock() < deadline)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        """The IKE timer fired: report data-plane usage, run the manager's timers."""
        self.now = now
        self.ike_log.summarize(now)
        if self.ike is None:
            return
        self._report_usage(self.ike, now)
        self.ike.handle_timer(now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Queue what the IKE layer sends, and apply its events."""
        ike = self.ike
        assert ike is not None
        self._send_ike()
        while (event := ike.next_event()) is not None:
            self._apply(event, now)
        self._send_ike()
        self._sas_changed()

    def _send_ike(self) -> None:
        assert self.ike is not None
        for d in self.ike.datagrams_to_send():
            if d.local not in self._sockets:
                self.counters["ike_no_socket"] += 1
                continue
            self._outbox.append((d.local, d.remote, [frame(d.data, d.marker, d.keepalive)]))

    def _report_usage(self, ike: IkeManager, now: float) -> None:
        """Tell the IKE layer how much each CHILD_SA carried (soft/hard limits, RFC 7296
        §2.8); the manager wakes its timer at least every ``USAGE_INTERVAL`` seconds
        while CHILD_SAs exist."""
        for sa in self.sad:
            inbound, outbound = sa.inbound, sa.outbound
            ike.child_usage(
                sa.peer,
                inbound.spi,
                max(inbound.bytes, outbound.bytes),
                max(inbound.packets, outbound.packets),
                now,
                seq_out=outbound.seq,
                packets_in=inbound.packets,  # the peer is alive: no DPD needed (RFC 7296 §2.4)
            )

    def _apply(self, event: ev.Event, now: float) -> None:
        log = self.log
        match event:
            case ev.ChildSaEstablished(peer=peer, child=child, outbound_active=outbound):
                self._installed(self._install(peer, child, now, outbound=outbound), outbound)
                if outbound:
                    queued = self.trap.installed(peer)  # start: trap
                    if queued:
                        log.info("on-demand queue sent", peer=peer, packets=len(queued))
                        self._send_inner(queued)
                    if self.config.peer(peer).start != "trap":
                        self.trap.unwatch(peer)  # back from dpd_action hold
            case ev.ChildSaOutboundActivated(peer=peer, spi_in=spi_in):
                # RFC 7296 §2.8: the rekeyed SA is gone; the new one now carries our traffic.
                if self.sad.activate_outbound(spi_in) is not None:
                    log.info("CHILD_SA outbound active", peer=peer, spi_in=f"{spi_in:08x}")
            case ev.ChildSaDeleted(peer=peer, spi_in=spi_in, reason=reason):
                if self.sad.remove(spi_in) is not None:
                    log.info("CHILD_SA removed", peer=peer, spi_in=f"{spi_in:08x}", reason=reason)
                if not self.sad.for_peer(peer):
                    self.trap.down(peer)  # the next packet brings it up again
            case ev.IkeSaDeleted(peer=peer, reason=reason):
                # Its CHILD_SAs came as ChildSaDeleted events first; a new IKE SA of the same
                # peer (reload, restart) may already have installed its own.
                log.info("IKE SA deleted", peer=peer, reason=reason)
                self.trap.failed(peer)  # only if still negotiating: drop what waited
            case ev.IkeSaEstablished(peer=peer, remote=remote):
                log.info("IKE SA established", peer=peer, remote=str(remote))
            case ev.PeerAddressChanged(peer=peer, remote=remote):
                # RFC 7296 §2.23: follow the peer behind a NAT, as learned from authenticated IKE.
                for sa in self.sad.for_peer(peer):
                    sa.remote = remote
                log.info("peer address changed", peer=peer, remote=f"{remote[0]}:{remote[1]}")
            case ev.PeerDead(peer=peer, action=action):
                self.counters["dead_peers"] += 1
                log.warning("peer is dead", peer=peer, dpd_action=action)
                if action == "hold":
                    # RFC 7296 §2.4 / strongSwan dpd_action=trap: down until traffic needs it.
                    config = self.config.peer(peer)
                    self.trap.watch(peer, config.local_ts, config.remote_ts)
            case ev.UnauthenticatedFailure():
                # Not the peer's: no last_error, no trap change (issue 12); counted by the
                # IKE manager (ike_counters: unauthenticated_failures).
                self.ike_log.unauthenticated_failure(event)
            case ev.IkeRetransmit():
                self.ike_log.retransmit(event)
            case ev.NegotiationFailed(peer=peer, reason=reason):
                self.last_error[peer] = reason
                self.counters["negotiation_failed"] += 1
                self.trap.failed(peer)  # packets that waited for it are dropped (counted)
                log.warning("negotiation failed", peer=peer, reason=reason)

    def _install(
        self, peer: str, child: ev.ChildSaParams, now: float, *, outbound: bool = True
    ) -> InstalledChildSa:
        """Install one CHILD_SA (negotiated or manual) in the SA database."""
        local = (str(self.config.peer(peer).local_address), self.config.gateway.port)
        sa = child_sa(peer, child, local, now)
        self.sad.install(sa, outbound=outbound)
        return sa

    def _installed(self, sa: InstalledChildSa, outbound: bool) -> None:
        """Count and log a negotiated CHILD_SA just installed."""
        self.last_error.pop(sa.peer, None)
        self.counters["child_sa_installed"] += 1
        out = sa.outbound
        self.log.info(
            "CHILD_SA installed",
            peer=sa.peer,
            spi_in=f"{sa.inbound.spi:08x}",
            spi_out=f"{out.spi:08x}",
            algorithm=out.encr.name + (f"-{out.integ.name}" if out.integ else ""),
            local_ts=format_selectors(sa.local_ts),
            remote_ts=format_selectors(sa.remote_ts),
            remote=f"{sa.remote[0]}:{sa.remote[1]}",
            outbound="active" if outbound else "after the old SA is deleted",
        )

    # -- peers: start-up, control, reload ------------------------------------------------------
    def _arm(self, peer: PeerConfig, now: float) -> None:
        """What a configured peer gets without IKE: its static SA, or its trap."""
        if peer.manual is not None:
            self._install(peer.name, manual_params(self.config, peer), now)
            self.log.info("manual SA installed", peer=peer.name)
        elif peer.start == "trap":
            self.trap.watch(peer.name, peer.local_ts, peer.remote_ts)

    def _route(self, peer: PeerConfig, *, add: bool) -> None:
        for ts in peer.remote_ts:
            for net in ts.networks():
                self._routes.append(RouteChange(net, add))

    def control(
        self, cmd: str, peer: str, now: float, *, rekey_ike: bool = False
    ) -> dict[str, Any]:
        """``ipsecctl up|down|rekey PEER`` (``rekey --ike``)."""
        self.now = now
        if self.ike is None or peer not in _ike_peers(self.config):
            return {"ok": False, "error": f"no IKE peer named {peer!r}"}
        if cmd == "up":
            self.ike.initiate(peer, now)
        elif cmd == "down":
            self.ike.terminate(peer, now)
        else:
            try:
                if rekey_ike:
                    self.ike.rekey_ike(peer, now)
                else:
                    self.ike.rekey(peer, now)
            except KeyError as exc:  # no established IKE SA with the peer
                return {"ok": False, "error": str(exc.args[0])}
        self._pump(now)
        return {"ok": True}

    def reload(self, new: Config, now: float) -> dict[str, Any]:
        """Apply a reloaded config (SIGHUP, ``ipsecctl reload``), validated by the loader.

        Unchanged peers keep their SAs and lose no packet; changed peers are
        re-negotiated (or re-keyed, manual ones); new peers start; removed peers get a
        Delete.  The IKE peers' plan is the one :meth:`IkeManager.reconfigure` returns
        (it also sends the Deletes); the manual peers are compared here.  The gateway
        section (device, addresses, ports) needs a restart.
        """
        self.now = now
        if new.gateway != self.config.gateway:
            message = (
                f"{new.path}: the gateway section changed; restart ipsecd to apply it"
                " (running config kept)"
            )
            self.log.error("reload refused", error=message)
            return {"ok": False, "error": message}
        old_peers = {p.name: p for p in self.config.peers}
        new_peers = {p.name: p for p in new.peers}
        if self.ike is not None:
            kinds = {n: k for k, names in self.ike.reconfigure(new, now).items() for n in names}
        else:
            kinds = {name: "added" for name in _ike_peers(new)}
            if kinds:
                self.ike = self._ike_manager(new, now)
        # Manual peers, and peers that switch between manual and IKE (IKE's plan sees one
        # half of those: added or removed).
        for name in {p.name for p in (*self.config.peers, *new.peers) if p.manual is not None}:
            old, peer = old_peers.get(name), new_peers.get(name)
            kinds[name] = (
                "added"
                if old is None
                else "removed"
                if peer is None
                else "unchanged"
                if old == peer
                else "changed"
            )
        order = list(new_peers) + [n for n in old_peers if n not in new_peers]
        plan = {kind: [n for n in order if kinds.get(n) == kind] for kind in PLAN_KINDS}
        self.log.info("reload plan", **plan)
        for name in plan["removed"] + plan["changed"]:
            old = old_peers[name]
            self.trap.unwatch(name)
            if old.manual is not None:
                self.sad.remove_peer(name)
            self._route(old, add=False)
        self.config = new
        for name in plan["added"] + plan["changed"]:
            peer = new_peers[name]
            self._route(peer, add=True)
            self._arm(peer, now)
            if peer.manual is None and peer.start == "initiate":
                assert self.ike is not None
                self.ike.initiate(name, now)
        # Routes of unchanged peers may have been shared with a removed one: put them back.
        for name in plan["unchanged"]:
            self._route(new_peers[name], add=True)
        if self.ike is not None:
            self._pump(now)
        self._sas_changed()
        return {"ok": True, "plan": plan}
