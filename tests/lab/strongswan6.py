"""strongSwan 6.1 for the interop tests: a Debian root built once per machine and cached.

Debian 12 ships strongSwan 5.9.8.  The second interop peer is strongSwan 6.1 from Debian's
own packages (shared/notes/strongswan-6-chroot.md): a trixie minbase root made by
``debootstrap`` with strongSwan's packages, then those packages upgraded from sid.  Built
under :data:`~tests.lab.debian.CACHE` (``strongswan-6.1/``), in a temporary directory
that is renamed into place only once it is complete and verified, under a file lock, so
parallel pytest-xdist workers (or two runs on one machine) build it once and the others
wait for it.  What :class:`~tests.lab.strongswan.Charon` then does with it (a private mount
namespace per process, ``chroot``) is in :mod:`tests.lab.strongswan`.

:func:`strongswan6_root` raises :class:`ChrootUnavailable` when this machine cannot build
it at all (no debootstrap, no mirror) — the tests skip on that outside CI and fail in CI
— and :class:`ChrootBuildError` when building failed for any other reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.lab.debian import CACHE, debian_mirror, mirror_problem

ROOT = CACHE / "strongswan-6.1"
LOCK = CACHE / "strongswan-6.1.lock"
#: Written last into a complete root: the strongSwan version, build time and size.
READY = ".ipsecd-strongswan"
SUITE = "trixie"  # the root's release (strongSwan 6.0.1)
UPGRADE_FROM = "sid"  # strongSwan 6.1 comes from here
WANT_VERSION = "6.1."  # `charon --version` must say "strongSwan 6.1.x"
PACKAGES = (
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",  # kernel-libipsec
    "libstrongswan-extra-plugins",
    "libstrongswan-standard-plugins",
)
CHARON = "/usr/lib/ipsec/charon"
BUILD_TIMEOUT = 900.0
# sid's Release file can be past its Valid-Until date on a snapshot mirror.
APT = "apt-get -q -o Acquire::Check-Valid-Until=false -o DPkg::Lock::Timeout=60"


class ChrootUnavailable(RuntimeError):
    """This machine cannot build the root at all (no debootstrap, mirror unreachable)."""


class ChrootBuildError(RuntimeError):
    """Building the root failed; the message carries the failing step's output."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ready_version(root: Path = ROOT) -> str | None:
    """The strongSwan version ("6.1.0") recorded in a complete root (``None``: none)."""
    marker = root / READY
    if not marker.exists():
        return None
    return marker.read_text().split("\n", 1)[0].strip() or None


def strongswan6_root() -> tuple[Path, float]:
    """The cached strongSwan 6.1 root, built now if missing; seconds this call spent building
    (0.0 when it was there).  Blocks while another process builds it."""
    with _locked(LOCK):
        version = ready_version()
        if version is not None and version.startswith(WANT_VERSION):
            return ROOT, 0.0
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not os.access(debootstrap, os.X_OK):
            raise ChrootUnavailable(
                "debootstrap not installed (scripts/setup-dev.sh installs it): it builds the"
                f" strongSwan 6.1 root in {ROOT}"
            )
        mirror = debian_mirror()
        for suite in (SUITE, UPGRADE_FROM):
            problem = mirror_problem(mirror, suite)
            if problem:
                raise ChrootUnavailable(f"cannot build the strongSwan 6.1 root: {problem}")
        started = time.monotonic()
        tmp = ROOT.with_name(f"{ROOT.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(tmp, mirror, debootstrap)
            version = _charon_version(tmp)
            if not version.startswith(WANT_VERSION):
                raise ChrootBuildError(
                    f"{UPGRADE_FROM} now has strongSwan {version}, not {WANT_VERSION}x:"
                    " update tests/lab/strongswan6.py (WANT_VERSION, UPGRADE_FROM)"
                )
            seconds = time.monotonic() - started
            size = _du_megabytes(tmp)
            (tmp / READY).write_text(
                f"{version}\nbuilt {time.strftime('%Y-%m-%d %H:%M:%S')} from {mirror}"
                f" in {seconds:.0f} s, {size} MB\n"
            )
            if ROOT.exists():  # an older version: replaced whole
                old = ROOT.with_name(f"{ROOT.name}.old{os.getpid()}")
                ROOT.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(ROOT)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ROOT, seconds


def _run(argv: list[str], what: str, timeout: float = BUILD_TIMEOUT) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
    }
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ChrootBuildError(f"{what}: no end after {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise ChrootBuildError(
            f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def _build(root: Path, mirror: str, debootstrap: str) -> None:
    """debootstrap trixie with strongSwan, then strongSwan from sid; apt caches dropped."""
    include = ",".join(PACKAGES)
    _run(
        [debootstrap, "--variant=minbase", f"--include={include}", SUITE, str(root), mirror],
        f"debootstrap {SUITE} from {mirror}",
    )
    (root / "etc/apt/sources.list.d/sid.list").write_text(f"deb {mirror} {UPGRADE_FROM} main\n")
    # No service is started inside the root by a maintainer script.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    r = shlex.quote(str(root))
    packages = " ".join(PACKAGES)
    script = (
        f"mount --bind /dev {r}/dev && mount -t proc proc {r}/proc"
        f" && chroot {r} {APT} update"
        f" && chroot {r} {APT} install -y --no-install-recommends -t {UPGRADE_FROM} {packages}"
        f" && chroot {r} {APT} clean"
    )
    # A private mount namespace: /dev and /proc are gone with it, also on failure.
    _run(["unshare", "-m", "sh", "-c", script], f"strongSwan from {UPGRADE_FROM} into {root}")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)  # ~190 MB of indexes
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def _charon_version(root: Path) -> str:
    """The version ``charon --version`` prints inside ``root`` ("6.1.0")."""
    result = subprocess.run(
        ["chroot", str(root), CHARON, "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise ChrootBuildError(f"charon --version in {root}: {result.stdout}{result.stderr}")
    found = re.search(r"strongSwan (\S+)", result.stdout)
    if not found:
        raise ChrootBuildError(f"charon --version in {root} printed {result.stdout!r}")
    return found.group(1)


def _du_megabytes(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else -1
