"""The daemon core: every decision of a running ipsecd, without I/O (aioquic's shape).

The asyncio shell (:mod:`ipsecd.daemon.app`) owns the TUN device, the UDP sockets,
the timers and the signals; it feeds this core what they deliver and carries out
what the core asks for:

* :meth:`DaemonCore.from_tun` / :meth:`DaemonCore.from_udp` /
  :meth:`DaemonCore.from_raw` take bursts with the current time;
  :meth:`DaemonCore.datagrams_to_send` (ESP and IKE, framed for the wire, in order),
  :meth:`DaemonCore.raw_to_send` (ESP/AH directly over IP, whole IP packets) and
  :meth:`DaemonCore.packets_to_tun` give what goes out;
* IKE in a UDP burst is only queued (after cheap checks); while
  :meth:`DaemonCore.ike_pending`, the shell calls :meth:`DaemonCore.run_ike`, which
  works through the queue for at most :data:`IKE_SLICE` seconds, after the burst's ESP
  went out: IKE work never holds up ESP (issue 12);
* :meth:`DaemonCore.get_timer` says when :meth:`DaemonCore.handle_timer` is due;
* :meth:`DaemonCore.routes_to_change` lists the TUN routes to add or remove
  (at start and after :meth:`DaemonCore.reload`); a transport-mode peer's address
  goes into ``gateway.route_table``, which ipsecd's own (marked) packets skip;
* :meth:`DaemonCore.control` runs ``ipsecctl up/down/rekey --no-wait``;
  :meth:`DaemonCore.control_wait` runs the same and answers with the outcome, by
  ticket, in :meth:`DaemonCore.control_answers` (:mod:`ipsecd.daemon.outcomes`);
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipsecd.addresses import format_address
from ipsecd.ah.sa import InboundAhSa, OutboundAhSa
from ipsecd.config import ChildConfig, Config, PeerConfig
from ipsecd.config.schema import IpAddress
from ipsecd.crypto import keyexchange
from ipsecd.crypto.proposals import Proposal
from ipsecd.daemon import logs
from ipsecd.daemon.ikelog import IkeLog
from ipsecd.daemon.ledger import Ledger
from ipsecd.daemon.outcomes import Outcomes, Summary
from ipsecd.daemon.status import (
    DAEMON_EVENTS,
    DROP_REASONS,
    IKE_EVENTS,
    Clock,
    ConnsStatus,
    DaemonStatus,
    DataplaneStatus,
    IkeDosStatus,
    OnDemandStatus,
    PeerStatus,
    every,
    peer_status,
    run_through,
)
from ipsecd.dataplane.mtu import sa_max_inner, tun_mtu
from ipsecd.dataplane.offload import ToTun, TunRead
from ipsecd.dataplane.processor import Outgoing, PacketProcessor
from ipsecd.dataplane.sad import (
    REKEYED_INBOUND_GRACE,
    Address,
    Inbound,
    InstalledChildSa,
    Outbound,
    SaDatabase,
)
from ipsecd.dataplane.trap import TrapQueue
from ipsecd.dataplane.udp import Received
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.esp.udp_encap import frame
from ipsecd.ike import events as ev
from ipsecd.ike.child import child_algorithm
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.policy import PLAN_KINDS, Resolver
from ipsecd.selectors import TrafficSelector, format_prefixes, format_selectors

if TYPE_CHECKING:
    from ipsecd.dataplane.tun import IpNetwork

#: ESP or IKE datagrams from one local endpoint to one remote endpoint, ready to send.
Batch = tuple[Address, Address, list[Outgoing]]
#: Whole IP packets for a raw socket: (local address, IP protocol 50/51, remote address).
RawBatch = tuple[str, int, str, list[bytes]]

IKE_SUMMARY_KEYS = ("local_spi", "remote_spi", "algorithm", "local", "remote")
# Seconds of IKE work per wake-up (run_ike, by the work clock): ESP waits no longer.
IKE_SLICE = 0.002
# Peers per step of a status built between packets (status_steps): ~25 ms with 256 peers
# on the test VM, where 10 000 in one piece kept the loop 0.6 s from the sockets.
STATUS_STEP = 256
PREPARED_METHODS = 4  # key exchange methods with a key pair made ahead (prepare_key_pairs)


@dataclass(frozen=True)
class RouteChange:
    """Route ``network`` into the TUN device (``add``) or take the route away; ``table``
    None is the main table, else ``gateway.route_table`` (transport mode), which the
    rule ``not fwmark gateway.fwmark`` consults; ``source`` the address the kernel gives
    this gateway's own packets on the route (transport mode: the peer's
    ``local_address``, which the selectors name)."""

    network: IpNetwork
    add: bool
    table: int | None = None
    source: str | None = None


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
        name=peer.children[0].name,
        encap=peer.encap == "always",  # no IKE to detect a NAT: auto is directly over IP
    )


def child_sa(peer: str, child: ev.ChildSaParams, local: Address, now: float) -> InstalledChildSa:
    """The data-plane CHILD_SA for negotiated (or manual) parameters: ESP or AH, tunnel
    or transport mode, in UDP or directly over IP.

    A transport-mode ESP SA checks no selectors itself (its payload has no inner
    header): the processor checks them on the rebuilt packet, as for AH.
    """
    inbound: Inbound
    outbound: Outbound
    version = 6 if ":" in child.remote[0] else 4
    tunnel = child.mode == "tunnel"
    overhead: Callable[[int], int]
    if child.protocol == "ah":
        assert child.integ is not None  # AH always has an integrity algorithm
        inbound = InboundAhSa(child.spi_in, child.integ, child.integ_key_in, esn=child.esn)
        ah = outbound = OutboundAhSa(child.spi_out, child.integ, child.integ_key_out, child.esn)
        overhead = lambda n: ah.overhead(version)  # noqa: E731  (the same for every size)
    else:
        assert child.encr is not None  # ESP always has a cipher
        inbound = InboundEspSa(
            child.spi_in,
            encr=child.encr,
            integ=child.integ,
            encr_keymat=child.encr_key_in,
            integ_key=child.integ_key_in,
            esn=child.esn,
            src_selectors=child.remote_ts if tunnel else (),
            dst_selectors=child.local_ts if tunnel else (),
        )
        outbound = OutboundEspSa(
            child.spi_out,
            encr=child.encr,
            integ=child.integ,
            encr_keymat=child.encr_key_out,
            integ_key=child.integ_key_out,
            esn=child.esn,
        )
        overhead = outbound.overhead
    udp = child.encap and child.protocol == "esp"  # AH never travels in UDP
    max_inner = sa_max_inner(overhead, version, transport=not tunnel, udp=udp)
    return InstalledChildSa(
        peer=peer,
        inbound=inbound,
        outbound=outbound,
        local_ts=child.local_ts,
        remote_ts=child.remote_ts,
        local=local,
        remote=child.remote,
        installed_at=now,
        name=child.name,
        mode=child.mode,
        protocol=child.protocol,
        encap=child.encap,
        max_inner=max_inner,
        nat=child.nat,
    )


def esp_proposals(peer: PeerConfig) -> tuple[Proposal, ...]:
    """What the CHILD_SAs may carry for ``peer``: its children's ESP or AH proposals, or
    its manual transform."""
    m = peer.manual
    if m is None:
        return tuple(dict.fromkeys(p for c in peer.children for p in c.child_proposals))
    return (Proposal("esp", (m.encr,), (m.integ,) if m.integ else (), (), ()),)


def _ike_peers(config: Config) -> list[str]:
    return [p.name for p in config.peers if p.manual is None]


def _is_ike_peer(config: Config, name: str) -> bool:
    """``name`` is a configured peer that IKE negotiates (not manual): O(1), as the
    commands and on-demand starts ask it."""
    try:
        return config.peer(name).manual is None
    except KeyError:
        return False


def child_summary(
    spi_in: int,
    spi_out: int,
    algorithm: str,
    local_ts: Iterable[TrafficSelector],
    remote_ts: Iterable[TrafficSelector],
) -> Summary:
    """A CHILD_SA as ``ipsecctl up|rekey`` print it (and the log line ``CHILD_SA installed``)."""
    return {
        "spi_in": f"{spi_in:08x}",
        "spi_out": f"{spi_out:08x}",
        "algorithm": algorithm,
        "local_ts": format_selectors(tuple(local_ts)),
        "remote_ts": format_selectors(tuple(remote_ts)),
    }


def _live_children(entry: dict[str, Any]) -> int:
    """CHILD_SAs of an IKE status entry that carry traffic: installed, or being rekeyed."""
    return sum(1 for c in entry.get("children", ()) if c.get("state") in ("installed", "rekeying"))


def trap_key(peer: str, child: str) -> str:
    """The trap of one configured child (``start: trap``): ``PEER/CHILD``."""
    return f"{peer}/{child}"


def _split_trap_key(key: str) -> tuple[str, str]:
    peer, _, child = key.partition("/")
    return peer, child


def _installed_summary(sa: InstalledChildSa) -> Summary:
    return child_summary(sa.inbound.spi, sa.outbound.spi, sa.algorithm, sa.local_ts, sa.remote_ts)


class PeerIndex:
    """The installed CHILD_SAs by peer, kept beside the SA database so that no IKE event
    and no peer's status scans every SA: :meth:`of` gives a peer's SAs in the database's
    order (:meth:`SaDatabase.for_peer`: the sending ones newest first, then the
    inbound-only ones), :attr:`up` the number of peers with at least one."""

    __slots__ = ("_sas", "_sending", "_serial")

    def __init__(self) -> None:
        self._sas: dict[str, dict[int, InstalledChildSa]] = {}  # peer -> inbound SPI -> SA
        self._sending: dict[int, int] = {}  # inbound SPI -> when it began sending
        self._serial = 0

    @property
    def up(self) -> int:
        return len(self._sas)

    def installed(self, sa: InstalledChildSa, outbound: bool) -> None:
        self._sas.setdefault(sa.peer, {})[sa.inbound.spi] = sa
        if outbound:
            self.sending(sa.inbound.spi)

    def sending(self, spi_in: int) -> None:
        if spi_in not in self._sending:
            self._serial += 1
            self._sending[spi_in] = self._serial

    def removed(self, sa: InstalledChildSa) -> None:
        spi = sa.inbound.spi
        self._sending.pop(spi, None)
        sas = self._sas.get(sa.peer)
        if sas is not None and sas.get(spi) is sa:
            del sas[spi]
            if not sas:
                del self._sas[sa.peer]

    def of(self, peer: str) -> list[InstalledChildSa]:
        sas = self._sas.get(peer)
        if not sas:
            return []
        serial = self._sending
        sending = sorted(
            (s for s in sas.values() if s.inbound.spi in serial),
            key=lambda s: -serial[s.inbound.spi],
        )
        return sending + [s for s in sas.values() if s.inbound.spi not in serial]


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
        resolver: Resolver | None = None,
        log: Any = None,
    ) -> None:
        self.config = config
        self.random_bytes = random_bytes
        self.work_clock = work_clock
        # DNS names in remote_address: the shell's lookup (tests fix it); None: none.
        self.resolver = resolver
        # The daemon's log; the start-up warm-up's cores log nowhere (logs.nowhere).
        self.log = logs.get_logger() if log is None else log
        self.started_at = now
        self.now = now  # the time of the call being handled (the trap's clock)
        self.ike_log = IkeLog(self.log, lambda: self.now)
        self.counters: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.ledger = Ledger()  # per-peer totals across rekeys, last packet times (status)
        self.sad = SaDatabase()
        self.by_peer = PeerIndex()  # self.sad by peer (O(1) per IKE event, not O(SAs))
        self.processor = PacketProcessor(self.sad, clock=lambda: self.now)
        # start: trap -- packets without SA wait here while their tunnel is negotiated.
        self.trap = TrapQueue(self.counters, clock=lambda: self.now)
        self.processor.no_sa = self.trap.offer
        self.ike: IkeManager | None = None
        gw = config.gateway  # the same for the daemon's lifetime (reload refuses changes)
        self._endpoints = [(str(a), port) for a in gw.listen for port in (gw.port, gw.ike_port)]
        self._sockets = frozenset(self._endpoints)
        self._esp_port = gw.port  # ESP arrives here; on a separate IKE port all is IKE
        self._outbox: list[Batch] = []
        self._raw_outbox: list[RawBatch] = []
        self._to_tun: list[ToTun] = []
        self._routes: list[RouteChange] = []
        self._status_line = ""
        self._ike_ran = False  # answer_ike processed messages whose events apply_ike applies
        self.outcomes = Outcomes()  # control commands waiting for their outcome
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
            resolve=self._resolve,
        )

    def _resolve(self, name: str, version: int) -> list[IpAddress]:
        """The IKE layer asks for a peer's DNS name (at every initiation): the shell's
        resolver answers; a failure is logged here and reported by the IKE layer."""
        if self.resolver is None:
            return []
        try:
            found = [a for a in self.resolver(name, version) if a.version == version]
        except OSError as exc:
            self.log.warning("DNS lookup failed", name=name, error=exc.strerror or str(exc))
            return []
        if found:
            self.log.info("DNS name resolved", name=name, address=str(found[0]))
        return found

    # -- what the shell opens --------------------------------------------------------------
    def endpoints(self) -> list[Address]:
        """The local UDP endpoints to listen on: each address, ESP (NAT-T) and IKE port."""
        return list(self._endpoints)

    def raw_endpoints(self) -> list[tuple[str, int]]:
        """The raw sockets to open: each listen address, for ESP (50) and AH (51) directly
        over IP.  Opened whatever the peers say (a reload may add ``encap: auto``); they
        also keep the kernel, which has no ESP/AH of its own here, from answering those
        packets with ICMP "protocol unreachable"."""
        return [(str(a), proto) for a in self.config.gateway.listen for proto in (50, 51)]

    def needs_raw(self) -> bool:
        """A peer may send ESP or AH directly over IP (``encap: auto``): without raw
        sockets the daemon cannot start."""
        return any(peer.encap == "auto" for peer in self.config.peers)

    def mtu(self) -> int:
        """The TUN MTU: configured, or the largest inner packet every ESP transform any
        peer may use fits into a 1500-byte path (RFC 4303 §2, RFC 3948 §2.1)."""
        gw = self.config.gateway
        if gw.mtu is not None:
            return gw.mtu
        proposals = [p for peer in self.config.peers for p in esp_proposals(peer)]
        versions = {peer.local_address.version for peer in self.config.peers}
        return min(tun_mtu(proposals, v) for v in versions or {4})

    def start(self, now: float) -> None:
        """Initiate the ``start: initiate`` peers (after the shell opened everything)."""
        self.now = now
        if self.ike is not None:
            self.ike.start(now)
            self._pump(now)

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA; their Deletes are in :meth:`datagrams_to_send`.  Waiting
        control commands are answered (:meth:`control_answers`)."""
        self.now = now
        self.outcomes.cancel_all("ipsecd is stopping", now)
        if self.ike is not None:
            self.ike.shutdown(now)
            self._send_ike()

    # -- what the shell carries out -------------------------------------------------------
    def datagrams_to_send(self) -> list[Batch]:
        out, self._outbox = self._outbox, []
        return out

    def raw_to_send(self) -> list[RawBatch]:
        """ESP/AH packets directly over IP: whole IP packets, by raw socket and peer."""
        out, self._raw_outbox = self._raw_outbox, []
        return out

    def packets_to_tun(self) -> list[ToTun]:
        out, self._to_tun = self._to_tun, []
        return out

    def routes_to_change(self) -> list[RouteChange]:
        out, self._routes = self._routes, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due: the IKE layer's timers, waiting commands, the
        next summary of suppressed log lines."""
        due = [
            self.outcomes.deadline(),
            self.ike.get_timer() if self.ike is not None else None,
            self.ike_log.next_summary(),
            self.sad.next_expiry(),
        ]
        return min((t for t in due if t is not None), default=None)

    def key_pairs_missing(self) -> bool:
        """A key pair made ahead was used (:data:`ipsecd.crypto.keyexchange.PREPARED`):
        the shell calls :meth:`prepare_key_pairs` when it has nothing else to do."""
        return keyexchange.PREPARED.missing()

    def prepare_key_pairs(self) -> None:
        """Make ahead one key pair for the first key exchange method of each IKE proposal
        configured (the initiator's guess, the responder's likely choice; at most
        :data:`PREPARED_METHODS`), so that IKE_SA_INIT does not wait for it."""
        methods = dict.fromkeys(
            proposal.ke[0]
            for peer in self.config.peers
            for proposal in peer.ike_proposals
            if proposal.ke
        )
        keyexchange.PREPARED.want(tuple(methods)[:PREPARED_METHODS])
        keyexchange.PREPARED.prepare()

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=`` (sd_notify); cheap enough for every burst."""
        return self._status_line

    def _sas_changed(self) -> None:
        """SAs were installed or removed (events, start, reload): recount the tunnels
        (O(1): the ledger and the peer index follow each SA as it comes and goes)."""
        self._status_line = f"{self.by_peer.up} of {len(self.config.peers)} tunnels up"

    def status(
        self,
        now: float,
        *,
        wall: float,
        tun: str | None,
        listen: Iterable[Address],
        dataplane: DataplaneStatus,
    ) -> DaemonStatus:
        """The status model at ``now`` (``wall``: the wall clock at the same instant, for
        timestamps); the shell tells what only its devices know.  In one piece: the
        shell's answers use :meth:`status_steps`."""
        return run_through(
            self.status_steps(now, wall=wall, tun=tun, listen=listen, dataplane=dataplane)
        )

    def status_steps(
        self,
        now: float,
        *,
        wall: float,
        tun: str | None,
        listen: Iterable[Address],
        dataplane: DataplaneStatus,
        step: int | None = None,
    ) -> Iterator[DaemonStatus | None]:
        """:meth:`status` made ``step`` peers (default :data:`STATUS_STEP`) at a time: None
        after each step (the shell reads its sockets then), the status last.  Each peer's
        part is taken in one piece; the whole spans the steps, as peers come and go
        meanwhile (the peers are those configured when it began, its time ``now``)."""
        step = step or STATUS_STEP
        self.ledger.observe(self.sad.with_retired(), now)
        clock = Clock(now, wall)
        ike = self.ike
        peers: list[PeerStatus] = []
        for number, peer in enumerate(self.config.peers, 1):
            entry = ike.peer_status(peer.name, now) if ike is not None else None
            peers.append(self._peer_status(peer, entry, clock))
            if number % step == 0:
                yield None
        yield DaemonStatus(
            generated_at=clock.iso(now),
            started_at=clock.iso(self.started_at),
            uptime_seconds=clock.age(self.started_at),
            tun=tun,
            mtu=self.mtu(),
            listen=tuple(format_address(endpoint) for endpoint in listen),
            peers=tuple(peers),
            drops=every(DROP_REASONS, self.processor.drops),
            counters=every(DAEMON_EVENTS, self.counters),
            dataplane=dataplane,
            ike_counters=every(IKE_EVENTS, ike.counters if ike is not None else {}),
            ike_dos=IkeDosStatus.of(ike.half_open.status(now)) if ike is not None else None,
        )

    def _peer_status(
        self, peer: PeerConfig, entry: dict[str, Any] | None, clock: Clock
    ) -> PeerStatus:
        traps: dict[str, OnDemandStatus] = {}
        for child in peer.children:
            key = trap_key(peer.name, child.name)
            trap_state = self.trap.state(key)
            if trap_state is not None:
                traps[child.name] = OnDemandStatus(trap_state.value, self.trap.queued(key))
        return peer_status(
            peer,
            entry,
            self.by_peer.of(peer.name),
            natt_port=self.config.gateway.port,
            ledger=self.ledger,
            clock=clock,
            last_error=self.last_error.get(peer.name),
            on_demand=next(iter(traps.values()), None),
            child_traps=traps,
            retired=self.sad.retired_of(peer.name),
        )

    def conns(self) -> ConnsStatus:
        """The configured peers and their proposals (``ipsecctl conns``)."""
        return ConnsStatus.of(self.config)

    # -- packets -----------------------------------------------------------------------------
    def seal_lone(self, packet: TunRead) -> tuple[Address, Address, bytes] | None:
        """A packet alone from TUN: ``(local, remote, datagram)`` for the shell to send,
        or None for :meth:`from_tun` (:meth:`PacketProcessor.seal_lone`).  No clock, no
        timer, no IKE: an idle tunnel's packet takes the shortest path out (issue 17)."""
        sealed = self.processor.seal_lone(packet)
        if sealed is None or sealed[0] not in self._sockets:
            return None  # from_tun counts what has no socket
        return sealed

    def open_lone(self, data: Received, local: Address, remote: Address) -> list[bytes] | None:
        """A datagram alone on ``local``: the inner packets for TUN (maybe none: dropped and
        counted), or None for :meth:`from_udp` (the IKE port, IKE, keepalives, a peer at a
        new address: :meth:`PacketProcessor.open_lone`)."""
        if local[1] != self._esp_port:
            return None
        return self.processor.open_lone(data, remote)

    def from_tun(self, packets: Sequence[TunRead], now: float) -> bool:
        """A burst of inner packets: sealed for their CHILD_SA, or waiting for it (trap).

        True if the IKE layer ran (an on-demand start): then the timer, the status line
        and the control answers may have changed; False for packets alone, so that the
        shell's shortest path only sends (:meth:`Daemon._flush_packets`)."""
        self.now = now
        self._send_inner(packets)
        return self._start_on_demand(now)

    def from_udp(
        self, datagrams: list[tuple[Received, Address]], local: Address, now: float
    ) -> bool:
        """A burst received on ``local``: IKE on the IKE port, ESP/IKE/keepalives on the
        NAT-T port (RFC 3948 §2.2).  True if the IKE layer ran (as :meth:`from_tun`)."""
        self.now = now
        gw = self.config.gateway
        if local[1] == gw.ike_port and local[1] != gw.port:
            for data, remote in datagrams:
                self._ike_receive(bytes(data), local, remote, now)
            return True
        to_tun, ike, moved = self.processor.from_udp(datagrams)
        self._to_tun += to_tun
        for data, remote in ike:
            self._ike_receive(data, local, remote, now)
        if moved:
            # Authentic ESP from an unexpected endpoint: counted, and told to the IKE layer,
            # which follows a peer behind a NAT there (PeerAddressChanged), as strongSwan.
            self.counters["esp_from_new_address"] += len(moved)
            if self.ike is not None:
                last = {(sa.peer, sa.inbound.spi): remote for sa, remote in moved}
                for (peer, spi_in), remote in last.items():
                    self.ike.peer_moved(peer, spi_in, remote, now)
                self._pump(now)
        return bool(ike or moved)

    def from_raw(self, packets: list[bytes], protocol: int, now: float) -> None:
        """Whole IP packets a raw socket received for ``protocol`` (50 ESP, 51 AH)."""
        self.now = now
        self._to_tun += self.processor.from_raw(packets, protocol)

    def _send_inner(self, packets: Sequence[TunRead]) -> None:
        """Seal inner packets: a TUN burst, or the packets that waited for their CHILD_SA."""
        processor = self.processor
        for (local, remote), datagrams in processor.from_tun(packets).items():
            if local not in self._sockets:
                self.counters["no_socket"] += len(datagrams)
                continue
            self._outbox.append((local, remote, datagrams))
        for (local_ip, protocol, remote_ip), raw in processor.raw_to_send().items():
            self._raw_outbox.append((local_ip, protocol, remote_ip, raw))
        self._to_tun += processor.packets_to_tun()  # ICMP "too big" for inner senders

    def _start_on_demand(self, now: float) -> bool:
        """Initiate the trap peers whose first packet just arrived (once per negotiation);
        True if there were any."""
        triggers = self.trap.take_triggers()
        if not triggers:
            return False
        for key in triggers:
            name, child = _split_trap_key(key)
            if self.ike is None or not _is_ike_peer(self.config, name):
                self.trap.failed(key)
                continue
            self.log.info(
                "on-demand start: traffic for the child's selectors", peer=name, child=child
            )
            self.ike.initiate(name, now, on_demand=True, children=(child,))
        self._pump(now)
        return True

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
        self.answer_ike(now)
        self.apply_ike(now)

    def ike_step_waiting(self, now: float) -> bool:
        """One IKE message waits, the next step of an exchange, or a new request to an idle
        responder (IkeManager.next_step_waiting): the shell processes it in the turn that
        read it; otherwise it waits for the next turn, as a burst's or flood's do."""
        return self.ike is not None and self.ike.next_step_waiting(now)

    def answer_ike(self, now: float) -> bool:
        """The first half of :meth:`run_ike`: process queued IKE messages and queue what
        the IKE layer sends, but leave its events to :meth:`apply_ike`, so that the shell
        can send the answers first (the peer works on them meanwhile: an installed
        CHILD_SA and its log lines no longer delay the last IKE_AUTH answer).  Nothing is
        read in between, so no packet can meet the CHILD_SA before it is installed.
        True if answers wait ahead of events: only then is sending first worth a call."""
        self.now = now
        if self.ike is None or not self.ike.pending():
            return False
        deadline = self.work_clock() + IKE_SLICE
        self.ike.process_queued(now, lambda: self.work_clock() < deadline)
        self._send_ike()
        self._ike_ran = True
        return bool(self._outbox) and self.ike.events_waiting()

    def apply_ike(self, now: float) -> None:
        """The second half of :meth:`run_ike`: apply the events of what was processed."""
        if self._ike_ran:
            self._ike_ran = False
            self._pump(now)

    def handle_timer(self, now: float) -> None:
        """The timer fired: report data-plane usage, run the manager's timers, answer the
        control commands whose wait is over."""
        self.now = now
        self.ike_log.summarize(now)
        if self.ike is not None:
            if self.ike.usage_due(now):  # O(SAs): once per USAGE_INTERVAL, not per timer
                self._report_usage(self.ike, now)
            self.ike.handle_timer(now)
            self._pump(now)
        self.outcomes.expire(now, self._describe_peer)
        for sa in self.sad.expire(now):  # rekeyed SAs at the end of their inbound grace
            self.ledger.retire(sa)

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
        while CHILD_SAs exist.  Only the SAs that moved since they were last told: an idle
        SA costs a comparison per interval, not an IKE update (with 1000 idle tunnels each
        gateway spent 1.8 % of a core on this, now 0.1 %: bench/scale.py's idle CPU).  The
        ledger dates the same SAs' activity (status: ``last_in``/``last_out``); the retired
        ones too."""
        ledger = self.ledger
        for sa in self.sad.by_spi.values():  # (every SA that opens, the retired ones too)
            inbound, outbound = sa.inbound, sa.outbound
            moved = (inbound.packets, outbound.packets)
            if moved == sa.usage_told:
                continue
            sa.usage_told = moved
            ledger.moved(sa, now)
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
        self.ledger.event(event, now)
        log = self.log
        match event:
            case ev.ChildSaEstablished(peer=peer, child=child, outbound_active=outbound):
                self._installed(self._install(peer, child, now, outbound=outbound), outbound)
                if outbound:
                    key = trap_key(peer, child.name)
                    queued = self.trap.installed(key)  # start: trap
                    if queued:
                        log.info(
                            "on-demand queue sent", peer=peer, child=child.name, packets=len(queued)
                        )
                        self._send_inner(queued)
                    configured = self.config.peer(peer).child(child.name)
                    if configured is None or configured.start != "trap":
                        self.trap.unwatch(key)  # back from dpd_action hold
                if self.outcomes.waiting(peer):
                    summary = child_summary(
                        child.spi_in,
                        child.spi_out,
                        child_algorithm(child.protocol, child.encr, child.integ),
                        child.local_ts,
                        child.remote_ts,
                    )
                    self.outcomes.child_established(
                        peer, summary, outbound, lambda: self._ike_summary(peer), now
                    )
            case ev.ChildSaOutboundActivated(peer=peer, spi_in=spi_in):
                # RFC 7296 §2.8: the rekeyed SA is gone; the new one now carries our traffic.
                if self.sad.activate_outbound(spi_in) is not None:
                    self.by_peer.sending(spi_in)
                    log.info("CHILD_SA outbound active", peer=peer, spi_in=f"{spi_in:08x}")
            case ev.ChildSaDeleted(peer=peer, spi_in=spi_in, reason=reason, name=name):
                if event.rekeyed:  # its inbound side opens late packets a while longer
                    removed = self.sad.retire(spi_in, now)
                elif (removed := self.sad.remove(spi_in)) is not None:
                    self.ledger.retire(removed)
                if removed is not None:
                    self.by_peer.removed(removed)
                    log.info(
                        "CHILD_SA removed",
                        peer=peer,
                        child=name,
                        spi_in=f"{spi_in:08x}",
                        reason=reason,
                        **({"inbound_grace_s": REKEYED_INBOUND_GRACE} if event.rekeyed else {}),
                    )
                if not any(sa.name == name for sa in self.by_peer.of(peer)):
                    self.trap.down(trap_key(peer, name))  # the next packet brings it up again
            case ev.IkeSaDeleted(peer=peer, reason=reason):
                # Its CHILD_SAs came as ChildSaDeleted events first; a new IKE SA of the same
                # peer (reload, restart) may already have installed its own.
                log.info("IKE SA deleted", peer=peer, reason=reason)
                for key in self._trap_keys(peer):
                    self.trap.failed(key)  # only if still negotiating: drop what waited
                if self.outcomes.waiting(peer):
                    gone = not self._ike_entry(peer).get("ike_sas")
                    self.outcomes.ike_deleted(peer, reason, gone, now)
            case ev.IkeSaEstablished(
                peer=peer, local=local, remote=remote, algorithm=algorithm, auth=auth
            ):
                # The proposal names the RFC 9370 additional key exchanges (ke1_mlkem768).
                log.info(
                    "IKE SA established",
                    peer=peer,
                    local=format_address(local),
                    remote=format_address(remote),
                    spi_local=f"{event.local_spi:016x}",
                    spi_remote=f"{event.remote_spi:016x}",
                    algorithm=algorithm,
                    auth=auth,
                )
                if self.outcomes.waiting(peer):
                    self.outcomes.ike_established(peer, self._new_ike_summary(event), now)
            case ev.PeerClosed(peer=peer, what=what, action=action, child=closed):
                whole = "IKE SA" if what == "ike-sa" else "CHILD_SA"
                named = {"child": closed} if closed else {}
                log.info(f"peer deleted the {whole}", peer=peer, close_action=action, **named)
                # strongSwan close_action=trap, as dpd_action hold: the child's trap, or the
                # trap of each child whose close_action is trap when the IKE SA went.
                for c in self.config.peer(peer).children:
                    if (
                        (c.name == closed and action == "trap")
                        if closed
                        else (c.close_action == "trap")
                    ):
                        self._watch(peer, c)
            case ev.PeerAddressChanged(peer=peer, remote=remote):
                # RFC 7296 §2.23: follow the peer behind a NAT, as learned from authenticated IKE.
                for sa in self.by_peer.of(peer):
                    sa.remote = remote
                log.info("peer address changed", peer=peer, remote=format_address(remote))
            case ev.PeerDead(peer=peer, action=action):
                self.counters["dead_peers"] += 1
                log.warning("peer is dead", peer=peer, dpd_action=action)
                if action == "hold":
                    # RFC 7296 §2.4 / strongSwan dpd_action=trap: down until traffic needs it.
                    for c in self.config.peer(peer).children:
                        self.trap.watch(trap_key(peer, c.name), c.local_ts, c.remote_ts)
            case ev.UnauthenticatedFailure():
                # Not the peer's: no last_error, no trap change (issue 12); counted by the
                # IKE manager (ike_counters: unauthenticated_failures).
                self.ike_log.unauthenticated_failure(event)
            case ev.IkeRetransmit():
                self.ike_log.retransmit(event)
            case ev.NegotiationFailed(peer=peer, reason=reason, child=child_name):
                self.last_error[peer] = reason
                self.counters["negotiation_failed"] += 1
                keys = [trap_key(peer, child_name)] if child_name else self._trap_keys(peer)
                for key in keys:
                    self.trap.failed(key)  # packets that waited for it are dropped (counted)
                if child_name:
                    log.warning("negotiation failed", peer=peer, child=child_name, reason=reason)
                else:
                    log.warning("negotiation failed", peer=peer, reason=reason)
                self.outcomes.failed(peer, reason, now)
            case ev.ChildSaNarrowed(peer=peer, child=child_name):
                # RFC 7296 §2.9: the responder narrowed what we proposed; say what is left out.
                log.warning(
                    "CHILD_SA narrowed: traffic left without SA",
                    peer=peer,
                    child=child_name,
                    uncovered_local_ts=format_prefixes(event.local_uncovered),
                    uncovered_remote_ts=format_prefixes(event.remote_uncovered),
                )

    def _install(
        self, peer: str, child: ev.ChildSaParams, now: float, *, outbound: bool = True
    ) -> InstalledChildSa:
        """Install one CHILD_SA (negotiated or manual) in the SA database."""
        address = child.local[0] if child.local else str(self.config.peer(peer).local_address)
        local = (address, self.config.gateway.port)
        sa = child_sa(peer, child, local, now)
        self.sad.install(sa, outbound=outbound)
        self.by_peer.installed(sa, outbound)
        self.ledger.watch(sa, now)
        return sa

    def _installed(self, sa: InstalledChildSa, outbound: bool) -> None:
        """Count and log a negotiated CHILD_SA just installed."""
        self.last_error.pop(sa.peer, None)
        self.counters["child_sa_installed"] += 1
        self.log.info(
            "CHILD_SA installed",
            peer=sa.peer,
            **_installed_summary(sa),
            remote=format_address(sa.remote),
            outbound="active" if outbound else "after the old SA is deleted",
        )

    # -- peers: start-up, control, reload ------------------------------------------------------
    def _arm(self, peer: PeerConfig, now: float) -> None:
        """What a configured peer gets without IKE: its static SA, or its trap."""
        if peer.manual is not None:
            self._install(peer.name, manual_params(self.config, peer), now)
            self.log.info("manual SA installed", peer=peer.name)
        else:
            for child in peer.children:
                if child.start == "trap":
                    self._watch(peer.name, child)

    def _watch(self, peer: str, child: ChildConfig) -> None:
        self.trap.watch(trap_key(peer, child.name), child.local_ts, child.remote_ts)

    def _trap_keys(self, peer: str) -> list[str]:
        """The traps of ``peer``'s children that exist (start: trap, dpd_action hold)."""
        return self.trap.with_prefix(trap_key(peer, ""))

    def _route(self, peer: PeerConfig, *, add: bool) -> None:
        """Route each child's ``remote_ts`` into TUN; a transport-mode child's (the peer's
        own address) in ``gateway.route_table``, beside ipsecd's own packets (fwmark)."""
        seen: set[RouteChange] = set()
        for child in peer.children:
            transport = child.mode == "transport"
            table = self.config.gateway.route_table if transport else None
            source = str(peer.local_address) if transport else None
            for ts in child.remote_ts:
                for net in ts.networks():
                    change = RouteChange(net, add, table, source)
                    if change not in seen:
                        seen.add(change)
                        self._routes.append(change)

    def control(
        self, cmd: str, peer: str, now: float, *, rekey_ike: bool = False
    ) -> dict[str, Any]:
        """``ipsecctl up|down|rekey PEER --no-wait`` (``rekey --ike``): answered as soon as
        the request is on its way."""
        self.now = now
        error = self._command(cmd, peer, now, rekey_ike=rekey_ike)
        return {"ok": False, "error": error} if error else {"ok": True}

    def control_wait(
        self, cmd: str, peer: str, now: float, *, timeout: float, rekey_ike: bool = False
    ) -> int:
        """``ipsecctl up|down|rekey PEER``: the same command, answered with its outcome.

        Returns a ticket; :meth:`control_answers` gives its answer once an event settles
        it (:mod:`ipsecd.daemon.outcomes` says which), at once when there is nothing to
        wait for (already up, already down, refused), or ``timeout`` seconds later on
        this core's clock (:meth:`get_timer` includes the deadline).
        """
        self.now = now
        outcomes = self.outcomes
        ticket = outcomes.ticket()
        command = "rekey-ike" if cmd == "rekey" and rekey_ike else cmd
        entry = self._ike_entry(peer)
        children = _live_children(entry)
        waiter = outcomes.wait(ticket, command, peer, now, timeout, children=children)
        if waiter is None:
            return ticket
        if command == "up" and entry.get("state") == "established" and self._all_up(peer):
            summaries = [_installed_summary(sa) for sa in self.by_peer.of(peer)]
            ike_sa = self._ike_summary(peer)
            outcomes.succeed(waiter, "already up", now, ike_sa=ike_sa, child_sas=summaries)
            return ticket
        error = self._command(cmd, peer, now, rekey_ike=rekey_ike)  # events may settle it
        if error:  # unknown peer, nothing to rekey
            outcomes.fail(waiter, "failed", error, now)
        elif command == "down" and not self._ike_entry(peer).get("ike_sas"):
            # Nothing established to delete (down, or still negotiating): no Delete to wait for.
            outcomes.succeed(waiter, "down", now, reason="terminated by operator")
        return ticket

    def control_answers(self) -> list[tuple[int, dict[str, Any]]]:
        """``(ticket, response)`` of the waiting commands settled since the last call."""
        return self.outcomes.answers()

    def _command(self, cmd: str, peer: str, now: float, *, rekey_ike: bool) -> str | None:
        """Run ``up``, ``down`` or ``rekey`` on ``peer``; the error in words, or None."""
        if self.ike is None or not _is_ike_peer(self.config, peer):
            return f"no IKE peer named {peer!r}"
        if cmd == "up":
            # Wanted from now on, every child; an established IKE SA gets the CHILD_SAs it
            # lacks (once), a new one is set up otherwise.
            children = tuple(c.name for c in self.config.peer(peer).children)
            try:
                self.ike.initiate(peer, now, children=children)
            except ValueError as exc:  # remote_address any
                return str(exc)
        elif cmd == "down":
            self.ike.terminate(peer, now)
        else:
            try:
                if rekey_ike:
                    self.ike.rekey_ike(peer, now)
                else:
                    entry = self._ike_entry(peer)
                    if entry.get("state") == "established" and not _live_children(entry):
                        return f"peer {peer!r} has no CHILD_SA to rekey"
                    self.ike.rekey(peer, now)
            except KeyError as exc:  # no established IKE SA with the peer
                return str(exc.args[0])
        self._pump(now)
        return None

    def _all_up(self, peer: str) -> bool:
        """Every configured child of ``peer`` has a CHILD_SA installed."""
        names = {sa.name for sa in self.by_peer.of(peer)}
        return _is_ike_peer(self.config, peer) and all(
            c.name in names for c in self.config.peer(peer).children
        )

    def _ike_entry(self, peer: str) -> dict[str, Any]:
        """The IKE layer's status entry of ``peer`` (plain data; empty if unknown)."""
        if self.ike is None:
            return {}
        return self.ike.peer_status(peer) or {}

    def _ike_summary(self, peer: str) -> Summary | None:
        """The peer's established IKE SA as ``ipsecctl up`` prints it (None: none is)."""
        entry = self._ike_entry(peer)
        if entry.get("state") != "established":
            return None
        return {k: entry.get(k) for k in IKE_SUMMARY_KEYS}

    def _new_ike_summary(self, event: ev.IkeSaEstablished) -> Summary:
        """The IKE SA ``event`` announced (the algorithms from the IKE layer's status)."""
        entry = self._ike_entry(event.peer)
        local_spi = f"{event.local_spi:016x}"
        return {
            "local_spi": local_spi,
            "remote_spi": f"{event.remote_spi:016x}",
            "algorithm": entry.get("algorithm") if entry.get("local_spi") == local_spi else None,
            "local": format_address(event.local),
            "remote": format_address(event.remote),
        }

    def _describe_peer(self, peer: str) -> str:
        """Where a peer stands, for a command that stopped waiting."""
        entry = self._ike_entry(peer)
        words = f"peer {peer} is {entry.get('state', 'unknown')}"
        error = entry.get("last_error") or self.last_error.get(peer)
        return f"{words}; last error: {error}" if error else words

    def _update_children(
        self, old: PeerConfig, new: PeerConfig, kinds: dict[str, list[str]]
    ) -> None:
        """Before a reload of a peer whose IKE SA stays: the traps of removed and changed
        children go, and the routes only they had (the IKE layer deletes their SAs)."""
        for name in kinds["removed"] + kinds["changed"]:
            self.trap.unwatch(trap_key(old.name, name))
        kept = {net for ts in new.remote_ts for net in ts.networks()}
        for ts in old.remote_ts:
            for net in ts.networks():
                if net not in kept:
                    self._routes.append(RouteChange(net, False))

    def reload(self, new: Config, now: float) -> dict[str, Any]:
        """Apply a reloaded config (SIGHUP, ``ipsecctl reload``), validated by the loader.

        Unchanged peers keep their SAs and lose no packet; changed peers are
        re-negotiated (or re-keyed, manual ones); new peers start; removed peers get a
        Delete.  Updated peers (only children differ) keep their IKE SA and unchanged
        children; removed and changed children's CHILD_SAs get a Delete, added and
        changed ones start as configured (``plan["children"]`` names them).  The IKE
        peers' plan is the one :meth:`IkeManager.reconfigure` returns (it also sends the
        Deletes); the manual peers are compared here.  The gateway section (device,
        addresses, ports) needs a restart.
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
        children: dict[str, dict[str, list[str]]] = {}
        if self.ike is not None:
            ike_plan = self.ike.reconfigure(new, now)
            children = ike_plan.pop("children")
            kinds = {n: k for k, names in ike_plan.items() for n in names}
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
        plan: dict[str, Any] = {
            kind: [n for n in order if kinds.get(n) == kind] for kind in PLAN_KINDS
        }
        plan["children"] = children
        self.log.info("reload plan", **plan)
        for name in plan["removed"] + plan["changed"]:
            old = old_peers[name]
            for key in self._trap_keys(name):
                self.trap.unwatch(key)
            if old.manual is not None:
                for static in self.sad.remove_peer(name):
                    self.by_peer.removed(static)
                    self.ledger.retire(static)
            self._route(old, add=False)
        for name in plan["updated"]:
            self._update_children(old_peers[name], new_peers[name], children[name])
        self.config = new
        for name in plan["added"] + plan["changed"]:
            peer = new_peers[name]
            self._route(peer, add=True)
            self._arm(peer, now)
            if peer.manual is None and peer.start == "initiate":
                assert self.ike is not None
                self.ike.initiate(name, now)
        for name in plan["updated"]:
            # The IKE SA stays; the added and changed children it initiates are set up on it.
            peer, kind = new_peers[name], children[name]
            for child_name in kind["added"] + kind["changed"]:
                child = peer.child(child_name)
                if child is not None and child.start == "trap":
                    self._watch(name, child)
            starts = tuple(
                c.name
                for c in peer.children
                if c.name in kind["added"] + kind["changed"] and c.start == "initiate"
            )
            if starts:
                assert self.ike is not None
                self.ike.initiate(name, now, children=starts)
        # Routes of unchanged peers may have been shared with a removed one: put them back.
        for name in plan["unchanged"] + plan["updated"]:
            self._route(new_peers[name], add=True)
        if self.ike is not None:
            self._pump(now)
        self._sas_changed()
        return {"ok": True, "plan": plan, "config": str(new.path)}
