"""Proposal strings in strongSwan syntax -> typed proposals.

Operators write ``aes256gcm16-prfsha384-x25519`` or ``aes128-sha256-ecp256``
(IKE) and ``aes256gcm16`` or ``aes128-sha256-modp2048-esn`` (ESP), exactly as
in swanctl.conf.  A token may repeat a transform type to offer alternatives
(``aes128-aes256-sha256-ecp256-x25519``).  Parsing fails with a message that
names the bad token and lists what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipsecd.crypto.registry import (
    ALIASES,
    ENCRYPTION,
    INTEGRITY,
    KEY_EXCHANGE,
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
    modes (False = 32-bit sequence numbers).
    """

    protocol: str  # "ike" or "esp"
    encryption: tuple[EncrAlgorithm, ...]
    integrity: tuple[IntegAlgorithm, ...]
    prf: tuple[PrfAlgorithm, ...]
    ke: tuple[KeAlgorithm, ...]
    esn: tuple[bool, ...] = (False,)
    text: str = ""

    def __str__(self) -> str:
        return self.text or "-".join(
            [a.name for a in self.encryption]
            + [a.name for a in self.integrity]
            + [a.name for a in self.prf]
            + [a.name for a in self.ke]
        )


def _known_tokens(protocol: str) -> str:
    names = list(ENCRYPTION) + list(INTEGRITY) + list(KEY_EXCHANGE)
    names += list(PRF) if protocol == "ike" else ["esn", "noesn"]
    return ", ".join(names)


def parse_proposal(text: str, protocol: str) -> Proposal:
    """Parse one strongSwan-style proposal for ``protocol`` ("ike" or "esp")."""
    if protocol not in ("ike", "esp"):
        raise ValueError(f"protocol must be 'ike' or 'esp', not {protocol!r}")
    if not isinstance(text, str) or not text.strip():
        raise ProposalError("empty proposal")
    encr: list[EncrAlgorithm] = []
    integ: list[IntegAlgorithm] = []
    prf: list[PrfAlgorithm] = []
    ke: list[KeAlgorithm] = []
    esn: list[bool] = []
    for raw in text.strip().lower().split("-"):
        token = ALIASES.get(raw, raw)
        if token in ENCRYPTION:
            encr.append(ENCRYPTION[token])
        elif token in INTEGRITY:
            integ.append(INTEGRITY[token])
        elif token in PRF and protocol == "ike":
            prf.append(PRF[token])
        elif token in KEY_EXCHANGE:
            ke.append(KEY_EXCHANGE[token])
        elif token in ("esn", "noesn") and protocol == "esp":
            esn.append(token == "esn")
        else:
            raise ProposalError(
                f"unknown {protocol.upper()} algorithm {raw!r} in proposal {text!r}"
                f" (known: {_known_tokens(protocol)})"
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
    return Proposal(
        protocol=protocol,
        encryption=tuple(dict.fromkeys(encr)),
        integrity=tuple(dict.fromkeys(integ)),
        prf=tuple(dict.fromkeys(prf)),
        ke=tuple(dict.fromkeys(ke)),
        esn=tuple(dict.fromkeys(esn)) or (False,),
        text=text.strip(),
    )
