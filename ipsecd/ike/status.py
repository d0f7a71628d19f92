"""The IKE part of ``ipsecctl status``: one plain-data entry per peer (no objects)."""

from __future__ import annotations

from typing import Any

from ipsecd.ike import dpd
from ipsecd.ike.policy import PeerState
from ipsecd.ike.sa import IkeSa


def peer_status(name: str, state: PeerState, sa: IkeSa | None, *, ike_sas: int) -> dict[str, Any]:
    """``sa`` is the peer's current IKE SA (None: down, connecting or held)."""
    entry: dict[str, Any] = {"peer": name, "last_error": state.last_error, "ike_sas": ike_sas}
    if sa is None:
        entry["state"] = (
            "held"  # dpd_action hold: the next packet for remote_ts starts it
            if state.held
            else "connecting"
            if state.retry_at is not None
            else "down"
        )
        if state.retry_at is not None:
            entry["retry_at"] = state.retry_at
        return entry
    algs = sa.ike_algorithms
    entry.update(
        state=sa.state.value,
        role="initiator" if sa.initiator else "responder",
        local=f"{sa.local[0]}:{sa.local[1]}",
        remote=f"{sa.remote[0]}:{sa.remote[1]}",
        local_spi=f"{sa.local_spi:016x}",
        remote_spi=f"{sa.remote_spi:016x}",
        nat_local=sa.nat_local,
        nat_remote=sa.nat_remote,
        fragmentation=sa.fragmentation_active,  # RFC 7383, both sides agreed
        algorithm=str(algs) if algs is not None else "",
        established_at=sa.established_at,
        rekey_at=sa.rekey_at,
        children=[c.describe() for c in sa.children.values()],
        **dpd.describe(sa),
    )
    return entry
