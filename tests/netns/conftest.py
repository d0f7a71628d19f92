"""Fixtures and gating for the root-only namespace tests in tests/netns/.

Every test in this directory is marked ``netns``; tests marked ``strongswan`` also need
charon.  When a requirement is missing the test is skipped, except in CI (environment
variable ``CI`` set and not ``false``/``0``), where it fails: these tests never skip there.

Interop tests take the ``strongswan`` fixture and so run once per strongSwan version:
Debian 12's own 5.9.8 and 6.1 in a cached Debian root (:mod:`tests.lab.strongswan6`,
built by the first test that needs it, under a lock shared by the xdist workers).  A case
that fails against one version because of a known ipsecd bug says so with
``@pytest.mark.strongswan_xfail("6.1", reason=...)``: a strict xfail for that version only.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.strongswan import CHARON, HOST, StrongSwan
from tests.lab.strongswan6 import (
    BUILD_TIMEOUT,
    WANT_VERSION,
    ChrootBuildError,
    ChrootUnavailable,
    ready_version,
    strongswan6_root,
)
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


#: The strongSwan versions every interop test runs against (the ``strongswan`` fixture).
STRONGSWAN_VERSIONS = (HOST.label, "6.1")


@functools.cache
def strongswan6() -> StrongSwan | str:
    """strongSwan 6.1 in its root (built now if not cached), or why it cannot be had here
    (a ``"skip: "`` prefix: this machine cannot build it; ``"fail: "``: building failed)."""
    try:
        root, seconds = strongswan6_root()
    except ChrootUnavailable as exc:
        return f"skip: {exc}"
    except ChrootBuildError as exc:
        return f"fail: building the strongSwan 6.1 root failed: {exc}"
    swan = StrongSwan("6.1", root)
    if seconds:
        print(f"built {swan} ({swan.version}) in {root} in {seconds:.0f} s")
    return swan


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, say) unwinds like Ctrl-C so namespaces get torn down."""
    install_sigterm_handler()
    config.addinivalue_line(
        "markers",
        "strongswan_xfail(version, reason): a strict xfail when run against that strongSwan"
        " version (the strongswan fixture's parameter)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/netns/ with ``netns``; apply ``strongswan_xfail`` to the
    matching version; give the 6.1 cases time to build the root when it is not cached."""
    building = not (ready_version() or "").startswith(WANT_VERSION)
    for item in items:
        if NETNS_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.netns)
        callspec = getattr(item, "callspec", None)
        version = callspec.params.get("strongswan") if callspec else None
        if version is None and "strongswan61" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.strongswan)
            version = "6.1"
        if version is None:
            continue
        item.add_marker(pytest.mark.strongswan)
        for mark in item.iter_markers("strongswan_xfail"):
            if mark.args[0] == version:
                reason = f"strongSwan {version}: {mark.kwargs['reason']}"
                item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        if version != HOST.label and building:
            timeout = config.getini("timeout") or 300
            item.add_marker(pytest.mark.timeout(float(timeout) + BUILD_TIMEOUT))


@pytest.fixture(autouse=True)
def _netns_requirements(request: pytest.FixtureRequest) -> None:
    """Skip (or fail in CI) when root/namespaces or, for ``strongswan`` tests that do not
    take the ``strongswan`` fixture (it checks its version itself), charon lack."""
    problem = netns_problem()
    if problem:
        _missing(problem)
    if request.node.get_closest_marker("strongswan") and "strongswan" not in request.fixturenames:
        problem = strongswan_problem()
        if problem:
            _missing(problem)


def _strongswan6_or_skip() -> StrongSwan:
    """strongSwan 6.1, or skip (fail in CI) when it cannot be had; fail when building it
    failed."""
    swan = strongswan6()
    if isinstance(swan, str):
        if swan.startswith("skip: "):
            _missing(swan.removeprefix("skip: "))
        pytest.fail(swan.removeprefix("fail: "), pytrace=False)
    return swan


@pytest.fixture(params=STRONGSWAN_VERSIONS, ids=lambda version: f"sw{version}")
def strongswan(request: pytest.FixtureRequest) -> StrongSwan:
    """The strongSwan installation to run charon from: each interop test runs once per
    version in :data:`STRONGSWAN_VERSIONS`."""
    if request.param == HOST.label:
        problem = strongswan_problem()
        if problem:
            _missing(problem)
        return HOST
    return _strongswan6_or_skip()


@pytest.fixture
def strongswan61() -> StrongSwan:
    """strongSwan 6.1 alone, for what 5.9.8 lacks (ML-KEM, IKE_INTERMEDIATE, PPK with
    ``ppk_required``)."""
    return _strongswan6_or_skip()


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
