"""Dropping root: uid, capability sets, dumpable flag, core limit (in a child process)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop it")

CHILD = """
import os, resource, sys
from ipsecd.daemon.privilege import drop_privileges
dropped = drop_privileges(sys.argv[1] if len(sys.argv) > 1 else None)
import ctypes
dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print(dropped.user, dropped.capabilities)
for key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
    print((key + " " + " ".join(status[key].split())).strip())
print("dumpable", dumpable)
print("core", resource.getrlimit(resource.RLIMIT_CORE))
"""


def _run(*args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        timeout=60,
        check=True,
    )
    return proc.stdout.splitlines()


def test_drop_to_nobody_keeps_only_cap_net_admin():
    nobody = pwd.getpwnam("nobody")
    lines = _run("nobody")
    assert lines == [
        "nobody cap_net_admin",
        f"Uid {nobody.pw_uid} {nobody.pw_uid} {nobody.pw_uid} {nobody.pw_uid}",
        f"Gid {nobody.pw_gid} {nobody.pw_gid} {nobody.pw_gid} {nobody.pw_gid}",
        "Groups",
        "CapInh 0000000000000000",
        "CapPrm 0000000000001000",
        "CapEff 0000000000001000",
        "CapBnd 0000000000001000",
        "CapAmb 0000000000000000",
        "NoNewPrivs 1",
        "dumpable 0",
        "core (0, 0)",
    ]


def test_root_keeps_root_but_no_core():
    lines = _run("root")
    assert lines[0] == "root unchanged"
    assert lines[1] == "Uid 0 0 0 0"
    assert "dumpable 0" in lines and "core (0, 0)" in lines
