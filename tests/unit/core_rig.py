"""Gateway A as a real :class:`~ipsecd.daemon.core.DaemonCore`, facing an IkeManager.

The core is driven the way the asyncio shell drives it, with plain calls: bursts
from a fake TUN (:meth:`CoreRig.from_tun`), datagrams from a fake network, the
pair's fake clock.  Side ``b`` is the :class:`IkePair`'s manager ``b``; what
gateway A sends is recorded as it would leave its sockets (framed, RFC 3948).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipsecd.daemon.core import DaemonCore, child_sa
from ipsecd.dataplane.sad import Address
from ipsecd.esp.udp_encap import DatagramKind, classify, frame
from ipsecd.ike.constants import ExchangeType
from tests.unit.ike_pair_support import B_IP, IkePair, Side


class CoreRig:
    """A :class:`DaemonCore` for side ``a`` of an :class:`IkePair`, with a fake network."""

    def __init__(self, tmp_path: Path, a: Side, b: Side, **core: Any) -> None:
        self.pair = IkePair(tmp_path, a, b, start=False)
        self.core = DaemonCore(self.pair.a_config, self.pair.now, **core)
        self.b = self.pair.b
        self.drop = False  # the network loses every datagram while True
        self.ike_sent: list[bytes] = []  # IKE messages gateway A sent (without marker)
        self.esp_sent: list[tuple[bytes, Address]] = []  # ESP datagrams A sent, and where
        self.keepalives = 0
        self.tun: list[bytes] = []  # what A wrote to its TUN device
        self.core.start(self.now)
        self.pump()

    @property
    def now(self) -> float:
        return self.pair.now

    @property
    def ike(self) -> Any:
        assert self.core.ike is not None
        return self.core.ike

    def status_a(self) -> dict[str, Any]:
        (entry,) = self.ike.status()
        return entry

    def inits_sent(self) -> int:
        return sum(
            1 for m in self.ike_sent if m[18] == ExchangeType.IKE_SA_INIT
        )  # offset 18: exchange type

    def from_tun(self, packets: list[bytes]) -> None:
        """A burst read from A's TUN device."""
        self.core.from_tun(packets, self.now)
        self.pump()

    def pump(self, limit: int = 500) -> None:
        """Move datagrams both ways until both gateways are quiet."""
        for _ in range(limit):
            moved = False
            for local, remote, datagrams in self.core.datagrams_to_send():
                for data in datagrams:
                    moved = True
                    self._sent_by_a(data, local, remote)
            for d in self.b.datagrams_to_send():
                moved = True
                if not self.drop:
                    self.core.from_udp([(frame(d.data, d.marker), d.local)], d.remote, self.now)
            while self.core.ike_pending():  # the shell's IKE slices (DaemonCore.run_ike)
                self.core.run_ike(self.now)
            while (event := self.b.next_event()) is not None:
                self.pair.events["b"].append((self.now, event))
            self.tun += self.core.packets_to_tun()
            if not moved:
                return
        raise AssertionError(f"no quiet state after {limit} rounds")

    def _sent_by_a(self, data: bytes, local: Address, remote: Address) -> None:
        if local[1] == self.core.config.gateway.port:
            kind, payload = classify(data)
        else:
            kind, payload = DatagramKind.IKE, data
        if kind is DatagramKind.ESP:
            self.esp_sent.append((data, remote))
        elif kind is DatagramKind.KEEPALIVE:
            self.keepalives += 1
        else:
            assert kind is DatagramKind.IKE, data
            self.ike_sent.append(bytes(payload))
            if not self.drop:
                self.b.receive_datagram(bytes(payload), remote, local, self.now)

    def advance(self, seconds: float, limit: int = 100_000) -> None:
        """Move the clock forward, firing both gateways' timers due on the way."""
        end = self.now + seconds
        for _ in range(limit):
            timers = [t for t in (self.core.get_timer(), self.b.get_timer()) if t is not None]
            if not timers or min(timers) > end:
                break
            self.pair.now = max(self.now, min(timers))
            core_due, b_due = self.core.get_timer(), self.b.get_timer()
            if core_due is not None and core_due <= self.now:
                self.core.handle_timer(self.now)
            if b_due is not None and b_due <= self.now:
                self.b.handle_timer(self.now)
            self.pump()
        self.pair.now = end

    def decrypted_at_b(self) -> list[bytes]:
        """The ESP A sent so far, opened with b's newest inbound keys."""
        child = self.pair.established("b")[-1].child
        inbound = child_sa("a", child, (B_IP, 4500), self.now).inbound  # as b installs it
        out = []
        for data, remote in self.esp_sent:
            assert remote == (B_IP, 4500)
            result = inbound.decapsulate(data)
            if result is not None:
                out.append(result[1])
        return out
