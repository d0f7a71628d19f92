"""bench/latency.py end to end with one short round: every backend, the bare Python
forwarder included, carries pings and gets a figure.  Only that each one was measured
is checked, never how fast (the machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency

pytestmark = [pytest.mark.strongswan, pytest.mark.timing]  # round-trip times


def test_latency_measures_every_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    rc = latency.main(["--rounds", "1", "--pings", "10", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0, doc["errors"]
    for name in latency.BACKENDS:
        assert doc["figures"][name]["rtt_ms"] > 0, name
        assert len(doc["round_medians_ms"][name]) == 1
    for name in latency.BACKENDS[1:]:  # all but plain routing
        assert doc["figures"][name]["added_vs_strongswan"] is not None, name
    assert "bare Python forwarder" in capsys.readouterr().out
