"""Proposal strings in strongSwan syntax -> typed proposals.

Operators write ``aes256gcm16-prfsha384-x25519`` or ``aes128-sha256-ecp256``
(IKE), ``aes256gcm16`` or ``aes128-sha256-modp2048-esn`` (ESP) and ``sha256``
or ``sha384-esn`` (AH: integrity only, swanctl's ``ah_proposals``), exactly as in
swanctl.conf.  A token may repeat a transform type to offer alternatives
(``aes128-aes256-sha256-ecp256-x25519``).  Parsing fails with a message that
names the bad token and lists what is accepted.

RFC 9370 additional key exchanges are written as strongSwan 6 does:
``aes256gcm16-prfsha384-x25519-ke1_mlkem768`` (``keN_ALG``, N = 1..7, ALG an
ML-KEM, a KE group or ``none``).  IKE runs them in IKE_INTERMEDIATE exchanges,
CHILD_SA rekeys in IKE_FOLLOWUP_KE exchanges (:mod:`ipsecd.ike.exchanges`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ipsecd.crypto import mlkem
from ipsecd.crypto.registry import (
    ADDITIONAL_KE_NONE,
    ALIASES,
    ENCRYPTION,
    INTEGRITY,
    KEY_EXCHANGE,
    ML_KEM,
    ML_KEM_UNAVAILABLE,
    PRF,
    PRF_FOR_INTEG,
    EncrAlgorithm,
    IntegAlgorithm,
    KeAlgorithm,
    PrfAlgorithm,
)


class ProposalError(ValueError):
    """A proposal string that does not parse; the message says which token and why."""


@dataclass(frozen=True)
class Proposal:
    """One proposal: the alternatives offered for each transform type.

    For IKE: ``encryption`` and ``prf`` and ``ke`` are non-empty; ``integrity``
    is empty iff every encryption algorithm is an AEAD.  For ESP: ``prf`` is
    empty, ``ke`` is empty unless PFS is wanted, ``esn`` lists the accepted ESN
    modes (False = 32-bit sequence numbers).  For AH (RFC 4302, integrity only):
    ``encryption`` and ``prf`` are empty, ``integrity`` is not.
    """

    protocol: str  # "ike", "esp" or "ah"
    encryption: tuple[EncrAlgorithm, ...]
    integrity: tuple[IntegAlgorithm, ...]
    prf: tuple[PrfAlgorithm, ...]
    ke: tuple[KeAlgorithm, ...]
    esn: tuple[bool, ...] = (False,)
    text: str = ""
    # RFC 9370: additional_ke[n-1] = the alternatives for ADDKEn; () = ADDKEn not offered.
    additional_ke: tuple[tuple[KeAlgorithm, ...], ...] = ()

    def __str__(self) -> str:
        return self.text or "-".join(
            [a.name for a in self.encryption]
            + [a.name for a in self.integrity]
            + [a.name for a in self.prf]
            + [a.name for a in self.ke]
            + [f"ke{n}_{a.name}" for n, algs in enumerate(self.additional_ke, 1) for a in algs]
        )


def _known_tokens(protocol: str) -> str:
    names = ([] if protocol == "ah" else list(ENCRYPTION)) + list(INTEGRITY) + list(KEY_EXCHANGE)
    names += list(PRF) if protocol == "ike" else ["esn", "noesn"]
    return ", ".join(names)


_ADDITIONAL_KE_TOKEN = re.compile(r"ke([1-7])_(\w+)")


def _additional_ke(raw: str, text: str) -> tuple[int, KeAlgorithm]:
    """``keN_ALG`` -> (N, algorithm) (RFC 9370 §2.2.1), or a ProposalError saying why not."""
    m = _ADDITIONAL_KE_TOKEN.fullmatch(raw)
    assert m is not None
    n, name = int(m.group(1)), ALIASES.get(m.group(2), m.group(2))
    if name in ML_KEM_UNAVAILABLE:
        raise ProposalError(f"{raw!r} in proposal {text!r}: {ML_KEM_UNAVAILABLE[name]}")
    if name == "none":
        return n, ADDITIONAL_KE_NONE
    alg = ML_KEM.get(name) or KEY_EXCHANGE.get(name)
    if alg is not None and alg.kind == "mlkem" and (why := mlkem.unavailable_reason()):
        raise ProposalError(f"{raw!r} in proposal {text!r}: {why}")
    if alg is None:
        raise ProposalError(
            f"unknown additional key exchange {raw!r} in proposal {text!r}"
            f" (known after keN_: {', '.join([*ML_KEM, *KEY_EXCHANGE, 'none'])})"
        )
    return n, alg


def parse_proposal(text: str, protocol: str) -> Proposal:
    """Parse one strongSwan-style proposal for ``protocol`` ("ike", "esp" or "ah")."""
    if protocol not in ("ike", "esp", "ah"):
        raise ValueError(f"protocol must be 'ike', 'esp' or 'ah', not {protocol!r}")
    if not isinstance(text, str) or not text.strip():
        raise ProposalError("empty proposal")
    encr: list[EncrAlgorithm] = []
    integ: list[IntegAlgorithm] = []
    prf: list[PrfAlgorithm] = []
    ke: list[KeAlgorithm] = []
    esn: list[bool] = []
    additional: dict[int, list[KeAlgorithm]] = {}
    for raw in text.strip().lower().split("-"):
        token = ALIASES.get(raw, raw)
        if _ADDITIONAL_KE_TOKEN.fullmatch(raw):
            n, alg = _additional_ke(raw, text)
            additional.setdefault(n, []).append(alg)
        elif token in ML_KEM or token in ML_KEM_UNAVAILABLE:
            raise ProposalError(
                f"{raw!r} in proposal {text!r}: ML-KEM is offered only as an additional"
                f" key exchange after a classic one, e.g. x25519-ke1_{token}"
                + (f"; {ML_KEM_UNAVAILABLE[token]}" if token in ML_KEM_UNAVAILABLE else "")
            )
        elif token in ENCRYPTION and protocol == "ah":
            raise ProposalError(
                f"{raw!r} in AH proposal {text!r}: AH protects integrity only and has no"
                " encryption (RFC 4302); name integrity algorithms only (e.g. sha256), or"
                " use ESP to encrypt"
            )
        elif token in ENCRYPTION:
            encr.append(ENCRYPTION[token])
        elif token in INTEGRITY:
            integ.append(INTEGRITY[token])
        elif token in PRF and protocol == "ike":
            prf.append(PRF[token])
        elif token in KEY_EXCHANGE:
            ke.append(KEY_EXCHANGE[token])
        elif token in ("esn", "noesn") and protocol != "ike":
            esn.append(token == "esn")
        else:
            raise ProposalError(
                f"unknown {protocol.upper()} algorithm {raw!r} in proposal {text!r}"
                f" (known: {_known_tokens(protocol)})"
            )
    if protocol == "ah":
        if not integ:
            raise ProposalError(f"AH proposal {text!r} names no integrity algorithm (e.g. sha256)")
        if additional:
            raise ProposalError(f"AH proposal {text!r}: additional key exchanges are for IKE")
        return Proposal(
            protocol=protocol,
            encryption=(),
            integrity=tuple(dict.fromkeys(integ)),
            prf=(),
            ke=tuple(dict.fromkeys(ke)),
            esn=tuple(dict.fromkeys(esn)) or (False,),
            text=text.strip(),
        )
    if not encr:
        raise ProposalError(f"proposal {text!r} names no encryption algorithm")
    aead = [a.aead for a in encr]
    if any(aead) and not all(aead):
        raise ProposalError(
            f"proposal {text!r} mixes AEAD and non-AEAD ciphers; write them as two proposals"
        )
    if all(aead) and integ:
        raise ProposalError(
            f"proposal {text!r}: AEAD ciphers carry their own integrity; drop "
            + ", ".join(a.name for a in integ)
        )
    if not any(aead) and not integ:
        raise ProposalError(
            f"proposal {text!r}: cipher {encr[0].name} needs an integrity algorithm (e.g. sha256)"
        )
    if protocol == "ike":
        if not prf:
            if integ:
                prf = [PRF[PRF_FOR_INTEG[a.name]] for a in integ]
            else:
                raise ProposalError(
                    f"IKE proposal {text!r} with an AEAD cipher needs a PRF (e.g. prfsha256)"
                )
        if not ke:
            raise ProposalError(
                f"IKE proposal {text!r} names no key exchange (e.g. x25519, ecp256, modp2048)"
            )
    if additional and not ke:
        raise ProposalError(
            f"proposal {text!r}: additional key exchanges (keN_) follow a key exchange;"
            " name one first (e.g. x25519)"
        )
    return Proposal(
        protocol=protocol,
        encryption=tuple(dict.fromkeys(encr)),
        integrity=tuple(dict.fromkeys(integ)),
        prf=tuple(dict.fromkeys(prf)),
        ke=tuple(dict.fromkeys(ke)),
        esn=tuple(dict.fromkeys(esn)) or (False,),
        text=text.strip(),
        additional_ke=tuple(
            tuple(dict.fromkeys(additional.get(n, ())))
            for n in range(1, max(additional, default=0) + 1)
        ),
    )
