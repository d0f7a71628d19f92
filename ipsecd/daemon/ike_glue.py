"""Wiring between the sans-I/O IKE layer and the data plane.

IKE events install and remove CHILD_SAs in the SA database; IKE datagrams go
out on the socket bound to their local endpoint, with the RFC 3948 non-ESP
marker when they travel on the NAT-T port.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ipsecd.dataplane.sad import TunnelSa
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.ike import events as ev
from ipsecd.selectors import format_selectors

if TYPE_CHECKING:
    from ipsecd.daemon.app import Daemon

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"


def send_datagrams(daemon: Daemon, datagrams: list[Any]) -> None:
    port_natt = daemon.config.gateway.port
    for item in datagrams:
        if isinstance(item, tuple):
            data, local, remote = item[0], item[1], item[2]
            marker = None
        else:
            data, local, remote = item.data, item.local, item.remote
            marker = getattr(item, "marker", None)
        local = (str(local[0]), int(local[1]))
        remote = (str(remote[0]), int(remote[1]))
        sock = daemon.sockets.get(local)
        if sock is None:
            daemon.counters["ike_no_socket"] += 1
            continue
        if marker is None:
            marker = local[1] == port_natt and data != NAT_KEEPALIVE
        sock.send(NON_ESP_MARKER + data if marker else data, remote)


def child_tunnel(daemon: Daemon, peer_name: str, child: Any) -> TunnelSa:
    peer = daemon.config.peer(peer_name)
    inbound = InboundEspSa(
        child.spi_in,
        encr=child.encr,
        integ=child.integ,
        encr_keymat=child.encr_key_in,
        integ_key=child.integ_key_in,
        esn=child.esn,
        src_selectors=tuple(child.remote_ts),
        dst_selectors=tuple(child.local_ts),
    )
    outbound = OutboundEspSa(
        child.spi_out,
        encr=child.encr,
        integ=child.integ,
        encr_keymat=child.encr_key_out,
        integ_key=child.integ_key_out,
        esn=child.esn,
    )
    remote = getattr(child, "remote", None) or (
        str(peer.remote_address),
        daemon.config.gateway.port,
    )
    return TunnelSa(
        peer=peer_name,
        inbound=inbound,
        outbound=outbound,
        local_ts=tuple(child.local_ts),
        remote_ts=tuple(child.remote_ts),
        local=(str(peer.local_address), daemon.config.gateway.port),
        remote=(str(remote[0]), int(remote[1])),
        installed_at=time.monotonic(),
    )


def apply_event(daemon: Daemon, event: Any) -> None:
    log = daemon.log
    if isinstance(event, ev.ChildSaEstablished):
        sa = child_tunnel(daemon, event.peer, event.child)
        outbound = getattr(event, "outbound_active", True)
        daemon.sad.install(sa, outbound=outbound)
        daemon.last_error.pop(event.peer, None)
        daemon.counters["child_sa_installed"] += 1
        log.info(
            "CHILD_SA installed",
            peer=event.peer,
            spi_in=f"{sa.inbound.spi:08x}",
            spi_out=f"{sa.outbound.spi:08x}",
            algorithm=sa.outbound.encr.name
            + (f"-{sa.outbound.integ.name}" if sa.outbound.integ else ""),
            local_ts=format_selectors(sa.local_ts),
            remote_ts=format_selectors(sa.remote_ts),
            remote=f"{sa.remote[0]}:{sa.remote[1]}",
            outbound="active" if outbound else "after the old SA is deleted",
        )
        daemon.notifier.notify(status=daemon._status_line())
        if outbound:
            queued = daemon.trap.installed(event.peer)  # start: trap
            if queued:
                log.info("on-demand queue sent", peer=event.peer, packets=len(queued))
                daemon.send_inner(queued)
            if daemon.config.peer(event.peer).start != "trap":
                daemon.trap.unwatch(event.peer)  # back from dpd_action hold
    elif isinstance(event, ev.ChildSaOutboundActivated):
        # RFC 7296 §2.8: the rekeyed SA is gone; the new one now carries our traffic.
        if daemon.sad.activate_outbound(event.spi_in) is not None:
            log.info("CHILD_SA outbound active", peer=event.peer, spi_in=f"{event.spi_in:08x}")
    elif isinstance(event, ev.ChildSaDeleted):
        if daemon.sad.remove(event.spi_in) is not None:
            log.info(
                "CHILD_SA removed",
                peer=event.peer,
                spi_in=f"{event.spi_in:08x}",
                reason=getattr(event, "reason", ""),
            )
        if not daemon.sad.for_peer(event.peer):
            daemon.trap.down(event.peer)  # the next packet brings it up again
        daemon.notifier.notify(status=daemon._status_line())
    elif isinstance(event, ev.IkeSaDeleted):
        # Its CHILD_SAs came as ChildSaDeleted events first; a new IKE SA of the same peer
        # (reload, restart) may already have installed its own, so nothing else goes here.
        log.info("IKE SA deleted", peer=event.peer, reason=event.reason)
        daemon.trap.failed(event.peer)  # only if still negotiating: drop what waited
        daemon.notifier.notify(status=daemon._status_line())
    elif isinstance(event, ev.IkeSaEstablished):
        log.info("IKE SA established", peer=event.peer, remote=str(event.remote))
    elif isinstance(event, ev.PeerAddressChanged):
        # RFC 7296 §2.23: follow the peer behind a NAT, as learned from authenticated IKE.
        for sa in daemon.sad.for_peer(event.peer):
            sa.remote = (str(event.remote[0]), int(event.remote[1]))
        log.info(
            "peer address changed", peer=event.peer, remote=f"{event.remote[0]}:{event.remote[1]}"
        )
    elif isinstance(event, ev.PeerDead):
        daemon.counters["dead_peers"] += 1
        log.warning("peer is dead", peer=event.peer, dpd_action=event.action)
        if event.action == "hold":
            # RFC 7296 §2.4 / strongSwan dpd_action=trap: down until traffic needs it.
            peer = daemon.config.peer(event.peer)
            daemon.trap.watch(peer.name, peer.local_ts, peer.remote_ts)
    elif isinstance(event, ev.NegotiationFailed):
        daemon.last_error[event.peer] = event.reason
        daemon.counters["negotiation_failed"] += 1
        daemon.trap.failed(event.peer)  # packets that waited for it are dropped (counted)
        log.warning("negotiation failed", peer=event.peer, reason=event.reason)
    else:
        log.debug("IKE event", event=type(event).__name__)


def report_usage(daemon: Daemon, now: float) -> None:
    """Tell the IKE layer how much each CHILD_SA carried (soft/hard limits, RFC 7296 §2.8).

    Called before every IKE timer run; the manager wakes that timer at least every
    ``ipsecd.ike.manager.USAGE_INTERVAL`` seconds while CHILD_SAs exist.
    """
    usage = getattr(daemon.ike, "child_usage", None)
    if usage is None:
        return
    for sa in daemon.sad:
        if daemon.ike is None:
            return
        inbound, outbound = sa.inbound, sa.outbound
        usage(
            sa.peer,
            inbound.spi,
            max(inbound.bytes, outbound.bytes),
            max(inbound.packets, outbound.packets),
            now,
            seq_out=getattr(outbound, "seq", 0),
            packets_in=inbound.packets,  # the peer is alive: no DPD needed (RFC 7296 §2.4)
        )
