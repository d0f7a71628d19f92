"""IKEv2 messages: header, payload chains, SK protection (RFC 7296 §3.1, §3.2, §3.14).

Sans-I/O.  The API::

    parse_header(data) -> Header                    # 28-byte header only, for dispatch
    parse_message(data) -> Message                  # whole message, SK left encrypted
    decrypt(message, keys, sender_is_initiator=None) -> Message   # SK opened, ICV checked
    decode(data, keys=None, sender_is_initiator=None) -> Message  # parse (+ decrypt if keys)
    encode(message, keys=None, sender_is_initiator=None) -> bytes # (+ SK if keys)
    Message.encode(keys=None) -> bytes

``keys`` is either an :class:`ipsecd.ike.sk.SkKeys` for the one direction or
anything with a ``sk_keys(sender_is_initiator: bool) -> SkKeys`` method (the
:class:`ipsecd.ike.keys.IkeKeys` of an IKE SA).  ``sender_is_initiator``
defaults to the message's I flag (§3.1: set by the original initiator).

Errors: every problem with the bytes raises :class:`MalformedMessage`
(``reason`` says what); a bad ICV raises its subclass
:class:`~ipsecd.ike.sk.IntegrityCheckFailed`.  An unknown payload with the
critical bit set (§2.5) is not an error of :func:`parse_message`: the message
comes back with ``unsupported_critical`` = that payload type so the caller can
answer UNSUPPORTED_CRITICAL_PAYLOAD; :func:`decode` raises
:class:`~ipsecd.ike.errors.UnsupportedCriticalPayload` (a MalformedMessage) for it
instead.

``Message.raw`` keeps the exact bytes a message was parsed from: the AUTH
computation needs the first message as sent (§2.15 RealMessage1/2).  A
decrypted message also keeps ``sk_prefix`` (the bytes from the IKE header to
the end of the SK payload header, as if it had not been fragmented) and
``inner`` (the decrypted payloads, no IV, padding or ICV): RFC 9242 §3.3.2
authenticates IKE_INTERMEDIATE messages by exactly these octets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol, TypeVar

from ipsecd.ike import sk as _sk
from ipsecd.ike.constants import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    PayloadType,
    enum_or_int,
)
from ipsecd.ike.errors import MalformedMessage, UnsupportedCriticalPayload
from ipsecd.ike.payloads import (
    PAYLOAD_CLASSES,
    RAW_KNOWN_TYPES,
    Encrypted,
    EncryptedFragment,
    Notify,
    Payload,
    RawPayload,
    decode_fragment,
)
from ipsecd.ike.sk import IntegrityCheckFailed, SkKeys

__all__ = [
    "Header",
    "Message",
    "MalformedMessage",
    "IntegrityCheckFailed",
    "UnsupportedCriticalPayload",
    "parse_header",
    "parse_message",
    "decrypt",
    "decode",
    "encode",
    "encode_payload_chain",
    "parse_inner_chain",
    "PayloadHeader",
    "walk_chain",
]

P = TypeVar("P", bound=Payload)
_CRITICAL = 0x80
_INITIATOR = int(HeaderFlag.INITIATOR)
_RESPONSE = int(HeaderFlag.RESPONSE)
_VERSION = int(HeaderFlag.VERSION)


@dataclass(frozen=True)
class Header:
    """The fixed IKE header (RFC 7296 §3.1)."""

    spi_i: int
    spi_r: int
    next_payload: int
    major_version: int
    minor_version: int
    exchange_type: int
    flags: int
    message_id: int
    length: int

    # The flags as plain ints: ``int & IntFlag`` builds an IntFlag through enum's
    # machinery (some 2 us), and every datagram of a flood asks these several times.
    @property
    def initiator(self) -> bool:
        """I flag: sent by the original initiator of the IKE SA."""
        return bool(self.flags & _INITIATOR)

    @property
    def response(self) -> bool:
        return bool(self.flags & _RESPONSE)

    @property
    def version_flag(self) -> bool:
        return bool(self.flags & _VERSION)

    def encode(self) -> bytes:
        return struct.pack(
            "!QQBBBBII",
            self.spi_i,
            self.spi_r,
            self.next_payload,
            (self.major_version << 4) | self.minor_version,
            self.exchange_type,
            self.flags,
            self.message_id,
            self.length,
        )


def parse_header(data: bytes | memoryview) -> Header:
    """Parse the 28-byte IKE header and check the length field against ``len(data)``.

    The major version is not checked here (the caller may want to answer
    INVALID_MAJOR_VERSION, §2.5); :func:`parse_message` rejects anything but 2.
    """
    if len(data) < IKE_HEADER_LEN:
        raise MalformedMessage(f"{len(data)} bytes is shorter than the IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = struct.unpack_from(
        "!QQBBBBII", data
    )
    if length != len(data):
        raise MalformedMessage(f"IKE header length {length} but the datagram has {len(data)}")
    return Header(
        spi_i,
        spi_r,
        next_payload,
        version >> 4,
        version & 0x0F,
        enum_or_int(ExchangeType, exchange),
        flags,
        message_id,
        length,
    )


@dataclass(frozen=True)
class Message:
    """A decoded or to-be-encoded IKE message (RFC 7296 §3.1).

    ``payloads`` are in wire order.  After :func:`parse_message` an encrypted
    message ends with an :class:`Encrypted` (or :class:`EncryptedFragment`)
    payload; after :func:`decrypt`/:func:`decode` the payloads are the ones
    from inside SK and ``encrypted`` is True.
    """

    spi_i: int
    spi_r: int
    exchange_type: int
    message_id: int
    initiator: bool = False
    response: bool = False
    payloads: Sequence[Payload] = ()
    version_flag: bool = False
    unsupported_critical: int | None = None
    encrypted: bool = False
    raw: bytes = field(default=b"", repr=False, compare=False)
    sk_prefix: bytes = field(default=b"", repr=False, compare=False)  # IntAuth A (RFC 9242)
    inner: bytes = field(default=b"", repr=False, compare=False)  # IntAuth P (RFC 9242)

    def __post_init__(self) -> None:
        if not isinstance(self.payloads, tuple):
            object.__setattr__(self, "payloads", tuple(self.payloads))

    @classmethod
    def from_header(
        cls,
        header: Header,
        payloads: Sequence[Payload],
        *,
        unsupported_critical: int | None = None,
        encrypted: bool = False,
        raw: bytes = b"",
        sk_prefix: bytes = b"",
        inner: bytes = b"",
    ) -> Message:
        """The message a parsed header announces, with ``payloads`` (RFC 7296 §3.1)."""
        return cls(
            spi_i=header.spi_i,
            spi_r=header.spi_r,
            exchange_type=header.exchange_type,
            message_id=header.message_id,
            initiator=header.initiator,
            response=header.response,
            payloads=tuple(payloads),
            version_flag=header.version_flag,
            unsupported_critical=unsupported_critical,
            encrypted=encrypted,
            raw=raw,
            sk_prefix=sk_prefix,
            inner=inner,
        )

    @property
    def flags(self) -> int:
        return (
            (HeaderFlag.INITIATOR if self.initiator else 0)
            | (HeaderFlag.RESPONSE if self.response else 0)
            | (HeaderFlag.VERSION if self.version_flag else 0)
        )

    def find(self, cls: type[P]) -> P | None:
        """The first payload of class ``cls``, or None."""
        return next((p for p in self.payloads if isinstance(p, cls)), None)

    def find_all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notifies(self, notify_type: int | None = None) -> list[Notify]:
        return [
            p
            for p in self.payloads
            if isinstance(p, Notify) and (notify_type is None or p.notify_type == notify_type)
        ]

    def notify(self, notify_type: int) -> Notify | None:
        """The first Notify of ``notify_type``, or None."""
        return next(iter(self.notifies(notify_type)), None)

    def error_notify(self) -> Notify | None:
        """The first error notify (types below 16384, RFC 7296 §3.10.1), or None."""
        return next((n for n in self.notifies() if n.is_error), None)

    def encode(self, keys: Keys | None = None, sender_is_initiator: bool | None = None) -> bytes:
        return encode(self, keys, sender_is_initiator)


# ---- encoding --------------------------------------------------------------------


def _generic_header(next_payload: int, critical: bool, length: int) -> bytes:
    if length > 0xFFFF:
        raise ValueError(f"payload of {length} bytes does not fit the 16-bit length")
    return struct.pack("!BBH", next_payload, _CRITICAL if critical else 0, length)


def encode_payload_chain(payloads: Sequence[Payload]) -> bytes:
    """The payloads with generic headers, each announcing the next (RFC 7296 §3.2)."""
    out = []
    for i, p in enumerate(payloads):
        body = p.encode_body()
        nxt = payloads[i + 1].payload_type if i + 1 < len(payloads) else PayloadType.NONE
        critical = isinstance(p, RawPayload) and p.critical
        out.append(_generic_header(nxt, critical, GENERIC_PAYLOAD_HEADER_LEN + len(body)) + body)
    return b"".join(out)


def _first_type(payloads: Sequence[Payload]) -> int:
    return payloads[0].payload_type if payloads else PayloadType.NONE


class KeySource(Protocol):
    """The keys of an IKE SA (:class:`ipsecd.ike.keys.IkeKeys`): SK keys by direction."""

    def sk_keys(self, sender_is_initiator: bool) -> SkKeys: ...


Keys = SkKeys | KeySource


def _resolve_keys(keys: Keys, sender_is_initiator: bool) -> SkKeys:
    if isinstance(keys, SkKeys):
        return keys
    return keys.sk_keys(sender_is_initiator)


def encode(
    message: Message, keys: Keys | None = None, sender_is_initiator: bool | None = None
) -> bytes:
    """Serialize ``message``; with ``keys`` every payload goes inside one SK payload.

    Without keys (IKE_SA_INIT, §3.14 exception) the payloads are sent in clear.
    """
    header = Header(
        message.spi_i,
        message.spi_r,
        0,
        IKE_MAJOR_VERSION,
        0,
        message.exchange_type,
        message.flags,
        message.message_id,
        0,
    )
    if keys is None:
        chain = encode_payload_chain(message.payloads)
        header = replace(
            header, next_payload=_first_type(message.payloads), length=IKE_HEADER_LEN + len(chain)
        )
        return header.encode() + chain
    sender = message.initiator if sender_is_initiator is None else sender_is_initiator
    sk_keys = _resolve_keys(keys, sender)
    plaintext = _sk.pad(sk_keys, encode_payload_chain(message.payloads))
    sk_len = GENERIC_PAYLOAD_HEADER_LEN + _sk.body_length(sk_keys, len(plaintext))
    header = replace(header, next_payload=PayloadType.SK, length=IKE_HEADER_LEN + sk_len)
    prefix = header.encode() + _generic_header(_first_type(message.payloads), False, sk_len)
    return prefix + _sk.seal(sk_keys, prefix, plaintext)


# ---- decoding ----------------------------------------------------------------------


@dataclass
class _Chain:
    payloads: list[Payload]
    unsupported_critical: int | None
    sk_offset: int | None  # offset of the SK/SKF generic header, if the chain ends with one


class PayloadHeader(NamedTuple):
    """One generic payload header (RFC 7296 §3.2), located in its message.

    ``start``/``end`` delimit the payload's body (after the 4-byte header).  A tuple,
    not a dataclass: admission makes one per payload of every IKE_SA_INIT it sees.
    """

    payload_type: int
    critical: bool
    start: int
    end: int
    next_type: int

    @property
    def unknown_critical(self) -> bool:
        """A payload we do not know with the critical bit set (§2.5)."""
        return (
            self.critical
            and self.payload_type not in PAYLOAD_CLASSES
            and self.payload_type not in RAW_KNOWN_TYPES
            and self.payload_type not in (PayloadType.SK, PayloadType.SKF)
        )


def walk_chain(
    data: bytes, offset: int, first_type: int, max_payloads: int | None = None
) -> Iterator[PayloadHeader]:
    """The generic headers of the payloads from ``offset`` on, bodies not read (§3.2).

    Checks that each announced payload fits the remaining bytes and that nothing
    follows the last one (or an SK/SKF payload, which must be last, §3.14).  At most
    ``max_payloads`` payloads (None: any number); raises :class:`MalformedMessage`.
    """
    next_type = first_type
    end = len(data)
    count = 0
    while next_type != PayloadType.NONE:
        count += 1
        if max_payloads is not None and count > max_payloads:
            raise MalformedMessage(f"more than {max_payloads} payloads")
        if end - offset < GENERIC_PAYLOAD_HEADER_LEN:
            raise MalformedMessage(
                f"payload type {next_type} announced at offset {offset}"
                f" but only {end - offset} bytes remain"
            )
        following, flags, length = struct.unpack_from("!BBH", data, offset)
        if length < GENERIC_PAYLOAD_HEADER_LEN or offset + length > end:
            raise MalformedMessage(
                f"payload type {next_type} at offset {offset}: length {length} does not fit"
                f" the {end - offset} remaining bytes"
            )
        yield PayloadHeader(
            next_type, bool(flags & _CRITICAL), offset + GENERIC_PAYLOAD_HEADER_LEN,
            offset + length, following,
        )  # fmt: skip
        offset += length
        if next_type in (PayloadType.SK, PayloadType.SKF):
            if offset != end:
                raise MalformedMessage("the SK/SKF payload is not the last payload (§3.14)")
            return
        next_type = following
    if offset != end:
        raise MalformedMessage(f"{end - offset} bytes after the last payload")


def _parse_chain(data: bytes, offset: int, first_type: int, inner: bool) -> _Chain:
    """Parse payloads from ``offset`` to the end of ``data`` (RFC 7296 §3.2)."""
    payloads: list[Payload] = []
    critical_unknown: int | None = None
    sk_offset: int | None = None
    for h in walk_chain(data, offset, first_type):
        body = data[h.start : h.end]
        if h.payload_type in (PayloadType.SK, PayloadType.SKF):
            if inner:
                raise MalformedMessage("an SK/SKF payload inside an SK payload")
            sk_offset = h.start - GENERIC_PAYLOAD_HEADER_LEN
            following = enum_or_int(PayloadType, h.next_type)
            if h.payload_type == PayloadType.SK:
                payloads.append(Encrypted(following, body))
            else:
                payloads.append(decode_fragment(following, body))
            continue
        cls = PAYLOAD_CLASSES.get(h.payload_type)
        if cls is not None:
            try:
                payloads.append(cls.decode_body(body))
            except MalformedMessage as exc:
                name = PayloadType(h.payload_type).name
                raise MalformedMessage(f"{name} payload: {exc}") from None
        else:
            if h.unknown_critical and critical_unknown is None:
                critical_unknown = h.payload_type
            payloads.append(RawPayload(enum_or_int(PayloadType, h.payload_type), body, h.critical))
    return _Chain(payloads, critical_unknown, sk_offset)


def parse_inner_chain(data: bytes, first_type: int) -> tuple[list[Payload], int | None]:
    """Payloads of decrypted SK content (or a reassembled RFC 7383 message).

    Returns the payloads and the first unknown critical payload type, if any.
    """
    chain = _parse_chain(data, 0, first_type, inner=True)
    return chain.payloads, chain.unsupported_critical


def parse_message(data: bytes) -> Message:
    """Parse a whole IKE message without decrypting its SK payload.

    Raises :class:`MalformedMessage` for anything that does not parse,
    including an IKE major version other than 2.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    header = parse_header(data)
    if header.major_version != IKE_MAJOR_VERSION:
        raise MalformedMessage(f"IKE major version {header.major_version}, expected 2")
    chain = _parse_chain(data, IKE_HEADER_LEN, header.next_payload, inner=False)
    return Message.from_header(
        header,
        chain.payloads,
        unsupported_critical=chain.unsupported_critical,
        raw=data,
    )


def _sk_offset(message: Message) -> int:
    """Offset of the SK generic header in ``message.raw`` (it is the last payload)."""
    last = message.payloads[-1]
    assert isinstance(last, Encrypted)
    return len(message.raw) - GENERIC_PAYLOAD_HEADER_LEN - len(last.data)


def decrypt(message: Message, keys: Keys, sender_is_initiator: bool | None = None) -> Message:
    """Verify and open the SK payload of a parsed message (RFC 7296 §3.14).

    Returns a copy whose payloads are the clear payloads before SK (normally
    none) followed by the ones inside it, with ``encrypted=True``.  Raises
    :class:`IntegrityCheckFailed` on a bad ICV/tag and :class:`MalformedMessage`
    when there is no SK payload or its contents do not parse.  An SKF
    (fragment, RFC 7383) is reported as MalformedMessage: fragments are opened
    one by one by :class:`ipsecd.ike.fragments.Reassembler`.
    """
    if not message.payloads or not isinstance(message.payloads[-1], Encrypted):
        if message.payloads and isinstance(message.payloads[-1], EncryptedFragment):
            raise MalformedMessage("an IKE fragment (RFC 7383 SKF) needs the Reassembler")
        raise MalformedMessage("message is not protected by an SK payload")
    sender = message.initiator if sender_is_initiator is None else sender_is_initiator
    sk_keys = _resolve_keys(keys, sender)
    encrypted = message.payloads[-1]
    assert isinstance(encrypted, Encrypted)
    offset = _sk_offset(message)
    prefix = message.raw[: offset + GENERIC_PAYLOAD_HEADER_LEN]
    inner = _sk.open_sk(sk_keys, prefix, encrypted.data)
    chain = _parse_chain(inner, 0, encrypted.next_inner, inner=True)
    critical = message.unsupported_critical
    if critical is None:
        critical = chain.unsupported_critical
    return replace(
        message,
        payloads=tuple(message.payloads[:-1]) + tuple(chain.payloads),
        unsupported_critical=critical,
        encrypted=True,
        sk_prefix=prefix,
        inner=inner,
    )


def decode(
    data: bytes, keys: Keys | None = None, sender_is_initiator: bool | None = None
) -> Message:
    """:func:`parse_message`, then :func:`decrypt` when ``keys`` are given.

    Raises :class:`UnsupportedCriticalPayload` if an unknown critical payload
    was found (in clear or inside SK, after the ICV verified).
    """
    message = parse_message(data)
    if keys is not None:
        message = decrypt(message, keys, sender_is_initiator)
    if message.unsupported_critical is not None:
        raise UnsupportedCriticalPayload(message.unsupported_critical)
    return message
