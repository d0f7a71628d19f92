"""IKEv2 payloads as small frozen dataclasses, with their wire encoding (RFC 7296 §3.2-§3.16).

Every payload class has a ``TYPE`` (its :class:`PayloadType`), ``encode_body()``
(the bytes after the 4-byte generic payload header) and a ``decode_body(body)``
classmethod.  The message layer (:mod:`ipsecd.ike.message`) writes the generic
headers and chains them; it is the only caller of the ``*_body`` methods.

Payload classes (attribute names follow the RFC's field names)::

    SecurityAssociation(proposals: tuple[SaProposal, ...])               §3.3
      SaProposal(number, protocol_id, spi: bytes, transforms)            §3.3.1
      Transform(transform_type, transform_id, key_length=None, other_attributes=())  §3.3.2
      TransformAttribute(attr_type, value: int | bytes)  int = TV, bytes = TLV      §3.3.5
    KeyExchange(group, data)                                              §3.4
    IdentificationInitiator / IdentificationResponder(id_type, data)     §3.5
    Certificate(encoding, data) / CertificateRequest(encoding, data)     §3.6, §3.7
    Authentication(method, data)                                          §3.8
    Nonce(data)                                                           §3.9
    Notify(notify_type, data=b"", protocol_id=0, spi=b"")                 §3.10
    Delete(protocol_id, spis: tuple[int, ...])                            §3.11
    VendorId(data)                                                        §3.12
    TrafficSelectorsInitiator / TrafficSelectorsResponder(selectors)     §3.13
    Encrypted(next_inner, data)              SK: IV | ciphertext | ICV    §3.14
    EncryptedFragment(next_inner, fragment_number, total_fragments, data) RFC 7383 §2.5
    RawPayload(payload_type, data, critical=False)  anything else (CP, EAP, unknown)

Decoding raises :class:`MalformedMessage` (and nothing else) on any length or
field that does not fit; it never trusts a length before checking it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from ipsecd.ike.constants import (
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TsType,
    enum_or_int,
)
from ipsecd.ike.errors import MalformedMessage
from ipsecd.selectors import TrafficSelector

__all__ = [
    "MalformedMessage",
    "Payload",
    "SecurityAssociation",
    "SaProposal",
    "Transform",
    "TransformAttribute",
    "KeyExchange",
    "Identification",
    "IdentificationInitiator",
    "IdentificationResponder",
    "Certificate",
    "CertificateRequest",
    "Authentication",
    "Nonce",
    "Notify",
    "Delete",
    "VendorId",
    "TrafficSelectors",
    "TrafficSelectorsInitiator",
    "TrafficSelectorsResponder",
    "RawSelector",
    "Encrypted",
    "EncryptedFragment",
    "RawPayload",
    "PAYLOAD_CLASSES",
    "identity_from_text",
    "format_identity",
]


class _Reader:
    """Bounded reads over a bytes object; every overrun is a MalformedMessage."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedMessage(
                f"{self.what}: needs {n} more bytes at offset {self.pos}, has {self.remaining}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def rest(self) -> bytes:
        return self.take(self.remaining)


class Payload:
    """Base of every payload class; subclasses are frozen dataclasses."""

    TYPE: ClassVar[int]

    @property
    def payload_type(self) -> int:
        """The Next Payload value announcing this payload (RFC 7296 §3.2)."""
        return self.TYPE

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes) -> Payload:
        raise NotImplementedError


# ---- SA payload (§3.3) -------------------------------------------------------

ATTR_KEY_LENGTH = 14  # RFC 7296 §3.3.5
_AF_TV = 0x8000


@dataclass(frozen=True)
class TransformAttribute:
    """A data attribute (RFC 7296 §3.3.5): an int value is TV (2 bytes), bytes is TLV."""

    attr_type: int
    value: int | bytes

    def encode(self) -> bytes:
        if isinstance(self.value, int):
            return struct.pack("!HH", _AF_TV | self.attr_type, self.value)
        return struct.pack("!HH", self.attr_type, len(self.value)) + self.value


@dataclass(frozen=True)
class Transform:
    """One transform substructure (RFC 7296 §3.3.2).

    ``key_length`` is the Key Length attribute in bits (§3.3.5), None when
    absent; any other attribute lands in ``other_attributes`` (a transform
    carrying an attribute we do not know must not be selected, §3.3.6).
    """

    transform_type: int
    transform_id: int
    key_length: int | None = None
    other_attributes: tuple[TransformAttribute, ...] = ()

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_length is not None:
            attrs += TransformAttribute(ATTR_KEY_LENGTH, self.key_length).encode()
        attrs += b"".join(a.encode() for a in self.other_attributes)
        return (
            struct.pack(
                "!BBHBBH",
                0 if last else 3,
                0,
                8 + len(attrs),
                self.transform_type,
                0,
                self.transform_id,
            )
            + attrs
        )

    @classmethod
    def decode(cls, r: _Reader, where: str) -> tuple[Transform, bool]:
        """Read one transform; returns it and whether it was marked last."""
        last = r.u8()
        r.u8()
        length = r.u16()
        if last not in (0, 3):
            raise MalformedMessage(f"{where}: transform 'last substruc' is {last}, not 0 or 3")
        if length < 8:
            raise MalformedMessage(f"{where}: transform length {length} < 8")
        body = _Reader(r.take(length - 4), where + " transform")
        transform_type = body.u8()
        body.u8()
        transform_id = body.u16()
        key_length: int | None = None
        others: list[TransformAttribute] = []
        while body.remaining:
            af_type = body.u16()
            attr_type = af_type & 0x7FFF
            value: int | bytes = body.u16() if af_type & _AF_TV else body.take(body.u16())
            if attr_type == ATTR_KEY_LENGTH and isinstance(value, int) and key_length is None:
                key_length = value
            else:
                others.append(TransformAttribute(attr_type, value))
        return cls(transform_type, transform_id, key_length, tuple(others)), last == 0


@dataclass(frozen=True)
class SaProposal:
    """One proposal substructure (RFC 7296 §3.3.1).

    ``spi`` is empty in IKE_SA_INIT, 8 bytes for an IKE rekey, 4 bytes for ESP.
    """

    number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def transforms_of(self, transform_type: int) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.transform_type == transform_type)

    def encode(self, last: bool) -> bytes:
        if len(self.transforms) > 255:
            raise ValueError("more than 255 transforms in one proposal")
        body = b"".join(
            t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms)
        )
        return (
            struct.pack(
                "!BBHBBBB",
                0 if last else 2,
                0,
                8 + len(self.spi) + len(body),
                self.number,
                self.protocol_id,
                len(self.spi),
                len(self.transforms),
            )
            + self.spi
            + body
        )

    @classmethod
    def decode(cls, r: _Reader) -> tuple[SaProposal, bool]:
        last = r.u8()
        r.u8()
        length = r.u16()
        if last not in (0, 2):
            raise MalformedMessage(f"SA: proposal 'last substruc' is {last}, not 0 or 2")
        if length < 8:
            raise MalformedMessage(f"SA: proposal length {length} < 8")
        body = _Reader(r.take(length - 4), "SA proposal")
        number = body.u8()
        protocol_id = enum_or_int(ProtocolId, body.u8())
        spi_size = body.u8()
        count = body.u8()
        spi = body.take(spi_size)
        where = f"SA proposal #{number}"
        transforms: list[Transform] = []
        for i in range(count):
            transform, is_last = Transform.decode(body, where)
            transforms.append(transform)
            if is_last != (i == count - 1):
                raise MalformedMessage(f"{where}: 'last' flag disagrees with {count} transforms")
        if body.remaining:
            raise MalformedMessage(f"{where}: {body.remaining} bytes after the transforms")
        return cls(number, protocol_id, spi, tuple(transforms)), last == 0


@dataclass(frozen=True)
class SecurityAssociation(Payload):
    """SA payload (RFC 7296 §3.3): one or more proposals."""

    TYPE: ClassVar[int] = PayloadType.SA
    proposals: tuple[SaProposal, ...]

    def encode_body(self) -> bytes:
        return b"".join(
            p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals)
        )

    @classmethod
    def decode_body(cls, body: bytes) -> SecurityAssociation:
        r = _Reader(body, "SA")
        proposals: list[SaProposal] = []
        if not body:
            raise MalformedMessage("SA payload without proposals")
        while True:
            proposal, last = SaProposal.decode(r)
            proposals.append(proposal)
            if last:
                break
            if not r.remaining:
                raise MalformedMessage("SA: proposal says more follow but the payload ends")
        if r.remaining:
            raise MalformedMessage(f"SA: {r.remaining} bytes after the last proposal")
        return cls(tuple(proposals))


# ---- KE, ID, CERT, CERTREQ, AUTH, Nonce --------------------------------------


@dataclass(frozen=True)
class KeyExchange(Payload):
    """KE payload (RFC 7296 §3.4): Diffie-Hellman group number and public value."""

    TYPE: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> KeyExchange:
        r = _Reader(body, "KE")
        group = r.u16()
        r.u16()
        return cls(group, r.rest())


_ID_FIXED_LEN: dict[int, int] = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16}


@dataclass(frozen=True)
class Identification(Payload):
    """Common part of IDi/IDr (RFC 7296 §3.5)."""

    id_type: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data

    @property
    def auth_octets(self) -> bytes:
        """IDi'/IDr' of §2.15: the payload body without the generic header."""
        return self.encode_body()

    @classmethod
    def decode_body(cls, body: bytes) -> Identification:
        r = _Reader(body, cls.__name__)
        id_type = enum_or_int(IdType, r.u8())
        r.take(3)
        data = r.rest()
        fixed = _ID_FIXED_LEN.get(id_type)
        if fixed is not None and len(data) != fixed:
            raise MalformedMessage(f"{cls.__name__}: {IdType(id_type).name} of {len(data)} bytes")
        return cls(id_type, data)

    def __str__(self) -> str:
        return format_identity(self.id_type, self.data)


@dataclass(frozen=True)
class IdentificationInitiator(Identification):
    TYPE: ClassVar[int] = PayloadType.IDi


@dataclass(frozen=True)
class IdentificationResponder(Identification):
    TYPE: ClassVar[int] = PayloadType.IDr


@dataclass(frozen=True)
class _EncodingAndData(Payload):
    encoding: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!B", self.encoding) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> _EncodingAndData:
        r = _Reader(body, cls.__name__)
        return cls(r.u8(), r.rest())


@dataclass(frozen=True)
class Certificate(_EncodingAndData):
    """CERT payload (RFC 7296 §3.6); kept, not interpreted (ipsecd authenticates by PSK)."""

    TYPE: ClassVar[int] = PayloadType.CERT


@dataclass(frozen=True)
class CertificateRequest(_EncodingAndData):
    """CERTREQ payload (RFC 7296 §3.7): encoding + concatenated CA key hashes; kept."""

    TYPE: ClassVar[int] = PayloadType.CERTREQ


@dataclass(frozen=True)
class Authentication(Payload):
    """AUTH payload (RFC 7296 §3.8)."""

    TYPE: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Authentication:
        r = _Reader(body, "AUTH")
        method = r.u8()
        r.take(3)
        return cls(method, r.rest())


@dataclass(frozen=True)
class Nonce(Payload):
    """Nonce payload (RFC 7296 §3.9).

    The RFC requires 16..256 bytes; encoding enforces it, decoding does not
    (the exchange answers a short nonce with INVALID_SYNTAX instead of
    silently dropping the message).
    """

    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes

    def encode_body(self) -> bytes:
        if not 16 <= len(self.data) <= 256:
            raise ValueError(f"nonce must be 16..256 bytes (RFC 7296 §3.9), not {len(self.data)}")
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Nonce:
        return cls(body)


# ---- Notify, Delete, Vendor ID ------------------------------------------------


@dataclass(frozen=True)
class Notify(Payload):
    """Notify payload (RFC 7296 §3.10).

    ``protocol_id`` and ``spi`` name the CHILD SA a notify is about (e.g.
    REKEY_SA); both are 0/empty for notifies about the IKE SA.
    """

    TYPE: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol_id: int = 0
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.notify_type < 16384

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.protocol_id, len(self.spi), self.notify_type) + (
            self.spi + self.data
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Notify:
        r = _Reader(body, "Notify")
        protocol_id = enum_or_int(ProtocolId, r.u8())
        spi_size = r.u8()
        notify_type = enum_or_int(NotifyType, r.u16())
        spi = r.take(spi_size)
        return cls(notify_type, r.rest(), protocol_id, spi)


@dataclass(frozen=True)
class Delete(Payload):
    """Delete payload (RFC 7296 §3.11).

    SPIs are ints: 4-byte SPIs for ESP/AH; an IKE SA delete has SPI size 0 and
    no SPIs (the SA is the one the message belongs to).
    """

    TYPE: ClassVar[int] = PayloadType.DELETE
    protocol_id: int
    spis: tuple[int, ...] = ()

    @property
    def spi_size(self) -> int:
        return 0 if self.protocol_id == ProtocolId.IKE else 4

    def encode_body(self) -> bytes:
        size = self.spi_size
        return struct.pack("!BBH", self.protocol_id, size, len(self.spis)) + b"".join(
            s.to_bytes(size, "big") for s in self.spis
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Delete:
        r = _Reader(body, "Delete")
        protocol_id = enum_or_int(ProtocolId, r.u8())
        spi_size = r.u8()
        count = r.u16()
        if spi_size == 0 and count:
            raise MalformedMessage("Delete: SPI size 0 with a non-zero SPI count")
        if spi_size != (0 if protocol_id == ProtocolId.IKE else 4):  # §3.11: MUST be 0 or 4
            raise MalformedMessage(f"Delete: SPI size {spi_size} for protocol {protocol_id}")
        if spi_size * count != r.remaining:
            raise MalformedMessage(
                f"Delete: {count} SPIs of {spi_size} bytes do not fill {r.remaining} bytes"
            )
        spis = tuple(int.from_bytes(r.take(spi_size), "big") for _ in range(count))
        return cls(protocol_id, spis)


@dataclass(frozen=True)
class VendorId(Payload):
    """Vendor ID payload (RFC 7296 §3.12): kept so it can be logged, otherwise ignored."""

    TYPE: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> VendorId:
        return cls(body)


# ---- Traffic selectors (§3.13) -----------------------------------------------


@dataclass(frozen=True)
class RawSelector:
    """A traffic selector of a type we do not model (e.g. RFC 4595 FC, RFC 9478 label)."""

    ts_type: int
    protocol: int  # second octet (IP protocol for address ranges, reserved for others)
    data: bytes  # the selector after its 4-byte type/protocol/length header


def _encode_selector(ts: TrafficSelector) -> bytes:
    n = ts.addr_len
    return (
        struct.pack("!BBHHH", ts.ts_type, ts.protocol, 8 + 2 * n, ts.start_port, ts.end_port)
        + ts.start.to_bytes(n, "big")
        + ts.end.to_bytes(n, "big")
    )


@dataclass(frozen=True)
class TrafficSelectors(Payload):
    """Common part of TSi/TSr (RFC 7296 §3.13): selectors as :class:`TrafficSelector`."""

    selectors: tuple[TrafficSelector, ...]
    other: tuple[RawSelector, ...] = ()

    def encode_body(self) -> bytes:
        count = len(self.selectors) + len(self.other)
        out = struct.pack("!B3x", count) + b"".join(_encode_selector(s) for s in self.selectors)
        for raw in self.other:
            out += struct.pack("!BBH", raw.ts_type, raw.protocol, 4 + len(raw.data)) + raw.data
        return out

    @classmethod
    def decode_body(cls, body: bytes) -> TrafficSelectors:
        name = cls.__name__
        r = _Reader(body, name)
        count = r.u8()
        r.take(3)
        if count == 0:
            raise MalformedMessage(f"{name}: no traffic selectors")
        selectors: list[TrafficSelector] = []
        other: list[RawSelector] = []
        for _ in range(count):
            ts_type = r.u8()
            protocol = r.u8()
            length = r.u16()
            if length < 4:
                raise MalformedMessage(f"{name}: selector length {length} < 4")
            sel = _Reader(r.take(length - 4), name)
            if ts_type in (TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE):
                n = 4 if ts_type == TsType.TS_IPV4_ADDR_RANGE else 16
                if length != 8 + 2 * n:
                    raise MalformedMessage(f"{name}: {TsType(ts_type).name} of length {length}")
                start_port, end_port = sel.u16(), sel.u16()
                start = int.from_bytes(sel.take(n), "big")
                end = int.from_bytes(sel.take(n), "big")
                version = 4 if n == 4 else 6
                selectors.append(
                    TrafficSelector(version, start, end, protocol, start_port, end_port)
                )
            else:
                other.append(RawSelector(ts_type, protocol, sel.rest()))
        if r.remaining:
            raise MalformedMessage(f"{name}: {r.remaining} bytes after {count} selectors")
        return cls(tuple(selectors), tuple(other))


@dataclass(frozen=True)
class TrafficSelectorsInitiator(TrafficSelectors):
    TYPE: ClassVar[int] = PayloadType.TSi


@dataclass(frozen=True)
class TrafficSelectorsResponder(TrafficSelectors):
    TYPE: ClassVar[int] = PayloadType.TSr


# ---- Encrypted (§3.14), Encrypted Fragment (RFC 7383 §2.5), raw --------------


@dataclass(frozen=True)
class Encrypted(Payload):
    """SK payload as it sits on the wire: ``data`` = IV | ciphertext | ICV.

    ``next_inner`` is the generic header's Next Payload field: the type of the
    first payload inside (RFC 7296 §3.14).  :mod:`ipsecd.ike.sk` builds and
    opens it.
    """

    TYPE: ClassVar[int] = PayloadType.SK
    next_inner: int
    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Encrypted:  # pragma: no cover - built by message
        return cls(0, body)


@dataclass(frozen=True)
class EncryptedFragment(Payload):
    """SKF payload (RFC 7383 §2.5): one fragment of an SK payload.

    ``next_inner`` is only meaningful in fragment 1; ``data`` = IV | ciphertext | ICV.
    """

    TYPE: ClassVar[int] = PayloadType.SKF
    next_inner: int
    fragment_number: int
    total_fragments: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.fragment_number, self.total_fragments) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> EncryptedFragment:  # pragma: no cover
        return decode_fragment(0, body)


def decode_fragment(next_inner: int, body: bytes) -> EncryptedFragment:
    r = _Reader(body, "SKF")
    number, total = r.u16(), r.u16()
    if number == 0 or total == 0 or number > total:
        raise MalformedMessage(f"SKF: fragment {number} of {total}")
    return EncryptedFragment(next_inner, number, total, r.rest())


@dataclass(frozen=True)
class RawPayload(Payload):
    """A payload kept as bytes: CP, EAP, GSPM, or a type we do not know (RFC 7296 §2.5).

    ``critical`` is the received critical bit; it is sent back as given.
    """

    raw_type: int
    data: bytes
    critical: bool = False

    @property
    def payload_type(self) -> int:
        return self.raw_type

    def encode_body(self) -> bytes:
        return self.data


PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        SecurityAssociation,
        KeyExchange,
        IdentificationInitiator,
        IdentificationResponder,
        Certificate,
        CertificateRequest,
        Authentication,
        Nonce,
        Notify,
        Delete,
        VendorId,
        TrafficSelectorsInitiator,
        TrafficSelectorsResponder,
    )
}

# Types we know but keep raw (their critical bit never makes them "unsupported").
RAW_KNOWN_TYPES = frozenset({PayloadType.CP, PayloadType.EAP, PayloadType.GSPM})


# ---- identities ----------------------------------------------------------------


def identity_from_text(text: str) -> tuple[IdType, bytes]:
    """Config identity -> (ID type, data), strongSwan style (RFC 7296 §3.5).

    ``192.0.2.1`` / ``2001:db8::1`` -> ID_IPV4_ADDR / ID_IPV6_ADDR;
    ``user@example.org`` -> ID_RFC822_ADDR; ``@host`` or ``host.example`` ->
    ID_FQDN (a leading ``@`` is dropped); ``keyid:0a0b`` -> ID_KEY_ID (hex).
    """
    if text.startswith("keyid:"):
        return IdType.ID_KEY_ID, bytes.fromhex(text[6:])
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        kind = IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR
        return kind, addr.packed
    if text.startswith("@"):
        return IdType.ID_FQDN, text[1:].encode()
    if "@" in text:
        return IdType.ID_RFC822_ADDR, text.encode()
    return IdType.ID_FQDN, text.encode()


def format_identity(id_type: int, data: bytes) -> str:
    """An identity for logs: ``192.0.2.1``, ``fqdn:gw.example``, ``keyid:0a0b``."""
    if id_type == IdType.ID_IPV4_ADDR and len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    if id_type == IdType.ID_IPV6_ADDR and len(data) == 16:
        return str(ipaddress.IPv6Address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return data.decode("utf-8", "replace")
    if id_type == IdType.ID_KEY_ID:
        return "keyid:" + data.hex()
    return f"id{int(id_type)}:{data.hex()}"
