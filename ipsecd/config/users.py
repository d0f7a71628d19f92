"""The service account the daemon drops to after start-up (``gateway.user``).

``gateway.user`` names it; left out, it is ``ipsecd`` where the install script
created that account, else ``nobody``.  ``root`` keeps the daemon root (labs
only).  Secret files may be owned by root or by this account.
"""

from __future__ import annotations

import os
import pwd

DEFAULT_ACCOUNTS = ("ipsecd", "nobody")
KEEP_ROOT = "root"


def service_account(name: str | None) -> pwd.struct_passwd | None:
    """The account called ``name``, or the default one; None if none of them exists.

    Raises KeyError for a ``name`` that is not an account on this system.
    """
    if name is not None:
        return pwd.getpwnam(name)
    for candidate in DEFAULT_ACCOUNTS:
        try:
            return pwd.getpwnam(candidate)
        except KeyError:
            continue
    return None


def secret_owners(name: str | None) -> frozenset[int]:
    """Who may own a secret file: root, the service account, and whoever runs us.

    The last one lets an unprivileged ``ipsecd check`` read its user's own test files;
    the daemon runs as root, so for it that adds nothing.
    """
    owners = {0, os.geteuid()}
    try:
        account = service_account(name)
    except KeyError:
        account = None
    if account is not None:
        owners.add(account.pw_uid)
    return frozenset(owners)
