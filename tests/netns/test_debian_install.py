"""The README's install commands on a stock Debian 12, with Debian's own python3.

A minimal Debian 12 root (``debootstrap --variant=minbase bookworm``: no python3 at
all) is built once from Debian's packages and cached in ``/var/cache/ipsecd-test/``.
Each run puts a throw-away overlay on top of it, copies this checkout in and, chrooted
there, runs as an admin would:

1. ``scripts/install.sh`` (the service install) — with every dependency at its lower
   bound from pyproject.toml (a pip constraints file), so the lower bounds are
   installed and exercised once per CI run — then checks what it made (venv from
   /usr/bin/python3, commands in /usr/local/sbin, units whose ExecStart matches,
   /etc/ipsecd modes, man pages, completion), runs it a second time (idempotent) and
   runs ``ipsecd demo``: two daemons in namespaces, ping through the tunnel.
2. ``scripts/setup-dev.sh`` (the developer set-up, newest dependencies) and
   ``.venv/bin/ipsecd demo`` again.

Everything runs in a private mount namespace (``unshare -m``): the overlay, /proc,
/sys, /dev, /run (with the demo's /run/netns) and the download caches vanish with
it, also when the test fails or is killed.  The time of each step is printed
(``pytest -s``) and written to ``/var/cache/ipsecd-test/last-run.txt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("IPSECD_TEST_CACHE", "/var/cache/ipsecd-test"))
SUITE = "bookworm"
BASE = CACHE / f"{SUITE}-minbase"  # the stock root; never written after it is built
TIMEOUT = 1500.0

pytestmark = [pytest.mark.timeout(TIMEOUT + 60)]


def lower_bound_constraints(pyproject: Path = REPO / "pyproject.toml") -> str:
    """``name==version`` for every run-time dependency, at its ``>=`` bound."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    lines = []
    for dep in deps:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", dep)
        assert found, f"dependency {dep!r} has no plain >= lower bound"
        lines.append(f"{found.group(1)}=={found.group(2)}")
    return "\n".join(lines) + "\n"


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (no other host may be reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def stock_root() -> tuple[Path, float]:
    """The cached minimal Debian 12 root, built now if missing; seconds spent building."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs on one machine build it once
        if (BASE / "etc" / "debian_version").exists():
            return BASE, 0.0
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not os.access(debootstrap, os.X_OK):
            pytest.fail("debootstrap missing: scripts/setup-dev.sh installs it", pytrace=False)
        started = time.monotonic()
        tmp = CACHE / f"{BASE.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run(
            [debootstrap, "--variant=minbase", SUITE, str(tmp), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        tmp.rename(BASE)
        return BASE, time.monotonic() - started


# The steps, run as root inside the chroot by bash with `set -euo pipefail`.  Each step's
# start and end are marked so the test can time it.  /src is the checkout.
STEPS = r"""
step() { echo "@@step $1 $(date +%s.%N)"; }
end() { echo "@@end $1 $(date +%s.%N)"; }
cd /src

step install
test ! -e /usr/bin/python3           # stock minbase: install.sh must bring Python itself
IPSECD_PIP_CONSTRAINTS=/tmp/lower-bounds.txt scripts/install.sh
end install

step verify
test "$(readlink /usr/local/sbin/ipsecd)" = /opt/ipsecd/bin/ipsecd
test "$(readlink /usr/local/sbin/ipsecctl)" = /opt/ipsecd/bin/ipsecctl
/opt/ipsecd/bin/python -c 'import sys; assert sys.base_prefix == "/usr", sys.base_prefix'
test "$(readlink -f /opt/ipsecd/bin/python)" = "$(readlink -f /usr/bin/python3)"
ipsecd --version | grep -x 'ipsecd [0-9].*'
ipsecctl --version | grep -x 'ipsecctl [0-9].*'
grep -x 'ExecStart=/usr/local/sbin/ipsecd run --config /etc/ipsecd/ipsecd.yaml' \
  /usr/local/lib/systemd/system/ipsecd.service
grep -x 'ExecStart=/usr/local/sbin/ipsecd run --config /etc/ipsecd/%i.yaml' \
  /usr/local/lib/systemd/system/ipsecd@.service
test "$(stat -c %a /etc/ipsecd)" = 755
test "$(stat -c %a:%U:%G /etc/ipsecd/secrets)" = 750:root:ipsecd
getent passwd ipsecd | grep -q ':/usr/sbin/nologin$'      # User= of both units
for page in man8/ipsecd.8 man8/ipsecctl.8 man5/ipsecd.yaml.5; do
  test -s /usr/local/share/man/$page
done
bash -n /usr/local/share/bash-completion/completions/ipsecd
test -s /usr/local/share/doc/ipsecd/examples/ipsecd.yaml
# the lower bounds are what got installed (42 == 42.0.0)
/opt/ipsecd/bin/python - <<'EOF'
from importlib.metadata import version
def key(v): return tuple(int(p) for p in v.split(".")) + (0,) * (4 - len(v.split(".")))
for pin in open("/tmp/lower-bounds.txt").read().split():
    name, bound = pin.split("==")
    assert key(version(name)) == key(bound), f"{name} {version(name)} installed, not {bound}"
    print(f"lower bound installed: {name} {version(name)}")
EOF
end verify

step reinstall
IPSECD_PIP_CONSTRAINTS=/tmp/lower-bounds.txt scripts/install.sh
ipsecd --version
end reinstall

step demo-service
ipsecd demo
end demo-service

step setup-dev
scripts/setup-dev.sh
end setup-dev

step demo-dev
.venv/bin/ipsecd demo
end demo-dev
"""

# Mounts for the chroot, made inside `unshare -m` (private propagation): they all go away
# when that process ends, however it ends.
MOUNTS = r"""
set -euo pipefail
W=$1; BASE=$2; CACHE=$3; SRC=$4
R=$W/root
L=$W/layer  # the overlay's writable layer, in memory: gone with the namespace, nothing to delete
mkdir -p "$R" "$L" "$CACHE/apt-archives/partial" "$CACHE/pip"
mount -t tmpfs -o size=6g,mode=0755 tmpfs "$L"
mkdir "$L/upper" "$L/work"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$L/upper,workdir=$L/work" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount --bind "$CACHE/apt-archives" "$R/var/cache/apt/archives"
mkdir -p "$R/root/.cache/pip"
mount --bind "$CACHE/pip" "$R/root/.cache/pip"
cp /etc/resolv.conf "$R/etc/resolv.conf"
cp "$W/lower-bounds.txt" "$R/tmp/lower-bounds.txt"
if [ -s "$W/host-ca.crt" ]; then cp "$W/host-ca.crt" "$R/tmp/host-ca.crt"; fi
mapfile -t extra_env <"$W/env.list"
mkdir -p "$R/src"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./.vagrant --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.ruff_cache --exclude=.mypy_cache --exclude=.pytest_cache \
  --exclude=./build --exclude=./bench/out -cf - . | tar -C "$R/src" -xf -
exec chroot "$R" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${extra_env[@]}" \
  /bin/bash -euo pipefail -c "$(cat "$W/steps.sh")"
"""


def _network_trust(work: Path) -> list[str]:
    """Environment for pip inside the root: this machine's CA bundle, when it names one.

    Where HTTPS goes through an intercepting proxy, the machine trusts the proxy's CA
    (PIP_CERT / SSL_CERT_FILE); a stock root does not.  That trust is the network's, not
    the install's, so it is handed to pip as the environment hands it to us.
    """
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        bundle = os.environ.get(var)
        if bundle and Path(bundle).is_file():
            shutil.copyfile(bundle, work / "host-ca.crt")
            return ["PIP_CERT=/tmp/host-ca.crt", "SSL_CERT_FILE=/tmp/host-ca.crt"]
    return []


def _kill_chrooted(root: Path) -> None:
    """SIGKILL every process whose root directory is the chroot (daemons the demo left)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "root") == str(root):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _durations(log: str) -> dict[str, float]:
    starts: dict[str, float] = {}
    took: dict[str, float] = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("@@step", "@@end"):
            if parts[0] == "@@step":
                starts[parts[1]] = float(parts[2])
            elif parts[1] in starts:
                took[parts[1]] = float(parts[2]) - starts[parts[1]]
    return took


@pytest.fixture
def one_run_at_a_time() -> Iterator[None]:
    """The apt and pip caches under CACHE are shared: runs on one machine take turns."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_readme_install_and_demo_on_stock_debian(tmp_path: Path, one_run_at_a_time: None) -> None:
    started = time.monotonic()
    base, built_in = stock_root()
    assert not (base / "usr" / "bin" / "python3").exists(), "the cached root is not stock"
    work = tmp_path / "debian"
    work.mkdir()
    (work / "lower-bounds.txt").write_text(lower_bound_constraints())
    (work / "steps.sh").write_text(STEPS)
    (work / "env.list").write_text("".join(f"{line}\n" for line in _network_trust(work)))
    log_path = tmp_path / "chroot.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                MOUNTS,
                "mounts",
                str(work),
                str(base),
                str(CACHE),
                str(REPO),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill_chrooted(work / "root")
    output = log_path.read_text(errors="replace")
    took = _durations(output)
    total = time.monotonic() - started
    report = (
        f"debootstrap {built_in:.0f} s (0 = cached), "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items())
        + f"; total {total:.0f} s"
    )
    print(f"\nstock Debian 12 install: {report}")
    with contextlib.suppress(OSError):
        (CACHE / "last-run.txt").write_text(f"{time.ctime()}: rc={returncode}: {report}\n")
    # The mounts were made in a private mount namespace, gone with it; this guards that design.
    mounted = [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if str(work) in line
    ]
    shutil.rmtree(work, ignore_errors=True)
    assert mounted == [], f"mounts left behind: {mounted}"
    assert returncode == 0, (
        f"{'timed out' if returncode is None else f'exit {returncode}'} after {report}\n"
        + output[-8000:]
    )
    assert set(took) == {
        "install",
        "verify",
        "reinstall",
        "demo-service",
        "setup-dev",
        "demo-dev",
    }, output[-4000:]
    # `ipsecd demo` exits 0 only when every ping through the tunnel was answered (set -e).


if __name__ == "__main__":  # the constraints: .venv/bin/python tests/netns/test_debian_install.py
    sys.stdout.write(lower_bound_constraints())
