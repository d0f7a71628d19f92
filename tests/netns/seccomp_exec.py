"""Run a command under a unit file's SystemCallFilter= and MemoryDenyWriteExecute=.

    python seccomp_exec.py ALLOWED_FILE -- COMMAND...

ALLOWED_FILE lists the system calls the command may make, one a line (the test computes it
from ``systemd-analyze syscall-filter`` and the unit's SystemCallFilter= lines); every other
call fails with EPERM, as SystemCallErrorNumber=EPERM makes it under systemd.  Memory that
is writable cannot become executable (PR_SET_MDWE, what MemoryDenyWriteExecute=yes asks).
Needs no_new_privs or root; it is inherited across the exec, as under systemd.  Uses
libseccomp (libseccomp2, a dependency of systemd) through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as listing:
        allowed = [line.strip() for line in listing if line.strip()]
    command = argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"seccomp_exec: PR_SET_MDWE: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    if not ctx:
        print("seccomp_exec: seccomp_init failed", file=sys.stderr)
        return 1
    for name in allowed:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a call of this architecture (e.g. *_time64 on x86-64)
            continue
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0)
        if rc != 0:
            print(f"seccomp_exec: cannot allow {name}: {os.strerror(-rc)}", file=sys.stderr)
            return 1
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        print(f"seccomp_exec: seccomp_load: {os.strerror(-rc)}", file=sys.stderr)
        return 1
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
