"""The status document served on the control socket (``ipsecctl status``).

Plain JSON-able dicts: the CLI only formats them.  Never includes keys.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ipsecd.selectors import format_selectors

if TYPE_CHECKING:
    from ipsecd.daemon.app import Daemon
    from ipsecd.dataplane.sad import TunnelSa


def _algorithm(sa: TunnelSa) -> str:
    out = sa.outbound
    name = out.encr.name
    if getattr(out, "integ", None) is not None:
        name += f"-{out.integ.name}"
    if getattr(out, "esn", False):
        name += "-esn"
    return name


def child_status(sa: TunnelSa, now: float) -> dict[str, Any]:
    drops = {str(k): v for k, v in sa.inbound.drops.items() if v}
    return {
        "spi_in": f"{sa.inbound.spi:08x}",
        "spi_out": f"{sa.outbound.spi:08x}",
        "algorithm": _algorithm(sa),
        "local_ts": format_selectors(sa.local_ts),
        "remote_ts": format_selectors(sa.remote_ts),
        "local": f"{sa.local[0]}:{sa.local[1]}",
        "remote": f"{sa.remote[0]}:{sa.remote[1]}",
        "established_seconds": round(now - sa.installed_at, 1),
        "packets_in": sa.inbound.packets,
        "bytes_in": sa.inbound.bytes,
        "packets_out": sa.outbound.packets,
        "bytes_out": sa.outbound.bytes,
        "drops": drops,
    }


def _rekey_in(when: Any, now: float) -> float | None:
    return round(max(0.0, when - now), 1) if isinstance(when, int | float) else None


def build_status(daemon: Daemon) -> dict[str, Any]:
    now = time.monotonic()
    ike_status: dict[str, dict[str, Any]] = {}
    rekey_in: dict[str, float | None] = {}  # by inbound SPI (hex)
    if daemon.ike is not None:
        for entry in daemon.ike.status():
            entry = dict(entry)
            entry["rekey_in_seconds"] = _rekey_in(entry.pop("rekey_at", None), now)
            last_seen = entry.pop("last_seen", None)
            if isinstance(last_seen, int | float):  # DPD: how long the peer has been silent
                entry["last_seen_seconds"] = round(max(0.0, now - last_seen), 1)
            for child in entry.get("children", []):
                rekey_in[child["spi_in"]] = _rekey_in(child.pop("rekey_at", None), now)
            ike_status[entry.get("peer", "")] = entry
    peers = []
    for peer in daemon.config.peers:
        children = [child_status(sa, now) for sa in daemon.sad.for_peer(peer.name)]
        for child in children:
            child["rekey_in_seconds"] = rekey_in.get(child["spi_in"])
        ike = ike_status.get(peer.name)
        if peer.manual is not None:
            state = "manual" if children else "down"
        elif ike is not None:
            state = str(ike.get("state", "unknown"))
        else:
            state = "down"
        peers.append(
            {
                "name": peer.name,
                "mode": "manual" if peer.manual is not None else "ike",
                "state": state,
                "up": bool(children),
                "remote": f"{peer.remote_address}:{peer.remote_port}",
                "local": str(peer.local_address),
                "local_ts": format_selectors(peer.local_ts),
                "remote_ts": format_selectors(peer.remote_ts),
                "ike": ike,
                "children": children,
                "last_error": daemon.last_error.get(peer.name) or (ike or {}).get("last_error"),
            }
        )
        trap_state = daemon.trap.state(peer.name) if hasattr(daemon, "trap") else None
        if trap_state is not None:
            peers[-1]["on_demand"] = {
                "state": trap_state.value,
                "queued": daemon.trap.queued(peer.name),
            }
    drops = {str(k): v for k, v in daemon.processor.drops.items() if v}
    return {
        "tun": daemon.tun.name if daemon.tun else None,
        "mtu": daemon.mtu(),
        "uptime_seconds": round(now - daemon.started_at, 1),
        "listen": [f"{a}:{p}" for a, p in daemon.sockets],
        "peers": peers,
        "drops": drops,
        "counters": dict(daemon.counters),
        "dataplane": dataplane_counters(daemon),
        "ike_counters": dict(getattr(daemon.ike, "counters", {}) or {}),
        "ike_dos": _dos_status(daemon),
    }


def _dos_status(daemon: Daemon) -> dict[str, Any] | None:
    """Half-open IKE SAs and whether COOKIEs are demanded (RFC 7296 §2.6), or None."""
    half_open = getattr(daemon.ike, "half_open", None)
    status = getattr(half_open, "status", None)
    return status(time.monotonic()) if callable(status) else None


def dataplane_counters(daemon: Any) -> dict[str, Any]:
    """How the TUN device and the ESP sockets moved packets (offloads in use, errors)."""
    tun = daemon.tun
    socks = [s for s in daemon.sockets.values() if s.local[1] == daemon.config.gateway.port]
    return {
        "offload": bool(tun is not None and tun.offload),
        "tun_super_segments_read": tun.super_segments if tun else 0,
        "tun_gso_writes": tun.gso_writes if tun else 0,
        "tun_read_errors": tun.read_errors if tun else 0,
        "tun_write_errors": tun.write_errors if tun else 0,
        "udp_gso_sends": sum(s.gso_sends for s in socks),
        "udp_gro_receives": sum(s.gro_receives for s in socks),
        "udp_send_errors": sum(s.send_errors for s in socks),
    }
