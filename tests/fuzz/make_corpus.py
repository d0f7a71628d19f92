"""Write the seed corpus under tests/fuzz/corpus/<target>/ from real traffic and files.

    PYTHONPATH=$PWD python -m tests.fuzz.make_corpus

* IKE: every datagram of an in-process IKE pair (tests/unit/ike_pair_support.py)
  going through IKE_SA_INIT, IKE_AUTH (fragmented and not), CHILD_SA and IKE SA
  rekeys, DPD and delete, with AEAD and CBC suites; their decrypted payloads seed
  the payload, SK and fragment targets in those targets' input formats.
* ESP: real IPv4/IPv6 packets with valid trailers for every transform, ESN on/off.
* config: etc/*.yaml (secret file paths pointed at the files the target creates)
  and the YAML the IKE pair writes.
* control: the requests ipsecctl sends.

File names are content hashes.  The IKE pair draws fresh SPIs, nonces and keys on
every run, so a second run adds new IKE captures: give the targets to regenerate
(``python -m tests.fuzz.make_corpus esp config``), or empty corpus/ first.
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from ipsecd.ike import payloads as pl
from ipsecd.ike.message import encode_payload_chain
from tests.fuzz import keys as K
from tests.fuzz.targets import _PAYLOAD_CLASSES
from tests.unit.ike_pair_support import IkePair, build_config, ipv4_packet, side_a, side_b

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
REPO = ROOT.parents[1]


def save(target: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


# ---- IKE -------------------------------------------------------------------------------


def _ike_traffic(tmp: Path, label: str, **sides: Any) -> tuple[list[bytes], list[list[Any]]]:
    a, b = side_a(**sides.get("a", {})), side_b(**sides.get("b", {}))
    pair = IkePair(tmp / label, a, b, start=False)
    pair.record_cleartext()
    pair.a.start(pair.now)
    pair.pump()
    pair.a.rekey("b", pair.now)
    pair.pump()
    pair.a.rekey_ike("b", pair.now)
    pair.pump()
    pair.advance(40.0)  # DPD (default 30 s)
    pair.a.terminate("b", pair.now)
    pair.pump()
    datagrams = [s.data for s in pair.net.log if not s.keepalive]
    return datagrams, [c.payloads for c in pair.cleartext]


def ike_seeds(tmp: Path) -> None:
    runs: dict[str, dict[str, dict[str, Any]]] = {
        "aead": {},
        "cbc": {
            "a": {"ike": ("aes128-sha256-modp2048",), "esp": ("aes128-sha256-esn",)},
            "b": {"ike": ("aes128-sha256-modp2048",), "esp": ("aes128-sha256-esn",)},
        },
        "frag": {
            "a": {"gateway_fragment_size": 160},
            "b": {"fragment_size": 160},
        },
    }
    chains: list[list[Any]] = []
    for label, sides in runs.items():
        datagrams, cleartext = _ike_traffic(tmp, label, **sides)
        for d in datagrams:
            save("ike_message", d)
        chains += cleartext
    seen: set[bytes] = set()
    for payloads in chains:
        clear = [p for p in payloads if not isinstance(p, pl.Encrypted | pl.EncryptedFragment)]
        if not clear:
            continue
        chain = encode_payload_chain(clear)
        if chain in seen:
            continue
        seen.add(chain)
        first = clear[0].payload_type
        for p in clear:
            if type(p) in _PAYLOAD_CLASSES:
                save("ike_payload", bytes([_PAYLOAD_CLASSES.index(type(p))]) + p.encode_body())
        # ike_sk: key set 0..3, initiator bit, exchange IKE_AUTH (0 in bits 5-7).
        for ctrl in (0x04, 0x01 | 0x08, 0x22, 0x47):
            save("ike_sk", bytes([ctrl, first]) + chain)
        # ike_skf: the chain in 1-3 fragments.
        for pieces in (1, 2, 3):
            size = -(-len(chain) // pieces)
            parts = [chain[i : i + size] for i in range(0, len(chain), size)]
            if len(parts) != pieces or size + 3 > 255:
                continue
            out = bytearray([0x04 | (pieces - 1)])
            for n, part in enumerate(parts, 1):
                record = struct.pack("!BBB", n, pieces, first if n == 1 else 0) + part
                out += bytes([len(record)]) + record
            save("ike_skf", bytes(out))
    # A message with an unknown critical payload, and one of every payload class.
    save("ike_sk", bytes([0x04, 200]) + struct.pack("!BBH", 0, 0x80, 8) + b"\0" * 4)


# ---- ESP -------------------------------------------------------------------------------


def _trailer(inner: bytes, next_header: int, align: int) -> bytes:
    pad = -(len(inner) + 2) % align
    return inner + bytes(range(1, pad + 1)) + bytes([pad, next_header])


def esp_seeds() -> None:
    v4 = ipv4_packet("10.2.0.5", "10.1.0.7")
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 253, 64]) + (
        bytes.fromhex("fd020000000000000000000000000005")
        + bytes.fromhex("fd010000000000000000000000000007")
        + b"payload!"
    )
    for suite in range(len(K.ESP_SUITES)):
        align = 16 if K.ESP_SUITES[suite][1] else 4
        for esn in (False, True):
            for selectors in (False, True):
                ctrl = suite | (4 if esn else 0) | (8 if selectors else 0)
                out = bytearray([ctrl])
                for seq, (inner, nh) in enumerate(((v4, 4), (v6, 41), (b"", 59), (v4, 4)), 1):
                    body = _trailer(inner, nh, align)
                    out += struct.pack("!BIH", 0, seq if seq != 4 else 1, len(body)) + body
                save("esp", bytes(out))
                body = _trailer(v4, 4, align)
                save("esp", bytes([ctrl | 32]) + struct.pack("!BIH", 0, 1, len(v4)) + v4)
    # Raw packets: a sealed packet as bytes, and a short one.
    packet = K.seal_esp(0, False, 7, _trailer(v4, 4, 4))
    save("esp", bytes([16]) + struct.pack("!BIH", 0, 0, len(packet)) + packet)
    save("esp", bytes([16]) + struct.pack("!BIH", 1, 0, 4) + b"\0\0\0\x01")


def transport_seeds() -> None:
    """Host packets and transport-mode ESP/AH packets (scapy builds the IP layers)."""
    from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert
    from scapy.layers.inet6 import (
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.packet import Raw

    esp = Raw(struct.pack("!II", K.ESP_SPI, 1) + bytes(40))
    ah = Raw(struct.pack("!BBHII", 6, 4, 0, K.ESP_SPI, 1) + bytes(12) + bytes(20))
    a4, b4, a6, b6 = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"
    packets = [
        IP(src=a4, dst=b4, proto=50) / esp,
        IP(src=a4, dst=b4, proto=51, options=[IPOption_Router_Alert()]) / ah,
        IPv6(src=a6, dst=b6, nh=50) / esp,
        IPv6(src=a6, dst=b6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(nh=51) / ah,
        IPv6(src=a6, dst=b6) / IPv6ExtHdrDestOpt(nh=50) / esp,
        IP(src=a4, dst=b4) / UDP(sport=500, dport=4500) / Raw(b"hello"),
        IP(src=a4, dst=b4) / TCP(sport=22, dport=40000, flags="PA") / Raw(b"ssh"),
        IPv6(src=a6, dst=b6) / UDP(sport=53, dport=53) / Raw(b"dns"),
        IPv6(src=a6, dst=b6) / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(),
    ]
    for n, packet in enumerate(packets):
        save("esp_transport", bytes([n % 16]) + bytes(packet))


# ---- config and control ----------------------------------------------------------------


def config_seeds(tmp: Path) -> None:
    for path in sorted((REPO / "etc").glob("*.yaml")):
        text = path.read_text()
        text = re.sub(r"psk_file: \S+", "psk_file: site.psk", text)
        text = re.sub(r"key_file: \S+", "key_file: site.keys", text)
        save("config", text.encode())
    for label, side in (("a", side_a()), ("b", side_b(fragmentation="no", dpd_delay="10s"))):
        text = side.yaml(Path("site.psk"))
        save("config", text.encode())
        build_config(side, tmp / "cfg", label)  # the seed is a valid config


def control_seeds() -> None:
    for request in (
        b'{"cmd": "status"}\n',
        b'{"cmd": "up", "peer": "b"}\n{"cmd": "down", "peer": "b"}\n',
        b'{"cmd": "rekey", "peer": "b", "ike": true}\n',
        b'{"cmd": "log-level", "level": "debug"}\n{"cmd": "reload"}\n',
        b'[1, 2]\n"x"\n{"cmd": 3}\n',
    ):
        save("control", request)


def main(argv: list[str]) -> None:
    wanted = set(argv) or {"ike", "esp", "esp_transport", "config", "control"}
    with tempfile.TemporaryDirectory() as tmp:
        if "ike" in wanted:
            ike_seeds(Path(tmp))
        if "esp" in wanted:
            esp_seeds()
        if "esp_transport" in wanted:
            transport_seeds()
        if "config" in wanted:
            config_seeds(Path(tmp))
        if "control" in wanted:
            control_seeds()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    count = sum(1 for f in CORPUS.rglob("*") if f.is_file())
    print(f"{count} files, {total} bytes under {CORPUS.relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv[1:])
