"""``ipsecd``: run the daemon, check a config file, or run the demo."""

from __future__ import annotations

import argparse
import sys

from ipsecd.cli.version import VersionAction

DEFAULT_CONFIG = "/etc/ipsecd/ipsecd.yaml"


def _check_one(path: str, show: bool) -> bool:
    """Validate one file: every error on stderr, else its warnings on stderr and a summary
    (or, with ``show``, the effective config as YAML) on stdout.  True if the file is valid:
    warnings (ipsecd.config.warnings, ipsecd.daemon.preflight) do not count against it."""
    from ipsecd.config import load_config
    from ipsecd.config.effective import effective_yaml
    from ipsecd.config.errors import ConfigError
    from ipsecd.daemon.preflight import preflight

    try:
        config = load_config(path)
    except ConfigError as exc:
        for error in exc.all:
            print(f"error: {error}", file=sys.stderr)
        count = len(exc.all)
        print(f"{path}: {count} error{'s' if count > 1 else ''}", file=sys.stderr)
        return False
    findings = preflight(config)  # warnings do not fail the check: they go to stderr
    for finding in findings:
        print(
            f"{'warning' if finding.level == 'warning' else 'note'}: {finding.message}",
            file=sys.stderr,
        )
    if show:
        print(f"# {path}: the effective configuration (defaults filled in, no secrets)")
        print(effective_yaml(config), end="")
        return True
    for peer in config.peers:
        kind = "manual SAs" if peer.manual is not None else f"IKEv2, start={peer.start}"
        if len(peer.children) > 1:
            kind += ", children " + ", ".join(f"{c.name} ({c.start})" for c in peer.children)
        print(f"peer {peer.name}: {peer.local_address} -> {peer.remote_host} ({kind})")
    warnings = sum(f.level == "warning" for f in findings)
    also = f", {warnings} warning{'s' if warnings > 1 else ''}" if warnings else ""
    print(f"{path}: OK, {len(config.peers)} peer(s){also}")
    return True


def _check(paths: list[str], show: bool) -> int:
    """``ipsecd check``: exit 0 if every file is valid, 1 if any is not."""
    ok = True
    for n, path in enumerate(paths):
        if show and n:
            print("---")
        ok = _check_one(path, show) and ok
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsecd", description="userspace IPsec VPN daemon")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    check = sub.add_parser(
        "check",
        help="validate config files without running",
        description="Report every error found in each FILE (default %(default)s), and"
        " warnings about what would break traffic on this machine (TUN addresses and"
        " selectors against its connected networks, IP forwarding)."
        " Exit status: 0 all files valid (warnings or not), 1 an error in at least one,"
        " 2 bad usage.",
    )
    check.add_argument("config", nargs="*", metavar="FILE", default=[DEFAULT_CONFIG])
    check.add_argument(
        "--print",
        dest="show",
        action="store_true",
        help="print the effective configuration (every default filled in, secrets left out)",
    )
    demo = sub.add_parser("demo", help="build two sites in namespaces and run a tunnel (root)")
    demo.add_argument("--keep", action="store_true", help="leave the demo running until Ctrl-C")
    demo.add_argument(
        "--auth",
        choices=("psk", "cert"),
        default="psk",
        help="authenticate with a pre-shared key (default) or certificates of a demo CA",
    )
    demo.add_argument(
        "--pq",
        action="store_true",
        help="hybrid post-quantum key exchange: x25519 + ML-KEM-768 (RFC 9370)",
    )
    pki = sub.add_parser("pki", help="a small CA: ca, issue, show, crl", add_help=False)
    pki.add_argument("-h", "--help", action="store_true", dest="pki_help")
    pki.add_argument("pki_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "pki":
        from ipsecd.cli.pki import main as pki_main

        return pki_main(["--help"] * args.pki_help + args.pki_args)
    if args.command == "check":
        return _check(args.config, args.show)
    if args.command == "demo":
        from ipsecd.cli.demo import run_demo

        return run_demo(keep=args.keep, auth=args.auth, pq=args.pq)
    from ipsecd.config.errors import ConfigError
    from ipsecd.daemon.start import run_daemon

    try:
        return run_daemon(args.config)
    except ConfigError as exc:
        for error in exc.all:  # every problem of the file, one line each
            print(f"ipsecd: refusing to start: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
