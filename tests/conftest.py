"""Suite-wide: tests marked ``timing`` run alone when the suite runs in parallel.

pytest-xdist (``-n``, set in pyproject's addopts) runs tests in several worker processes.
A test that measures time or rates (wake-ups per second, a flood's pace, throughput) would
measure its neighbours' load instead, so while one runs no other test does.  The workers
of one run coordinate through two lock files in the run's shared temporary directory:

* every test holds ``tests.lock`` shared, a ``timing`` test holds it exclusively;
* ``gate.lock`` is taken exclusively to get ``tests.lock`` and released once it is held,
  so a ``timing`` test waiting for the running tests to finish keeps new ones from starting
  (it is not starved by a stream of shared holders).

Timing tests are collected first, so they run one after another at the start, while the
other workers are on quick unit tests: each one waits for little to drain.  Without xdist
(``-n 0``) nothing is locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Timing tests first (a stable sort: the rest keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("timing") is None)


@contextlib.contextmanager
def _held(directory: Path, exclusive: bool) -> Iterator[None]:
    with open(directory / "gate.lock", "a") as gate, open(directory / "tests.lock", "a") as tests:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(tests, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _timing_tests_run_alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Shared or exclusive hold on the run's test lock (first fixture: taken before any
    namespace is built, released after it is torn down)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    run_dir = tmp_path_factory.getbasetemp().parent  # <basetemp>/popen-gwN: one per worker
    with _held(run_dir, exclusive=request.node.get_closest_marker("timing") is not None):
        yield
