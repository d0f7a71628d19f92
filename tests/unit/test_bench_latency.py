"""bench/latency.py's arithmetic and table (the rounds themselves run in tests/netns)."""

from __future__ import annotations

import pytest

from bench.latency import parse_args, runs, summary, table


def test_summary_takes_median_of_rounds_and_subtracts_plain() -> None:
    rounds = {
        "plain": [0.10, 0.08, 0.09],
        "forwarder": [0.30, 0.29, 0.50],
        "strongswan": [0.49, 0.60, 0.50],
        "ipsecd": [0.40, 0.39, 0.70],
    }
    figures = summary(rounds)
    assert figures["plain"] == {"rtt_ms": 0.09, "added_ms": None, "added_vs_strongswan": None}
    assert figures["strongswan"]["added_ms"] == pytest.approx(0.41)
    assert figures["strongswan"]["added_vs_strongswan"] == pytest.approx(1.0)
    assert figures["ipsecd"]["added_ms"] == pytest.approx(0.31)
    assert figures["ipsecd"]["added_vs_strongswan"] == pytest.approx(0.31 / 0.41)
    assert figures["forwarder"]["added_vs_strongswan"] == pytest.approx(0.21 / 0.41)


def test_summary_without_plain_or_strongswan_has_no_ratios() -> None:
    figures = summary({"ipsecd": [0.5], "forwarder": [0.3]})
    assert figures["ipsecd"] == {"rtt_ms": 0.5, "added_ms": None, "added_vs_strongswan": None}


def test_table_rows_in_fixed_order_with_dashes_for_missing() -> None:
    rounds = {"ipsecd": [0.4], "plain": [0.1]}
    text = table(summary(rounds), rounds)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["backend", "RTT", "ms"]
    assert lines[1].startswith("plain routing") and lines[2].startswith("ipsecd")
    assert "0.300" in lines[2] and lines[1].split()[3] == "-"


def test_rows_per_source_tree_with_repo() -> None:
    args = parse_args(["--only", "plain", "ipsecd", "--repo", "/a", "/b"])
    keys = [key for key, _, _ in runs(args)]
    assert keys == ["plain", "ipsecd@/a", "ipsecd@/b"]
    rounds = {"ipsecd@/b": [0.5], "plain": [0.1], "ipsecd@/a": [0.4]}
    lines = table(summary(rounds), rounds).splitlines()
    assert lines[1].startswith("plain routing")
    assert lines[2].startswith("ipsecd (/b)") and lines[3].startswith("ipsecd (/a)")
