#!/usr/bin/env python3
"""Compare two bench.py JSON files: the regression guard that is not a timed test.

    python3 bench/compare.py OLD.json NEW.json [--threshold 20] [--allow-missing]
                             [--only ROW ...]

Prints every figure (each backend's row and the ratio rows) old / new / change.  Exit
status 1 when any figure got worse by more than the threshold (default 20 %): a drop for
"higher is better" figures (throughput), a rise for "lower is better" ones (RTT, RTT
added, handshake time, CPU s/GB) - or when a figure present in OLD is missing from NEW
(the backend failed, say), unless ``--allow-missing``.  Exit status 2: a file unreadable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/ itself, where bench.py would shadow the package

from bench.figures import BACKENDS, BY_KEY, FIGURES, LABELS, RATIOS, ratio_key  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Line:
    """One compared figure."""

    row: str  # "ipsecd", "ipsecd/strongswan", ...
    key: str
    old: float | None
    new: float | None
    status: str  # "ok", "better", "REGRESSION", "MISSING", "new", "not judged"

    @property
    def change(self) -> float | None:
        """Relative change new/old - 1 (None when either is missing)."""
        if self.old is None or self.new is None:
            return None
        return relative_change(self.old, self.new)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """All lines, and how many of them fail the guard."""

    lines: list[Line]
    threshold: float

    @property
    def regressions(self) -> list[Line]:
        return [line for line in self.lines if line.status == "REGRESSION"]

    @property
    def missing(self) -> list[Line]:
        return [line for line in self.lines if line.status == "MISSING"]


def relative_change(old: float, new: float) -> float:
    """new/old - 1; from 0 to anything else counts as an infinite change."""
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return new / old - 1.0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _rows(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Backend rows and ratio rows of a bench JSON document, by row name."""
    rows: dict[str, Mapping[str, Any]] = {}
    for section in ("figures", "ratios"):
        part = doc.get(section)
        if isinstance(part, Mapping):
            for name, row in part.items():
                if isinstance(row, Mapping):
                    rows[str(name)] = row
    return rows


def _row_order(names: set[str]) -> list[str]:
    known = [*BACKENDS, *(ratio_key(n, d) for n, d in RATIOS)]
    return [n for n in known if n in names] + sorted(names - set(known))


def judge(key: str, old: float | None, new: float | None, threshold: float) -> str:
    """The status of one figure's change."""
    if old is None:
        return "new"
    if new is None:
        return "MISSING"
    figure = BY_KEY.get(key)
    if figure is None:
        return "not judged"
    change = relative_change(old, new)
    worse = -change if figure.higher_is_better else change
    if worse > threshold:
        return "REGRESSION"
    return "better" if worse < -threshold else "ok"


def compare(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    threshold: float = 0.20,
    only: Sequence[str] | None = None,
) -> Comparison:
    """Compare every figure of ``old`` with ``new`` (documents as bench.py writes them);
    ``only``: just these rows (``ipsecd``, ``ipsecd/strongswan``, ...)."""
    old_rows, new_rows = _rows(old), _rows(new)
    lines = []
    for row in _row_order(set(old_rows) | set(new_rows)):
        if only is not None and row not in only:
            continue
        o_row, n_row = old_rows.get(row, {}), new_rows.get(row, {})
        keys = [f.key for f in FIGURES if f.key in o_row or f.key in n_row]
        keys += sorted((set(o_row) | set(n_row)) - set(keys))
        for key in keys:
            o, n = _number(o_row.get(key)), _number(n_row.get(key))
            if o is None and n is None:
                continue  # not applicable in either (plain routing has no handshake)
            lines.append(Line(row, key, o, n, judge(key, o, n, threshold)))
    return Comparison(lines, threshold)


def _label(line: Line) -> str:
    if "/" in line.row:
        num, den = line.row.split("/", 1)
        row = f"{LABELS.get(num, num)}/{LABELS.get(den, den)}"
    else:
        row = LABELS.get(line.row, line.row)
    figure = BY_KEY.get(line.key)
    what = f"{figure.title} {figure.unit}" if figure else line.key
    return f"{row} {what}" + (" (ratio)" if "/" in line.row else "")


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def report(result: Comparison, allow_missing: bool = False) -> str:
    """The printed comparison, one line per figure and a verdict."""
    rows = [("figure", "old", "new", "change", "")]
    pct = f"{result.threshold * 100:g}%"
    for line in result.lines:
        change = line.change
        note = {
            "REGRESSION": f"REGRESSION (worse by more than {pct})",
            "MISSING": "MISSING in new" + (" (allowed)" if allow_missing else ""),
            "new": "only in new",
            "not judged": "not judged (unknown figure)",
            "better": "better",
        }.get(line.status, "")
        rows.append(
            (
                _label(line),
                _value(line.old),
                _value(line.new),
                "" if change is None else f"{change * 100:+.1f}%",
                note,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    out = [
        "  ".join(
            [r[0].ljust(widths[0]), *(r[c].rjust(widths[c]) for c in (1, 2, 3)), r[4]]
        ).rstrip()
        for r in rows
    ]
    failed = bool(result.regressions) or (bool(result.missing) and not allow_missing)
    out.append(
        f"{len(result.regressions)} regression(s) beyond {pct}, {len(result.missing)} missing: "
        + ("FAIL" if failed else "OK")
    )
    return "\n".join(out)


def _describe(path: Path, doc: Mapping[str, Any]) -> str:
    meta = doc.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    versions = meta.get("versions")
    versions = versions if isinstance(versions, Mapping) else {}
    return (
        f"{path}: {meta.get('date', '?')} on {meta.get('hostname', '?')}, "
        f"ipsecd {versions.get('ipsecd', '?')}"
    )


def load(path: Path) -> dict[str, Any]:
    """Read a bench JSON file (raises ValueError with the reason)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a bench.py JSON object")
    return doc


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; 0 if nothing regressed, 1 if something did, 2 on bad input."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the reference JSON (bench.py --json)")
    ap.add_argument("new", type=Path, help="the JSON to judge")
    ap.add_argument("--threshold", type=float, default=20.0, help="percent (default 20)")
    ap.add_argument(
        "--allow-missing", action="store_true", help="figures missing from NEW do not fail"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        help="compare only these rows, e.g. ipsecd ipsecd/strongswan (default: all)",
    )
    args = ap.parse_args(argv)
    try:
        old, new = load(args.old), load(args.new)
    except ValueError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    result = compare(old, new, args.threshold / 100, args.only)
    print(_describe(args.old, old))
    print(_describe(args.new, new))
    print(report(result, args.allow_missing))
    failed = bool(result.regressions) or (bool(result.missing) and not args.allow_missing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
