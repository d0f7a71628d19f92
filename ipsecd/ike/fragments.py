"""IKE fragmentation (RFC 7383): SK-protected messages split into SKF payloads and back.

Sans-I/O.  Two halves:

* :func:`fragment` splits the payload chain of one message into pieces that, once
  each is padded, encrypted and given its ICV like an SK payload, fit ``max_len``
  bytes (the whole IKE datagram).  Every fragment carries Fragment Number / Total
  Fragments; only the first carries the inner Next Payload (RFC 7383 §2.5).  The
  AAD / ICV input is the IKE header plus the SKF header including both numbers.
* :class:`Reassembler` collects fragments of one IKE SA.  A fragment is stored only
  after its own ICV verified (§2.6.2), so a forged fragment can never poison a set.
  Bounds: at most :data:`MAX_FRAGMENTS` fragments and :data:`MAX_REASSEMBLED` bytes of
  plaintext per message, one set per direction (requests / responses) and thus per
  message id, sets older than :data:`REASSEMBLY_TIMEOUT` dropped, and all partial
  sets of the daemon together within one :class:`ReassemblyBudget`
  (:data:`MAX_REASSEMBLY_MEMORY`), so many (half-open) IKE SAs cannot add up.  Duplicates are
  ignored; a fragment announcing more fragments than the set being built replaces the
  set (the sender re-fragmented smaller), one announcing fewer is dropped (§2.6.2).
  Nothing is delivered while a fragment is missing: the peer retransmits them all.
  Everything odd is counted in ``counters`` and dropped; nothing raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ipsecd.ike import sk as _sk
from ipsecd.ike.constants import IKE_HEADER_LEN, IKE_MAJOR_VERSION, PayloadType
from ipsecd.ike.errors import MalformedMessage
from ipsecd.ike.message import Header, Message, encode_payload_chain, parse_inner_chain
from ipsecd.ike.payloads import Payload
from ipsecd.ike.sk import IntegrityCheckFailed, SkKeys

__all__ = [
    "MAX_FRAGMENTS",
    "MAX_REASSEMBLED",
    "REASSEMBLY_TIMEOUT",
    "MIN_FRAGMENT_SIZE",
    "DEFAULT_FRAGMENT_SIZE_V4",
    "DEFAULT_FRAGMENT_SIZE_V6",
    "SKF_HEADER_LEN",
    "fragment",
    "fragment_number",
    "open_fragment",
    "default_fragment_size",
    "Reassembler",
    "ReassemblyBudget",
]

SKF_HEADER_LEN = 8  # generic payload header + Fragment Number + Total Fragments (§2.5)
MAX_FRAGMENTS = 64  # more would be a 64 KB message in 1 KB pieces; refuse beyond
MAX_REASSEMBLED = 64 * 1024  # plaintext bytes of one reassembled message
MAX_REASSEMBLY_MEMORY = 2 * 1024 * 1024  # partial sets of all IKE SAs together
REASSEMBLY_TIMEOUT = 30.0  # seconds a partial set is kept (the peer retransmits meanwhile)
MIN_FRAGMENT_SIZE = 128  # the smallest fragment_size that leaves room for payload bytes
DEFAULT_FRAGMENT_SIZE_V4 = 1280  # UDP payload, as strongSwan's charon.fragment_size default
DEFAULT_FRAGMENT_SIZE_V6 = 1232  # RFC 7383 §2.5.1: the 1280-byte IPv6 minimum MTU - 40 - 8


def default_fragment_size(remote_ip: str) -> int:
    """The UDP payload limit when neither the gateway nor the peer sets ``fragment_size``."""
    return DEFAULT_FRAGMENT_SIZE_V6 if ":" in remote_ip else DEFAULT_FRAGMENT_SIZE_V4


def fragment_number(data: bytes) -> int | None:
    """Fragment Number of an SKF message (header not parsed further), or None."""
    if len(data) < IKE_HEADER_LEN + SKF_HEADER_LEN or data[16] != PayloadType.SKF:
        return None
    return int(struct.unpack_from("!H", data, IKE_HEADER_LEN + 4)[0])


def fragment(message: Message, keys: SkKeys, max_len: int) -> list[bytes]:
    """``message`` as SKF fragments of at most ``max_len`` bytes each (RFC 7383 §2.5).

    ``keys`` protect the sender's direction.  Raises ValueError if ``max_len`` leaves
    no room for a single payload byte (the config minimum prevents that).
    """
    inner = encode_payload_chain(message.payloads)
    room = max_len - IKE_HEADER_LEN - SKF_HEADER_LEN - keys.iv_len - keys.icv_len
    room -= room % keys.block_size  # the padded plaintext is whole cipher blocks
    chunk = room - 1  # at least the Pad Length octet
    if chunk < 1:
        raise ValueError(f"fragment size {max_len} leaves no room for payload bytes")
    pieces = [inner[i : i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    total = len(pieces)
    first_type = message.payloads[0].payload_type if message.payloads else PayloadType.NONE
    out = []
    for number, piece in enumerate(pieces, 1):
        plaintext = _sk.pad(keys, piece)
        skf_len = SKF_HEADER_LEN + _sk.body_length(keys, len(plaintext))
        header = Header(
            message.spi_i,
            message.spi_r,
            PayloadType.SKF,
            IKE_MAJOR_VERSION,
            0,
            message.exchange_type,
            message.flags,
            message.message_id,
            IKE_HEADER_LEN + skf_len,
        )
        next_inner = first_type if number == 1 else PayloadType.NONE
        prefix = header.encode() + struct.pack("!BBHHH", next_inner, 0, skf_len, number, total)
        out.append(prefix + _sk.seal(keys, prefix, plaintext))
    return out


@dataclass(frozen=True)
class OpenedFragment:
    """One authenticated fragment: its header fields and decrypted bytes."""

    next_inner: int
    number: int
    total: int
    chunk: bytes


def open_fragment(
    data: bytes, keys: SkKeys, max_fragments: int = MAX_FRAGMENTS
) -> OpenedFragment | str:
    """Check and decrypt one SKF datagram (RFC 7383 §2.6.2).

    Returns the fragment, or the name of the counter saying why it was dropped.
    Cheap structural checks come first; the ICV is verified before anything is
    decrypted.
    """
    if len(data) < IKE_HEADER_LEN + SKF_HEADER_LEN:
        return "fragment_malformed"
    (length,) = struct.unpack_from("!I", data, 24)
    next_inner, _, skf_len, number, total = struct.unpack_from("!BBHHH", data, IKE_HEADER_LEN)
    if length != len(data) or IKE_HEADER_LEN + skf_len != len(data):
        return "fragment_malformed"  # SKF is the only payload of a fragment
    if number == 0 or total == 0 or number > total:
        return "fragment_out_of_range"
    if total > max_fragments:
        return "fragment_too_many"
    prefix = data[: IKE_HEADER_LEN + SKF_HEADER_LEN]
    try:
        chunk = _sk.open_sk(keys, prefix, data[IKE_HEADER_LEN + SKF_HEADER_LEN :])
    except IntegrityCheckFailed:
        return "fragment_bad_icv"
    except MalformedMessage:
        return "fragment_malformed"
    return OpenedFragment(next_inner, number, total, chunk)


@dataclass
class ReassemblyBudget:
    """Plaintext bytes that the partial sets of all IKE SAs may hold together."""

    limit: int = MAX_REASSEMBLY_MEMORY
    used: int = 0


@dataclass
class _FragmentSet:
    """The fragments of one message received so far (already authenticated)."""

    message_id: int
    total: int
    started: float
    next_inner: int = PayloadType.NONE
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass
class Reassembled:
    """A complete message: its decrypted payloads and any unknown critical payload."""

    payloads: list[Payload]
    unsupported_critical: int | None


class Reassembler:
    """Reassembly state of one IKE SA (RFC 7383 §2.6.2); see the module docstring."""

    def __init__(
        self,
        counters: dict[str, int],
        *,
        max_fragments: int = MAX_FRAGMENTS,
        max_size: int = MAX_REASSEMBLED,
        timeout: float = REASSEMBLY_TIMEOUT,
        budget: ReassemblyBudget | None = None,
    ) -> None:
        self.counters = counters
        self.budget = budget if budget is not None else ReassemblyBudget()
        self.max_fragments = max_fragments
        self.max_size = max_size
        self.timeout = timeout
        self.sets: dict[bool, _FragmentSet] = {}  # by "is a response"

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    @property
    def buffered(self) -> int:
        """Plaintext bytes held in partial sets (for tests and status)."""
        return sum(s.size for s in self.sets.values())

    def _discard(self, response: bool) -> None:
        partial = self.sets.pop(response, None)
        if partial is not None:
            self.budget.used -= partial.size

    def clear(self) -> None:
        """Drop every partial set (the IKE SA is gone) and give back its memory."""
        for response in list(self.sets):
            self._discard(response)

    def next_expiry(self) -> float | None:
        """When the oldest partial set times out (:meth:`expire` drops it then)."""
        if not self.sets:
            return None
        return min(s.started for s in self.sets.values()) + self.timeout

    def expire(self, now: float) -> None:
        """Drop partial sets older than the timeout."""
        for response, partial in list(self.sets.items()):
            if now - partial.started >= self.timeout:
                self._discard(response)
                self._count("fragment_reassembly_timeouts")

    def add(self, data: bytes, keys: SkKeys, now: float) -> Reassembled | None:
        """One datagram whose first payload is SKF; the whole message once complete.

        ``keys`` are the SK keys of the sender's direction.  Returns None while
        fragments are missing and for every fragment that is dropped (counted).
        """
        opened = open_fragment(data, keys, self.max_fragments)
        if isinstance(opened, str):
            self._count(opened)
            return None
        # Authenticated from here on.
        number, total, chunk = opened.number, opened.total, opened.chunk
        self._count("fragments_received")
        message_id = int(struct.unpack_from("!I", data, 20)[0])
        response = bool(data[19] & 0x20)
        partial = self.sets.get(response)
        if partial is not None and now - partial.started >= self.timeout:
            self._count("fragment_reassembly_timeouts")
            partial = None
        elif partial is not None and partial.message_id != message_id:
            self._count("fragment_sets_abandoned")  # a newer exchange; the old one is over
            partial = None
        elif partial is not None and total > partial.total:
            self._count("fragment_sets_restarted")  # re-fragmented smaller (§2.6.2)
            partial = None
        elif partial is not None and total < partial.total:
            self._count("fragment_total_mismatch")
            return None
        if partial is None:
            self._discard(response)
            partial = _FragmentSet(message_id, total, now)
            self.sets[response] = partial
        if number in partial.chunks:
            self._count("fragment_duplicates")
            return None
        if partial.size + len(chunk) > self.max_size:
            self._count("fragment_oversized")
            self._discard(response)
            return None
        if self.budget.used + len(chunk) > self.budget.limit:
            self._count("fragment_memory_limit")  # other reassemblies hold it all
            return None
        partial.chunks[number] = chunk
        partial.size += len(chunk)
        self.budget.used += len(chunk)
        if number == 1:
            partial.next_inner = opened.next_inner
        if len(partial.chunks) < partial.total:
            return None
        self._discard(response)
        inner = b"".join(partial.chunks[n] for n in range(1, partial.total + 1))
        try:
            payloads, critical = parse_inner_chain(inner, partial.next_inner)
        except MalformedMessage:
            self._count("fragment_reassembled_malformed")
            return None
        self._count("fragmented_messages_received")
        return Reassembled(list(payloads), critical)
