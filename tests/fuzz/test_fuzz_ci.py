"""Fuzzing in CI: every target over its seed corpus, then a short coverage-guided run.

The seed replay runs in-process and needs nothing but the package.  The short run
starts ``tests.fuzz.harness`` (atheris) per target from its corpus, bounded by both
an input count and a time budget (``IPSECD_FUZZ_RUNS``, ``IPSECD_FUZZ_SECONDS``:
defaults 200 000 inputs or 2 s of fuzzing per target, 4-8 s with start-up).  Any
unexpected exception or broken invariant fails the test with the exception and the
input (hex) that triggered it.  The long run is ``run_long.py`` (see README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS = HERE / "corpus"
RUNS = int(os.environ.get("IPSECD_FUZZ_RUNS", "200000"))
SECONDS = int(os.environ.get("IPSECD_FUZZ_SECONDS", "2"))


@pytest.mark.parametrize("name", list(TARGETS))
def test_seed_corpus_replays_cleanly(name: str) -> None:
    files = sorted((CORPUS / name).iterdir())
    assert files, f"no seeds for {name}: run python -m tests.fuzz.make_corpus"
    for path in files:
        TARGETS[name].run(path.read_bytes())


def test_corpus_stays_small() -> None:
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 1_000_000, f"seed corpus is {total} bytes; keep it under 1 MB"
    assert {p.name for p in CORPUS.iterdir()} == set(TARGETS)


@pytest.mark.parametrize("name", list(TARGETS))
def test_short_fuzz_run(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    new = tmp_path / "new"
    new.mkdir()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.harness",
        name,
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/",
        str(new),
        str(CORPUS / name),
    ]
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, IPSECD_FUZZ_TMP=str(tmp_path))
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=SECONDS + 120, cwd=REPO
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        crashes = [p for p in tmp_path.iterdir() if p.is_file()]
        inputs = "\n".join(f"{p.name}: {p.read_bytes()[:512].hex()}" for p in crashes)
        report = [
            line for line in output.splitlines() if not line.startswith("INFO: Instrumenting")
        ]
        pytest.fail(f"{name}: exit {proc.returncode}\n" + "\n".join(report[-40:]) + "\n" + inputs)
    assert re.search(r"^#\d+\s+DONE ", output, re.M), output[-2000:]
