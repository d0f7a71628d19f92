"""strongSwan 6.1 for the interop tests: a Debian root built once per machine and cached.

Debian 12 ships strongSwan 5.9.8.  The second interop peer is strongSwan 6.1 from Debian's
own packages, following shared/notes/strongswan-6-chroot.md with one change: the root is
``debootstrap --variant=minbase --include=<strongSwan's packages> sid`` in one step rather
than trixie upgraded from sid (the same strongSwan 6.1.0, OpenSSL 3.5 and libc, with one
package index to fetch instead of two), and debootstrap works on a tmpfs, so dpkg's fsyncs
cost nothing: 79 s there against 189 s on this machine's disk, measured side by side under
the same load.  The finished root is copied to :data:`ROOT` (under
:data:`~tests.lab.debian.CACHE`) without the downloaded packages and indexes (about
150 MB), first into a temporary directory that is renamed into place only once it is
complete and verified, all under a file lock, so parallel pytest-xdist workers (or two
runs on one machine) build it once and the others wait for it.  The tmpfs lives in a
private mount namespace: it is gone when the build ends, however it ends.  How
:class:`~tests.lab.strongswan.Charon` runs charon in the root is in
:mod:`tests.lab.strongswan`.

:func:`strongswan6_root` raises :class:`ChrootUnavailable` when this machine cannot build
it at all (no debootstrap, no mirror) — the tests skip on that outside CI and fail in CI
— and :class:`ChrootBuildError` when building failed for any other reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.lab.debian import CACHE, debian_mirror, mirror_problem

ROOT = CACHE / "strongswan-6.1"
LOCK = CACHE / "strongswan-6.1.lock"
#: Written last into a complete root: the strongSwan version, build time and size.
READY = ".ipsecd-strongswan"
SUITE = "sid"  # where strongSwan 6.1 is
WANT_VERSION = "6.1."  # `charon --version` must say "strongSwan 6.1.x"
PACKAGES = (
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",  # kernel-libipsec
    "libstrongswan-extra-plugins",  # aes, sha1, sha2, hmac, kdf, curve25519, chapoly
    "libstrongswan-standard-plugins",  # gcm
)
CHARON = "/usr/lib/ipsec/charon"
BUILD_TIMEOUT = 900.0
TMPFS_SIZE = "2g"  # the root with its downloads is about 260 MB


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
        problem = mirror_problem(mirror, SUITE)
        if problem:
            raise ChrootUnavailable(f"cannot build the strongSwan 6.1 root: {problem}")
        for stale in ROOT.parent.glob(f"{ROOT.name}.*[0-9]"):  # of a build that was killed
            _remove(stale)
        started = time.monotonic()
        tmp = ROOT.with_name(f"{ROOT.name}.tmp{os.getpid()}")
        try:
            _build(tmp, mirror, debootstrap)
            version = _charon_version(tmp)
            if not version.startswith(WANT_VERSION):
                raise ChrootBuildError(
                    f"{SUITE} now has strongSwan {version}, not {WANT_VERSION}x:"
                    " update tests/lab/strongswan6.py (WANT_VERSION, SUITE)"
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
                _remove(old)
            tmp.rename(ROOT)
        except BaseException:
            _remove(tmp)
            raise
        return ROOT, seconds


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _run(argv: list[str], what: str, timeout: float = BUILD_TIMEOUT) -> None:
    """Run a build step in a session of its own, killed whole (debootstrap's children too)
    on a time-out or an interrupt."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "LC_ALL": "C"},
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise ChrootBuildError(f"{what}: no end after {timeout:.0f} s") from exc
        raise
    if proc.returncode != 0:
        raise ChrootBuildError(f"{what} exited {proc.returncode}:\n{output[-4000:]}")


#: Run by sh in a private mount namespace: $1 tmpfs mount point, $2 target, $3 tmpfs size,
#: then debootstrap's arguments.  The downloaded packages and indexes stay behind.
_BUILD_SCRIPT = """set -e
work=$1 target=$2 size=$3
shift 3
mount -t tmpfs -o "size=$size,mode=755" ipsecd-sw61 "$work"
"$@"
find "$work/root/var/cache/apt/archives" -name '*.deb' -delete
find "$work/root/var/lib/apt/lists" -maxdepth 1 -type f -delete
cp -a "$work/root" "$target"
"""


def _build(target: Path, mirror: str, debootstrap: str) -> None:
    """debootstrap sid with strongSwan's packages on a tmpfs, copied to ``target``."""
    work = target.with_name(f"{ROOT.name}.build{os.getpid()}")
    work.mkdir(parents=True)
    argv = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE]
    argv += [f"{work}/root", mirror]
    try:
        _run(
            ["unshare", "-m", "sh", "-c", _BUILD_SCRIPT, "sh", str(work), str(target), TMPFS_SIZE]
            + argv,
            f"debootstrap {SUITE} from {mirror}",
        )
    finally:
        work.rmdir()


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
