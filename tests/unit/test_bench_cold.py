"""bench/cold.py runs and times every operation, warm and after a sleep (never how fast:
the machine is shared)."""

from __future__ import annotations

import pytest

from bench import cold


def test_every_operation_is_timed_warm_and_after_a_sleep(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cold.main(["--samples", "2", "--sleep-ms", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.split() and line.split()[-1].isdigit()]
    assert [row.rsplit(None, 3)[0] for row in rows] == list(cold.operations())
    for row in rows:
        warm, after, _ = row.rsplit(None, 3)[1:]
        assert float(warm) > 0 and float(after) > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        cold.main(["--samples", "0"])
    with pytest.raises(SystemExit):
        cold.main(["--sleep-ms", "0"])
