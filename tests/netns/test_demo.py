"""``ipsecd demo --keep``: comes up, passes traffic, and a signal leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ipsecd.cli.sites import HOST_B_IP, list_namespaces, ping
from ipsecd.daemon.control import request
from tests.lab.daemons import REPO
from tests.lab.wait import wait_until


class DemoRun:
    """The demo as an operator starts it, its output collected line by line."""

    def __init__(self, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipsecd.cli.ipsecd", "demo", "--keep", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def field(self, pattern: str) -> list[str]:
        return [m for line in self.lines for m in re.findall(pattern, line)]

    def wait_running(self) -> None:
        """Until the demo says it is up and running (``--keep``); it must not have ended."""
        wait_until(
            lambda: self.output,
            60,
            what="the demo to say it is running",
            until=lambda out: "running;" in out or self.proc.poll() is not None,
        )
        assert self.proc.poll() is None, self.output

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _daemons_of(workdir: str) -> list[int]:
    """Processes whose command line names the demo's work directory (its daemons)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if workdir.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_comes_up_passes_traffic_and_leaves_nothing(signum: signal.Signals) -> None:
    demo = DemoRun()
    try:
        demo.wait_running()
        assert re.search(r"ping hostA \S+ -> hostB \S+: 5/5 received", demo.output), demo.output
        (namespaces,) = demo.field(r"built namespaces (.+)")
        names = namespaces.split(", ")
        (workdir,) = demo.field(r"control sockets in (\S+):")
        sockets = demo.field(r"ipsecctl -s (\S+) status")
        assert len(names) == 4 and len(sockets) == 2, demo.output
        for path in sockets:
            assert request(path, {"cmd": "status"})["status"]["peers"][0]["up"]
        host_a = next(ns for ns in names if ns.endswith("-hostA"))
        assert ping(host_a, HOST_B_IP, count=5).loss == 0.0
        assert len(_daemons_of(workdir)) >= 2

        demo.proc.send_signal(signum)
        assert demo.proc.wait(30) == 0, demo.output
        demo._reader.join(5)
        assert "tore down both daemons and all namespaces" in demo.output
        assert not set(names) & set(list_namespaces())
        assert not _daemons_of(workdir)
        assert not Path(workdir).exists()
    finally:
        demo.kill()


def test_demo_with_certificates_and_ml_kem() -> None:
    """``ipsecd demo --auth cert --pq``: a CA and gateway certificates made by ``ipsecd
    pki``, signature authentication both ways, x25519 + ML-KEM-768."""
    demo = DemoRun("--auth", "cert", "--pq")
    try:
        demo.wait_running()
        assert "made CA certificate 'C=CH, O=ipsecd demo, CN=ipsecd demo CA'" in demo.output
        assert re.search(r"ping hostA \S+ -> hostB \S+: 5/5 received", demo.output), demo.output
        for path in demo.field(r"ipsecctl -s (\S+) status"):
            (peer,) = request(path, {"cmd": "status"})["status"]["peers"]
            assert peer["up"], peer
            assert peer["ike"]["algorithm"].endswith("-ke1_mlkem768")
            assert peer["ike"]["auth"]["remote"].startswith("pubkey")
        assert re.search(r"auth: +pubkey \(Ed25519\)", demo.output), demo.output
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(30) == 0, demo.output
    finally:
        demo.kill()
