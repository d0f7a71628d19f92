"""The long fuzz run: every target for at least a million inputs, one at a time, one core.

    PYTHONPATH=$PWD python -m tests.fuzz.run_long [--runs 1000000] [--targets esp,config]
                                                  [--work /tmp/ipsecd-fuzz] [--json out.json]

Each target runs in its own process (``tests.fuzz.harness``) starting from its seed
corpus; new inputs go to a scratch directory under ``--work``, never into the repo.
For every target it records inputs executed, inputs/s, coverage (libFuzzer ``cov``
= instrumented Python branches hit, ``ft`` = features) at start and end, peak RSS
right after the seed corpus ran, after 10 % of the inputs and at the end (libFuzzer
reports the process's peak RSS, so flat figures mean no growth), and any crash
(the exception, and the input libFuzzer saved).  Prints a Markdown table for
tests/fuzz/README.md and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+).*?rss: (\d+)Mb")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


def run_target(name: str, runs: int, max_time: int, work: Path) -> dict[str, object]:
    scratch = work / name
    artifacts = work / f"crashes-{name}"
    scratch.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.harness",
        name,
        f"-runs={runs}",
        f"-max_total_time={max_time}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        "-print_pcs=0",
        f"-artifact_prefix={artifacts}/",
        str(scratch),
        str(HERE / "corpus" / name),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), IPSECD_FUZZ_TMP=str(work))
    started = time.monotonic()
    with log_path.open("w") as log:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - started
    result: dict[str, object] = {"target": name, "exit_code": rc, "wall_s": round(wall, 1)}
    stats: dict[str, int] = {}
    rss_10pct: int | None = None
    exception: list[str] = []
    in_exception = False
    for line in log_path.read_text(errors="replace").splitlines():
        if m := STATUS.match(line):
            n, kind, cov, ft, rss = int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])
            if kind == "INITED":
                result.update(cov_start=cov, ft_start=ft, rss_start_mb=rss)
            if rss_10pct is None and n >= runs // 10:
                rss_10pct = rss
            result.update(inputs=n, cov_end=cov, ft_end=ft, rss_end_mb=rss)
        elif m := STAT.match(line):
            stats[m[1]] = int(m[2])
        elif "Uncaught Python exception" in line:
            in_exception = True
        elif in_exception and line.strip():
            exception.append(line)
            in_exception = len(exception) < 2
    if "number_of_executed_units" in stats:
        result["inputs"] = stats["number_of_executed_units"]
    inputs = result.get("inputs")
    result["inputs_per_s"] = round(inputs / wall) if isinstance(inputs, int) and wall else None
    result["rss_10pct_mb"] = rss_10pct
    if "peak_rss_mb" in stats:
        result["rss_end_mb"] = stats["peak_rss_mb"]
    result["finding"] = " / ".join(exception) if exception else None
    result["crash_files"] = sorted(p.name for p in artifacts.iterdir())
    result["log"] = str(log_path)
    return result


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def table(results: list[dict[str, object]]) -> str:
    rows = [
        "| target | inputs | wall s | inputs/s | cov start → end | ft start → end |"
        " peak RSS MB: start / 10 % / end | findings |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in results:
        finding = str(r["finding"] or "none")
        rows.append(
            f"| {r['target']} | {r.get('inputs')} | {r.get('wall_s')} | {r.get('inputs_per_s')} |"
            f" {r.get('cov_start')} → {r.get('cov_end')} |"
            f" {r.get('ft_start')} → {r.get('ft_end')} |"
            f" {r.get('rss_start_mb')} / {r.get('rss_10pct_mb')} / {r.get('rss_end_mb')} |"
            f" {finding} |"
        )
    return "\n".join(rows)


def main() -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-time", type=int, default=3600, help="seconds per target, a cap")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ipsecd-fuzz"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--table", type=Path, nargs="+", help="print the table of earlier --json files and stop"
    )
    args = parser.parse_args()
    if args.table:
        saved = [json.loads(path.read_text()) for path in args.table]
        print(f"{saved[0]['machine']}\n\n{table([r for s in saved for r in s['results']])}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.targets.split(","):
        result = run_target(name, args.runs, args.max_time, args.work)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:
            summary = {"machine": machine(), "runs": args.runs, "results": results}
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{machine()}\n\n{table(results)}")
    return 0 if all(r["finding"] is None and r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
