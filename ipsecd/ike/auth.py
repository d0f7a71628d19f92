"""Pre-shared key authentication (RFC 7296 §2.15).

::

    InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI [| IntAuth]
    MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
    ResponderSignedOctets = RealMessage2 | NonceIData | MACedIDForR [| IntAuth]
    MACedIDForR = prf(SK_pr, RestOfRespIDPayload)
    AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)

RealMessage1/2 are the IKE_SA_INIT request/response exactly as sent (the
bytes on the wire, header included); NonceRData/NonceIData are the body of
the other side's Nonce payload; RestOf...IDPayload is the ID payload body
(ID type, 3 reserved bytes, data).  IntAuth (RFC 9242 §3.3.2) is appended when
IKE_INTERMEDIATE exchanges took place (``int_auth``, empty otherwise).  Received
AUTH values are compared in constant time.

API::

    signed_octets(keys, of_initiator, message, peer_nonce, id_type, id_data, int_auth=b"")
    psk_auth(keys, psk, of_initiator, message, peer_nonce, id_type, id_data, int_auth=b"")
    verify_psk_auth(keys, psk, of_initiator, message, peer_nonce, id_type, id_data,
                    received, int_auth=b"") -> bool
"""

from __future__ import annotations

import hmac

from ipsecd.crypto.prf import Prf
from ipsecd.ike.keys import IkeKeys
from ipsecd.ike.payloads import Identification

__all__ = ["KEY_PAD", "signed_octets", "psk_auth", "verify_psk_auth"]

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15, 17 ASCII octets, no NUL


def _id_octets(id_type: int, id_data: bytes) -> bytes:
    return Identification(id_type, id_data).auth_octets


def signed_octets(
    keys: IkeKeys,
    of_initiator: bool,
    message: bytes,
    peer_nonce: bytes,
    id_type: int,
    id_data: bytes,
    int_auth: bytes = b"",
) -> bytes:
    """<InitiatorSignedOctets> or <ResponderSignedOctets> (RFC 7296 §2.15, RFC 9242 §3.3.2).

    ``message`` is that side's IKE_SA_INIT message; ``peer_nonce`` the OTHER
    side's nonce (Nr for the initiator's AUTH, Ni for the responder's);
    ``int_auth`` IntAuth_i | IntAuth_r | IKE_AUTH_MID, or empty.
    """
    sk_p = keys.sk_pi if of_initiator else keys.sk_pr
    macced_id = Prf(keys.prf).prf(sk_p, _id_octets(id_type, id_data))
    return message + peer_nonce + macced_id + int_auth


def psk_auth(
    keys: IkeKeys,
    psk: bytes | str,
    of_initiator: bool,
    message: bytes,
    peer_nonce: bytes,
    id_type: int,
    id_data: bytes,
    int_auth: bytes = b"",
) -> bytes:
    """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15)."""
    if isinstance(psk, str):
        psk = psk.encode()
    prf = Prf(keys.prf)
    octets = signed_octets(keys, of_initiator, message, peer_nonce, id_type, id_data, int_auth)
    return prf.prf(prf.prf(psk, KEY_PAD), octets)


def verify_psk_auth(
    keys: IkeKeys,
    psk: bytes | str,
    of_initiator: bool,
    message: bytes,
    peer_nonce: bytes,
    id_type: int,
    id_data: bytes,
    received: bytes,
    int_auth: bytes = b"",
) -> bool:
    """Constant-time check of a received AUTH payload body against the expected value."""
    expected = psk_auth(keys, psk, of_initiator, message, peer_nonce, id_type, id_data, int_auth)
    return hmac.compare_digest(expected, bytes(received))
