"""CHILD_SA negotiation state: traffic selector narrowing and key splitting.

Pure functions and one small state holder, used by the IKE_AUTH and
CREATE_CHILD_SA exchanges (RFC 7296 §1.3, §2.9, §2.17).  Nothing here knows
about messages; the exchanges translate payloads to these types.

States and transitions of a CHILD_SA are in :mod:`ipsecd.ike.lifecycle`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from ipsecd.config.schema import ChildConfig
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.ike.errors import NoProposalChosen, ProtocolError, TsUnacceptable
from ipsecd.ike.events import Address, ChildSaParams
from ipsecd.ike.lifecycle import (
    ChildEvent,
    ChildState,
    RetransmitPolicy,
    child_deadline,
    next_child_state,
)
from ipsecd.ike.proposal_codec import ChosenProposal
from ipsecd.selectors import TrafficSelector, format_selectors


@dataclass(frozen=True)
class ChildAlgorithms:
    """The transforms selected for a CHILD_SA: one of each type.

    ESP has a cipher (and an integrity algorithm unless the cipher is an AEAD);
    AH (``protocol`` "ah", RFC 4302) has an integrity algorithm and no cipher.
    """

    encr: EncrAlgorithm | None
    integ: IntegAlgorithm | None
    esn: bool
    ke: int | None = None  # PFS group id, if any
    protocol: str = "esp"  # esp | ah

    @classmethod
    def from_chosen(cls, chosen: ChosenProposal) -> ChildAlgorithms:
        return cls(
            encr=chosen.encryption,
            integ=chosen.integrity,
            esn=chosen.esn,
            ke=int(chosen.ke.transform_id) if chosen.ke is not None else None,
            protocol=chosen.protocol,
        )

    @property
    def name(self) -> str:
        """As logged and shown: ``aes256gcm16``, ``aes128-sha256``, ``ah-sha256``."""
        return child_algorithm(self.protocol, self.encr, self.integ)


def child_algorithm(protocol: str, encr: EncrAlgorithm | None, integ: IntegAlgorithm | None) -> str:
    """A CHILD_SA's transform in words: the ESP cipher (``-integrity``), or ``ah-integrity``."""
    names = [encr.name] if encr is not None else ["ah"] if protocol == "ah" else []
    return "-".join(names + ([integ.name] if integ is not None else []))


# ---- mode and protocol (RFC 7296 §1.3.1, §2.23) ---------------------------------------


def check_mode_answer(wanted: str, transport_answered: bool, peer: str) -> None:
    """Initiator: the responder's mode must be the one we asked for (RFC 7296 §1.3.1).

    A responder may decline USE_TRANSPORT_MODE and answer in tunnel mode; our
    config says transport, so the CHILD_SA fails, with both modes named.
    """
    if wanted == "transport" and not transport_answered:
        raise ProtocolError(
            f"peer {peer} answered the CHILD_SA in tunnel mode (no USE_TRANSPORT_MODE in its"
            " response, RFC 7296 §1.3.1), but esp.mode is transport here; configure transport"
            " mode on the peer too, or mode: tunnel here"
        )
    if wanted == "tunnel" and transport_answered:
        raise ProtocolError(
            f"peer {peer} answered the CHILD_SA in transport mode (USE_TRANSPORT_MODE), which"
            " we did not ask for (esp.mode is tunnel here; RFC 7296 §1.3.1)"
        )


def responder_mode(configured: str, transport_requested: bool, peer: str) -> str:
    """Responder: the mode of our answer (RFC 7296 §1.3.1), or NO_PROPOSAL_CHOSEN.

    A request for transport mode when we are configured for tunnel mode is
    answered in tunnel mode, as the RFC provides for (the initiator decides
    whether that will do).  A request for tunnel mode when we are configured
    for transport mode is refused: the responder cannot impose transport mode,
    and our selectors are the gateways' own addresses.
    """
    if configured == "transport" and not transport_requested:
        raise NoProposalChosen(
            f"peer {peer} asked for a tunnel-mode CHILD_SA (no USE_TRANSPORT_MODE, RFC 7296"
            " §1.3.1), but esp.mode is transport here; configure transport mode on the peer"
            " too, or mode: tunnel here"
        )
    return "transport" if transport_requested and configured == "transport" else "tunnel"


def check_ah_without_nat(protocol: str, nat_local: bool, nat_remote: bool, peer: str) -> None:
    """AH cannot cross a NAT (RFC 4302 §3.3.3.1: the ICV covers the addresses it rewrites;
    RFC 3948 encapsulates ESP only): refuse an AH CHILD_SA when IKE detected one.

    Raises a plain :class:`ProtocolError`; a responder answers it as NO_PROPOSAL_CHOSEN.
    """
    if protocol != "ah" or not (nat_local or nat_remote):
        return
    where = "in front of us" if nat_local else f"in front of peer {peer}"
    if nat_local and nat_remote:
        where = "on both sides"
    raise ProtocolError(
        f"AH cannot cross a NAT, and IKE detected one {where} (RFC 7296 §2.23; or the peer"
        " forces UDP encapsulation, like strongSwan's encap = yes): the AH ICV covers the IP"
        " addresses a NAT rewrites, and only ESP can be carried in UDP (RFC 3948); use"
        " protocol: esp with this peer"
    )


def new_child_spi(random_bytes: Callable[[int], bytes], taken: Container[int]) -> int:
    """A random inbound ESP SPI, not in ``taken``, never 0..255 (RFC 4303 §2.1)."""
    while True:
        spi = int.from_bytes(random_bytes(4), "big")
        if spi > 255 and spi not in taken:
            return spi


@dataclass
class ChildSa:
    """One CHILD_SA pair as the IKE SA tracks it (the data plane holds the keys in use)."""

    spi_in: int
    spi_out: int = 0
    # Written by transition() only; the deadline is when the state ends (lifecycle.py).
    state: ChildState = field(default=ChildState.CREATING, init=False)
    deadline: float | None = field(default=None, init=False)
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    name: str = ""  # the configured child (peers[].children[].name) it belongs to
    algorithms: ChildAlgorithms | None = None
    mode: str = "tunnel"  # tunnel | transport (RFC 7296 §1.3.1)
    params: ChildSaParams | None = field(default=None, repr=False)
    created_at: float = 0.0
    # Lifetimes (set by the manager when the child is installed; None = no limit).
    rekey_at: float | None = None
    expire_at: float | None = None
    lifetime_set: bool = False
    rekey_queued: bool = False
    bytes: int = 0  # usage reported by the data plane (larger direction)
    packets: int = 0
    packets_in: int = 0  # inbound ESP packets so far: traffic from the peer (DPD, §2.4)
    # Rekeying (RFC 7296 §2.8): the spi_in of the child this one replaces; whether our
    # outbound SA is in use (a rekey responder waits for the old SA's Delete).
    replaces: int | None = None
    outbound_active: bool = True
    redundant: bool = False  # lost a simultaneous rekey (§2.8.1): deleted by its creator
    was_rekeyed: bool = False
    # A rekey of this child the peer started while ours was outstanding (§2.8.1):
    # (spi_in of the child it created, lowest nonce of that exchange).
    peer_rekey: tuple[int, builtins.bytes] | None = None

    def transition(self, event: ChildEvent, now: float, policy: RetransmitPolicy) -> None:
        """Apply ``event`` by the lifecycle table; entering a state sets its deadline."""
        self.state = next_child_state(self.state, event, f"{self.spi_in:08x}")
        seconds = child_deadline(self.state, policy)
        self.deadline = None if seconds is None else now + seconds

    def describe(self) -> dict[str, object]:
        algs = self.algorithms
        return {
            "name": self.name,
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "state": self.state.value,
            "rekey_at": self.rekey_at,
            "local_ts": format_selectors(self.local_ts),
            "remote_ts": format_selectors(self.remote_ts),
            "algorithm": algs.name if algs else "",
            "mode": self.mode,
        }

    @property
    def protocol(self) -> str:
        """esp | ah: the protocol of the SPIs in Delete and REKEY_SA (RFC 7296 §3.11)."""
        return self.algorithms.protocol if self.algorithms is not None else "esp"


def _dedupe(selectors: list[TrafficSelector]) -> tuple[TrafficSelector, ...]:
    """Drop duplicates and selectors contained in another one, keeping order."""
    out: list[TrafficSelector] = []
    for ts in selectors:
        if any(other.contains(ts) for other in out):
            continue
        out = [o for o in out if not ts.contains(o)]
        out.append(ts)
    return tuple(out)


def narrow(
    proposed: tuple[TrafficSelector, ...], allowed: tuple[TrafficSelector, ...]
) -> tuple[TrafficSelector, ...]:
    """Intersect every proposed selector with every allowed one (RFC 7296 §2.9)."""
    result: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            both = p.intersect(a)
            if both is not None:
                result.append(both)
    return _dedupe(result)


def narrow_as_responder(
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
    local_ts: tuple[TrafficSelector, ...],
    remote_ts: tuple[TrafficSelector, ...],
    peer: str,
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """Narrow the initiator's TSi/TSr to our policy (RFC 7296 §2.9).

    TSi is the initiator's side (our remote), TSr ours (our local).  Returns
    (narrowed TSi, narrowed TSr); raises :class:`TsUnacceptable` naming both
    selector sets when either side has nothing left.
    """
    policy = ChildConfig(peer, local_ts, remote_ts, esp_proposals=())
    _, new_tsi, new_tsr = select_child((policy,), tsi, tsr, peer)
    return new_tsi, new_tsr


def select_child(
    children: tuple[ChildConfig, ...],
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
    peer: str,
) -> tuple[ChildConfig, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """The configured child a CHILD_SA request is for, and TSi/TSr narrowed to it (§2.9).

    As strongSwan's responder: the child whose selectors hold what the initiator proposed
    without narrowing wins; else the first (in config order) that narrowing leaves
    something of.  TsUnacceptable names every child's selectors when none fits.
    """

    def holds(allowed: tuple[TrafficSelector, ...], proposed: tuple[TrafficSelector, ...]) -> bool:
        return all(any(a.contains(p) for a in allowed) for p in proposed)

    first: tuple[ChildConfig, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]] | None
    first = None
    for child in children:
        if holds(child.remote_ts, tsi) and holds(child.local_ts, tsr):
            return child, narrow(tsi, child.remote_ts), narrow(tsr, child.local_ts)
        new_tsi, new_tsr = narrow(tsi, child.remote_ts), narrow(tsr, child.local_ts)
        if first is None and new_tsi and new_tsr:
            first = (child, new_tsi, new_tsr)
    if first is not None:
        return first
    allowed = "; ".join(
        f"{c.name}: remote_ts={format_selectors(c.remote_ts)}"
        f" local_ts={format_selectors(c.local_ts)}"
        for c in children
    )
    raise TsUnacceptable(
        f"traffic selectors of peer {peer} unacceptable: peer proposed"
        f" TSi={format_selectors(tsi)} TSr={format_selectors(tsr)}, our config allows"
        f" {allowed if len(children) > 1 else allowed.partition(': ')[2]}"
    )


def transport_nat_selectors(
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
    local: str,
    remote: str,
    peer: str,
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """Responder, transport mode across a NAT (RFC 7296 §2.23.1): the data plane's
    selectors ``(local_ts, remote_ts)``.

    Each side names itself by the address it has, which a NAT changes on the way: the
    initiator's TSi (or our own TSr) may be an address we never see.  A transport-mode SA
    only ever carries packets between the two IKE endpoints, so any single-host TSi and
    TSr are accepted as they are (and answered unchanged), and the SA is installed for
    the endpoints' addresses as this side sees them.  Raises TS_UNACCEPTABLE otherwise.
    """
    hosts = [ts for ts in (*tsi, *tsr) if ts.start == ts.end]
    if len(tsi) != 1 or len(tsr) != 1 or len(hosts) != 2:
        raise TsUnacceptable(
            f"peer {peer} asked for a transport-mode CHILD_SA across a NAT with"
            f" TSi={format_selectors(tsi)} TSr={format_selectors(tsr)}: transport mode"
            " takes one address on each side"
        )
    return (TrafficSelector.from_prefix(local),), (TrafficSelector.from_prefix(remote),)


def check_narrowed_as_initiator(
    proposed_tsi: tuple[TrafficSelector, ...],
    proposed_tsr: tuple[TrafficSelector, ...],
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
    peer: str,
) -> None:
    """The responder may only narrow what we proposed, never widen it (RFC 7296 §2.9)."""

    def inside(got: tuple[TrafficSelector, ...], offered: tuple[TrafficSelector, ...]) -> bool:
        return bool(got) and all(any(o.contains(g) for o in offered) for g in got)

    if not inside(tsi, proposed_tsi) or not inside(tsr, proposed_tsr):
        raise TsUnacceptable(
            f"peer {peer} answered traffic selectors TSi={format_selectors(tsi)}"
            f" TSr={format_selectors(tsr)} outside what we proposed:"
            f" TSi={format_selectors(proposed_tsi)} TSr={format_selectors(proposed_tsr)}"
        )


def split_keymat(
    keymat: bytes, algs: ChildAlgorithms
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """Split child KEYMAT into ((encr_i, integ_i), (encr_r, integ_r)) (RFC 7296 §2.17).

    Keys for traffic from the exchange initiator to the responder come first,
    encryption key (with AEAD salt) before integrity key; AH takes integrity
    keys only (its encryption keys are empty).
    """
    encr_len = algs.encr.keymat_len if algs.encr is not None else 0
    integ_len = algs.integ.key_len if algs.integ else 0
    need = 2 * (encr_len + integ_len)
    if len(keymat) < need:
        raise ValueError(f"KEYMAT too short: {len(keymat)} < {need}")
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        chunk = keymat[pos : pos + n]
        pos += n
        return chunk

    i_to_r = (take(encr_len), take(integ_len))
    r_to_i = (take(encr_len), take(integ_len))
    return i_to_r, r_to_i


def keymat_length(algs: ChildAlgorithms) -> int:
    encr_len = algs.encr.keymat_len if algs.encr is not None else 0
    return 2 * (encr_len + (algs.integ.key_len if algs.integ else 0))


def child_params(
    *,
    spi_in: int,
    spi_out: int,
    algs: ChildAlgorithms,
    keymat: bytes,
    exchange_initiator: bool,
    local_ts: tuple[TrafficSelector, ...],
    remote_ts: tuple[TrafficSelector, ...],
    remote: Address,
    name: str = "",
    local: Address | None = None,
    mode: str = "tunnel",
    encap: bool = True,
    nat: bool = False,
) -> ChildSaParams:
    """Build the data-plane parameters; "in" keys are the ones the peer sends with.

    ``encap``: ESP in UDP (RFC 3948); False: directly over IP (protocol 50/51).
    ``nat``: IKE detected a NAT (RFC 7296 §2.23), so transport-mode TCP/UDP checksums
    need the RFC 3948 §3.1.2 fix-up.
    """
    i_to_r, r_to_i = split_keymat(keymat, algs)
    out_keys, in_keys = (i_to_r, r_to_i) if exchange_initiator else (r_to_i, i_to_r)
    return ChildSaParams(
        spi_in=spi_in,
        spi_out=spi_out,
        encr=algs.encr,
        integ=algs.integ,
        esn=algs.esn,
        encr_key_in=in_keys[0],
        integ_key_in=in_keys[1],
        encr_key_out=out_keys[0],
        integ_key_out=out_keys[1],
        local_ts=local_ts,
        remote_ts=remote_ts,
        remote=remote,
        name=name,
        local=local,
        mode=mode,
        protocol=algs.protocol,
        encap=encap,
        nat=nat,
    )
