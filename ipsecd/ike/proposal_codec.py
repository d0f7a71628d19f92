"""Config proposals <-> SA payload proposals, and proposal selection (RFC 7296 §2.7, §3.3).

Building (initiator, or any SA payload we send)::

    sa_payload(proposals, spi=b"") -> SecurityAssociation
        One SA proposal per config :class:`Proposal`, numbered from 1, with
        every alternative of every transform type.  IKE: protocol 1, SPI empty
        in IKE_SA_INIT, the 8-byte new SPI for an IKE rekey.  ESP: protocol 3,
        4-byte SPI; a KE transform only when the proposal has ``ke`` (PFS);
        an ESN transform always.
    chosen_sa_payload(chosen, spi=b"") -> SecurityAssociation
        The responder's answer: the single selected proposal, keeping the
        number of the proposal it came from (§3.3.1), one transform per type.

Selecting (responder; also used by the initiator to check the answer)::

    select(offered, ours, protocol, prefer="ours", ignore_ke=False) -> ChosenProposal | None
    explain_no_match(offered, ours, protocol) -> str
        "no match for KE: offered ecp256, we accept x25519"

Preference order: like strongSwan's default (``prefer_configured_proposals``),
``prefer="ours"`` walks OUR proposals in config order and, inside each, our
algorithms in config order, taking the first one the peer also offered.
``prefer="theirs"`` walks the peer's proposals and transforms in their order
instead (RFC 7296 §2.7 lets the responder choose either way).

A proposal is acceptable when, for every transform type the peer included,
we accept one of its transforms; a transform carrying an attribute other
than Key Length is never accepted (§3.3.6); a transform type we do not know
is acceptable only if it offers NONE (id 0, the RFC 9370 "optional" form).
KE: if we want no KE (no PFS), the offer must have no KE transform or offer
NONE; ``ignore_ke=True`` drops KE transforms from the offer first (IKE_AUTH,
where the first CHILD_SA uses the IKE SA's key exchange, §1.2).  ESN: a
missing ESN transform means 32-bit sequence numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import (
    EncrAlgorithm,
    EsnId,
    IntegAlgorithm,
    KeAlgorithm,
    PrfAlgorithm,
    TransformType,
    encr_by_id,
    integ_by_id,
    ke_by_id,
    prf_by_id,
    transform_name,
)
from ipsecd.ike.constants import ProtocolId
from ipsecd.ike.errors import NoProposalChosen
from ipsecd.ike.payloads import SaProposal, SecurityAssociation, Transform

__all__ = [
    "ChosenProposal",
    "sa_payload",
    "chosen_sa_payload",
    "proposal_transforms",
    "select",
    "explain_no_match",
    "choose",
    "check_answer",
    "format_proposals",
    "to_proposal",
    "describe",
    "PROTOCOL_IDS",
]

PROTOCOL_IDS = {"ike": ProtocolId.IKE, "esp": ProtocolId.ESP}
_TYPE_LABEL: dict[int, str] = {
    TransformType.ENCR: "ENCR",
    TransformType.PRF: "PRF",
    TransformType.INTEG: "INTEG",
    TransformType.KE: "KE",
    TransformType.ESN: "ESN",
}
_NONE_ID = 0


def _encr_transform(alg: EncrAlgorithm) -> Transform:
    key_length = alg.key_bits if alg.key_length_attribute else None
    return Transform(TransformType.ENCR, alg.transform_id, key_length)


def proposal_transforms(proposal: Proposal, include_ke: bool = True) -> tuple[Transform, ...]:
    """Every alternative of every transform type of a config proposal (§3.3.2 order)."""
    out = [_encr_transform(a) for a in proposal.encryption]
    if proposal.protocol == "ike":
        out += [Transform(TransformType.PRF, a.transform_id) for a in proposal.prf]
    out += [Transform(TransformType.INTEG, a.transform_id) for a in proposal.integrity]
    if include_ke:
        out += [Transform(TransformType.KE, a.transform_id) for a in proposal.ke]
    if proposal.protocol == "esp":
        out += [
            Transform(TransformType.ESN, EsnId.ESN if esn else EsnId.NO_ESN) for esn in proposal.esn
        ]
    return tuple(out)


def sa_payload(proposals: Sequence[Proposal], spi: bytes = b"") -> SecurityAssociation:
    """The SA payload offering ``proposals`` in order (RFC 7296 §3.3)."""
    if not proposals:
        raise ValueError("an SA payload needs at least one proposal")
    return SecurityAssociation(
        tuple(
            SaProposal(n, PROTOCOL_IDS[p.protocol], spi, proposal_transforms(p))
            for n, p in enumerate(proposals, start=1)
        )
    )


@dataclass(frozen=True)
class ChosenProposal:
    """One transform per type, as selected (RFC 7296 §2.7).

    ``number`` and ``spi`` come from the SA proposal it was selected from
    (for ESP, ``spi`` is the SPI the sender of that proposal wants to
    receive with).  ``integrity`` is None for AEADs, ``prf`` None for ESP,
    ``ke`` None without (or with NONE) key exchange.
    """

    protocol: str
    number: int
    spi: bytes
    encryption: EncrAlgorithm
    integrity: IntegAlgorithm | None
    prf: PrfAlgorithm | None
    ke: KeAlgorithm | None
    esn: bool = False

    def transforms(self) -> tuple[Transform, ...]:
        out = [_encr_transform(self.encryption)]
        if self.prf is not None:
            out.append(Transform(TransformType.PRF, self.prf.transform_id))
        if self.integrity is not None:
            out.append(Transform(TransformType.INTEG, self.integrity.transform_id))
        if self.ke is not None:
            out.append(Transform(TransformType.KE, self.ke.transform_id))
        if self.protocol == "esp":
            out.append(Transform(TransformType.ESN, EsnId.ESN if self.esn else EsnId.NO_ESN))
        return tuple(out)

    def to_proposal(self) -> Proposal:
        return Proposal(
            protocol=self.protocol,
            encryption=(self.encryption,),
            integrity=(self.integrity,) if self.integrity else (),
            prf=(self.prf,) if self.prf else (),
            ke=(self.ke,) if self.ke else (),
            esn=(self.esn,),
        )

    def __str__(self) -> str:
        names = [self.encryption.name]
        names += [a.name for a in (self.integrity, self.prf, self.ke) if a is not None]
        if self.protocol == "esp":
            names.append("esn" if self.esn else "noesn")
        return "-".join(names)


def chosen_sa_payload(chosen: ChosenProposal, spi: bytes = b"") -> SecurityAssociation:
    """The responder's SA payload: the one chosen proposal with our SPI (§2.7, §3.3.1)."""
    return SecurityAssociation(
        (SaProposal(chosen.number, PROTOCOL_IDS[chosen.protocol], spi, chosen.transforms()),)
    )


# ---- selection -----------------------------------------------------------------


def _usable(t: Transform) -> bool:
    return not t.other_attributes


def _pick(ours: Sequence[object], theirs: Sequence[object], prefer_ours: bool) -> object | None:
    """First common element in our order (or theirs); None if there is none."""
    if prefer_ours:
        return next((x for x in ours if x in theirs), None)
    return next((x for x in theirs if x in ours), None)


_MISSING = object()  # "no acceptable transform of this type"


def _match(
    ours: Proposal, offered: SaProposal, prefer_ours: bool, ignore_ke: bool
) -> ChosenProposal | None:
    if offered.protocol_id != PROTOCOL_IDS[ours.protocol]:
        return None
    by_type: dict[int, list[Transform]] = {}
    for t in offered.transforms:
        if ignore_ke and t.transform_type == TransformType.KE:
            continue
        by_type.setdefault(t.transform_type, []).append(t)
    for ttype, transforms in by_type.items():
        if ttype not in _TYPE_LABEL and not any(t.transform_id == _NONE_ID for t in transforms):
            return None  # a transform type we cannot provide and the peer requires

    def algs(ttype: int, lookup: Callable[[Transform], object | None]) -> list[object]:
        found = (lookup(t) for t in by_type.get(ttype, ()) if _usable(t))
        return [a for a in found if a is not None]

    def has_none(ttype: int) -> bool:
        return any(t.transform_id == _NONE_ID and _usable(t) for t in by_type.get(ttype, ()))

    encr = _pick(
        ours.encryption,
        algs(TransformType.ENCR, lambda t: encr_by_id(t.transform_id, t.key_length)),
        prefer_ours,
    )
    if encr is None:
        return None

    def optional(
        ttype: int, mine: Sequence[object], lookup: Callable[[Transform], object | None]
    ) -> object:
        """Select a type that may be absent: absent on both sides (or NONE offered) is fine."""
        if not mine:
            return None if ttype not in by_type or has_none(ttype) else _MISSING
        chosen = _pick(mine, algs(ttype, lookup), prefer_ours)
        return _MISSING if chosen is None else chosen

    integ = optional(TransformType.INTEG, ours.integrity, lambda t: integ_by_id(t.transform_id))
    ke = optional(TransformType.KE, ours.ke, lambda t: ke_by_id(t.transform_id))
    if ours.protocol == "ike":
        prf = _pick(
            ours.prf, algs(TransformType.PRF, lambda t: prf_by_id(t.transform_id)), prefer_ours
        )
        if TransformType.ESN in by_type or prf is None:
            return None
        esn: object = False
    else:
        if TransformType.PRF in by_type:
            return None
        prf = None
        offered_esn = (
            algs(TransformType.ESN, lambda t: t.transform_id == EsnId.ESN)
            if TransformType.ESN in by_type
            else [False]
        )
        esn = _pick(ours.esn, offered_esn, prefer_ours)
        if esn is None:
            return None
    if integ is _MISSING or ke is _MISSING:
        return None
    return ChosenProposal(
        protocol=ours.protocol,
        number=offered.number,
        spi=offered.spi,
        encryption=encr,  # type: ignore[arg-type]  # _pick keeps the lookup's type
        integrity=integ,  # type: ignore[arg-type]  # (object in _match's generic code)
        prf=prf,  # type: ignore[arg-type]  # ditto
        ke=ke,  # type: ignore[arg-type]  # ditto
        esn=bool(esn),
    )


def select(
    offered: Sequence[SaProposal],
    ours: Sequence[Proposal],
    protocol: str,
    prefer: str = "ours",
    ignore_ke: bool = False,
) -> ChosenProposal | None:
    """The first acceptable (our proposal, offered proposal) pair, or None (§2.7).

    ``protocol`` ("ike"/"esp") restricts both sides; see the module docstring
    for ``prefer`` and ``ignore_ke``.
    """
    if prefer not in ("ours", "theirs"):
        raise ValueError("prefer must be 'ours' or 'theirs'")
    mine = [p for p in ours if p.protocol == protocol]
    if prefer == "ours":
        pairs = ((m, o) for m in mine for o in offered)
    else:
        pairs = ((m, o) for o in offered for m in mine)
    for m, o in pairs:
        chosen = _match(m, o, prefer == "ours", ignore_ke)
        if chosen is not None:
            return chosen
    return None


# ---- description (logs, NO_PROPOSAL_CHOSEN) ---------------------------------------


def _transform_name(t: Transform) -> str:
    """strongSwan's keyword or the IANA name of any transform (``sha1``), never ``INTEG#2``."""
    name = transform_name(t.transform_type, t.transform_id, t.key_length)
    if t.other_attributes:
        name += "(+attrs)"
    return name


_DESCRIBE_ORDER: dict[int, int] = {
    TransformType.ENCR: 0,
    TransformType.INTEG: 1,
    TransformType.PRF: 2,
    TransformType.KE: 3,
    TransformType.ESN: 4,
}


def describe(proposal: SaProposal) -> str:
    """A received proposal in strongSwan syntax (encr-integ-prf-ke-esn), ``KE#99`` if unassigned."""
    ordered = sorted(proposal.transforms, key=lambda t: _DESCRIBE_ORDER.get(t.transform_type, 9))
    return "-".join(_transform_name(t) for t in ordered) or "(empty)"


def to_proposal(proposal: SaProposal, protocol: str) -> Proposal:
    """A received proposal as a config :class:`Proposal` (known algorithms only).

    ``str()`` of the result is :func:`describe`, so unknown transforms still show
    in logs.
    """
    encr, integ, prf, ke, esn = [], [], [], [], []
    for t in proposal.transforms:
        if t.transform_type == TransformType.ENCR:
            encr.append(encr_by_id(t.transform_id, t.key_length))
        elif t.transform_type == TransformType.INTEG:
            integ.append(integ_by_id(t.transform_id))
        elif t.transform_type == TransformType.PRF:
            prf.append(prf_by_id(t.transform_id))
        elif t.transform_type == TransformType.KE:
            ke.append(ke_by_id(t.transform_id))
        elif t.transform_type == TransformType.ESN:
            esn.append(t.transform_id == EsnId.ESN)
    return Proposal(
        protocol=protocol,
        encryption=tuple(a for a in encr if a is not None),
        integrity=tuple(a for a in integ if a is not None),
        prf=tuple(a for a in prf if a is not None),
        ke=tuple(a for a in ke if a is not None),
        esn=tuple(esn) or (False,),
        text=describe(proposal),
    )


def _our_names(ours: Sequence[Proposal], ttype: int) -> list[str]:
    names: list[str] = []
    for p in ours:
        if ttype == TransformType.ENCR:
            names += [a.name for a in p.encryption]
        elif ttype == TransformType.INTEG:
            names += [a.name for a in p.integrity] or ["none"]
        elif ttype == TransformType.PRF:
            names += [a.name for a in p.prf]
        elif ttype == TransformType.KE:
            names += [a.name for a in p.ke] or ["none"]
        elif ttype == TransformType.ESN and p.protocol == "esp":
            names += ["esn" if e else "noesn" for e in p.esn]
    return list(dict.fromkeys(names))


def explain_no_match(
    offered: Sequence[SaProposal], ours: Sequence[Proposal], protocol: str, ignore_ke: bool = False
) -> str:
    """Why :func:`select` found nothing, for the NO_PROPOSAL_CHOSEN log line.

    Names the first transform type (ENCR, INTEG, PRF, KE, ESN) where no
    offered transform is one we accept, e.g. ``no match for KE: offered
    ecp256, we accept x25519``; otherwise both proposal lists.
    """
    proto_id = PROTOCOL_IDS[protocol]
    mine = [p for p in ours if p.protocol == protocol]
    theirs = [o for o in offered if o.protocol_id == proto_id]
    if not theirs:
        got = ", ".join(sorted({str(int(o.protocol_id)) for o in offered})) or "none"
        return f"peer offered no {protocol.upper()} proposal (protocol ids offered: {got})"
    for ttype in (
        TransformType.ENCR,
        TransformType.INTEG,
        TransformType.PRF,
        TransformType.KE,
        TransformType.ESN,
    ):
        if ignore_ke and ttype == TransformType.KE:
            continue
        if protocol == "esp" and ttype == TransformType.PRF:
            continue
        if protocol == "ike" and ttype == TransformType.ESN:
            continue
        offered_names: list[str] = []
        for o in theirs:
            found = [_transform_name(t) for t in o.transforms if t.transform_type == ttype]
            if not found and ttype in (TransformType.INTEG, TransformType.KE):
                found = ["none"]
            if not found and ttype == TransformType.ESN:
                found = ["noesn"]
            offered_names += found
        offered_names = list(dict.fromkeys(offered_names))
        accepted = _our_names(mine, ttype)
        if not set(offered_names) & set(accepted):
            return (
                f"no match for {_TYPE_LABEL[ttype]}: offered {', '.join(offered_names) or '-'},"
                f" we accept {', '.join(accepted) or '-'}"
            )
    return (
        "no single proposal matches in every transform type: offered "
        + "; ".join(describe(o) for o in theirs)
        + ", we accept "
        + "; ".join(str(p) for p in mine)
    )


# ---- negotiation (RFC 7296 §2.7): selection with the operator's explanation -------


def format_proposals(proposals: Sequence[object]) -> str:
    return ", ".join(str(p) for p in proposals) or "(none)"


def choose(
    offered: SecurityAssociation | None, ours: Sequence[Proposal], protocol: str, peer: str
) -> ChosenProposal:
    """Responder: the first acceptable proposal of the peer's SA payload (RFC 7296 §2.7).

    Raises :class:`NoProposalChosen` naming the first transform type without a match
    (:func:`explain_no_match`) and both offers.
    """
    proposals = offered.proposals if offered is not None else ()
    chosen = select(proposals, ours, protocol)
    if chosen is None:
        theirs = [to_proposal(p, protocol) for p in proposals]
        raise NoProposalChosen(
            f"no {protocol.upper()} proposal chosen with peer {peer}:"
            f" {explain_no_match(proposals, ours, protocol)}; peer offered"
            f" {format_proposals(theirs)}, we accept {format_proposals(ours)}"
        )
    return chosen


def check_answer(
    answer: SecurityAssociation | None,
    ours: Sequence[Proposal],
    protocol: str,
    peer: str,
    *,
    fatal: bool,
) -> ChosenProposal:
    """Initiator: the responder's single proposal must be one we offered (RFC 7296 §2.7)."""
    proposals = answer.proposals if answer is not None else ()
    chosen = select(proposals, ours, protocol) if len(proposals) == 1 else None
    if chosen is None:
        raise NoProposalChosen(
            f"peer {peer} answered with an {protocol.upper()} proposal we did not offer;"
            f" we offered {format_proposals(ours)}",
            fatal=fatal,
        )
    return chosen
