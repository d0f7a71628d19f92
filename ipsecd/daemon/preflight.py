"""Start-up checks of the machine a config is about to run on (issue 13).

Two things a valid config cannot tell by itself:

- the routing table: :func:`connected_routes` reads the networks this machine is connected
  to (pyroute2), for :func:`ipsecd.config.warnings.config_warnings` to compare the TUN
  addresses and selectors against;
- IP forwarding: a gateway that does not forward decrypts packets for its LAN and then
  drops them.  :func:`forwarding_findings` checks ``net.ipv4.ip_forward`` (and
  ``net.ipv6.conf.all.forwarding`` when IPv6 selectors are configured) and says exactly
  what to run -- or turns it on when ``gateway.set_forwarding: true`` says so.

``ipsecd check`` prints the findings (it never writes a sysctl); the daemon logs them at
start (:func:`log_findings`, called from :func:`ipsecd.daemon.start.run_daemon`), while it
is still root and before any device exists.  Every read degrades to a note: without
netlink or /proc the checks that need them are skipped, never the start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecd.config.schema import Config
from ipsecd.config.warnings import ConnectedRoute, config_warnings

PROC_SYS = Path("/proc/sys")
SYSCTL_FILE = "/etc/sysctl.d/60-ipsecd.conf"
FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}

RTPROT_KERNEL = 2  # include/uapi/linux/rtnetlink.h: a route the kernel made for an address
RTN_UNICAST = 1
RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class Finding:
    """One line for the operator: ``level`` is ``warning`` or ``info``."""

    level: str
    message: str


# -- routing table ---------------------------------------------------------------------------


def connected_routes() -> list[ConnectedRoute]:
    """The main table's routes the kernel made for addresses on interfaces, with this
    machine's address on each; raises OSError (or pyroute2's NetlinkError) when netlink
    cannot be read."""
    from ipsecd.dataplane.rtnl import dump

    links, addrs, routes = dump()
    names = {link["index"]: link.get("ifname") for link in links}
    addresses = [
        (a["index"], ipaddress.ip_address(a.get("address"))) for a in addrs if a.get("address")
    ]
    found = []
    for route in routes:
        if (route.get_attr("RTA_TABLE") or route["table"]) != RT_TABLE_MAIN:
            continue
        if route["proto"] != RTPROT_KERNEL or route["type"] != RTN_UNICAST:
            continue
        if route.get("gateway") or route.get("dst") is None:
            continue
        network = ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}")
        if network.version == 6 and network.network_address.is_link_local:
            continue  # fe80::/64 on every IPv6 interface
        index = route.get("oif")
        own = route.get("prefsrc")
        address = ipaddress.ip_address(own) if own else None
        if address is None:  # IPv6 routes carry no preferred source: find the address
            address = next((a for i, a in addresses if i == index and a in network), None)
        found.append(ConnectedRoute(network, str(names.get(index, f"if{index}")), address))
    return found


# -- IP forwarding ---------------------------------------------------------------------------


def read_sysctl(name: str) -> str | None:
    """The value of sysctl ``name`` (``net.ipv4.ip_forward``), or None if unreadable."""
    try:
        return (PROC_SYS / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    """Set sysctl ``name``; raises OSError (EROFS under systemd's ProtectKernelTunables)."""
    (PROC_SYS / name.replace(".", "/")).write_text(value + "\n")


def needed_forwarding(config: Config) -> list[str]:
    """The forwarding sysctls this config needs: one per IP version of its selectors."""
    versions = {ts.version for p in config.peers for ts in (*p.local_ts, *p.remote_ts)}
    return [FORWARDING[v] for v in sorted(versions)]


def _how_to_turn_on(names: Sequence[str]) -> str:
    """The one shell line that turns forwarding on now and at every boot."""
    lines = "".join(f"{n} = 1\\n" for n in names)
    return f"turn it on with `printf '{lines}' > {SYSCTL_FILE} && sysctl -p {SYSCTL_FILE}`"


def forwarding_findings(
    config: Config,
    apply: bool,
    read: Callable[[str], str | None] | None = None,
    write: Callable[[str, str], None] | None = None,
) -> list[Finding]:
    """Is IP forwarding on for every IP version the selectors use?  ``apply`` (the daemon
    at start) turns it on when ``gateway.set_forwarding`` is true; ``ipsecd check`` only
    reports.  ``read``/``write`` default to /proc/sys (tests pass fakes)."""
    read = read or read_sysctl
    write = write or write_sysctl
    needed = needed_forwarding(config)
    values = {name: read(name) for name in needed}
    off = [name for name, value in values.items() if value is not None and value != "1"]
    findings = [
        Finding("info", f"cannot read {name}: IP forwarding not checked")
        for name, value in values.items()
        if value is None
    ]
    if not off:
        return findings
    state = ", ".join(f"{name} = {values[name]}" for name in off)
    if not config.gateway.set_forwarding:
        findings.append(
            Finding(
                "warning",
                f"IP forwarding is off ({state}): this gateway drops the packets it should"
                f" pass between its LAN and the tunnel; {_how_to_turn_on(off)}, or set"
                " gateway.set_forwarding: true (which cannot write /proc/sys under systemd's"
                " ProtectKernelTunables=yes, as in ipsecd.service: there only the sysctl.d"
                " file works)",
            )
        )
        return findings
    if not apply:
        findings.append(
            Finding(
                "info",
                f"IP forwarding is off ({state}); ipsecd turns it on at start"
                " (gateway.set_forwarding: true)",
            )
        )
        return findings
    for name in off:
        try:
            write(name, "1")
        except OSError as exc:
            findings.append(
                Finding(
                    "warning",
                    f"gateway.set_forwarding: cannot write {name} ({exc.strerror}; systemd's"
                    " ProtectKernelTunables=yes makes /proc/sys read-only): IP forwarding"
                    f" stays off; {_how_to_turn_on([name])}",
                )
            )
        else:
            findings.append(
                Finding("info", f"IP forwarding turned on: {name} = 1 (gateway.set_forwarding)")
            )
    return findings


# -- all of it -------------------------------------------------------------------------------


def preflight(
    config: Config,
    apply: bool = False,
    routes: Callable[[], list[ConnectedRoute]] | None = None,
    read: Callable[[str], str | None] | None = None,
    write: Callable[[str, str], None] | None = None,
) -> list[Finding]:
    """Config warnings (with the machine's connected routes) and the forwarding check;
    ``routes`` defaults to :func:`connected_routes` (tests pass fakes)."""
    findings = []
    try:
        connected: list[ConnectedRoute] | None = (routes or connected_routes)()
    except (OSError, ImportError) as exc:
        connected = None
        findings.append(
            Finding(
                "info",
                f"routing table not read ({exc}): TUN addresses and selectors were"
                " not compared with the connected networks",
            )
        )
    findings += [Finding("warning", str(w)) for w in config_warnings(config, connected)]
    return findings + forwarding_findings(config, apply, read, write)


def log_findings(config: Config, log: Any) -> None:
    """The daemon's start-up hook: log every finding at its level; set forwarding if asked."""
    for finding in preflight(config, apply=True):
        getattr(log, finding.level)(finding.message)
