"""The daemon's share of third-party packages: only the submodules it uses.

``pyroute2/__init__.py`` imports every part of the library (NDB with sqlite3, IPDB,
conntrack, ipset, nl80211, wireguard, plan9, …) whatever submodule is asked for, because
Python runs a package's ``__init__`` before any submodule: 13 MB of the daemon's memory
and 60 ms of its start-up, for the netlink socket, four message classes and one
exception that it uses (``ipsecd.dataplane.rtnl``). :func:`install_lazy_pyroute2` puts
an empty ``pyroute2`` package in ``sys.modules`` first: its submodules import as usual,
the names of the package itself are looked up on first use in the submodule that defines
them, and any other name loads the real ``__init__`` (so every ``from pyroute2 import
X`` still works, at the old price).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

#: Names of the ``pyroute2`` package and where they live (the daemon itself imports
#: submodules only; these keep ``from pyroute2 import X`` cheap for them).
PYROUTE2_NAMES = {
    "AsyncIPRoute": "pyroute2.iproute",
    "IPRoute": "pyroute2.iproute",
    "NetlinkError": "pyroute2.netlink.exceptions",
}


def install_lazy_pyroute2() -> bool:
    """Make ``import pyroute2…`` load only what is used; False if pyroute2 was already
    imported (or is not installed) and nothing changed."""
    if "pyroute2" in sys.modules:
        return False
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        where = PYROUTE2_NAMES.get(name)
        if where is not None:
            value = getattr(importlib.import_module(where), name)
        elif importlib.util.find_spec(f"pyroute2.{name}") is not None:
            value = importlib.import_module(f"pyroute2.{name}")  # `from pyroute2 import config`
        else:  # anything else: the whole package, as `import pyroute2` gives it
            del package.__dict__["__getattr__"]
            loader.exec_module(package)
            return getattr(package, name)
        setattr(package, name, value)
        return value

    package.__dict__["__getattr__"] = __getattr__
    sys.modules["pyroute2"] = package
    return True
