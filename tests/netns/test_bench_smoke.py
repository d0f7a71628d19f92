"""bench/bench.py end to end with its shortest settings: every backend is measured and
the JSON and the PNG are written.  No figure is judged (the machine is shared), only that
each one was measured; what keeps the benchmark from rotting when tests.lab changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench
from bench.figures import BACKENDS

pytestmark = [pytest.mark.strongswan, pytest.mark.timing]  # throughput and CPU per GB


def test_bench_measures_every_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--seconds", "2", "--handshakes", "2", "--pings", "5"]
    rc = bench.main([*argv, "--json", str(out_json), "--plot", str(out_png)])
    doc = json.loads(out_json.read_text())
    assert rc == 0, {name: d["error"] for name, d in doc["details"].items()}
    printed = capsys.readouterr().out
    assert "ipsecd/strongSwan" in printed and "ipsecd/plain" in printed
    figures = doc["figures"]
    for name in BACKENDS:
        for key in ("tcp1_gbps", "tcp4_gbps", "tcp1_rev_gbps", "tcp4_rev_gbps"):
            assert figures[name][key] > 0, (name, key)
        for key in ("rtt_idle_ms", "rtt_load_ms"):
            assert figures[name][key] > 0, (name, key)
    for name in ("strongswan", "ipsecd"):
        for key in ("rtt_added_ms", "handshake_ms", "cpu_s_per_gb", "cpu_enc_s_per_gb"):
            assert figures[name][key] is not None, (name, key)
        assert len(doc["details"][name]["handshakes_ms"]) == 2
        assert doc["ratios"]["ipsecd/strongswan"]["tcp1_gbps"] > 0
    assert figures["plain"]["handshake_ms"] is None
    assert figures["plain"]["cpu_s_per_gb"] is None
    # both daemons on the same TUN MTU (bench.TUN_MTU), read from the gateways
    mtus = {n: set(doc["details"][n]["tun_mtu"].values()) for n in ("strongswan", "ipsecd")}
    assert mtus == {"strongswan": {bench.TUN_MTU}, "ipsecd": {bench.TUN_MTU}}
    assert doc["meta"]["nproc"] and doc["meta"]["versions"]["python"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
