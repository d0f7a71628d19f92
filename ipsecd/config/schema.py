"""The typed, immutable configuration the rest of ipsecd reads.

Built only by the loader (``ipsecd.config.load_config``), after every value
has been checked; code that receives a ``Config`` trusts it.  Secrets (the
PSK, manual SA keys) live in fields with ``repr=False`` so logging a config
object never prints them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.pki.errors import PkiError
from ipsecd.pki.identity import IkeIdentity, parse_dn
from ipsecd.selectors import TrafficSelector

if TYPE_CHECKING:  # X.509 is imported where a DN or a certificate is used (pki/identity.py)
    from cryptography import x509

    from ipsecd.pki.certs import SigningKey
    from ipsecd.pki.trust import TrustStore

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
T = TypeVar("T")

# RFC 7296 §3.5 Identification payload ID types (the ones ipsecd configures).
ID_TYPE_NUMBERS: dict[str, int] = {
    "IPV4_ADDR": 1,
    "FQDN": 2,
    "RFC822_ADDR": 3,
    "IPV6_ADDR": 5,
    "DER_ASN1_DN": 9,
    "KEY_ID": 11,
}


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5), written the way strongSwan writes them.

    ``type`` is the RFC name without ``ID_`` (``IPV4_ADDR``, ``FQDN``, ...);
    ``value`` is the text for addresses, FQDNs, e-mail addresses and
    distinguished names (``C=CH, O=Org, CN=gw``, most significant RDN first, as
    strongSwan writes them), raw bytes for KEY_ID.  ``str()`` gives back text
    that ``Identity.parse`` accepts.
    """

    type: str
    value: str | bytes
    # A DN exactly as our certificate encodes it (sent as is, so that a peer comparing
    # DER bytes agrees); None: encoded from ``value``.
    der: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan rules: IP literal, ``@#hex`` (KEY_ID), ``@fqdn``, a distinguished name
        (``C=CH, O=Org, CN=gw``: has ``=``), ``user@host``, else FQDN.

        Raises ValueError with an operator-readable message.
        """
        text = text.strip()
        if not text:
            raise ValueError("identity is empty")
        if "=" in text and not text.startswith("@"):
            from ipsecd.pki.certs import name_text

            try:
                return cls("DER_ASN1_DN", name_text(parse_dn(text)))
            except PkiError as exc:
                raise ValueError(str(exc)) from None
        if any(c.isspace() for c in text):
            raise ValueError(f"identity {text!r} contains whitespace")
        if text.startswith("@#"):
            try:
                data = bytes.fromhex(text[2:])
            except ValueError:
                raise ValueError(f"identity {text!r}: @# must be followed by hex digits") from None
            if not data:
                raise ValueError(f"identity {text!r}: @# must be followed by hex digits")
            return cls("KEY_ID", data)
        if text.startswith("@"):
            name = text[1:]
            if not name or "@" in name:
                raise ValueError(f"identity {text!r}: write @host.example or user@host.example")
            return cls("FQDN", name)
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls.from_address(address)
        if "@" in text:
            user, _, host = text.partition("@")
            if not user or not host or "@" in host:
                raise ValueError(f"identity {text!r} is not a valid user@host address")
            return cls("RFC822_ADDR", text)
        return cls("FQDN", text)

    @classmethod
    def from_address(cls, address: IpAddress) -> Identity:
        return cls("IPV4_ADDR" if address.version == 4 else "IPV6_ADDR", str(address))

    @property
    def id_type(self) -> int:
        """The ID Type number of the Identification payload."""
        return ID_TYPE_NUMBERS[self.type]

    @functools.cached_property
    def data(self) -> bytes:
        """The Identification Data as it goes on the wire (computed once: it goes into
        every AUTH payload of this peer, RFC 7296 §2.15)."""
        if isinstance(self.value, bytes):
            return self.value
        if self.type in ("IPV4_ADDR", "IPV6_ADDR"):
            return ipaddress.ip_address(self.value).packed
        if self.type == "DER_ASN1_DN":
            return self.der or parse_dn(self.value).public_bytes()
        return self.value.encode("utf-8")

    @functools.cached_property
    def ike_identity(self) -> IkeIdentity:
        """The same identity for :mod:`ipsecd.pki` (certificate and DN matching; computed
        once: a responder compares it for every IKE_AUTH)."""
        return IkeIdentity(self.id_type, self.data)

    def __str__(self) -> str:
        if isinstance(self.value, bytes):
            return "@#" + self.value.hex()
        return self.value


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "auto"  # auto | console | json


@dataclass(frozen=True)
class GatewayConfig:
    tun: str
    mtu: int | None  # None: computed from the transform overhead
    addresses: tuple[IpInterface, ...]
    listen: tuple[IpAddress, ...]
    port: int  # NAT-T / ESP-in-UDP (RFC 3948)
    ike_port: int
    control_socket: Path
    metrics: tuple[str, int] | None
    # IKE request retransmission (RFC 7296 §2.1): first wait, doubling each time.
    retransmit_timeout: float = 0.5
    retransmit_tries: int = 7
    retry_interval: int = 30  # seconds before an initiator tries again after giving up
    # DoS protection of the responder (RFC 7296 §2.6), see ipsecd.ike.halfopen.
    cookie_threshold: int = 10  # half-open IKE SAs from which on COOKIEs are demanded
    half_open_per_source: int = 5  # half-open IKE SAs per source address
    half_open_limit: int = 1000  # half-open IKE SAs in all; beyond, requests are dropped
    # Largest IKE datagram (UDP payload) before RFC 7383 fragmentation; None: by family.
    fragment_size: int | None = None
    # Largest IKE datagram accepted, checked before anything is decoded (strongSwan's
    # charon.max_packet); RFC 7383 fragments count one by one (ipsecd.ike.inbox).
    max_ike_datagram: int = 10_000
    offload: bool = True  # TUN TSO/GRO (virtio-net header) and UDP GSO/GRO on the data plane
    # Wake the event loop this often even with nothing to do (0: never), so that an idle
    # tunnel's next packet does not meet a process and CPU gone cold (README "Performance").
    wakeup_interval_ms: int = 0
    # The account the daemon switches to once its device, sockets and routes exist
    # (ipsecd.daemon.privilege); None: 'ipsecd' if it exists, else 'nobody'; 'root': stay.
    user: str | None = None
    # Turn on IP forwarding at start (net.ipv4.ip_forward, and IPv6 forwarding when IPv6
    # selectors are configured) instead of only warning that it is off (daemon.preflight).
    set_forwarding: bool = False
    # Transport mode (peers[].esp.mode): the peers' addresses are routed into TUN in table
    # ``route_table``, which ``ip rule not fwmark FWMARK`` consults; ipsecd's own IKE/ESP
    # sockets carry FWMARK, so their packets to the same addresses take the main table.
    fwmark: int = 0x4500
    route_table: int = 4500


@dataclass(frozen=True, slots=True)
class Credential:
    """Our certificate, the intermediate CA certificates sent after it, and its key.

    RFC 7296 §3.6 (CERT), RFC 7427 (signatures).  The key is compared through the
    certificate it belongs to (the loader checks that their public keys agree).
    """

    certificate: x509.Certificate = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    private_key: SigningKey = field(repr=False, compare=False)
    certificate_file: Path
    private_key_file: Path

    def __repr__(self) -> str:
        from ipsecd.pki.certs import name_text

        return f"Credential({name_text(self.certificate.subject)!r}, {self.certificate_file})"


@dataclass(frozen=True)
class TrustConfig:
    """Trust anchors and CRLs to validate the peer's certificate with (RFC 5280 subset)."""

    anchors: tuple[x509.Certificate, ...] = field(repr=False)
    crls: tuple[x509.CertificateRevocationList, ...] = field(repr=False, compare=False)
    cacerts: tuple[Path, ...]
    crl_files: tuple[Path, ...] = ()
    crl_fingerprints: tuple[bytes, ...] = ()  # the CRLs compared by content (reload)

    def store(self) -> TrustStore:
        from ipsecd.pki.trust import TrustStore

        return TrustStore(list(self.anchors), list(self.crls))


@dataclass(frozen=True)
class PpkConfig:
    """A post-quantum preshared key (RFC 8784) and whether the peer must use it."""

    ppk_id: bytes
    ppk: bytes = field(repr=False)
    ppk_file: Path
    required: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """IKE authentication (RFC 7296 §2.15): each side by PSK or by signature (RFC 7427).

    ``local_auth`` is how we authenticate, ``remote_auth`` how the peer must
    (``psk`` or ``pubkey``; mixed is allowed).  ``psk`` is set iff one of them is
    ``psk``, ``credential`` iff ``local_auth`` is ``pubkey``, ``trust`` iff
    ``remote_auth`` is ``pubkey``.
    """

    local_id: Identity
    remote_id: Identity
    psk: bytes = field(default=b"", repr=False)
    psk_file: Path | None = None
    allow_weak_psk: bool = False  # a PSK under 16 bytes is accepted (labs only)
    local_auth: str = "psk"  # psk | pubkey
    remote_auth: str = "psk"
    credential: Credential | None = None
    trust: TrustConfig | None = None
    rsa_pss: bool = False  # sign with RSASSA-PSS (RFC 7427) rather than PKCS#1 v1.5
    ppk: PpkConfig | None = None


@dataclass(frozen=True)
class ManualSaConfig:
    """A static ESP SA pair without IKE (RFC 4301 §4.5).

    ``key_in`` / ``key_out`` are the encryption keying material (key plus salt
    for AEADs, RFC 4106 §8.1) followed by the integrity key, if any.
    """

    encr: EncrAlgorithm
    integ: IntegAlgorithm | None
    esn: bool
    spi_in: int
    spi_out: int
    key_in: bytes = field(repr=False)
    key_out: bytes = field(repr=False)
    key_file: Path

    @property
    def key_len(self) -> int:
        """Bytes of keying material per direction."""
        return self.encr.keymat_len + (self.integ.key_len if self.integ else 0)

    def split(self, key: bytes) -> tuple[bytes, bytes]:
        """``key`` -> (encryption keymat incl. salt, integrity key)."""
        n = self.encr.keymat_len
        return key[:n], key[n:]

    @property
    def keys_in(self) -> tuple[bytes, bytes]:
        """(encr_keymat, integ_key) of the inbound SA."""
        return self.split(self.key_in)

    @property
    def keys_out(self) -> tuple[bytes, bytes]:
        """(encr_keymat, integ_key) of the outbound SA."""
        return self.split(self.key_out)


@dataclass(frozen=True, slots=True)
class IkeLifetime:
    """When the IKE SA is rekeyed (RFC 7296 §2.18) and reauthenticated (§2.8.3):
    ``rekey_time`` / ``reauth_time`` minus a random 0..``rand_time`` seconds after it was
    established; 0 means never.  A reauthentication is a new IKE SA with new CHILD_SAs,
    set up before the old one is deleted (make-before-break, as strongSwan does)."""

    rekey_time: int = 4 * 3600
    rand_time: int = 1440
    reauth_time: int = 0


@dataclass(frozen=True, slots=True)
class ChildLifetime:
    """CHILD_SA lifetimes (RFC 7296 §2.8): soft limits start a rekey, the hard limit deletes.

    Soft: ``rekey_time`` minus a random 0..``rand_time`` seconds, ``rekey_bytes``
    or ``rekey_packets`` (0 = no such limit); hard: ``life_time`` seconds.
    """

    rekey_time: int = 3600
    life_time: float = 3960.0
    rand_time: int = 360
    rekey_bytes: int = 0
    rekey_packets: int = 0


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """One CHILD_SA a peer negotiates (swanctl's ``children { NAME { ... } }``).

    A ``peers[].children[]`` entry; a peer written without ``children:`` has one
    child named after the peer, made of its own ``local_ts``/``remote_ts``/``esp``/
    ``start``/``close_action`` (the shorthand).  ``start``: ``initiate`` (with the IKE
    SA, and kept up), ``trap`` (by its first packet) or ``respond`` (only the peer creates
    it).
    """

    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    esp_proposals: tuple[Proposal, ...]  # empty for manual peers and AH children
    start: str = "initiate"  # initiate | respond | trap
    lifetime: ChildLifetime = ChildLifetime()
    # What follows when the peer deletes this child's CHILD_SA (or the IKE SA): start (set
    # it up again) | trap (the next packet does) | none; the loader derives it from start.
    close_action: str = "start"
    # The CHILD_SA's IPsec mode (RFC 4301 §4.1: tunnel | transport) and protocol
    # (esp | ah); AH children negotiate ``ah_proposals`` (integrity only, RFC 4302).
    mode: str = "tunnel"
    protocol: str = "esp"
    ah_proposals: tuple[Proposal, ...] = ()

    @property
    def child_proposals(self) -> tuple[Proposal, ...]:
        """What the CHILD_SA negotiates: the AH proposals for AH, else the ESP ones."""
        return self.ah_proposals if self.protocol == "ah" else self.esp_proposals


#: ``remote_host`` of a responder-only peer whose address is learned from IKE_AUTH.
ANY_ADDRESS = "any"


def _unique(items: Iterable[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    # An IP literal; None when ``remote_host`` is a DNS name (resolved by the daemon at
    # start and before each retry) or ``any`` (learned from the authenticated IKE_AUTH).
    remote_address: IpAddress | None
    remote_port: int
    local_address: IpAddress
    children: tuple[ChildConfig, ...]  # at least one; the first is set up in IKE_AUTH
    ike_proposals: tuple[Proposal, ...]  # empty for manual peers
    auth: AuthConfig | None  # None iff manual is set
    manual: ManualSaConfig | None
    ike_lifetime: IkeLifetime = IkeLifetime()
    fragmentation: str = "yes"  # RFC 7383: yes | accept (announce, never send) | no
    fragment_size: int | None = None  # overrides gateway.fragment_size
    # Dead peer detection (RFC 7296 §2.4): liveness check after this many idle seconds
    # (0 = off); what to do when the peer does not answer: restart | clear | hold.
    dpd_delay: int = 30
    dpd_action: str = "restart"
    # ESP/AH on the wire (RFC 7296 §2.23): always UDP-encapsulated (RFC 3948), or
    # directly over IP (protocols 50/51) unless a NAT is detected.
    encap: str = "always"
    remote_host: str = ""  # as written: the IP literal, a DNS name or ``any``

    @property
    def dynamic(self) -> bool:
        """The address is not written: a DNS name or ``any``."""
        return self.remote_address is None

    @property
    def responds_only(self) -> bool:
        """``remote_address: any``: the peer's address is known only once it connects."""
        return self.remote_host == ANY_ADDRESS

    @property
    def local_ts(self) -> tuple[TrafficSelector, ...]:
        """Every child's ``local_ts``, in order (what is behind this gateway)."""
        return _unique(ts for c in self.children for ts in c.local_ts)

    @property
    def remote_ts(self) -> tuple[TrafficSelector, ...]:
        """Every child's ``remote_ts``, in order (what is routed into the TUN device)."""
        return _unique(ts for c in self.children for ts in c.remote_ts)

    @property
    def esp_proposals(self) -> tuple[Proposal, ...]:
        """Every child's ESP proposals, in order (what ESP may carry for this peer)."""
        return _unique(p for c in self.children for p in c.esp_proposals)

    @property
    def transport(self) -> bool:
        """A child of this peer uses transport mode (the gateways' own packets)."""
        return any(c.mode == "transport" for c in self.children)

    @property
    def start(self) -> str:
        """The peer's start action: ``initiate`` if a child initiates, else ``trap`` if
        one waits for traffic, else ``respond``."""
        starts = {c.start for c in self.children}
        return next((s for s in ("initiate", "trap") if s in starts), "respond")

    @property
    def close_action(self) -> str:
        """What follows when the peer deletes the IKE SA: ``start`` (initiate again) if a
        child says so, else ``trap`` if one does, else ``none``."""
        actions = {c.close_action for c in self.children}
        return next((a for a in ("start", "trap") if a in actions), "none")

    def child(self, name: str) -> ChildConfig | None:
        """The child called ``name`` (None: not, or no longer, configured)."""
        return next((c for c in self.children if c.name == name), None)

    def without_children(self) -> PeerConfig:
        """The peer's IKE-level settings: equal for two configs whose IKE SA may stay."""
        return replace(self, children=())


@dataclass(frozen=True)
class Config:
    path: Path
    log: LogConfig
    gateway: GatewayConfig
    peers: tuple[PeerConfig, ...]
    # Key path (``peers[0].local_ts[1]``) -> line in ``path``, for warnings found later.
    key_lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def without_key_lines(self) -> Config:
        """The config a running daemon keeps: the warnings that need ``key_lines`` are
        found at start-up, and the map costs some 1.6 MB per 1000 peers."""
        return replace(self, key_lines={}) if self.key_lines else self

    @functools.cached_property
    def _peers_by_name(self) -> dict[str, PeerConfig]:
        found: dict[str, PeerConfig] = {}
        for peer in self.peers:
            found.setdefault(peer.name, peer)  # the first of a name, as the scan found it
        return found

    def peer(self, name: str) -> PeerConfig:
        """The peer called ``name``; KeyError if there is none (O(1): the core asks for
        every IKE event)."""
        try:
            return self._peers_by_name[name]
        except KeyError:
            raise KeyError(f"no peer named {name!r}") from None
