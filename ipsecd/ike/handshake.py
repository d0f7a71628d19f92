"""What IKE_SA_INIT announced and IKE_INTERMEDIATE accumulated, for IKE_AUTH to use.

One :class:`Handshake` per IKE SA (``IkeSa.handshake``), written by the exchanges:

* :mod:`.exchanges.sa_init` — the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4), its
  CERTREQ CA hashes (RFC 7296 §3.7), whether both sides announced IKE_INTERMEDIATE
  (RFC 9242 §3) and USE_PPK (RFC 8784 §3), and the additional key exchanges the chosen
  proposal asks for (RFC 9370 §2.2.2);
* :mod:`.exchanges.intermediate` — one IKE_INTERMEDIATE exchange per additional key
  exchange: the IntAuth chain (RFC 9242 §3.3.2) and the keys before the last update;
* :mod:`.exchanges.auth` — how each side authenticated, for status and logs;
* :mod:`.exchanges.followup` — the additional key exchanges of a CREATE_CHILD_SA
  still to run in IKE_FOLLOWUP_KE exchanges (RFC 9370 §2.2.4), as
  :class:`PendingFollowup`.

Nothing here sends or decides anything; it is the record the exchanges share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipsecd.crypto.registry import KeAlgorithm
from ipsecd.ike.additional_ke import IntAuthChain
from ipsecd.ike.keys import IkeKeys

__all__ = ["Handshake", "AuthRecord"]


@dataclass(frozen=True)
class AuthRecord:
    """How the two sides authenticated in IKE_AUTH (status, logs)."""

    local: str  # "psk", "pubkey (ECDSA P-256, ecdsa-with-SHA256)"
    remote: str
    local_id: str
    remote_id: str
    remote_certificate: str = ""  # the peer's certificate subject, with pubkey
    ppk: bool = False  # RFC 8784 PPK mixed into the keys

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "local": self.local,
            "remote": self.remote,
            "local_id": self.local_id,
            "remote_id": self.remote_id,
            "ppk": self.ppk,
        }
        if self.remote_certificate:
            out["remote_certificate"] = self.remote_certificate
        return out

    def summary(self) -> str:
        """One line for the log: ``pubkey 'C=CH, CN=a' <-> pubkey 'C=CH, CN=b' (PPK)``."""
        line = f"{self.local} as '{self.local_id}', peer {self.remote} as '{self.remote_id}'"
        return line + (", PPK" if self.ppk else "")


@dataclass
class PendingFollowup:
    """A CREATE_CHILD_SA whose additional key exchanges run in IKE_FOLLOWUP_KE (RFC 9370
    §2.2.4); nothing is installed until the last one is done.

    ``shared`` collects SK(0), SK(1), ...; ``complete`` gets them all (the keys are
    derived from SK(0) | Ni | Nr | SK(1) | ... | SK(n), RFC 9370 §2.2.4) and installs
    what the exchange made;
    ``abandon`` undoes the exchange's side effects when a follow-up fails.
    """

    what: str  # "rekey of the IKE SA", for messages
    link: bytes  # N(ADDITIONAL_KEY_EXCHANGE) data, chosen by the responder
    pending: list[tuple[int, KeAlgorithm]]
    shared: list[bytes]
    started: float  # when the CREATE_CHILD_SA was answered (a stale one is dropped)
    complete: Callable[[list[bytes], float], None] = field(repr=False)
    abandon: Callable[[str, float], None] = field(repr=False)


@dataclass
class Handshake:
    """Per IKE SA: the negotiation state IKE_AUTH needs (see the module docstring)."""

    # IKE_SA_INIT
    peer_hash_algorithms: tuple[int, ...] | None = None  # None: no SIGNATURE_HASH_ALGORITHMS
    peer_certreq: tuple[bytes, ...] | None = None  # CA key hashes; None: no CERTREQ
    intermediate: bool = False  # both sent INTERMEDIATE_EXCHANGE_SUPPORTED
    use_ppk: bool = False  # both sent USE_PPK
    # RFC 9370 additional key exchanges: still to run (n, method), and done ("ke1_mlkem768").
    pending: list[tuple[int, KeAlgorithm]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    int_auth: IntAuthChain | None = field(default=None, repr=False)
    # The keys before the last IKE_INTERMEDIATE updated them: a retransmitted request of
    # that exchange is still protected with them (RFC 7383 §2.6.1 fragment check).
    previous_keys: IkeKeys | None = field(default=None, repr=False)
    auth: AuthRecord | None = None
    # Responder: the CREATE_CHILD_SA whose IKE_FOLLOWUP_KE exchanges are under way.
    followup: PendingFollowup | None = None

    def int_auth_octets(self, ike_auth_message_id: int) -> bytes:
        """IntAuth for the AUTH payloads (RFC 9242 §3.3.2); empty without IKE_INTERMEDIATE."""
        if self.int_auth is None:
            return b""
        return self.int_auth.octets(ike_auth_message_id)

    def authenticated(self, record: AuthRecord) -> None:
        """IKE_AUTH is done: keep how, drop what only IKE_AUTH needed (IntAuth, old keys)."""
        self.auth = record
        self.int_auth = None
        self.previous_keys = None

    def carried_over(self) -> Handshake:
        """What an IKE SA made by a rekey keeps (RFC 7296 §2.18): who authenticated how."""
        return Handshake(auth=self.auth)
