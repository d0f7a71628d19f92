"""Dropping root: uid, capability sets, dumpable flag, core limit (in a child process)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop it")

CHILD = """
import os, resource, sys
from ipsecd.daemon import privilege
if len(sys.argv) > 2:  # like systemd's CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
    caps = 1 << 12 | 1 << 10
    privilege._capset(caps, caps)
dropped = privilege.drop_privileges(sys.argv[1] if len(sys.argv) > 1 else None)
print(dropped.warning)
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


def _python(code: str, *args: str, timeout: float = 60) -> list[str]:
    """The output lines of ``code`` run in a fresh interpreter (this tree's ipsecd)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        timeout=timeout,
        check=True,
    )
    return proc.stdout.splitlines()


def _run(*args: str) -> list[str]:
    return _python(CHILD, *args)


def test_drop_to_nobody_keeps_only_cap_net_admin():
    nobody = pwd.getpwnam("nobody")
    lines = _run("nobody")
    assert lines == [
        "None",
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
    assert lines[1] == "root unchanged"
    assert lines[2] == "Uid 0 0 0 0"
    assert "dumpable 0" in lines and "core (0, 0)" in lines


def test_root_without_cap_setuid_keeps_uid_0_but_only_cap_net_admin():
    lines = _run("nobody", "systemd-like")
    assert lines[0].startswith("stayed uid 0, not nobody: CAP_SETUID/CAP_SETGID are not in")
    assert lines[1] == "root cap_net_admin"
    assert "CapEff 0000000000001000" in lines and "CapPrm 0000000000001000" in lines
    assert "NoNewPrivs 1" in lines and "dumpable 0" in lines


def test_preload_imports_the_daemon_but_what_it_is_told_to_skip():
    """Before the drop every module is imported (the service account may not read them
    later); the metrics module (prometheus_client) only if metrics are configured; not
    numpy's bulk path, which loads at the first burst and has a fallback (offload.bulk)."""
    code = """
import json, os, sys
from ipsecd.daemon import privilege
privilege.preload_modules(sys.argv[1:] and tuple(sys.argv[1:]))
names = ("ipsecd.daemon.metrics", "prometheus_client", "ipsecd.pki.validate", "ipsecd.cli.ipsecd",
         "numpy", "ipsecd.dataplane.bulk", "ipsecd.esp.rows")
print(json.dumps([m for m in names if m in sys.modules] + [len(os.listdir("/proc/self/task"))]))
"""

    def preloaded(*skip: str) -> list[object]:
        return json.loads(_python(code, *skip, timeout=120)[-1])

    everything = ["ipsecd.daemon.metrics", "prometheus_client", "ipsecd.pki.validate", 1]
    assert preloaded() == everything
    assert preloaded("ipsecd.daemon.metrics") == ["ipsecd.pki.validate", 1]
