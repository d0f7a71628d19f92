"""The one adapter between the exchanges and the codec layer below them.

Every exchange module speaks only through these helpers: readers that pull a
typed value out of a decoded message, builders that make one payload, and
the crypto steps (key exchange, SKEYSEED/SK_*, KEYMAT, PSK AUTH, NAT-D).
They delegate to the codec modules (``ike.constants``, ``ike.payloads``,
``ike.message``, ``ike.proposal_codec``, ``ike.keys``, ``ike.auth``,
``ike.nat``, ``crypto.keyexchange``); when the codec API changes, only this
file follows it.

Codec imports are done lazily (inside functions) so the state machine
modules import even while the codec is being written.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import KeAlgorithm, TransformType
from ipsecd.ike.errors import NoProposalChosen
from ipsecd.selectors import TrafficSelector, format_selectors

# RFC 7296 §3.1 exchange types.
IKE_SA_INIT = 34
IKE_AUTH = 35
CREATE_CHILD_SA = 36
INFORMATIONAL = 37

# RFC 7296 §3.3.1 protocol ids.
PROTO_IKE = 1
PROTO_ESP = 3

AUTH_PSK = 2  # RFC 7296 §3.8 Shared Key Message Integrity Code

# RFC 7296 §3.10.1 status notify types.
N_INITIAL_CONTACT = 16384
N_NAT_DETECTION_SOURCE_IP = 16388
N_NAT_DETECTION_DESTINATION_IP = 16389
N_COOKIE = 16390
N_REKEY_SA = 16393
N_IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383 §2.3

SKF = 53  # RFC 7383 §2.5 Encrypted and Authenticated Fragment payload
NON_ESP_MARKER_LEN = 4  # RFC 3948 §2.2: counts against fragment_size on the NAT-T port

ID_NAMES = {1: "IPv4", 2: "FQDN", 3: "RFC822", 5: "IPv6", 9: "DN", 11: "KEY_ID"}


class DecodeError(Exception):
    """A datagram that is not a valid IKE message for us (malformed, bad ICV)."""


class CriticalPayload(DecodeError):
    """RFC 7296 §2.5: a payload we do not understand with the critical bit set."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


@dataclass(frozen=True)
class Header:
    """The fixed IKE header fields the manager and the SA dispatch on (RFC 7296 §3.1)."""

    spi_i: int
    spi_r: int
    exchange: int
    message_id: int
    initiator_flag: bool
    response: bool
    first_payload: int = 0  # Next Payload of the IKE header (SKF: an RFC 7383 fragment)


@dataclass
class Incoming:
    """A decoded (and, after IKE_SA_INIT, decrypted and verified) message."""

    spi_i: int
    spi_r: int
    exchange: int
    message_id: int
    response: bool
    payloads: list[Any]
    raw: bytes


# ---- formatting ---------------------------------------------------------


def format_identity(id_type: int, data: bytes) -> str:
    name = ID_NAMES.get(id_type, f"type {id_type}")
    if id_type in (1, 5) and len(data) in (4, 16):
        import ipaddress

        return f"{name}:{ipaddress.ip_address(data)}"
    if id_type in (2, 3):
        return f"{name}:{data.decode('utf-8', 'replace')}"
    return f"{name}:{data.hex()}"


def format_proposals(proposals: tuple[Proposal, ...] | list[Proposal]) -> str:
    return ", ".join(str(p) for p in proposals) or "(none)"


def format_ts(selectors: tuple[TrafficSelector, ...]) -> str:
    return format_selectors(selectors)


def constant_time_eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def without_ke(proposals: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
    """ESP proposals for IKE_AUTH: no KE transforms (RFC 7296 §1.2)."""
    from dataclasses import replace

    return tuple(replace(p, ke=()) for p in proposals)


def explain_no_match(
    ours: tuple[Proposal, ...], theirs: list[Proposal], what: str, peer: str
) -> NoProposalChosen:
    """NO_PROPOSAL_CHOSEN text: both offers and the first transform type with no overlap."""
    types = [
        ("encryption", lambda p: p.encryption),
        ("integrity", lambda p: p.integrity),
        ("PRF", lambda p: p.prf),
        ("key exchange", lambda p: p.ke),
        ("ESN", lambda p: p.esn),
    ]
    failing = "no single proposal matches in all transform types"
    for label, get in types:
        mine = {x for p in ours for x in get(p)}
        other = {x for p in theirs for x in get(p)}
        if not mine and not other:
            continue
        if not (mine & other):
            failing = f"no common {label} transform"
            break
    return NoProposalChosen(
        f"no {what} proposal chosen with peer {peer}: {failing}; peer offered"
        f" {format_proposals(theirs)}, we accept {format_proposals(ours)}"
    )


# ---- codec: header, messages --------------------------------------------


def parse_header(data: bytes) -> Header:
    from ipsecd.ike import message as codec

    try:
        h = codec.parse_header(data)
    except Exception as exc:
        raise DecodeError(str(exc)) from None
    return Header(
        spi_i=h.spi_i,
        spi_r=h.spi_r,
        exchange=int(h.exchange_type),
        message_id=h.message_id,
        initiator_flag=h.initiator,
        response=h.response,
        first_payload=int(h.next_payload),
    )


def fragment_number(data: bytes) -> int | None:
    from ipsecd.ike import fragments

    return fragments.fragment_number(data)


def fragment_authentic(sa: Any, data: bytes) -> bool:
    """An RFC 7383 fragment from the peer whose ICV verifies with this SA's keys."""
    from ipsecd.ike import fragments

    if sa.keys is None:
        return False
    opened = fragments.open_fragment(data, sa.keys.sk_keys(not sa.initiator))
    return not isinstance(opened, str)


def _keys_for(sa: Any, outgoing: bool) -> Any:
    return sa.keys


def _message(sa: Any, exchange: int, message_id: int, response: bool, payloads: list[Any]) -> Any:
    """The codec's Message for ``sa``'s SPIs and role."""
    from ipsecd.ike import message as codec

    return codec.Message(
        spi_i=sa.spi_i,
        spi_r=sa.spi_r,
        exchange_type=exchange,
        initiator=sa.initiator,
        response=response,
        message_id=message_id,
        payloads=payloads,
    )


def encode(sa: Any, exchange: int, message_id: int, response: bool, payloads: list[Any]) -> bytes:
    """Build one message of ``sa``; SK-protected unless IKE_SA_INIT (RFC 7296 §3.14)."""
    from ipsecd.ike import message as codec

    msg = _message(sa, exchange, message_id, response, payloads)
    if exchange == IKE_SA_INIT:
        return codec.encode(msg)
    return codec.encode(msg, keys=sa.keys, sender_is_initiator=sa.initiator)


def encode_datagrams(
    sa: Any, exchange: int, message_id: int, response: bool, payloads: list[Any]
) -> list[bytes]:
    """:func:`encode`, split into RFC 7383 fragments when negotiated and too large.

    ``sa.fragment_size`` bounds the whole UDP payload, the non-ESP marker included.
    IKE_SA_INIT is never fragmented (it is not encrypted, RFC 7383 §2.5.3).
    """
    from ipsecd.ike import fragments

    data = encode(sa, exchange, message_id, response, payloads)
    if exchange == IKE_SA_INIT or not sa.fragmentation_active:
        return [data]
    limit = sa.fragment_size - (NON_ESP_MARKER_LEN if sa.local[1] == sa.natt_port else 0)
    if len(data) <= limit:
        return [data]
    msg = _message(sa, exchange, message_id, response, payloads)
    out = fragments.fragment(msg, sa.keys.sk_keys(sa.initiator), limit)
    sa.count("fragmented_messages_sent")
    sa.counters["fragments_sent"] = sa.counters.get("fragments_sent", 0) + len(out)
    return out


def reassemble(sa: Any, reassembler: Any, data: bytes, header: Header, now: float) -> Any:
    """One RFC 7383 fragment: None until its message is complete, then the Incoming.

    Raises :class:`CriticalPayload` when the complete message has an unknown
    critical payload; everything else wrong is counted by the reassembler.
    """
    if sa.keys is None:
        raise DecodeError("encrypted message before keys")
    done = reassembler.add(data, sa.keys.sk_keys(not sa.initiator), now)
    if done is None:
        return None
    if done.unsupported_critical is not None:
        raise CriticalPayload(int(done.unsupported_critical))
    return _incoming(header, done.payloads, b"")


def _incoming(header: Header, payloads: Any, raw: bytes) -> Incoming:
    return Incoming(
        spi_i=header.spi_i,
        spi_r=header.spi_r,
        exchange=header.exchange,
        message_id=header.message_id,
        response=header.response,
        payloads=list(payloads),
        raw=raw,
    )


def decode(sa: Any, data: bytes, header: Header) -> Incoming:
    from ipsecd.ike import message as codec

    try:
        if header.exchange == IKE_SA_INIT:
            msg = codec.decode(data)
        else:
            if sa.keys is None:
                raise DecodeError("encrypted message before keys")
            msg = codec.decode(data, keys=sa.keys, sender_is_initiator=not sa.initiator)
    except DecodeError:
        raise
    except Exception as exc:
        critical = getattr(exc, "payload_type", None)
        if critical is not None and "critical" in type(exc).__name__.lower():
            raise CriticalPayload(int(critical)) from None
        raise DecodeError(str(exc)) from None
    return _incoming(header, msg.payloads, data)


def responder_for(exchange: int) -> Any:
    from ipsecd.ike.exchanges import auth, create_child, informational, sa_init

    return {
        IKE_SA_INIT: sa_init.respond,
        IKE_AUTH: auth.respond,
        CREATE_CHILD_SA: create_child.respond,
        INFORMATIONAL: informational.respond,
    }.get(exchange)


# ---- readers --------------------------------------------------------------


def _payloads_of(message: Incoming, cls_name: str) -> list[Any]:
    return [p for p in message.payloads if type(p).__name__ == cls_name]


def find_notifies(message: Incoming, notify_type: int) -> list[bytes]:
    return [bytes(p.data) for p in _payloads_of(message, "Notify") if p.notify_type == notify_type]


def find_notify(message: Incoming, notify_type: int) -> bytes | None:
    found = find_notifies(message, notify_type)
    return found[0] if found else None


def error_notify(message: Incoming) -> tuple[int, bytes] | None:
    """The first error notify (types below 16384, RFC 7296 §3.10.1)."""
    for p in _payloads_of(message, "Notify"):
        if p.notify_type < 16384:
            return int(p.notify_type), bytes(p.data)
    return None


def has_sa(message: Incoming) -> bool:
    return bool(_payloads_of(message, "SecurityAssociation"))


def sa_protocol(message: Incoming) -> int | None:
    sas = _payloads_of(message, "SecurityAssociation")
    if not sas or not sas[0].proposals:
        return None
    return int(sas[0].proposals[0].protocol_id)


def find_ke(message: Incoming) -> tuple[int, bytes] | None:
    kes = _payloads_of(message, "KeyExchange")
    return (int(kes[0].group), bytes(kes[0].data)) if kes else None


def find_nonce(message: Incoming) -> bytes | None:
    nonces = _payloads_of(message, "Nonce")
    return bytes(nonces[0].data) if nonces else None


def find_id(message: Incoming, initiator: bool) -> tuple[int, bytes] | None:
    ids = _payloads_of(
        message, "IdentificationInitiator" if initiator else "IdentificationResponder"
    )
    return (int(ids[0].id_type), bytes(ids[0].data)) if ids else None


def find_auth(message: Incoming) -> tuple[int, bytes] | None:
    auths = _payloads_of(message, "Authentication")
    return (int(auths[0].method), bytes(auths[0].data)) if auths else None


def find_ts(message: Incoming, initiator: bool) -> tuple[TrafficSelector, ...] | None:
    ts = _payloads_of(
        message, "TrafficSelectorsInitiator" if initiator else "TrafficSelectorsResponder"
    )
    return tuple(ts[0].selectors) if ts else None


def find_rekey_sa(message: Incoming) -> tuple[int, int] | None:
    """N(REKEY_SA) (RFC 7296 §1.3.3): (protocol id, SPI of the SA being rekeyed)."""
    for p in _payloads_of(message, "Notify"):
        if p.notify_type == N_REKEY_SA:
            return int(p.protocol_id), int.from_bytes(bytes(p.spi), "big") if p.spi else 0
    return None


def find_deletes(message: Incoming) -> list[tuple[int, list[int]]]:
    return [(int(d.protocol_id), [int(s) for s in d.spis]) for d in _payloads_of(message, "Delete")]


# ---- builders -------------------------------------------------------------


def p_notify(notify_type: int, data: bytes = b"", protocol: int = 0, spi: bytes = b"") -> Any:
    from ipsecd.ike import payloads as pl

    return pl.Notify(protocol_id=protocol, spi=spi, notify_type=notify_type, data=data)


def p_sa_ike(proposals: tuple[Proposal, ...], spi: int = 0) -> Any:
    """IKE SA payload; ``spi`` is the sender's new 8-octet SPI in an IKE rekey (§1.3.2)."""
    from ipsecd.ike import proposal_codec

    return proposal_codec.sa_payload(proposals, spi=spi.to_bytes(8, "big") if spi else b"")


def p_sa_ike_chosen(chosen: Any, spi: int = 0) -> Any:
    from ipsecd.ike import proposal_codec

    if spi:
        return proposal_codec.chosen_sa_payload(chosen, spi=spi.to_bytes(8, "big"))
    return proposal_codec.chosen_sa_payload(chosen)


def p_sa_esp(proposals: tuple[Proposal, ...], spi: int) -> Any:
    from ipsecd.ike import proposal_codec

    return proposal_codec.sa_payload(proposals, spi=spi.to_bytes(4, "big"))


def p_sa_esp_chosen(chosen: Any, spi: int) -> Any:
    from ipsecd.ike import proposal_codec

    return proposal_codec.chosen_sa_payload(chosen, spi=spi.to_bytes(4, "big"))


def p_ke(group: KeAlgorithm, public: bytes) -> Any:
    from ipsecd.ike import payloads as pl

    return pl.KeyExchange(group=int(group.transform_id), data=public)


def p_nonce(data: bytes) -> Any:
    from ipsecd.ike import payloads as pl

    return pl.Nonce(data=data)


def p_id(initiator: bool, id_type: int, data: bytes) -> Any:
    from ipsecd.ike import payloads as pl

    cls = pl.IdentificationInitiator if initiator else pl.IdentificationResponder
    return cls(id_type=id_type, data=data)


def p_auth(data: bytes) -> Any:
    from ipsecd.ike import payloads as pl

    return pl.Authentication(method=AUTH_PSK, data=data)


def p_ts(initiator: bool, selectors: tuple[TrafficSelector, ...]) -> Any:
    from ipsecd.ike import payloads as pl

    cls = pl.TrafficSelectorsInitiator if initiator else pl.TrafficSelectorsResponder
    return cls(selectors=tuple(selectors))


def p_delete(protocol: int, spis: list[int]) -> Any:
    from ipsecd.ike import payloads as pl

    return pl.Delete(protocol_id=protocol, spis=tuple(spis))


# ---- proposal selection -----------------------------------------------------


def _offered(message: Incoming) -> list[Any]:
    sas = _payloads_of(message, "SecurityAssociation")
    return list(sas[0].proposals) if sas else []


def select_ike_request(message: Incoming, ours: tuple[Proposal, ...], peer: str) -> Any:
    """Responder: pick the peer's first acceptable IKE proposal (RFC 7296 §2.7)."""
    from ipsecd.ike import proposal_codec

    offered = _offered(message)
    chosen = proposal_codec.select(offered, ours, "ike")
    if chosen is None:
        theirs = [proposal_codec.to_proposal(p, "ike") for p in offered]
        raise explain_no_match(ours, theirs, "IKE", peer)
    return chosen


def select_ike_response(message: Incoming, ours: tuple[Proposal, ...], peer: str) -> Any:
    """Initiator: the responder's single proposal must be one we offered (RFC 7296 §2.7)."""
    from ipsecd.ike import proposal_codec

    offered = _offered(message)
    chosen = proposal_codec.select(offered, ours, "ike") if len(offered) == 1 else None
    if chosen is None:
        raise NoProposalChosen(
            f"peer {peer} answered IKE_SA_INIT with a proposal we did not offer;"
            f" we offered {format_proposals(ours)}"
        )
    return chosen


def select_esp_request(
    message: Incoming, ours: tuple[Proposal, ...], peer: str
) -> tuple[Any, int, Any]:
    """Responder: (ChildAlgorithms, peer SPI, chosen) for the first acceptable proposal."""
    from ipsecd.ike import proposal_codec

    offered = _offered(message)
    chosen = proposal_codec.select(offered, ours, "esp")
    if chosen is None:
        theirs = [proposal_codec.to_proposal(p, "esp") for p in offered]
        raise explain_no_match(ours, theirs, "ESP", peer)
    return _child_algorithms(chosen), int.from_bytes(chosen.spi, "big"), chosen


def select_esp_response(
    message: Incoming, ours: tuple[Proposal, ...], peer: str
) -> tuple[Any, int]:
    from ipsecd.ike import proposal_codec

    offered = _offered(message)
    chosen = proposal_codec.select(offered, ours, "esp") if len(offered) == 1 else None
    if chosen is None:
        raise NoProposalChosen(
            f"peer {peer} answered with an ESP proposal we did not offer;"
            f" we offered {format_proposals(ours)}",
            fatal=False,
        )
    return _child_algorithms(chosen), int.from_bytes(chosen.spi, "big")


def chosen_ke(chosen: Any) -> KeAlgorithm | None:
    return getattr(chosen, "ke", None)


def _child_algorithms(chosen: Any) -> Any:
    from ipsecd.ike.child import ChildAlgorithms

    ke = getattr(chosen, "ke", None)
    return ChildAlgorithms(
        encr=chosen.encryption,
        integ=chosen.integrity,
        esn=bool(getattr(chosen, "esn", False)),
        ke=int(ke.transform_id) if ke is not None else None,
    )


# ---- crypto steps -------------------------------------------------------------


def new_key_exchange(group: KeAlgorithm) -> Any:
    """An object with ``public`` and ``shared_secret(peer_public)`` (RFC 7296 §1.2)."""
    from ipsecd.crypto import keyexchange

    return keyexchange.new(group)


def derive_ike_keys(
    chosen: Any, shared: bytes, nonce_i: bytes, nonce_r: bytes, spi_i: int, spi_r: int
) -> Any:
    """SKEYSEED and SK_d/ai/ar/ei/er/pi/pr (RFC 7296 §2.14)."""
    from ipsecd.ike import keys

    return keys.derive_ike_keys(chosen, shared, nonce_i, nonce_r, spi_i, spi_r)


def derive_rekeyed_ike_keys(
    old_keys: Any,
    chosen: Any,
    shared: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: int,
    spi_r: int,
) -> Any:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) and the new SK_* (RFC 7296 §2.18)."""
    from ipsecd.ike import keys

    return keys.derive_rekeyed_ike_keys(old_keys, chosen, shared, nonce_i, nonce_r, spi_i, spi_r)


def child_keymat(sa: Any, algs: Any, shared: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17)."""
    from ipsecd.ike import keys
    from ipsecd.ike.child import keymat_length

    return keys.child_keymat(sa.keys, shared, nonce_i, nonce_r, keymat_length(algs))


def psk_auth(sa: Any, psk: bytes, of_initiator: bool, id_type: int, id_data: bytes) -> bytes:
    """The AUTH value for the initiator's or the responder's side (RFC 7296 §2.15)."""
    from ipsecd.ike import auth

    data = sa.exchange_data
    if of_initiator:
        message, nonce = data["init_request"], data["nonce_r"]
    else:
        message, nonce = data["init_response"], data["nonce_i"]
    return auth.psk_auth(sa.keys, psk, of_initiator, message, nonce, id_type, id_data)


def natd_hash(spi_i: int, spi_r: int, address: tuple[str, int]) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23)."""
    from ipsecd.ike import nat

    return nat.natd_hash(spi_i, spi_r, address[0], address[1])


__all__ = ["TransformType"]
