"""IKEv2 protocol numbers (RFC 7296 §3, IANA "Internet Key Exchange Version 2 (IKEv2) Parameters").

Every enum is an ``IntEnum`` so values compare equal to the plain ints found on
the wire; the codec keeps unknown values as plain ``int`` (see
:func:`enum_or_int`) so that a message with a type we do not know still parses.
"""

from __future__ import annotations

import functools
from enum import IntEnum, IntFlag

IKE_MAJOR_VERSION = 2  # RFC 7296 §3.1
IKE_MINOR_VERSION = 0
IKE_HEADER_LEN = 28  # RFC 7296 §3.1
GENERIC_PAYLOAD_HEADER_LEN = 4  # RFC 7296 §3.2
NONCE_MIN_LEN = 16  # RFC 7296 §3.9
NONCE_MAX_LEN = 256


class ExchangeType(IntEnum):
    """RFC 7296 §3.1 exchange types (+ RFC 9242 IKE_INTERMEDIATE, RFC 9370 IKE_FOLLOWUP_KE)."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370 §2.2.4


class HeaderFlag(IntFlag):
    """RFC 7296 §3.1 header flags."""

    INITIATOR = 0x08  # I: sent by the original initiator of the IKE SA
    VERSION = 0x10  # V: sender can speak a higher major version
    RESPONSE = 0x20  # R: this message is a response


class PayloadType(IntEnum):
    """RFC 7296 §3.2 "Next Payload" values (+ RFC 7383 SKF)."""

    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49  # RFC 6467
    SKF = 53  # RFC 7383 Encrypted and Authenticated Fragment


class ProtocolId(IntEnum):
    """RFC 7296 §3.3.1 Security Protocol Identifier."""

    NONE = 0  # Notify/Delete not about a specific SA
    IKE = 1
    AH = 2
    ESP = 3


class IdType(IntEnum):
    """RFC 7296 §3.5 identification types."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertEncoding(IntEnum):
    """RFC 7296 §3.6 certificate encodings (the ones worth naming)."""

    X509_SIGNATURE = 4
    CRL = 7
    RAW_RSA_KEY = 11
    HASH_AND_URL_X509 = 12
    HASH_AND_URL_BUNDLE = 13


class AuthMethod(IntEnum):
    """RFC 7296 §3.8 authentication methods (+ RFC 7427 digital signature)."""

    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MIC = 2
    DSS_DIGITAL_SIGNATURE = 3
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    GENERIC_SECURE_PASSWORD = 12  # RFC 6467
    NULL_AUTH = 13  # RFC 7619
    DIGITAL_SIGNATURE = 14  # RFC 7427


class NotifyType(IntEnum):
    """RFC 7296 §3.10.1 notify message types, errors (< 16384) and status (>= 16384).

    Includes the status types of the extensions ipsecd meets in practice
    (RFC 4555 MOBIKE, RFC 5685 redirect, RFC 7383 fragmentation, RFC 7427
    signature hashes, RFC 9370 multiple key exchanges).
    """

    # Errors (RFC 7296 §3.10.1)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    UNACCEPTABLE_ADDRESSES = 40  # RFC 4555
    UNEXPECTED_NAT_DETECTED = 41  # RFC 4555
    USE_ASSIGNED_HoA = 42  # RFC 5026
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INVALID_GROUP_ID = 45  # RFC 6467
    AUTHORIZATION_FAILED = 46  # RFC 6467
    STATE_NOT_FOUND = 47  # RFC 9242 (ikev2 intermediate) / RFC 8019

    # Status (RFC 7296 §3.10.1 and extensions)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    AUTH_LIFETIME = 16403  # RFC 4478
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    TICKET_LT_OPAQUE = 16409  # RFC 5723
    TICKET_REQUEST = 16410
    TICKET_ACK = 16411
    TICKET_NACK = 16412
    TICKET_OPAQUE = 16413
    EAP_ONLY_AUTHENTICATION = 16417  # RFC 5998
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    USE_PPK = 16435  # RFC 8784
    PPK_IDENTITY = 16436  # RFC 8784
    NO_PPK_AUTH = 16437  # RFC 8784
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370

    @property
    def is_error(self) -> bool:
        return self.value < 16384


def is_error_notify(notify_type: int) -> bool:
    """RFC 7296 §3.10.1: types 0..16383 are errors, 16384.. are status."""
    return notify_type < 16384


class TsType(IntEnum):
    """RFC 7296 §3.13.1 traffic selector types."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


def enum_or_int(enum: type[IntEnum], value: int) -> int:
    """``enum(value)`` when known, else the plain int (unknown values survive parsing).

    By a dict made once per enum: ``enum(value)`` costs a few microseconds, and a
    received header needs it for its exchange type (a flood's every datagram)."""
    return _members(enum).get(value, value)


@functools.cache
def _members(enum: type[IntEnum]) -> dict[int, IntEnum]:
    return {int(member): member for member in enum}
