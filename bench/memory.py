"""Where an idle ipsecd's memory goes, with 1/100/1000 configured peers (root only).

Issue 17's measure, broken down: one daemon per measurement in a namespace of its own
(``mem<pid>``, or ``--netns-prefix``'s, a veth as uplink), every peer a responder
(``bench.scale``'s config).
Start-up: from spawning ``python -m ipsecd.cli.ipsecd run`` to the first answer on its
control socket; 2 s later RSS, its anonymous part, the ``[heap]`` (glibc malloc) and
the other anonymous mappings (mostly pymalloc's 1 MiB arenas) from ``/proc/PID/smaps``;
then the median of 5 ``status`` requests.  With ``--reload``, RSS again 2 s after an
``ipsecctl reload`` of the same file (the config parsed a second time, at run time).
With ``--modules`` the daemons run with ``python -X importtime``: the imports each one had
made when RSS was read, by top-level package (the last round's, from its log; optional
imports that failed, ``nt`` or ``msvcrt`` say, count too).

``--repo`` takes several source trees (say, main's and a branch's): rounds interleave
the trees and the sizes, and the table gives the median and range per tree.  Figures
are printed, never asserted::

    sudo python3 bench/memory.py --rounds 3 --repo /work/main .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import (  # noqa: E402
    PSK,
    loadavg,
    responder_config,
    status_ms,
    stop_daemon,
    wait_for_control,
    wire_wan,
)
from ipsecd.cli.sites import add_namespace, delete_namespace, netns_cmd  # noqa: E402
from ipsecd.daemon.control import request  # noqa: E402


def mappings(pid: int) -> dict[str, int]:
    """Resident kB of process ``pid`` by mapping name (``[anon]`` for unnamed ones)."""
    found: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode [name]
            name = fields[5] if len(fields) > 5 else "[anon]"
        elif fields[0] == "Rss:":
            found[name] = found.get(name, 0) + int(fields[1])
    return found


def rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in kB: Rss, Pss, Anonymous."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split()[:2]
        out[key.rstrip(":")] = int(value)
    return out


def imported(log: Path) -> dict[str, int]:
    """Modules by top-level package, from ``-X importtime`` lines in a daemon's log."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            top = line.rsplit("|", 1)[1].strip().split(".")[0]
            found[top] = found.get(top, 0) + 1
    return found


def measure(
    repo: Path,
    n: int,
    workdir: Path,
    reload: bool,
    prefix: str = "mem",
    modules: bool = False,
    service_account: bool = False,
) -> dict[str, Any]:
    """One daemon of source tree ``repo`` with ``n`` peers: start-up, memory, status;
    ``service_account``: without the config's ``user: root``, as a default install runs
    (the daemon drops to the service account after importing what it may need)."""
    ns = f"{prefix}{os.getpid() % 100000}"
    add_namespace(ns)
    proc = None
    try:
        wire_wan(ns)
        config = workdir / f"idle-{n}.yaml"
        text = responder_config(n, workdir, ["192.0.2.2"], any_peer=False)
        if service_account:
            text = text.replace("  user: root\n", "")
        config.write_text(text)
        log = workdir / f"idle-{n}.log"
        before = loadavg()
        python = [sys.executable, *(["-X", "importtime"] if modules else [])]
        cmd = [*python, "-m", "ipsecd.cli.ipsecd", "run", "--config", str(config)]
        env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
        t0 = time.monotonic()
        with open(log, "wb") as fh:
            # cwd: ``-m`` puts it ahead of PYTHONPATH, so it must be the tree measured.
            proc = subprocess.Popen(
                netns_cmd(ns, cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=repo
            )
        sock = workdir / "ctl.sock"
        wait_for_control(sock, proc, log)
        start_s = time.monotonic() - t0
        time.sleep(2)
        mem, maps = rollup(proc.pid), mappings(proc.pid)
        status = status_ms(sock)
        result: dict[str, Any] = {
            "peers": n,
            "start_s": start_s,
            "rss_mb": mem["Rss"] / 1024,
            "anon_mb": mem["Anonymous"] / 1024,
            "heap_mb": maps.get("[heap]", 0) / 1024,
            "arenas_mb": maps.get("[anon]", 0) / 1024,
            "status_ms": status,
            "top": sorted(maps.items(), key=lambda kv: -kv[1])[:12],
        }
        if modules:
            result["modules"] = imported(log)
        if reload:
            answer = request(sock, {"cmd": "reload"}, timeout=300)
            assert answer.get("ok"), answer
            time.sleep(2)
            result["reload_rss_mb"] = rollup(proc.pid)["Rss"] / 1024
        result["load"] = [before, loadavg()]
        return result
    finally:
        if proc is not None:
            stop_daemon(proc)
        delete_namespace(ns)


def _fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


COLUMNS = (
    ("start_s", "start-up s", 2),
    ("rss_mb", "RSS MB", 1),
    ("anon_mb", "anonymous MB", 1),
    ("arenas_mb", "anon maps MB", 1),
    ("heap_mb", "[heap] MB", 1),
    ("status_ms", "status ms", 1),
    ("reload_rss_mb", "RSS after reload", 1),
)


def table(results: dict[tuple[str, int], list[dict[str, Any]]]) -> str:
    columns = [c for c in COLUMNS if any(c[0] in r for rs in results.values() for r in rs)]
    lines = [f"{'tree':>12} {'peers':>6}" + "".join(f" {title:>20}" for _, title, _ in columns)]
    for (tree, n), rs in results.items():
        cells = "".join(
            f" {_fmt([r[key] for r in rs if key in r], d):>20}" for key, _, d in columns
        )
        lines.append(f"{tree[-12:]:>12} {n:>6}{cells}")
    return "\n".join(lines)


def run(
    repos: list[Path],
    peers: list[int],
    rounds: int,
    reload: bool,
    prefix: str = "mem",
    modules: bool = False,
    service_account: bool = False,
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every (tree, peers) measured once per round, interleaved: the results by both."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {
        (str(r), n): [] for r in repos for n in peers
    }
    with tempfile.TemporaryDirectory(prefix="ipsecd-memory-") as tmp:
        work = Path(tmp)
        (work / "psk").write_text(PSK + "\n")
        (work / "psk").chmod(0o600)
        for r in range(rounds):
            for n in peers:
                for repo in repos:
                    print(f"round {r + 1}: {repo}, {n} peers", file=sys.stderr)
                    results[(str(repo), n)].append(
                        measure(repo, n, work, reload, prefix, modules, service_account)
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repo", type=Path, nargs="+", default=[REPO], help="source trees to run")
    ap.add_argument("--reload", action="store_true", help="also RSS after a reload")
    ap.add_argument("--mappings", action="store_true", help="the largest mappings, last round")
    ap.add_argument("--modules", action="store_true", help="imported modules, last round")
    ap.add_argument("--netns-prefix", default="mem", help="namespace names: PREFIX<pid>")
    ap.add_argument(
        "--service-account",
        action="store_true",
        help="run the daemons as a default install does (no 'user: root')",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/memory.py: root only", file=sys.stderr)
        return 2
    results = run(
        [r.resolve() for r in args.repo],
        args.peers,
        args.rounds,
        args.reload,
        args.netns_prefix,
        args.modules,
        args.service_account,
    )
    print(table(results))
    loads = [x for rs in results.values() for r in rs for x in r["load"]]
    print(
        f"\nmedian (range) of {args.rounds} interleaved rounds; load average (1 min) "
        f"{min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    if args.mappings:
        for (tree, n), rs in results.items():
            print(f"\n{tree}, {n} peers: resident kB by mapping (last round)")
            for name, kb in rs[-1]["top"]:
                print(f"  {kb:8d}  {name}")
    if args.modules:
        for (tree, n), rs in results.items():
            found = rs[-1]["modules"]
            top = sorted(found.items(), key=lambda kv: -kv[1])
            print(f"\n{tree}, {n} peers: {sum(found.values())} imports (last round)")
            print("  " + ", ".join(f"{name} {count}" for name, count in top if count > 1))
            print(f"  and {sum(1 for _, count in top if count == 1)} single modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
