"""The status model: what ``ipsecctl status`` (text and JSON) and the metrics endpoint show.

Typed, frozen dataclasses built by the daemon core (``DaemonCore.status``);
:meth:`DaemonStatus.to_dict` is the JSON document on the control socket, version
:data:`SCHEMA_VERSION`, described field by field in ``docs/status.schema.json``
(tests check real documents against it).  ``ipsecctl`` only formats it, and
:mod:`ipsecd.daemon.metrics` reads the same objects, so the three never disagree.
Never includes keys.

The contract, as an operator reads it:

* every counter is always present (zero until it moves), over a fixed set of names
  (:data:`DAEMON_EVENTS`, :data:`IKE_EVENTS`, every :class:`DropReason`), plus any
  name the code counts that the set does not list yet;
* times are wall-clock ISO 8601 (``..._at``, UTC) together with an age or a delay in
  seconds (``..._seconds``), never the daemon's monotonic clock;
* lists are lists (selectors are arrays of strings);
* each CHILD_SA appears once, in its peer's ``children``: the data plane's installed
  SA, with the IKE layer's view of it (state, rekey time) merged in, and the name of
  the configured child it belongs to; ``configured_children`` lists each configured
  child once, up or not, with the prefixes its CHILD_SAs leave uncovered (narrowed);
* :data:`PEER_STATES`: each state means one thing (an IKE SA without CHILD_SA is
  ``established-no-child``; while ``connecting`` the peer was never heard, so
  there is no "last heard", and an SPI not yet known is ``null``);
* ``nat_local``/``nat_remote`` are NAT detected, not encapsulation forced.

The IKE manager's own status (:meth:`IkeManager.status`, plain dicts) is read at
this boundary only, by :func:`ike_sa_status` and :func:`peer_status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ipsecd.addresses import format_address
from ipsecd.daemon.ledger import Ledger, Transfer, sa_drops
from ipsecd.dataplane.offload import bulk_state
from ipsecd.esp.counters import DropReason
from ipsecd.selectors import TrafficSelector, uncovered

if TYPE_CHECKING:
    from ipsecd.config import ChildConfig, Config, PeerConfig
    from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm
    from ipsecd.dataplane.sad import InstalledChildSa
    from ipsecd.dataplane.tun import TunDevice
    from ipsecd.dataplane.udp import UdpSocket

T = TypeVar("T")

SCHEMA_VERSION = 1
Selectors = tuple[TrafficSelector, ...]

#: A peer's state, one meaning each (docs/status.schema.json lists the same words).
PEER_STATES = (
    "down",  # no IKE SA, none being set up (or a manual peer without its SA)
    "connecting",  # an IKE SA is being negotiated, or the next attempt is scheduled
    "established-no-child",  # IKE SA up, no CHILD_SA installed (yet, or refused)
    "established",  # IKE SA up and at least one CHILD_SA installed
    "deleting",  # our Delete of the IKE SA is outstanding
    "held",  # dpd_action hold: down until traffic for remote_ts starts it again
    "manual",  # a manual peer: its static SA is installed
)

#: The daemon's event counters (``counters``), each reported from start.
DAEMON_EVENTS = (
    "child_sa_installed",
    "dead_peers",
    "esp_from_new_address",
    "ike_no_socket",
    "ike_without_ike_peers",
    "negotiation_failed",
    "no_socket",
    "trap_queue_dropped",
    "trap_queue_overflow",
    "trap_queue_sent",
    "trap_queued",
    "trap_retriggers",
    "trap_triggers",
    "wakeups",
)

#: The IKE layer's event counters (``ike_counters``), each reported from start.
IKE_EVENTS = (
    "additional_key_exchanges",
    "amplification_refused",
    "child_rekey_collisions",
    "child_rekey_retries",
    "child_sa_deadline_expired",
    "child_sa_expired",
    "child_sa_narrowed",
    "child_sa_rekeyed",
    "child_sa_rekeyed_not_deleted",
    "child_sa_sequence_exhausted",
    "closed_retransmit_answered",
    "connection_retries",
    "cookies_invalid",
    "cookies_received",
    "cookies_sent",
    "cookies_stale",
    "cookies_valid",
    "dns_failures",
    "dpd_checks_sent",
    "dpd_clear",
    "dpd_hold",
    "dpd_restart",
    "duplicate_ike_sa_deleted",
    "fragment_bad_icv",
    "fragment_duplicates",
    "fragment_malformed",
    "fragment_memory_limit",
    "fragment_out_of_range",
    "fragment_oversized",
    "fragment_reassembled_malformed",
    "fragment_reassembly_timeouts",
    "fragment_sets_abandoned",
    "fragment_sets_restarted",
    "fragment_too_many",
    "fragment_total_mismatch",
    "fragmented_messages_received",
    "fragmented_messages_sent",
    "fragments_received",
    "fragments_sent",
    "half_open_dropped",
    "half_open_expired",
    "half_open_source_dropped",
    "ike_busy_dropped",
    "ike_queue_full",
    "ike_rekey_collisions",
    "ike_rekey_retries",
    "ike_sa_deadline_expired",
    "ike_sa_reauth_failed",
    "ike_sa_reauthenticated",
    "ike_sa_reauths_started",
    "ike_sa_rekeyed",
    "ike_sa_replaced_by_peer",
    "init_replays",
    "init_request_mismatch",
    "initial_contact_deleted",
    "internal_error",
    "invalid_ike_spi_received",
    "invalid_ike_spi_sent",
    "invalid_ke_sent",
    "invalid_message_id",
    "malformed",
    "nat_keepalives",
    "oversized",
    "peer_address_updated",
    "peer_closed_ike_sa",
    "peer_deleted_child_sa",
    "restart_hints_followed",
    "retransmit_answered",
    "retransmit_fragment_forged",
    "retransmit_fragment_ignored",
    "retransmit_mismatch",
    "retransmit_rate_limited",
    "retransmit_wrong_source",
    "retransmits",
    "unauthenticated_failures",
    "undecryptable",
    "unexpected_response",
    "unknown_exchange",
    "unknown_peer",
    "unknown_spi",
    "unsupported_critical_payload",
)

DROP_REASONS = tuple(str(reason) for reason in DropReason)

_CONNECTING_IKE_STATES = frozenset({"created", "init-sent", "half-open", "auth-sent"})


def every(names: Iterable[str], counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` over the fixed ``names`` (zeros included), then any other name counted."""
    out = {name: int(counts.get(name, 0)) for name in names}
    for name in sorted(set(counts) - set(out)):
        out[str(name)] = int(counts[name])
    return out


@dataclass(frozen=True)
class Clock:
    """The core's monotonic ``now`` at a status request, and the wall clock at that instant:
    turns the core's times into ISO 8601 timestamps, ages and delays."""

    now: float
    wall: float

    def iso(self, when: float) -> str:
        moment = datetime.fromtimestamp(self.wall + (when - self.now), UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def age(self, when: float) -> float:
        return round(max(0.0, self.now - when), 1)

    def until(self, when: float) -> float:
        return round(max(0.0, when - self.now), 1)

    # The same for times that may be unknown (None stays None).
    def iso_or_none(self, when: float | None) -> str | None:
        return None if when is None else self.iso(when)

    def age_or_none(self, when: float | None) -> float | None:
        return None if when is None else self.age(when)

    def until_or_none(self, when: float | None) -> float | None:
        return None if when is None else self.until(when)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _endpoint(address: Any) -> tuple[str, int]:
    """``"192.0.2.1:4500"``, ``"[2001:db8::1]:4500"`` or ``"2001:db8::1:4500"`` -> (address,
    port)."""
    host, _, port = str(address).rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port) if port.isdigit() else 0


def _address(text: Any) -> str:
    """An endpoint from the IKE layer written the one way (``[2001:db8::1]:4500``)."""
    host, port = _endpoint(text)
    return format_address(host, port) if host else ""


@dataclass(frozen=True)
class ChildStatus:
    """One installed CHILD_SA: the data plane's SA with the IKE layer's view of it."""

    spi_in: str
    spi_out: str
    name: str  # the configured child it belongs to (peers[].children[].name)
    state: str  # installed | rekeying | rekeyed | deleting (the IKE side; manual: installed)
    algorithm: str
    mode: str  # tunnel | transport (RFC 4301 §4.1)
    encap: str  # udp (RFC 3948) | ip (ESP/AH directly over IP, protocol 50/51)
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    local: str
    remote: str
    established_at: str
    established_seconds: float
    rekey_at: str | None
    rekey_in_seconds: float | None
    expires_at: str | None  # hard lifetime (life_time): deleted then, rekeyed or not
    expires_in_seconds: float | None
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    last_in_at: str | None  # when a packet last came in on it (None: never)
    last_in_seconds: float | None
    last_out_at: str | None
    last_out_seconds: float | None
    drops: dict[str, int]  # inbound, by reason (all reasons)


@dataclass(frozen=True)
class IkeSaStatus:
    """The peer's current IKE SA, as the IKE manager describes it."""

    state: str  # the IKE SA's own state: created | init-sent | half-open | auth-sent | ...
    role: str  # initiator | responder
    local: str
    remote: str
    local_spi: str | None
    remote_spi: str | None  # None until the peer chose it
    local_id: str | None
    remote_id: str | None
    algorithm: str
    established_at: str | None
    established_seconds: float | None
    rekey_at: str | None
    rekey_in_seconds: float | None
    nat_local: bool  # a NAT in front of us was detected (RFC 7296 §2.23)
    nat_remote: bool  # a NAT in front of the peer was detected
    fragmentation: bool  # IKE fragmentation agreed (RFC 7383)
    dpd: str  # off | idle | checking
    dpd_delay_seconds: int
    last_heard_at: str | None  # IKE or ESP last came in from the peer
    last_heard_seconds: float | None
    auth: AuthStatus | None = None  # how each side authenticated, once IKE_AUTH is done
    additional_ke: tuple[str, ...] = ()  # RFC 9370 exchanges negotiated: ke1_mlkem768, ...


@dataclass(frozen=True)
class AuthStatus:
    """How each side proved itself in IKE_AUTH: ``psk`` or ``pubkey (...)`` with the
    identity, the peer's certificate subject, and whether a PPK was mixed in (RFC 8784)."""

    local: str
    remote: str
    local_id: str
    remote_id: str
    remote_certificate: str | None
    ppk: bool


@dataclass(frozen=True)
class OnDemandStatus:
    """A ``start: trap`` peer's trap: idle, negotiating or up, and its queued packets."""

    state: str
    queued: int


@dataclass(frozen=True)
class LastEvent:
    """What last happened to a peer's IKE SA from the peer's side (it closed the IKE SA,
    deleted the CHILD_SA, reauthenticated) or from DPD, in words, with its time."""

    event: str  # peer-closed-ike-sa | peer-deleted-child-sa | reauthenticated | ...
    at: str | None
    seconds: float | None
    message: str


@dataclass(frozen=True)
class ConfiguredChildStatus:
    """One configured child of a peer (``peers[].children[]``, or the peer's own selectors):
    whether a CHILD_SA of it is installed, and the prefixes of its selectors that its
    CHILD_SAs leave without SA because the responder narrowed them (RFC 7296 §2.9)."""

    name: str
    start: str  # initiate | respond | trap (manual peers: manual)
    up: bool
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    uncovered_local_ts: tuple[str, ...]  # prefixes; empty: all covered, or the child is down
    uncovered_remote_ts: tuple[str, ...]
    on_demand: OnDemandStatus | None = None  # start: trap (or dpd_action hold)


@dataclass(frozen=True)
class PeerStatus:
    """One configured peer."""

    name: str
    mode: str  # ike | manual
    start: str  # initiate | respond | trap (manual peers: manual)
    state: str  # one of PEER_STATES
    up: bool  # at least one CHILD_SA installed
    local: str
    remote: str | None  # the endpoint in use (a DNS name: as resolved); None: not known yet
    remote_host: str | None  # remote_address as written when it is a DNS name or any
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    ike_sas: int
    retry_at: str | None
    retry_in_seconds: float | None
    last_event: LastEvent | None  # what last happened to the peer's IKE SA, said by the peer
    next_attempt_in_seconds: float | None  # the next connection attempt, if one is scheduled
    ike: IkeSaStatus | None
    children: tuple[ChildStatus, ...]
    configured_children: tuple[ConfiguredChildStatus, ...]
    transfer: Transfer  # since the daemon started, across every CHILD_SA
    drops: dict[str, int]  # inbound drops since the daemon started, by reason
    handshake_failures: int
    last_error: str | None
    last_error_at: str | None
    last_error_seconds: float | None
    on_demand: OnDemandStatus | None = None


@dataclass(frozen=True)
class DataplaneStatus:
    """How the TUN device and the ESP sockets moved packets (offloads in use, errors)."""

    offload: bool = False
    bulk_path: str = "not-loaded"  # offload.bulk_state()
    tun_super_segments_read: int = 0
    tun_gso_writes: int = 0
    tun_read_errors: int = 0
    tun_write_errors: int = 0
    udp_gso_sends: int = 0
    udp_gro_receives: int = 0
    udp_send_errors: int = 0

    @classmethod
    def of(cls, tun: TunDevice | None, esp_sockets: Sequence[UdpSocket]) -> DataplaneStatus:
        """Read the counters of the TUN device (if open) and of the ESP sockets."""
        return cls(
            offload=bool(tun is not None and tun.offload),
            bulk_path=bulk_state(),
            tun_super_segments_read=tun.super_segments if tun else 0,
            tun_gso_writes=tun.gso_writes if tun else 0,
            tun_read_errors=tun.read_errors if tun else 0,
            tun_write_errors=tun.write_errors if tun else 0,
            udp_gso_sends=sum(s.gso_sends for s in esp_sockets),
            udp_gro_receives=sum(s.gro_receives for s in esp_sockets),
            udp_send_errors=sum(s.send_errors for s in esp_sockets),
        )


@dataclass(frozen=True)
class IkeDosStatus:
    """The IKE responder's half-open SAs and cookies (RFC 7296 §2.6)."""

    half_open: int
    cookies_required: bool
    cookie_threshold: int
    half_open_per_source: int
    half_open_limit: int

    @classmethod
    def of(cls, described: Mapping[str, Any]) -> IkeDosStatus:
        return cls(
            half_open=int(described.get("half_open") or 0),
            cookies_required=bool(described.get("cookies_required")),
            cookie_threshold=int(described.get("cookie_threshold") or 0),
            half_open_per_source=int(described.get("half_open_per_source") or 0),
            half_open_limit=int(described.get("half_open_limit") or 0),
        )


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _lists(value: Any) -> Any:
    """What ``asdict()`` gives, with tuples as lists (JSON arrays), recursively; without
    its deep copy of every leaf (the leaves here are str, int, float, bool and None),
    which made a status with 10 000 peers take seconds."""
    if value is None or isinstance(value, str | int | float):  # the leaves (bool is an int)
        return value
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        if not is_dataclass(value) or isinstance(value, type):
            return value
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
    return {name: _lists(getattr(value, name)) for name in names}


@dataclass(frozen=True)
class DaemonStatus:
    """The whole daemon: device, peers and their SAs, drops and counters."""

    generated_at: str
    started_at: str
    uptime_seconds: float
    tun: str | None = None
    mtu: int | None = None
    listen: tuple[str, ...] = ()
    peers: tuple[PeerStatus, ...] = ()
    drops: dict[str, int] = field(default_factory=lambda: every(DROP_REASONS, {}))
    counters: dict[str, int] = field(default_factory=lambda: every(DAEMON_EVENTS, {}))
    dataplane: DataplaneStatus = field(default_factory=DataplaneStatus)
    ike_counters: dict[str, int] = field(default_factory=lambda: every(IKE_EVENTS, {}))
    ike_dos: IkeDosStatus | None = None  # None: no IKE peer configured
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``ipsecctl status --json`` (docs/status.schema.json)."""
        return run_through(document_steps(self, len(self.peers) + 1))


def run_through(steps: Iterable[T | None]) -> T:
    """The result of a stepwise build (None after each step, the result last) in one
    piece: what :meth:`DaemonCore.status_steps` and :func:`document_steps` make for tests
    and one-off callers, where the daemon's answers give the loop a turn per step."""
    for step in steps:
        if step is not None:
            return step
    raise AssertionError("the steps end with their result")


def document_steps(status: DaemonStatus, step: int) -> Iterator[dict[str, Any] | None]:
    """:meth:`DaemonStatus.to_dict` made ``step`` peers at a time: None after each step
    (the shell reads its sockets then), the document last."""
    peers: list[Any] = []
    for number, peer in enumerate(status.peers, 1):
        peers.append(_lists(peer))
        if number % step == 0:
            yield None
    doc: dict[str, Any] = _lists(replace(status, peers=()))
    doc["peers"] = peers  # (where the field stands)
    yield {"version": doc.pop("version"), **doc}


# -- from the core's objects and the IKE manager's dicts -------------------------------------
def _spi(value: Any) -> str | None:
    """An SPI as hex, None while it is not known (all zeros)."""
    text = str(value or "")
    return text if text.strip("0") else None


def nat_remote_detected(entry: Mapping[str, Any], peer: PeerConfig, natt_port: int) -> bool:
    """A NAT in front of the peer, as far as can be told.

    The peer's NAT_DETECTION_SOURCE_IP not matching (``nat_remote``) also happens when
    the peer fakes it to force UDP encapsulation (ipsecd always does, strongSwan with
    ``encap = yes``; RFC 7296 §2.23 allows it), so it counts only with evidence of
    rewriting: the peer's packets come from another address than the configured one,
    or from a port that is neither its IKE port nor the NAT-T port.
    """
    if not entry.get("nat_remote"):
        return False
    address, port = _endpoint(entry.get("remote", ""))
    # A DNS name: the address it resolved to; any: no address to compare, only the port.
    expected = peer.remote_address or entry.get("resolved")
    moved = expected is not None and address != str(expected)
    return moved or port not in (peer.remote_port, natt_port)


def ike_sa_status(
    entry: Mapping[str, Any], peer: PeerConfig, natt_port: int, clock: Clock
) -> IkeSaStatus | None:
    """The IKE manager's entry of ``peer`` as the typed IKE SA status; None without an SA."""
    if not entry.get("local_spi"):
        return None
    state = str(entry.get("state", ""))
    established = _number(entry.get("established_at"))
    rekey = _number(entry.get("rekey_at"))
    # The peer was heard only once the IKE SA is up: before, "last seen" is the SA's creation.
    heard = _number(entry.get("last_seen")) if established is not None else None
    auth = peer.auth
    return IkeSaStatus(
        state=state,
        role=str(entry.get("role", "")),
        local=_address(entry.get("local", "")),
        remote=_address(entry.get("remote", "")),
        local_spi=_spi(entry.get("local_spi")),
        remote_spi=_spi(entry.get("remote_spi")),
        local_id=str(auth.local_id) if auth is not None else None,
        remote_id=str(auth.remote_id) if auth is not None else None,
        algorithm=str(entry.get("algorithm") or ""),
        established_at=clock.iso_or_none(established),
        established_seconds=clock.age_or_none(established),
        rekey_at=clock.iso_or_none(rekey),
        rekey_in_seconds=clock.until_or_none(rekey),
        nat_local=bool(entry.get("nat_local")),
        nat_remote=nat_remote_detected(entry, peer, natt_port),
        fragmentation=bool(entry.get("fragmentation")),
        dpd=str(entry.get("dpd") or "off"),
        dpd_delay_seconds=int(entry.get("dpd_delay") or 0),
        last_heard_at=clock.iso_or_none(heard),
        last_heard_seconds=clock.age_or_none(heard),
        auth=_auth_status(entry.get("auth")),
        additional_ke=tuple(str(k) for k in entry.get("additional_ke") or ()),
    )


def _auth_status(auth: Any) -> AuthStatus | None:
    if not isinstance(auth, dict):
        return None
    certificate = auth.get("remote_certificate")
    return AuthStatus(
        local=str(auth.get("local", "")),
        remote=str(auth.get("remote", "")),
        local_id=str(auth.get("local_id", "")),
        remote_id=str(auth.get("remote_id", "")),
        remote_certificate=str(certificate) if certificate else None,
        ppk=bool(auth.get("ppk")),
    )


def transform_name(encr: EncrAlgorithm, integ: IntegAlgorithm | None, esn: bool) -> str:
    """An ESP transform in proposal words: ``aes256gcm16``, ``aes128-sha256-esn``."""
    return encr.name + (f"-{integ.name}" if integ is not None else "") + ("-esn" if esn else "")


def child_status(
    sa: InstalledChildSa,
    ike_child: Mapping[str, Any] | None,
    life_time: float | None,
    ledger: Ledger,
    clock: Clock,
) -> ChildStatus:
    """One installed CHILD_SA; ``ike_child`` is the IKE manager's description of it, if
    any; ``life_time`` its hard lifetime in seconds (None: none, as for manual SAs)."""
    described = ike_child or {}
    rekey = _number(described.get("rekey_at"))
    expires = _number(described.get("expire_at"))
    if expires is None and life_time:
        expires = sa.installed_at + life_time  # what the manager sets at install (§2.8)
    last_in, last_out = ledger.last_packets(sa)
    transfer = Transfer.of(sa)
    return ChildStatus(
        spi_in=f"{sa.inbound.spi:08x}",
        spi_out=f"{sa.outbound.spi:08x}",
        name=sa.name,
        state=str(described.get("state") or "installed"),
        algorithm=sa.algorithm + ("-esn" if sa.outbound.esn else ""),
        mode=sa.mode,
        encap="udp" if sa.encap and sa.protocol == "esp" else "ip",
        local_ts=tuple(str(ts) for ts in sa.local_ts),
        remote_ts=tuple(str(ts) for ts in sa.remote_ts),
        local=format_address(sa.local),
        remote=format_address(sa.remote),
        established_at=clock.iso(sa.installed_at),
        established_seconds=clock.age(sa.installed_at),
        rekey_at=clock.iso_or_none(rekey),
        rekey_in_seconds=clock.until_or_none(rekey),
        expires_at=clock.iso_or_none(expires),
        expires_in_seconds=clock.until_or_none(expires),
        packets_in=transfer.packets_in,
        bytes_in=transfer.bytes_in,
        packets_out=transfer.packets_out,
        bytes_out=transfer.bytes_out,
        last_in_at=clock.iso_or_none(last_in),
        last_in_seconds=clock.age_or_none(last_in),
        last_out_at=clock.iso_or_none(last_out),
        last_out_seconds=clock.age_or_none(last_out),
        drops=sa_drops(sa),
    )


def peer_state(
    peer: PeerConfig, entry: Mapping[str, Any] | None, ike: IkeSaStatus | None, up: bool
) -> str:
    """The peer's one-word state (:data:`PEER_STATES`)."""
    if peer.manual is not None:
        return "manual" if up else "down"
    if ike is None:
        manager_state = str((entry or {}).get("state", "down"))
        return manager_state if manager_state in ("held", "connecting") else "down"
    if ike.state == "deleting":
        return "deleting"
    if ike.state == "deleted":
        return "down"
    if ike.established_at is None or ike.state in _CONNECTING_IKE_STATES:
        return "connecting"
    return "established" if up else "established-no-child"


def configured_child_status(
    peer: PeerConfig,
    child: ChildConfig,
    installed: Sequence[InstalledChildSa],
    on_demand: OnDemandStatus | None,
) -> ConfiguredChildStatus:
    """One configured child: up or not, and the prefixes of its selectors that the
    negotiated selectors of its CHILD_SAs leave uncovered."""
    mine = [sa for sa in installed if sa.name == child.name]
    got_local = tuple(ts for sa in mine for ts in sa.local_ts)
    got_remote = tuple(ts for sa in mine for ts in sa.remote_ts)

    def left(wanted: Selectors, got: Selectors) -> tuple[str, ...]:
        return tuple(str(n) for ts in uncovered(wanted, got) for n in ts.networks()) if mine else ()

    return ConfiguredChildStatus(
        name=child.name,
        start="manual" if peer.manual is not None else child.start,
        up=bool(mine),
        local_ts=tuple(str(ts) for ts in child.local_ts),
        remote_ts=tuple(str(ts) for ts in child.remote_ts),
        uncovered_local_ts=left(child.local_ts, got_local),
        uncovered_remote_ts=left(child.remote_ts, got_remote),
        on_demand=on_demand,
    )


def remote_in_use(peer: PeerConfig, entry: Mapping[str, Any] | None) -> str | None:
    """The peer's endpoint as used: the IKE SA's, else its address (a DNS name: the one it
    resolved to) and IKE port; None while not known (not resolved, ``any`` not connected)."""
    if entry and entry.get("remote") and entry.get("local_spi"):
        return _address(entry["remote"])
    address = peer.remote_address or (entry or {}).get("resolved")
    return None if address is None else format_address(str(address), peer.remote_port)


def peer_status(
    peer: PeerConfig,
    entry: Mapping[str, Any] | None,
    installed: Sequence[InstalledChildSa],
    *,
    natt_port: int,
    ledger: Ledger,
    clock: Clock,
    last_error: str | None,
    on_demand: OnDemandStatus | None,
    child_traps: Mapping[str, OnDemandStatus] | None = None,
    retired: Sequence[InstalledChildSa] = (),
) -> PeerStatus:
    """One peer from its config, the IKE manager's ``entry`` (None: no IKE) and its
    installed CHILD_SAs; ``natt_port`` is ours (gateway.port), where the peer's IKE moves to
    (RFC 3948); ``last_error`` as the core last recorded it; ``child_traps`` the trap of
    each configured child that has one, by name (``on_demand``: the peer's, one of them);
    ``retired``: its rekeyed SAs still open for late packets (counted, not listed)."""
    ike = ike_sa_status(entry, peer, natt_port, clock) if entry is not None else None
    ike_children = {str(c.get("spi_in")): c for c in (entry or {}).get("children") or ()}

    def life_time(sa: InstalledChildSa) -> float | None:
        child = peer.child(sa.name) or peer.children[0]
        return child.lifetime.life_time if peer.manual is None else None

    children = tuple(
        child_status(sa, ike_children.get(f"{sa.inbound.spi:08x}"), life_time(sa), ledger, clock)
        for sa in installed
    )
    traps = child_traps or {}
    configured = tuple(
        configured_child_status(peer, c, installed, traps.get(c.name)) for c in peer.children
    )
    retry = _number((entry or {}).get("retry_at"))
    event = (entry or {}).get("last_event")
    event_at = _number(event.get("at")) if isinstance(event, dict) else None
    last_event = (
        LastEvent(
            event=str(event.get("event")),
            at=clock.iso_or_none(event_at),
            seconds=clock.age_or_none(event_at),
            message=str(event.get("message") or ""),
        )
        if isinstance(event, dict)
        else None
    )
    error = last_error or (entry or {}).get("last_error") or None
    recorded = ledger.last_error(peer.name)
    error_at = recorded.at if recorded is not None and recorded.message == error else None
    return PeerStatus(
        name=peer.name,
        mode="manual" if peer.manual is not None else "ike",
        start="manual" if peer.manual is not None else peer.start,
        state=peer_state(peer, entry, ike, bool(children)),
        up=bool(children),
        local=str(peer.local_address),
        remote=remote_in_use(peer, entry),
        remote_host=peer.remote_host if peer.dynamic else None,
        local_ts=tuple(str(ts) for ts in peer.local_ts),
        remote_ts=tuple(str(ts) for ts in peer.remote_ts),
        ike_sas=int((entry or {}).get("ike_sas") or 0),
        retry_at=clock.iso_or_none(retry),
        retry_in_seconds=clock.until_or_none(retry),
        last_event=last_event,
        next_attempt_in_seconds=_number((entry or {}).get("next_attempt_in_seconds")),
        ike=ike,
        children=children,
        configured_children=configured,
        transfer=ledger.transfer(peer.name, (*installed, *retired)),
        drops=ledger.drops(peer.name, (*installed, *retired)),
        handshake_failures=ledger.handshake_failures(peer.name),
        last_error=str(error) if error else None,
        last_error_at=clock.iso_or_none(error_at),
        last_error_seconds=clock.age_or_none(error_at),
        on_demand=on_demand,
    )


# -- the configuration (ipsecctl conns) -------------------------------------------------------
@dataclass(frozen=True)
class ConfiguredChild:
    """A CHILD_SA a peer negotiates (or its manual SA): selectors, proposals, lifetimes."""

    name: str  # peers[].children[].name; the peer's name for its own (shorthand) child
    start: str  # initiate | respond | trap | manual
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    rekey_seconds: int | None  # soft lifetime; minus up to rekey_random_seconds
    rekey_random_seconds: int | None
    life_seconds: float | None  # hard lifetime
    rekey_bytes: int
    rekey_packets: int
    manual_spi_in: str | None  # manual peers: the static SPIs
    manual_spi_out: str | None
    mode: str = "tunnel"  # tunnel | transport (RFC 4301 §4.1)
    protocol: str = "esp"  # esp | ah: esp_proposals are then AH proposals (integrity only)

    @classmethod
    def of(cls, peer: PeerConfig, child: ChildConfig) -> ConfiguredChild:
        manual, life = peer.manual, child.lifetime
        negotiated = manual is None
        return cls(
            name=child.name,
            start=child.start if negotiated else "manual",
            local_ts=tuple(str(ts) for ts in child.local_ts),
            remote_ts=tuple(str(ts) for ts in child.remote_ts),
            esp_proposals=tuple(str(p) for p in child.child_proposals)
            if manual is None
            else (transform_name(manual.encr, manual.integ, manual.esn),),
            rekey_seconds=life.rekey_time if negotiated else None,
            rekey_random_seconds=life.rand_time if negotiated else None,
            life_seconds=life.life_time if negotiated else None,
            rekey_bytes=life.rekey_bytes if negotiated else 0,
            rekey_packets=life.rekey_packets if negotiated else 0,
            manual_spi_in=f"{manual.spi_in:08x}" if manual is not None else None,
            manual_spi_out=f"{manual.spi_out:08x}" if manual is not None else None,
            mode=child.mode,
            protocol=child.protocol,
        )


@dataclass(frozen=True)
class ConfiguredPeer:
    """One configured peer as ``ipsecctl conns`` shows it (like ``swanctl --list-conns``)."""

    name: str
    mode: str  # ike | manual
    start: str  # initiate | respond | trap | manual
    local: str
    remote: str
    local_id: str | None
    remote_id: str | None
    auth: str | None  # psk (manual peers: None)
    ike_proposals: tuple[str, ...]
    ike_rekey_seconds: int | None
    ike_rekey_random_seconds: int | None
    dpd_delay_seconds: int
    dpd_action: str
    fragmentation: str
    child: ConfiguredChild  # the first of children (what a peer had before children)
    children: tuple[ConfiguredChild, ...]

    @classmethod
    def of(cls, peer: PeerConfig) -> ConfiguredPeer:
        manual, auth = peer.manual, peer.auth
        ike = peer.ike_lifetime
        negotiated = manual is None
        children = tuple(ConfiguredChild.of(peer, c) for c in peer.children)
        return cls(
            name=peer.name,
            mode="ike" if negotiated else "manual",
            start=peer.start if negotiated else "manual",
            local=str(peer.local_address),
            remote=(
                peer.remote_host
                if peer.remote_address is None
                else format_address(peer.remote_address, peer.remote_port)
            ),
            local_id=str(auth.local_id) if auth is not None else None,
            remote_id=str(auth.remote_id) if auth is not None else None,
            auth="psk" if auth is not None else None,
            ike_proposals=tuple(str(p) for p in peer.ike_proposals),
            ike_rekey_seconds=ike.rekey_time if negotiated else None,
            ike_rekey_random_seconds=ike.rand_time if negotiated else None,
            dpd_delay_seconds=peer.dpd_delay if negotiated else 0,
            dpd_action=peer.dpd_action,
            fragmentation=peer.fragmentation,
            child=children[0],
            children=children,
        )


@dataclass(frozen=True)
class ConnsStatus:
    """The configured peers (``ipsecctl conns``), from the running config."""

    config: str  # the file it was loaded from
    peers: tuple[ConfiguredPeer, ...]
    version: int = SCHEMA_VERSION

    @classmethod
    def of(cls, config: Config) -> ConnsStatus:
        return cls(str(config.path), tuple(ConfiguredPeer.of(p) for p in config.peers))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = _lists(self)
        return {"version": doc.pop("version"), **doc}
