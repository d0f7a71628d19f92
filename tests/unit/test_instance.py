"""One instance per TUN device: the lock and the start-up checks (``ipsecd.daemon.instance``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipsecd.daemon import instance
from ipsecd.daemon.instance import StartRefused, check_ports_free, check_tun_free, take_lock
from tests.unit.test_config_support import BASE, PSK, parse, write_secret

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="binds port 500 and probes TUN")


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_secret(tmp_path / "b.psk", PSK)
    return parse(BASE.replace("192.0.2.1", "127.0.0.1").replace("192.0.2.2", "127.0.0.2"))


def test_second_lock_is_refused_with_the_holders_pid(config, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from tests.unit.test_instance import _hold; _hold(sys.argv[1], sys.argv[2])",
            str(tmp_path / "locks"),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
        cwd=tmp_path,
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(StartRefused) as info:
            take_lock(config, tmp_path / "locks")
        message = str(info.value)
        assert f"another ipsecd (pid {holder.pid}) already runs tun ipsec0" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    take_lock(config, tmp_path / "locks").release()  # the kernel released the dead one's


def _hold(lock_dir: str, cwd: str) -> None:
    import time

    os.chdir(cwd)
    config = parse(BASE)
    take_lock(config, Path(lock_dir))
    print("locked", flush=True)
    time.sleep(60)


def test_lock_name_carries_tun_and_network_namespace(config, tmp_path):
    path = instance.lock_path(config, tmp_path)
    assert path.name == f"ipsec0.net{os.stat('/proc/self/ns/net').st_ino}.lock"


def test_port_in_use_is_refused(config):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # even with it set
    try:
        taken.bind(("127.0.0.1", 4500))
    except OSError:
        pytest.skip("port 4500 is busy on this machine")
    try:
        with pytest.raises(StartRefused, match=r"UDP 127\.0\.0\.1:4500 is already in use"):
            check_ports_free(config)
    finally:
        taken.close()


def test_a_device_that_is_not_a_tun_is_refused():
    with pytest.raises(StartRefused, match="network device lo exists and is not a TUN device"):
        check_tun_free("lo")
    check_tun_free("ipsecd-none0")  # no such device: fine


def test_read_only_lock_dir_falls_back_beside_the_control_socket(config, tmp_path, monkeypatch):
    def read_only(path):
        if path.parent == tmp_path / "ro":
            raise OSError(30, "Read-only file system")
        return real(path)

    real = instance._open_lock
    monkeypatch.setattr(instance, "_open_lock", read_only)
    own = parse(BASE.replace("  listen:", f"  control_socket: {tmp_path}/run/c.sock\n  listen:"))
    lock = take_lock(own, tmp_path / "ro")
    try:
        assert lock.path.parent == tmp_path / "run"
    finally:
        lock.release()
