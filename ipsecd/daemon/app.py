"""The asyncio shell: owns TUN, UDP sockets, timers, signals and the control socket.

Everything protocol-shaped lives in the sans-I/O cores (``esp``, ``ike``,
``dataplane.processor``); this module only wires file descriptors to them.
Readers drain a whole burst per wake-up, so there is one Python callback per
burst, not per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ipsecd.config import Config, PeerConfig, load_config
from ipsecd.config.errors import ConfigError
from ipsecd.daemon import logs
from ipsecd.daemon.control import ControlServer
from ipsecd.daemon.instance import StartRefused, claim_instance
from ipsecd.daemon.malloc import keep_heap_mapped
from ipsecd.daemon.metrics import MetricsServer
from ipsecd.daemon.privilege import drop_privileges
from ipsecd.daemon.sdnotify import Notifier
from ipsecd.dataplane.mtu import tun_mtu
from ipsecd.dataplane.processor import PacketProcessor
from ipsecd.dataplane.sad import Address, SaDatabase, TunnelSa
from ipsecd.dataplane.trap import TrapQueue
from ipsecd.dataplane.tun import TunDevice
from ipsecd.dataplane.udp import UdpSocket
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa

BURST = 64


def manual_tunnel(config: Config, peer: PeerConfig) -> TunnelSa:
    """Build the static SA pair of a ``manual`` peer (RFC 4301 §4.5)."""
    m = peer.manual
    assert m is not None
    n = m.encr.keymat_len
    common = {"encr": m.encr, "integ": m.integ, "esn": m.esn}
    inbound = InboundEspSa(
        m.spi_in,
        encr_keymat=m.key_in[:n],
        integ_key=m.key_in[n:],
        src_selectors=peer.remote_ts,
        dst_selectors=peer.local_ts,
        **common,
    )
    outbound = OutboundEspSa(
        m.spi_out, encr_keymat=m.key_out[:n], integ_key=m.key_out[n:], **common
    )
    return TunnelSa(
        peer=peer.name,
        inbound=inbound,
        outbound=outbound,
        local_ts=peer.local_ts,
        remote_ts=peer.remote_ts,
        local=(str(peer.local_address), config.gateway.port),
        remote=(str(peer.remote_address), config.gateway.port),
        installed_at=time.monotonic(),
    )


class Daemon:
    """One running ipsecd: a TUN device, its sockets, its SAs."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.log = logs.get_logger()
        self.sad = SaDatabase()
        self.processor = PacketProcessor(self.sad)
        self.tun: TunDevice | None = None
        self.sockets: dict[Address, UdpSocket] = {}
        self.ike: Any = None
        self._ike_timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._control: ControlServer | None = None
        self._metrics: MetricsServer | None = None
        self.started_at = time.monotonic()
        self.counters: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        # start: trap -- packets without SA wait here while their tunnel is negotiated.
        self.trap = TrapQueue(self.counters)
        self.processor.no_sa = self.trap.offer
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start-up --------------------------------------------------------------------------
    def mtu(self) -> int:
        gw = self.config.gateway
        if gw.mtu is not None:
            return gw.mtu
        proposals = []
        versions = set()
        for peer in self.config.peers:
            versions.add(peer.remote_address.version)
            if peer.manual is not None:
                from ipsecd.crypto.proposals import Proposal

                proposals.append(
                    Proposal(
                        "esp",
                        (peer.manual.encr,),
                        (peer.manual.integ,) if peer.manual.integ else (),
                        (),
                        (),
                    )
                )
            else:
                proposals.extend(peer.esp_proposals)
        return min(tun_mtu(proposals, v) for v in versions or {4})

    async def _open(self) -> None:
        gw = self.config.gateway
        offload = gw.offload
        self.tun = TunDevice(gw.tun, offload=offload)
        await self.tun.configure(self.mtu(), gw.addresses)
        for address in gw.listen:
            for port in (gw.port, gw.ike_port):
                # GSO/GRO on the ESP port only: IKE messages come one at a time.
                sock = UdpSocket(str(address), port, offload=offload and port == gw.port)
                self.sockets[sock.local] = sock
                self._loop.add_reader(sock.fd, self._on_udp, sock)
        self._loop.add_reader(self.tun.fd, self._on_tun)
        for peer in self.config.peers:
            for ts in peer.remote_ts:
                for net in ts.networks():
                    await self.tun.add_route(net)
            if peer.manual is not None:
                self.sad.install(manual_tunnel(self.config, peer))
                self.log.info("manual SA installed", peer=peer.name)
            elif peer.start == "trap":
                self.trap.watch(peer.name, peer.local_ts, peer.remote_ts)
        if any(p.manual is None for p in self.config.peers):
            from ipsecd.ike.manager import IkeManager

            self.ike = IkeManager(self.config, time.monotonic())

    # -- packet paths ----------------------------------------------------------------------
    def _on_tun(self) -> None:
        tun = self.tun
        assert tun is not None
        packets = tun.read_batch(BURST)
        if not packets:
            return
        self.send_inner(packets)
        self._start_on_demand()

    def send_inner(self, packets: list[bytes]) -> None:
        """Encapsulate inner packets and send them: a TUN burst, or the packets that waited
        for their CHILD_SA (start: trap)."""
        for (local, remote), datagrams in self.processor.from_tun(packets).items():
            sock = self.sockets.get(local)
            if sock is None:
                self.counters["no_socket"] += len(datagrams)
                continue
            sock.send_batch(datagrams, remote)

    def _start_on_demand(self) -> None:
        """Initiate the trap peers whose first packet just arrived (once per negotiation)."""
        triggers = self.trap.take_triggers()
        if not triggers:
            return
        now = time.monotonic()
        for name in triggers:
            if self.ike is None or name not in self.ike.peers:
                self.trap.failed(name)
                continue
            self.log.info("on-demand start: traffic for the peer's selectors", peer=name)
            self.ike.initiate(name, now, on_demand=True)
        self._pump_ike()

    def _on_udp(self, sock: UdpSocket) -> None:
        datagrams = sock.recv_batch(BURST)
        if not datagrams:
            return
        if (
            sock.local[1] == self.config.gateway.ike_port
            and sock.local[1] != self.config.gateway.port
        ):
            for data, remote in datagrams:
                self._ike_receive(bytes(data), sock.local, remote)
            return
        to_tun, ike, moved = self.processor.from_udp(datagrams)
        if to_tun:
            self.tun.write_batch(to_tun)
        for data, remote in ike:
            self._ike_receive(data, sock.local, remote)
        if moved:
            # Authentic ESP from an unexpected endpoint: counted; the endpoint itself only
            # follows authenticated IKE (PeerAddressChanged), as strongSwan does.
            self.counters["esp_from_new_address"] += len(moved)

    # -- IKE -------------------------------------------------------------------------------
    def _ike_receive(self, data: bytes, local: Address, remote: Address) -> None:
        if self.ike is None:
            self.counters["ike_without_ike_peers"] += 1
            return
        self.ike.receive_datagram(data, local, remote, time.monotonic())
        self._pump_ike()

    def _pump_ike(self) -> None:
        """Send what the IKE layer queued, apply its events, re-arm its timer."""
        if self.ike is None:
            return
        from ipsecd.daemon.ike_glue import apply_event, send_datagrams

        send_datagrams(self, self.ike.datagrams_to_send())
        while (event := self.ike.next_event()) is not None:
            apply_event(self, event)
        send_datagrams(self, self.ike.datagrams_to_send())
        when = self.ike.get_timer()
        if self._ike_timer is not None:
            self._ike_timer.cancel()
            self._ike_timer = None
        if when is not None:
            delay = max(0.0, when - time.monotonic())
            self._ike_timer = self._loop.call_later(delay, self._on_ike_timer)

    def _on_ike_timer(self) -> None:
        self._ike_timer = None
        if self.ike is not None:
            from ipsecd.daemon.ike_glue import report_usage

            now = time.monotonic()
            report_usage(self, now)
            self.ike.handle_timer(now)
            self._pump_ike()

    # -- control ---------------------------------------------------------------------------
    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        from ipsecd.daemon.status import build_status

        cmd = request.get("cmd")
        now = time.monotonic()
        if cmd == "status":
            return {"ok": True, "status": build_status(self)}
        if cmd == "log-level":
            logs.set_level(str(request.get("level")))
            return {"ok": True}
        if cmd == "reload":
            return await self.reload()
        if cmd in ("up", "down", "rekey"):
            peer = str(request.get("peer"))
            if self.ike is None or peer not in {p.name for p in self.config.peers}:
                return {"ok": False, "error": f"no IKE peer named {peer!r}"}
            if cmd == "up":
                self.ike.initiate(peer, now)
            elif cmd == "down":
                self.ike.terminate(peer, now)
            else:
                try:
                    if request.get("ike"):
                        self.ike.rekey_ike(peer, now)
                    else:
                        self.ike.rekey(peer, now)
                except KeyError as exc:  # no established IKE SA with the peer
                    return {"ok": False, "error": str(exc.args[0])}
            self._pump_ike()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply the difference (SIGHUP, ``ipsecctl reload``).

        A file that fails validation is refused and the running config kept.
        Unchanged peers keep their SAs and lose no packet; changed peers are
        re-negotiated; new peers start; removed peers get a Delete.  The
        gateway section (device, addresses, ports) needs a restart.
        """
        self.notifier.notify(reloading=1)
        try:
            result = await self._reload()
        finally:
            self.notifier.notify(ready=1, status=self._status_line())
        return result

    async def _reload(self) -> dict[str, Any]:
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.log.error("reload refused, keeping the running config", error=str(exc))
            return {"ok": False, "error": f"reload refused, running config kept: {exc}"}
        if new.gateway != self.config.gateway:
            message = (
                f"{path}: the gateway section changed; restart ipsecd to apply it"
                " (running config kept)"
            )
            self.log.error("reload refused", error=message)
            return {"ok": False, "error": message}
        old_peers = {p.name: p for p in self.config.peers}
        new_peers = {p.name: p for p in new.peers}
        plan: dict[str, list[str]] = {
            "added": [n for n in new_peers if n not in old_peers],
            "removed": [n for n in old_peers if n not in new_peers],
            "changed": [n for n in new_peers if n in old_peers and new_peers[n] != old_peers[n]],
        }
        plan["unchanged"] = [n for n in new_peers if n in old_peers and n not in plan["changed"]]
        self.log.info("reload plan", **plan)
        now = time.monotonic()
        for name in plan["removed"] + plan["changed"]:
            old = old_peers[name]
            self.trap.unwatch(name)
            if old.manual is not None:
                self.sad.remove_peer(name)
            for ts in old.remote_ts:
                for net in ts.networks():
                    await self.tun.remove_route(net)
        if self.ike is not None:
            self.ike.reconfigure(new, now)
        elif any(p.manual is None for p in new.peers):
            from ipsecd.ike.manager import IkeManager

            self.ike = IkeManager(new, now)
        self.config = new
        logs.set_level(new.log.level)
        for name in plan["added"] + plan["changed"]:
            peer = new_peers[name]
            for ts in peer.remote_ts:
                for net in ts.networks():
                    await self.tun.add_route(net)
            if peer.manual is not None:
                self.sad.install(manual_tunnel(new, peer))
            elif peer.start == "initiate":
                self.ike.initiate(name, now)
            elif peer.start == "trap":
                self.trap.watch(name, peer.local_ts, peer.remote_ts)
        # Routes of unchanged peers may have been shared with a removed one: put them back.
        for name in plan["unchanged"]:
            for ts in new_peers[name].remote_ts:
                for net in ts.networks():
                    await self.tun.add_route(net)
        self._pump_ike()
        return {"ok": True, "plan": plan}

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except OSError as exc:
            self.log.error("cannot open the tunnel device or sockets", error=str(exc))
            await self._close()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop)
        self._loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._control = ControlServer(Path(self.config.gateway.control_socket), self.handle_request)
        await self._control.start()
        if self.config.gateway.metrics is not None:
            from ipsecd.daemon.status import build_status

            host, port = self.config.gateway.metrics
            self._metrics = MetricsServer(host, port, lambda: build_status(self))
            try:
                await self._metrics.start()
            except OSError as exc:
                self.log.error("cannot open the metrics endpoint", error=str(exc))
                await self._control.close()
                await self._close()
                return 1
        try:  # device, sockets, routes, control socket and metrics exist: root is not needed
            dropped = drop_privileges(self.config.gateway.user)
        except OSError as exc:
            self.log.error("cannot drop privileges", error=str(exc))
            await self._shutdown()
            return 1
        self.log.info(
            "privileges dropped",
            user=dropped.user,
            uid=dropped.uid,
            capabilities=dropped.capabilities,
            warning=dropped.warning,
        )
        if self.ike is not None:
            self.ike.start(time.monotonic())
            self._pump_ike()
        self.log.info(
            "ipsecd running",
            tun=self.tun.name,
            mtu=self.mtu(),
            listen=[f"{a}:{p}" for a, p in self.sockets],
            peers=[p.name for p in self.config.peers],
        )
        self.notifier.notify(ready=1, status=self._status_line())
        if self.config.gateway.wakeup_interval_ms:
            self._wakeup()
        watchdog = self.notifier.watchdog_interval()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=watchdog or 5.0)
            self.notifier.notify(watchdog=1, status=self._status_line())
        self.notifier.notify(stopping=1)
        await self._shutdown()
        return 0

    def _wakeup(self) -> None:
        """Wake the loop every ``gateway.wakeup_interval_ms`` though there is nothing to do.

        On a virtual machine a process that sleeps for more than a few milliseconds, and
        the CPU it sleeps on, go cold: the next packet of an idle tunnel then costs several
        times its usual CPU time at each gateway.  Waking every few milliseconds keeps them
        warm, for about 0.3 % of a core at 10 ms (README "Performance").
        """
        self.counters["wakeups"] += 1
        self._loop.call_later(self.config.gateway.wakeup_interval_ms / 1000, self._wakeup)

    def _status_line(self) -> str:
        peers = {sa.peer for sa in self.sad}
        return f"{len(peers)} of {len(self.config.peers)} tunnels up"

    async def _shutdown(self) -> None:
        self.log.info("shutting down")
        if self.ike is not None:
            self.ike.shutdown(time.monotonic())
            from ipsecd.daemon.ike_glue import send_datagrams

            send_datagrams(self, self.ike.datagrams_to_send())
        if self._control is not None:
            await self._control.close()
        if self._metrics is not None:
            await self._metrics.close()
        await self._close()

    async def _close(self) -> None:
        if self._ike_timer is not None:
            self._ike_timer.cancel()
        for sock in self.sockets.values():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fd)
            sock.close()
        self.sockets.clear()
        if self.tun is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tun.fd)
            await self.tun.close()
            self.tun = None


def run_daemon(config_path: str) -> int:
    config = load_config(config_path)
    logs.configure(config.log.level, config.log.format)
    try:  # before any device, socket or route is touched; held until the process exits
        lock = claim_instance(config)
    except StartRefused as exc:
        print(f"ipsecd: refusing to start: {exc}", file=sys.stderr)
        return 1
    keep_heap_mapped()
    try:
        return asyncio.run(Daemon(config).run())
    finally:
        lock.release()
