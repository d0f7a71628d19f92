"""bench/status_cost.py runs (a few peers, one round) and prints both rows (never how
fast: the machine is shared)."""

from __future__ import annotations

import pytest

from bench import status_cost


def test_status_cost_prints_both_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert status_cost.main(["--peers", "3", "--rounds", "1", "--scrape"]) == 0
    out = capsys.readouterr().out
    assert "collector running" in out and "collector held off" in out
    assert "longest step" in out
    assert "scrape, one piece" in out and "scrape, stepwise" in out
    assert "3 peers" in out


def test_status_cost_refuses_nonsense() -> None:
    with pytest.raises(SystemExit):
        status_cost.main(["--peers", "0"])
