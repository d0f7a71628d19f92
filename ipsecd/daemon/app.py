"""The asyncio shell: owns TUN, UDP sockets, timers, signals and the control socket.

Every decision is the daemon core's (:mod:`ipsecd.daemon.core`, sans-I/O); this
module only wires file descriptors, timers and signals to it and carries out what
it asks for (:meth:`Daemon._flush`).  Readers drain a whole burst per wake-up, so
there is one Python callback per burst, not per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError  # the submodule: lazyimports.py

from ipsecd.addresses import format_address
from ipsecd.config import Config, load_config
from ipsecd.config.errors import ConfigError
from ipsecd.daemon import core as daemon_core
from ipsecd.daemon import logs
from ipsecd.daemon.control import ControlServer
from ipsecd.daemon.core import DaemonCore
from ipsecd.daemon.eventloop import PacketSelector
from ipsecd.daemon.gcpause import collector_paused
from ipsecd.daemon.instance import StartRefused, claim_instance
from ipsecd.daemon.malloc import keep_heap_mapped, release_free_memory
from ipsecd.daemon.outcomes import MAX_WAIT
from ipsecd.daemon.privilege import drop_privileges
from ipsecd.daemon.resolver import SystemResolver
from ipsecd.daemon.sdnotify import Notifier
from ipsecd.daemon.status import DaemonStatus, DataplaneStatus, document_steps
from ipsecd.daemon.warmup import warm_up
from ipsecd.dataplane.bypass import BypassRule
from ipsecd.dataplane.raw import RawSocket
from ipsecd.dataplane.sad import Address
from ipsecd.dataplane.sockfilter import detach, drop_init_requests, drop_larger_than
from ipsecd.dataplane.tun import TunDevice
from ipsecd.dataplane.udp import UdpSocket, natt_sockets
from ipsecd.oserrors import OSErrorAt

if TYPE_CHECKING:
    from ipsecd.daemon.metrics import MetricsServer

BURST = 64
# Seconds after a key pair made ahead was used before the next is made: past the rest of
# the handshake, whose steps would otherwise wait for it (the daemons of a handshake
# often share one CPU).
PREPARE_DELAY = 0.05


@contextlib.contextmanager
def naming(what: str) -> Iterator[None]:
    """An OS or netlink error inside says ``what`` failed (the device, address, file)."""
    try:
        yield
    except OSErrorAt:
        raise
    except OSError as exc:
        raise OSErrorAt(what, exc) from exc
    except NetlinkError as exc:  # pyroute2's: not an OSError, but carries the errno
        raise OSErrorAt(what, OSError(exc.code, os.strerror(exc.code))) from exc


def wait_seconds(value: Any) -> float:
    """A request's ``wait``: seconds, more than 0 and at most ``MAX_WAIT``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT:
        raise ValueError(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, not {value!r}")
    return float(value)


T = TypeVar("T")


async def _stepped(steps: Iterator[T | None]) -> T:
    """Run a stepwise build (None between steps) with the loop's turn after each step:
    its packet readers run in between."""
    for step in steps:
        if step is not None:
            return step
        await asyncio.sleep(0)
    raise AssertionError("the steps end with their result")


class Daemon:
    """One running ipsecd: the file descriptors, timers and signals of a :class:`DaemonCore`."""

    def __init__(
        self,
        config: Config,
        notifier: Notifier | None = None,
        selector: PacketSelector | None = None,
    ) -> None:
        """``selector``: the running loop's, if it is a :class:`PacketSelector` (serve);
        the packet readers are then called straight from it."""
        self.notifier = notifier or Notifier()
        self.log = logs.get_logger()
        self.resolver = SystemResolver()  # DNS names in remote_address
        self.core = DaemonCore(config, time.monotonic(), resolver=self.resolver)
        self.tun: TunDevice | None = None
        self.sockets: dict[Address, UdpSocket] = {}
        # The NAT-T port's IKE sockets (natt_sockets): read only; sent from self.sockets.
        self.natt_ike_sockets: list[UdpSocket] = []
        self.raw_sockets: dict[tuple[str, int], RawSocket] = {}  # (address, 50 | 51)
        gw = config.gateway
        self.bypass = BypassRule(gw.fwmark, gw.route_table)  # transport-mode routes
        self._ike_timer: asyncio.TimerHandle | None = None
        self._ike_slice: asyncio.Handle | None = None  # queued IKE work (core.run_ike)
        self._ike_port_paused = False  # new requests used up their share (core.ike_port_pause)
        self._prepare_timer: asyncio.TimerHandle | None = None  # core.prepare_key_pairs
        self._stop = asyncio.Event()
        self._control: ControlServer | None = None
        self._metrics: MetricsServer | None = None
        self._status_sent = ""
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # control tickets
        self._loop: asyncio.AbstractEventLoop  # set by run()
        self._selector = selector

    @property
    def config(self) -> Config:
        return self.core.config

    # -- start-up --------------------------------------------------------------------------
    async def _open(self) -> None:
        gw = self.config.gateway
        offload = gw.offload
        with naming(f"cannot open TUN device {gw.tun} (/dev/net/tun)"):
            self.tun = TunDevice(gw.tun, offload=offload)
        addresses = ", ".join(str(a) for a in gw.addresses) or "no address"
        with naming(f"cannot configure TUN device {self.tun.name} (mtu, {addresses})"):
            await self.tun.configure(self.core.mtu(), gw.addresses)
        for address, port in self.core.endpoints():
            if port == gw.port:  # ESP and IKE read from queues of their own
                sock, marked = natt_sockets(address, port, offload, gw.fwmark)
                if marked is not None:
                    # Both read from epoll, in the order it reports them: an IKE_AUTH answer
                    # before the ESP its sender puts behind it (the one socket kept that order).
                    self.natt_ike_sockets.append(marked)
                    self._read_udp(marked, direct=True)
                else:
                    self.log.warning(
                        "no kernel selector for IKE on the NAT-T port: ESP and IKE share one"
                        " socket, and an IKE flood there can delay ESP",
                        listen=format_address(address, port),
                    )
            else:  # GSO/GRO on the ESP port only: IKE messages come one at a time.
                sock = UdpSocket(address, port, offload=False, mark=gw.fwmark)
            self.sockets[sock.local] = sock
            if port == gw.ike_port != gw.port:
                self._drop_oversized(sock, gw.max_ike_datagram)
            self._read_udp(sock, direct=port == gw.port)
        for address, protocol in self.core.raw_endpoints():  # ESP/AH directly over IP
            try:
                raw = RawSocket(address, protocol, mark=gw.fwmark)
            except OSError as exc:
                if self.core.needs_raw():
                    raise
                # An old unit without CAP_NET_RAW, say: nothing configured needs it yet.
                self.log.warning(
                    "ESP/AH directly over IP unavailable (no peer has encap: auto)",
                    error=str(exc),
                )
                break
            self.raw_sockets[raw.local] = raw
            self._loop.add_reader(raw.fd, self._on_raw, raw)
        self._loop.add_reader(self.tun.fd, self._on_tun)
        if self._selector is not None:
            self._selector.direct(self.tun.fd, self._on_tun)
        await self._change_routes()

    def _read_udp(self, sock: UdpSocket, *, direct: bool) -> None:
        """Read ``sock`` from the loop; ``direct``: straight from epoll (PacketSelector)."""
        self._loop.add_reader(sock.fd, self._on_udp, sock)
        if direct and self._selector is not None:
            self._selector.direct(sock.fd, functools.partial(self._on_udp, sock))

    def _drop_oversized(self, sock: UdpSocket, limit: int) -> None:
        """IKE datagrams over ``gateway.max_ike_datagram`` die in the kernel, unread (the
        IKE port has no GRO; the NAT-T port, which has, drops them after reading)."""
        try:
            drop_larger_than(sock.sock, limit)
        except OSError as exc:
            self.log.warning("no kernel filter for oversized IKE datagrams", error=str(exc))

    # -- packet paths ----------------------------------------------------------------------
    # A packet alone (an idle tunnel's ping or ACK) meets a process gone cold, where every
    # step costs many times its warm price (issue 17): it goes straight from the read to
    # the send or write (core.seal_lone, core.open_lone), with no clock, no outbox and no
    # burst machinery.  Other packets (the core says whether the IKE layer ran) take the
    # packet path with no timer, status or control work (_flush_packets).
    # Both return True if they only moved packets (PacketSelector polls on), False if
    # they left work for the loop (_flush: timers, IKE slices, control answers).
    def _on_tun(self) -> bool:
        tun = self.tun
        assert tun is not None
        packets = tun.read_batch(BURST)
        if len(packets) == 1:
            sealed = self.core.seal_lone(packets[0])
            if sealed is not None:
                self.sockets[sealed[0]].send(sealed[2], sealed[1])
                return True
        if not packets:
            return True
        if self.core.from_tun(packets, time.monotonic()):
            self._flush()
            return False
        self._flush_packets()
        return True

    def _on_udp(self, sock: UdpSocket) -> bool:
        datagrams = sock.recv_batch(BURST)
        if len(datagrams) == 1:
            data, remote = datagrams[0]
            opened = self.core.open_lone(data, sock.local, remote)
            if opened is not None:
                if opened:
                    self.tun.write_batch(opened)  # type: ignore[union-attr]  # open
                return True
        if not datagrams:
            return True
        now = time.monotonic()
        if self.core.from_udp(datagrams, sock.local, now):
            if len(datagrams) == 1 and self._ike_slice is None and self.core.ike_step_waiting(now):
                # A handshake's step on an idle queue: processed now rather than one loop
                # turn later (a new request only by an idle responder: no half-open SA,
                # no COOKIE demanded, no backlog; others wait for their turn).
                self._run_ike(now)
            else:
                self._flush()
            self._pause_ike_port()
            return False
        self._flush_packets()
        return True

    def _pause_ike_port(self) -> None:
        """New requests used up their share of our time (a flood): leave the IKE port
        unread until the share is back, so the kernel drops them at no cost to us.  Only
        new requests arrive there; IKE moves to the NAT-T port after IKE_SA_INIT.  On the
        NAT-T port, whose IKE socket also carries the messages of established IKE SAs,
        the kernel drops only the IKE_SA_INIT requests meanwhile (drop_init_requests)."""
        pause = self.core.ike_port_pause(time.monotonic())
        if not pause or self._ike_port_paused:
            return
        gw = self.config.gateway
        ike_ports = [s for s in self.sockets.values() if s.local[1] == gw.ike_port != gw.port]
        for sock in ike_ports:
            self._loop.remove_reader(sock.fd)
        natt = list(self.natt_ike_sockets)
        for sock in natt:
            with contextlib.suppress(OSError):  # not filtered: read and dropped, as before
                drop_init_requests(sock.sock)
        self._ike_port_paused = True
        self._loop.call_later(pause, self._resume_ike_port, ike_ports, natt)

    def _resume_ike_port(self, ike_ports: list[UdpSocket], natt: list[UdpSocket]) -> None:
        self._ike_port_paused = False
        for sock in ike_ports:
            if self.sockets.get(sock.local) is sock:
                self._loop.add_reader(sock.fd, self._on_udp, sock)
        for sock in natt:
            detach(sock.sock)  # (a socket closed meanwhile: nothing to do)

    def _on_raw(self, sock: RawSocket) -> None:
        packets = sock.recv_batch(BURST)
        if packets:
            self.core.from_raw(packets, sock.protocol, time.monotonic())
            self._flush_packets()

    def _flush_packets(self) -> None:
        """Send and write to TUN what the core sealed and opened."""
        core = self.core
        for local, remote, datagrams in core.datagrams_to_send():
            self.sockets[local].send_batch(datagrams, remote)
        for local_ip, protocol, remote_ip, packets in core.raw_to_send():
            raw = self.raw_sockets.get((local_ip, protocol))
            if raw is not None:
                raw.send_batch(packets, remote_ip)
        to_tun = core.packets_to_tun()
        if to_tun and self.tun is not None:
            self.tun.write_batch(to_tun)

    def _flush(self) -> None:
        """Carry out what the core asked for: send, write to TUN, answer the control
        commands whose outcome is known, re-arm the timer."""
        self._flush_packets()
        self._answer_waiting()
        status = self.core.status_line()
        if status != self._status_sent:
            self._status_sent = status
            self.notifier.notify(status=status)
        if self._ike_timer is not None:
            self._ike_timer.cancel()
            self._ike_timer = None
        when = self.core.get_timer()
        if when is not None:
            delay = max(0.0, when - time.monotonic())
            self._ike_timer = self._loop.call_later(delay, self._on_ike_timer)
        if self._ike_slice is None and self.core.ike_pending():
            # After what this burst sent and wrote: one slice of IKE work per loop turn,
            # so ESP read meanwhile is never held behind it (issue 12).
            self._ike_slice = self._loop.call_soon(self._on_ike_slice)
        if self._prepare_timer is None and self.core.key_pairs_missing():
            self._prepare_timer = self._loop.call_later(PREPARE_DELAY, self._prepare_key_pairs)

    def _prepare_key_pairs(self) -> None:
        self._prepare_timer = None
        self.core.prepare_key_pairs()

    def _on_ike_slice(self) -> None:
        self._ike_slice = None
        self._run_ike(time.monotonic())
        self._pause_ike_port()

    def _run_ike(self, now: float) -> None:
        """One slice of IKE work (DaemonCore.run_ike): its answers are sent before its
        events are applied (DaemonCore.answer_ike), then the rest of :meth:`_flush`."""
        if self.core.answer_ike(now):
            self._flush_packets()
        self.core.apply_ike(now)
        self._flush()

    def _on_ike_timer(self) -> None:
        self._ike_timer = None
        self.core.handle_timer(time.monotonic())
        self._flush()

    async def _change_routes(self) -> None:
        assert self.tun is not None
        for change in self.core.routes_to_change():
            if change.add:
                where = "" if change.table is None else f" (table {change.table})"
                with naming(f"cannot add the route {change.network} into {self.tun.name}{where}"):
                    if change.table is not None:
                        await self.bypass.ensure(change.network.version)
                    await self.tun.add_route(change.network, change.table, change.source)
            else:
                await self.tun.remove_route(change.network, change.table)

    # -- control ---------------------------------------------------------------------------
    def status(self) -> DaemonStatus:
        return self.core.status(time.monotonic(), wall=time.time(), **self._devices())

    def _devices(self) -> dict[str, Any]:
        """What only the shell's devices tell the status: TUN, sockets, data plane."""
        esp_port = self.config.gateway.port
        return {
            "tun": self.tun.name if self.tun else None,
            "listen": self.sockets,
            "dataplane": DataplaneStatus.of(
                self.tun, [s for s in self.sockets.values() if s.local[1] == esp_port]
            ),
        }

    async def status_stepwise(self) -> DaemonStatus:
        """:meth:`status` built STATUS_STEP peers at a time, packets read between the steps
        (10 000 peers in one piece kept the loop 0.6 s from the sockets), with the cyclic
        collector held off (gcpause).  For the control socket and the metrics."""
        with collector_paused():
            steps = self.core.status_steps(time.monotonic(), wall=time.time(), **self._devices())
            return await _stepped(steps)

    async def _status_document(self) -> dict[str, Any]:
        """``ipsecctl status``'s document, made the same way (document_steps)."""
        status = await self.status_stepwise()
        with collector_paused():
            return await _stepped(document_steps(status, daemon_core.STATUS_STEP))

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": await self._status_document()}
        if cmd == "conns":
            return {"ok": True, "conns": self.core.conns().to_dict()}
        if cmd == "log-level":
            logs.set_level(str(request.get("level")))
            return {"ok": True}
        if cmd == "reload":
            return await self.reload()
        if cmd in ("up", "down", "rekey"):
            return await self.control(cmd, request)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def control(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        """``up``/``down``/``rekey``: answered at once, or with the outcome when the request
        says how long to ``wait`` (the core settles it; see :meth:`DaemonCore.control_wait`)."""
        if request.get("wait") is None:
            return self._control_now(cmd, request)
        peer = str(request.get("peer"))
        rekey_ike = bool(request.get("ike"))
        timeout = wait_seconds(request["wait"])
        ticket = self.core.control_wait(
            cmd, peer, time.monotonic(), timeout=timeout, rekey_ike=rekey_ike
        )
        answer = self._waiting[ticket] = self._loop.create_future()
        self._flush()  # sends the request, answers at once what is settled already
        return await answer

    def quick_request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """:meth:`handle_request`'s answer if it needs no waiting: ``up``, ``down`` and
        ``rekey`` without ``wait``, answered in the loop's turn that read them
        (:class:`ControlServer`); None for every other request."""
        cmd = request.get("cmd")
        if cmd in ("up", "down", "rekey") and request.get("wait") is None:
            return self._control_now(str(cmd), request)
        return None

    def _control_now(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        response = self.core.control(
            cmd, str(request.get("peer")), time.monotonic(), rekey_ike=bool(request.get("ike"))
        )
        self._flush()
        return response

    def _answer_waiting(self) -> None:
        for ticket, response in self.core.control_answers():
            answer = self._waiting.pop(ticket, None)
            if answer is not None and not answer.done():
                answer.set_result(response)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply the difference (SIGHUP, ``ipsecctl reload``).

        A file that fails validation is refused and the running config kept; what
        changes is :meth:`DaemonCore.reload`'s decision.
        """
        self.notifier.notify(reloading=1)
        try:
            result = await self._reload()
        finally:
            self.notifier.notify(ready=1, status=self.core.status_line())
        return result

    async def _reload(self) -> dict[str, Any]:
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.log.error("reload refused, keeping the running config", error=str(exc))
            return {"ok": False, "error": f"reload refused, running config kept: {exc}"}
        result = self.core.reload(new.without_key_lines(), time.monotonic())
        if result["ok"]:
            logs.set_level(new.log.level)
            await self._change_routes()
            self.core.prepare_key_pairs()  # the methods the new proposals use
        self._flush()
        return result

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        if self._selector is not None:
            self._selector.on_error = self._reader_failed
        try:
            await self._open()
        except OSError as exc:
            self.log.error("cannot open the tunnel device or sockets", error=str(exc))
            await self._close()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop)
        self._loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        path = Path(self.config.gateway.control_socket)
        self._control = ControlServer(path, self.handle_request, self.quick_request)
        try:
            with naming(f"cannot open the control socket {path}"):
                await self._control.start()
        except OSError as exc:
            self.log.error("cannot open the control socket", error=str(exc))
            await self._close()
            return 1
        if self.config.gateway.metrics is not None:
            # Imported here: prometheus_client (and the HTTP and email modules under it)
            # cost 3 MB that a daemon without the metrics endpoint never needs.
            from ipsecd.daemon.metrics import MetricsServer

            host, port = self.config.gateway.metrics
            self._metrics = MetricsServer(host, port, self.status, self.status_stepwise)
            try:
                with naming(f"cannot listen on {format_address(host, port)} (metrics)"):
                    await self._metrics.start()
            except OSError as exc:
                self.log.error("cannot open the metrics endpoint", error=str(exc))
                await self._control.close()
                await self._close()
                return 1
        # Metrics are set in the gateway section, which only a restart changes: a daemon
        # without them never needs their module (prometheus_client, its HTTP server and
        # ssl: 7.5 MB that the preload before the drop would import).
        unused = () if self.config.gateway.metrics is not None else ("ipsecd.daemon.metrics",)
        try:  # device, sockets, routes, control socket and metrics exist: root is not needed
            dropped = drop_privileges(self.config.gateway.user, skip=unused)
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
        self.core.start(time.monotonic())
        self.core.prepare_key_pairs()  # for the first IKE_SA_INIT, sent or answered
        self._flush()
        assert self.tun is not None
        self.log.info(
            "ipsecd running",
            tun=self.tun.name,
            mtu=self.core.mtu(),
            listen=[format_address(local) for local in self.sockets],
            peers=[p.name for p in self.config.peers],
        )
        self.notifier.notify(ready=1, status=self.core.status_line())
        # Everything built so far (modules, config, IKE state) lives as long as the daemon:
        # out of the collector's sight, so that no collection on the packet path walks it.
        gc.collect()
        gc.freeze()
        release_free_memory()  # what start-up freed goes back to the kernel (malloc.py)
        if self.config.gateway.wakeup_interval_ms:
            self._wakeup()
        watchdog = self.notifier.watchdog_interval()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=watchdog or 5.0)
            self.notifier.notify(watchdog=1, status=self.core.status_line())
        self.notifier.notify(stopping=1)
        await self._shutdown()
        return 0

    def _reader_failed(self, exc: BaseException) -> None:
        """A packet reader called by the selector raised: logged as asyncio logs a
        failed callback, and the loop goes on."""
        self._loop.call_exception_handler(
            {"message": "Exception in a packet reader", "exception": exc}
        )

    def _wakeup(self) -> None:
        """Wake the loop every ``gateway.wakeup_interval_ms`` though there is nothing to do.

        On a virtual machine a process that sleeps for more than a few milliseconds, and
        the CPU it sleeps on, go cold: the next packet of an idle tunnel then costs several
        times its usual CPU time at each gateway.  Waking every few milliseconds keeps them
        warm, for about 0.3 % of a core at 10 ms (README "Performance").
        """
        self.core.counters["wakeups"] += 1
        self._loop.call_later(self.config.gateway.wakeup_interval_ms / 1000, self._wakeup)

    async def _shutdown(self) -> None:
        self.log.info("shutting down")
        self.core.shutdown(time.monotonic())
        for local, remote, datagrams in self.core.datagrams_to_send():
            self.sockets[local].send_batch(datagrams, remote)
        self._answer_waiting()  # "ipsecd is stopping" to every command still waiting
        if self._control is not None:
            await self._control.close()
        if self._metrics is not None:
            await self._metrics.close()
        await self._close()

    async def _close(self) -> None:
        if self._ike_timer is not None:
            self._ike_timer.cancel()
        if self._ike_slice is not None:
            self._ike_slice.cancel()
        if self._prepare_timer is not None:
            self._prepare_timer.cancel()
        self.resolver.close()
        sockets: list[UdpSocket | RawSocket] = [
            *self.sockets.values(),
            *self.natt_ike_sockets,
            *self.raw_sockets.values(),
        ]
        for sock in sockets:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fd)
            sock.close()
        self.sockets.clear()
        self.natt_ike_sockets.clear()
        self.raw_sockets.clear()
        await self.bypass.close()
        if self.tun is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tun.fd)
            await self.tun.close()
            self.tun = None


def serve(config: Config) -> int:
    """Run the daemon for ``config`` (loaded, logging configured, checked by
    :func:`ipsecd.daemon.start.run_daemon`) until SIGTERM; the exit status."""
    try:  # before any device, socket or route is touched; held until the process exits
        lock = claim_instance(config)
    except StartRefused as exc:
        print(f"ipsecd: refusing to start: {exc}", file=sys.stderr)
        return 1
    keep_heap_mapped()
    warmed = warm_up(config)  # the first handshake after start costs what a later one does
    logs.get_logger().debug(
        "warm-up handshake", ms=None if warmed is None else round(warmed * 1e3, 1)
    )
    selector = PacketSelector()
    try:
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            return runner.run(Daemon(config, selector=selector).run())
    finally:
        lock.release()
