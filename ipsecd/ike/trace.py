"""A charon-style trace of every IKE message sent and received (debug level, issue 13).

One line per message::

    sending IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) ] 192.0.2.1:500 -> ...
    received IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ] 192.0.2.2:4500 -> 192.0.2.1:4500

The payloads are the ones inside SK (what charon's ``parsed``/``generating`` lines
show), by strongSwan's abbreviations; a message sent as RFC 7383 fragments says how
many.  The trace never shows payload contents, so no key material, nonce or
identity reaches the log; at most :data:`MAX_LABELS` payloads are listed, the rest
counted.  The IKE layer calls a :data:`Trace` sink the shell provides (the daemon
logs each line at debug level, rate-limited per source for unauthenticated input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ipsecd.addresses import format_address
from ipsecd.ike.constants import ExchangeType, NotifyType, PayloadType
from ipsecd.ike.events import Address
from ipsecd.ike.payloads import Notify, Payload

#: (line, remote address, whether the other end is known) -> None
Trace = Callable[[str, Address, bool], None]

MAX_LABELS = 32

PAYLOAD_LABELS: dict[int, str] = {
    PayloadType.SA: "SA",
    PayloadType.KE: "KE",
    PayloadType.IDi: "IDi",
    PayloadType.IDr: "IDr",
    PayloadType.CERT: "CERT",
    PayloadType.CERTREQ: "CERTREQ",
    PayloadType.AUTH: "AUTH",
    PayloadType.NONCE: "No",
    PayloadType.DELETE: "D",
    PayloadType.VENDOR_ID: "V",
    PayloadType.TSi: "TSi",
    PayloadType.TSr: "TSr",
    PayloadType.SK: "SK",
    PayloadType.CP: "CP",
    PayloadType.EAP: "EAP",
    PayloadType.GSPM: "GSPM",
    PayloadType.SKF: "EF",
}

# strongSwan's short names (libcharon encoding/payloads/notify_payload.c); others by IANA name.
NOTIFY_LABELS: dict[int, str] = {
    NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD: "UNSUPPORTED_CRITICAL_PAYLOAD",
    NotifyType.INVALID_IKE_SPI: "INVAL_IKE_SPI",
    NotifyType.INVALID_MAJOR_VERSION: "INVAL_MAJOR",
    NotifyType.INVALID_SYNTAX: "INVAL_SYN",
    NotifyType.INVALID_MESSAGE_ID: "INVAL_MID",
    NotifyType.INVALID_SPI: "INVAL_SPI",
    NotifyType.NO_PROPOSAL_CHOSEN: "NO_PROP",
    NotifyType.INVALID_KE_PAYLOAD: "INVAL_KE",
    NotifyType.AUTHENTICATION_FAILED: "AUTH_FAILED",
    NotifyType.SINGLE_PAIR_REQUIRED: "SINGLE_PAIR",
    NotifyType.NO_ADDITIONAL_SAS: "NO_ADD_SAS",
    NotifyType.TS_UNACCEPTABLE: "TS_UNACCEPT",
    NotifyType.TEMPORARY_FAILURE: "TEMP_FAIL",
    NotifyType.CHILD_SA_NOT_FOUND: "CHILD_SA_NOT_FOUND",
    NotifyType.INITIAL_CONTACT: "INIT_CONTACT",
    NotifyType.NAT_DETECTION_SOURCE_IP: "NATD_S_IP",
    NotifyType.NAT_DETECTION_DESTINATION_IP: "NATD_D_IP",
    NotifyType.COOKIE: "COOKIE",
    NotifyType.USE_TRANSPORT_MODE: "USE_TRANSP",
    NotifyType.REKEY_SA: "REKEY_SA",
    NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED: "ESP_TFC_PAD_N",
    NotifyType.NON_FIRST_FRAGMENTS_ALSO: "NON_FIRST_FRAG",
    NotifyType.MOBIKE_SUPPORTED: "MOBIKE_SUP",
    NotifyType.MULTIPLE_AUTH_SUPPORTED: "MULT_AUTH",
    NotifyType.REDIRECT_SUPPORTED: "REDIR_SUP",
    NotifyType.CHILDLESS_IKEV2_SUPPORTED: "CHDLESS_SUP",
    NotifyType.IKEV2_FRAGMENTATION_SUPPORTED: "FRAG_SUP",
    NotifyType.SIGNATURE_HASH_ALGORITHMS: "HASH_ALG",
    NotifyType.USE_PPK: "USE_PPK",
    NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED: "IKE_INT_SUP",
    NotifyType.ADDITIONAL_KEY_EXCHANGE: "ADD_KE",
}


def notify_label(notify_type: int) -> str:
    """``N(NATD_S_IP)``; an unknown type by its number."""
    name = NOTIFY_LABELS.get(notify_type)
    if name is None:
        try:
            name = NotifyType(notify_type).name
        except ValueError:
            name = str(int(notify_type))
    return f"N({name})"


def payload_type_label(payload_type: int) -> str:
    return PAYLOAD_LABELS.get(payload_type) or f"PL{int(payload_type)}"


def payload_labels(payloads: Iterable[Payload]) -> list[str]:
    """The labels of decoded payloads, in order."""
    return [
        notify_label(p.notify_type) if isinstance(p, Notify) else payload_type_label(p.payload_type)
        for p in payloads
    ]


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"EXCHANGE_{int(exchange)}"


def describe(
    direction: str,
    exchange: int,
    response: bool,
    message_id: int,
    labels: list[str],
    local: Address,
    remote: Address,
    *,
    fragments: int = 1,
) -> str:
    """One trace line; ``direction`` is ``sending`` or ``received``."""
    shown = labels[:MAX_LABELS]
    if len(labels) > MAX_LABELS:
        shown.append(f"... +{len(labels) - MAX_LABELS} more")
    kind = "response" if response else "request"
    src, dst = (local, remote) if direction == "sending" else (remote, local)
    pieces = " ".join(shown)
    line = (
        f"{direction} {exchange_name(exchange)} {kind} {message_id} [ {pieces} ]"
        f" {format_address(src)} -> {format_address(dst)}"
    )
    if fragments > 1:
        line += f" ({fragments} fragments)"
    return line
