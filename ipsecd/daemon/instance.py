"""One ipsecd per TUN device: a lock and the checks made before anything is touched.

A second daemon started on the same config (or on the same TUN name, or on
UDP ports or a control socket another process holds) must leave the running
one alone: no route replaced, no socket stolen, no control socket unlinked.
``claim_instance`` runs first at start-up and refuses with one line
(``StartRefused``) when

- another ipsecd holds the lock ``/run/ipsecd/<tun>.net<inode>.lock`` (``flock``,
  released by the kernel when the holder exits, even on SIGKILL).  TUN names
  and ports are per network namespace, so the lock is too: the namespace's inode
  is part of the name, and two test runs in two namespaces do not collide;
- a network device of that name exists and is not a TUN device, or is a TUN
  device another process has open (a stale persistent TUN is adopted, as before);
- a UDP port ipsecd listens on is bound by anything else (probed with a bind
  without SO_REUSEADDR, which ``UdpSocket`` no longer sets either);
- a daemon answers on the configured control socket (another namespace's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ipsecd.addresses import format_address
from ipsecd.config import Config
from ipsecd.oserrors import OSErrorAt

LOCK_DIR = Path("/run/ipsecd")
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int), linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class StartRefused(Exception):
    """Another instance or process holds what this daemon needs; ``str()`` is one line."""


@dataclass
class InstanceLock:
    """The held lock; the kernel releases it when the process exits."""

    path: Path
    fd: int

    def release(self) -> None:
        """Remove the lock file (where we still may) and let go of the lock."""
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):
                self.path.unlink()  # while still locked: a waiter re-checks the path
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _same_file(fd: int, path: Path) -> bool:
    """True if ``path`` still names the file open at ``fd`` (not unlinked or replaced)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def network_namespace_id() -> int:
    """The inode of this process's network namespace (0 if /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def lock_path(config: Config, lock_dir: Path = LOCK_DIR) -> Path:
    return lock_dir / f"{config.gateway.tun}.net{network_namespace_id()}.lock"


def _open_lock(path: Path) -> int:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)


def take_lock(config: Config, lock_dir: Path = LOCK_DIR) -> InstanceLock:
    """Hold the instance lock of ``config``'s TUN device, or raise ``StartRefused``.

    Where ``lock_dir`` is read-only (systemd's ProtectSystem=strict with only
    ``RuntimeDirectory=ipsecd/%i`` writable) the lock goes beside the control
    socket; two instances on one TUN name then still meet the device check.
    """
    for _ in range(5):  # the holder may unlink the file between our open and our flock
        lock = _try_lock(config, lock_dir)
        if lock is not None:
            return lock
    raise StartRefused(f"cannot take the instance lock in {lock_dir}: it keeps changing")


def _try_lock(config: Config, lock_dir: Path) -> InstanceLock | None:
    path = lock_path(config, lock_dir)
    try:
        fd = _open_lock(path)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StartRefused(f"cannot create the instance lock {path}: {exc.strerror}") from None
        path = lock_path(config, Path(config.gateway.control_socket).parent)
        try:
            fd = _open_lock(path)
        except OSError as exc2:
            raise StartRefused(f"cannot create the instance lock {path}: {exc2.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartRefused(
            f"another ipsecd (pid {holder}) already runs tun {config.gateway.tun} in this"
            f" network namespace (lock {path}); stop it first or use another gateway.tun"
        ) from None
    if not _same_file(fd, path):  # locked a file its last holder just removed: again
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(path, fd)


def check_tun_free(name: str) -> None:
    """Refuse a device called ``name`` that is not a TUN, or a TUN someone has open."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return  # no such device: ours to create
    if not Path(f"/sys/class/net/{name}/tun_flags").exists():
        raise StartRefused(
            f"network device {name} exists and is not a TUN device; choose another"
            f" gateway.tun or remove it (ip link del {name})"
        )
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # the real open will say why
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise StartRefused(
                f"TUN device {name} is in use by another process; choose another gateway.tun"
            ) from None
    finally:
        os.close(fd)  # a persistent device stays; it is adopted when the daemon opens it


def check_ports_free(config: Config) -> None:
    """Refuse when a UDP address:port of ours is bound by another socket."""
    gw = config.gateway
    for address in gw.listen:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        for port in (gw.ike_port, gw.port):
            where = format_address(address, port)
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    probe.bind((str(address), port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise StartRefused(
                            f"UDP {where} is already in use by another process (another ipsecd"
                            f" or IKE daemon? see: ss -ulpn 'sport = :{port}')"
                        ) from None
                    raise StartRefused(str(OSErrorAt(f"cannot bind UDP {where}", exc))) from None


def check_control_socket_free(path: Path) -> None:
    """Refuse when a daemon answers on the control socket (one in another namespace)."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return  # stale: the daemon replaces it
    raise StartRefused(
        f"another ipsecd answers on the control socket {path}; give this one its own"
        " gateway.control_socket"
    )


def claim_instance(config: Config, lock_dir: Path = LOCK_DIR) -> InstanceLock:
    """The lock and the checks, before any device, socket or route is touched."""
    lock = take_lock(config, lock_dir)
    try:
        check_tun_free(config.gateway.tun)
        check_ports_free(config)
        check_control_socket_free(Path(config.gateway.control_socket))
    except StartRefused:
        lock.release()
        raise
    return lock
