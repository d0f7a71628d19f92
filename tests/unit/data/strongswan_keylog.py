"""Extract the key schedule of one IKE_SA from a strongSwan 6.1 charon log (``ike = 4``).

Used once to produce ``strongswan61_hybrid_keylog.json``; kept to show where the
vector comes from and to redo it::

    python tests/unit/data/strongswan_keylog.py charon.log > strongswan61_hybrid_keylog.json

The log is the initiator's, for ``proposals = aes256gcm16-prfsha384-x25519-ke1_mlkem768``
between two strongSwan 6.1.0 charons (PSK, IDs 10.99.16.1 / 10.99.16.2); the
charons ran in a Debian 13 chroot as described in notes/strongswan-6-chroot.md.
``strongswan61_hybrid_ppk_keylog.json`` adds ``ppk_id = ppk-test``, ``ppk_required = yes``
and the PPK 0x000102...1f (32 bytes) on both sides.
"""

from __future__ import annotations

import json
import re
import sys

DUMP = re.compile(r"^\d+\[(IKE|ENC)\] (?P<name>.+?) => (?P<len>\d+) bytes @")
HEX = re.compile(r"^\d+\[(IKE|ENC)\]\s+\d+: ((?:[0-9A-F]{2} ?)+)")


def dumps(lines: list[str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    i = 0
    while i < len(lines):
        m = DUMP.match(lines[i])
        i += 1
        if not m:
            continue
        want, data = int(m.group("len")), b""
        while len(data) < want and i < len(lines):
            h = HEX.match(lines[i])
            if not h:
                break
            data += bytes.fromhex(h.group(2)[:48].replace(" ", ""))
            i += 1
        out.append((m.group("name").strip(), data[:want]))
    return out


def main(path: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        items = dumps(f.read().splitlines())
    result: dict[str, object] = {}
    seq: dict[str, list[str]] = {}
    for name, data in items:
        seq.setdefault(name, []).append(data.hex())
    for key in (
        "key exchange secret",
        "nonces",
        "SKEYSEED",
        "Sk_d secret",
        "Sk_ei secret",
        "Sk_er secret",
        "Sk_pi secret",
        "Sk_pr secret",
        "IntAuth_A|P",
        "IntAuth_N = prf(Sk_px, data)",
        "octets = message + nonce + prf(Sk_px, IDx') + IntAuth",
        "derive keys using PPK",
    ):
        result[key] = seq.get(key, [])
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
