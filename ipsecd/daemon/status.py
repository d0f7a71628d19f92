"""The status model: what ``ipsecctl status`` (JSON) and the metrics endpoint show.

Typed, frozen dataclasses built by the daemon core (``DaemonCore.status``);
:meth:`DaemonStatus.to_dict` is the JSON document on the control socket, which
``ipsecctl`` only formats, and :func:`ipsecd.daemon.metrics.render_metrics` reads
the same objects, so the two never disagree.  Never includes keys.

The IKE part of a peer (``PeerStatus.ike``) is the IKE manager's own description
of its IKE SA, with times turned into "seconds from now".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ipsecd.addresses import format_address
from ipsecd.selectors import format_selectors

if TYPE_CHECKING:
    from ipsecd.dataplane.sad import InstalledChildSa
    from ipsecd.dataplane.tun import TunDevice
    from ipsecd.dataplane.udp import UdpSocket


@dataclass(frozen=True)
class ChildStatus:
    """One installed CHILD_SA and what it carried."""

    spi_in: str
    spi_out: str
    algorithm: str
    local_ts: str = ""
    remote_ts: str = ""
    local: str = ""
    remote: str = ""
    established_seconds: float = 0.0
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    rekey_in_seconds: float | None = None
    mode: str = "tunnel"  # tunnel | transport (RFC 4301 §4.1)
    encap: str = "udp"  # udp (RFC 3948) | ip (ESP/AH directly over IP)


@dataclass(frozen=True)
class OnDemandStatus:
    """A ``start: trap`` peer's trap: idle, negotiating or up, and its queued packets."""

    state: str
    queued: int


@dataclass(frozen=True)
class PeerStatus:
    """One configured peer."""

    name: str
    mode: str = "ike"  # ike | manual
    state: str = "down"  # manual | down | the IKE SA's state
    up: bool = False  # at least one CHILD_SA installed
    remote: str = ""
    local: str = ""
    local_ts: str = ""
    remote_ts: str = ""
    ike: dict[str, Any] | None = None
    children: tuple[ChildStatus, ...] = ()
    last_error: str | None = None
    on_demand: OnDemandStatus | None = None

    @property
    def last_seen_seconds(self) -> float | None:
        """Seconds since IKE or ESP last came in from the peer (dead peer detection)."""
        seen = (self.ike or {}).get("last_seen_seconds")
        return float(seen) if seen is not None else None


@dataclass(frozen=True)
class DataplaneStatus:
    """How the TUN device and the ESP sockets moved packets (offloads in use, errors)."""

    offload: bool = False
    tun_super_segments_read: int = 0
    tun_gso_writes: int = 0
    tun_read_errors: int = 0
    tun_write_errors: int = 0
    udp_gso_sends: int = 0
    udp_gro_receives: int = 0
    udp_send_errors: int = 0

    @classmethod
    def of(cls, tun: TunDevice | None, esp_sockets: Sequence[UdpSocket]) -> DataplaneStatus:
        """Read the counters of the TUN device (if open) and of the ESP sockets."""
        return cls(
            offload=bool(tun is not None and tun.offload),
            tun_super_segments_read=tun.super_segments if tun else 0,
            tun_gso_writes=tun.gso_writes if tun else 0,
            tun_read_errors=tun.read_errors if tun else 0,
            tun_write_errors=tun.write_errors if tun else 0,
            udp_gso_sends=sum(s.gso_sends for s in esp_sockets),
            udp_gro_receives=sum(s.gro_receives for s in esp_sockets),
            udp_send_errors=sum(s.send_errors for s in esp_sockets),
        )


@dataclass(frozen=True)
class DaemonStatus:
    """The whole daemon: device, peers and their SAs, drops and counters."""

    tun: str | None = None
    mtu: int | None = None
    uptime_seconds: float | None = None
    listen: tuple[str, ...] = ()
    peers: tuple[PeerStatus, ...] = ()
    drops: dict[str, int] = field(default_factory=dict)  # before or outside any SA
    counters: dict[str, int] = field(default_factory=dict)  # the daemon's events
    dataplane: DataplaneStatus = field(default_factory=DataplaneStatus)
    ike_counters: dict[str, int] = field(default_factory=dict)  # the IKE layer's events
    ike_dos: dict[str, Any] | None = None  # half-open IKE SAs, cookies (RFC 7296 §2.6)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``ipsecctl status --json``."""
        doc = asdict(self)
        doc["listen"] = list(self.listen)
        for peer in doc["peers"]:
            peer["children"] = list(peer["children"])
            if peer["on_demand"] is None:
                del peer["on_demand"]
        doc["peers"] = list(doc["peers"])
        return doc


def _algorithm(sa: InstalledChildSa) -> str:
    return sa.algorithm + ("-esn" if sa.outbound.esn else "")


def child_status(sa: InstalledChildSa, now: float, rekey_in: float | None) -> ChildStatus:
    return ChildStatus(
        spi_in=f"{sa.inbound.spi:08x}",
        spi_out=f"{sa.outbound.spi:08x}",
        algorithm=_algorithm(sa),
        local_ts=format_selectors(sa.local_ts),
        remote_ts=format_selectors(sa.remote_ts),
        local=format_address(sa.local),  # [v6]:port
        remote=format_address(sa.remote),
        established_seconds=round(now - sa.installed_at, 1),
        packets_in=sa.inbound.packets,
        bytes_in=sa.inbound.bytes,
        packets_out=sa.outbound.packets,
        bytes_out=sa.outbound.bytes,
        drops={str(k): v for k, v in sa.inbound.drops.items() if v},
        rekey_in_seconds=rekey_in,
        mode=sa.mode,
        encap="udp" if sa.encap else "ip",
    )
