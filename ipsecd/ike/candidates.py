"""The peers a new IKE SA may belong to until IKE_AUTH names one (RFC 7296 §2.15).

A responder does not know its peer from an IKE_SA_INIT: every ``remote_address: any``
peer is a candidate, and the initiator's IDi picks one in IKE_AUTH.  With 1000 such
peers, a scan of the candidates per message made each handshake O(peers);
:class:`Candidates` is the same ordered tuple with what the exchanges ask of it
answered from an index built once per set of candidates (the peer policy keeps the
sets, so the index lives as long as the config).
"""

from __future__ import annotations

from collections.abc import Sequence

from ipsecd.config.schema import AuthConfig, PeerConfig
from ipsecd.ike.peer_auth import IdPair, same_id
from ipsecd.pki.identity import ID_DER_ASN1_DN, ID_FQDN, ID_RFC822_ADDR


def id_key(id_type: int, data: bytes) -> IdPair:
    """Equal keys for identities :func:`ipsecd.pki.identity.same_identity` calls the same
    (DNs excepted: those are compared by attribute, one by one)."""
    return id_type, data.lower() if id_type in (ID_FQDN, ID_RFC822_ADDR) else data


class Candidates(tuple[PeerConfig, ...]):
    """An ordered tuple of candidate peers, indexed by remote_id (see the module doc)."""

    _by_id: dict[IdPair, PeerConfig]
    _dns: list[PeerConfig]
    _auths: list[AuthConfig]
    _certs: list[AuthConfig]

    def __new__(cls, peers: Sequence[PeerConfig]) -> Candidates:
        return super().__new__(cls, peers)

    def _index(self) -> None:
        self._by_id, self._dns, self._auths = {}, [], []
        for peer in self:
            if peer.auth is None:
                continue
            self._auths.append(peer.auth)
            ident = peer.auth.remote_id.ike_identity
            if ident.id_type == ID_DER_ASN1_DN:
                self._dns.append(peer)
            else:
                self._by_id.setdefault(id_key(ident.id_type, ident.data), peer)

    def certificate_auths(self) -> list[AuthConfig]:
        """The candidates' auth sections that verify a certificate (CERTREQ, §3.7)."""
        if not hasattr(self, "_certs"):
            self._certs = [
                a for a in self.auths() if a.remote_auth == "pubkey" and a.trust is not None
            ]
        return self._certs

    def auths(self) -> list[AuthConfig]:
        """The candidates' auth sections, in order."""
        if not hasattr(self, "_auths"):
            self._index()
        return self._auths

    def first_with_id(self, theirs: IdPair) -> PeerConfig | None:
        """The first candidate whose remote_id is ``theirs`` (``same_id``), or None."""
        if not hasattr(self, "_by_id"):
            self._index()
        if theirs[0] == ID_DER_ASN1_DN:
            return next(
                (p for p in self._dns if p.auth is not None and same_id(p.auth.remote_id, theirs)),
                None,
            )
        return self._by_id.get(id_key(*theirs))


def first_with_id(peers: Sequence[PeerConfig], theirs: IdPair) -> PeerConfig | None:
    """:meth:`Candidates.first_with_id` for any sequence of peers."""
    if isinstance(peers, Candidates):
        return peers.first_with_id(theirs)
    return next(
        (p for p in peers if p.auth is not None and same_id(p.auth.remote_id, theirs)), None
    )


def auths_of(peers: Sequence[PeerConfig]) -> list[AuthConfig]:
    if isinstance(peers, Candidates):
        return peers.auths()
    return [p.auth for p in peers if p.auth is not None]


def certificate_auths_of(peers: Sequence[PeerConfig]) -> list[AuthConfig]:
    if isinstance(peers, Candidates):
        return peers.certificate_auths()
    return [a for a in auths_of(peers) if a.remote_auth == "pubkey" and a.trust is not None]
