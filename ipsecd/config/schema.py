"""The typed, immutable configuration the rest of ipsecd reads.

Built only by the loader (``ipsecd.config.load_config``), after every value
has been checked; code that receives a ``Config`` trusts it.  Secrets (the
PSK, manual SA keys) live in fields with ``repr=False`` so logging a config
object never prints them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ipsecd.crypto.proposals import Proposal
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
from ipsecd.selectors import TrafficSelector

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# RFC 7296 §3.5 Identification payload ID types (the ones ipsecd configures).
ID_TYPE_NUMBERS: dict[str, int] = {
    "IPV4_ADDR": 1,
    "FQDN": 2,
    "RFC822_ADDR": 3,
    "IPV6_ADDR": 5,
    "KEY_ID": 11,
}


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5), written the way strongSwan writes them.

    ``type`` is the RFC name without ``ID_`` (``IPV4_ADDR``, ``FQDN``, ...);
    ``value`` is the text for addresses, FQDNs and e-mail addresses, raw bytes
    for KEY_ID.  ``str()`` gives back text that ``Identity.parse`` accepts.
    """

    type: str
    value: str | bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan rules: IP literal, ``@#hex`` (KEY_ID), ``@fqdn``, ``user@host``, else FQDN.

        Raises ValueError with an operator-readable message.
        """
        text = text.strip()
        if not text:
            raise ValueError("identity is empty")
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

    @property
    def data(self) -> bytes:
        """The Identification Data as it goes on the wire."""
        if isinstance(self.value, bytes):
            return self.value
        if self.type in ("IPV4_ADDR", "IPV6_ADDR"):
            return ipaddress.ip_address(self.value).packed
        return self.value.encode("utf-8")

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


@dataclass(frozen=True)
class AuthConfig:
    """IKE authentication with a pre-shared key (RFC 7296 §2.15)."""

    psk: bytes = field(repr=False)
    psk_file: Path
    local_id: Identity
    remote_id: Identity
    allow_weak_psk: bool = False  # a PSK under 16 bytes is accepted (labs only)


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


@dataclass(frozen=True)
class IkeLifetime:
    """When the IKE SA is rekeyed (RFC 7296 §2.18): ``rekey_time`` minus a random
    0..``rand_time`` seconds after it was established; 0 means never."""

    rekey_time: int = 4 * 3600
    rand_time: int = 1440


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class PeerConfig:
    name: str
    remote_address: IpAddress
    remote_port: int
    local_address: IpAddress
    start: str  # initiate | respond | trap
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    ike_proposals: tuple[Proposal, ...]  # empty for manual peers
    esp_proposals: tuple[Proposal, ...]  # empty for manual peers
    auth: AuthConfig | None  # None iff manual is set
    manual: ManualSaConfig | None
    ike_lifetime: IkeLifetime = IkeLifetime()
    child_lifetime: ChildLifetime = ChildLifetime()
    fragmentation: str = "yes"  # RFC 7383: yes | accept (announce, never send) | no
    fragment_size: int | None = None  # overrides gateway.fragment_size
    # Dead peer detection (RFC 7296 §2.4): liveness check after this many idle seconds
    # (0 = off); what to do when the peer does not answer: restart | clear | hold.
    dpd_delay: int = 30
    dpd_action: str = "restart"


@dataclass(frozen=True)
class Config:
    path: Path
    log: LogConfig
    gateway: GatewayConfig
    peers: tuple[PeerConfig, ...]
    # Key path (``peers[0].local_ts[1]``) -> line in ``path``, for warnings found later.
    key_lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def peer(self, name: str) -> PeerConfig:
        """The peer called ``name``; KeyError if there is none."""
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(f"no peer named {name!r}")
