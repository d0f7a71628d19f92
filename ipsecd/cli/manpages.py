"""Man pages ipsecd(8), ipsecctl(8) and ipsecd.yaml(5), generated from the code.

The command pages come from the commands' own argument parsers (every
subcommand, option, choice and default), the config page from the field tables
of ``ipsecd.config.sections`` (every key with its default) plus the one-line
descriptions in ``CONFIG_DOCS`` below.  Nothing is written by hand twice, so a
page cannot fall behind the code; tests/unit/test_manpages.py fails when a
config key has no description here.  scripts/install.sh writes the pages::

    python -m ipsecd.cli.manpages --output /usr/local/share/man
    python -m ipsecd.cli.manpages --show ipsecd.yaml.5 | man -l -
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from ipsecd.cli.version import version

SEE_ALSO_COMMANDS = "ipsecd(8), ipsecctl(8), ipsecd.yaml(5), systemd.service(5), swanctl(8)"

# One line (or a few) per config key, "section.key" as ipsecd.yaml(5) lists them.  The
# defaults come from the field tables; say here what the key means.  Only keys the field
# tables have are shown, so an entry may be written before its key lands.
CONFIG_DOCS: dict[str, str] = {
    "log": "Logging.",
    "log.level": "debug, info, warning or error.",
    "log.format": "auto, console or json; auto is human-readable on a terminal and JSON lines "
    "otherwise (the journal, log shippers).",
    "gateway": "This gateway: devices, sockets, limits.  Required.",
    "gateway.tun": "Name of the TUN device ipsecd creates; at most 15 characters.",
    "gateway.mtu": "MTU of the TUN device: auto subtracts the largest ESP-in-UDP overhead of the "
    "configured transforms from 1500; or a number from 576 to 9000.",
    "gateway.addresses": "Addresses (address/prefix) put on the TUN device.  Do not repeat the "
    "LAN's prefix here: a /32 (/128) of the gateway's site address is enough.",
    "gateway.listen": "Local IP addresses the UDP sockets bind to; every peer's local_address "
    "must be one of them.",
    "gateway.port": "UDP port for NAT traversal and ESP-in-UDP (RFC 3948).  Open it, and "
    "ike_port, in the firewall.",
    "gateway.ike_port": "UDP port for IKE (RFC 7296 section 2); must differ from port.",
    "gateway.control_socket": "Unix socket ipsecctl talks to (mode 0600).  Under systemd it must "
    "lie in the unit's RuntimeDirectory: /run/ipsecd/ for ipsecd.service, "
    "/run/ipsecd/INSTANCE/ for ipsecd@INSTANCE.service.",
    "gateway.metrics": "Prometheus metrics endpoint ADDRESS:PORT ([::1]:9810 for IPv6), or null.",
    "gateway.retransmit_timeout": "IKE retransmission (RFC 7296 section 2.1): first wait in "
    "seconds, doubled each time.",
    "gateway.retransmit_tries": "Retransmissions before the peer counts as not answering.",
    "gateway.retry_interval": "An initiating peer that gave up connects again after this long.",
    "gateway.cookie_threshold": "From this many half-open IKE SAs on, IKE_SA_INIT requests must "
    "carry a COOKIE (RFC 7296 section 2.6); 0: always.",
    "gateway.half_open_per_source": "At most this many half-open IKE SAs per source address.",
    "gateway.half_open_limit": "At most this many half-open IKE SAs in all.",
    "gateway.fragment_size": "Largest IKE datagram sent to a peer that supports IKE "
    "fragmentation (RFC 7383); auto: 1280 towards IPv4 peers, 1232 towards IPv6 peers.",
    "gateway.offload": "TUN offloads (virtio-net header, TSO) and UDP GSO/GRO; false sends one "
    "packet per system call.",
    "gateway.user": "The account the daemon switches to once its devices and sockets exist, "
    "keeping only CAP_NET_ADMIN; default ipsecd where scripts/install.sh created it, else nobody; "
    "root keeps root.  Under systemd the unit already runs it as ipsecd.",
    "gateway.set_forwarding": "Turn IP forwarding on at start (net.ipv4.ip_forward; IPv6 "
    "forwarding too with IPv6 selectors) instead of only warning that it is off.  Under "
    "systemd's ProtectKernelTunables=yes /proc/sys is read-only: use /etc/sysctl.d/ instead.",
    "gateway.wakeup_interval_ms": "Wake the daemon this often (ms) even when idle, which keeps an "
    "idle tunnel's latency low on virtual machines; 0: never.",
    "peers": "The peers, at least one.",
    "peers.name": "Unique name, used by ipsecctl and in logs: letters, digits, _ . -",
    "peers.remote_address": "The peer's IP address (a literal, no DNS names).",
    "peers.remote_port": "The peer's IKE port.",
    "peers.local_address": "Our address towards this peer, one of gateway.listen; default: the "
    "first gateway.listen address of the peer's IP version.",
    "peers.start": "initiate (at once, and again after a failure), respond (wait for the peer) "
    "or trap (initiate on the first packet for remote_ts).",
    "peers.local_ts": "Traffic selectors: the prefixes behind this gateway.",
    "peers.remote_ts": "Traffic selectors: the prefixes behind the peer; routed into the TUN "
    "device.",
    "peers.fragmentation": "IKE fragmentation (RFC 7383): yes, accept (never send fragments) or "
    "no (do not announce support).",
    "peers.fragment_size": "Overrides gateway.fragment_size for this peer.",
    "peers.dpd_delay": "Dead peer detection (RFC 7296 section 2.4): probe after this long without "
    "traffic from the peer; 0: off.",
    "peers.dpd_action": "What follows a dead peer: restart, clear (stay down) or hold (initiate "
    "on the next packet).",
    "peers.ike": "IKE SA settings.",
    "peers.ike.proposals": "IKE proposals in strongSwan syntax, cipher[-integrity][-prf]-ke, "
    "e.g. aes256gcm16-prfsha256-x25519.",
    "peers.ike.rekey_time": "Rekey the IKE SA this long after it was established; 0: never.",
    "peers.ike.rand_time": "Rekey up to this much earlier, at random; default 10% of rekey_time.",
    "peers.esp": "CHILD SA (ESP) settings.",
    "peers.esp.proposals": "ESP proposals, cipher[-integrity][-ke][-esn|-noesn], e.g. aes256gcm16.",
    "peers.esp.rekey_time": "Rekey a CHILD SA after this long; 0: no time-based rekey.",
    "peers.esp.life_time": "Delete a CHILD SA after this long; default rekey_time * 1.1.",
    "peers.esp.rand_time": "Random jitter subtracted from rekey_time; default 10% of rekey_time.",
    "peers.esp.rekey_bytes": "Rekey after this many inner bytes in either direction; 0: off.",
    "peers.esp.rekey_packets": "Rekey after this many packets in either direction; 0: off.",
    "peers.auth": "IKE authentication with a pre-shared key; required unless manual is given.",
    "peers.auth.psk_file": "File holding the PSK, mode 0600 (e.g. in /etc/ipsecd/secrets/): "
    "0x... is hex, 0s... base64, anything else the key itself.",
    "peers.auth.allow_weak_psk": "Accept a PSK shorter than 16 bytes (labs only).",
    "peers.auth.local_id": "Our identity: an IP address, @fqdn, user@fqdn or @#hex key id; "
    "default local_address.",
    "peers.auth.remote_id": "The identity expected from the peer; default remote_address.",
    "peers.manual": "Static SAs without IKE (RFC 4301 section 4.5), for tests and labs only.",
    "peers.manual.algorithm": "One ESP transform set, e.g. aes128gcm16 or aes128-sha256.",
    "peers.manual.esn": "64-bit extended sequence numbers (RFC 4303 section 2.2.1).",
    "peers.manual.spi_in": "Our inbound SPI, 0x100..0xffffffff; the peer's spi_out.",
    "peers.manual.spi_out": "Our outbound SPI; the peer's spi_in.",
    "peers.manual.key_file": "YAML file (mode 0600) with the keys in: and out: as hex.",
}


# -- reading the parsers -------------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def capture_parser(main: Callable[[list[str]], Any]) -> argparse.ArgumentParser:
    """The parser a command's ``main()`` builds: stopped at its first ``parse_args`` call.

    Subparsers are parsed through ``parse_known_args``, so the first ``parse_args`` is
    the top-level parser's, after every subcommand and option has been added.
    """

    def stop(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop):
        try:
            main([])
        except _Captured as captured:
            return captured.parser
    raise RuntimeError(f"{main.__module__}.main() returned without parsing its arguments")


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    from ipsecd.cli import ipsecctl, ipsecd

    return {"ipsecd": capture_parser(ipsecd.main), "ipsecctl": capture_parser(ipsecctl.main)}


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of every subcommand, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The optional and positional arguments, without help and subcommand actions."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


# -- roff ----------------------------------------------------------------------------------------


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes escaped, dashes literal, no leading control dot."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    if out.startswith((".", "'")):
        out = "\\&" + out
    return out


def _bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _argument_synopsis(action: argparse.Action) -> str:
    if not action.option_strings:
        meta = action.metavar or action.dest
        name = _italic(str(meta).upper())
        return f"[{name}]" if action.nargs in ("?", "*") else name
    flag = _bold(
        action.option_strings[-1] if len(action.option_strings) > 1 else action.option_strings[0]
    )
    if action.nargs == 0:
        return f"[{flag}]"
    return f"[{flag} {_italic(str(action.metavar or action.dest).upper())}]"


def _describe(action: argparse.Action) -> str:
    parts = []
    if action.help and action.help != argparse.SUPPRESS:
        parts.append(_sentence(action.help.replace("%(prog)s", "").strip()))
    if action.choices:
        parts.append("One of: " + ", ".join(str(c) for c in action.choices) + ".")
    if action.nargs != 0 and action.default not in (None, False, argparse.SUPPRESS):
        parts.append(f"Default: {action.default}.")
    return roff(" ".join(parts) or "")


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _argument_items(actions: list[argparse.Action]) -> Iterator[str]:
    for action in actions:
        yield ".TP"
        if action.option_strings:
            names = ", ".join(_bold(o) for o in action.option_strings)
            if action.nargs != 0:
                names += " " + _italic(str(action.metavar or action.dest).upper())
        else:
            names = _italic(str(action.metavar or action.dest).upper())
        yield names
        yield _describe(action)


def command_page(name: str, parser: argparse.ArgumentParser, section: int = 8) -> str:
    """The man page of one command, from its parser."""
    lines = [
        f'.TH {name.upper()} {section} "" "ipsecd {version()}" "System Administration"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(parser.description or '')}",
        ".SH SYNOPSIS",
    ]
    top = [_argument_synopsis(a) for a in options(parser)]
    subs = subcommands(parser)
    for sub_name, _help, sub in subs:
        args = " ".join(top + [_bold(sub_name)] + [_argument_synopsis(a) for a in options(sub)])
        lines += [".PP", f"{_bold(name)} {args}"]
    if not subs:
        lines += [".PP", f"{_bold(name)} {' '.join(top)}"]
    lines += [".SH DESCRIPTION", roff(DESCRIPTIONS.get(name, parser.description or ""))]
    lines += [".SH OPTIONS", *_argument_items(options(parser))]
    lines += [".TP", _bold("-h") + ", " + _bold("--help"), "Show a summary of the usage and exit."]
    if subs:
        lines.append(".SH COMMANDS")
        for sub_name, help_text, sub in subs:
            lines += [".SS " + roff(sub_name), roff(_sentence(help_text))]
            lines += list(_argument_items(options(sub)))
    if parser.epilog:  # written for --help: keep its lines as they are
        lines += [".SH NOTES", ".nf", *(roff(line) for line in parser.epilog.splitlines()), ".fi"]
    lines += [".SH FILES", *FILES.get(name, [])]
    lines += [".SH SEE ALSO", roff(SEE_ALSO_COMMANDS.replace(f"{name}({section}), ", ""))]
    return "\n".join(lines) + "\n"


DESCRIPTIONS = {
    "ipsecd": "ipsecd is an IPsec gateway: it negotiates keys with IKEv2 (RFC 7296, pre-shared "
    "keys) and carries ESP in UDP (RFC 4303, RFC 3948) between a TUN device and a UDP socket, "
    "all in userspace.  The configuration is described in ipsecd.yaml(5).  Under systemd "
    "it runs as ipsecd.service, or ipsecd@INSTANCE.service for /etc/ipsecd/INSTANCE.yaml; "
    "SIGHUP reloads the configuration.",
    "ipsecctl": "ipsecctl talks to a running ipsecd over its control socket (JSON over a Unix "
    "socket, root only) to show status and to bring tunnels up, down or rekey them.  For an "
    "instance ipsecd@NAME.service the socket is the one its config names, normally "
    "/run/ipsecd/NAME/ipsecd.sock: give it with --socket.",
}

FILES = {
    "ipsecd": [
        ".TP",
        _bold("/etc/ipsecd/ipsecd.yaml"),
        "The configuration, see ipsecd.yaml(5).",
        ".TP",
        _bold("/etc/ipsecd/secrets/"),
        "Pre-shared key and manual key files (mode 0600).",
        ".TP",
        _bold("/run/ipsecd/ipsecd.sock"),
        "The control socket (the unit's RuntimeDirectory).",
    ],
    "ipsecctl": [".TP", _bold("/run/ipsecd/ipsecd.sock"), "The default control socket."],
}


# -- ipsecd.yaml(5) ------------------------------------------------------------------------------


def _nested_section(convert: Any, depth: int = 0) -> Any:
    """The ``Section`` a converter reads (``section(S)``, ``list_of(section(S))``), or None."""
    from ipsecd.config.fields import Section

    owner = getattr(convert, "__self__", None)
    if isinstance(owner, Section):
        return owner
    if depth > 3:
        return None
    for cell in getattr(convert, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:
            continue
        if callable(inner):
            found = _nested_section(inner, depth + 1)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class ConfigKey:
    path: str  # peers.esp.proposals
    default: str  # as the page shows it; "" for a section
    required: bool
    is_section: bool


def config_keys() -> list[ConfigKey]:
    """Every key of the config file, depth first, from the field tables."""
    from ipsecd.config.sections import TOP

    keys: list[ConfigKey] = []

    def walk(section: Any, prefix: str) -> None:
        for field in section.fields:
            path = f"{prefix}{field.key}"
            nested = _nested_section(field.convert)
            keys.append(
                ConfigKey(path, _show_default(field.default), field.required, nested is not None)
            )
            if nested is not None:
                walk(nested, path + ".")

    walk(TOP, "")
    return keys


def _show_default(value: Any) -> str:
    from ipsecd.config.fields import REQUIRED

    if value is REQUIRED:
        return "required"
    if value is None:
        return "none (auto where the description says so)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def config_page() -> str:
    lines = [
        f'.TH IPSECD.YAML 5 "" "ipsecd {version()}" "File Formats"',
        ".SH NAME",
        "ipsecd.yaml \\- configuration file of ipsecd(8)",
        ".SH SYNOPSIS",
        _bold("/etc/ipsecd/ipsecd.yaml")
        + ", "
        + _bold("/etc/ipsecd/")
        + _italic("INSTANCE")
        + _bold(".yaml"),
        ".SH DESCRIPTION",
        roff(
            "One YAML file describes the gateway and its peers.  Unknown keys are errors; every "
            "error names the file, the line and the key.  Check a file with "
            "'ipsecd check FILE'.  Secrets never go into this file: psk_file and key_file name "
            "files of mode 0600 (relative paths are relative to this file's directory).  "
            "Durations are 30s, 5m, 1h, 1d, 1h30m or plain seconds.  IP forwarding must be on "
            "(net.ipv4.ip_forward=1) for traffic between the sites, and UDP ports ike_port and "
            "port must be open."
        ),
    ]
    current_top = None
    for key in config_keys():
        top = key.path.split(".")[0]
        if top != current_top:
            current_top = top
            lines.append(".SH " + roff(top.upper()))
        lines.append(".TP")
        label = _bold(key.path)
        if not key.is_section or key.required:
            label += " (" + roff(key.default if key.required else "default: " + key.default) + ")"
        lines.append(label)
        lines.append(roff(CONFIG_DOCS.get(key.path, "")))
    lines += [
        ".SH EXAMPLE",
        roff(
            "The reference file with every key: /usr/local/share/doc/ipsecd/examples/ipsecd.yaml."
        ),
        ".SH SEE ALSO",
        roff("ipsecd(8), ipsecctl(8), swanctl.conf(5)"),
    ]
    return "\n".join(lines) + "\n"


# -- all pages -----------------------------------------------------------------------------------


def pages() -> dict[str, str]:
    """File name (``man8/ipsecd.8``) → page text."""
    parsers = command_parsers()
    return {
        "man8/ipsecd.8": command_page("ipsecd", parsers["ipsecd"]),
        "man8/ipsecctl.8": command_page("ipsecctl", parsers["ipsecctl"]),
        "man5/ipsecd.yaml.5": config_page(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipsecd.cli.manpages", description="write ipsecd's man pages"
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--output", type=Path, help="man directory, e.g. /usr/local/share/man")
    group.add_argument("--show", help="print one page: ipsecd.8, ipsecctl.8 or ipsecd.yaml.5")
    args = parser.parse_args(argv)
    all_pages = pages()
    if args.show:
        for name, text in all_pages.items():
            if name.endswith("/" + args.show):
                sys.stdout.write(text)
                return 0
        print(f"no page {args.show}; pages: {', '.join(all_pages)}", file=sys.stderr)
        return 2
    for name, text in all_pages.items():
        path = args.output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
