"""On-demand tunnels (``start: trap``): the trap queue, the processor's ``no_sa`` hook,
and the daemon glue driven by two real IkeManagers with a fake clock."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest

from ipsecd.daemon import app, ike_glue
from ipsecd.daemon.app import Daemon
from ipsecd.daemon.sdnotify import Notifier
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import SaDatabase
from ipsecd.dataplane.trap import MAX_BYTES, MAX_PACKETS, TrapQueue, TrapState
from ipsecd.esp.counters import DropReason
from ipsecd.esp.sa import InboundEspSa
from ipsecd.selectors import TrafficSelector
from tests.unit.ike_pair_support import A_IP, B_IP, IkePair, side_a, side_b

SITE_A = (TrafficSelector.from_prefix("10.1.0.0/24"),)
SITE_B = (TrafficSelector.from_prefix("10.2.0.0/24"),)
SITE_C = (TrafficSelector.from_prefix("10.3.0.0/24"),)


def packet(src: str, dst: str, size: int = 60, ident: int = 1) -> bytes:
    payload = struct.pack("!I", ident) + bytes(max(0, size - 24))
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident & 0xFFFF,
        0,
        64,
        253,
        0,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    return header + payload


def offer(trap: TrapQueue, pkt: bytes) -> bool:
    src = int.from_bytes(pkt[12:16], "big")
    dst = int.from_bytes(pkt[16:20], "big")
    return trap.offer(pkt, 4, src, dst)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the queue ---------------------------------------------------------------------


def test_first_packet_triggers_once_and_is_queued():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    assert trap.state("b") is TrapState.IDLE
    packets = [packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(5)]
    assert all(offer(trap, p) for p in packets)
    assert trap.take_triggers() == ["b"]
    assert trap.take_triggers() == []  # not again while negotiating
    assert trap.state("b") is TrapState.NEGOTIATING and trap.queued("b") == 5
    assert trap.installed("b") == packets  # in arrival order
    assert trap.state("b") is TrapState.UP and trap.queued("b") == 0
    assert trap.counters == {"trap_triggers": 1, "trap_queued": 5, "trap_queue_sent": 5}


def test_packets_outside_the_selectors_are_not_taken():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    assert not offer(trap, packet("10.1.0.5", "10.3.0.7"))  # other destination
    assert not offer(trap, packet("10.9.0.5", "10.2.0.7"))  # other source
    assert trap.take_triggers() == [] and trap.state("b") is TrapState.IDLE


def test_an_up_peer_does_not_take_packets():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    trap.installed("b")
    assert not offer(trap, packet("10.1.0.5", "10.2.0.7"))  # the processor counts no_sa
    assert trap.take_triggers() == ["b"]


@pytest.mark.parametrize(
    ("size", "fits"), [(100, MAX_PACKETS), (8000, MAX_BYTES // 8000)], ids=["packets", "bytes"]
)
def test_queue_bounds(size, fits):
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    for n in range(fits + 10):
        assert offer(trap, packet("10.1.0.5", "10.2.0.7", size=size, ident=n))
    assert trap.queued("b") == fits
    assert trap.counters["trap_queue_overflow"] == 10
    assert trap.counters["trap_triggers"] == 1
    sent = trap.installed("b")
    assert [struct.unpack_from("!I", p, 20)[0] for p in sent] == list(range(fits))


def test_failed_negotiation_drops_the_queue_and_rearms():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    for n in range(3):
        offer(trap, packet("10.1.0.5", "10.2.0.7", ident=n))
    trap.take_triggers()
    trap.failed("b")
    assert trap.state("b") is TrapState.IDLE and trap.queued("b") == 0
    assert trap.counters["trap_queue_dropped"] == 3
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    assert trap.take_triggers() == ["b"]  # the next packet tries again
    trap.installed("b")
    trap.failed("b")  # a later failure (say, a rekey) does not touch an up peer
    assert trap.state("b") is TrapState.UP


def test_down_rearms_for_the_next_packet():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    trap.take_triggers()
    trap.installed("b")
    trap.down("b")
    assert trap.state("b") is TrapState.IDLE
    assert offer(trap, packet("10.1.0.5", "10.2.0.7"))
    assert trap.take_triggers() == ["b"]


def test_retrigger_after_a_stuck_negotiation():
    clock = Clock()
    trap = TrapQueue(clock=clock, retrigger_after=30.0)
    trap.watch("b", SITE_A, SITE_B)
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    assert trap.take_triggers() == ["b"]
    clock.now += 29
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    assert trap.take_triggers() == []
    clock.now += 2
    offer(trap, packet("10.1.0.5", "10.2.0.7"))
    assert trap.take_triggers() == ["b"] and trap.counters["trap_retriggers"] == 1
    assert trap.queued("b") == 3


def test_two_peers_and_unwatch():
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    trap.watch("c", SITE_A, SITE_C)
    offer(trap, packet("10.1.0.5", "10.3.0.1"))
    offer(trap, packet("10.1.0.5", "10.3.0.2"))
    assert trap.take_triggers() == ["c"] and trap.state("b") is TrapState.IDLE
    trap.unwatch("c")
    assert trap.counters["trap_queue_dropped"] == 2 and trap.state("c") is None
    assert not offer(trap, packet("10.1.0.5", "10.3.0.1"))
    trap.watch("b", SITE_A, SITE_C)  # new selectors (reload), state kept
    assert offer(trap, packet("10.1.0.5", "10.3.0.1"))
    assert trap.take_triggers() == ["b"]


# ---- the processor hook -----------------------------------------------------------


def test_processor_hands_packets_without_sa_to_the_hook():
    sad = SaDatabase()
    processor = PacketProcessor(sad)
    trap = TrapQueue()
    trap.watch("b", SITE_A, SITE_B)
    processor.no_sa = trap.offer
    out = processor.from_tun(
        [packet("10.1.0.5", "10.2.0.7"), packet("10.1.0.5", "10.3.0.7"), b"\x45short"]
    )
    assert out == {}
    assert trap.queued("b") == 1
    assert processor.drops[DropReason.NO_SA] == 1  # the one the trap did not want
    assert processor.drops[DropReason.MALFORMED] == 1
    processor.no_sa = None
    processor.from_tun([packet("10.1.0.5", "10.2.0.7")])
    assert processor.drops[DropReason.NO_SA] == 2


# ---- the daemon glue with two real IKE managers ----------------------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def send_batch(self, datagrams: list[bytes], remote: Any) -> None:
        self.sent += [(d, remote) for d in datagrams]


class TrapRig:
    """gateway A as a real :class:`Daemon` object (no TUN, no sockets opened, no loop) on
    top of the pair's manager ``a``; events go through the real ``ike_glue.apply_event``."""

    def __init__(self, tmp_path: Path, monkeypatch: Any, **b_overrides: Any) -> None:
        self.pair = IkePair(tmp_path, side_a(start="trap"), side_b(**b_overrides), start=False)
        # The shell reads the clock itself; here it is the pair's fake clock.
        monkeypatch.setattr(app.time, "monotonic", lambda: self.pair.now)
        self.daemon = Daemon(self.pair.a_config, Notifier(address=""))
        self.daemon.ike = self.pair.a
        self.daemon._pump_ike = self.pump  # type: ignore[method-assign]
        self.socket = FakeSocket()
        self.daemon.sockets = {(A_IP, 4500): self.socket}  # type: ignore[dict-item]
        for peer in self.pair.a_config.peers:  # what Daemon._open does for trap peers
            if peer.start == "trap":
                self.daemon.trap.watch(peer.name, peer.local_ts, peer.remote_ts)
        self.applied = 0
        self.pair.a.start(self.pair.now)  # start: trap initiates nothing
        self.pump()

    def pump(self) -> None:
        self.pair.pump()
        events = self.pair.events["a"]
        for _, event in events[self.applied :]:
            ike_glue.apply_event(self.daemon, event)
        self.applied = len(events)
        self.pair.pump()

    def from_tun(self, packets: list[bytes]) -> None:
        """What Daemon._on_tun does with a burst."""
        for (local, remote), datagrams in self.daemon.processor.from_tun(packets).items():
            self.daemon.sockets[local].send_batch(datagrams, remote)
        self.daemon._start_on_demand()

    def decrypted_at_b(self) -> list[bytes]:
        """The ESP sent so far, opened with b's inbound keys."""
        (event,) = self.pair.established("b")[-1:]
        child = event.child
        inbound = InboundEspSa(
            child.spi_in,
            child.encr,
            child.integ,
            child.encr_key_in,
            child.integ_key_in,
            src_selectors=child.remote_ts,
            dst_selectors=child.local_ts,
        )
        out = []
        for data, remote in self.socket.sent:
            assert remote == (B_IP, 4500)
            result = inbound.decapsulate(data)
            if result is not None:
                out.append(result[1])
        return out


def test_no_tunnel_until_traffic_then_queued_packets_go_through(tmp_path, monkeypatch):
    rig = TrapRig(tmp_path, monkeypatch)
    assert rig.pair.net.log == []  # nothing sent at start
    assert rig.pair.status("a")["state"] == "down"
    packets = [packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(3)]
    rig.from_tun(packets[:1])  # the first packet starts IKE ...
    assert rig.daemon.trap.state("b") is TrapState.UP  # (the fake network answers at once)
    assert rig.decrypted_at_b() == packets[:1]  # ... and is delivered once the SA is up
    rig.from_tun(packets[1:])  # later packets find the SA directly
    assert rig.decrypted_at_b() == packets
    inits = [s for s in rig.pair.net.log if s.sender == "a" and s.data[18] == 34]
    assert len(inits) == 1
    assert rig.daemon.counters["trap_triggers"] == 1
    assert rig.daemon.counters["trap_queue_sent"] == 1
    assert rig.daemon.processor.drops[DropReason.NO_SA] == 0


def test_packets_while_negotiating_are_queued_and_trigger_once(tmp_path, monkeypatch):
    rig = TrapRig(tmp_path, monkeypatch)
    rig.pair.net.drop = lambda sent: True  # the peer is unreachable for now
    packets = [packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(4)]
    for p in packets:
        rig.from_tun([p])
    assert rig.daemon.trap.state("b") is TrapState.NEGOTIATING
    assert rig.daemon.trap.queued("b") == 4
    inits = [s for s in rig.pair.net.log if s.sender == "a" and s.data[18] == 34]
    assert len(inits) == 1  # one IKE_SA_INIT, not one per packet
    rig.pair.net.drop = lambda sent: False
    rig.pair.advance(0.6)  # the retransmission gets through
    rig.pump()
    assert rig.decrypted_at_b() == packets
    assert rig.pair.status("a")["state"] == "established"


def test_failed_negotiation_drops_queue_and_does_not_retry_by_itself(tmp_path, monkeypatch):
    rig = TrapRig(tmp_path, monkeypatch, psk="0x" + "11" * 32)  # wrong PSK on b
    rig.from_tun([packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(3)])
    assert rig.daemon.trap.state("b") is TrapState.IDLE
    assert rig.daemon.counters["trap_queue_dropped"] == 3
    assert "AUTHENTICATION_FAILED" in rig.daemon.last_error["b"]
    before = len(rig.pair.net.log)
    rig.pair.advance(120)  # an on-demand peer is not retried without traffic
    assert len(rig.pair.net.log) == before
    rig.from_tun([packet("10.1.0.5", "10.2.0.7")])  # the next packet tries again
    assert rig.daemon.counters["trap_triggers"] == 2


def test_tunnel_deleted_by_peer_retriggers_on_next_packet(tmp_path, monkeypatch):
    rig = TrapRig(tmp_path, monkeypatch)
    rig.from_tun([packet("10.1.0.5", "10.2.0.7")])
    assert rig.daemon.trap.state("b") is TrapState.UP
    rig.pair.b.terminate("a", rig.pair.now)  # the peer deletes the IKE SA
    rig.pump()
    assert len(rig.daemon.sad) == 0
    assert rig.daemon.trap.state("b") is TrapState.IDLE
    rig.pair.advance(120)
    rig.pump()
    assert rig.pair.status("a")["state"] == "down"  # not brought back without traffic
    rig.from_tun([packet("10.1.0.5", "10.2.0.7", ident=9)])
    assert rig.daemon.trap.state("b") is TrapState.UP
    assert rig.daemon.counters["trap_triggers"] == 2
    assert rig.decrypted_at_b()[-1] == packet("10.1.0.5", "10.2.0.7", ident=9)


def test_rekey_keeps_the_trap_up(tmp_path, monkeypatch):
    rig = TrapRig(tmp_path, monkeypatch)
    rig.from_tun([packet("10.1.0.5", "10.2.0.7")])
    rig.pair.a.rekey("b", rig.pair.now)
    rig.pump()
    assert len(rig.daemon.sad) == 1 and rig.daemon.trap.state("b") is TrapState.UP
    assert rig.daemon.counters["trap_triggers"] == 1


class FakeTun:
    name = "ipsecfake"

    async def add_route(self, net: Any) -> None:
        pass

    async def remove_route(self, net: Any) -> None:
        pass


def test_reload_arms_and_disarms_traps(tmp_path, monkeypatch):
    import asyncio

    rig = TrapRig(tmp_path, monkeypatch)
    daemon = rig.daemon
    daemon.tun = FakeTun()  # type: ignore[assignment]
    path = daemon.config.path
    text = rig.pair.a_side.yaml(path.with_suffix(".psk"))  # the file the config came from
    assert "start: trap" in text
    path.write_text(text.replace("start: trap", "start: respond"))
    assert asyncio.run(daemon._reload())["plan"]["changed"] == ["b"]
    assert daemon.trap.state("b") is None
    assert not rig.daemon.processor.no_sa(packet("10.1.0.5", "10.2.0.7"), 4, 0x0A010005, 0x0A020007)
    path.write_text(text)
    asyncio.run(daemon._reload())
    assert daemon.trap.state("b") is TrapState.IDLE


def test_ike_sa_without_child_gets_a_new_child_on_traffic(tmp_path, monkeypatch):
    """The peer deleted only the CHILD_SA (an idle timeout, say): the next packet
    creates a new one with CREATE_CHILD_SA on the IKE SA that is still up."""
    rig = TrapRig(tmp_path, monkeypatch)
    rig.from_tun([packet("10.1.0.5", "10.2.0.7")])
    ike_spi = rig.pair.a.ike_sa("b").local_spi
    (b_child,) = rig.pair.b.ike_sa("a").children
    rig.pair.b.delete_child("a", b_child, rig.pair.now)
    rig.pump()
    assert len(rig.daemon.sad) == 0 and rig.daemon.trap.state("b") is TrapState.IDLE
    assert rig.pair.a.ike_sa("b").state.value == "established"
    rig.from_tun([packet("10.1.0.5", "10.2.0.7", ident=7)])
    assert rig.daemon.trap.state("b") is TrapState.UP
    assert rig.pair.a.ike_sa("b").local_spi == ike_spi  # same IKE SA, new CHILD_SA
    assert rig.decrypted_at_b()[-1] == packet("10.1.0.5", "10.2.0.7", ident=7)
    rig.from_tun([packet("10.1.0.5", "10.2.0.7", ident=8)])  # SA there: no new exchange
    assert len(rig.pair.a.ike_sa("b").children) == 1
