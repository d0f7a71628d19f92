"""``ipsecctl``: talk to a running ipsecd over its control socket and format the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ipsecd.cli.control_text import format_outcome, format_plan, format_record
from ipsecd.cli.status_text import Style, format_conns, format_status
from ipsecd.cli.version import version_line
from ipsecd.daemon.control import ControlReplyError, follow, request

DEFAULT_SOCKET = "/run/ipsecd/ipsecd.sock"

# Exit codes (documented in ipsecctl --help and the README).
EXIT_OK = 0
EXIT_FAILED = 1  # the daemon answered: the command failed (its error is printed)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_UNREACHABLE = 3  # no daemon: no socket, connection refused, timeout
EXIT_PERMISSION = 4  # the control socket is not ours to use (not root)
EXIT_BAD_REPLY = 5  # empty, non-JSON or wrongly shaped reply
EXIT_TIMEOUT = 6  # up/down/rekey: no outcome within --timeout (ipsecd goes on)
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting for an outcome (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # stdout closed early (128 + SIGPIPE, what a shell reports)
DEFAULT_TIMEOUT = 30.0  # seconds up/down/rekey wait for their outcome
MAX_TIMEOUT = 3600.0
REPLY_MARGIN = 5.0  # the socket waits this much longer than the daemon may take
EPILOG = """exit status: 0 done; 1 the daemon refused or the command failed (up, down and rekey
wait for the outcome and print it); 2 bad usage; 3 ipsecd not reachable (not running,
stale socket, timeout); 4 permission denied on the control socket; 5 a reply ipsecctl
does not understand; 6 up, down or rekey saw no outcome within --timeout (ipsecd goes
on trying); 130 interrupted while waiting (ipsecctl log ends with 0 on Ctrl-C); 141
output pipe closed early."""
PEER_COMMANDS = ("up", "down", "rekey")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text} is not from 0 to {MAX_TIMEOUT:g} seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
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
    st.add_argument(
        "--json", action="store_true", help="the JSON document (docs/status.schema.json)"
    )
    cn = sub.add_parser("conns", help="show the configured peers and their proposals")
    cn.add_argument("--json", action="store_true", help="the configured peers as JSON")
    for name in PEER_COMMANDS:
        p = sub.add_parser(name, help=f"{name} the tunnel to PEER and print the outcome")
        p.add_argument("peer")
        if name == "rekey":
            p.add_argument("--ike", action="store_true", help="rekey the IKE SA, not the CHILD_SAs")
        p.add_argument(
            "--timeout",
            type=_timeout,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"wait at most this long for the outcome (default {DEFAULT_TIMEOUT:g}; exit 6)",
        )
        p.add_argument(
            "--no-wait",
            action="store_true",
            help="return once ipsecd has the request, without waiting for the outcome",
        )
    rl = sub.add_parser("reload", help="re-read the config file and print what changed")
    rl.add_argument("--json", action="store_true", help="print the plan as JSON")
    lg = sub.add_parser("log", help="follow the daemon's log live (Ctrl-C ends)")
    lg.add_argument(
        "--level",
        choices=["debug", "info", "warning", "error"],
        help="show records at this level and above (default: the daemon's level)",
    )
    lg.add_argument("--json", action="store_true", help="one JSON object per record")
    lv = sub.add_parser("log-level", help="change the log level")
    lv.add_argument("level", choices=["debug", "info", "warning", "error"])
    return parser


def request_for(args: argparse.Namespace) -> dict[str, Any]:
    """The control request for a parsed command line."""
    payload: dict[str, Any] = {"cmd": args.command}
    if args.command in PEER_COMMANDS:
        payload["peer"] = args.peer
        if not args.no_wait:
            payload["wait"] = args.timeout
    if args.command == "rekey" and args.ike:
        payload["ike"] = True
    if args.command in ("log-level", "log") and args.level:
        payload["level"] = args.level
    return payload


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(args, request_for(args))
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        # `ipsecctl status | head -1`: the reader has what it wanted.  Quiet, like every
        # Unix tool killed by SIGPIPE; stdout is pointed at /dev/null so that Python's
        # own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if args.command == "log":
            return EXIT_OK  # the way to stop following
        return _fail(EXIT_INTERRUPTED, "interrupted; the command goes on in ipsecd")


def _fail(code: int, message: str) -> int:
    print(f"ipsecctl: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    try:
        if args.command == "log":
            return _follow_log(args, payload)
        wait = payload.get("wait")
        if wait is None:
            response = request(args.socket, payload)
        else:  # the daemon answers within ``wait``; the socket waits a little longer
            response = request(args.socket, payload, timeout=wait + REPLY_MARGIN)
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
    if args.command in PEER_COMMANDS and "outcome" in response:
        return _print_outcome(response)
    if not response["ok"]:
        error = str(response.get("error", "failed"))
        if args.command == "reload":  # a refused file: one problem per line, each FILE:LINE
            return _fail(EXIT_FAILED, "\n  ".join(error.splitlines()) or "failed")
        return _fail(EXIT_FAILED, " ".join(error.splitlines()) or "failed")
    if args.command in ("status", "conns"):
        doc = response.get(args.command)
        if not isinstance(doc, dict):
            return _fail(EXIT_BAD_REPLY, f"bad reply from ipsecd: no {args.command} object")
        if args.json:
            print(json.dumps(doc, indent=2))
            return EXIT_OK
        formatter = format_status if args.command == "status" else format_conns
        try:
            text = formatter(doc, Style(sys.stdout.isatty()))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else type(exc).__name__
            return _fail(
                EXIT_BAD_REPLY, f"bad reply from ipsecd: {args.command} not understood ({what})"
            )
        print(text)
    elif "plan" in response:
        if args.json:
            print(json.dumps(response["plan"], indent=2))
        else:
            print("\n".join(format_plan(response)))
    return EXIT_OK


def _print_outcome(response: dict[str, Any]) -> int:
    """A settled up/down/rekey: the SA summary on stdout, or the error on stderr."""
    line = " ".join(format_outcome(response).splitlines())
    if response.get("ok"):
        print(line)
        return EXIT_OK
    code = EXIT_TIMEOUT if response.get("outcome") == "timeout" else EXIT_FAILED
    return _fail(code, line)


def _follow_log(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """``ipsecctl log``: print records until Ctrl-C, a closed pipe or the daemon's end."""
    stream = follow(args.socket, payload)
    first = next(stream, None)
    if first is None:
        raise ControlReplyError("empty reply (the daemon closed the connection)")
    if not first.get("ok"):
        return _fail(EXIT_FAILED, " ".join(str(first.get("error", "failed")).splitlines()))
    for message in stream:
        if "log" in message and isinstance(message["log"], dict):
            record = message["log"]
            print(json.dumps(record) if args.json else format_record(record), flush=True)
        elif "dropped" in message:
            print(
                f"ipsecctl: {message['dropped']} log records dropped (this reader fell behind)",
                file=sys.stderr,
            )
        elif "end" in message:
            print(f"ipsecctl: {message['end']}; end of the log", file=sys.stderr)
            return EXIT_OK
    return _fail(EXIT_UNREACHABLE, f"ipsecd at {args.socket} closed the log stream")


if __name__ == "__main__":
    sys.exit(main())
