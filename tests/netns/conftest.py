"""Fixtures and gating for the root-only namespace tests in tests/netns/.

Every test in this directory is marked ``netns``; tests marked ``strongswan`` also need
charon.  When a requirement is missing the test is skipped, except in CI (environment
variable ``CI`` set and not ``false``/``0``), where it fails: these tests never skip there.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.strongswan import CHARON
from tests.lab.topology import Topology, cleanup_stale, install_sigterm_handler

NETNS_DIR = Path(__file__).resolve().parent


def in_ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/false/0)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0", "no")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI must run the netns tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


@functools.cache
def netns_problem() -> str | None:
    """Why namespace tests cannot run here (``None`` if they can); probed once."""
    if os.geteuid() != 0:
        return "netns tests need root (run as root / sudo)"
    for tool in ("ip", "nft", "tcpdump", "iperf3", "ss", "sysctl"):
        if shutil.which(tool) is None:
            return f"netns tests need {tool!r} on PATH"
    probe = f"ipdprobe{os.getpid()}"
    try:
        res = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10
        )
        if res.returncode != 0:
            return f"`ip netns add` does not work here: {res.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` unavailable: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    cleanup_stale()  # namespaces of earlier runs that were SIGKILLed
    return None


@functools.cache
def strongswan_problem() -> str | None:
    """Why strongSwan tests cannot run here (``None`` if they can)."""
    if not os.access(CHARON, os.X_OK):
        return f"strongSwan charon not found at {CHARON} (install strongswan-charon)"
    if shutil.which("swanctl") is None:
        return "swanctl not found (install strongswan-swanctl)"
    if shutil.which("unshare") is None:
        return "unshare not found (util-linux)"
    plugin = Path("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so")
    if not plugin.exists():
        return f"{plugin} missing (install libcharon-extra-plugins)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, say) unwinds like Ctrl-C so namespaces get torn down."""
    install_sigterm_handler()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/netns/ with ``netns``."""
    for item in items:
        if NETNS_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True)
def _netns_requirements(request: pytest.FixtureRequest) -> None:
    """Skip (or fail in CI) when root/namespaces or, for ``strongswan`` tests, charon lack."""
    problem = netns_problem()
    if problem:
        _missing(problem)
    if request.node.get_closest_marker("strongswan"):
        problem = strongswan_problem()
        if problem:
            _missing(problem)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """A fresh hostA — gwA ══ gwB — hostB topology; logs under ``tmp_path``."""
    with Topology(workdir=tmp_path / "topo") as topo:
        yield topo


@pytest.fixture
def nat_topology(tmp_path: Path) -> Iterator[Topology]:
    """Like ``topology`` but gwA sits behind a masquerading NAT namespace."""
    with Topology(nat=True, workdir=tmp_path / "topo") as topo:
        yield topo
