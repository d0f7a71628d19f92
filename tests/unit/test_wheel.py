"""The wheel ships the daemon, never the test harness (namespaces, strongSwan, pcap, iperf).

Built as the README's install does (``pip wheel --no-deps .``), from a copy of the source
tree without build leftovers, so a stale ``build/lib`` cannot hide or add files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEFTOVERS = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".vagrant"
)
# What only a test harness runs; the product's modules mention strongSwan in prose only.
HARNESS_MARKERS = ('"tcpdump"', '"iperf3"', '"swanctl"', "/usr/lib/ipsec/", '"unshare"')


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=LEFTOVERS)
    out = tmp_path / "wheel"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = out.glob("ipsecd-*.whl")
    return wheel


def test_wheel_holds_no_test_harness(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ipsecd", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert "ipsecd/cli/demo.py" in names and "ipsecd/daemon/app.py" in names
    harness = [
        n
        for n in names
        if {"lab", "tests"} & set(n.split("/"))
        or any(word in n for word in ("strongswan", "vici", "topology", "pcap"))
    ]
    assert not harness, harness
    runners = {n: m for n, text in sources.items() for m in HARNESS_MARKERS if m in text}
    assert not runners, runners
