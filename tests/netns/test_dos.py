"""DoS resistance of the IKE responder in namespaces (RFC 7296 §2.6), and cookies with charon.

The flood tests send thousands of IKE_SA_INIT requests from forged addresses in
203.0.113.0/24 (``tests/netns/ike_flood.py``, a raw socket in gwA's namespace) at the
ipsecd responder on gwB for about 10 s while a legitimate peer connects.  gwB has a
blackhole route for 203.0.113.0/24, so its answers to the forged sources stay in its
namespace.  Asserted: cookies switched on (counters), the legitimate peer's tunnel comes
up and passes ping, and the responder's resident memory grows by less than
:data:`RSS_BOUND_KB`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lab.daemons import REPO, IpsecdProcess, site_specs, start_psk_pair
from tests.lab.strongswan import Charon, site_to_site
from tests.lab.topology import (
    GW_A_WAN_IP,
    GW_B_WAN_IP,
    HOST_B_IP,
    Topology,
    process_cpu_seconds,
)
from tests.lab.wait import wait_until

FLOOD = Path(__file__).resolve().parent / "ike_flood.py"
FORGED = "203.0.113.0/24"
FLOOD_RATE = 500  # requests per second
FLOOD_SECONDS = 10
RSS_BOUND_KB = 30 * 1024  # the responder may grow by at most 30 MB during the flood
PSK = "dos-test-psk-0123456789abcdef"
DOS_SETTINGS = {"cookie_threshold": 10, "half_open_per_source": 5, "half_open_limit": 1000}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _flood(topo: Topology, source: str = FORGED, rate: float = FLOOD_RATE, seconds: float = 10):
    """Start the flooder in gwA's namespace (returns the process; it ends by itself)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(FLOOD), "--target", GW_B_WAN_IP, "--sources", source]
    cmd += ["--rate", str(rate), "--seconds", str(seconds)]
    return topo.spawn(topo.gw_a, cmd, log_path=topo.log_path("flood.log"), env=env)


def _responder(topo: Topology, **gateway: Any) -> tuple[IpsecdProcess, IpsecdProcess]:
    """gwA (initiator, not started) and gwB (responder, running) with the DoS settings."""
    a, b = site_specs(topo)
    b.gateway_extra = {**DOS_SETTINGS, **gateway}
    gw_a, gw_b = start_psk_pair(topo, a, b, psk_a=PSK, psk_b=PSK, start=False)
    topo.run(topo.gw_b, "ip", "route", "add", "blackhole", FORGED)
    gw_b.start()
    return gw_a, gw_b


class _Watch:
    """Samples the responder's RSS and DoS status while the flood runs."""

    def __init__(self, daemon: IpsecdProcess) -> None:
        assert daemon.proc is not None
        self.daemon = daemon
        self.pid = daemon.proc.pid
        assert Path(f"/proc/{self.pid}/comm").read_text().startswith("python")
        self.base = _rss_kb(self.pid)
        self.cpu_start = process_cpu_seconds(self.pid)
        self.peak = self.base
        self.half_open_peak = 0
        self.cookies_seen_on = False

    def cpu(self) -> float:
        """CPU seconds the responder used since the watch started."""
        return process_cpu_seconds(self.pid) - self.cpu_start

    def sample(self) -> dict[str, Any]:
        """Take one sample; returns the responder's DoS status."""
        self.peak = max(self.peak, _rss_kb(self.pid))
        dos = self.daemon.status().get("ike_dos") or {}
        self.half_open_peak = max(self.half_open_peak, int(dos.get("half_open", 0)))
        self.cookies_seen_on |= bool(dos.get("cookies_required"))
        return dos

    def until_cookies(self, timeout: float = 20.0) -> None:
        """Sample until the responder demands cookies (the flood has taken hold)."""
        wait_until(
            self.sample,
            timeout,
            what="the responder to demand cookies",
            until=lambda dos: dos.get("cookies_required"),
            step=0.2,
        )

    def until(self, proc: Any, timeout: float) -> None:
        """Sample until the flooder ``proc`` ends; it must end well."""

        def sampled_exit() -> int | None:
            self.sample()
            return proc.poll()

        returncode = wait_until(
            sampled_exit,
            timeout,
            what="the flooder to finish",
            until=lambda code: code is not None,
            step=0.2,
        )
        assert returncode == 0, returncode


def _assert_flood_handled(topo: Topology, gw_b: IpsecdProcess, watch: _Watch) -> None:
    counters = gw_b.status()["ike_counters"]
    assert watch.cookies_seen_on, counters
    assert counters.get("cookies_sent", 0) >= 1000, counters  # of 5000 forged requests
    assert counters.get("cookies_valid", 0) >= 1, counters  # the real peer had to use one
    # Cookies on at 10 half-open SAs: only the real peer gets past them.
    assert watch.half_open_peak <= DOS_SETTINGS["cookie_threshold"] + 1, watch.half_open_peak
    grown = watch.peak - watch.base
    print(
        f"responder RSS {watch.base} kB -> peak {watch.peak} kB (+{grown} kB),"
        f" {watch.cpu():.1f} s CPU; {counters}"
    )
    assert grown < RSS_BOUND_KB, (watch.base, watch.peak)
    stats = topo.ping(topo.host_a, HOST_B_IP, count=10)
    assert stats.loss == 0.0, stats


@pytest.mark.timing  # a paced flood, and the responder's memory and CPU under it
def test_flood_with_forged_sources_while_ipsecd_connects(topology: Topology) -> None:
    gw_a, gw_b = _responder(topology)
    watch = _Watch(gw_b)
    flood = _flood(topology, seconds=FLOOD_SECONDS)
    watch.until_cookies()  # the real peer comes once the flood has switched cookies on
    gw_a.start()
    gw_a.wait_up(timeout=40)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=20)
    watch.until(flood, timeout=FLOOD_SECONDS + 40)
    _assert_flood_handled(topology, gw_b, watch)
    assert gw_a.status()["ike_counters"].get("cookies_received", 0) >= 1


@pytest.mark.strongswan
@pytest.mark.timing  # a paced flood, and the responder's memory and CPU under it
def test_flood_with_forged_sources_while_strongswan_connects(topology: Topology) -> None:
    _, gw_b = _responder(topology)
    conn_a, _ = site_to_site(topology, psk=PSK, esp_proposals="aes256gcm16")
    charon = Charon(topology, topology.gw_a).start()
    charon.load(conn_a)
    watch = _Watch(gw_b)
    flood = _flood(topology, seconds=FLOOD_SECONDS)
    watch.until_cookies()
    charon.initiate(timeout=30)
    charon.wait_for_child_sa()
    gw_b.wait_up(timeout=20)
    assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=20)
    watch.until(flood, timeout=FLOOD_SECONDS + 40)
    _assert_flood_handled(topology, gw_b, watch)


# -- cookies with strongSwan, both ways ---------------------------------------------------------


@pytest.mark.strongswan
def test_ipsecd_demands_cookies_from_strongswan(topology: Topology) -> None:
    _, gw_b = _responder(topology, cookie_threshold=0)  # always demand a COOKIE
    conn_a, _ = site_to_site(topology, psk=PSK, esp_proposals="aes256gcm16")
    charon = Charon(topology, topology.gw_a).start()
    charon.load(conn_a)
    charon.initiate(timeout=20)
    charon.wait_for_child_sa()
    gw_b.wait_up()
    counters = gw_b.status()["ike_counters"]
    assert counters.get("cookies_sent", 0) >= 1 and counters.get("cookies_valid", 0) >= 1
    assert counters["cookies_invalid"] == 0, counters
    stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0, stats


@pytest.mark.strongswan
def test_strongswan_demands_cookies_from_ipsecd(topology: Topology) -> None:
    """charon with ``cookie_threshold = 1`` and one half-open IKE SA demands a COOKIE."""
    a, _ = site_specs(topology)
    _, conn_b = site_to_site(topology, psk=PSK, esp_proposals="aes256gcm16")
    charon = Charon(topology, topology.gw_b)
    conf = charon.conf_path.read_text()
    assert conf.startswith("charon {\n")
    charon.conf_path.write_text(conf.replace("charon {\n", "charon {\n  cookie_threshold = 1\n", 1))
    charon.start()
    charon.load(conn_b)
    # One half-open IKE SA at charon: a request "from gwA" with another SPI (charon answers
    # gwA, where nobody waits for it, and keeps the SA half-open for 30 s).
    opener = _flood(topology, source=f"{GW_A_WAN_IP}/32", rate=1, seconds=1)
    assert opener.wait(timeout=20) == 0
    wait_until(charon.list_sas, 10, what="a half-open IKE SA at charon", context=charon.tail)
    ours, _ = start_psk_pair(topology, a, site_specs(topology)[1], psk_a=PSK, start=False)
    ours.start()
    ours.wait_up(timeout=30)
    charon.wait_for_child_sa()
    assert ours.status()["ike_counters"].get("cookies_received", 0) >= 1
    stats = topology.ping(topology.host_a, HOST_B_IP, count=5)
    assert stats.loss == 0.0, stats


@pytest.mark.timing  # a paced flood, and the responder's memory and CPU under it
def test_flood_without_cookies_stops_at_the_half_open_limit(topology: Topology) -> None:
    """Cookies effectively off: the global limit alone bounds the half-open state."""
    limit = 500
    _, gw_b = _responder(topology, cookie_threshold=1_000_000, half_open_limit=limit)
    watch = _Watch(gw_b)
    flood = _flood(topology, seconds=6)  # 3000 requests from 254 addresses (5 each at most)
    watch.until(flood, timeout=60)
    counters = gw_b.status()["ike_counters"]
    print(f"responder RSS {watch.base} -> {watch.peak} kB, {watch.cpu():.1f} s CPU; {counters}")
    assert watch.half_open_peak == limit, (watch.half_open_peak, counters)
    assert counters.get("half_open_dropped", 0) >= 1000, counters
    assert counters["cookies_sent"] == 0, counters
    assert watch.peak - watch.base < RSS_BOUND_KB, (watch.base, watch.peak)
