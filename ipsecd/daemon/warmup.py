"""One handshake in memory at start-up, so that the first real one is not the first.

The first IKE_SA_INIT + IKE_AUTH of a fresh process costs some 10× a later one: the
cryptography package loads its AEAD, key-exchange and HMAC bindings on first use, and
our own codec, proposal, key-derivation, install and logging paths run for the first
time.  Before the daemon opens its sockets, :func:`warm_up` runs a complete handshake
between two throwaway :class:`DaemonCore` instances (no sockets, a logger that writes
nowhere, nothing kept) with the proposals of the configured peers and a pre-shared key,
as the shell drives a core: ``up``, IKE datagrams in and out of the NAT-T framing, the
IKE inbox, the CHILD_SA installed and logged; then one packet from A's TUN to B's
(selector look-up, ESP seal and open).  Those costs are paid at start-up.  Certificate
and EAP authentication are not exercised (their code loads on the first handshake that
needs it).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ipsecd.config import Config, parse_config
from ipsecd.daemon import logs
from ipsecd.daemon.core import DaemonCore

_A, _B = "192.0.2.1", "192.0.2.2"
_PSK = "0x" + "5a" * 32
# An IPv4/UDP packet 10.1.0.1 -> 10.2.0.1 (inside the warm-up's selectors), 28 bytes.
_INNER = bytes.fromhex("4500001c00010000401166cc0a0100010a0200010035003500080000")


def _proposals(config: Config) -> tuple[list[str], list[str]]:
    """The IKE and ESP proposals of the first peer (its first child), as written."""
    for peer in config.peers:
        if peer.ike_proposals:  # manual peers have none
            return [str(p) for p in peer.ike_proposals], [
                str(p) for p in peer.children[0].esp_proposals
            ]
    return [], []


def _config_text(initiator: bool, psk_file: Path, ike: list[str], esp: list[str]) -> str:
    me, other = (_A, _B) if initiator else (_B, _A)
    lines = [
        "gateway:",
        f"  listen: [{me}]",
        "  user: root",
        "peers:",
        "  - name: warmup",
        f"    local_address: {me}",
        f"    remote_address: {other}",
        f"    start: {'initiate' if initiator else 'respond'}",
        f"    local_ts: [10.{1 if initiator else 2}.0.0/24]",
        f"    remote_ts: [10.{2 if initiator else 1}.0.0/24]",
        f"    auth: {{psk_file: {psk_file}}}",
    ]
    if ike:
        lines += ["    ike:", f"      proposals: [{', '.join(ike)}]"]
    if esp:
        lines += ["    esp:", f"      proposals: [{', '.join(esp)}]"]
    return "\n".join(lines) + "\n"


def _exchange(a: DaemonCore, b: DaemonCore, now: float) -> None:
    """Carry what each core sends to the other until both are quiet (a few round trips:
    IKE_SA_INIT, IKE_INTERMEDIATE(s), IKE_AUTH)."""
    for _ in range(20):
        moved = False
        for core, other in ((a, b), (b, a)):
            for local, remote, datagrams in core.datagrams_to_send():
                moved = True
                other.from_udp([(d, local) for d in datagrams], remote, now)
                while other.ike_pending():
                    other.run_ike(now)
            core.status_line()
            core.get_timer()
        if not moved:
            return


def _handshake(a: DaemonCore, b: DaemonCore, now: float) -> bool:
    """``up`` at A until both installed the CHILD_SA, then one packet from A's TUN to B's."""
    a.control("up", "warmup", now)
    _exchange(a, b, now)
    if not (a.by_peer.of("warmup") and b.by_peer.of("warmup")):
        return False
    a.from_tun([_INNER], now)
    _exchange(a, b, now)
    return b.packets_to_tun() == [_INNER]


def warm_up(config: Config) -> float | None:
    """Run one in-memory handshake with ``config``'s proposals; its wall time in seconds,
    or None if it did not complete (the daemon runs the same either way)."""
    ike, esp = _proposals(config)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="ipsecd-warmup-") as tmp:
            psk_file = Path(tmp) / "psk"
            fd = os.open(psk_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(_PSK + "\n")
            now = time.monotonic()
            a, b = (
                DaemonCore(
                    parse_config(_config_text(initiator, psk_file, ike, esp), f"{tmp}/{name}"),
                    now,
                    log=logs.nowhere(),
                )
                for initiator, name in ((True, "a"), (False, "b"))
            )
            done = _handshake(a, b, now)
    except Exception:  # noqa: BLE001 - a warm-up must never stop the daemon
        return None
    return time.perf_counter() - start if done else None
