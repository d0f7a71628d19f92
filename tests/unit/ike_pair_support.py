"""Two IkeManagers wired together through a tiny in-memory network with a fake clock.

Reusable by any test of the sans-I/O IKE layer (RFC 7296): configs are real
``parse_config`` output (PSK files written with mode 0600), datagrams travel
through :class:`Network`, which can drop them, rewrite the initiator's source
like a NAT (RFC 3948) and records everything it saw, and :class:`IkePair`
drives both managers the way the daemon shell does (drain datagrams, drain
events, call ``handle_timer`` at ``get_timer``).

Side ``a`` (192.0.2.1, 10.1.0.0/24) initiates; side ``b`` (192.0.2.2,
10.2.0.0/24) responds.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ipsecd.config import Config, parse_config
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.ike import events as ev
from ipsecd.ike import message as codec
from ipsecd.ike import payloads as pl
from ipsecd.ike.constants import ExchangeType, PayloadType
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import parse_message
from ipsecd.ike.policy import Resolver
from ipsecd.ike.sa import IkeSa

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
NET_A, NET_B = "10.1.0.0/24", "10.2.0.0/24"
NAT_PUBLIC_IP = "198.51.100.7"
PSK = "0x" + "5a" * 32
START = 1000.0

Address = tuple[str, int]


@dataclass
class Child:
    """One entry of a side's ``children:`` list."""

    name: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    start: str | None = None  # None: the default (initiate; respond for remote_address any)
    esp: tuple[str, ...] | None = None  # None: the side's esp proposals
    close_action: str | None = None  # None: the default (from start)
    mode: str | None = None  # esp.mode; None: the default (tunnel)
    protocol: str | None = None  # esp.protocol; "ah" writes ah_proposals = esp


@dataclass
class Side:
    """What one side's config file says (every field ends up in YAML)."""

    name: str  # the peer name this side uses for the other side
    listen: str
    remote_address: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    start: str
    ike: tuple[str, ...] = ("aes256gcm16-prfsha256-x25519",)
    esp: tuple[str, ...] = ("aes256gcm16",)
    psk: str = PSK
    local_id: str | None = None
    remote_id: str | None = None
    remote_port: int | None = None
    retransmit_timeout: float = 0.5
    retransmit_tries: int = 7
    retry_interval: str = "30s"
    esp_rekey_time: str = "1h"
    ike_rekey_time: str = "4h"
    esp_life_time: str | None = None  # None: the default (rekey_time * 1.1)
    esp_rand_time: str | None = None  # None: the default (rekey_time / 10)
    esp_rekey_bytes: int | None = None
    ike_rand_time: str | None = None
    ike_reauth_time: str | None = None  # peers[].ike.reauth_time (RFC 7296 §2.8.3)
    close_action: str | None = None  # peers[].close_action; None: derived from start
    fragmentation: str | None = None  # peers[].fragmentation (RFC 7383)
    fragment_size: int | None = None  # peers[].fragment_size
    gateway_fragment_size: int | None = None  # gateway.fragment_size
    dpd_delay: str | None = None  # None: the default (30 s)
    dpd_action: str | None = None
    extra_peers: tuple[Side, ...] = ()  # more peers in the same file (their own PSK files)
    cookie_threshold: int | None = None  # gateway DoS settings; None: the default
    half_open_per_source: int | None = None
    half_open_limit: int | None = None
    # More lines of the auth: section (certificates, PPK: see pki_pair_support), written
    # as given; with use_psk False the auth: section has no psk_file.
    auth_lines: tuple[str, ...] = ()
    use_psk: bool = True
    children: tuple[Child, ...] = ()  # written as children: instead of the peer's own keys
    mode: str | None = None  # peers[].esp.mode; None: the default (tunnel)
    protocol: str | None = None  # peers[].esp.protocol; "ah" writes ah_proposals = esp
    encap: str | None = None  # peers[].encap; None: the default (always)

    def yaml(self, psk_file: Path) -> str:
        lines = [
            "gateway:",
            f"  listen: [{self.listen}]",
            f"  retransmit_timeout: {self.retransmit_timeout}",
            f"  retransmit_tries: {self.retransmit_tries}",
            f"  retry_interval: {self.retry_interval}",
        ]
        for key in ("cookie_threshold", "half_open_per_source", "half_open_limit"):
            if getattr(self, key) is not None:
                lines.append(f"  {key}: {getattr(self, key)}")
        if self.gateway_fragment_size is not None:
            lines.append(f"  fragment_size: {self.gateway_fragment_size}")
        lines.append("peers:")
        text = "\n".join(lines) + "\n" + self.peer_yaml(psk_file)
        for n, extra in enumerate(self.extra_peers):
            extra_psk = psk_file.with_name(f"{psk_file.stem}-{n}.psk")
            extra_psk.write_text(extra.psk + "\n")
            os.chmod(extra_psk, 0o600)
            text += extra.peer_yaml(extra_psk)
        return text

    def peer_yaml(self, psk_file: Path) -> str:
        """This side's entry in ``peers:``."""

        def flow(items: tuple[str, ...]) -> str:
            return "[" + ", ".join(items) + "]"

        def esp(
            indent: str,
            proposals: tuple[str, ...],
            mode: str | None = None,
            protocol: str | None = None,
        ) -> list[str]:
            key = "ah_proposals" if protocol == "ah" else "proposals"
            return [
                f"{indent}esp:",
                *([f"{indent}  mode: {mode}"] if mode else []),
                *([f"{indent}  protocol: {protocol}"] if protocol else []),
                f"{indent}  {key}: {flow(proposals)}",
                f"{indent}  rekey_time: {self.esp_rekey_time}",
                *([f"{indent}  life_time: {self.esp_life_time}"] if self.esp_life_time else []),
                *([f"{indent}  rand_time: {self.esp_rand_time}"] if self.esp_rand_time else []),
                *(
                    [f"{indent}  rekey_bytes: {self.esp_rekey_bytes}"]
                    if self.esp_rekey_bytes
                    else []
                ),
            ]

        if self.children:
            child_lines = ["    children:"]
            for c in self.children:
                child_lines += [
                    f"      - name: {c.name}",
                    f"        local_ts: {flow(c.local_ts)}",
                    f"        remote_ts: {flow(c.remote_ts)}",
                    *([f"        start: {c.start}"] if c.start else []),
                    *([f"        close_action: {c.close_action}"] if c.close_action else []),
                    *esp("        ", c.esp or self.esp, c.mode, c.protocol),
                ]
        else:
            child_lines = [
                *([f"    start: {self.start}"] if self.start else []),
                f"    local_ts: {flow(self.local_ts)}",
                f"    remote_ts: {flow(self.remote_ts)}",
                *esp("    ", self.esp, self.mode, self.protocol),
            ]
        lines = [
            f"  - name: {self.name}",
            f"    remote_address: {self.remote_address}",
            *child_lines,
            "    ike:",
            f"      proposals: {flow(self.ike)}",
            f"      rekey_time: {self.ike_rekey_time}",
            *([f"      rand_time: {self.ike_rand_time}"] if self.ike_rand_time else []),
            *([f"      reauth_time: {self.ike_reauth_time}"] if self.ike_reauth_time else []),
            "    auth:",
            *([f"      psk_file: {psk_file}"] if self.use_psk else []),
            *(f"      {line}" for line in self.auth_lines),
        ]
        if self.remote_port is not None:
            lines.insert(2, f"    remote_port: {self.remote_port}")
        if self.encap is not None:
            lines.insert(2, f"    encap: {self.encap}")
        if self.fragmentation is not None:
            lines.insert(2, f"    fragmentation: {self.fragmentation}")
        if self.fragment_size is not None:
            lines.insert(2, f"    fragment_size: {self.fragment_size}")
        if self.dpd_delay is not None:
            lines.insert(2, f"    dpd_delay: {self.dpd_delay}")
        if self.dpd_action is not None:
            lines.insert(2, f"    dpd_action: {self.dpd_action}")
        if self.close_action is not None:
            lines.insert(2, f"    close_action: {self.close_action}")
        if self.local_id is not None:
            lines.append(f"      local_id: '{self.local_id}'")
        if self.remote_id is not None:
            lines.append(f"      remote_id: '{self.remote_id}'")
        return "\n".join(lines) + "\n"


def side_a(**overrides: Any) -> Side:
    """The initiator: 192.0.2.1 with 10.1.0.0/24, peer ``b``."""
    values: dict[str, Any] = dict(
        name="b",
        listen=A_IP,
        remote_address=B_IP,
        local_ts=(NET_A,),
        remote_ts=(NET_B,),
        start="initiate",
    )
    values.update(overrides)
    return Side(**values)


def side_b(**overrides: Any) -> Side:
    """The responder: 192.0.2.2 with 10.2.0.0/24, peer ``a``."""
    values: dict[str, Any] = dict(
        name="a",
        listen=B_IP,
        remote_address=A_IP,
        local_ts=(NET_B,),
        remote_ts=(NET_A,),
        start="respond",
    )
    values.update(overrides)
    return Side(**values)


def behind_nat(tmp_path: Path, a: Side, b: Side, **kwargs: Any) -> IkePair:
    """An :class:`IkePair` whose ``a`` sits behind a NAT (its 500/4500 appear as
    NAT_PUBLIC_IP:40500/40501 to ``b``), started."""
    pair = IkePair(tmp_path, a, b, start=False, **kwargs)
    pair.net.nat = {(A_IP, 500): (NAT_PUBLIC_IP, 40500), (A_IP, 4500): (NAT_PUBLIC_IP, 40501)}
    pair.a.start(pair.now)
    pair.pump()
    return pair


def build_config(side: Side, directory: Path, label: str) -> Config:
    """Write the side's PSK file (mode 0600) and parse its YAML with ``parse_config``."""
    directory.mkdir(parents=True, exist_ok=True)
    psk_file = directory / f"{label}.psk"
    psk_file.write_text(side.psk + "\n")
    os.chmod(psk_file, 0o600)
    return parse_config(side.yaml(psk_file), directory / f"{label}.yaml")


@dataclass
class Sent:
    """One datagram as the network saw it (after NAT rewriting)."""

    at: float
    sender: str  # "a" or "b"
    data: bytes
    src: Address  # as seen by the receiver
    dst: Address  # as addressed by the receiver's side of the network
    marker: bool
    keepalive: bool
    original_src: Address  # before NAT
    delivered: bool = False


@dataclass
class DropFirst:
    """A :attr:`Network.drop` that loses the first datagram ``sender`` sends of IKE
    exchange ``exchange`` (a lost request or answer), kept in :attr:`lost`; clear
    :attr:`lost` to lose the next one."""

    sender: str
    exchange: int
    lost: list[Sent] = field(default_factory=list)

    def __call__(self, sent: Sent) -> bool:
        if sent.sender == self.sender and sent.data[18] == self.exchange and not self.lost:
            self.lost.append(sent)
            return True
        return False


@dataclass
class Network:
    """Delivers datagrams between managers by destination IP.

    ``nat`` maps a private source (ip, port) to the public (ip, port) the other
    side sees; answers to the public address are mapped back.  ``drop`` decides
    per datagram whether it is lost.  Keepalives and ESP-looking data would be
    classified by the shell before IKE; keepalives are recorded, never given to
    ``receive_datagram``.
    """

    nat: dict[Address, Address] = field(default_factory=dict)
    drop: Callable[[Sent], bool] = lambda sent: False
    tamper: Callable[[Sent], bytes] = lambda sent: sent.data
    log: list[Sent] = field(default_factory=list)

    def translate_out(self, src: Address) -> Address:
        return self.nat.get(src, src)

    def translate_in(self, dst: Address) -> Address | None:
        """Public destination -> private; None when no mapping exists (any more)."""
        if dst[0] != NAT_PUBLIC_IP:
            return dst
        for private, public in self.nat.items():
            if public == dst:
                return private
        return None


class DataPlaneModel:
    """What the shell's SA database keeps, driven by the manager's events: inbound SAs by
    SPI, outbound SAs newest first (the one in use at the front)."""

    def __init__(self) -> None:
        self.inbound: dict[int, ev.ChildSaParams] = {}
        self.outbound: list[int] = []  # spi_in of SAs sending, newest first
        self.installed = 0
        self.removed = 0

    def apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChildSaEstablished):
            self.inbound[event.child.spi_in] = event.child
            self.installed += 1
            if event.outbound_active:
                self.outbound.insert(0, event.child.spi_in)
        elif isinstance(event, ev.ChildSaOutboundActivated):
            assert event.spi_in in self.inbound
            self.outbound.insert(0, event.spi_in)
        elif isinstance(event, ev.ChildSaDeleted):
            self.inbound.pop(event.spi_in, None)
            self.outbound = [s for s in self.outbound if s != event.spi_in]
            self.removed += 1

    def sending_spi(self) -> int | None:
        """The outbound SPI packets go out with right now."""
        return self.inbound[self.outbound[0]].spi_out if self.outbound else None


@dataclass
class Cleartext:
    """One IKE message in flight, decrypted."""

    sender: str
    exchange_type: int
    response: bool
    message_id: int
    payloads: list[Any]


class IkePair:
    """Side ``a`` (initiator) and ``b`` (responder) with a shared fake clock."""

    def __init__(
        self,
        tmp_path: Path,
        a: Side | None = None,
        b: Side | None = None,
        *,
        start: bool = True,
        keepalive_interval: float | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        trace: bool = False,
        resolve: Resolver | None = None,
    ) -> None:
        self.now = START
        self.a_side = a or side_a()
        self.b_side = b or side_b()
        self.a_config = build_config(self.a_side, tmp_path / "a", "a")
        self.b_config = build_config(self.b_side, tmp_path / "b", "b")
        kwargs: dict[str, Any] = {}
        if keepalive_interval is not None:
            kwargs["keepalive_interval"] = keepalive_interval
        if random_bytes is not None:
            kwargs["random_bytes"] = random_bytes
        if wall_clock is not None:
            kwargs["wall_clock"] = wall_clock
        if resolve is not None:
            kwargs["resolve"] = resolve
        # trace=True: each side's debug trace lines (ipsecd.ike.trace) with "known" flags.
        self.traces: dict[str, list[tuple[str, bool]]] = {"a": [], "b": []}
        managers = {}
        for side, config in (("a", self.a_config), ("b", self.b_config)):
            if trace:
                lines = self.traces[side]
                kwargs["trace"] = lambda line, _remote, known, lines=lines: lines.append(
                    (line, known)
                )
            managers[side] = IkeManager(config, self.now, **kwargs)
        self.a, self.b = managers["a"], managers["b"]
        self.net = Network()
        self.events: dict[str, list[tuple[float, ev.Event]]] = {"a": [], "b": []}
        self.event_log: list[tuple[str, ev.Event]] = []  # both sides, in order
        self.dataplane = {"a": DataPlaneModel(), "b": DataPlaneModel()}
        # Make-before-break (RFC 7296 §2.8): after every delivery, each side only sends
        # with an SPI the other side already has inbound.
        self.check_make_before_break = False
        self.managers: dict[str, IkeManager] = {"a": self.a, "b": self.b}
        self.addresses = {A_IP: self.a, B_IP: self.b}
        self.cleartext: list[Cleartext] = []  # decoded messages, see record_cleartext()
        if start:
            self.a.start(self.now)
            self.pump()

    # ---- sides ---------------------------------------------------------------

    def mgr(self, side: str) -> IkeManager:
        return self.managers[side]

    def add_manager(self, side: str, address: str, config: Config) -> IkeManager:
        """A third (fourth, ...) daemon on the same network, reachable at ``address``."""
        mgr = IkeManager(config, self.now)
        self.managers[side] = mgr
        self.addresses[address] = mgr
        self.events[side] = []
        return mgr

    def peer_of(self, side: str) -> str:
        return self.a_side.name if side == "a" else self.b_side.name

    def of_type(self, side: str, cls: type[Any]) -> list[Any]:
        return [e for _, e in self.events[side] if isinstance(e, cls)]

    def established(self, side: str) -> list[ev.ChildSaEstablished]:
        return self.of_type(side, ev.ChildSaEstablished)

    def status(self, side: str) -> dict[str, Any]:
        (entry,) = self.mgr(side).status()
        return entry

    def sent_by(self, side: str, *, keepalive: bool | None = None) -> list[Sent]:
        return [
            s
            for s in self.net.log
            if s.sender == side and (keepalive is None or s.keepalive == keepalive)
        ]

    # ---- moving datagrams ----------------------------------------------------

    def _drain_events(self) -> None:
        for side, mgr in self.managers.items():
            while (event := mgr.next_event()) is not None:
                self.events[side].append((self.now, event))
                self.event_log.append((side, event))
                if side in self.dataplane:
                    self.dataplane[side].apply(event)

    def _check_make_before_break(self) -> None:
        if not self.check_make_before_break:
            return
        a, b = self.dataplane["a"], self.dataplane["b"]
        for sender, receiver in ((a, b), (b, a)):
            spi = sender.sending_spi()
            if spi is not None:
                assert spi in receiver.inbound, "ESP would hit an unknown SPI"

    def pump(self, limit: int = 500) -> int:
        """Deliver datagrams (in order of sending) until both sides are quiet."""
        delivered = 0
        for _ in range(limit):
            self._drain_events()
            moved = False
            for side, mgr in list(self.managers.items()):
                for d in mgr.datagrams_to_send():
                    moved = True
                    delivered += self._deliver(side, d)
            if not moved:
                self._drain_events()
                return delivered
        raise AssertionError(f"no quiet state after {limit} rounds")

    def _deliver(self, side: str, d: ev.OutgoingDatagram) -> int:
        # The shell frames: IKE on the NAT-T port gets the non-ESP marker (RFC 3948 §2.2).
        if d.keepalive:
            assert d.keepalive and d.data == b"" and not d.marker
        else:
            assert d.marker == (d.local[1] == 4500), d
        src = self.net.translate_out(d.local)
        sent = Sent(
            self.now, side, d.data, src, d.remote, d.marker, d.keepalive, original_src=d.local
        )
        self.net.log.append(sent)
        if d.keepalive or self.net.drop(sent):
            return 0
        dst = self.net.translate_in(d.remote)
        if dst is None or dst[0] not in self.addresses:
            return 0
        receiver = self.addresses[dst[0]]
        sent.delivered = True
        receiver.receive_datagram(self.net.tamper(sent), dst, src, self.now)
        self._drain_events()
        self._check_make_before_break()
        return 1

    def inject(
        self, side: str, data: bytes, src: Address | None = None, dst: Address | None = None
    ) -> None:
        """Hand ``data`` to ``side`` as if it came from the other side (hostile input)."""
        mgr = self.mgr(side)
        if side == "b":
            src = src or (A_IP, 4500)
            dst = dst or (B_IP, 4500)
        else:
            src = src or (B_IP, 4500)
            dst = dst or (A_IP, 4500)
        mgr.receive_datagram(data, dst, src, self.now)
        self.pump()

    def record_cleartext(self) -> None:
        """Decode every IKE message in flight (with the sender's SA keys) into
        :attr:`cleartext` (:class:`Cleartext`), before delivery."""
        previous = self.net.tamper

        def tap(sent: Sent) -> bytes:
            data = previous(sent)
            header = codec.parse_header(data)
            # Both ends hold the same SK_* keys; whichever still has the SA will do.
            keys = None
            for mgr in self.managers.values():
                for spi in (header.spi_i, header.spi_r):
                    sa = mgr.sas.get(spi)
                    if sa is not None and sa.keys is not None and sa.spi_i == header.spi_i:
                        keys = sa.keys
            if header.exchange_type == ExchangeType.IKE_SA_INIT:
                msg = codec.decode(data)
            elif (
                header.next_payload == PayloadType.SKF
            ):  # an RFC 7383 fragment: opened on reassembly
                msg = codec.parse_message(data)
            elif keys is not None:
                msg = codec.decode(data, keys=keys, sender_is_initiator=header.initiator)
            else:
                msg = codec.parse_message(data)
            self.cleartext.append(
                Cleartext(
                    sent.sender,
                    int(msg.exchange_type),
                    msg.response,
                    msg.message_id,
                    list(msg.payloads),
                )
            )
            return data

        self.net.tamper = tap

    # ---- time ----------------------------------------------------------------

    def next_timer(self) -> float | None:
        timers = [t for m in self.managers.values() if (t := m.get_timer()) is not None]
        return min(timers) if timers else None

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer due on the way."""
        self.run_until(self.now + seconds)

    def run_until(self, end: float, limit: int = 100_000) -> None:
        for _ in range(limit):
            due = self.next_timer()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            for mgr in self.managers.values():
                timer = mgr.get_timer()
                if timer is not None and timer <= self.now:
                    mgr.handle_timer(self.now)
            self.pump()
        else:
            raise AssertionError(f"timers keep firing without progress at {self.now}")
        self.now = end


# ---- the data plane check: do the derived ESP keys work? -------------------------


def ipv4_packet(src: str, dst: str, payload: bytes = b"ping through the tunnel") -> bytes:
    """A minimal IPv4/UDP-less packet (protocol 253, experimental) with a valid checksum."""

    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        253,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    words = struct.unpack("!10H", header)
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    checksum = ~s & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def esp_roundtrip(
    sender: ev.ChildSaParams, receiver: ev.ChildSaParams, inner: bytes
) -> bytes | None:
    """Encapsulate with the sender's outbound keys, decapsulate with the receiver's inbound."""
    out = OutboundEspSa(
        sender.spi_out,
        sender.encr,
        sender.integ,
        sender.encr_key_out,
        sender.integ_key_out,
        esn=sender.esn,
    )
    inbound = InboundEspSa(
        receiver.spi_in,
        receiver.encr,
        receiver.integ,
        receiver.encr_key_in,
        receiver.integ_key_in,
        esn=receiver.esn,
        src_selectors=receiver.remote_ts,
        dst_selectors=receiver.local_ts,
    )
    result = inbound.decapsulate(out.encapsulate(inner, 4))
    if result is None:
        return None
    next_header, packet = result
    assert next_header == 4
    return packet


def messages(pair: IkePair, sender: str, exchange: int | None = None) -> list[Sent]:
    """IKE datagrams (no keepalives) ``sender`` put on the wire, optionally of one exchange."""
    return [
        s
        for s in pair.sent_by(sender, keepalive=False)
        if exchange is None or s.data[18] == exchange
    ]


def ike_sas(pair: IkePair, side: str) -> list[IkeSa]:
    """The live IKE SAs of ``side``."""
    return [sa for sa in pair.mgr(side).sas.values() if sa.alive]


def installed_spis(pair: IkePair, side: str) -> set[int]:
    """Inbound SPIs the data plane would hold, replayed from the events (a restarted
    side's list of events starts empty)."""
    spis: set[int] = set()
    for _, event in pair.events[side]:
        if isinstance(event, ev.ChildSaEstablished):
            spis.add(event.child.spi_in)
        elif isinstance(event, ev.ChildSaDeleted):
            spis.discard(event.spi_in)
    return spis


def assert_one_working_pair(pair: IkePair) -> tuple[IkeSa, IkeSa]:
    """One IKE SA on each side, the same pair, with one CHILD_SA pair whose SPIs match."""
    (a_sa,) = ike_sas(pair, "a")
    (b_sa,) = ike_sas(pair, "b")
    assert (a_sa.spi_i, a_sa.spi_r) == (b_sa.spi_i, b_sa.spi_r)
    (a_spi,) = installed_spis(pair, "a")
    (b_spi,) = installed_spis(pair, "b")
    assert a_sa.children[a_spi].spi_out == b_spi and b_sa.children[b_spi].spi_out == a_spi
    return a_sa, b_sa


def notify_types(data: bytes) -> list[int]:
    """Notify types in the clear part of an (IKE_SA_INIT) message."""
    return [p.notify_type for p in parse_message(data).payloads if isinstance(p, pl.Notify)]
