"""What an operator sees: ipsecctl up/down/rekey/reload/log against real daemons, and
journald priorities on the daemon's output (JOURNAL_STREAM emulated: no systemd here)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.lab.daemons import IpsecdProcess, site_specs, start_psk_pair
from tests.lab.topology import Topology
from tests.lab.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
IPSECCTL = [sys.executable, "-m", "ipsecd.cli.ipsecctl"]
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def ipsecctl(daemon: IpsecdProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IPSECCTL, "--socket", str(daemon.socket), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def _pair(topology: Topology, *, psk_b: str | None = None) -> tuple[IpsecdProcess, IpsecdProcess]:
    """gwA does not initiate by itself: ``ipsecctl up`` does."""
    a, b = site_specs(topology)
    a.start = "respond"
    return start_psk_pair(topology, a, b, psk_b=psk_b, start=False)


def test_up_with_a_wrong_psk_fails_with_the_explanation(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 32 bytes: PSKs shorter than 16 bytes are refused when the config is loaded.
    gw_a, gw_b = _pair(topology, psk_b="0x" + secrets.token_hex(32))
    # gwA writes to the "journal": its stderr is the stream JOURNAL_STREAM names.
    gw_a.log.touch()
    st = os.stat(gw_a.log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    gw_b.start()
    gw_a.start()

    done = ipsecctl(gw_a, "up", "b", "--timeout", "20")

    assert done.returncode == 1, (done, gw_a.log_text())
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("ipsecctl: up b failed in "), line
    assert "peer b rejected our authentication: AUTHENTICATION_FAILED" in line
    assert "check the PSK and the identity the peer expects" in line
    # journald's priorities: every line of gwA carries one, the failure is a warning;
    # gwB inherited the variable but writes elsewhere, so it adds none.
    lines = gw_a.log_text().splitlines()
    assert lines and all(re.match(r"<[3467]>\{", line) for line in lines), lines[:5]
    assert any(line.startswith("<4>") and "negotiation failed" in line for line in lines)
    assert not any(line.startswith("<") for line in gw_b.log_text().splitlines())
    assert "('" not in gw_a.log_text()  # addresses as ADDR:PORT, never tuples


def test_up_rekey_down_reload_and_log_in_words(topology: Topology) -> None:
    gw_a, gw_b = _pair(topology)
    gw_b.start()
    gw_a.start()
    follower = subprocess.Popen(
        [*IPSECCTL, "--socket", str(gw_a.socket), "log", "--level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    followed: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            followed.append(line)
            if "CHILD_SA installed" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # ipsecctl log shows what is logged from when it connects (as swanctl --log): let it
        # connect before the records it is to show (its start-up takes seconds under load).
        wait_until(
            lambda: (
                f"pid={follower.pid},"
                in subprocess.run(["ss", "-xp"], capture_output=True, text=True).stdout
            ),
            10,
            what="ipsecctl log connected to the control socket",
        )
        up = ipsecctl(gw_a, "up", "b")
        assert up.returncode == 0, (up, gw_a.log_text())
        peer = gw_a.peer_status()
        ike, (child,) = peer["ike"], peer["children"]
        assert up.stdout == (
            f"{up.stdout.split(':')[0]}: IKE SA {ike['local_spi']}_local {ike['remote_spi']}_remote"
            f" {ike['algorithm']} {ike['local']} <-> {ike['remote']};"
            f" CHILD_SA {child['spi_in']}_in {child['spi_out']}_out {child['algorithm']}"
            f" {', '.join(child['local_ts'])} === {', '.join(child['remote_ts'])}\n"
        )
        assert up.stdout.startswith("peer b up in ")

        assert seen.wait(10), followed  # ipsecctl log saw it live
        assert any(re.match(r"\S+Z  info     IKE SA established  ", line) for line in followed)

        again = ipsecctl(gw_a, "up", "b")
        assert again.returncode == 0 and again.stdout.startswith("peer b already up: IKE SA")

        rekey = ipsecctl(gw_a, "rekey", "b")
        assert rekey.returncode == 0, rekey
        assert rekey.stdout.startswith("peer b rekeyed in ")
        (spi_in,) = re.findall(r"CHILD_SA (\w+)_in", rekey.stdout)
        assert spi_in != child["spi_in"]  # the old one may still be deleting
        assert spi_in in [c["spi_in"] for c in gw_a.peer_status()["children"]]

        rekey_ike = ipsecctl(gw_a, "rekey", "b", "--ike")
        assert rekey_ike.returncode == 0, rekey_ike
        new_ike = gw_a.peer_status()["ike"]
        assert rekey_ike.stdout.startswith("peer b IKE SA rekeyed in ")
        assert f"IKE SA {new_ike['local_spi']}_local" in rekey_ike.stdout

        reload = ipsecctl(gw_a, "reload")
        assert reload.returncode == 0, reload
        assert reload.stdout.splitlines() == [
            f"reloaded {gw_a.config}: no peer changed",
            "  unchanged: b  (SAs kept)",
        ]

        down = ipsecctl(gw_a, "down", "b")
        assert down.returncode == 0, down
        assert down.stdout.startswith("peer b down in ")
        assert gw_a.peer_status()["children"] == []

        gw_b.stop()  # nobody answers now
        late = ipsecctl(gw_a, "up", "b", "--timeout", "2")
        assert late.returncode == 6, late
        assert "ipsecctl: up b: no outcome within 2 s (peer b is " in late.stderr

        no_wait = ipsecctl(gw_a, "down", "b", "--no-wait")
        assert (no_wait.returncode, no_wait.stdout, no_wait.stderr) == (0, "", "")
    finally:
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends ipsecctl log cleanly
        code = follower.wait(10)
        reader.join(5)
    assert follower.stderr is not None
    assert (code, follower.stderr.read()) == (0, "")


def test_a_listen_address_not_on_the_machine_is_named(topology: Topology) -> None:
    a, b = site_specs(topology)
    a.wan_ip = "203.0.113.9"  # TEST-NET-3: on no interface of gwA
    gw_a, _ = start_psk_pair(topology, a, b, start=False)
    with pytest.raises(RuntimeError, match="exited"):
        gw_a.start()
    assert gw_a.proc is not None and gw_a.proc.returncode == 1
    assert (
        "cannot bind UDP 203.0.113.9:500: [Errno 99] Cannot assign requested address"
        in gw_a.log_text()
    )
