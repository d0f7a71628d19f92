"""bench/compare.py (the regression guard over two bench JSON files) and bench/plot.py."""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from bench import compare
from bench.figures import FIGURES, ratios, table
from bench.plot import iperf_series, write_plot


def bench_doc() -> dict[str, Any]:
    """A document shaped like ``bench.py --json`` output."""
    figures: dict[str, dict[str, float | None]] = {
        "plain": {
            "tcp1_gbps": 15.0,
            "tcp4_gbps": 40.0,
            "tcp1_rev_gbps": 14.0,
            "tcp4_rev_gbps": 38.0,
            "rtt_idle_ms": 0.1,
            "rtt_added_ms": None,
            "rtt_load_ms": 0.2,
            "handshake_ms": None,
            "cpu_s_per_gb": None,
            "cpu_enc_s_per_gb": None,
            "cpu_dec_s_per_gb": None,
        },
        "strongswan": {
            "tcp1_gbps": 0.5,
            "tcp4_gbps": 0.5,
            "tcp1_rev_gbps": 0.5,
            "tcp4_rev_gbps": 0.5,
            "rtt_idle_ms": 0.5,
            "rtt_added_ms": 0.4,
            "rtt_load_ms": 12.0,
            "handshake_ms": 4.0,
            "cpu_s_per_gb": 40.0,
            "cpu_enc_s_per_gb": 21.0,
            "cpu_dec_s_per_gb": 19.0,
        },
        "ipsecd": {
            "tcp1_gbps": 2.0,
            "tcp4_gbps": 2.4,
            "tcp1_rev_gbps": 1.9,
            "tcp4_rev_gbps": 2.3,
            "rtt_idle_ms": 0.3,
            "rtt_added_ms": 0.2,
            "rtt_load_ms": 8.0,
            "handshake_ms": 3.0,
            "cpu_s_per_gb": 10.0,
            "cpu_enc_s_per_gb": 5.5,
            "cpu_dec_s_per_gb": 4.5,
        },
    }
    return {
        "schema": 1,
        "meta": {"date": "2026-11-25T10:00:00+00:00", "hostname": "test"},
        "figures": figures,
        "ratios": ratios(figures),
    }


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def run(tmp_path: Path, old: dict[str, Any], new: dict[str, Any], *extra: str) -> int:
    return compare.main(
        [str(write(tmp_path, "old.json", old)), str(write(tmp_path, "new.json", new)), *extra]
    )


def test_no_change_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = bench_doc()
    assert run(tmp_path, doc, copy.deepcopy(doc)) == 0
    out = capsys.readouterr().out
    assert "ipsecd TCP 1 str Gbit/s" in out
    assert "0 regression(s)" in out and out.rstrip().endswith("OK")


def test_throughput_drop_of_25_percent_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = bench_doc(), bench_doc()
    new["figures"]["ipsecd"]["tcp4_gbps"] = 2.4 * 0.75
    assert run(tmp_path, old, new) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("ipsecd TCP 4 str"))
    assert "-25.0%" in line and "REGRESSION" in line
    assert out.rstrip().endswith("FAIL")


def test_throughput_drop_within_threshold_and_rise_pass(tmp_path: Path) -> None:
    old, new = bench_doc(), bench_doc()
    new["figures"]["ipsecd"]["tcp4_gbps"] = 2.4 * 0.85  # -15 %
    new["figures"]["ipsecd"]["tcp1_gbps"] = 2.0 * 3  # far better: never a regression
    new["figures"]["ipsecd"]["handshake_ms"] = 3.0 * 0.5  # lower is better
    assert run(tmp_path, old, new) == 0


def test_rtt_rise_of_25_percent_fails(tmp_path: Path) -> None:
    old, new = bench_doc(), bench_doc()
    new["figures"]["ipsecd"]["rtt_idle_ms"] = 0.3 * 1.25
    result = compare.compare(old, new)
    assert [(r.row, r.key) for r in result.regressions] == [("ipsecd", "rtt_idle_ms")]
    assert run(tmp_path, old, new) == 1


@pytest.mark.parametrize("key", [f.key for f in FIGURES if not f.higher_is_better])
def test_every_lower_is_better_figure_fails_on_a_rise(key: str) -> None:
    old, new = bench_doc(), bench_doc()
    new["figures"]["ipsecd"][key] *= 1.25
    assert [r.key for r in compare.compare(old, new).regressions] == [key]


def test_ratio_rows_are_judged_too() -> None:
    old, new = bench_doc(), bench_doc()
    new["ratios"]["ipsecd/strongswan"]["tcp1_gbps"] *= 0.7
    result = compare.compare(old, new)
    assert [(r.row, r.key) for r in result.regressions] == [("ipsecd/strongswan", "tcp1_gbps")]
    assert compare.compare(old, new, only=["ipsecd"]).regressions == []


def test_missing_figures_are_reported_not_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = bench_doc(), bench_doc()
    new["figures"]["ipsecd"]["handshake_ms"] = None  # measured before, not now
    del new["figures"]["strongswan"]["rtt_load_ms"]  # key gone
    del new["figures"]["plain"]  # whole backend gone
    del new["ratios"]
    new["figures"]["ipsecd"]["tcp1_gbps"] = "fast"  # not a number: missing, not a crash
    assert run(tmp_path, old, new) == 1
    out = capsys.readouterr().out
    for label in ("ipsecd handshake ms", "strongSwan RTT load ms", "plain TCP 1 str Gbit/s"):
        line = next(x for x in out.splitlines() if x.startswith(label))
        assert "MISSING" in line
    assert "ipsecd TCP 1 str" in out
    # Not applicable in both (plain routing's handshake) is no line at all.
    assert "plain handshake" not in out
    assert run(tmp_path, old, new, "--allow-missing") == 0


def test_figures_only_in_new_and_unknown_keys_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = bench_doc(), bench_doc()
    old["figures"]["ipsecd"]["handshake_ms"] = None
    new["figures"]["ipsecd"]["gro_batch"] = 12.0
    old["figures"]["ipsecd"]["gro_batch"] = 40.0
    assert run(tmp_path, old, new) == 0
    out = capsys.readouterr().out
    assert "only in new" in out and "not judged" in out


def test_unreadable_files_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    good = write(tmp_path, "good.json", bench_doc())
    assert compare.main([str(bad), str(good)]) == 2
    assert compare.main([str(tmp_path / "absent.json"), str(good)]) == 2
    write(tmp_path, "list.json", [])  # type: ignore[arg-type]
    assert compare.main([str(tmp_path / "list.json"), str(good)]) == 2


def test_table_has_a_row_per_backend_and_ratio() -> None:
    blocks = table(bench_doc()["figures"]).split("\n\n")
    assert len(blocks) == 2  # throughput and CPU, then times
    for text in blocks:
        rows = [line.split()[0] for line in text.splitlines()[3:]]
        assert rows == ["plain", "strongSwan", "ipsecd", "ipsecd/strongSwan", "ipsecd/plain"]
    ipsecd_vs_swan = blocks[0].splitlines()[6].split()
    assert ipsecd_vs_swan[1:3] == ["4.00x", "4.80x"]
    assert blocks[1].splitlines()[6].split()[-1] == "0.75x"  # handshake 3.0 / 4.0 ms


# --- plot ----------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, each chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack("!I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack("!I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        kinds.append(kind)
        pos += 12 + length
    return kinds


def test_iperf_series_reads_interval_sums() -> None:
    raw = {
        "intervals": [
            {"sum": {"start": 0.0, "end": 1.0, "bits_per_second": 5e8}},
            {"sum": {"start": 1.0, "end": 2.0, "bits_per_second": 7e8}},
            {"streams": []},  # no sum: skipped
        ]
    }
    assert iperf_series(raw) == [(1.0, 0.5), (2.0, 0.7)]
    assert iperf_series({}) == []


def test_plot_writer_makes_a_valid_png(tmp_path: Path) -> None:
    series = {
        "plain": {1: [(1.0, 15.0), (2.0, 16.0)], 4: [(1.0, 40.0), (2.0, 41.0)]},
        "strongswan": {1: [(1.0, 0.5), (2.0, 0.45)], 4: [(1.0, 0.5), (2.0, 0.52)]},
        "ipsecd": {1: [(1.0, 2.0), (2.0, 2.1)], 4: []},  # an empty series is allowed
    }
    out = tmp_path / "bench.png"
    write_plot(series, out, title="synthetic")
    data = out.read_bytes()
    kinds = png_chunks(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height = struct.unpack("!II", data[16:24])
    assert width > 300 and height > 200
