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

from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.ike.errors import TsUnacceptable
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
    """The transforms selected for a CHILD_SA (ESP): one of each type."""

    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    esn: bool
    ke: int | None = None  # PFS group id, if any

    @classmethod
    def from_chosen(cls, chosen: ChosenProposal) -> ChildAlgorithms:
        return cls(
            encr=chosen.encryption,
            integ=chosen.integrity,
            esn=chosen.esn,
            ke=int(chosen.ke.transform_id) if chosen.ke is not None else None,
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
    algorithms: ChildAlgorithms | None = None
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
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "state": self.state.value,
            "rekey_at": self.rekey_at,
            "local_ts": format_selectors(self.local_ts),
            "remote_ts": format_selectors(self.remote_ts),
            "algorithm": (
                algs.encr.name + (f"-{algs.integ.name}" if algs.integ else "") if algs else ""
            ),
        }


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
    new_tsi = narrow(tsi, remote_ts)
    new_tsr = narrow(tsr, local_ts)
    if not new_tsi or not new_tsr:
        raise TsUnacceptable(
            f"traffic selectors of peer {peer} unacceptable: peer proposed"
            f" TSi={format_selectors(tsi)} TSr={format_selectors(tsr)}, our config allows"
            f" remote_ts={format_selectors(remote_ts)} local_ts={format_selectors(local_ts)}"
        )
    return new_tsi, new_tsr


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
    encryption key (with AEAD salt) before integrity key.
    """
    encr_len = algs.encr.keymat_len
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
    return 2 * (algs.encr.keymat_len + (algs.integ.key_len if algs.integ else 0))


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
) -> ChildSaParams:
    """Build the data-plane parameters; "in" keys are the ones the peer sends with."""
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
    )
