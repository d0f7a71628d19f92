"""Least privilege once the daemon is set up: another user, CAP_NET_ADMIN only, no core.

After the TUN device, the UDP sockets, the routes, the control socket and the
metrics endpoint exist, ipsecd needs root for one thing only: changing routes
at reload (netlink, CAP_NET_ADMIN).  ``drop_privileges`` therefore

1. sets RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0 (no core file, no ptrace or
   /proc/PID/mem by other processes of the same user: the PSK and the SA keys
   stay in this process);
2. switches to the service account (``gateway.user``; default ``ipsecd`` if it
   exists, else ``nobody``) with no supplementary groups, keeping CAP_NET_ADMIN
   in its permitted and effective sets and nothing else: every other capability
   is also dropped from the bounding set, the ambient set is cleared and
   PR_SET_NO_NEW_PRIVS is set, so no later exec can regain any.

It uses the kernel interfaces directly through ``ctypes`` on the C library
(prctl(2), capset(2)) plus ``os.setresuid``/``setresgid``/``setgroups``: no C
of our own and no extra dependency (python-prctl is unmaintained since 2020;
libcap's Python binding is not packaged for Debian 12's python3).  Dropping
rather than a privileged helper process keeps one process and one event loop;
the cost: reload reads the config and secret files as the service account
(they may be owned by it), and a gateway section change still needs a restart,
as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
from dataclasses import dataclass

from ipsecd.config.users import KEEP_ROOT, service_account

CAP_NET_ADMIN = 12
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
KEPT_CAPABILITIES = 1 << CAP_NET_ADMIN  # CapEff / CapPrm after the drop: 0000000000001000


class PrivilegeError(OSError):
    """A step of the drop failed; the daemon must not go on half-privileged."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"{what}: {os.strerror(err)}")


def _capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):  # 64 capability bits in two 32-bit words
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, Linux 5.9


PRELOAD_SKIP = ("ipsecd.lab", "ipsecd.cli")  # test harness and front ends: not the daemon's
# Imported lazily by libraries on first use (cryptography's key generation, the
# default executor of asyncio, IDNA for host names).
PRELOAD_EXTRA = (
    "cryptography.hazmat.backends.openssl.backend",
    "concurrent.futures.thread",
    "encodings.idna",
)


def preload_modules() -> None:
    """Import every daemon module now, while the code is still readable.

    Several are imported lazily (the IKE manager, key exchanges, status); after
    the drop the service account may not be able to read the installation (a
    Python under /root, a 0700 venv), and a daemon should not read code from a
    disk that an upgrade may be changing under it anyway.
    """
    import importlib
    import pkgutil

    import ipsecd

    names = [m.name for m in pkgutil.walk_packages(ipsecd.__path__, "ipsecd.")]
    for name in [*names, *PRELOAD_EXTRA]:
        if not name.startswith(PRELOAD_SKIP):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def no_core_dumps() -> None:
    """No core file and no ptrace attach by the same user (keys stay in this process)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")


@dataclass(frozen=True)
class Dropped:
    """What the process runs as afterwards, for the start-up log line."""

    user: str
    uid: int
    gid: int
    capabilities: str  # "cap_net_admin", or "all (stayed root)"


def drop_privileges(user: str | None) -> Dropped:
    """Become ``user`` (None: the default service account) keeping only CAP_NET_ADMIN.

    ``root`` (or no account at all) keeps root but still disables core dumps.
    Raises ``PrivilegeError`` if a step fails.
    """
    no_core_dumps()
    account = service_account(user) if user != KEEP_ROOT else None
    if account is None or os.geteuid() != 0 or account.pw_uid == 0:
        uid = os.geteuid()
        return Dropped(user or KEEP_ROOT, uid, os.getegid(), "unchanged")
    uid, gid = account.pw_uid, account.pw_gid
    preload_modules()
    _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    for cap in range(_last_capability() + 1):
        if cap != CAP_NET_ADMIN:
            _prctl(PR_CAPBSET_DROP, cap, "PR_CAPBSET_DROP")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # KEEPCAPS: permitted survives, effective is cleared
    _capset(KEPT_CAPABILITIES, KEPT_CAPABILITIES)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT")
    _prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")  # a uid change resets it to the sysctl
    return Dropped(account.pw_name, uid, gid, "cap_net_admin")
