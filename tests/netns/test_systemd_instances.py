"""Two instances of systemd/ipsecd@.service, with the unit's sandbox emulated, make a tunnel.

There is no systemd on the test machines, so the test does what the unit file asks of
systemd, as far as it can without it, for instances ``left`` (in gwA's namespace) and
``right`` (in gwB's):

- ``%i`` expanded in ExecStartPre=/ExecStart=/RuntimeDirectory= as systemd does; the only
  change is the config directory (``/etc/ipsecd/`` → the test's directory);
- RuntimeDirectory= created with RuntimeDirectoryMode= in a shared stand-in for /run,
  which both instances see as /run, as two instances on one host do;
- ProtectSystem=strict: the root file system read-only, /run read-only except the
  instance's RuntimeDirectory; ProtectKernelTunables=: /proc/sys and /sys read-only;
  PrivateTmp=: a private /tmp;
- User=/Group= (a uid and gid unused here, as the ``ipsecd`` account need not exist on the
  test machine; the runtime directories and config files are chowned to it as systemd and
  scripts/install.sh do), AmbientCapabilities=, UMask=, NoNewPrivileges=,
  CapabilityBoundingSet= (with ``setpriv``);
- SystemCallFilter= with SystemCallErrorNumber=EPERM, the groups expanded by
  ``systemd-analyze syscall-filter``, and MemoryDenyWriteExecute= (seccomp_exec.py).

Not emulated: the other namespace- and cgroup-based settings (ProtectKernelModules=,
ProtectKernelLogs=, ProtectClock=, RestrictNamespaces=, RestrictAddressFamilies=,
DeviceAllow=, ...).  Each instance's config puts its control socket where the unit's comment says,
``/run/ipsecd-INSTANCE/ipsecd.sock``: if that were not writable under the sandbox, the
daemon would not start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.topology import GW_A_LAN_IP, GW_B_LAN_IP, HOST_B_IP, Topology
from tests.unit.test_systemd_units import parse_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ipsecd@.service"
SECCOMP_EXEC = Path(__file__).resolve().parent / "seccomp_exec.py"
SCRAPE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9810/metrics', timeout=20).read().decode())"
)
SERVICE_UID = SERVICE_GID = 61377  # stands in for User=ipsecd / Group=ipsecd


def _unit_for(instance: str) -> dict[str, list[str]]:
    """[Service] of ipsecd@INSTANCE.service, with %i expanded."""
    text = UNIT.read_text().replace("%i", instance)
    return parse_unit(text)["Service"]


def _config(instance: str, role: str, etc: Path, wan: str, peer_wan: str, site: str) -> Path:
    """The Vagrant template for ``role``, with the instance's socket in its RuntimeDirectory."""
    text = (REPO / "vagrant" / "templates" / f"{role}.yaml").read_text()
    for placeholder, value in {
        "@ETC_DIR@": str(etc),
        "@RUN_DIR@": f"/run/ipsecd-{instance}",
        "@WAN_ADDR@": wan,
        "@PEER_WAN_ADDR@": peer_wan,
        "@SITE_ADDR@": site,
        "@AUTH@": f"psk_file: {etc}/psk.secret",
    }.items():
        text = text.replace(placeholder, value)
    if instance != "left":  # left serves metrics: scraped once under the sandbox below
        text = text.replace("metrics: 127.0.0.1:9810", "metrics: null")
    path = etc / f"{instance}.yaml"
    path.write_text(text)
    return path


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: every @group and its members (calls and @groups)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze missing (scripts/setup-dev.sh installs systemd)")
    out = subprocess.run(
        [analyze, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def allowed_syscalls(service: dict[str, list[str]]) -> set[str]:
    """What SystemCallFilter= lets through: an allow-list, then ``~`` lines taking away."""
    groups = syscall_groups()

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(member) for member in groups[item]))

    allowed: set[str] = set()
    for line in service["SystemCallFilter"]:
        deny = line.startswith("~")
        names = set().union(*(expand(i) for i in line.removeprefix("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def _caps(setting: str) -> str:
    return ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in setting.split())


def _privileges(service: dict[str, list[str]]) -> str:
    """setpriv options for User=, Group=, AmbientCapabilities=, CapabilityBoundingSet=."""
    assert service["User"][-1] == service["Group"][-1] == "ipsecd"
    ambient = _caps(service["AmbientCapabilities"][-1])
    return (
        f"--reuid={SERVICE_UID} --regid={SERVICE_GID} --clear-groups"
        f" --inh-caps=-all,{ambient} --ambient-caps=-all,{ambient}"
        f" --bounding-set=-all,{_caps(service['CapabilityBoundingSet'][-1])} --no-new-privs"
    )


def _sandboxed(
    service: dict[str, list[str]], run_root: Path, etc: Path, command: str, syscalls: Path
) -> str:
    """A shell script that applies the unit's file-system and privilege settings, then execs.

    ``etc`` (the configs, under pytest's /tmp) is carried through PrivateTmp='s fresh /tmp
    by a descriptor opened before, and mounted back read-only at the same path.
    """
    runtime = f"/run/{service['RuntimeDirectory'][-1].split()[-1]}"  # the instance's own
    assert service["ProtectSystem"][-1] == "strict"
    assert service["ProtectKernelTunables"][-1] == "yes"
    assert service["PrivateTmp"][-1] == "yes"
    assert service["NoNewPrivileges"][-1] == "yes"
    assert service["SystemCallErrorNumber"][-1] == "EPERM"
    assert service["MemoryDenyWriteExecute"][-1] == "yes"
    exe = shlex.quote(f"{Path(sys.executable).parent}/ipsecd")
    seccomp = f"{shlex.quote(sys.executable)} {shlex.quote(str(SECCOMP_EXEC))} {syscalls} --"
    command = f"{seccomp} {command.replace('/usr/local/sbin/ipsecd', exe)}"
    return "\n".join(
        [
            "set -e",
            f"exec 3<{shlex.quote(str(etc))}",
            f"mount --bind {shlex.quote(str(run_root))} /run",
            f"mount --bind {runtime} {runtime}",  # stays writable: RuntimeDirectory=
            "mount -t tmpfs -o mode=1777 tmpfs /tmp",  # PrivateTmp=
            f"mkdir -p {shlex.quote(str(etc))}",
            f"mount --no-canonicalize --bind /proc/self/fd/3 {shlex.quote(str(etc))}",
            f"mount -o remount,bind,ro {shlex.quote(str(etc))}",
            "exec 3<&-",
            "mount -o remount,bind,ro /",  # ProtectSystem=strict
            "mount -o remount,bind,ro /run",
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
            "mount -o remount,bind,ro /sys",  # ProtectKernelTunables=
            f"umask {service['UMask'][-1]}",
            f"exec setpriv {_privileges(service)} {command}",
        ]
    )


def _start(topology: Topology, ns: str, script: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_two_instances_under_the_units_sandbox(topology: Topology, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) missing", pytrace=False)
    run_root = tmp_path / "run"  # both instances' /run
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    psk = etc / "psk.secret"
    psk.write_bytes(b"0s" + __import__("base64").b64encode(os.urandom(32)) + b"\n")
    psk.chmod(0o600)
    for path in (etc, psk):  # install.sh: the key files belong to the service account
        os.chown(path, SERVICE_UID, SERVICE_GID)
    ctl = f"{Path(sys.executable).parent}/ipsecctl"
    syscalls = etc / "syscalls.txt"  # visible through PrivateTmp, as the configs are
    allowed = allowed_syscalls(_unit_for("left"))
    assert {"sendmmsg", "recvmmsg", "ioctl", "socket"} <= allowed
    assert not {"mount", "reboot", "setrlimit", "settimeofday"} & allowed
    syscalls.write_text("\n".join(sorted(allowed)) + "\n")
    os.chown(syscalls, SERVICE_UID, SERVICE_GID)

    instances = [
        ("right", "right", topology.gw_b, topology.gw_b_wan_ip, topology.gw_a_wan_ip, GW_B_LAN_IP),
        ("left", "left", topology.gw_a, topology.gw_a_wan_ip, topology.gw_b_wan_ip, GW_A_LAN_IP),
    ]
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for instance, role, ns, wan, peer_wan, site in instances:
            service = _unit_for(instance)
            shared, own = service["RuntimeDirectory"][-1].split()
            assert (shared, own) == ("ipsecd", f"ipsecd-{instance}")
            # systemd creates RuntimeDirectory= with RuntimeDirectoryMode=, owned by User=,
            # before ExecStartPre=
            for name in (shared, own):
                runtime = run_root / name
                runtime.mkdir(parents=True, exist_ok=True)
                runtime.chmod(int(service["RuntimeDirectoryMode"][-1], 8))
                os.chown(runtime, SERVICE_UID, SERVICE_GID)
            config = _config(instance, role, etc, wan, peer_wan, site)
            os.chown(config, SERVICE_UID, SERVICE_GID)
            expected = f"/usr/local/sbin/ipsecd run --config /etc/ipsecd/{instance}.yaml"
            assert service["ExecStart"][-1] == expected
            pre = service["ExecStartPre"][-1].replace("/etc/ipsecd/", f"{etc}/")
            start = service["ExecStart"][-1].replace("/etc/ipsecd/", f"{etc}/")
            check = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    _sandboxed(service, run_root, etc, pre, syscalls),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            log = tmp_path / f"{instance}.log"
            script = _sandboxed(service, run_root, etc, start, syscalls)
            procs.append((instance, _start(topology, ns, script, log), log))

        sockets = {name: run_root / f"ipsecd-{name}" / "ipsecd.sock" for name, _, _ in procs}
        deadline = time.monotonic() + 20
        while not all(s.exists() for s in sockets.values()):
            for name, proc, log in procs:
                assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no control socket after 20 s"
            time.sleep(0.1)
        for name, proc, _ in procs:  # every step exec()s: the pid is the daemon's

            def proc_status(pid: int = proc.pid) -> dict[str, str]:
                text = Path(f"/proc/{pid}/status").read_text()
                return dict(line.split(":\t", 1) for line in text.splitlines())

            # Started with CAP_NET_ADMIN, NET_BIND_SERVICE, NET_RAW (AmbientCapabilities=); once
            # its sockets are bound the daemon keeps CAP_NET_ADMIN alone (daemon/privilege.py).
            deadline = time.monotonic() + 20
            while int(proc_status()["CapEff"], 16) != 1 << 12:
                assert time.monotonic() < deadline, f"{name}: {proc_status()['CapEff']}"
                time.sleep(0.1)
            status_now = proc_status()
            assert "ipsecd" in Path(f"/proc/{proc.pid}/cmdline").read_text(), name
            assert status_now["Seccomp"].strip() == "2", name  # filter mode
            assert status_now["NoNewPrivs"].strip() == "1", name
            assert status_now["Uid"].split()[:2] == [str(SERVICE_UID)] * 2, name  # User=
            assert int(status_now["CapAmb"], 16) == 0, name
            # NET_ADMIN, NET_BIND_SERVICE, NET_RAW (the bounding set cannot shrink here)
            assert int(status_now["CapBnd"], 16) == (1 << 12) | (1 << 10) | (1 << 13), name
        for name, sock in sockets.items():
            mode = stat.S_IMODE(sock.stat().st_mode)
            assert mode & 0o077 == 0, f"{name}: control socket mode {mode:o} (UMask=0077)"
            status = subprocess.run(
                [ctl, "--socket", str(sock), "status"], capture_output=True, text=True, timeout=10
            )
            assert status.returncode == 0, status.stderr
        assert topology.wait_ping(topology.host_a, HOST_B_IP, timeout=20), "\n".join(
            log.read_text()[-2000:] for _, _, log in procs
        )
        stats = topology.ping(topology.host_a, HOST_B_IP, count=3)
        assert stats.loss == 0.0
        # A scrape renders its text in a worker thread: the unit's filter lets one start.
        scrape = subprocess.run(
            ["ip", "netns", "exec", topology.gw_a, sys.executable, "-c", SCRAPE],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert 'ipsecd_tunnel_up{peer="right"} 1' in scrape.stdout, scrape.stderr
        # The sandbox held: nothing but the runtime directories was written in the shared /run
        # (mount/ is util-linux's utab, written by the emulation's own mount calls).
        written = sorted(p.name for p in run_root.iterdir() if p.name != "mount")
        assert written == ["ipsecd", "ipsecd-left", "ipsecd-right"]
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
