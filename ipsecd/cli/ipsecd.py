"""``ipsecd``: run the daemon, check a config file, or run the demo."""

from __future__ import annotations

import argparse
import sys

from ipsecd.cli.version import version_line

DEFAULT_CONFIG = "/etc/ipsecd/ipsecd.yaml"


def _check(path: str) -> int:
    from ipsecd.config import load_config
    from ipsecd.config.errors import ConfigError

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for peer in config.peers:
        kind = "manual SAs" if peer.manual is not None else f"IKEv2, start={peer.start}"
        print(f"peer {peer.name}: {peer.local_address} -> {peer.remote_address} ({kind})")
    print(f"{path}: OK, {len(config.peers)} peer(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsecd", description="userspace IPsec VPN daemon")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    check = sub.add_parser("check", help="validate a config file without running")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    demo = sub.add_parser("demo", help="build two sites in namespaces and run a tunnel (root)")
    demo.add_argument("--keep", action="store_true", help="leave the demo running until Ctrl-C")
    pki = sub.add_parser("pki", help="a small CA: ca, issue, show, crl", add_help=False)
    pki.add_argument("-h", "--help", action="store_true", dest="pki_help")
    pki.add_argument("pki_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "pki":
        from ipsecd.cli.pki import main as pki_main

        return pki_main(["--help"] * args.pki_help + args.pki_args)
    if args.command == "check":
        return _check(args.config)
    if args.command == "demo":
        from ipsecd.cli.demo import run_demo

        return run_demo(keep=args.keep)
    from ipsecd.config.errors import ConfigError
    from ipsecd.daemon.app import run_daemon

    try:
        return run_daemon(args.config)
    except ConfigError as exc:
        print(f"ipsecd: refusing to start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
