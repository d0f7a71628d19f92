"""The config schema as tables, and the checks that span several keys.

Each section of the YAML file is one ``Section`` table below; adding an
option is adding a ``Field`` line here and a field to the dataclass in
``schema.py``.  ``build_config`` turns the read tables into ``Config`` and
performs the checks a single field cannot: local address vs. listen
addresses, auth vs. manual, unique names, SPIs and remote endpoints.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from ipsecd.config.credentials import (
    load_trust_store,
    read_certificate_file,
    read_ppk_file,
    read_private_key_file,
)
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
    ANY_ADDRESS,
    AuthConfig,
    ChildConfig,
    ChildLifetime,
    Config,
    Credential,
    GatewayConfig,
    Identity,
    IkeLifetime,
    IpAddress,
    LogConfig,
    ManualSaConfig,
    PeerConfig,
    PpkConfig,
    TrustConfig,
)
from ipsecd.config.secretfiles import decode_psk, read_key_file, read_secret_file, wipe
from ipsecd.config.users import secret_owners, service_account
from ipsecd.config.yamltree import key_lines
from ipsecd.crypto.proposals import Proposal, parse_proposal
from ipsecd.pki.identity import identities_of, match_identity
from ipsecd.selectors import TrafficSelector

DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256")
DEFAULT_ESP_PROPOSALS = ("aes256gcm16", "aes128-sha256")
DEFAULT_AH_PROPOSALS = ("sha256",)
DEFAULT_CONTROL_SOCKET = "/run/ipsecd/ipsecd.sock"

# Transport mode routes the peer's own address into TUN, in a table of its own that
# ipsecd's sockets (marked) skip: ``ip rule add not fwmark MARK table TABLE``.
DEFAULT_FWMARK = 0x4500
DEFAULT_ROUTE_TABLE = 4500
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


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def remote_host() -> Any:
    """``remote_address``: an IP literal, a DNS name (resolved by the daemon) or ``any``.

    Gives an ``IPv4Address``/``IPv6Address`` for a literal, else the text (a name in
    lower case, or ``any``).  Dotted digits are an IPv4 literal, never a name.
    """
    as_address = ip_address()

    def convert(value: Any, at: At) -> IpAddress | str:
        if value == ANY_ADDRESS:
            return ANY_ADDRESS
        name = value.rstrip(".").lower() if isinstance(value, str) else ""
        labels = name.split(".")
        numeric = sum(label.isdigit() for label in labels)
        if not name or ":" in name or (labels[0].isdigit() and numeric >= len(labels) - 1):
            # An address literal, or the error naming one ('192.0.2.x' is a typo, not a
            # name: RFC 3696 §2 leaves names whose labels are digits to addresses).
            address: IpAddress = as_address(value, at)
            return address
        if labels[-1].isdigit():
            raise at.error(f"{value!r} is not a DNS name: its last label is a number")
        if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise at.error(
                f"{value!r} is neither an IP address nor a DNS name (letters, digits and"
                " hyphens in dot-separated labels), nor 'any'"
            )
        return name

    return convert


def route_table() -> Any:
    """A routing table id for ipsecd's own routes; not main, local or default (253-255)."""
    as_int = integer(1, 0xFFFFFFFF)

    def convert(value: Any, at: At) -> int:
        table: int = as_int(value, at)
        if table in (253, 254, 255):
            name = {253: "default", 254: "main", 255: "local"}[table]
            raise at.error(
                f"{table} is the kernel's {name!r} table; ipsecd needs a table of its own"
                f" (e.g. {DEFAULT_ROUTE_TABLE})"
            )
        return table

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
    Field("max_ike_datagram", integer(1280, 65535), 10_000),
    Field("offload", boolean(), True),
    Field("wakeup_interval_ms", integer(0, 1000), 0),
    Field("user", optional(account()), None),
    Field("set_forwarding", boolean(), False),
    Field("fwmark", integer(1, 0xFFFFFFFF), DEFAULT_FWMARK),
    Field("route_table", route_table(), DEFAULT_ROUTE_TABLE),
)

DEFAULT_IKE = tuple(parse_proposal(p, "ike") for p in DEFAULT_IKE_PROPOSALS)
DEFAULT_ESP = tuple(parse_proposal(p, "esp") for p in DEFAULT_ESP_PROPOSALS)
DEFAULT_AH = tuple(parse_proposal(p, "ah") for p in DEFAULT_AH_PROPOSALS)

IKE = Section(
    Field("proposals", list_of(proposal("ike"), min_items=1), DEFAULT_IKE),
    Field("rekey_time", duration(0, 10 * 365 * 86400), 4 * 3600),
    Field("rand_time", optional(duration(0, 10 * 365 * 86400)), None),
    Field("reauth_time", duration(0, 10 * 365 * 86400), 0),
)
# The CHILD_SA: its protocol, mode, proposals and lifetimes (the peer's ``esp:`` section).
ESP = Section(
    Field("mode", choice("tunnel", "transport"), "tunnel"),
    Field("protocol", choice("esp", "ah"), "esp"),
    Field("proposals", list_of(proposal("esp"), min_items=1), DEFAULT_ESP),
    Field("ah_proposals", list_of(proposal("ah"), min_items=1), DEFAULT_AH),
    Field("rekey_time", duration(0, 10 * 365 * 86400), 3600),
    Field("life_time", optional(duration(1, 10 * 365 * 86400)), None),
    Field("rand_time", optional(duration(0, 10 * 365 * 86400)), None),
    Field("rekey_bytes", integer(0, 2**63), 0),
    Field("rekey_packets", integer(0, 2**63), 0),
)

AUTH = Section(
    Field("local_auth", optional(choice("psk", "pubkey")), None),
    Field("remote_auth", optional(choice("psk", "pubkey")), None),
    Field("psk_file", optional(file_path()), None),
    Field("allow_weak_psk", boolean(), False),
    Field("certificate", optional(file_path()), None),
    Field("private_key", optional(file_path()), None),
    Field("cacerts", list_of(file_path(), unique=True), ()),
    Field("crls", list_of(file_path(), unique=True), ()),
    Field("rsa_pss", boolean(), False),
    Field("local_id", identity(), None),
    Field("remote_id", identity(), None),
    Field("ppk_id", optional(text(r"[\x21-\x7e]{1,64}", "a PPK id (1-64 printable ASCII)")), None),
    Field("ppk_file", optional(file_path()), None),
    Field("ppk_required", boolean(), False),
)

MANUAL = Section(
    Field("algorithm", manual_algorithm(), REQUIRED),
    Field("esn", boolean(), False),
    Field("spi_in", spi(), REQUIRED),
    Field("spi_out", spi(), REQUIRED),
    Field("key_file", file_path(), REQUIRED),
)

#: The keys of one CHILD_SA: an element of ``children:``, and (the shorthand for a peer
#: with one child) keys of the peer itself.  A per-child key is one line here.
CHILD_FIELDS = (
    Field("local_ts", list_of(prefix(), min_items=1, unique=True), REQUIRED),
    Field("remote_ts", list_of(prefix(), min_items=1, unique=True), REQUIRED),
    Field("start", choice("initiate", "respond", "trap"), "initiate"),
    Field("close_action", optional(choice("none", "start", "trap")), None),
    Field("esp", section(ESP), None),
)
CHILD_KEYS = tuple(f.key for f in CHILD_FIELDS)

CHILD = Section(
    Field("name", text(PEER_NAME, "a child name (letters, digits, _.-)"), REQUIRED),
    *CHILD_FIELDS,
)

PEER = Section(
    Field("name", text(PEER_NAME, "a peer name (letters, digits, _.-)"), REQUIRED),
    Field("remote_address", remote_host(), REQUIRED),
    Field("remote_port", port(), 500),
    Field("local_address", ip_address(), None),
    Field("encap", choice("auto", "always"), "always"),
    # The shorthand child: required (local_ts, remote_ts) unless children: is written.
    *(replace(f, default=None) if f.required else f for f in CHILD_FIELDS),
    Field("children", list_of(section(CHILD), min_items=1), None),
    Field("fragmentation", fragmentation_mode(), "yes"),
    Field("fragment_size", optional(integer(MIN_FRAGMENT_SIZE, 65535)), None),
    Field("dpd_delay", duration(0, 86400), 30),
    Field("dpd_action", choice("restart", "clear", "hold"), "restart"),
    Field("ike", section(IKE), None),
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
        max_ike_datagram=v["max_ike_datagram"],
        offload=v["offload"],
        wakeup_interval_ms=v["wakeup_interval_ms"],
        user=v["user"],
        set_forwarding=v["set_forwarding"],
        fwmark=v["fwmark"],
        route_table=v["route_table"],
    )


def _build_ike_lifetime(v: Values | None) -> IkeLifetime:
    if v is None:
        return IkeLifetime()
    rekey, reauth = v["rekey_time"], v["reauth_time"]
    # One jitter for both timers: by default 10 % of the shorter one that is set.
    shortest = min((t for t in (rekey, reauth) if t), default=0)
    rand = v["rand_time"] if v["rand_time"] is not None else shortest // 10
    for key, seconds in (("rekey_time", rekey), ("reauth_time", reauth)):
        if seconds and rand >= seconds:
            raise v.at("rand_time").error(
                f"rand_time ({rand}s) must be shorter than {key} ({seconds}s)"
            )
    return IkeLifetime(rekey_time=rekey, rand_time=rand, reauth_time=reauth)


#: ``close_action`` when not written: what the peer's ``start`` promises.  A peer we
#: initiate is kept up, so it is initiated again; a trap peer waits for traffic; a
#: peer we only answer is the peer's to bring back.
CLOSE_ACTION_BY_START = {"initiate": "start", "trap": "trap", "respond": "none"}


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


def _default_remote_id(remote: IpAddress | str) -> Identity | None:
    """The identity expected of a peer whose ``remote_id`` is not written: its address, or
    its DNS name (an FQDN identity); none for ``any`` (the loader requires one)."""
    if isinstance(remote, str):
        return None if remote == ANY_ADDRESS else Identity("FQDN", remote)
    return Identity.from_address(remote)


def _auth_methods(v: Values) -> tuple[str, str]:
    """``local_auth`` and ``remote_auth`` as given, or by default: ``pubkey`` when a
    certificate is configured, else ``psk``; the peer like ourselves."""
    local = v["local_auth"] or ("pubkey" if v["certificate"] is not None else "psk")
    return local, v["remote_auth"] or local


def _check_auth_keys(v: Values, local_auth: str, remote_auth: str) -> None:
    """Each credential key must serve one of the two directions, and each direction
    must have its credentials: one plain-words error per mismatch, at its line."""
    uses = f"local_auth is {local_auth} and remote_auth is {remote_auth}"
    errors = ErrorCollector()

    def unused(key: str, needs: str) -> None:
        if v.given(key):
            errors.add(v.at(key).error(f"{key} is not used: {uses}; {needs}, or remove it"))

    def needed(why: str, *keys: str) -> None:
        missing = [key for key in keys if v[key] in (None, ())]
        if missing:
            errors.add(v.here.error(f"{why} needs {' and '.join(missing)}"))

    if "psk" in (local_auth, remote_auth):
        needed(f"{uses}: the pre-shared key (RFC 7296 §2.15)", "psk_file")
    else:
        unused("psk_file", "set local_auth or remote_auth to psk")
    if local_auth == "pubkey":
        needed("local_auth pubkey (we sign with a certificate)", "certificate", "private_key")
    else:
        for key in ("certificate", "private_key", "rsa_pss"):
            unused(key, "set local_auth to pubkey to sign with a certificate")
    if remote_auth == "pubkey":
        needed("remote_auth pubkey (the peer's certificate is checked against them)", "cacerts")
    else:
        for key in ("cacerts", "crls"):
            unused(key, "set remote_auth to pubkey to check the peer's certificate")
    if v["ppk_id"] is None and v["ppk_file"] is not None:
        errors.add(v.at("ppk_file").error("ppk_file needs ppk_id, the name both peers use"))
    if v["ppk_id"] is not None and v["ppk_file"] is None:
        errors.add(v.at("ppk_id").error("ppk_id needs ppk_file, the key itself (RFC 8784)"))
    if v["ppk_required"] and v["ppk_id"] is None:
        errors.add(v.at("ppk_required").error("ppk_required needs ppk_id and ppk_file"))
    errors.raise_if_any()


def _read_psk(v: Values, owners: frozenset[int]) -> bytes:
    psk_file = v["psk_file"]
    at = v.at("psk_file")
    raw = read_secret_file(psk_file, "psk", at, owners)
    try:
        return decode_psk(raw, psk_file, at, allow_weak=v["allow_weak_psk"])
    finally:
        wipe(raw)


def _read_credential(v: Values, owners: frozenset[int]) -> Credential:
    # pki.certs needs cryptography.x509: loaded by the configs with a certificate only.
    from ipsecd.pki.certs import key_description

    key = read_private_key_file(v["private_key"], v.at("private_key"), owners)
    if v["rsa_pss"] and not isinstance(key, rsa.RSAPrivateKey):
        raise v.at("rsa_pss").error(
            f"rsa_pss applies to RSA keys; the private_key {v['private_key']} is"
            f" {key_description(key)}"
        )
    cert, chain = read_certificate_file(v["certificate"], v.at("certificate"), key)
    return Credential(cert, tuple(chain), key, v["certificate"], v["private_key"])


def _read_trust(v: Values) -> TrustConfig:
    store = load_trust_store(v["cacerts"], v["crls"], v.at("cacerts"))
    return TrustConfig(
        anchors=tuple(store.anchors),
        crls=tuple(store.crls),
        cacerts=v["cacerts"],
        crl_files=v["crls"],
        crl_fingerprints=tuple(c.fingerprint(hashes.SHA256()) for c in store.crls),
    )


def _local_identity(v: Values, local: Any, credential: Credential | None) -> Identity:
    """``local_id``, or the default: our address, or with a certificate that does not
    contain it, the certificate's subject DN (strongSwan's default).  A certificate must
    back the identity we send (RFC 4945 §3.1): refused here, not at the peer."""
    given: Identity | None = v["local_id"]
    if credential is None:
        return given or Identity.from_address(local)
    from ipsecd.pki.certs import describe, name_text  # a certificate is configured

    cert = credential.certificate
    if given is None:
        address = Identity.from_address(local)
        if match_identity(cert, address.ike_identity):
            return address
        given = Identity("DER_ASN1_DN", name_text(cert.subject))
    if not match_identity(cert, given.ike_identity):
        have = ", ".join(f"'{i}'" for i in identities_of(cert)) or "none"
        raise v.at("local_id" if v.given("local_id") else "certificate").error(
            f"local_id '{given}' is not in our {describe(cert)} (it contains: {have});"
            " set local_id to one of them: the peer refuses an identity the certificate"
            " does not back (RFC 4945 §3.1)"
        )
    if given.type == "DER_ASN1_DN" and given.ike_identity.dn() == cert.subject:
        return replace(given, der=cert.subject.public_bytes())  # the certificate's encoding
    return given


def _read_ppk(v: Values, owners: frozenset[int]) -> PpkConfig | None:
    if v["ppk_id"] is None:
        return None
    ppk = read_ppk_file(v["ppk_file"], v.at("ppk_file"), owners)
    return PpkConfig(v["ppk_id"].encode(), ppk, v["ppk_file"], v["ppk_required"])


def _build_auth(
    v: Values, name: str, local: IpAddress, remote: IpAddress | str, owners: frozenset[int]
) -> AuthConfig:
    remote_id = v["remote_id"] or _default_remote_id(remote)
    if remote_id is None:
        raise v.here.error(
            f"peer {name!r} has remote_address any: it is known only by its identity, so"
            " auth.remote_id is required (the ID the peer sends in IKE_AUTH)"
        )
    local_auth, remote_auth = _auth_methods(v)
    _check_auth_keys(v, local_auth, remote_auth)
    errors = ErrorCollector()
    psk, credential, trust, ppk = b"", None, None, None
    with errors.collecting():
        if "psk" in (local_auth, remote_auth):
            psk = _read_psk(v, owners)
    with errors.collecting():
        if local_auth == "pubkey":
            credential = _read_credential(v, owners)
    with errors.collecting():
        if remote_auth == "pubkey":
            trust = _read_trust(v)
    with errors.collecting():
        ppk = _read_ppk(v, owners)
    errors.raise_if_any()
    return AuthConfig(
        psk=psk,
        psk_file=v["psk_file"] if psk else None,
        local_id=_local_identity(v, local, credential),
        remote_id=remote_id,
        allow_weak_psk=v["allow_weak_psk"],
        local_auth=local_auth,
        remote_auth=remote_auth,
        credential=credential,
        trust=trust,
        rsa_pss=v["rsa_pss"],
        ppk=ppk,
    )


def _local_address(v: Values, gateway: GatewayConfig) -> IpAddress:
    """``local_address``, or the first address of ``gateway.listen`` of the peer's family
    (of any family for a DNS name or ``any``: the name is resolved in that family)."""
    name, remote, local = v["name"], v["remote_address"], v["local_address"]
    literal = not isinstance(remote, str)
    if local is None:
        family = [a for a in gateway.listen if not literal or a.version == remote.version]
        if not family:
            raise v.at("remote_address").error(
                f"peer {name!r}: {remote} is IPv{remote.version} but gateway.listen has no"
                f" IPv{remote.version} address; add one or set local_address"
            )
        return family[0]
    if local not in gateway.listen:
        listen = ", ".join(str(a) for a in gateway.listen)
        raise v.at("local_address").error(
            f"{local} is not one of gateway.listen ({listen}); ipsecd only sends from addresses"
            " it listens on"
        )
    if literal and local.version != remote.version:
        raise v.at("local_address").error(
            f"{local} is IPv{local.version} but remote_address {remote} is IPv{remote.version}"
        )
    ip: IpAddress = local
    return ip


def _build_child(
    v: Values, name: str, peer: Values, local: Any, remote: Any, *, manual: bool
) -> ChildConfig:
    """One child from its keys: a ``children:`` element, or the peer's own (shorthand),
    with the checks that span keys.

    AH cannot travel in UDP (RFC 3948 encapsulates ESP only), has no encryption
    (RFC 4302), and transport mode protects the gateways' own packets (RFC 4301
    §4.1), so its selectors are the two IKE addresses.
    """
    esp = v["esp"]
    responds_only = remote == ANY_ADDRESS
    start = v["start"] if v.given("start") else "respond" if responds_only else "initiate"
    mode, protocol = (esp["mode"], esp["protocol"]) if esp is not None else ("tunnel", "esp")
    who = f"peer {peer['name']!r}" + ("" if v is peer else f" child {name!r}")
    if protocol == "ah":
        if esp.given("proposals"):
            raise esp.at("proposals").error(
                f"{who} uses AH (protocol: ah), which has no encryption (RFC 4302): write its"
                " integrity algorithms as ah_proposals (e.g. [sha256]) instead of proposals"
            )
        if peer["encap"] == "always":
            raise esp.at("protocol").error(
                f"{who}: AH cannot be carried in UDP (RFC 3948 encapsulates ESP only), and"
                " encap is 'always'"
                + ("" if peer.given("encap") else " (the default)")
                + "; set encap: auto on the peer: AH then travels directly over IP"
                " (protocol 51), and the CHILD_SA is refused when a NAT is detected"
            )
    elif esp is not None and esp.given("ah_proposals"):
        raise esp.at("ah_proposals").error(
            f"{who}: ah_proposals are for protocol: ah, but this CHILD_SA uses ESP"
            + ("" if esp.given("protocol") else " (protocol: esp, the default)")
            + "; add protocol: ah or remove ah_proposals"
        )
    if mode == "transport":
        _check_transport_selectors(v, who, "local_ts", local, "this gateway's")
        _check_transport_selectors(v, who, "remote_ts", remote, "the peer's")
    esp_proposals: tuple[Proposal, ...] = ()
    ah_proposals: tuple[Proposal, ...] = ()
    if not manual:
        if protocol == "ah":
            ah_proposals = esp["ah_proposals"]
        else:
            esp_proposals = esp["proposals"] if esp is not None else DEFAULT_ESP
    return ChildConfig(
        name=name,
        local_ts=v["local_ts"],
        remote_ts=v["remote_ts"],
        esp_proposals=esp_proposals,
        start=start,
        lifetime=_build_child_lifetime(esp),
        close_action=v["close_action"] or CLOSE_ACTION_BY_START[start],
        mode=mode,
        protocol=protocol,
        ah_proposals=ah_proposals,
    )


def _check_transport_selectors(v: Values, who: str, key: str, address: Any, whose: str) -> None:
    """Transport mode: every selector of ``key`` is exactly ``address`` (one host); for a
    peer known by DNS name or ``any``, one host each (its address is learned later)."""
    for i, ts in enumerate(v[key]):
        if isinstance(address, str):  # a DNS name or any
            if ts.start == ts.end and (ts.protocol, ts.start_port, ts.end_port) == (0, 0, 65535):
                continue
            raise v.item_at(key, i).error(
                f"{who} uses transport mode (esp.mode: transport), which protects the"
                f" gateways' own packets: each of {key} must be one host ({whose} address),"
                f" not {ts}; use mode: tunnel for subnets"
            )
        host = TrafficSelector.from_prefix(str(address))
        if ts != host:
            bits = 32 if address.version == 4 else 128
            raise v.item_at(key, i).error(
                f"{who} uses transport mode (esp.mode: transport), which protects the"
                f" gateways' own packets: {key} must be {whose} address {address}"
                f" (write {key}: [{address}/{bits}]), not {ts}; use mode: tunnel for subnets"
                " and other hosts"
            )


def _build_children(v: Values, local: Any, remote: Any, *, manual: bool) -> tuple[ChildConfig, ...]:
    """The peer's children: its ``children:`` list, or the one child its own keys make."""
    name = v["name"]
    responds_only = remote == ANY_ADDRESS
    if v["children"] is None:
        for key in ("local_ts", "remote_ts"):
            if v[key] is None:
                raise v.here.error(
                    f"missing required key {key!r} (or a children: list, each child with its"
                    " own local_ts and remote_ts)"
                )
        children: tuple[Values, ...] = (v,)
    else:
        if manual:
            raise v.at("children").error(
                f"peer {name!r} uses static SAs (manual:), which have one pair of selectors:"
                " write local_ts and remote_ts on the peer instead of children:"
            )
        children_line = v.at("children").line
        for key in CHILD_KEYS:
            if v.given(key):
                raise v.at(key).error(
                    f"peer {name!r} lists children: (line {children_line}); {key} belongs in"
                    " each child there, not on the peer"
                )
        children = v["children"]
    errors = ErrorCollector()
    seen: dict[str, Values] = {}
    built: list[ChildConfig] = []
    for child in children:
        child_name = child["name"] if child is not v else name
        with errors.collecting():
            if child_name in seen:
                first = seen[child_name].at("name")
                raise child.at("name").error(
                    f"child name {child_name!r} is also used by {first.path} (line"
                    f" {first.line}); the children of a peer need distinct names"
                )
            seen[child_name] = child
            if responds_only and child.given("start") and child["start"] != "respond":
                raise child.at("start").error(
                    f"peer {name!r} has remote_address any: its address is learned when it"
                    f" connects, so ipsecd cannot {child['start']} it; write start: respond"
                    " (the default for such a peer) or give the peer's address or DNS name"
                )
            built.append(_build_child(child, child_name, v, local, remote, manual=manual))
    errors.raise_if_any()
    return tuple(built)


def _build_peer(v: Values, gateway: GatewayConfig, owners: frozenset[int]) -> PeerConfig:
    name, remote = v["name"], v["remote_address"]
    local = _local_address(v, gateway)
    auth = manual = None
    ike: tuple[Proposal, ...] = ()
    if v["manual"] is not None:
        manual_line = v.at("manual").line
        for key in (
            *("auth", "ike", "esp", "start", "fragmentation", "fragment_size"),
            *("dpd_delay", "dpd_action", "close_action"),
        ):
            if v.given(key):
                raise v.at(key).error(
                    f"peer {name!r} uses static SAs (manual: at line {manual_line}), which"
                    f" take no {key}; remove one of the two"
                )
        if isinstance(remote, str):
            raise v.at("remote_address").error(
                f"peer {name!r} uses static SAs (manual: at line {manual_line}), which need"
                f" the peer's IP address, not {remote!r}"
            )
        manual = _build_manual(v["manual"], owners)
    elif v["auth"] is None:
        raise v.here.error(
            f"peer {name!r} needs an auth: section (IKE with a PSK or certificates) or a"
            " manual: section (static SAs)"
        )
    else:
        auth = _build_auth(v["auth"], name, local, remote, owners)
        ike = v["ike"]["proposals"] if v["ike"] is not None else DEFAULT_IKE
    children = _build_children(v, local, remote, manual=manual is not None)
    return PeerConfig(
        name=name,
        remote_address=None if isinstance(remote, str) else remote,
        remote_host=str(remote),
        remote_port=v["remote_port"],
        local_address=local,
        children=children,
        ike_proposals=ike,
        auth=auth,
        manual=manual,
        ike_lifetime=_build_ike_lifetime(v["ike"]),
        fragmentation=v["fragmentation"],
        fragment_size=v["fragment_size"],
        dpd_delay=v["dpd_delay"],
        dpd_action=v["dpd_action"],
        encap=v["encap"],
    )


def _also_used(at: At, what: str, first: Values) -> ConfigError:
    # The first peer's name may itself be missing or misspelt (reported on its own).
    name = first.get("name")
    who = f"peer {name!r}" if name is not None else "another peer"
    return at.error(f"{what} is also used by {who} ({first.here.path}, line {first.here.line})")


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
        if remote is not None and remote != ANY_ADDRESS and port is not None:
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


def _children_values(v: Values) -> tuple[Values, ...]:
    """The read children of a peer: its ``children:`` list, or the peer itself."""
    children = v.get("children")
    return tuple(children) if children is not None else (v,)


def _check_remote_ts_disjoint(peers: tuple[Values, ...], errors: ErrorCollector) -> None:
    """No address may be in the ``remote_ts`` of two peers, nor of two children of one peer.

    The data plane picks a peer's SA (and the kernel the TUN route) by the
    destination address; with two candidates, which peer (or which CHILD_SA of
    one peer) gets the traffic would depend on the order of the SAs, and the
    other tunnel would be silently bypassed (RFC 4301 §4.4.1: the SPD is
    decorrelated).  A remote prefix reached from several local prefixes is one
    child listing them all in its ``local_ts``.
    """
    entries: list[tuple[TrafficSelector, At, str | None, str | None, int]] = []
    for n, v in enumerate(peers):
        peer = v.get("name")
        for child in _children_values(v):
            child_name = child.get("name") if child is not v else None
            for i, ts in enumerate(child.get("remote_ts") or ()):
                entries.append((ts, child.item_at("remote_ts", i), peer, child_name, n))
    for k, j in _address_overlaps([entry[0] for entry in entries]):
        ts, at, peer, child_name, n = entries[k]
        other, other_at, other_peer, other_child, other_n = entries[j]
        if (other_n, other_child) == (n, child_name) or ts.intersect(other) is None:
            continue
        how = "is the same as" if ts == other else "overlaps"
        where = f"({other_at.file}:{other_at.line}, {other_at.path})"
        if other_n == n:
            message = (
                f"{ts} {how} {other} in remote_ts of child {other_child!r} {where};"
                f" children {other_child!r} and {child_name!r} of peer {peer!r} would"
                " both claim that traffic: make the remote_ts of different children"
                " disjoint (one remote prefix reached from several local prefixes"
                " is one child with all of them in its local_ts)"
            )
        else:
            message = (
                f"{ts} {how} {other} in remote_ts of peer {other_peer!r} {where};"
                f" peer {peer!r} and peer {other_peer!r} would both claim that"
                " traffic: make the remote_ts of different peers disjoint"
            )
        errors.add(at.error(message))


def _address_overlaps(selectors: list[TrafficSelector]) -> list[tuple[int, int]]:
    """Every pair ``(k, j)``, ``j < k``, of selectors whose address ranges overlap, in the
    order a loop over ``k`` and then over ``j`` would meet them.

    A sweep over the ranges sorted by their first address: with 10 000 peers, comparing
    every pair took minutes; disjoint prefixes now cost one sort.
    """
    order = sorted(range(len(selectors)), key=lambda k: (selectors[k].version, selectors[k].start))
    pairs: list[tuple[int, int]] = []
    active: list[tuple[int, int]] = []  # heap of (end, index) of the ranges still open
    version = None
    for k in order:
        ts = selectors[k]
        if ts.version != version:
            version, active = ts.version, []
        while active and active[0][0] < ts.start:
            heapq.heappop(active)
        pairs += [(max(k, j), min(k, j)) for _, j in active]
        heapq.heappush(active, (ts.end, k))
    return sorted(pairs)


def _check_any_peers(peers: tuple[Values, ...], errors: ErrorCollector) -> None:
    """Peers with ``remote_address: any`` are told apart by their ``remote_id`` alone."""
    ids: dict[Identity, Values] = {}
    for v in peers:
        auth = v.get("auth")
        if v.get("remote_address") != ANY_ADDRESS or auth is None:
            continue
        remote_id = auth.get("remote_id")
        if remote_id is None:
            continue
        if remote_id in ids:
            what = f"remote_id {remote_id} of a peer with remote_address any"
            errors.add(_also_used(auth.at("remote_id"), what, ids[remote_id]))
        ids.setdefault(remote_id, v)


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
        _check_any_peers(peers, errors)
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
    _check_any_peers(top["peers"], errors)
    errors.raise_if_any()
    return Config(
        path=Path(file),
        log=log,
        gateway=gateway,
        peers=tuple(p for p in peers if p is not None),
        key_lines=key_lines(tree),
    )
