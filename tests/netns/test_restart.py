"""A gateway crashes (SIGKILL) and starts again: the tunnel comes back by itself.

RFC 7296 §2.4.  Nothing is done to the surviving daemon (status reads only):

* the restarted side initiates: its IKE_AUTH carries INITIAL_CONTACT and the
  survivor drops the IKE SA and CHILD_SAs the crashed side forgot;
* the restarted side only responds: the survivor's liveness check (after
  ``dpd_delay`` without traffic) is answered with INVALID_IKE_SPI, a hint on which
  the survivor sets up a new IKE SA with INITIAL_CONTACT beside the old one and
  drops the old one once it is up (``dpd_action: restart``; with ``hold`` the
  liveness check runs out and the first packet brings the tunnel back).

Either way the survivor ends with exactly one IKE SA and one CHILD_SA pair
for the peer, matching the restarted side's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair
from tests.lab.strongswan import Charon, SwanConnection, site_to_site
from tests.lab.topology import HOST_B_IP, Topology
from tests.lab.wait import wait_until

DPD_DELAY = 2
RETRANSMIT = {"retransmit_timeout": 0.25, "retransmit_tries": 3, "retry_interval": 2}
GIVE_UP = 0.25 + 0.5 + 1 + 2  # the last retransmission's wait included
SLACK = 15.0  # handshake, process start-up, a loaded 2-core machine


def _counter(daemon: IpsecdProcess, name: str) -> int:
    return int((daemon.status().get("ike_counters") or {}).get(name, 0))


def _settled(daemon: IpsecdProcess, timeout: float = 10.0) -> dict[str, object]:
    """Wait until the daemon holds one IKE SA and one CHILD_SA for its peer."""

    def settled(peer: dict[str, Any]) -> bool:
        ike = peer.get("ike") or {}
        one_ike = peer.get("ike_sas") == 1 and ike.get("state") == "established"
        return one_ike and len(peer["children"]) == 1

    return wait_until(
        daemon.peer_status,
        timeout,
        what=f"{daemon.spec.name} to settle on one IKE SA and one CHILD_SA",
        until=settled,
        step=0.1,
    )


def _pair(topo: Topology, survivor_dpd: int, restarted: str) -> tuple[IpsecdProcess, ...]:
    a, b = site_specs(topo)
    for spec in (a, b):
        spec.gateway_extra = dict(RETRANSMIT)
        mine = survivor_dpd if spec.name != restarted else DPD_DELAY
        spec.peer_extra = {"dpd_delay": mine, "dpd_action": "restart"}
    gw_a, gw_b = start_psk_pair(topo, a, b)
    gw_a.wait_up()
    gw_b.wait_up()
    assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=10)
    return gw_a, gw_b


def _crash_and_restart(topo: Topology, victim: IpsecdProcess, stale_tun: bool = False) -> float:
    victim.kill()
    tun = f"ipsec{victim.spec.name}"
    # The kernel removes its TUN device and routes with the process...
    wait_until(
        lambda: topo.run(victim.spec.ns, "ip", "-br", "link").stdout,
        5,
        what=f"{tun} to go with the killed daemon",
        until=lambda links: tun not in links,
    )
    if stale_tun:
        # ...but a persistent device of the same name, with the address and a route on
        # it, may be left behind (an operator, an older version): it must not block us.
        ns = victim.spec.ns
        topo.run(ns, "ip", "tuntap", "add", "dev", tun, "mode", "tun")
        topo.run(ns, "ip", "addr", "add", str(victim.spec.tun_address), "dev", tun)
        topo.run(ns, "ip", "link", "set", tun, "up")
        topo.run(ns, "ip", "route", "add", victim.spec.remote_ts[0], "dev", tun)
    started = time.monotonic()
    victim.start()
    return started


def _assert_one_pair(survivor: IpsecdProcess, restarted: IpsecdProcess) -> None:
    mine = _settled(survivor)
    theirs = _settled(restarted)
    (child,) = mine["children"]
    (other,) = theirs["children"]
    assert child["spi_in"] == other["spi_out"] and child["spi_out"] == other["spi_in"]
    assert _counter(survivor, "internal_error") == 0
    assert _counter(restarted, "internal_error") == 0


def test_restarted_initiator_is_taken_back_by_initial_contact(topology: Topology) -> None:
    # The survivor's DPD is slow on purpose: only INITIAL_CONTACT can clean it up in time.
    gw_a, gw_b = _pair(topology, survivor_dpd=60, restarted="a")
    old_spi = gw_b.peer_status()["ike"]["local_spi"]
    started = _crash_and_restart(topology, gw_a, stale_tun=True)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=DPD_DELAY + SLACK), (
        gw_a.log_text()[-4000:],
        gw_b.peer_status(),
    )
    took = time.monotonic() - started
    print(f"restarted initiator: tunnel back {took:.1f} s after the restart")
    _assert_one_pair(gw_b, gw_a)
    assert _counter(gw_b, "initial_contact_deleted") == 1
    assert gw_b.peer_status()["ike"]["local_spi"] != old_spi
    assert _counter(gw_b, "dpd_restart") == 0  # INITIAL_CONTACT did it, not DPD


def test_restarted_responder_is_noticed_by_the_survivor(topology: Topology) -> None:
    gw_a, gw_b = _pair(topology, survivor_dpd=DPD_DELAY, restarted="b")
    old_spi = gw_a.peer_status()["ike"]["local_spi"]
    started = _crash_and_restart(topology, gw_b)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=DPD_DELAY + GIVE_UP + SLACK), (
        gw_a.peer_status(),
        gw_b.log_text()[-4000:],
    )
    took = time.monotonic() - started
    print(f"restarted responder: tunnel back {took:.1f} s after the restart")
    _assert_one_pair(gw_a, gw_b)
    # Normally the restarted side's INVALID_IKE_SPI answer to the liveness check starts the
    # new IKE SA at once; had every such answer been lost, DPD would have run out instead.
    hinted, timed_out = _counter(gw_a, "restart_hints_followed"), _counter(gw_a, "dpd_restart")
    print(f"restart hint followed: {hinted}, DPD ran out: {timed_out}")
    assert hinted + timed_out == 1
    assert _counter(gw_b, "invalid_ike_spi_sent") >= 1  # the hint went out
    assert gw_a.peer_status()["ike"]["local_spi"] != old_spi


def test_dead_peer_on_hold_comes_back_with_traffic(topology: Topology) -> None:
    """``dpd_action: hold``: down after DPD, until a packet for remote_ts arrives."""
    a, b = site_specs(topology)
    for spec in (a, b):
        spec.gateway_extra = dict(RETRANSMIT)
    a.peer_extra = {"dpd_delay": DPD_DELAY, "dpd_action": "hold"}
    b.peer_extra = {"dpd_delay": 60}
    gw_a, gw_b = start_psk_pair(topology, a, b)
    gw_a.wait_up()
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=10)
    _crash_and_restart(topology, gw_b)
    wait_until(
        lambda: _counter(gw_a, "dpd_hold"),
        DPD_DELAY + GIVE_UP + SLACK,
        what="gwA's liveness check to run out (dpd_hold)",
        step=0.1,
        context=gw_a.status,
    )
    assert _counter(gw_a, "dpd_hold") == 1, gw_a.status()
    time.sleep(1.0)  # an observation window, not a wait: nothing is initiated without traffic
    peer = gw_a.peer_status()
    assert peer["state"] == "held" and not peer["up"], peer
    assert peer["ike_sas"] == 0 and peer["ike"] is None
    assert gw_a.status()["counters"]["trap_triggers"] == 0
    # The first packet towards site B finds no CHILD_SA, waits in the trap queue and
    # brings the tunnel back (the trap path of start: trap).
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=SLACK), gw_a.peer_status()
    assert gw_a.status()["counters"]["trap_triggers"] == 1
    assert gw_a.status()["counters"]["dead_peers"] == 1
    _assert_one_pair(gw_a, gw_b)
    # Back up, the trap is disarmed again: a later Delete would not re-trigger on traffic.
    assert gw_a.peer_status().get("on_demand") is None, gw_a.peer_status()


# ---- with strongSwan ------------------------------------------------------------------------

PSK = "restart-test-psk-0123456789abcdef"
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes128gcm16"


def _kill_charon(charon: Charon) -> None:
    assert charon.proc is not None
    os.killpg(charon.proc.pid, signal.SIGKILL)
    charon.proc.wait(10)


def _charon_settled(charon: Charon, timeout: float = 10.0) -> dict[str, object]:
    """Wait until charon holds exactly one IKE SA with one installed CHILD_SA."""
    _, kids, _ = wait_until(
        lambda: (charon.list_sas(), charon.child_sas(), charon.child_sas(None)),
        timeout,
        what="charon to settle on one IKE SA with one installed CHILD_SA",
        until=lambda seen: [len(x) for x in seen] == [1, 1, 1],
        step=0.1,
        context=charon.tail,
    )
    return kids[0]


def _ipsecd_and_charon(
    topo: Topology, ipsecd_initiates: bool, swan_dpd: int | None = None
) -> tuple[IpsecdProcess, Charon, SwanConnection]:
    """ipsecd on gwA, charon on gwB; one of them initiates."""
    _, conn_b = site_to_site(
        topo,
        psk=PSK,
        ike_proposals=IKE,
        esp_proposals=ESP,
        start_action="none" if ipsecd_initiates else "start",
        dpd_delay=swan_dpd,
        dpd_action="restart" if swan_dpd else None,
    )
    a, b = site_specs(topo)
    a.ike_proposals, a.esp_proposals = [IKE], [ESP]
    a.gateway_extra = dict(RETRANSMIT)
    a.start = "initiate" if ipsecd_initiates else "respond"
    # The survivor's DPD is slow: only the mechanism under test can repair it in time.
    a.peer_extra = {"dpd_delay": DPD_DELAY if ipsecd_initiates else 60}
    gw_a, _ = start_psk_pair(topo, a, b, psk_a=PSK, start=False)
    charon = Charon(topo, topo.gw_b).start()
    charon.load(conn_b)
    gw_a.start()
    gw_a.wait_up(timeout=20)
    charon.wait_for_child_sa()
    assert topo.wait_ping(topo.host_a, HOST_B_IP, timeout=10)
    return gw_a, charon, conn_b


def _matches(ipsecd_child: dict[str, object], swan_child: dict[str, object]) -> None:
    assert int(str(swan_child["spi-in"]), 16) == int(str(ipsecd_child["spi_out"]), 16)
    assert int(str(swan_child["spi-out"]), 16) == int(str(ipsecd_child["spi_in"]), 16)


def _restart_charon(topology: Topology, charon: Charon, conn: SwanConnection) -> Charon:
    """kill -9 charon and start a fresh one (new state directory) with ``conn`` loaded."""
    _kill_charon(charon)
    restarted = Charon(topology, topology.gw_b, directory=charon.dir.with_name("charon-b2"))
    restarted.start()
    restarted.load(conn)
    return restarted


@pytest.mark.strongswan
def test_restarted_ipsecd_initiator_clears_strongswan(topology: Topology) -> None:
    """Our INITIAL_CONTACT makes charon drop the IKE SA we forgot."""
    gw_a, charon, _ = _ipsecd_and_charon(topology, ipsecd_initiates=True)
    try:
        old = charon.list_sas()[0]
        gw_a.kill()
        gw_a.start()
        assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=DPD_DELAY + SLACK)
        (mine,) = _settled(gw_a)["children"]
        theirs = _charon_settled(charon)
        _matches(mine, theirs)
        assert charon.list_sas()[0].get("initiator-spi") != old.get("initiator-spi")
    finally:
        charon.stop()


@pytest.mark.strongswan
def test_restarted_strongswan_initiator_clears_ipsecd(topology: Topology) -> None:
    """charon's INITIAL_CONTACT makes ipsecd drop the IKE SA charon forgot."""
    gw_a, charon, conn_b = _ipsecd_and_charon(topology, ipsecd_initiates=False)
    try:
        charon = _restart_charon(topology, charon, conn_b)  # start_action = start: initiates
        assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=SLACK)
        (mine,) = _settled(gw_a)["children"]
        _matches(mine, _charon_settled(charon))
        assert _counter(gw_a, "initial_contact_deleted") == 1
    finally:
        charon.stop()


@pytest.mark.strongswan
def test_restarted_ipsecd_responder_is_found_by_strongswan_dpd(topology: Topology) -> None:
    """charon's liveness check meets our INVALID_IKE_SPI, then its dpd_action restart."""
    gw_a, charon, _ = _ipsecd_and_charon(topology, ipsecd_initiates=False, swan_dpd=DPD_DELAY)
    try:
        gw_a.kill()
        gw_a.start()
        # charon: 2 s idle, then 1 + 1.4 + 1.96 + 2.74 s of retransmissions, then restart.
        assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=DPD_DELAY + 8 + SLACK)
        (mine,) = _settled(gw_a)["children"]
        _matches(mine, _charon_settled(charon))
        assert _counter(gw_a, "invalid_ike_spi_sent") >= 1
    finally:
        charon.stop()


@pytest.mark.strongswan
def test_restarted_strongswan_responder_is_noticed_by_ipsecd(topology: Topology) -> None:
    """Our liveness check reaches a restarted charon; we set up a new IKE SA."""
    gw_a, charon, conn_b = _ipsecd_and_charon(topology, ipsecd_initiates=True)
    try:
        charon = _restart_charon(topology, charon, conn_b)  # start_action = none: responds
        assert topology.wait_ping(
            topology.host_a, HOST_B_IP, timeout=DPD_DELAY + GIVE_UP + SLACK
        ), gw_a.peer_status()
        (mine,) = _settled(gw_a)["children"]
        _matches(mine, _charon_settled(charon))
        hinted = _counter(gw_a, "restart_hints_followed")
        timed_out = _counter(gw_a, "dpd_restart")
        print(f"charon restarted: hint followed {hinted}, DPD ran out {timed_out}")
        assert hinted + timed_out == 1
    finally:
        charon.stop()


# ---- both ends initiate at once -------------------------------------------------------------


def _crossing(
    topo: Topology, start: list[Callable[[], object]], retransmitting: Callable[[], bool]
) -> None:
    """Start the initiators with the link down; once ``retransmitting()`` says both
    IKE_SA_INITs are out and being retransmitted, bring the link up so they cross."""
    topo.set_loss(100)
    for begin in start:
        begin()
    wait_until(retransmitting, 10, what="both initiators retransmitting their IKE_SA_INIT")
    topo.set_loss(0)


def test_crossing_initiations_leave_one_ike_sa(topology: Topology) -> None:
    a, b = site_specs(topology)
    for spec in (a, b):
        spec.gateway_extra = {"retransmit_timeout": 1.0, "retransmit_tries": 3}
        spec.start = "initiate"
    gw_a, gw_b = start_psk_pair(topology, a, b, start=False)
    _crossing(
        topology,
        [gw_a.start, gw_b.start],
        lambda: _counter(gw_a, "retransmits") > 0 and _counter(gw_b, "retransmits") > 0,
    )
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=SLACK)
    _assert_one_pair(gw_a, gw_b)
    assert _counter(gw_a, "duplicate_ike_sa_deleted") == 1
    assert _counter(gw_b, "duplicate_ike_sa_deleted") == 1


@pytest.mark.strongswan
def test_crossing_initiations_with_strongswan_leave_one_ike_sa(topology: Topology) -> None:
    _, conn_b = site_to_site(
        topology, psk=PSK, ike_proposals=IKE, esp_proposals=ESP, start_action="start"
    )
    a, b = site_specs(topology)
    a.ike_proposals, a.esp_proposals = [IKE], [ESP]
    a.gateway_extra = {"retransmit_timeout": 1.0, "retransmit_tries": 3}
    gw_a, _ = start_psk_pair(topology, a, b, psk_a=PSK, start=False)
    charon = Charon(topology, topology.gw_b, retransmit_tries=5).start()
    charon_log = charon.log.read_text
    try:
        _crossing(
            topology,
            [lambda: charon.load(conn_b), gw_a.start],
            lambda: _counter(gw_a, "retransmits") > 0 and "retransmit 1 of" in charon_log(),
        )
        assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=SLACK)
        (mine,) = _settled(gw_a)["children"]
        _matches(mine, _charon_settled(charon))
        print("duplicates deleted by ipsecd:", _counter(gw_a, "duplicate_ike_sa_deleted"))
    finally:
        charon.stop()
