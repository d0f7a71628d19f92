"""Warnings: a valid config that can still break traffic.

An error stops a config; a warning does not.  ``ipsecd check`` prints warnings (and still
exits 0), the daemon logs them at start at warning level.  Each says which key, what goes
wrong and what to write instead.  What is checked:

- a TUN address with a prefix (``gateway.addresses: [10.1.0.1/24]``) gives the device a
  connected route; over ``local_ts`` -- the site behind this gateway -- or over a network
  another interface is connected to, it takes that network's traffic into the tunnel
  (all of it when the LAN interface comes up after ipsecd, issue 13);
- a TUN address outside every ``local_ts``: the gateway's own traffic into the tunnel
  leaves from it, and no SA covers it (``no_sa`` drops);
- ``remote_ts`` over a peer's own address: ipsecd routes ``remote_ts`` into the tunnel, so
  IKE and ESP to that peer would be routed into the tunnel too (not for a transport-mode
  peer, whose route leaves ipsecd's own packets out: ``gateway.fwmark``);
- ``remote_ts`` over a network this machine is connected to (with the gateway's own LAN
  address), as specific as that network's route or more: the tunnel takes it over;
- ``local_ts`` over one of ``gateway.listen``: a peer that routes its ``remote_ts`` into
  its tunnel, as ipsecd does, sends IKE and ESP for this gateway into the tunnel (again
  not in transport mode, where that is the point).

The routing-table checks need the machine's connected routes (:class:`ConnectedRoute`),
which the caller reads (:func:`ipsecd.daemon.preflight.connected_routes`) and passes in:
this module does no I/O, and ``routes=None`` (not readable) skips those checks.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ipsecd.config.errors import format_problem
from ipsecd.config.schema import ChildConfig, Config, IpAddress, PeerConfig
from ipsecd.selectors import TrafficSelector

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ConnectedRoute:
    """A network this machine is directly connected to: the kernel's route for an address
    with a prefix on ``interface`` (``proto kernel``), and that ``address``."""

    network: IpNetwork
    interface: str
    address: IpAddress | None = None


@dataclass(frozen=True)
class ConfigWarning:
    """A problem in a valid config: ``FILE:LINE: key.path: message``, as a ConfigError."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        return format_problem(self.file, self.line, self.key, self.message)


def config_warnings(
    config: Config, routes: Sequence[ConnectedRoute] | None = None
) -> list[ConfigWarning]:
    """Everything in ``config`` that can break traffic; ``routes`` are the machine's
    connected routes (``None``: unknown, the checks against them are skipped)."""
    others = [r for r in routes or () if r.interface != config.gateway.tun]
    found = [
        *_tun_address_warnings(config, others),
        *_remote_ts_warnings(config, others),
        *_local_ts_warnings(config),
    ]
    return [
        ConfigWarning(str(config.path), config.key_lines.get(key), key, message)
        for key, message in found
    ]


def _selectors_of(
    config: Config, n: int, peer: PeerConfig, side: str
) -> Iterator[tuple[str, TrafficSelector, ChildConfig]]:
    """Each ``local_ts`` or ``remote_ts`` (``side``) selector of peer ``n``, with its key
    path (in its child of a ``children:`` list, or on the peer: the shorthand) and child."""
    listed = f"peers[{n}].children" in config.key_lines
    for k, child in enumerate(peer.children):
        base = f"peers[{n}].children[{k}]" if listed else f"peers[{n}]"
        selectors: tuple[TrafficSelector, ...] = getattr(child, side)
        for i, ts in enumerate(selectors):
            yield f"{base}.{side}[{i}]", ts, child


def _selector_networks(selectors: Sequence[TrafficSelector]) -> Iterator[IpNetwork]:
    for ts in selectors:
        yield from ts.networks()


def _overlaps(a: IpNetwork, b: IpNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _on(route: ConnectedRoute) -> str:
    own = f", this gateway's address {route.address}" if route.address is not None else ""
    return f"{route.network} on {route.interface} (connected{own})"


def _tun_address_warnings(
    config: Config, routes: Sequence[ConnectedRoute]
) -> Iterator[tuple[str, str]]:
    gw = config.gateway
    for i, iface in enumerate(gw.addresses):
        key = f"gateway.addresses[{i}]"
        host = f"{iface.ip}/{iface.max_prefixlen}"
        if iface.network.prefixlen < iface.max_prefixlen:
            taken = [
                f"local_ts {net} of peer {peer.name!r}"
                for peer in config.peers
                for net in _selector_networks(peer.local_ts)
                if _overlaps(iface.network, net)
            ]
            taken += [_on(r) for r in routes if _overlaps(iface.network, r.network)]
            if taken:
                yield (
                    key,
                    (
                        f"{iface} gives the TUN device a route to {iface.network}, which overlaps "
                        + "; ".join(dict.fromkeys(taken))
                        + ": traffic for that network can go into the tunnel instead (all of it"
                        " when the LAN interface comes up after ipsecd).  Write "
                        + host
                        + " (the gateway's LAN address, no route) or leave the address out"
                    ),
                )
        outside = [
            peer.name
            for peer in config.peers
            if any(ts.version == iface.version for ts in peer.remote_ts)
            and not any(ts.contains_address(iface.version, int(iface.ip)) for ts in peer.local_ts)
        ]
        if outside:
            names = ", ".join(repr(n) for n in outside)
            yield (
                key,
                (
                    f"{iface.ip} is in no local_ts of peer {names}: the gateway's own traffic"
                    " into the tunnel leaves from this address and no SA covers it (dropped as"
                    " no_sa).  Use the gateway's LAN address inside local_ts, as a /"
                    f"{iface.max_prefixlen}"
                ),
            )


def _remote_ts_warnings(
    config: Config, routes: Sequence[ConnectedRoute]
) -> Iterator[tuple[str, str]]:
    # Every peer's address, sorted: a selector finds the ones it holds by bisection, so
    # 10 000 peers cost O(n log n) here, not 10^8 comparisons.
    known = sorted(
        (address.version, int(address), i)
        for i, other in enumerate(config.peers)
        if (address := other.remote_address) is not None  # None: a DNS name or any
    )
    for n, peer in enumerate(config.peers):
        for key, ts, child in _selectors_of(config, n, peer, "remote_ts"):
            transport = child.mode == "transport"
            lo = bisect.bisect_left(known, (ts.version, ts.start, -1))
            hi = bisect.bisect_right(known, (ts.version, ts.end, len(config.peers)))
            for _, _, i in sorted(known[lo:hi], key=lambda k: k[2]):  # in config order
                other = config.peers[i]
                address = other.remote_address
                assert address is not None
                if transport and address == peer.remote_address:
                    continue  # routed beside ipsecd's own packets (gateway.fwmark)
                if not _reached_beside(address, ts, routes):
                    yield (
                        key,
                        (
                            f"{ts} contains {address}, the address of peer {other.name!r}: ipsecd"
                            f" routes remote_ts into the tunnel, so IKE and ESP to {address} would"
                            " go into the tunnel too.  Leave it out of remote_ts (list the networks"
                            " behind the peer)"
                        ),
                    )
            for route in routes:
                if transport:
                    break  # its own table: only the gateway's own packets go to the tunnel
                for net in ts.networks():
                    if _overlaps(net, route.network) and net.prefixlen >= route.network.prefixlen:
                        yield (
                            key,
                            (
                                f"{ts} overlaps {_on(route)}: ipsecd routes remote_ts into the"
                                f" tunnel, which takes {net} away from {route.interface}.  Are"
                                " local_ts and remote_ts swapped?  remote_ts is the network"
                                " behind the peer"
                            ),
                        )
                        break


def _reached_beside(
    address: IpAddress, ts: TrafficSelector, routes: Sequence[ConnectedRoute]
) -> bool:
    """True if a connected route more specific than every prefix of ``ts`` holding ``address``
    keeps ``address`` out of the tunnel (the peer sits on a connected network)."""
    longest = max(
        (net.prefixlen for net in ts.networks() if address in net), default=address.max_prefixlen
    )
    return any(address in r.network and r.network.prefixlen > longest for r in routes)


def _local_ts_warnings(config: Config) -> Iterator[tuple[str, str]]:
    listen = sorted((a.version, int(a), i) for i, a in enumerate(config.gateway.listen))
    for n, peer in enumerate(config.peers):
        for key, ts, child in _selectors_of(config, n, peer, "local_ts"):
            if child.mode == "transport":
                continue  # local_ts is this gateway's address by design
            lo = bisect.bisect_left(listen, (ts.version, ts.start, -1))
            hi = bisect.bisect_right(listen, (ts.version, ts.end, len(listen)))
            for _, _, i in sorted(listen[lo:hi], key=lambda k: k[2]):  # in config order
                address = config.gateway.listen[i]
                yield (
                    key,
                    (
                        f"{ts} contains {address}, this gateway's own address (gateway.listen):"
                        f" a peer that routes its remote_ts into its tunnel, as ipsecd does,"
                        f" sends IKE and ESP for {address} into the tunnel.  List the networks"
                        " behind this gateway instead (the peer needs a route to"
                        f" {address} outside the tunnel otherwise)"
                    ),
                )
