"""X.509 for IKEv2: loading, trust anchors and CRLs, chain validation, identities, CERT/CERTREQ.

Sans-I/O except for the explicit ``load_*_file`` helpers: everything else
takes bytes or ``cryptography.x509`` objects and a ``now``.

Modules:

* :mod:`.certs` — PEM/DER loading, a one-line description of a certificate.
* :mod:`.trust` — :class:`TrustStore` (anchors + CRLs), CERTREQ hashes.
* :mod:`.validate` — :func:`validate_chain`: build a path from the peer's
  certificates to an anchor and check it (RFC 5280 §6 subset, RFC 4945 profile).
* :mod:`.identity` — subjectAltName / DN identities and matching an IKE ID.
* :mod:`.payloads` — CERT and CERTREQ payload data (RFC 7296 §3.6, §3.7).
* :mod:`.issue` — a small CA for ``ipsecd pki`` (CA, gateway certificates, CRLs).

Layering: ``pki`` sits beside ``crypto``/``config``; ``ike``, ``config`` and ``cli``
import it, it imports none of them.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipsecd.pki.certs import describe, load_certificates, load_crls, load_private_key
    from ipsecd.pki.errors import CertificateError, PkiError
    from ipsecd.pki.identity import (
        IkeIdentity,
        check_identity,
        default_identity,
        identities_of,
        match_identity,
        parse_dn,
    )
    from ipsecd.pki.payloads import (
        certreq_data,
        decode_cert_payload,
        decode_certreq_payload,
        encode_cert_payload,
    )
    from ipsecd.pki.trust import TrustStore, spki_sha1
    from ipsecd.pki.validate import ValidatedChain, validate_chain

#: Where each name of the package lives: imported on first use (PEP 562), so that a
#: module that needs ``pki.identity``'s IKE identities, not X.509, does not pay for
#: ``cryptography.x509`` (2 MB of an idle PSK daemon; issue 17).
_WHERE = {
    **dict.fromkeys(("describe", "load_certificates", "load_crls", "load_private_key"), "certs"),
    **dict.fromkeys(("CertificateError", "PkiError"), "errors"),
    **dict.fromkeys(
        (
            "IkeIdentity",
            "check_identity",
            "default_identity",
            "identities_of",
            "match_identity",
            "parse_dn",
        ),
        "identity",
    ),
    **dict.fromkeys(
        ("certreq_data", "decode_cert_payload", "decode_certreq_payload", "encode_cert_payload"),
        "payloads",
    ),
    **dict.fromkeys(("TrustStore", "spki_sha1"), "trust"),
    **dict.fromkeys(("ValidatedChain", "validate_chain"), "validate"),
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ipsecd.pki' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ipsecd.pki.{module}"), name)


__all__ = [
    "CertificateError",
    "IkeIdentity",
    "PkiError",
    "TrustStore",
    "ValidatedChain",
    "certreq_data",
    "check_identity",
    "decode_cert_payload",
    "decode_certreq_payload",
    "default_identity",
    "describe",
    "encode_cert_payload",
    "identities_of",
    "load_certificates",
    "load_crls",
    "load_private_key",
    "match_identity",
    "parse_dn",
    "spki_sha1",
    "validate_chain",
]
