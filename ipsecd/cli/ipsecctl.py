"""``ipsecctl``: talk to a running ipsecd over its control socket and format the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ipsecd.cli.version import version_line
from ipsecd.daemon.control import ControlReplyError, request

DEFAULT_SOCKET = "/run/ipsecd/ipsecd.sock"

# Exit codes (documented in ipsecctl --help and the README).
EXIT_OK = 0
EXIT_FAILED = 1  # the daemon answered: the command failed (its error is printed)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_UNREACHABLE = 3  # no daemon: no socket, connection refused, timeout
EXIT_PERMISSION = 4  # the control socket is not ours to use (not root)
EXIT_BAD_REPLY = 5  # empty, non-JSON or wrongly shaped reply
EXIT_BROKEN_PIPE = 141  # stdout closed early (128 + SIGPIPE, what a shell reports)
EPILOG = """exit status: 0 done; 1 the daemon refused or the command failed; 2 bad usage;
3 ipsecd not reachable (not running, stale socket, timeout); 4 permission denied on the
control socket; 5 a reply ipsecctl does not understand; 141 output pipe closed early."""


class Style:
    """ANSI colours, only when writing to a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.tty else text

    def bold(self, t: str) -> str:
        return self._c("1", t)

    def good(self, t: str) -> str:
        return self._c("32", t)

    def bad(self, t: str) -> str:
        return self._c("31", t)

    def dim(self, t: str) -> str:
        return self._c("2", t)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rows(pairs: list[tuple[str, str]], indent: str) -> list[str]:
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{indent}{k + ':':<{width + 1}} {v}" for k, v in pairs]


def format_dos(dos: dict[str, Any], counters: dict[str, Any], style: Style) -> str:
    """The responder's DoS protection in one line: half-open SAs, cookies, drops."""
    cookies = style.bad("on") if dos.get("cookies_required") else "off"
    text = (
        f"ike responder: {dos.get('half_open', 0)} half-open"
        f" (at most {dos.get('half_open_per_source')} per source,"
        f" {dos.get('half_open_limit')} in all), cookies {cookies}"
        f" (from {dos.get('cookie_threshold')} half-open)"
    )
    shown = [
        ("cookies_sent", "cookies sent"),
        ("cookies_invalid", "invalid cookies"),
        ("half_open_dropped", "dropped over the limit"),
        ("half_open_source_dropped", "dropped per source"),
        ("init_replays", "replays dropped"),
    ]
    extra = [f"{label} {counters[key]}" for key, label in shown if counters.get(key)]
    return text + ("; " + ", ".join(extra) if extra else "")


def format_status(status: dict[str, Any], style: Style) -> str:
    lines = [
        f"{style.bold('ipsecd')}  tun {status['tun']} (mtu {status['mtu']}), "
        f"listening on {', '.join(status['listen'])}, up {status['uptime_seconds']:.0f}s"
    ]
    if status.get("ike_dos"):
        lines.append(format_dos(status["ike_dos"], status.get("ike_counters") or {}, style))
    for peer in status["peers"]:
        state = peer["state"]
        shown = style.good(state) if peer["up"] else style.bad(state)
        lines.append("")
        lines.append(
            f"{style.bold('peer ' + peer['name'])}: {shown}  {peer['local']} <-> {peer['remote']}"
        )
        pairs = [("selectors", f"{peer['local_ts']} === {peer['remote_ts']}")]
        ike = peer.get("ike") or {}
        if ike.get("local_spi"):
            pairs.append(
                (
                    "ike sa",
                    f"{ike['local_spi']}_local {ike.get('remote_spi', '')}_remote"
                    f"  {ike.get('algorithm', '')}  {ike.get('role', '')}"
                    f"  {ike.get('local', '')} <-> {ike.get('remote', '')}"
                    + (
                        f"  rekey in {ike['rekey_in_seconds']:.0f}s"
                        if ike.get("rekey_in_seconds") is not None
                        else ""
                    ),
                )
            )
            auth = ike.get("auth")
            if auth:  # how each side authenticated (PSK or certificate), RFC 8784 PPK
                peer_cert = auth.get("remote_certificate")
                pairs.append(
                    (
                        "auth",
                        f"{auth['local']} as {auth['local_id']}; peer {auth['remote']} as"
                        f" {auth['remote_id']}"
                        + (f" (certificate {peer_cert})" if peer_cert else "")
                        + ("; PPK" if auth.get("ppk") else ""),
                    )
                )
            if ike.get("dpd") and ike.get("last_seen_seconds") is not None:
                pairs.append(
                    (
                        "dpd",
                        f"{ike['dpd']}, peer last heard {ike['last_seen_seconds']:.0f}s ago"
                        + (
                            f" (liveness check after {ike['dpd_delay']}s of silence)"
                            if ike.get("dpd_delay")
                            else ""
                        ),
                    )
                )
            if ike.get("nat_local"):
                pairs.append(("nat", "we are behind a NAT (sending keepalives)"))
            elif ike.get("nat_remote"):
                pairs.append(("nat", "peer behind a NAT or forcing UDP encapsulation"))
        on_demand = peer.get("on_demand")
        if on_demand:
            words = {
                "idle": "waiting for traffic to remote_ts",
                "negotiating": f"negotiating, {on_demand.get('queued', 0)} packets queued",
                "up": "started by traffic",
            }
            pairs.append(("on demand", words.get(on_demand["state"], on_demand["state"])))
        if peer.get("last_error"):
            pairs.append(("last error", style.bad(peer["last_error"])))
        lines += _rows(pairs, "  ")
        for child in peer["children"]:
            lines.append(
                f"  child {child['spi_in']}_in {child['spi_out']}_out  {child['algorithm']}  "
                f"established {child['established_seconds']:.0f}s ago"
                + (
                    f", rekey in {child['rekey_in_seconds']:.0f}s"
                    if child.get("rekey_in_seconds") is not None
                    else ""
                )
            )
            cpairs = [
                ("in", f"{_size(child['bytes_in'])}, {child['packets_in']} packets"),
                ("out", f"{_size(child['bytes_out'])}, {child['packets_out']} packets"),
                ("selectors", f"{child['local_ts']} === {child['remote_ts']}"),
            ]
            if child["drops"]:
                cpairs.append(("drops", ", ".join(f"{k} {v}" for k, v in child["drops"].items())))
            lines += _rows(cpairs, "    ")
    if status.get("drops"):
        lines.append("")
        lines.append("drops: " + ", ".join(f"{k} {v}" for k, v in status["drops"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ipsecctl",
        description="control a running ipsecd",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--socket", "-s", default=DEFAULT_SOCKET, help="control socket path")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="show peers, SAs, counters")
    st.add_argument("--json", action="store_true")
    for name in ("up", "down", "rekey"):
        p = sub.add_parser(name, help=f"{name} the tunnel to PEER")
        p.add_argument("peer")
        if name == "rekey":
            p.add_argument("--ike", action="store_true", help="rekey the IKE SA, not the CHILD_SAs")
    sub.add_parser("reload", help="re-read the config file")
    lv = sub.add_parser("log-level", help="change the log level")
    lv.add_argument("level", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    payload: dict[str, Any] = {"cmd": args.command}
    if args.command in ("up", "down", "rekey"):
        payload["peer"] = args.peer
    if args.command == "rekey" and args.ike:
        payload["ike"] = True
    if args.command == "log-level":
        payload["level"] = args.level
    try:
        code = _run(args, payload)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        # `ipsecctl status | head -1`: the reader has what it wanted.  Quiet, like every
        # Unix tool killed by SIGPIPE; stdout is pointed at /dev/null so that Python's
        # own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _fail(code: int, message: str) -> int:
    print(f"ipsecctl: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    try:
        response = request(args.socket, payload)
    except PermissionError:
        return _fail(
            EXIT_PERMISSION,
            f"permission denied on {args.socket}: the control socket is root's (run as root)",
        )
    except FileNotFoundError:
        return _fail(
            EXIT_UNREACHABLE, f"cannot reach ipsecd at {args.socket}: no such socket (not running?)"
        )
    except ConnectionRefusedError:
        return _fail(
            EXIT_UNREACHABLE,
            f"cannot reach ipsecd at {args.socket}: connection refused"
            " (a stale socket: not running?)",
        )
    except TimeoutError:
        return _fail(EXIT_UNREACHABLE, f"ipsecd at {args.socket} did not answer in time")
    except OSError as exc:
        return _fail(
            EXIT_UNREACHABLE, f"cannot reach ipsecd at {args.socket}: {exc.strerror or exc}"
        )
    except ControlReplyError as exc:
        return _fail(EXIT_BAD_REPLY, f"bad reply from ipsecd at {args.socket}: {exc}")
    if not isinstance(response.get("ok"), bool):
        return _fail(EXIT_BAD_REPLY, f"bad reply from ipsecd at {args.socket}: no 'ok' field")
    if not response["ok"]:
        error = response.get("error", "failed")
        return _fail(EXIT_FAILED, " ".join(str(error).splitlines()) or "failed")
    if args.command == "status":
        status = response.get("status")
        if not isinstance(status, dict):
            return _fail(EXIT_BAD_REPLY, "bad reply from ipsecd: no status object")
        if args.json:
            print(json.dumps(status, indent=2))
            return EXIT_OK
        try:
            text = format_status(status, Style(sys.stdout.isatty()))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else type(exc).__name__
            return _fail(EXIT_BAD_REPLY, f"bad reply from ipsecd: status not understood ({what})")
        print(text)
    elif "plan" in response:
        print(json.dumps(response["plan"], indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
