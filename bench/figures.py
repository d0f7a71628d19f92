"""The benchmark's figures: names, units, which way is better, and the printed table.

One list (:data:`FIGURES`) is the source for the table bench.py prints, the keys of its
JSON file and the direction compare.py judges a change by, so the three cannot drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

BACKENDS = ("plain", "strongswan", "ipsecd")
LABELS = {"plain": "plain", "strongswan": "strongSwan", "ipsecd": "ipsecd"}
#: Ratio rows of the table: (numerator, denominator).
RATIOS = (("ipsecd", "strongswan"), ("ipsecd", "plain"))


@dataclasses.dataclass(frozen=True)
class Figure:
    """One column of the table / one key per backend in the JSON ``figures``."""

    key: str
    title: str  # first header line
    unit: str  # second header line
    higher_is_better: bool
    digits: int
    block: int = 0  # the table is printed in blocks (too wide as one): 0 throughput, 1 time


FIGURES = (
    # hostA -> hostB (gwA encrypts), then hostB -> hostA (iperf3 -R: gwB encrypts)
    Figure("tcp1_gbps", "TCP 1 str", "Gbit/s", True, 3),
    Figure("tcp4_gbps", "TCP 4 str", "Gbit/s", True, 3),
    Figure("tcp1_rev_gbps", "TCP 1 rev", "Gbit/s", True, 3),
    Figure("tcp4_rev_gbps", "TCP 4 rev", "Gbit/s", True, 3),
    # daemon CPU per GB received: both gateways, the encrypting one, the decrypting one
    Figure("cpu_s_per_gb", "CPU", "s/GB", False, 2),
    Figure("cpu_enc_s_per_gb", "CPU encr", "s/GB", False, 2),
    Figure("cpu_dec_s_per_gb", "CPU decr", "s/GB", False, 2),
    Figure("rtt_idle_ms", "RTT idle", "ms", False, 3, 1),
    Figure("rtt_added_ms", "RTT added", "ms", False, 3, 1),
    Figure("rtt_load_ms", "RTT load", "ms", False, 2, 1),
    Figure("handshake_ms", "handshake", "ms", False, 2, 1),
)
BY_KEY = {f.key: f for f in FIGURES}

Row = Mapping[str, float | None]


def ratio_key(numerator: str, denominator: str) -> str:
    """The JSON / table name of a ratio row, e.g. ``ipsecd/strongswan``."""
    return f"{numerator}/{denominator}"


def ratios(figures: Mapping[str, Row]) -> dict[str, dict[str, float | None]]:
    """ipsecd/strongSwan and ipsecd/plain for every figure (None where either is missing
    or the denominator is zero)."""
    out: dict[str, dict[str, float | None]] = {}
    for num, den in RATIOS:
        top, bottom = figures.get(num) or {}, figures.get(den) or {}
        row: dict[str, float | None] = {}
        for fig in FIGURES:
            a, b = top.get(fig.key), bottom.get(fig.key)
            row[fig.key] = a / b if a is not None and b else None
        out[ratio_key(num, den)] = row
    return out


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(figures: Mapping[str, Row], ratio_rows: Mapping[str, Row] | None = None) -> str:
    """Rows plain / strongSwan / ipsecd, then the ratio rows; a column per figure, in
    blocks (throughput and CPU, then times) separated by a blank line."""
    ratio_rows = ratios(figures) if ratio_rows is None else ratio_rows
    out = []
    for block in _blocks():
        lines = [["", *(f.title for f in block)], ["", *(f.unit for f in block)]]
        for name in BACKENDS:
            if name in figures:
                row = figures[name]
                lines.append([LABELS[name], *(_cell(row.get(f.key), f.digits) for f in block)])
        for num, den in RATIOS:
            key = ratio_key(num, den)
            if num in figures and den in figures:
                row = ratio_rows.get(key, {})
                cells = ["-" if row.get(f.key) is None else f"{row[f.key]:.2f}x" for f in block]
                lines.append([f"{LABELS[num]}/{LABELS[den]}", *cells])
        out.append(_layout(lines))
    return "\n\n".join(out)


def _blocks() -> list[list[Figure]]:
    """:data:`FIGURES` grouped by ``block``, in order."""
    return [[f for f in FIGURES if f.block == b] for b in sorted({f.block for f in FIGURES})]


def _layout(lines: list[list[str]]) -> str:
    """Left-aligned labels, right-aligned cells, a rule under the two header lines."""
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    text = [
        "  ".join(
            cell.ljust(widths[0]) if c == 0 else cell.rjust(widths[c])
            for c, cell in enumerate(line)
        )
        for line in lines
    ]
    text.insert(2, "-" * len(text[0]))
    return "\n".join(text)


Range = Mapping[str, list[float] | None]


def ratio_ranges(
    per_round: Sequence[Mapping[str, Row]],
) -> dict[str, dict[str, list[float] | None]]:
    """[lowest, highest] of each ratio over the rounds (a ratio is taken within a round)."""
    rows = [ratios(figures) for figures in per_round]
    out: dict[str, dict[str, list[float] | None]] = {}
    for num, den in RATIOS:
        key = ratio_key(num, den)
        out[key] = {}
        for fig in FIGURES:
            values = [v for r in rows if (v := r[key].get(fig.key)) is not None]
            out[key][fig.key] = [min(values), max(values)] if values else None
    return out


def range_table(ranges: Mapping[str, Range], ratio_rows: Mapping[str, Range]) -> str:
    """The table's layout with "lowest-highest" cells (over the rounds)."""

    def cell(span: list[float] | None, digits: int, suffix: str = "") -> str:
        if span is None:
            return "-"
        return f"{span[0]:.{digits}f}-{span[1]:.{digits}f}{suffix}"

    out = []
    for block in _blocks():
        lines = [["", *(f.title for f in block)], ["", *(f.unit for f in block)]]
        for name in BACKENDS:
            if name in ranges:
                lines.append(
                    [LABELS[name], *(cell(ranges[name].get(f.key), f.digits) for f in block)]
                )
        for num, den in RATIOS:
            key = ratio_key(num, den)
            if num in ranges and den in ranges:
                row = ratio_rows.get(key, {})
                label = f"{LABELS[num]}/{LABELS[den]}"
                lines.append([label, *(cell(row.get(f.key), 2, "x") for f in block)])
        out.append(_layout(lines))
    return "\n\n".join(out)
