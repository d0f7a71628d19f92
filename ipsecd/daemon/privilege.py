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
import os
import pwd
import resource
from dataclasses import dataclass

from ipsecd.config.users import KEEP_ROOT, service_account

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
PR_CAPBSET_READ = 23
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


# The interpreter's own C library (dlopen(NULL), as malloc.py): no ldconfig subprocess.
_libc = ctypes.CDLL(None, use_errno=True)


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


PRELOAD_SKIP = ("ipsecd.cli",)  # the front ends: not the daemon's
# numpy's bulk path: 13 MB that a gateway without bulk traffic never needs; it loads at
# the first burst (``offload.bulk``), and where it then cannot be read the one-packet
# paths carry everything (status: ``dataplane.bulk_path: unavailable``).
BULK_PATH = ("ipsecd.dataplane.bulk", "ipsecd.esp.rows")
# Imported lazily by libraries on first use (cryptography's key generation, the
# default executor of asyncio, IDNA for host names).
PRELOAD_EXTRA = (
    "cryptography.hazmat.backends.openssl.backend",
    "concurrent.futures.thread",
    "encodings.idna",
)


def preload_modules(skip: tuple[str, ...] = ()) -> None:
    """Import every daemon module now, while the code is still readable, but those
    named in ``skip`` (and the modules under them).

    Several are imported lazily (the IKE manager, key exchanges, status); after
    the drop the service account may not be able to read the installation (a
    Python under /root, a 0700 venv), and a daemon should not read code from a
    disk that an upgrade may be changing under it anyway.  The exception is numpy's
    bulk path (:data:`BULK_PATH`), which has a fallback and is most of the memory.
    """
    import importlib
    import pkgutil

    import ipsecd

    names = [m.name for m in pkgutil.walk_packages(ipsecd.__path__, "ipsecd.")]
    for name in [*names, *PRELOAD_EXTRA]:
        if not name.startswith((*PRELOAD_SKIP, *BULK_PATH, *skip)):
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
    capabilities: str  # "cap_net_admin", "none", or "unchanged" (user: root)
    warning: str | None = None  # why the process could not switch user


def _capability_sets() -> tuple[int, int]:
    """(effective, permitted) of this thread, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields.get("CapEff", "0"), 16), int(fields.get("CapPrm", "0"), 16)


def _has(capabilities: int, cap: int) -> bool:
    return bool(capabilities >> cap & 1)


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def drop_privileges(user: str | None, skip: tuple[str, ...] = ()) -> Dropped:
    """Become ``user`` (None: the default service account) keeping only CAP_NET_ADMIN;
    the daemon's modules are imported first (:func:`preload_modules`), but ``skip``.

    ``root`` (or no account at all) keeps root but still disables core dumps.  A
    root without CAP_SETUID/CAP_SETGID (a systemd ``CapabilityBoundingSet=`` that
    leaves them out) stays uid 0 but still drops every other capability, and says
    so in ``warning``; an unprivileged start (``User=`` with ambient capabilities)
    keeps its user and drops every capability but CAP_NET_ADMIN.  Raises
    ``PrivilegeError`` if a step fails.
    """
    no_core_dumps()
    account = service_account(user) if user != KEEP_ROOT else None
    if account is None:
        return Dropped(user or KEEP_ROOT, os.geteuid(), os.getegid(), "unchanged")
    preload_modules(skip)
    effective, permitted = _capability_sets()
    root = os.geteuid() == 0
    switch = (
        root and account.pw_uid != 0 and _has(effective, CAP_SETUID) and _has(effective, CAP_SETGID)
    )
    if _has(effective, CAP_SETPCAP):  # else the bounding set stays as it was given to us
        for cap in range(_last_capability() + 1):
            if cap != CAP_NET_ADMIN and _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                _prctl(PR_CAPBSET_DROP, cap, "PR_CAPBSET_DROP")
    if switch:
        _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
        os.setgroups([])
        os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)  # permitted survives
    kept = KEPT_CAPABILITIES & permitted
    _capset(kept, kept)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT")
    _prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")  # a uid change resets it to the sysctl
    warning = None
    if root and not switch and account.pw_uid != 0:
        warning = (
            f"stayed uid 0, not {account.pw_name}: CAP_SETUID/CAP_SETGID are not in the"
            " capability set this process was started with (systemd: add CAP_SETUID"
            " CAP_SETGID CAP_SETPCAP to CapabilityBoundingSet=)"
        )
    uid = os.geteuid()
    return Dropped(
        _account_name(uid),
        uid,
        os.getegid(),
        "cap_net_admin" if kept else "none",
        warning,
    )
