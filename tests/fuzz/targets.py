"""Fuzz targets: one function per attack surface, each ``(data: bytes) -> None``.

A target returns normally when the code under test accepted or refused the
input the documented way, and raises when it did anything else: an exception
type the module does not document, or a broken invariant (an ``AssertionError``
from the oracle).  Both are findings.  :data:`TARGETS` lists them for the
atheris runner (``harness.py``), the CI test and the long run.

The contracts checked, target by target:

* ``ike_message`` — :func:`ipsecd.ike.message.parse_header` / ``parse_message`` /
  ``decode``: only :class:`MalformedMessage` (RFC 7296 §2.21.1).
* ``ike_payload`` — every payload class's ``decode_body`` (first byte picks the
  class): only MalformedMessage; SA proposals also go through proposal selection
  and the NO_PROPOSAL_CHOSEN explanation (RFC 7296 §2.7).
* ``ike_sk`` — SK payloads sealed with a real IKE SA key set (RFC 7296 §3.14,
  RFC 5282), so the inner payload chain is what is fuzzed: only MalformedMessage.
* ``ike_skf`` — RFC 7383 fragments sealed with real keys into a
  :class:`Reassembler`: it never raises, and its memory accounting stays exact.
* ``esp`` — :class:`InboundEspSa` with real keys, fuzzed plaintext sealed properly
  and raw packets: the unguarded decapsulation raises nothing, the guarded one and
  the inlined burst path (``open_burst``) agree with it packet for packet.
* ``esp_transport`` — transport-mode framing (RFC 4303 §3.1.1, RFC 3948 §3.1.2):
  only :class:`TransportFramingError`; what splits rebuilds to the same packet.
* ``config`` — YAML text -> :class:`Config` or :class:`ConfigError`, nothing else.
* ``control`` — :func:`ipsecd.daemon.control.parse_request`: a dict or
  ``RequestRefused``; the control socket's connection handler: one JSON object
  answer per line, nothing escapes.

Every decoded payload also goes through what the daemon does with one besides
acting on it: ``repr`` and the log formatting of identities and traffic
selectors, and re-encoding (a decoded chain encodes, or encode refuses with its
documented ValueError, and decodes back to the same payloads).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecd.config import Config, ConfigError, parse_config
from ipsecd.crypto.proposals import parse_proposal
from ipsecd.esp.counters import DropReason
from ipsecd.esp.inner import next_header_for
from ipsecd.esp.transport import (
    IPPROTO_AH,
    IPPROTO_ESP,
    TransportFramingError,
    fix_transport_checksum,
    locate_ipsec_header,
    split_for_transport,
)
from ipsecd.esp.udp_encap import classify
from ipsecd.ike import sk as sk_mod
from ipsecd.ike.constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType
from ipsecd.ike.fragments import SKF_HEADER_LEN, Reassembled, Reassembler, fragment_number
from ipsecd.ike.message import (
    MalformedMessage,
    decode,
    encode_payload_chain,
    parse_header,
    parse_inner_chain,
    parse_message,
)
from ipsecd.ike.payloads import (
    PAYLOAD_CLASSES,
    Encrypted,
    EncryptedFragment,
    Identification,
    Payload,
    SecurityAssociation,
    TrafficSelectors,
)
from ipsecd.ike.proposal_codec import describe, explain_no_match, select, to_proposal
from ipsecd.selectors import format_selectors
from tests.fuzz import keys as K

# ---- shared oracle: what the daemon does with a decoded payload ---------------------

_OURS = (
    parse_proposal("aes256gcm16-aes128gcm16-prfsha256-x25519-ecp256", "ike"),
    parse_proposal("aes128-sha256-modp2048", "ike"),
    parse_proposal("aes256gcm16-esn-noesn", "esp"),
    parse_proposal("aes128-sha256-x25519", "esp"),
)


def _check_sa(sa: SecurityAssociation) -> None:
    for proposal in sa.proposals:
        describe(proposal)
        str(to_proposal(proposal, "ike"))
    for protocol in ("ike", "esp"):
        for ignore_ke in (False, True):
            if select(sa.proposals, _OURS, protocol, ignore_ke=ignore_ke) is None:
                explain_no_match(sa.proposals, _OURS, protocol, ignore_ke)


def check_payloads(payloads: Sequence[Payload]) -> None:
    """Log formatting, proposal handling and an encode/decode round trip."""
    for p in payloads:
        repr(p)
        if isinstance(p, TrafficSelectors):
            format_selectors(p.selectors)
        elif isinstance(p, Identification):
            str(p)
        elif isinstance(p, SecurityAssociation):
            _check_sa(p)
    clear = [p for p in payloads if not isinstance(p, Encrypted | EncryptedFragment)]
    try:
        encoded = encode_payload_chain(clear)
    except ValueError:
        return  # encode refuses what we would never send (nonce length, > 64 KiB)
    first = clear[0].payload_type if clear else PayloadType.NONE
    again, _ = parse_inner_chain(encoded, first)
    assert tuple(again) == tuple(clear), f"round trip changed {clear!r} into {again!r}"


# ---- IKE: clear messages and single payloads ----------------------------------------


def ike_message(data: bytes) -> None:
    fragment_number(data)
    try:
        parse_header(data)
        message = parse_message(data)
    except MalformedMessage:
        return
    check_payloads(message.payloads)
    try:
        decode(data)
    except MalformedMessage:
        return


_PAYLOAD_CLASSES = sorted(PAYLOAD_CLASSES.values(), key=lambda c: c.TYPE)


def ike_payload(data: bytes) -> None:
    """First byte: the payload class (by index, modulo); the rest is its body."""
    if not data:
        return
    cls = _PAYLOAD_CLASSES[data[0] % len(_PAYLOAD_CLASSES)]
    try:
        payload = cls.decode_body(data[1:])
    except MalformedMessage:
        return
    check_payloads([payload])


# ---- IKE: SK payloads with valid keys ------------------------------------------------

_EXCHANGES = (35, 36, 37, 43, 34, 38, 0, 255)


def ike_sk(data: bytes) -> None:
    """``ctrl | first inner payload type | inner payload chain``.

    ctrl bits: 0-1 key set (:data:`keys.IKE_SUITES`), 2 sender is the original
    initiator, 3 response, 4 the chain is the whole plaintext (no valid padding
    added), 5-7 exchange type.  The chain is sealed properly, so ICV checks pass
    and the inner decoder sees the fuzzed bytes.
    """
    if len(data) < 2:
        return
    ctrl, first, chain = data[0], data[1], data[2:]
    ike_keys = K.IKE_KEYSETS[ctrl & 3]
    initiator = bool(ctrl & 4)
    keys = ike_keys.sk_keys(initiator)
    if ctrl & 16:
        plaintext = chain + bytes(-len(chain) % keys.block_size)
    else:
        plaintext = sk_mod.pad(keys, chain)
    sk_len = GENERIC_PAYLOAD_HEADER_LEN + sk_mod.body_length(keys, len(plaintext))
    if IKE_HEADER_LEN + sk_len > 0xFFFF:
        return
    flags = (0x08 if initiator else 0) | (0x20 if ctrl & 8 else 0)
    header = K.ike_header(_EXCHANGES[ctrl >> 5], flags, 1, PayloadType.SK, IKE_HEADER_LEN + sk_len)
    prefix = header + struct.pack("!BBH", first, 0, sk_len)
    datagram = prefix + K.seal_sk(keys, prefix, plaintext, ctrl)
    try:
        message = decode(datagram, ike_keys)
    except MalformedMessage:
        return
    assert message.encrypted
    check_payloads(message.payloads)


# ---- IKE: fragments (RFC 7383) with valid keys ---------------------------------------

_REASSEMBLY_LIMIT = 4096  # small, so the fuzzer reaches the size limit too


def _fragment_datagram(
    keys: sk_mod.SkKeys, flags: int, message_id: int, record: bytes, iv_seed: int
) -> bytes:
    number, total, next_inner = struct.unpack_from("!BBB", record)
    chunk = record[3:]
    plaintext = sk_mod.pad(keys, chunk)
    skf_len = SKF_HEADER_LEN + sk_mod.body_length(keys, len(plaintext))
    header = K.ike_header(35, flags, message_id, PayloadType.SKF, IKE_HEADER_LEN + skf_len)
    prefix = header + struct.pack("!BBHHH", next_inner, 0, skf_len, number, total)
    return prefix + K.seal_sk(keys, prefix, plaintext, iv_seed)


def _records(data: bytes, limit: int) -> list[bytes]:
    """Split ``len(1) | bytes`` records (at most ``limit``)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data) and len(out) < limit:
        n = data[pos]
        out.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return out


def ike_skf(data: bytes) -> None:
    """``ctrl | records``; each record ``len | number | total | next_inner | chunk``.

    ctrl bits: 0-1 key set, 2 sender is the original initiator, 3 response,
    4 records are raw datagrams instead of sealed fragments, 5 a second message
    id for the odd records, 6 let the clock pass the reassembly timeout halfway.
    """
    if not data:
        return
    ctrl = data[0]
    keys = K.IKE_KEYSETS[ctrl & 3].sk_keys(bool(ctrl & 4))
    flags = (0x08 if ctrl & 4 else 0) | (0x20 if ctrl & 8 else 0)
    counters: dict[str, int] = {}
    reassembler = Reassembler(counters, max_fragments=16, max_size=_REASSEMBLY_LIMIT)
    budget = reassembler.budget
    records = _records(data[1:], 24)
    now = 100.0
    for i, record in enumerate(records):
        if ctrl & 64 and i == len(records) // 2:
            now += 31.0
            reassembler.expire(now)
        if ctrl & 16:
            datagram = record
        elif len(record) < 3:
            continue
        else:
            message_id = 2 if ctrl & 32 and i % 2 else 1
            datagram = _fragment_datagram(keys, flags, message_id, record, i)
        result = reassembler.add(datagram, keys, now)
        assert budget.used == reassembler.buffered, (budget.used, reassembler.sets)
        assert reassembler.buffered <= 2 * _REASSEMBLY_LIMIT
        if isinstance(result, Reassembled):
            assert all(isinstance(p, Payload) for p in result.payloads)
            check_payloads([p for p in result.payloads if isinstance(p, Payload)])
    reassembler.clear()
    assert budget.used == 0 and not reassembler.sets


# ---- ESP -------------------------------------------------------------------------------


def _esp_packets(ctrl: int, data: bytes) -> list[bytes]:
    """Records ``seq_hi(1) | seq_lo(4) | len(2) | bytes`` -> ESP packets (at most 8)."""
    suite, esn = ctrl & 3, bool(ctrl & 4)
    packets: list[bytes] = []
    pos = 0
    while pos + 7 <= len(data) and len(packets) < 8:
        hi, lo, n = struct.unpack_from("!BIH", data, pos)
        body = data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if ctrl & 16:  # raw: the bytes are the packet; hi bit 0 puts our SPI in front
            packets.append(struct.pack("!I", K.ESP_SPI) + body if hi & 1 else body)
        else:
            seq = (hi << 32 | lo) if esn else lo
            packets.append(K.seal_esp(suite, esn, seq, body))
    return packets


def _window(sa: Any) -> tuple[int, int]:
    return sa.replay.top, sa.replay._bitmap


def esp(data: bytes) -> None:
    """``ctrl | records``: see :func:`_esp_packets`.

    ctrl bits: 0-1 ESP transform (:data:`keys.ESP_SUITES`), 2 ESN, 3 traffic
    selectors on the SA, 4 raw packets instead of sealed plaintext, 5 one packet
    built by :class:`OutboundEspSa` from the first record goes first.
    """
    if not data:
        return
    ctrl = data[0]
    suite, esn, selectors = ctrl & 3, bool(ctrl & 4), bool(ctrl & 8)
    packets = _esp_packets(ctrl, data[1:])
    built: bytes | None = None
    inner = b""
    if ctrl & 32 and len(data) >= 8:
        inner = data[8 : 8 + struct.unpack_from("!H", data, 6)[0]]
        built = K.outbound_esp(suite, esn).encapsulate(inner, next_header_for(inner) or 4)
        packets.insert(0, built)
    for p in packets:
        classify(p)

    # The unguarded body: decapsulate() turns any exception into a MALFORMED drop,
    # which would hide a crash from the fuzzer.
    plain = K.inbound_esp(suite, esn, selectors)
    results = [plain._decapsulate(p) for p in packets]
    if built is not None and not selectors:
        assert results[0] == (next_header_for(inner) or 4, inner), results[0]

    guarded = K.inbound_esp(suite, esn, selectors)
    assert [guarded.decapsulate(p) for p in packets] == results
    assert guarded.drops == plain.drops and _window(guarded) == _window(plain)

    burst = K.inbound_esp(suite, esn, selectors)
    out: list[bytes] = []
    delivered = burst.open_burst(packets, out)
    expected = [r[1] for r in results if r is not None]
    assert out == expected and delivered == len(expected), (out, expected)
    assert _window(burst) == _window(plain), (_window(burst), _window(plain))
    assert (burst.packets, burst.bytes) == (plain.packets, plain.bytes)
    # open_burst checks the length before the SPI; decapsulate the other way round.
    a, b = dict(burst.drops), dict(plain.drops)
    for d in (a, b):
        d[DropReason.TOO_SHORT] += d.pop(DropReason.UNKNOWN_SPI)
    assert a == b, (burst.drops, plain.drops)


# ---- ESP/AH transport mode framing ------------------------------------------------------


def esp_transport(data: bytes) -> None:
    """``ctrl | IP packet``: the inbound and outbound transport-mode framing.

    Inbound as the data plane does it: find ESP/AH, then rebuild the packet from
    its front and the opened payload (here: the bytes after the header, with the
    next header from ctrl bits 2-7 mapped onto TCP, UDP or other) and fix its
    TCP/UDP checksum, with original addresses (ctrl bit 0; bit 1 changes the
    source like a NAT) or by recomputing it.  Outbound: split a host's packet.
    """
    if not data:
        return
    ctrl, packet = data[0], data[1:]
    upper = (6, 17, 58, 1)[(ctrl >> 2) & 3]
    for protocol in (IPPROTO_ESP, IPPROTO_AH):
        try:
            front, offset = locate_ipsec_header(packet, protocol)
        except TransportFramingError:
            continue
        assert front.header == packet[:offset] and front.next_header == protocol
        try:
            rebuilt = front.build(upper, packet[offset:])
        except TransportFramingError:
            continue
        assert len(rebuilt) == len(packet)
        src, dst = front.source, front.destination
        if ctrl & 1:
            nat = bytes([src[0] ^ (ctrl & 2)]) + src[1:]
            fixed = fix_transport_checksum(rebuilt, nat, dst)
        else:
            fixed = fix_transport_checksum(rebuilt)
        assert len(fixed) == len(rebuilt)
    try:
        front, next_header, payload = split_for_transport(packet)
    except TransportFramingError:
        return
    assert front.header + payload == packet and front.next_header == next_header
    again = split_for_transport(front.build(next_header, payload))
    assert again[1:] == (next_header, payload)


# ---- config --------------------------------------------------------------------------

_CONFIG_DIR: Path | None = None


def _config_files() -> Path:
    """PSK and key files the seeds name (relative paths resolve next to the config).

    Made once per process, in a directory removed at exit (libFuzzer's exit skips
    that: the CI test and run_long.py put it in their own scratch directory through
    ``IPSECD_FUZZ_TMP``).
    """
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        scratch = os.environ.get("IPSECD_FUZZ_TMP")
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="ipsecd-fuzz-config-", dir=scratch))
        atexit.register(shutil.rmtree, _CONFIG_DIR, True)
        psk = _CONFIG_DIR / "site.psk"
        psk.write_text("0x" + "5a" * 32 + "\n")
        os.chmod(psk, 0o600)
        keys = _CONFIG_DIR / "site.keys"
        src = Path(__file__).resolve().parents[2] / "etc" / "site.keys.example"
        keys.write_text(src.read_text() if src.exists() else "")
        os.chmod(keys, 0o600)
    return _CONFIG_DIR / "fuzz.yaml"


def config(data: bytes) -> None:
    """YAML text (undecodable bytes kept as surrogates, which YAML refuses)."""
    path = _config_files()
    text = data.decode("utf-8", "surrogateescape")
    try:
        result = parse_config(text, path)
    except ConfigError as exc:
        str(exc)
        return
    assert isinstance(result, Config)


# ---- control protocol -------------------------------------------------------------------

# The one import of the control protocol: the request parser and the connection
# handler that reads lines, applies the size limit and answers (one JSON per line).
from ipsecd.daemon.control import (  # noqa: E402
    MAX_REQUEST,
    ControlServer,
    RequestRefused,
    parse_request,
)


class _QuietLog:
    """Refusals are logged as warnings; a fuzzer makes millions of them."""

    def warning(self, *args: object, **kwargs: object) -> None:
        return None

    def exception(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the control handler hit an internal error")


async def _daemon_like_handler(request: dict[str, Any]) -> dict[str, Any]:
    """What :meth:`Daemon.handle_request` reads from a request, without a daemon."""
    cmd = request.get("cmd")
    if cmd == "log-level":
        str(request.get("level"))
        return {"ok": True}
    if cmd in ("up", "down", "rekey"):
        peer = str(request.get("peer"))
        bool(request.get("ike"))
        return {"ok": False, "error": f"no IKE peer named {peer!r}"}
    if cmd in ("status", "reload"):
        return {"ok": True}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


class _Writer:
    """The part of asyncio.StreamWriter the connection handler uses."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


_LOOP = asyncio.new_event_loop()
_SERVER = ControlServer(Path("/nonexistent/ipsecd-fuzz.sock"), _daemon_like_handler)
_SERVER.log = _QuietLog()


async def _serve(data: bytes) -> _Writer:
    reader = asyncio.StreamReader(limit=MAX_REQUEST + 1)  # as ControlServer.start
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    await _SERVER._client(reader, writer)  # type: ignore[arg-type]  # duck-typed StreamWriter
    return writer


def control(data: bytes) -> None:
    """Bytes as they arrive on one control connection: each line through the parser,
    then all of them through the connection handler."""
    for line in data.split(b"\n"):
        try:
            request = parse_request(line)
        except RequestRefused:
            continue
        assert isinstance(request, dict)
    writer = _LOOP.run_until_complete(_serve(data))
    assert writer.closed
    lines = bytes(writer.data).split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 <= data.count(b"\n") + 1
    for line in lines[:-1]:
        answer = json.loads(line)
        assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer


# ---- the list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    max_len: int  # libFuzzer -max_len
    instrument: tuple[str, ...] = ("ipsecd",)  # module prefixes atheris instruments


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("ike_message", ike_message, 4096),
        Target("ike_payload", ike_payload, 1024),
        Target("ike_sk", ike_sk, 2048),
        Target("ike_skf", ike_skf, 2048),
        Target("esp", esp, 2048),
        Target("esp_transport", esp_transport, 2048),
        Target("config", config, 8192),
        Target("control", control, 512),
    )
}
