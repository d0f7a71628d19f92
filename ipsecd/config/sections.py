"""The config schema as tables, and the checks that span several keys.

Each section of the YAML file is one ``Section`` table below; adding an
option is adding a ``Field`` line here and a field to the dataclass in
``schema.py``.  ``build_config`` turns the read tables into ``Config`` and
performs the checks a single field cannot: local address vs. listen
addresses, auth vs. manual, unique names, SPIs and remote endpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipsecd.config.errors import ConfigError, ConfigErrors, ErrorCollector
from ipsecd.config.fields import (
    REQUIRED,
    At,
    Field,
    Section,
    Values,
    auto_or,
    boolean,
    choice,
    duration,
    file_path,
    host_port,
    identity,
    integer,
    ip_address,
    ip_interface,
    list_of,
    number,
    optional,
    port,
    prefix,
    proposal,
    section,
    socket_path,
    spi,
    text,
)
from ipsecd.config.schema import (
    AuthConfig,
    ChildLifetime,
    Config,
    GatewayConfig,
    Identity,
    IkeLifetime,
    LogConfig,
    ManualSaConfig,
    PeerConfig,
)
from ipsecd.config.secretfiles import decode_psk, read_key_file, read_secret_file, wipe
from ipsecd.config.users import secret_owners, service_account
from ipsecd.config.yamltree import key_lines
from ipsecd.crypto.proposals import Proposal, parse_proposal
from ipsecd.selectors import TrafficSelector

DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256")
DEFAULT_ESP_PROPOSALS = ("aes256gcm16", "aes128-sha256")
DEFAULT_CONTROL_SOCKET = "/run/ipsecd/ipsecd.sock"

MIN_FRAGMENT_SIZE = 128  # ipsecd.ike.fragments.MIN_FRAGMENT_SIZE (config imports no ike)
PEER_NAME = r"[A-Za-z0-9_.-]+"
TUN_NAME = r"[A-Za-z0-9_.-]+"  # at most IFNAMSIZ - 1 = 15; no '/', no whitespace


def manual_algorithm() -> Any:
    """One ESP transform set for a static SA: exactly one cipher (+ one integrity if not AEAD)."""
    as_proposal = proposal("esp")

    def convert(value: Any, at: At) -> Proposal:
        p: Proposal = as_proposal(value, at)
        tokens = p.text.lower().split("-")
        if len(p.encryption) != 1 or len(p.integrity) > 1:
            raise at.error(
                f"{p.text!r}: a manual SA uses exactly one cipher (and one integrity algorithm"
                " unless the cipher is an AEAD), e.g. aes128gcm16 or aes128-sha256"
            )
        if p.ke:
            raise at.error(f"{p.text!r}: a manual SA has no key exchange; drop {p.ke[0].name}")
        if "esn" in tokens or "noesn" in tokens:
            raise at.error(f"{p.text!r}: write esn: true or esn: false instead of an esn token")
        return p

    return convert


def account() -> Any:
    """A user name on this system (``gateway.user``); ``root`` keeps the daemon root."""
    as_name = text(r"[a-z_][a-z0-9_.-]*\$?", "a user name", max_len=32)

    def convert(value: Any, at: At) -> str:
        name: str = as_name(value, at)
        try:
            service_account(name)
        except KeyError:
            raise at.error(
                f"there is no user {name!r} on this system; create it (the install script"
                " creates 'ipsecd') or name an existing one"
            ) from None
        return name

    return convert


def fragmentation_mode() -> Any:
    """RFC 7383 use, strongSwan's words: ``yes``, ``accept`` or ``no`` (YAML booleans too)."""
    as_choice = choice("yes", "accept", "no")

    def convert(value: Any, at: At) -> str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare yes/no as a boolean
            return "yes" if value else "no"
        if value == "force":
            raise at.error(
                "'force' is not valid: strongSwan forces fragmentation for IKEv1 only;"
                " with IKEv2 write yes"
            )
        mode: str = as_choice(value, at)
        return mode

    return convert


LOG = Section(
    Field("level", choice("debug", "info", "warning", "error"), "info"),
    Field("format", choice("auto", "console", "json"), "auto"),
)

GATEWAY = Section(
    Field("tun", text(TUN_NAME, "a device name (letters, digits, _.-)", max_len=15), "ipsec0"),
    Field("mtu", auto_or(integer(576, 9000)), None),
    Field("addresses", list_of(ip_interface(), unique=True), ()),
    Field("listen", list_of(ip_address(), min_items=1, unique=True), REQUIRED),
    Field("port", port(), 4500),
    Field("ike_port", port(), 500),
    Field("control_socket", socket_path(), Path(DEFAULT_CONTROL_SOCKET)),
    Field("metrics", optional(host_port()), None),
    Field("retransmit_timeout", number(0.05, 30.0), 0.5),
    Field("retransmit_tries", integer(0, 20), 7),
    Field("retry_interval", duration(1, 86400), 30),
    Field("cookie_threshold", integer(0, 1_000_000), 10),
    Field("half_open_per_source", integer(1, 1_000_000), 5),
    Field("half_open_limit", integer(1, 1_000_000), 1000),
    Field("fragment_size", auto_or(integer(MIN_FRAGMENT_SIZE, 65535)), None),
    Field("offload", boolean(), True),
    Field("wakeup_interval_ms", integer(0, 1000), 0),
    Field("user", optional(account()), None),
    Field("set_forwarding", boolean(), False),
)

DEFAULT_IKE = tuple(parse_proposal(p, "ike") for p in DEFAULT_IKE_PROPOSALS)
DEFAULT_ESP = tuple(parse_proposal(p, "esp") for p in DEFAULT_ESP_PROPOSALS)

IKE = Section(
    Field("proposals", list_of(proposal("ike"), min_items=1), DEFAULT_IKE),
    Field("rekey_time", duration(0, 10 * 365 * 86400), 4 * 3600),
    Field("rand_time", optional(duration(0, 10 * 365 * 86400)), None),
)
ESP = Section(
    Field("proposals", list_of(proposal("esp"), min_items=1), DEFAULT_ESP),
    Field("rekey_time", duration(0, 10 * 365 * 86400), 3600),
    Field("life_time", optional(duration(1, 10 * 365 * 86400)), None),
    Field("rand_time", optional(duration(0, 10 * 365 * 86400)), None),
    Field("rekey_bytes", integer(0, 2**63), 0),
    Field("rekey_packets", integer(0, 2**63), 0),
)

AUTH = Section(
    Field("psk_file", file_path(), REQUIRED),
    Field("allow_weak_psk", boolean(), False),
    Field("local_id", identity(), None),
    Field("remote_id", identity(), None),
)

MANUAL = Section(
    Field("algorithm", manual_algorithm(), REQUIRED),
    Field("esn", boolean(), False),
    Field("spi_in", spi(), REQUIRED),
    Field("spi_out", spi(), REQUIRED),
    Field("key_file", file_path(), REQUIRED),
)

PEER = Section(
    Field("name", text(PEER_NAME, "a peer name (letters, digits, _.-)"), REQUIRED),
    Field("remote_address", ip_address(), REQUIRED),
    Field("remote_port", port(), 500),
    Field("local_address", ip_address(), None),
    Field("start", choice("initiate", "respond", "trap"), "initiate"),
    Field("local_ts", list_of(prefix(), min_items=1, unique=True), REQUIRED),
    Field("remote_ts", list_of(prefix(), min_items=1, unique=True), REQUIRED),
    Field("fragmentation", fragmentation_mode(), "yes"),
    Field("fragment_size", optional(integer(MIN_FRAGMENT_SIZE, 65535)), None),
    Field("dpd_delay", duration(0, 86400), 30),
    Field("dpd_action", choice("restart", "clear", "hold"), "restart"),
    Field("ike", section(IKE), None),
    Field("esp", section(ESP), None),
    Field("auth", section(AUTH), None),
    Field("manual", section(MANUAL), None),
)

TOP = Section(
    Field("log", section(LOG), None),
    Field("gateway", section(GATEWAY), REQUIRED),
    Field("peers", list_of(section(PEER), min_items=1), REQUIRED),
    what="a mapping at the top level",
)


def _build_gateway(v: Values) -> GatewayConfig:
    if v["port"] == v["ike_port"]:
        raise v.at("ike_port").error(
            f"ike_port and port are both {v['port']}; IKE needs its own port (500) besides the"
            " NAT-T port (4500)"
        )
    return GatewayConfig(
        tun=v["tun"],
        mtu=v["mtu"],
        addresses=v["addresses"],
        listen=v["listen"],
        port=v["port"],
        ike_port=v["ike_port"],
        control_socket=v["control_socket"],
        metrics=v["metrics"],
        retransmit_timeout=v["retransmit_timeout"],
        retransmit_tries=v["retransmit_tries"],
        retry_interval=v["retry_interval"],
        cookie_threshold=v["cookie_threshold"],
        half_open_per_source=v["half_open_per_source"],
        half_open_limit=v["half_open_limit"],
        fragment_size=v["fragment_size"],
        offload=v["offload"],
        wakeup_interval_ms=v["wakeup_interval_ms"],
        user=v["user"],
        set_forwarding=v["set_forwarding"],
    )


def _build_ike_lifetime(v: Values | None) -> IkeLifetime:
    if v is None:
        return IkeLifetime()
    rekey = v["rekey_time"]
    rand = v["rand_time"] if v["rand_time"] is not None else rekey // 10
    if rekey and rand >= rekey:
        raise v.at("rand_time").error(
            f"rand_time ({rand}s) must be shorter than rekey_time ({rekey}s)"
        )
    return IkeLifetime(rekey_time=rekey, rand_time=rand)


def _build_child_lifetime(v: Values | None) -> ChildLifetime:
    if v is None:
        return ChildLifetime()
    rekey = v["rekey_time"]
    rand = v["rand_time"] if v["rand_time"] is not None else rekey // 10
    life = float(v["life_time"]) if v["life_time"] is not None else rekey * 1.1
    if rekey and rand >= rekey:
        raise v.at("rand_time").error(
            f"rand_time ({rand}s) must be shorter than rekey_time ({rekey}s)"
        )
    if rekey and life <= rekey:
        raise v.at("life_time").error(
            f"life_time ({life:g}s) must be longer than rekey_time ({rekey}s): the SA is"
            " rekeyed at rekey_time and deleted at life_time"
        )
    return ChildLifetime(
        rekey_time=rekey,
        life_time=life,
        rand_time=rand,
        rekey_bytes=v["rekey_bytes"],
        rekey_packets=v["rekey_packets"],
    )


def _build_manual(v: Values, owners: frozenset[int]) -> ManualSaConfig:
    algorithm: Proposal = v["algorithm"]
    encr = algorithm.encryption[0]
    integ = algorithm.integrity[0] if algorithm.integrity else None
    key_in, key_out = read_key_file(v["key_file"], v.at("key_file"), encr, integ, owners)
    return ManualSaConfig(
        encr=encr,
        integ=integ,
        esn=v["esn"],
        spi_in=v["spi_in"],
        spi_out=v["spi_out"],
        key_in=key_in,
        key_out=key_out,
        key_file=v["key_file"],
    )


def _build_auth(v: Values, local: Any, remote: Any, owners: frozenset[int]) -> AuthConfig:
    psk_file = v["psk_file"]
    at = v.at("psk_file")
    raw = read_secret_file(psk_file, "psk", at, owners)
    try:
        psk = decode_psk(raw, psk_file, at, allow_weak=v["allow_weak_psk"])
    finally:
        wipe(raw)
    return AuthConfig(
        psk=psk,
        psk_file=psk_file,
        local_id=v["local_id"] or Identity.from_address(local),
        remote_id=v["remote_id"] or Identity.from_address(remote),
        allow_weak_psk=v["allow_weak_psk"],
    )


def _build_peer(v: Values, gateway: GatewayConfig, owners: frozenset[int]) -> PeerConfig:
    name, remote = v["name"], v["remote_address"]
    local = v["local_address"]
    if local is None:
        local = next((a for a in gateway.listen if a.version == remote.version), None)
        if local is None:
            raise v.at("remote_address").error(
                f"peer {name!r}: {remote} is IPv{remote.version} but gateway.listen has no"
                f" IPv{remote.version} address; add one or set local_address"
            )
    elif local not in gateway.listen:
        listen = ", ".join(str(a) for a in gateway.listen)
        raise v.at("local_address").error(
            f"{local} is not one of gateway.listen ({listen}); ipsecd only sends from addresses"
            " it listens on"
        )
    elif local.version != remote.version:
        raise v.at("local_address").error(
            f"{local} is IPv{local.version} but remote_address {remote} is IPv{remote.version}"
        )

    auth = manual = None
    ike: tuple[Proposal, ...] = ()
    esp: tuple[Proposal, ...] = ()
    if v["manual"] is not None:
        manual_line = v.at("manual").line
        for key in (
            *("auth", "ike", "esp", "start", "fragmentation", "fragment_size"),
            *("dpd_delay", "dpd_action"),
        ):
            if v.given(key):
                raise v.at(key).error(
                    f"peer {name!r} uses static SAs (manual: at line {manual_line}), which"
                    f" take no {key}; remove one of the two"
                )
        manual = _build_manual(v["manual"], owners)
    elif v["auth"] is None:
        raise v.here.error(
            f"peer {name!r} needs an auth: section (IKE with a PSK) or a manual: section"
            " (static SAs)"
        )
    else:
        auth = _build_auth(v["auth"], local, remote, owners)
        ike = v["ike"]["proposals"] if v["ike"] is not None else DEFAULT_IKE
        esp = v["esp"]["proposals"] if v["esp"] is not None else DEFAULT_ESP
    return PeerConfig(
        name=name,
        remote_address=remote,
        remote_port=v["remote_port"],
        local_address=local,
        start=v["start"],
        local_ts=v["local_ts"],
        remote_ts=v["remote_ts"],
        ike_proposals=ike,
        esp_proposals=esp,
        auth=auth,
        manual=manual,
        ike_lifetime=_build_ike_lifetime(v["ike"]),
        child_lifetime=_build_child_lifetime(v["esp"]),
        fragmentation=v["fragmentation"],
        fragment_size=v["fragment_size"],
        dpd_delay=v["dpd_delay"],
        dpd_action=v["dpd_action"],
    )


def _also_used(at: At, what: str, first: Values) -> ConfigError:
    return at.error(
        f"{what} is also used by peer {first['name']!r} ({first.here.path}, line {first.here.line})"
    )


def _check_unique(peers: tuple[Values, ...], errors: ErrorCollector) -> None:
    """Names, remote endpoints and SPIs identify a peer or an SA: each must be unique.

    Inbound SPIs are unique gateway-wide (the SA lookup of RFC 4301 §4.1 goes by
    SPI); outbound SPIs only per remote address (the peer's own lookup).  Works on
    the read values, so a peer with other errors is still compared.
    """
    names: dict[str, Values] = {}
    remotes: dict[tuple[Any, int], Values] = {}
    spis_in: dict[int, Values] = {}
    spis_out: dict[tuple[Any, int], Values] = {}
    for v in peers:
        name, remote = v.get("name"), v.get("remote_address")
        if name in names:
            errors.add(_also_used(v.at("name"), f"peer name {name!r}", names[name]))
        if name is not None:
            names.setdefault(name, v)
        port = v.get("remote_port")  # None when the peer's remote_port did not read
        if remote is not None and port is not None:
            endpoint = (remote, port)
            if endpoint in remotes:
                what = f"remote {remote} port {port}"
                errors.add(_also_used(v.at("remote_address"), what, remotes[endpoint]))
            remotes.setdefault(endpoint, v)
        mv = v.get("manual")
        if mv is None:
            continue
        spi_in, spi_out = mv.get("spi_in"), mv.get("spi_out")  # None: did not read
        if spi_in is not None and spi_in in spis_in:
            errors.add(_also_used(mv.at("spi_in"), f"spi_in {spi_in:#010x}", spis_in[spi_in]))
        if spi_in is not None:
            spis_in.setdefault(spi_in, v)
        if spi_out is None:
            continue
        out = (remote, spi_out)
        if remote is not None and out in spis_out:
            what = f"spi_out {spi_out:#010x} towards {remote}"
            errors.add(_also_used(mv.at("spi_out"), what, spis_out[out]))
        spis_out.setdefault(out, v)


def _check_remote_ts_disjoint(peers: tuple[Values, ...], errors: ErrorCollector) -> None:
    """No address may be in the ``remote_ts`` of two peers.

    The data plane picks a peer's SA (and the kernel the TUN route) by the
    destination address; with two candidates, which peer gets the traffic would
    depend on the order of the SAs, and the other peer's tunnel would be
    silently bypassed (RFC 4301 §4.4.1: the SPD is decorrelated).
    """
    seen: list[tuple[TrafficSelector, At, str | None, int]] = []
    for n, v in enumerate(peers):
        for i, ts in enumerate(v.get("remote_ts", ())):
            at = v.item_at("remote_ts", i)
            for other, other_at, other_name, other_n in seen:
                if other_n == n or ts.intersect(other) is None:
                    continue
                how = "is the same as" if ts == other else "overlaps"
                errors.add(
                    at.error(
                        f"{ts} {how} {other} in remote_ts of peer {other_name!r}"
                        f" ({other_at.file}:{other_at.line}, {other_at.path}); peer"
                        f" {v.get('name')!r} and peer {other_name!r} would both claim that"
                        " traffic: make the remote_ts of different peers disjoint"
                    )
                )
            seen.append((ts, at, v.get("name"), n))


def _with_peer_cross_checks(exc: ConfigError, tree: Any, file: str) -> ConfigError:
    """``exc`` plus what the checks across peers find among the peers' readable keys.

    So that one run of ``ipsecd check`` shows a typo in one peer and the overlap
    of two others' remote_ts together.
    """
    errors = ErrorCollector()
    errors.add(exc)
    raw = tree.get("peers") if isinstance(tree, dict) else None
    if isinstance(raw, list):
        top = At(file, "peers", getattr(tree, "lines", {}).get("peers", 1))
        ignored = ErrorCollector()  # the peers' own errors are in exc already
        peers = tuple(PEER.read_partial(p, top.item(raw, i), ignored) for i, p in enumerate(raw))
        _check_unique(peers, errors)
        _check_remote_ts_disjoint(peers, errors)
    if len(errors.found) == 1:
        return errors.found[0]
    return ConfigErrors(errors.found)


def build_config(tree: Any, file: str) -> Config:
    """Validate a YAML tree (from ``yamltree.load_yaml``) and build the ``Config``."""
    line = getattr(tree, "line", 1)
    if tree is None:
        raise At(file, "", 1).error(
            "the file is empty; it needs at least a gateway: and a peers: section"
        )
    try:
        top = TOP.read(tree, At(file, "", line))
    except ConfigError as exc:
        raise _with_peer_cross_checks(exc, tree, file) from None
    log = LogConfig(**top["log"]) if top["log"] is not None else LogConfig()
    gateway = _build_gateway(top["gateway"])
    owners = secret_owners(gateway.user)
    errors = ErrorCollector()
    peers: list[PeerConfig | None] = []
    for v in top["peers"]:
        peer = None
        with errors.collecting():
            peer = _build_peer(v, gateway, owners)
        peers.append(peer)
    _check_unique(top["peers"], errors)
    _check_remote_ts_disjoint(top["peers"], errors)
    errors.raise_if_any()
    return Config(
        path=Path(file),
        log=log,
        gateway=gateway,
        peers=tuple(p for p in peers if p is not None),
        key_lines=key_lines(tree),
    )
