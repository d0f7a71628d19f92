"""A rekeyed CHILD_SA keeps opening for a few seconds after its Delete (RFC 7296 §2.8).

The peer may have put packets on the old SA before it switched to the new one (charon's
libipsec sends from a queue), and they can arrive after the Delete exchange: the data
plane keeps the old inbound SA for ``REKEYED_INBOUND_GRACE`` seconds, as strongSwan keeps
its own (``charon.delete_rekeyed_delay``).  It never sends with it again, and an SA that
ends for any other reason goes at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecd.daemon.core import child_sa
from ipsecd.daemon.status import DataplaneStatus
from ipsecd.dataplane.sad import REKEYED_INBOUND_GRACE, InstalledChildSa
from tests.lab.packets import ipv4
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import A_IP, B_IP, side_a, side_b


def b_installed(r: CoreRig, index: int) -> InstalledChildSa:
    """The CHILD_SA as gateway B installed it (its outbound SA seals to A's inbound)."""
    return child_sa("a", r.pair.established("b")[index].child, (B_IP, 4500), r.now)


def from_b(r: CoreRig, sa: InstalledChildSa, payload: bytes) -> bytes:
    """An inner packet B seals with ``sa`` and A receives; the packet."""
    inner = ipv4("10.2.0.5", "10.1.0.7", payload)
    r.core.from_udp([(sa.outbound.encapsulate(inner, 4), (B_IP, 4500))], (A_IP, 4500), r.now)
    r.pump()
    return inner


def packets_in(r: CoreRig) -> int:
    """Gateway A's status: the peer's inbound packets since start."""
    doc = r.core.status(r.now, wall=0.0, tun=None, listen=[], dataplane=DataplaneStatus())
    (peer,) = doc.to_dict()["peers"]
    return int(peer["transfer"]["packets_in"])


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_the_old_inbound_sa_opens_late_packets_for_the_grace_only(
    tmp_path: Path, rekeyer: str
) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (old,) = r.core.sad
    old_b = b_installed(r, 0)
    if rekeyer == "a":
        assert r.core.control("rekey", "b", r.now)["ok"]
    else:
        r.b.rekey("a", r.now)
    r.pump()
    assert len(r.pair.established("b")) == 2
    new_b = b_installed(r, 1)
    # The old SA is deleted for IKE and status (by_peer); only its inbound side is left.
    assert [sa.inbound.spi for sa in r.core.by_peer.of("b")] == [new_b.outbound.spi]
    assert r.core.sad.lookup_inbound(old.inbound.spi) is old
    counted = packets_in(r)
    late = from_b(r, old_b, b"sent on the old SA before B switched")
    assert r.tun[-1] == late
    assert packets_in(r) == counted + 1  # counted with the peer's traffic, not listed
    # A sends with the new SA only.
    r.core.from_tun([ipv4("10.1.0.7", "10.2.0.5", b"reply")], r.now)
    r.pump()
    assert r.esp_sent[-1][0][:4] == new_b.inbound.spi.to_bytes(4, "big")

    r.advance(REKEYED_INBOUND_GRACE - 0.5)
    assert from_b(r, old_b, b"still within the grace") == r.tun[-1]
    counted = packets_in(r)
    r.advance(0.5)  # the grace is over: the old SPI is unknown
    assert r.core.sad.lookup_inbound(old.inbound.spi) is None
    assert packets_in(r) == counted  # its counts stay in the peer's totals
    drops = r.core.processor.drops["unknown_spi"]
    written = len(r.tun)
    from_b(r, old_b, b"too late")
    assert r.core.processor.drops["unknown_spi"] == drops + 1 and len(r.tun) == written
    assert from_b(r, new_b, b"the new SA") == r.tun[-1]


def test_an_sa_deleted_without_a_rekey_goes_at_once(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    (old,) = r.core.sad
    old_b = b_installed(r, 0)
    r.b.terminate("a", r.now)  # B deletes the IKE SA and its CHILD_SA
    r.pump()
    assert r.core.sad.lookup_inbound(old.inbound.spi) is None and len(r.core.sad) == 0
    drops = r.core.processor.drops["unknown_spi"]
    from_b(r, old_b, b"after the Delete")
    assert r.core.processor.drops["unknown_spi"] == drops + 1
