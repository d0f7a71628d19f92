"""``ipsecd demo``: two sites in network namespaces joined by an ipsecd tunnel.

Builds hostA — gwA ══ internet ══ gwB — hostB, writes both gateways' configs
with a freshly generated pre-shared key, starts two daemons (gwA initiates),
pings hostB from hostA through the tunnel, prints ``ipsecctl status`` of both
gateways and tears everything down.  Needs root.
"""

from __future__ import annotations

import os
import sys
import time

from ipsecd.cli.ipsecctl import Style, format_status


def run_demo(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("ipsecd demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    from ipsecd.lab.daemons import site_specs, start_psk_pair
    from ipsecd.lab.topology import HOST_A_IP, HOST_B_IP, Topology

    style = Style(sys.stdout.isatty())
    with Topology() as topo:
        print(f"built namespaces {', '.join(topo.namespaces)} (logs in {topo.workdir})")
        a, b = site_specs(topo)
        gw_a, gw_b = start_psk_pair(topo, a, b)
        print("started ipsecd on gwA (initiator) and gwB (responder); negotiating IKEv2 ...")
        started = time.monotonic()
        try:
            gw_a.wait_up(timeout=20)
        except AssertionError as exc:
            print(style.bad(f"tunnel did not come up: {exc}"), file=sys.stderr)
            return 1
        print(f"tunnel up after {1000 * (time.monotonic() - started):.0f} ms")
        stats = topo.ping(topo.host_a, HOST_B_IP, count=5)
        print(
            f"ping hostA {HOST_A_IP} -> hostB {HOST_B_IP}: {stats.received}/{stats.transmitted}"
            f" received, rtt avg {stats.rtt_avg:.2f} ms"
        )
        for name, daemon in (("gwA", gw_a), ("gwB", gw_b)):
            print(f"\n{style.bold('== ipsecctl status on ' + name + ' ==')}")
            print(format_status(daemon.status(), style))
        if keep:
            print(f"\nrunning; try: ip netns exec {topo.host_a} ping {HOST_B_IP}   (Ctrl-C ends)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        gw_a.stop()
        gw_b.stop()
        print("\ntore down both daemons and all namespaces")
        return 0 if stats.received == stats.transmitted else 1
