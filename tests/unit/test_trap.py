"""On-demand tunnels (``start: trap``): the trap queue, the processor's ``no_sa`` hook,
and the daemon core facing a real IKE peer with a fake clock."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest

from ipsecd.config import load_config
from ipsecd.daemon.core import trap_key
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import SaDatabase
from ipsecd.dataplane.trap import MAX_BYTES, MAX_PACKETS, TrapQueue, TrapState
from ipsecd.esp.counters import DropReason
from ipsecd.selectors import TrafficSelector
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import side_a, side_b

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


# ---- the daemon core with a real IKE peer ---------------------------------------------


B = trap_key("b", "b")  # the trap of peer b's one child (the shorthand names it b)


def rig(tmp_path: Path, **b_overrides: Any) -> CoreRig:
    return CoreRig(tmp_path, side_a(start="trap"), side_b(**b_overrides))


def test_no_tunnel_until_traffic_then_queued_packets_go_through(tmp_path):
    r = rig(tmp_path)
    assert r.ike_sent == []  # nothing sent at start
    assert r.status_a()["state"] == "down"
    packets = [packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(3)]
    r.from_tun(packets[:1])  # the first packet starts IKE ...
    assert r.core.trap.state(B) is TrapState.UP  # (the fake network answers at once)
    assert r.decrypted_at_b() == packets[:1]  # ... and is delivered once the SA is up
    r.from_tun(packets[1:])  # later packets find the SA directly
    assert r.decrypted_at_b() == packets
    assert r.inits_sent() == 1
    assert r.core.counters["trap_triggers"] == 1
    assert r.core.counters["trap_queue_sent"] == 1
    assert r.core.processor.drops[DropReason.NO_SA] == 0


def test_packets_while_negotiating_are_queued_and_trigger_once(tmp_path):
    r = rig(tmp_path)
    r.drop = True  # the peer is unreachable for now
    packets = [packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(4)]
    for p in packets:
        r.from_tun([p])
    assert r.core.trap.state(B) is TrapState.NEGOTIATING
    assert r.core.trap.queued(B) == 4
    assert r.inits_sent() == 1  # one IKE_SA_INIT, not one per packet
    r.drop = False
    r.advance(0.6)  # the retransmission gets through
    assert r.decrypted_at_b() == packets
    assert r.status_a()["state"] == "established"


def test_failed_negotiation_drops_queue_and_does_not_retry_by_itself(tmp_path):
    r = rig(tmp_path, psk="0x" + "11" * 32)  # wrong PSK on b
    r.from_tun([packet("10.1.0.5", "10.2.0.7", ident=n) for n in range(3)])
    assert r.core.trap.state(B) is TrapState.IDLE
    assert r.core.counters["trap_queue_dropped"] == 3
    assert "AUTHENTICATION_FAILED" in r.core.last_error["b"]
    before = len(r.ike_sent)
    r.advance(120)  # an on-demand peer is not retried without traffic
    assert len(r.ike_sent) == before
    r.from_tun([packet("10.1.0.5", "10.2.0.7")])  # the next packet tries again
    assert r.core.counters["trap_triggers"] == 2


def test_tunnel_deleted_by_peer_retriggers_on_next_packet(tmp_path):
    r = rig(tmp_path)
    r.from_tun([packet("10.1.0.5", "10.2.0.7")])
    assert r.core.trap.state(B) is TrapState.UP
    r.b.terminate("a", r.now)  # the peer deletes the IKE SA
    r.pump()
    assert len(r.core.sad) == 0
    assert r.core.trap.state(B) is TrapState.IDLE
    r.advance(120)
    assert r.status_a()["state"] == "down"  # not brought back without traffic
    r.from_tun([packet("10.1.0.5", "10.2.0.7", ident=9)])
    assert r.core.trap.state(B) is TrapState.UP
    assert r.core.counters["trap_triggers"] == 2
    assert r.decrypted_at_b()[-1] == packet("10.1.0.5", "10.2.0.7", ident=9)


def test_rekey_keeps_the_trap_up(tmp_path):
    r = rig(tmp_path)
    r.from_tun([packet("10.1.0.5", "10.2.0.7")])
    assert r.core.control("rekey", "b", r.now) == {"ok": True}
    r.pump()
    assert len(r.core.sad) == 1 and r.core.trap.state(B) is TrapState.UP
    assert r.core.counters["trap_triggers"] == 1


def test_reload_arms_and_disarms_traps(tmp_path):
    r = rig(tmp_path)
    core = r.core
    path = core.config.path
    text = r.pair.a_side.yaml(path.with_suffix(".psk"))  # the file the config came from
    assert "start: trap" in text
    path.write_text(text.replace("start: trap", "start: respond"))
    plan = core.reload(load_config(path), r.now)["plan"]
    # start is the child's: the IKE SA stays (there is none yet), the child is replaced.
    assert plan["updated"] == ["b"] and plan["children"]["b"]["changed"] == ["b"]
    assert core.trap.state(B) is None
    assert core.processor.no_sa is not None
    assert not core.processor.no_sa(packet("10.1.0.5", "10.2.0.7"), 4, 0x0A010005, 0x0A020007)
    path.write_text(text)
    core.reload(load_config(path), r.now)
    assert core.trap.state(B) is TrapState.IDLE


def test_ike_sa_without_child_gets_a_new_child_on_traffic(tmp_path):
    """The peer deleted only the CHILD_SA (an idle timeout, say): the next packet
    creates a new one with CREATE_CHILD_SA on the IKE SA that is still up."""
    r = rig(tmp_path)
    r.from_tun([packet("10.1.0.5", "10.2.0.7")])
    ike_spi = r.ike.ike_sa("b").local_spi
    (b_child,) = r.b.ike_sa("a").children
    r.b.delete_child("a", b_child, r.now)
    r.pump()
    assert len(r.core.sad) == 0 and r.core.trap.state(B) is TrapState.IDLE
    assert r.ike.ike_sa("b").state.value == "established"
    r.from_tun([packet("10.1.0.5", "10.2.0.7", ident=7)])
    assert r.core.trap.state(B) is TrapState.UP
    assert r.ike.ike_sa("b").local_spi == ike_spi  # same IKE SA, new CHILD_SA
    assert r.decrypted_at_b()[-1] == packet("10.1.0.5", "10.2.0.7", ident=7)
    r.from_tun([packet("10.1.0.5", "10.2.0.7", ident=8)])  # SA there: no new exchange
    assert len(r.ike.ike_sa("b").children) == 1


def test_overlapping_traps_first_watched_wins_until_it_is_up() -> None:
    """The trap index keeps the loop's order: the first watched of overlapping traps
    takes a packet; once it is up the next one does; down and re-watch file it again."""
    wide = (TrafficSelector.from_prefix("10.2.0.0/16"),)
    q = TrapQueue()
    q.watch("wide", SITE_A, wide)
    q.watch("narrow", SITE_A, SITE_B)
    assert offer(q, packet("10.1.0.5", "10.2.0.9"))
    assert q.take_triggers() == ["wide"]
    q.installed("wide")
    assert offer(q, packet("10.1.0.5", "10.2.0.9"))
    assert q.take_triggers() == ["narrow"]
    assert not offer(q, packet("10.1.0.5", "10.2.9.9"))
    q.watch("wide", SITE_A, (TrafficSelector.from_prefix("10.2.0.0/20"),))  # reload, still up
    assert not offer(q, packet("10.1.0.5", "10.2.9.9"))
    q.down("wide")
    assert offer(q, packet("10.1.0.5", "10.2.9.9"))
    assert q.take_triggers() == ["wide"]
    q.unwatch("wide")
    q.unwatch("narrow")
    assert not offer(q, packet("10.1.0.5", "10.2.0.9"))
    assert not q._index._buckets


def test_with_prefix_lists_one_peers_traps() -> None:
    q = TrapQueue()
    for name in ("b/x", "bb/x", "b/y", "a/x", "c/z"):
        q.watch(name, SITE_A, SITE_B)
    q.watch("b/x", SITE_A, SITE_C)  # re-watched: listed once
    assert q.with_prefix("b/") == ["b/x", "b/y"]
    q.unwatch("b/x")
    assert q.with_prefix("b/") == ["b/y"] and q.with_prefix("d/") == []
