#!/usr/bin/env python3
"""The data plane's hot path in one process: work per packet on each gateway.

Two real :class:`ipsecd.daemon.app.Daemon` objects with a static SA (no IKE), each
driven the way the event loop drives it (``_on_tun`` / ``_on_udp``), on real file
descriptors but without devices or namespaces:

* gateway A's TUN is one end of a ``SOCK_SEQPACKET`` socket pair: the harness writes
  what the kernel would hand a TUN reader with offloads on (a virtio-net header and a
  64 KiB TCP super-segment of one stream) and A reads, splits, seals and sends it over
  UDP with GSO;
* gateway B receives it on loopback with UDP GRO, opens it, coalesces the segments and
  writes them to its own TUN socket pair, where the harness drains them.

So one *burst* is one super-segment, about 47 packets each way (``--stream N``: N of
them, as a bulk sender's kernel hands them over, which B's GRO may join).  ``--side encrypt``
runs gateway A alone (B's socket is never read; the kernel drops what overflows).

    python3 bench/hotpath.py                         # wall-clock ns per packet (noisy)
    python3 bench/hotpath.py --instructions          # instructions per packet (callgrind)
    python3 bench/hotpath.py --profile               # cProfile of the two gateways
    python3 bench/hotpath.py --lone                  # a lone small packet each way
    python3 bench/hotpath.py --stream 3              # 3 super-segments of a stream per burst

``--instructions`` runs this script under ``valgrind --tool=callgrind`` with two burst
counts per side and divides the difference by the packets carried, so start-up does
not count: the figures are repeatable on a loaded machine, unlike time.  The
decrypting gateway's figure is the two-sided run minus the encrypt-only run.
User-space instructions only: the kernel's work (system calls, copies) is not in them.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ipsecd.config import load_config  # noqa: E402
from ipsecd.daemon import logs  # noqa: E402
from ipsecd.daemon.app import Daemon  # noqa: E402
from ipsecd.dataplane.offload import VNET_HDR, VNET_HDR_LEN  # noqa: E402
from ipsecd.dataplane.tun import TunDevice  # noqa: E402
from ipsecd.dataplane.udp import UdpSocket  # noqa: E402

SITE_A, SITE_B = "10.1.0.0/24", "10.2.0.0/24"
HOST_A, HOST_B = bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2])
ADDR_A, ADDR_B = "127.0.0.1", "127.0.0.2"
SUPER_SEGMENT = 65000  # bytes of TCP payload the kernel hands the TUN reader in one go
TCP_OPTIONS = bytes.fromhex("0101080a0001e2400001e240")  # NOP NOP timestamps (Linux's)


def _config(tmp: Path, name: str, port: int, esp: str, keys: tuple[str, str]) -> Path:
    local, peer = (ADDR_A, ADDR_B) if name == "a" else (ADDR_B, ADDR_A)
    lts, rts = (SITE_A, SITE_B) if name == "a" else (SITE_B, SITE_A)
    spi_in, spi_out = (0x2002, 0x1001) if name == "a" else (0x1001, 0x2002)
    key_in, key_out = keys if name == "a" else keys[::-1]
    key_file = tmp / f"{name}.keys"
    key_file.write_text(f"in: {key_in}\nout: {key_out}\n")
    key_file.chmod(0o600)
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""\
log: {{level: warning, format: json}}
gateway:
  tun: hot{name}
  listen: [{local}]
  port: {port}
  ike_port: {port + 1}
  control_socket: {tmp}/{name}.sock
  user: root
peers:
  - name: {"b" if name == "a" else "a"}
    remote_address: {peer}
    local_ts: [{lts}]
    remote_ts: [{rts}]
    manual: {{algorithm: {esp}, spi_in: {spi_in}, spi_out: {spi_out}, key_file: {key_file}}}
"""
    )
    return path


class Gateway:
    """A :class:`Daemon` whose TUN is a socket pair and whose ESP socket is on loopback."""

    def __init__(self, config: Path) -> None:
        self.daemon = Daemon(load_config(config))
        self.kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.kernel, ours):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._ours = ours
        self.tun = TunDevice.on_fd(ours.detach(), offload=True)
        (local,) = [
            e for e in self.daemon.core.endpoints() if e[1] == self.daemon.config.gateway.port
        ]
        self.sock = UdpSocket(*local)
        self.daemon.tun = self.tun
        self.daemon.sockets = {self.sock.local: self.sock}

    def mtu(self) -> int:
        return self.daemon.core.mtu()


def super_segment(
    mtu: int, payload: int = SUPER_SEGMENT, seq: int = 1000, flags: int = 0x10, tsval: int = 0
) -> bytes:
    """What a TUN reader with TSO gets for one TCP stream: virtio header + IPv4/TCP GSO packet
    (MSS from the TUN MTU, timestamps option, checksum partial as the kernel leaves it)."""
    tcp_hlen = 20 + len(TCP_OPTIONS)
    mss = mtu - 20 - tcp_hlen
    total = 20 + tcp_hlen + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, min(total, 65535), 1, 0x4000, 64, 6, 0, HOST_A, HOST_B
    )
    pseudo = (int.from_bytes(HOST_A + HOST_B, "big") + 6 + tcp_hlen + payload) % 0xFFFF
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 2000, tcp_hlen << 2, flags, 502, pseudo, 0)
    options = TCP_OPTIONS[:4] + (123456 + tsval).to_bytes(4, "big") + TCP_OPTIONS[8:]
    vnet = VNET_HDR.pack(1, 1, 20 + tcp_hlen, mss, 20, 16)
    return vnet + ip + tcp + options + os.urandom(payload)


def stream(mtu: int, reads: int) -> list[bytes]:
    """``reads`` super-segments as a bulk sender's kernel hands them over: whole MSS
    multiples (tcp_tso_autosize), PSH on each, a new timestamp each."""
    mss = mtu - 20 - 20 - len(TCP_OPTIONS)
    size = (SUPER_SEGMENT // mss) * mss
    return [super_segment(mtu, size, 1000 + i * size, 0x18, i) for i in range(reads)]


def lone_packet() -> bytes:
    """A TCP ACK as a TUN reader gets it: zero virtio header, 52-byte IPv4 packet."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 52, 1, 0x4000, 64, 6, 0, HOST_A, HOST_B)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 2000, 8 << 4, 0x10, 502, 0, 0)
    return bytes(VNET_HDR_LEN) + ip + tcp + TCP_OPTIONS


class Harness:
    def __init__(self, esp: str, lone: bool, stream_reads: int = 0) -> None:
        logs.configure("warning", "json")
        self._tmp = tempfile.TemporaryDirectory(prefix="hotpath-")
        tmp = Path(self._tmp.name)
        port = 20000 + os.getpid() % 20000
        from ipsecd.crypto.registry import ENCRYPTION

        encr = ENCRYPTION[esp]
        keys = (secrets.token_hex(encr.keymat_len), secrets.token_hex(encr.keymat_len))
        self.a = Gateway(_config(tmp, "a", port, esp, keys))
        self.b = Gateway(_config(tmp, "b", port, esp, keys))
        if lone:
            self.reads = [lone_packet()]
        elif stream_reads:
            self.reads = stream(self.a.mtu(), stream_reads)
        else:
            self.reads = [super_segment(self.a.mtu())]
        self.drained = 0

    def burst(self, decrypt: bool, check: bool = False) -> int:
        """One TUN read through gateway A (and B); the packets A sealed.  ``check``:
        B's TUN writes must carry the TCP payload A read, in order."""
        a, b = self.a, self.b
        for read in self.reads:
            a.kernel.send(read)
        sent = a.daemon.core.sad.by_spi[0x2002].outbound.packets
        a.daemon._on_tun()
        if decrypt:
            b.daemon._on_udp(b.sock)
            kernel = b.kernel
            payload = []
            while True:
                try:
                    write = kernel.recv(1 << 17, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                self.drained += len(write)
                if check:  # (the slice is the harness's work, not B's: only when checking)
                    hlen = VNET_HDR_LEN + 20 + (write[VNET_HDR_LEN + 32] >> 4) * 4
                    payload.append(write[hlen:])
            if check:
                hlen = VNET_HDR_LEN + 20 + (self.reads[0][VNET_HDR_LEN + 32] >> 4) * 4
                expected = b"".join(read[hlen:] for read in self.reads)
                assert b"".join(payload) == expected, "B's TUN got other bytes"
        return a.daemon.core.sad.by_spi[0x2002].outbound.packets - sent

    def run(self, bursts: int, decrypt: bool) -> int:
        return sum(self.burst(decrypt) for _ in range(bursts))


def _callgrind(script_args: list[str], keep: Path | None = None) -> int:
    """Instructions executed in the measured bursts of one run of this script under
    callgrind: counting starts at the ``getsid`` call before them and the profile is
    written at the ``getpriority`` call after them (see :func:`measured`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--zero-before=getsid",
            "--dump-before=getpriority",
            sys.executable,
            __file__,
            *script_args,
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if res.returncode:
            raise SystemExit(f"callgrind run failed: {res.stderr[-2000:]}")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit(f"no profile dumped at getpriority: {res.stderr[-2000:]}")
        text = dumps[0].read_text(errors="replace")
        match = re.search(r"^summary: (\d+)", text, re.M) or re.search(
            r"^totals: (\d+)", text, re.M
        )
        if match is None:
            raise SystemExit(f"no summary in {dumps[0]}")
        if keep is not None:
            keep.write_text(text)
        return int(match.group(1))


def measured(harness: Harness, bursts: int, decrypt: bool) -> int:
    """The measured bursts, between two system calls that mark them for callgrind."""
    os.getsid(0)
    packets = harness.run(bursts, decrypt)
    os.getpriority(os.PRIO_PROCESS, 0)
    return packets


def instructions(args: argparse.Namespace) -> None:
    """Instructions per packet for each gateway: the encrypting one alone, then both."""
    base = ["--esp", args.esp, "--bursts", str(args.bursts), "--quiet"]
    base += ["--lone"] if args.lone else []
    base += ["--stream", str(args.stream)] if args.stream else []
    per: dict[str, float] = {}
    for side in ("encrypt", "both"):
        keep = Path(f"{args.keep}.{side}") if args.keep else None
        count = _callgrind([*base, "--side", side], keep)
        per[side] = count / (args.bursts * args.packets_per_burst)
    what = "lone 52-byte ACK" if args.lone else "TCP super-segments"
    what += f", {args.stream} per burst as a stream" if args.stream else ""
    print(
        f"instructions per packet ({args.esp}, {what}, {args.packets_per_burst} packets per"
        f" burst, {args.bursts} bursts): encrypting gateway {per['encrypt']:.0f},"
        f" decrypting gateway {per['both'] - per['encrypt']:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=200)
    ap.add_argument("--esp", default="aes128gcm16")
    ap.add_argument("--side", choices=("both", "encrypt"), default="both")
    ap.add_argument("--lone", action="store_true", help="a lone 52-byte TCP ACK per burst")
    ap.add_argument(
        "--stream",
        type=int,
        default=0,
        metavar="N",
        help="N super-segments per burst of whole MSS multiples, PSH and a new timestamp each",
    )
    ap.add_argument("--instructions", action="store_true", help="callgrind counts per packet")
    ap.add_argument("--keep", metavar="PREFIX", help="--instructions: keep the profiles")
    ap.add_argument("--profile", action="store_true", help="cProfile, sorted by own time")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    harness = Harness(args.esp, args.lone, args.stream)
    decrypt = args.side == "both"
    packets = sum(harness.burst(decrypt, check=decrypt) for _ in range(3))  # warm-up, check
    args.packets_per_burst = packets // 3
    if args.instructions:
        instructions(args)
        return 0
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        packets = harness.run(args.bursts, decrypt)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    packets = measured(harness, args.bursts, decrypt)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not args.quiet:
        who = "both gateways" if decrypt else "gateway A"
        print(
            f"{packets} packets in {args.bursts} bursts: {wall / packets * 1e9:.0f} ns wall,"
            f" {cpu / packets * 1e9:.0f} ns CPU per packet ({who}); {harness.drained} bytes"
            f" written to B's TUN; load average {os.getloadavg()[0]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
